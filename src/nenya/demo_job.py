"""``nenya demo``: sample SST cutouts, a Nenya-format model, and latents through the documented API."""

from __future__ import annotations

import json
import os
import time

import torch

from nenya.demo import write_preproc
from nenya.params import Params, option_preprocess


def demo_opts(folder: str, model: str = "resnet18") -> dict:
    return {
        "ssl_method": "SimCLR", "ssl_model": model, "feat_dim": 128, "nchannels": 3,
        "batch_size_train": 64, "batch_size_valid": 128, "num_workers": 1, "epochs": 1,
        "learning_rate": 0.05, "lr_decay_epochs": "700,800,900", "lr_decay_rate": 0.1, "weight_decay": 0.0001,
        "momentum": 0.9, "temp": 0.07, "cosine": True, "warm": False, "trial": 0, "random_jitter": [40, 5],
        "flip": True, "rotate": True, "demean": True, "model_root": "demo", "s3_outdir": os.path.abspath(folder),
    }


def run_demo(folder: str = "nenya-demo", *, n: int = 2000, model: str = "resnet18") -> dict[str, str]:
    """Make everything under ``folder`` and print where it went. Returns the paths."""
    from nenya.latents_extraction import main as extract_main
    from nenya.train_util import set_model

    t0 = time.perf_counter()
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "data", "MODIS_demo_preproc.h5")
    os.makedirs(os.path.dirname(data), exist_ok=True)
    n_train = n // 4
    write_preproc(data, n_valid=n - n_train, n_train=n_train, seed=0)
    print(f"sample data:  {data} ({n - n_train} valid + {n_train} train synthetic SST cutouts, 64x64)")

    opts_file = os.path.join(folder, "opts.json")
    with open(opts_file, "w") as f:
        json.dump(demo_opts(folder, model), f, indent=2)
    opt = option_preprocess(Params(opts_file))
    torch.manual_seed(0)
    net, _ = set_model(opt, cuda_use=False)
    model_dir = os.path.join(folder, opt.model_folder)
    os.makedirs(model_dir, exist_ok=True)
    ckpt = os.path.join(model_dir, "last.pth")
    torch.save({"opt": opt, "model": net.state_dict(), "optimizer": None, "epoch": 0}, ckpt)
    print(f"model:        {ckpt} ({model}, randomly initialised; Nenya checkpoint format)")
    print(f"options:      {opts_file}")

    outputs = extract_main(opts_file, [data], clobber=True)
    latents = outputs[0]
    import h5py

    with h5py.File(latents, "r") as f:
        shapes = ", ".join(f"{k} {f[k].shape}" for k in ("train", "valid") if k in f)
    print(f"latents:      {latents} ({shapes})")
    print(f"done in {time.perf_counter() - t0:.0f} s. Next: nenya extract {data} --opts {opts_file} "
          f"--format parquet --output {os.path.join(folder, 'parquet')}")
    return {"data": data, "model": ckpt, "opts": opts_file, "latents": latents}
