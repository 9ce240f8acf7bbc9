"""Throughput of the Nenya extraction path, three ways, in one run on the same file and model.

(a) ceiling   the model alone on cutouts already in memory as tensors, preprocessed beforehand
              exactly as nenya's Encoder does (demean, 3 channels, channels_last), inference_mode;
(b) nenya     ``nenya.pipeline.runner.run``: HDF5PreprocSource -> SupConEncoder -> NenyaLatentsSink,
              writing a real latents file;
(c) original  the original Nenya loop: a Dataset reading one HDF5 row per item, np.resize +
              np.repeat to 3 channels, a DataLoader, ``model(x)`` in fp32 under no_grad, one
              concatenate, then h5py ``create_dataset``.

The model is a randomly initialised SupConResNet (seed 0, eval mode, feat_dim 256); all three
paths run the same weights. (a) and (b) run at ``--precision``; (c) always runs fp32 NCHW, as the
original code did (it had no autocast; bf16 NCHW convolutions on a CPU without native bf16 are
pathologically slow, which would measure torch rather than the loop). Each path is warmed up once on one batch; with
``--repeat R`` the paths are timed R times, interleaved, and the best and median are reported.

    python bench/extract.py                       # 1024 cutouts, resnet18, fp32
    python bench/extract.py --n 4096 --model resnet50 --repeat 3
    python bench/extract.py --precision bf16

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import h5py
import numpy as np
import torch

from nenya.demo import write_preproc
from nenya.encoders.supcon import SupConEncoder, build_model
from nenya.params import Params
from nenya.pipeline.runner import RunOptions, run
from nenya.sinks.hdf5 import NenyaLatentsSink
from nenya.sources.hdf5 import HDF5PreprocSource, latents_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import append_results, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


# -- shared reporting helpers (duplicated in memory.py: the bench scripts stand alone) -------------
# -- (c) the original Nenya loop -----------------------------------------------------------------
class OriginalHDF5RGBDataset(torch.utils.data.Dataset):
    """As Nenya's ``HDF5RGBDataset``: the handle opened in __init__, one row read per item."""

    def __init__(self, file_path: str, partition: str, n: int) -> None:
        self.file_path, self.partition, self.n = file_path, partition, n
        self.h5f = h5py.File(file_path, "r")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        data = self.h5f[self.partition][index]
        data = np.resize(data, (1, data.shape[-1], data.shape[-1]))
        return np.repeat(data, 3, axis=0)


def original_loop(model: torch.nn.Module, file_path: str, partition: str, n: int, batch_size: int, out_path: str,
                  max_batches: int | None = None) -> np.ndarray:
    dataset = OriginalHDF5RGBDataset(file_path, partition, n)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=1)
    latents = []
    with torch.no_grad():
        for i, x in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            latents.append(model(x).cpu().numpy())
    latents = np.concatenate(latents)
    dataset.h5f.close()
    with h5py.File(out_path, "w") as f:
        f.create_dataset(partition, data=latents)
    return latents


# -- (a) the ceiling ---------------------------------------------------------------------------
def prepare_batches(images: np.ndarray, batch_size: int) -> list[torch.Tensor]:
    """Nenya's Encoder.prepare done beforehand: demean per image, 3 channels, channels_last."""
    batches = []
    data = torch.from_numpy(images)
    if data.dim() == 3:
        data = data[:, None]
    for a in range(0, len(data), batch_size):
        x = data[a:a + batch_size].float()
        x = x - x.mean(dim=(1, 2, 3), keepdim=True)
        x = x.expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        batches.append(x)
    return batches


