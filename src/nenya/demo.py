"""``nenya demo``: sample SST cutouts -> a briefly trained contrastive model -> latents through the
documented API -> a UMAP plot, a gallery and the explorer page.

The synthetic cutouts themselves live in :mod:`nenya.sample_data`; ``write_preproc``,
``make_cutouts`` and ``CLASSES`` stay importable from here, where earlier docs named them."""

from __future__ import annotations

import json
import os
import time

from nenya.sample_data import CLASSES, make_cutouts, write_preproc

__all__ = ["CLASSES", "demo_opts", "make_cutouts", "run_demo", "write_preproc"]


def science_missing() -> list[str]:
    """The science extra's packages that are not installed (``nenya trends`` and ``nenya outliers`` need them)."""
    import importlib.util

    return [m for m in ("statsmodels", "zuko", "safetensors") if importlib.util.find_spec(m) is None]


def demo_opts(folder: str, model: str = "resnet18") -> dict:
    """Nenya-style opts of the demo model (also used by the tests to make small checkpoints)."""
    return {
        "ssl_method": "SimCLR",
        "ssl_model": model,
        "feat_dim": 128,
        "nchannels": 3,
        "batch_size_train": 64,
        "batch_size_valid": 128,
        "num_workers": 1,
        "epochs": 1,
        "learning_rate": 0.01,  # 0.05 (Nenya's) collapsed the 100 s demo run: effective rank 2.5, cosine 0.997
        "lr_decay_epochs": "700,800,900",
        "lr_decay_rate": 0.1,
        "weight_decay": 0.0001,
        "momentum": 0.9,
        "temp": 0.07,
        "cosine": True,
        "warm": False,
        "trial": 0,
        "random_jitter": [40, 5],
        "flip": True,
        "rotate": True,
        "demean": True,
        "model_root": "demo",
        "s3_outdir": os.path.abspath(folder),
        "eval_column": "pattern",  # training logs the kNN accuracy of the latents on the synthetic patterns
    }


def run_demo(
    folder: str = "nenya-demo", *, n: int = 2000, model: str = "resnet18", train_seconds: float = 100.0
) -> dict[str, str]:
    """Make everything under ``folder`` and print where it went. Returns the paths.

    Steps: ``n`` synthetic 64x64 SST cutouts (fronts, eddies, filaments, noise) in a Nenya preproc
    file; SimCLR training of a SupCon ResNet for ``train_seconds`` on the ``train`` partition
    (``nenya train contrastive``, Nenya's checkpoint format); latents of both partitions through
    Nenya's documented ``latents_extraction.main``; then UMAP, a gallery and the explorer page.
    """
    import h5py

    from nenya.analysis import demo_outputs
    from nenya.latents_extraction import main as extract_main
    from nenya.train.contrastive import train
    from nenya.train.health import HealthOptions

    t0 = time.perf_counter()
    folder = os.path.abspath(folder)
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "data", "MODIS_demo_preproc.h5")
    os.makedirs(os.path.dirname(data), exist_ok=True)
    n_train = n // 4
    write_preproc(data, n_valid=n - n_train, n_train=n_train, seed=0)
    print(f"sample data:  {data} ({n - n_train} valid + {n_train} train synthetic SST cutouts, 64x64)", flush=True)

    opts = demo_opts(folder, model)
    opts.update(images_file=data, num_workers=0, save_freq=1, valid_freq=1, cosine=False)
    opts_file = os.path.join(folder, "opts.json")
    with open(opts_file, "w") as f:
        json.dump(opts, f, indent=2)
    print(f"options:      {opts_file}")
    print(f"training:     SimCLR {model} for up to {train_seconds:.0f} s on the train partition ...", flush=True)
    # health metrics on 256 validation cutouts and a 256-cutout kNN bank: they cost forward passes, and
    # the demo's time box is short
    health = HealthOptions(sample=256, bank=256)
    ckpt = train(opts_file, max_seconds=train_seconds, precision="auto", health=health)
    print(f"model:        {ckpt} (Nenya checkpoint format; learning curve next to it)", flush=True)

    latents = extract_main(opts_file, [data], clobber=True)[0]
    with h5py.File(latents, "r") as f:
        shapes = ", ".join(f"{k} {f[k].shape}" for k in ("train", "valid") if k in f)
    print(f"latents:      {latents} ({shapes})", flush=True)

    pictures = demo_outputs(latents, data, os.path.join(folder, "explore"))
    print(f"UMAP plot:    {pictures['umap_plot']}")
    print(f"gallery:      {pictures['gallery']}")
    print(f"explorer:     {pictures['explorer']} (open it in a browser; works offline)")
    print(f"live app:     nenya serve {latents} --coords {pictures['table']} --images {data}")
    where = "\"pattern == 'eddy'\""  # the demo's planted trends and outliers: docs/science.md's worked example
    print(f"trends:       nenya trends {pictures['table']} --where {where} --min-count 5 -o {folder}/trends/eddy")
    print(f"outliers:     nenya outliers {latents} --images {data} --fraction 0.01 -o {folder}/outliers")
    if science_missing():
        print(f"              (trends and outliers need the science extra, without {', '.join(science_missing())} "
              'here: pip install -c constraints.txt -e ".[science]" in this clone)')  # fmt: skip
    print(
        f"done in {time.perf_counter() - t0:.0f} s. Next: nenya extract {data} --opts {opts_file} "
        f"--format parquet --output {os.path.join(folder, 'parquet')}"
    )
    return {"data": data, "model": ckpt, "opts": opts_file, "latents": latents, **pictures}
