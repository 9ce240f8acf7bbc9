"""Throughput and peak memory of the photo path: a JPEG folder through ResNet-50 at 224 px, three ways.

(a) ceiling   the model alone on batches already decoded, resized, normalised and in memory
              (channels_last, inference_mode): what the encoder can do at best;
(b) nenya     ``nenya.extract.extract_collection("images:FOLDER", ...)`` with
              ``RunOptions(num_workers=--workers)``: decode + resize/crop in reader processes,
              uint8 batches to the encoder, normalisation on the device, vectors into a Parquet file;
(c) original  the usual hand-written loop: a Dataset that opens each file with PIL and applies a
              torchvision-style transform (Resize(256), CenterCrop(224), ToTensor, Normalize), a
              DataLoader with --workers workers, ``model(x)`` in fp32 NCHW under no_grad, and a
              ``.cpu().numpy()`` per batch, concatenated and saved with np.save.

The model is ``torchvision:resnet50`` with random weights (seed 0; no download) without its
classifier (2048-d vectors). The JPEGs are made by the script (smooth random pictures, 320-640 px
sides, quality 90). Each path runs in a fresh process (peak RSS: the process's own ru_maxrss, its
readers' largest, and the polled sum over the process tree), after a warm-up batch in that process.

(a) and (b) run at each of ``--precision`` (default ``fp32,bf16``); bf16 runs only on the first
``--bf16-n`` images (on a CPU without native bf16 it is several times slower than fp32), and the
bf16 vs fp32 cosine similarity is computed on those images.

    python bench/photos.py                         # 256 JPEGs, fp32 and bf16 (first 32)
    python bench/photos.py --n 1000 --workers 3 --precision fp32
    python bench/photos.py --device cuda --n 5000 --batch-size 256 --workers 8 --bf16-n 5000
    python bench/photos.py --device cuda --n 5000 --batch-size 256 --workers 8 --decode gpu   # nvjpeg

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import add_save_args, load_average, markdown_table, report  # noqa: E402
from memory import measure  # noqa: E402

RESULTS = HERE / "RESULTS.md"


def make_jpegs(folder: str, n: int, seed: int = 0) -> int:
    """N smooth random JPEGs of 320-640 px sides; returns the total size in bytes."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        h, w = (int(v) for v in rng.integers(320, 641, 2))
        small = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-12, 13, (h, w, 3))
        im = Image.fromarray(np.clip(np.asarray(im, dtype=np.int16) + noise, 0, 255).astype(np.uint8))
        path = os.path.join(folder, f"img_{i:06d}.jpg")
        im.save(path, "JPEG", quality=90)
        total += os.path.getsize(path)
    return total


# -- the measured process ----------------------------------------------------------------------
def build_encoder(device: str, precision: str, compile: bool):
    import torch

    from nenya.encoders import load_encoder

    torch.manual_seed(0)
    return load_encoder("torchvision:resnet50").to(device, precision, compile=compile)