def ceiling(model: torch.nn.Module, batches: list[torch.Tensor], autocast) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for x in batches:
            with autocast():
                outs.append(model(x).float())
    return torch.cat(outs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="number of cutouts (default 1024)")
    ap.add_argument("--model", default="resnet18", choices=["resnet18", "resnet50"], help="SupConResNet backbone")
    ap.add_argument("--feat-dim", type=int, default=256, help="latent size (default 256)")
    ap.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="precision of (a) and (b) (default fp32); (c) is always fp32, as the original")
    ap.add_argument("--repeat", type=int, default=1, help="time each path R times, interleaved (default 1)")
    ap.add_argument("--stat", default="best", choices=["best", "median"],
                    help="which of the R timings gives images/s and the ratio (default best)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in this process")
    ap.add_argument("--file", default=None,
                    help="benchmark this preproc file instead of a generated one (its first --n rows)")
    ap.add_argument("--partition", default="valid", help="partition of --file (default valid)")
    ap.add_argument("--tmpdir", default=None, help="where the generated file and outputs go (default: system temp)")
    ap.add_argument("--results", default=str(RESULTS), help="markdown file to append to (default bench/RESULTS.md)")
    ap.add_argument("--no-save", action="store_true", help="print only; do not append to the results file")
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeat < 1:
        ap.error("--n, --batch-size and --repeat must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else nullcontext

    tmp = tempfile.mkdtemp(prefix="nenya-bench-extract-", dir=args.tmpdir)
    try:
        # -- the input -------------------------------------------------------------------------
        if args.file:
            path, part = os.path.abspath(args.file), args.partition
            with h5py.File(path, "r") as f:
                if part not in f:
                    ap.error(f"{path} has no partition {part!r}; it holds {sorted(f.keys())}")
                args.n = min(args.n, f[part].shape[0])
        else:
            path, part = os.path.join(tmp, "bench_preproc.h5"), "valid"
            t = time.perf_counter()
            write_preproc(path, n_valid=args.n, n_train=0, seed=0)
            print(f"wrote {args.n} synthetic cutouts to {path} in {time.perf_counter() - t:.1f} s", flush=True)
        with h5py.File(path, "r") as f:
            images = f[part][: args.n].astype(np.float32, copy=False)

        # -- the model: one set of weights for all three paths -----------------------------------
        torch.manual_seed(0)
        opt = Params(None, ssl_model=args.model, feat_dim=args.feat_dim, nchannels=3)
        model = build_model(opt).eval()
        original_model = copy.deepcopy(model).eval()  # plain NCHW, as the original loop ran it
        encoder = SupConEncoder(model, opt, fingerprint=f"bench-random-{args.model}-seed0",
                                name=f"supcon:random-{args.model}").to("cpu", args.precision)  # channels_last
        batches = prepare_batches(images, args.batch_size)
        del images
        opts = RunOptions(batch_size=args.batch_size, num_workers=1, device="cpu", precision=args.precision,
                          progress=False)

        def nenya_run(out_dir: str, limit: int | None):
            source = HDF5PreprocSource([path], partitions=(part,), limit=limit)
            try:
                return run(source, encoder, NenyaLatentsSink(out_dir, overwrite=True), opts)
            finally:
                source.close()

        # -- warm-up: one batch each ------------------------------------------------------------
        print(f"warming up ({args.model}, batch {args.batch_size}, {args.precision}, "
              f"{torch.get_num_threads()} threads) ...", flush=True)
        ceiling(encoder.model, batches[:1], autocast)
        nenya_run(os.path.join(tmp, "warm-nenya"), limit=min(args.n, args.batch_size))
        original_loop(original_model, path, part, args.n, args.batch_size, os.path.join(tmp, "warm-original.h5"),
                      max_batches=1)

        # -- timed runs, interleaved ------------------------------------------------------------
        seconds: dict[str, list[float]] = {"ceiling": [], "nenya": [], "original": []}
        summaries = []
        lat_a = lat_b = lat_c = None
        for r in range(args.repeat):
            t = time.perf_counter()
            lat_a = ceiling(encoder.model, batches, autocast)
            seconds["ceiling"].append(time.perf_counter() - t)

            out_dir = os.path.join(tmp, f"nenya-{r}")
            t = time.perf_counter()
            summary = nenya_run(out_dir, limit=args.n if args.file else None)
            seconds["nenya"].append(time.perf_counter() - t)
            summaries.append(summary)
            with h5py.File(os.path.join(out_dir, latents_name(path)), "r") as f:
                lat_b = f[part][:]
            shutil.rmtree(out_dir)

            out_path = os.path.join(tmp, f"original-{r}.h5")
            t = time.perf_counter()
            lat_c = original_loop(original_model, path, part, args.n, args.batch_size, out_path)
            seconds["original"].append(time.perf_counter() - t)
            os.remove(out_path)
            print(f"  repeat {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()),
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------
    pick = min if args.stat == "best" else statistics.median
    rate = {k: args.n / pick(v) for k, v in seconds.items()}
    labels = {
        "ceiling": "(a) ceiling: model alone, tensors in memory",
        "nenya": "(b) nenya run(): HDF5 source -> latents file",
        "original": "(c) original Nenya loop (row-wise Dataset, fp32)",
    }
    rows = []
    for k in ("ceiling", "nenya", "original"):
        v = seconds[k]
        rows.append([labels[k], f"{rate[k]:.1f}", f"{args.n / min(v):.1f}", f"{args.n / statistics.median(v):.1f}",
                     f"{pick(v):.2f}", f"{rate[k] / rate['ceiling']:.3f}"])
    table = markdown_table(["path", f"images/s ({args.stat})", "best", "median", "seconds", "ratio to ceiling"], rows)

    lat_a = lat_a.numpy()
    diff_b = float(np.abs(lat_b - lat_a).max()) if lat_b.shape == lat_a.shape else float("inf")
    diff_c = float(np.abs(lat_c - lat_a).max()) if lat_c.shape == lat_a.shape else float("inf")
    ok = diff_b <= 1e-4
    best_b = summaries[int(np.argmin(seconds["nenya"]))]
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in best_b.timings.items())
    lines = [
        f"{args.n} cutouts (64x64, {'file ' + os.path.basename(path) if args.file else 'synthetic'}), "
        f"SupConResNet {args.model} feat_dim {args.feat_dim} (random init, seed 0, eval), batch {args.batch_size}, "
        f"{args.precision} for (a) and (b), fp32 for (c), {torch.get_num_threads()} torch threads, "
        "1 reader worker for (b) and (c), "
        f"{args.repeat} repeat(s), images/s from the {args.stat} timing.",
        "",
        *table,
        "",
        f"- latents (b) vs (a): shape {lat_b.shape} vs {tuple(lat_a.shape)}, max |diff| {diff_b:.3g} "
        f"-> {'OK' if ok else 'FAIL'} (tolerance 1e-4)",
        f"- latents (c) vs (a): max |diff| {diff_c:.3g} (informational: the original loop does not demean, "
        f"runs NCHW{'' if args.precision == 'fp32' else ' and fp32'})",
        f"- nenya stages (fastest run; read = waiting for the reader worker, encode includes .cpu().numpy()): "
        f"{stages}; run total {best_b.seconds:.2f} s ({best_b.rate:.1f} images/s as RunSummary reports)",
    ]
    print()
    print("\n".join(lines))
    if not args.no_save:
        append_results(Path(args.results), f"extract.py ({args.model}, {args.precision}, n={args.n})", lines)
        print(f"\nappended to {args.results}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
