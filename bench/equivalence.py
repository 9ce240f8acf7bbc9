"""Do the outputs stay the same? Digests of every vector, table and record nenya writes.

Makes fixed inputs (a Nenya preproc file and a photo folder with one broken file, all seeded),
fixed models (a SupCon resnet18 checkpoint and a timm resnet18 with seeded random weights), runs
``nenya extract`` exactly as a user types it into the h5, Parquet and npy sinks, and writes the
digest of each dataset, column, attribute, schema record and status table to a JSON file. With
``--compare REF.json`` it says which digests differ from a reference made by another version
(run it before and after a refactor: every line must say "same").

    python bench/equivalence.py --out /tmp/eq-before.json
    python bench/equivalence.py --out /tmp/eq-after.json --compare /tmp/eq-before.json

Absolute paths of the temporary folder are replaced by ``<ROOT>`` before hashing, so two runs in
different folders compare equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def make_inputs(root: Path) -> dict[str, str]:
    """The preproc file, photo folder and both models; returns their paths."""
    import h5py
    import torch
    from PIL import Image

    from nenya.params import Params, option_preprocess
    from nenya.train_util import set_model

    try:
        from nenya.sample_data import write_preproc
    except ImportError:  # the code before issue 12 named it nenya.demo
        from nenya.demo import write_preproc  # type: ignore[no-redef]

    data = root / "data"
    data.mkdir(parents=True)
    preproc = write_preproc(data / "eq_preproc_test.h5", n_valid=150, n_train=70, size=32, seed=5)
    with h5py.File(preproc, "r") as f:  # the input itself must not change between runs
        inputs_digest = _sha(f["valid"][:].tobytes() + f["train"][:].tobytes() + f["valid_metadata"][:].tobytes())

    opts = {
        "ssl_method": "SimCLR",
        "ssl_model": "resnet18",
        "feat_dim": 32,
        "nchannels": 3,
        "batch_size_train": 64,
        "batch_size_valid": 8,
        "num_workers": 1,
        "learning_rate": 0.05,
        "lr_decay_rate": 0.1,
        "weight_decay": 0.0001,
        "momentum": 0.9,
        "temp": 0.07,
        "cosine": True,
        "warm": False,
        "trial": 1,
        "epochs": 2,
        "lr_decay_epochs": "700,800",
        "random_jitter": [8, 2],
        "model_root": "EQ",
        "s3_outdir": "eq-outdir",  # not the folder: the checkpoint (and so its digest) must not depend on it
    }
    opts_file = root / "opts.json"
    opts_file.write_text(json.dumps(opts))
    opt = option_preprocess(Params(str(opts_file)))
    torch.manual_seed(11)
    model, _ = set_model(opt, cuda_use=False)
    ckpt = root / "models" / "last.pth"
    ckpt.parent.mkdir()
    torch.save({"opt": opt, "model": model.state_dict(), "optimizer": None, "epoch": 1}, ckpt)

    from safetensors.torch import save_file

    from nenya.encoders.torchvision import import_torchvision  # torchvision built for another torch

    import_torchvision()
    import timm

    torch.manual_seed(12)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    weights = root / "models" / "timm_resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))

    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    rng = np.random.default_rng(7)
    for i in range(40):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        where = photos / ("sub" if i % 3 == 0 else "") / f"p{i:03d}.{'jpg' if i % 2 else 'png'}"
        img.save(where, quality=90) if i % 2 else img.save(where)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # the inputs themselves must not change between runs: the checkpoint's bytes enter the vectors' fingerprint
    inputs_digest = _sha(inputs_digest.encode() + ckpt.read_bytes() + weights.read_bytes())
    return {
        "preproc": str(preproc),
        "ckpt": str(ckpt),
        "weights": str(weights),
        "photos": str(photos),
        "inputs_digest": inputs_digest,
    }


def nenya(*args: str) -> None:
    cmd = [sys.executable, "-m", "nenya", *args, "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")


def run_all(root: Path, paths: dict[str, str]) -> None:
    for fmt in ("h5", "parquet", "npy"):
        nenya(
            "extract",
            paths["preproc"],
            "--model",
            f"supcon:{paths['ckpt']}",
            "--format",
            fmt,
            "--batch-size",
            "16",
            "--shard-size",
            "64",
            "-o",
            str(root / f"out_{fmt}"),
        )
    for ext in ("parquet", "npy"):
        nenya(
            "extract",
            "--source",
            f"images:{paths['photos']}",
            "--model",
            "timm:resnet18",
            "--weights",
            paths["weights"],
            "--size",
            "48",
            "--resize",
            "56",
            "--batch-size",
            "8",
            "--shard-size",
            "16",
            "-o",
            str(root / f"photos_out/vectors.{ext}"),
        )
    # tiles: one vector per spatial cell
    nenya(
        "extract",
        "--source",
        f"images:{paths['photos']}",
        "--model",
        "timm:resnet18",
        "--weights",
        paths["weights"],
        "--size",
        "64",
        "--layer",
        "3",
        "--pool",
        "none",
        "--batch-size",
        "8",
        "-o",
        str(root / "photos_out/tiles.parquet"),
    )


def _clean(text: str, root: Path) -> str:
    return text.replace(str(root.resolve()), "<ROOT>").replace(str(root), "<ROOT>")


def digests(root: Path) -> dict[str, str]:
    import h5py
    import pyarrow.parquet as pq

    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ("out" in p.parts[len(root.parts)])):
        rel = str(path.relative_to(root))
        if path.suffix == ".h5":
            with h5py.File(path, "r") as f:
                for name in sorted(f):
                    ds = f[name]
                    out[f"{rel}:{name}"] = _sha(f"{ds.dtype}{ds.shape}".encode() + ds[:].tobytes())
                    for k in sorted(ds.attrs):
                        out[f"{rel}:{name}@{k}"] = _sha(_clean(repr(ds.attrs[k]), root).encode())
                for k in sorted(f.attrs):
                    out[f"{rel}@{k}"] = _sha(_clean(str(f.attrs[k]), root).encode())
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                col = table.column(name).combine_chunks()
                out[f"{rel}:{name}"] = _sha(f"{col.type}".encode() + _clean(repr(col.to_pylist()), root).encode())
            for k, v in sorted((table.schema.metadata or {}).items()):
                out[f"{rel}@{k.decode()}"] = _sha(_clean(v.decode(), root).encode())
        elif path.suffix == ".npy":
            arr = np.load(path)
            out[f"{rel}"] = _sha(f"{arr.dtype}{arr.shape}".encode() + arr.tobytes())
        elif path.name.endswith(".status.csv"):
            out[rel] = _sha(_clean(path.read_text(), root).encode())
        else:
            out[rel] = "present"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file of digests to write")
    ap.add_argument("--compare", help="a reference JSON made by another version")
    ap.add_argument("--keep", help="work in this (new) folder and keep it, to look at what differs")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    with tempfile.TemporaryDirectory(prefix="nenya-eq-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        paths = make_inputs(root)
        run_all(root, paths)
        result = {"inputs": paths["inputs_digest"], **digests(root)}
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"{len(result)} digests -> {args.out}")
    if not args.compare:
        return 0
    ref = json.loads(Path(args.compare).read_text())
    differ = sorted(k for k in set(ref) | set(result) if ref.get(k) != result.get(k))
    print(
        f"| outputs compared | digests | same | different |\n|---|---|---|---|\n"
        f"| h5, Parquet, npy (cutouts); Parquet, npy, tiles (photos) | {len(ref)} | "
        f"{len(ref) - len(differ)} | {len(differ)} |"
    )
    for k in differ:
        print(f"  differs: {k}: {ref.get(k)} -> {result.get(k)}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
