"""Tiny synthetic inputs and models, made in tmp_path: no network, no downloads."""

from __future__ import annotations

import os
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from nenya.params import Params, option_preprocess
from nenya.sample_data import write_preproc
from nenya.train_util import set_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst"


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path_factory):
    """Fixed RNG state per test, and a private cache and model dir (nothing leaks between tests)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("NENYA_CACHE", str(cache))
    monkeypatch.setenv("NENYA_CONFIG", str(cache / "no-config.json"))
    monkeypatch.delenv("NENYA_MODEL_DIR", raising=False)
    yield


def make_opts(folder: Path, *, ssl_model: str = "resnet18", feat_dim: int = 16, nchannels: int = 3, **extra) -> Path:
    opts = {
        "ssl_method": "SimCLR",
        "ssl_model": ssl_model,
        "feat_dim": feat_dim,
        "nchannels": nchannels,
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
        "model_root": "TEST",
        "s3_outdir": str(folder),
    }
    opts.update(extra)
    path = folder / "opts.json"
    import json

    path.write_text(json.dumps(opts))
    return path


def save_checkpoint(opt: Params, path: Path, *, seed: int = 0, dataparallel: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = set_model(opt, cuda_use=False)
    model.eval()
    if dataparallel:  # names as Nenya's multi-GPU training saved them: encoder.module.*
        wrapped = torch.nn.Module()
        wrapped.encoder = torch.nn.DataParallel(model.encoder)
        wrapped.head = model.head
        state = wrapped.state_dict()
    else:
        state = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"opt": opt, "model": state, "optimizer": None, "epoch": 1}, path)
    return model


@pytest.fixture
def opts_file(tmp_path) -> Path:
    return make_opts(tmp_path)


@pytest.fixture
def opt(opts_file) -> Params:
    return option_preprocess(Params(opts_file))


@pytest.fixture
def checkpoint(opt, tmp_path):
    """(path, model) of a Nenya-format checkpoint at <s3_outdir>/<model_folder>/last.pth."""
    path = tmp_path / opt.model_folder / "last.pth"
    model = save_checkpoint(opt, path)
    return path, model


@pytest.fixture
def preproc(tmp_path) -> Path:
    """A preproc file: valid (37,1,16,16) and train (21,1,16,16) with metadata tables."""
    (tmp_path / "data").mkdir()
    return Path(write_preproc(tmp_path / "data" / "tiny_preproc_test.h5", n_valid=37, n_train=21, size=16, seed=3))


@pytest.fixture
def preproc_nochannel(tmp_path) -> Path:
    """The newer layout: (N, H, W) with no channel axis."""
    (tmp_path / "nc").mkdir()
    return Path(
        write_preproc(tmp_path / "nc" / "nochan_preproc.h5", n_valid=19, n_train=0, size=16, seed=4, channel_axis=False)
    )


def reference_latents(model: torch.nn.Module, cutouts: np.ndarray, nchannels: int = 3) -> np.ndarray:
    """The model applied directly to the cutouts (the equivalence reference)."""
    x = torch.from_numpy(np.asarray(cutouts, dtype=np.float32))
    if x.dim() == 3:
        x = x[:, None]
    x = x.repeat(1, nchannels, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


def read_partition(path: Path, partition: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[partition][:]


@pytest.fixture
def shared_sst() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared sample data not found at {SHARED}")
    return SHARED


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


os.environ.setdefault("TQDM_DISABLE", "1")