def child(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(os.listdir(args.folder))[: args.n]
    enc = build_encoder(args.device, args.child_precision, args.compile)
    dev = enc.device
    t = 0.0
    if args.child == "nenya":
        from nenya.engines.runner import RunOptions
        from nenya.extract import extract_collection

        folder = args.folder
        if args.n < len(os.listdir(args.folder)):  # a sub-folder of links to the first n files
            folder = os.path.join(args.out, "subset")
            os.makedirs(folder, exist_ok=True)
            for f in files:
                os.symlink(os.path.join(args.folder, f), os.path.join(folder, f))
        opts = RunOptions(
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=args.device,
            precision=args.child_precision,
            progress=False,
        )
        warm = os.path.join(args.out, "warm")  # warm-up: one batch, in its own folder of links
        os.makedirs(warm, exist_ok=True)
        for f in files[: min(len(files), args.batch_size)]:
            os.symlink(os.path.join(args.folder, f), os.path.join(warm, f))
        extract_collection(
            f"images:{warm}",
            enc,
            os.path.join(args.out, "warm.parquet"),
            overwrite=True,
            options=opts,
            decode=args.decode,
        )
        t0 = time.perf_counter()
        summary = extract_collection(
            f"images:{folder}",
            enc,
            os.path.join(args.out, "vectors.parquet"),
            overwrite=True,
            options=opts,
            decode=args.decode,
        )
        t = time.perf_counter() - t0
        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(args.out, "vectors.parquet"))
        order = np.argsort([os.path.basename(str(p)) for p in table.column("id").to_pylist()])
        vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)[order]
        items, stages = summary.items, summary.timings.as_dict()
    elif args.child == "ceiling":
        from nenya.sources.images import ImageFolderSource  # nenya's own decode + resize/crop

        source = ImageFolderSource(args.folder, transform=enc.preprocess.image)
        plan = source.plan(10**9)
        arrays, ids = [], []
        for b in source.read(plan.shards[0], args.batch_size):
            arrays.append(np.asarray(b.data))
            ids += list(b.ids)
        source.close()
        data = np.concatenate(arrays)
        order = np.argsort([os.path.basename(str(i)) for i in ids])[: args.n]
        data = torch.from_numpy(data[order])
        with torch.inference_mode():  # preprocessed beforehand, exactly as Encoder.encode does
            batches = [
                enc.prepare(data[a : a + args.batch_size].to(dev)).contiguous(memory_format=torch.channels_last)
                for a in range(0, len(data), args.batch_size)
            ]
        model = getattr(enc, "_compiled_model", None) or enc.model

        def go():
            outs = []
            with torch.inference_mode():
                for x in batches:
                    with enc._autocast():
                        outs.append(model(x).float())
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return torch.cat(outs).cpu().numpy()

        with torch.inference_mode(), enc._autocast():
            model(batches[0])  # warm-up
        t0 = time.perf_counter()
        vectors = go()
        t = time.perf_counter() - t0
        items, stages = len(vectors), {}
    else:  # the original-style loop
        from PIL import Image

        from nenya.encoders.torchvision import import_torchvision

        tv = import_torchvision()
        T = tv.transforms
        transform = T.Compose(
            [
                T.Resize(256),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

        class Photos(torch.utils.data.Dataset):
            def __len__(self):
                return len(files)

            def __getitem__(self, i):
                with Image.open(os.path.join(args.folder, files[i])) as im:
                    return transform(im.convert("RGB"))

        model = enc.model.to(memory_format=torch.contiguous_format)  # NCHW, as such loops run
        loader = torch.utils.data.DataLoader(
            Photos(), batch_size=args.batch_size, shuffle=False, num_workers=args.workers
        )
        with torch.no_grad():
            model(torch.zeros(2, 3, 224, 224, device=dev))  # warm-up
            t0 = time.perf_counter()
            outs = [model(x.to(dev)).cpu().numpy() for x in loader]
            vectors = np.concatenate(outs)
            np.save(os.path.join(args.out, "original.npy"), vectors)
            t = time.perf_counter() - t0
        items, stages = len(vectors), {}
    np.save(os.path.join(args.out, "vectors.npy"), vectors)
    print(
        json.dumps(
            {
                "items": int(items),
                "seconds": t,
                "timings": stages,
                "self_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "workers_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=256, help="number of JPEGs (default 256)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    ap.add_argument("--workers", type=int, default=1, help="reader processes of (b) and (c) (default 1: 2 cores)")
    ap.add_argument("--precision", default="fp32,bf16", help="precisions of (a) and (b) (default fp32,bf16)")
    ap.add_argument("--bf16-n", type=int, default=32, help="images the non-fp32 runs use (default 32)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--compile", action="store_true", help="(a) and (b) with Encoder.to(..., compile=True)")
    ap.add_argument(
        "--decode",
        choices=["cpu", "gpu"],
        default="cpu",
        help="where (b) decodes JPEGs: cpu readers (default) or gpu (nvjpeg; needs --device cuda)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each measured process")
    ap.add_argument("--poll", type=float, default=0.05, help="RSS polling interval in seconds (default 0.05)")
    ap.add_argument("--tmpdir", default=None, help="where the JPEGs and outputs go (default: system temp)")
    add_save_args(ap, RESULTS)
    ap.add_argument("--child", choices=["nenya", "ceiling", "original"], help=argparse.SUPPRESS)
    ap.add_argument("--child-precision", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16", "fp16"} or args.n < 1:
        ap.error("--precision takes fp32, bf16, fp16 (comma-separated); --n must be positive")

    tmp = tempfile.mkdtemp(prefix="nenya-bench-photos-", dir=args.tmpdir)
    runs = []
    try:
        folder = os.path.join(tmp, "photos")
        t = time.perf_counter()
        size = make_jpegs(folder, args.n)
        print(f"wrote {args.n} JPEGs ({size / 2**20:.1f} MiB) in {time.perf_counter() - t:.1f} s", flush=True)
        plan = [("ceiling", "fp32", args.n), ("nenya", "fp32", args.n), ("original", "fp32", args.n)]
        for p in precisions:
            if p != "fp32":
                plan += [
                    ("ceiling", "fp32", args.bf16_n),
                    ("ceiling", p, args.bf16_n),
                    ("nenya", "fp32", args.bf16_n),
                    ("nenya", p, args.bf16_n),
                ]
        plan = list(dict.fromkeys(plan))
        for kind, prec, n in plan:
            out = os.path.join(tmp, f"out-{kind}-{prec}-{n}")
            os.makedirs(out)
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--child",
                kind,
                "--child-precision",
                prec,
                "--folder",
                folder,
                "--out",
                out,
                "--n",
                str(min(n, args.n)),
                "--batch-size",
                str(args.batch_size),
                "--workers",
                str(args.workers),
                "--device",
                args.device,
            ]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--compile"] if args.compile and kind != "original" else []
            cmd += ["--decode", args.decode] if kind == "nenya" else []
            res, wall, tree, _ = measure(cmd, args.poll, False)
            res.update(
                kind=kind,
                precision=prec,
                n=min(n, args.n),
                tree=tree,
                wall=wall,
                vectors=np.load(os.path.join(out, "vectors.npy")),
            )
            runs.append(res)
            print(
                f"  {kind} {prec} n={res['n']}: {res['items'] / res['seconds']:.1f} images/s, "
                f"main peak {res['self_peak_mb']:.0f} MB, tree peak {tree:.0f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # -- report ---------------------------------------------------------------------------------
    def find(kind, prec, n):
        return next(r for r in runs if (r["kind"], r["precision"], r["n"]) == (kind, prec, n))

    labels = {
        "ceiling": "(a) ceiling: model alone, decoded batches in memory",
        "nenya": "(b) nenya extract_collection: JPEG folder -> Parquet",
        "original": "(c) original-style loop (PIL + torchvision transform, NCHW)",
    }
    rows = []
    for r in runs:
        rate = r["items"] / r["seconds"]
        ceil = find("ceiling", r["precision"], r["n"])
        c_rate = ceil["items"] / ceil["seconds"]
        fp = next((x for x in runs if (x["kind"], x["precision"], x["n"]) == (r["kind"], "fp32", r["n"])), None)
        rows.append(
            [
                labels[r["kind"]],
                r["precision"],
                f"{r['n']}",
                f"{rate:.2f}",
                f"{r['seconds']:.1f}",
                f"{rate / c_rate:.3f}",
                f"{rate / (fp['items'] / fp['seconds']):.2f}" if fp else "",
                f"{r['self_peak_mb']:.0f}",
                f"{r['workers_peak_mb']:.0f}",
                f"{r['tree']:.0f}",
            ]
        )
    table = markdown_table(
        [
            "path",
            "precision",
            "images",
            "images/s",
            "seconds",
            "ratio to ceiling",
            "speed vs fp32",
            "main peak MB",
            "reader peak MB",
            "tree peak MB",
        ],
        rows,
    )

    def cosine(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)

    notes = []
    a, b, c = (find(k, "fp32", args.n)["vectors"] for k in ("ceiling", "nenya", "original"))
    ok = a.shape == b.shape and float(np.abs(a - b).max()) <= 1e-3 * max(1.0, float(np.abs(a).max()))
    notes.append(
        f"- vectors (b) vs (a) fp32: shape {b.shape} vs {a.shape}, max |diff| "
        f"{float(np.abs(a - b).max()) if a.shape == b.shape else float('inf'):.3g} -> {'OK' if ok else 'FAIL'}"
    )
    if c.shape == a.shape:
        notes.append(
            f"- vectors (c) vs (a) fp32: cosine similarity mean {cosine(a, c).mean():.4f} (informational: "
            "torchvision's PIL resize antialiases differently from nenya's reader)"
        )
    for p in precisions:
        if p != "fp32":
            cos = cosine(
                find("nenya", p, min(args.bf16_n, args.n))["vectors"],
                find("nenya", "fp32", min(args.bf16_n, args.n))["vectors"],
            )
            notes.append(
                f"- **{p} vs fp32 vectors of (b)** ({min(args.bf16_n, args.n)} images): cosine similarity "
                f"mean {cos.mean():.6f}, min {cos.min():.6f}"
            )
    for r in runs:
        if r["timings"]:
            enc_s = r["timings"].get("encode", 0.0)
            notes.append(
                f"- nenya stages {r['precision']} n={r['n']}: "
                + ", ".join(f"{k} {v:.2f} s" for k, v in r["timings"].items())
                + f"; share outside the model {(r['seconds'] - enc_s) / r['seconds']:.1%} of "
                f"{r['seconds']:.1f} s (load-robust: end-to-end / own encode time = {enc_s / r['seconds']:.3f})"
            )
    load = load_average()
    lines = [
        f"{args.n} synthetic JPEGs (320-640 px sides, quality 90, {size / 2**20:.1f} MiB), torchvision:resnet50 "
        f"(random init, seed 0, 2048-d), 224 px (resize 256, center crop), batch {args.batch_size}, "
        f"{args.workers} reader worker(s) for (b) and (c), device {args.device}"
        f"{', torch.compile' if args.compile else ''}{', (b) with --decode gpu' if args.decode == 'gpu' else ''}"
        f"; each path in a fresh process after a warm-up batch; "
        f"non-fp32 precisions on the first {args.bf16_n} images (with fp32 runs on the same images for the ratio). "
        f"Peak MB: main = ru_maxrss, reader = largest worker ru_maxrss, tree = polled sum of RSS. Load average at "
        f"the end {load} (other jobs shared the cores: compare ratios within this run).",
        "",
        *table,
        "",
        *notes,
    ]
    report(args, f"photos.py (resnet50 224 px, {'+'.join(precisions)}, {args.device}, n={args.n})", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
