"""Throughput of the Nenya extraction path, three ways, in one run on the same file and model.

(a) ceiling   the model alone on cutouts already in memory as tensors, preprocessed beforehand
              exactly as nenya's Encoder does (demean, 3 channels, channels_last), inference_mode;
(b) nenya     ``nenya.engines.runner.run``: HDF5PreprocSource -> SupConEncoder -> NenyaLatentsSink,
              writing a real latents file;
(c) original  the original Nenya loop: a Dataset reading one HDF5 row per item, np.resize +
              np.repeat to 3 channels, a DataLoader, ``model(x)`` in fp32 under no_grad, one
              concatenate, then h5py ``create_dataset``.

The model is a randomly initialised SupConResNet (seed 0, eval mode, feat_dim 256); all three
paths run the same weights. (a) and (b) run at each of ``--precision`` (default ``fp32,bf16``: both,
with the bf16/fp32 speed ratio and the cosine similarity between the bf16 and fp32 latents of (b));
(c) always runs fp32 NCHW, as the original code did (it had no autocast; bf16 NCHW convolutions on a
CPU without native bf16 are pathologically slow, which would measure torch rather than the loop).
Each path is warmed up once on ``--warmup`` items; with ``--repeat R`` the paths are timed R times,
interleaved, and the best and median are reported.

    python bench/extract.py                       # 1024 cutouts, resnet50, fp32 and bf16
    python bench/extract.py --n 4096 --model resnet18 --repeat 3 --precision fp32
    python bench/extract.py --device cuda --n 65536 --batch-size 512   # on a GPU

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

from nenya.encoders.supcon import SupConEncoder, build_model
from nenya.engines.runner import RunOptions, run
from nenya.params import Params
from nenya.sample_data import write_preproc
from nenya.sinks.hdf5 import NenyaLatentsSink
from nenya.sources.hdf5 import HDF5PreprocSource, latents_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import add_save_args, load_average, markdown_table, report  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


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


def original_loop(
    model: torch.nn.Module,
    file_path: str,
    partition: str,
    n: int,
    batch_size: int,
    out_path: str,
    max_batches: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> np.ndarray:
    dataset = OriginalHDF5RGBDataset(file_path, partition, n)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=1)
    latents = []
    with torch.no_grad():
        for i, x in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            latents.append(model(x.to(device)).cpu().numpy())
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
        x = data[a : a + batch_size].float()
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
    ap.add_argument(
        "--model",
        default="resnet50",
        choices=["resnet18", "resnet50"],
        help="SupConResNet backbone (default resnet50, Nenya's)",
    )
    ap.add_argument("--feat-dim", type=int, default=256, help="latent size (default 256)")
    ap.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    ap.add_argument(
        "--precision",
        default="fp32,bf16",
        help="comma-separated precisions of (a) and (b) (default fp32,bf16); (c) is always fp32",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: where all three paths run")
    ap.add_argument("--compile", action="store_true", help="(a) and (b) with Encoder.to(..., compile=True)")
    ap.add_argument("--warmup", type=int, default=32, help="items each path runs once before timing (default 32)")
    ap.add_argument("--repeat", type=int, default=1, help="time each path R times, interleaved (default 1)")
    ap.add_argument(
        "--stat",
        default="best",
        choices=["best", "median"],
        help="which of the R timings gives images/s and the ratio (default best)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in this process")
    ap.add_argument(
        "--file", default=None, help="benchmark this preproc file instead of a generated one (its first --n rows)"
    )
    ap.add_argument("--partition", default="valid", help="partition of --file (default valid)")
    ap.add_argument("--tmpdir", default=None, help="where the generated file and outputs go (default: system temp)")
    add_save_args(ap, RESULTS)
    args = ap.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.repeat < 1:
        ap.error("--n, --batch-size and --repeat must be positive")
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16", "fp16"}:
        ap.error(f"--precision takes fp32, bf16 or fp16 (comma-separated), got {args.precision!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def autocast_for(prec: str):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

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
        original_model = copy.deepcopy(model).eval().to(device)  # plain NCHW, as the original loop ran it
        encoders = {
            p: SupConEncoder(
                copy.deepcopy(model),
                opt,
                fingerprint=f"bench-random-{args.model}-seed0",
                name=f"supcon:random-{args.model}",
            ).to(device, p, compile=args.compile)
            for p in precisions
        }  # channels_last; a copy each, so compiled graphs do not mix
        batches = [b.to(device) for b in prepare_batches(images, args.batch_size)]
        del images

        def nenya_run(prec: str, out_dir: str, limit: int | None):
            opts = RunOptions(
                batch_size=args.batch_size, num_workers=1, device=args.device, precision=prec, progress=False
            )
            source = HDF5PreprocSource([path], partitions=(part,), limit=limit)
            try:
                return run(source, encoders[prec], NenyaLatentsSink(out_dir, overwrite=True), opts)
            finally:
                source.close()

        def net(prec: str) -> torch.nn.Module:  # what Encoder.encode runs: the compiled model when there is one
            compiled = getattr(encoders[prec], "_compiled_model", None)  # not `or`: a compiled module has no len()
            return compiled if compiled is not None else encoders[prec].model

        def ceiling_on(prec: str) -> torch.Tensor:
            out = ceiling(net(prec), batches, autocast_for(prec))
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out.cpu()

        # -- warm-up: --warmup items each -------------------------------------------------------
        warm = max(1, min(args.n, args.warmup))
        print(
            f"warming up ({args.model}, batch {args.batch_size}, {'/'.join(precisions)}, {device}, "
            f"{torch.get_num_threads()} threads, {warm} items each) ...",
            flush=True,
        )
        for p in precisions:
            ceiling(net(p), [b[:warm] for b in batches[:1]], autocast_for(p))
            nenya_run(p, os.path.join(tmp, f"warm-nenya-{p}"), limit=warm)
        original_loop(
            original_model,
            path,
            part,
            warm,
            args.batch_size,
            os.path.join(tmp, "warm-original.h5"),
            max_batches=1,
            device=device,
        )

        # -- timed runs, interleaved ------------------------------------------------------------
        keys = [f"{k}:{p}" for p in precisions for k in ("ceiling", "nenya")] + ["original:fp32"]
        seconds: dict[str, list[float]] = {k: [] for k in keys}
        summaries: dict[str, list] = {p: [] for p in precisions}
        lat_a: dict[str, np.ndarray] = {}
        lat_b: dict[str, np.ndarray] = {}
        lat_c = None
        for r in range(args.repeat):
            for p in precisions:
                t = time.perf_counter()
                lat_a[p] = ceiling_on(p).numpy()
                seconds[f"ceiling:{p}"].append(time.perf_counter() - t)

                out_dir = os.path.join(tmp, f"nenya-{p}-{r}")
                t = time.perf_counter()
                summary = nenya_run(p, out_dir, limit=args.n if args.file else None)
                seconds[f"nenya:{p}"].append(time.perf_counter() - t)
                summaries[p].append(summary)
                with h5py.File(os.path.join(out_dir, latents_name(path)), "r") as f:
                    lat_b[p] = f[part][:]
                shutil.rmtree(out_dir)

            out_path = os.path.join(tmp, f"original-{r}.h5")
            t = time.perf_counter()
            lat_c = original_loop(original_model, path, part, args.n, args.batch_size, out_path, device=device)
            seconds["original:fp32"].append(time.perf_counter() - t)
            os.remove(out_path)
            print(
                f"  repeat {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in seconds.items()),
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------
    pick = min if args.stat == "best" else statistics.median
    rate = {k: args.n / pick(v) for k, v in seconds.items()}
    labels = {
        "ceiling": "(a) ceiling: model alone, tensors in memory",
        "nenya": "(b) nenya run(): HDF5 source -> latents file",
        "original": "(c) original Nenya loop (row-wise Dataset, NCHW)",
    }
    base = precisions[0]
    rows = []
    for k in keys:
        path_kind, prec = k.split(":")
        v = seconds[k]
        ceil = rate[f"ceiling:{prec}"] if f"ceiling:{prec}" in rate else rate[f"ceiling:{base}"]
        rows.append(
            [
                labels[path_kind],
                prec,
                f"{rate[k]:.1f}",
                f"{args.n / min(v):.1f}",
                f"{args.n / statistics.median(v):.1f}",
                f"{pick(v):.2f}",
                f"{rate[k] / ceil:.3f}",
                f"{rate[k] / rate[f'{path_kind}:{base}']:.2f}" if f"{path_kind}:{base}" in rate else "",
            ]
        )
    table = markdown_table(
        [
            "path",
            "precision",
            f"images/s ({args.stat})",
            "best",
            "median",
            "seconds",
            "ratio to ceiling (same precision)",
            f"speed vs {base}",
        ],
        rows,
    )

    def maxdiff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)

    checks = []
    ok = True
    for p in precisions:
        d = maxdiff(lat_b[p], lat_a[p])
        tol = 1e-4 if p == "fp32" else 2e-2
        ok &= d <= tol
        checks.append(
            f"- latents (b) vs (a) at {p}: shape {lat_b[p].shape} vs {lat_a[p].shape}, max |diff| {d:.3g} "
            f"-> {'OK' if d <= tol else 'FAIL'} (tolerance {tol:g})"
        )
    if "fp32" in precisions:
        checks.append(
            f"- latents (c) vs (a) fp32: max |diff| {maxdiff(lat_c, lat_a['fp32']):.3g} (informational: "
            "the original loop does not demean, runs NCHW)"
        )
        for p in precisions:
            if p != "fp32":
                cos = cosine(lat_b[p], lat_b["fp32"])
                checks.append(
                    f"- **{p} vs fp32 latents of (b)**: cosine similarity mean {cos.mean():.6f}, "
                    f"min {cos.min():.6f}, max |diff| {maxdiff(lat_b[p], lat_b['fp32']):.3g}; "
                    f"speed {p}/fp32: nenya {rate[f'nenya:{p}'] / rate['nenya:fp32']:.2f}x, "
                    f"ceiling {rate[f'ceiling:{p}'] / rate['ceiling:fp32']:.2f}x"
                )
    for p in precisions:
        best = summaries[p][int(np.argmin(seconds[f"nenya:{p}"]))]
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in best.timings.items())
        enc_s = best.timings.get("encode", 0.0)
        checks.append(
            f"- nenya stages at {p} (fastest run; read = waiting for the reader worker, encode includes "
            f".cpu().numpy()): {stages}; run total {best.seconds:.2f} s ({best.rate:.1f} images/s); "
            f"pipeline share outside the model = {(best.seconds - enc_s) / best.seconds:.1%} of the run "
            "(load-robust: end-to-end / its own encode time "
            f"= {enc_s / best.seconds:.3f})"
        )
    load = load_average()
    lines = [
        f"{args.n} cutouts (64x64, {'file ' + os.path.basename(path) if args.file else 'synthetic'}), "
        f"SupConResNet {args.model} feat_dim {args.feat_dim} (random init, seed 0, eval), batch {args.batch_size}, "
        f"{'/'.join(precisions)} for (a) and (b), fp32 for (c), device {device}"
        f"{', torch.compile' if args.compile else ''}, {torch.get_num_threads()} torch threads, "
        f"1 reader worker for (b) and (c), {args.repeat} repeat(s) interleaved, images/s from the {args.stat} "
        f"timing; load average at the end {load} (other jobs shared the cores: compare ratios within this run).",
        "",
        *table,
        "",
        *checks,
    ]
    report(args, f"extract.py ({args.model}, {'+'.join(precisions)}, {device}, n={args.n})", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
