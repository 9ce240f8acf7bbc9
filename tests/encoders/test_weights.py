"""Checkpoint loading: DataParallel names, safe unpickling, safetensors, clear errors."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch

from conftest import save_checkpoint
from nenya._errors import CheckpointError
from nenya.encoders import load_encoder
from nenya.encoders.supcon import SupConEncoder
from nenya.encoders.weights import load_checkpoint, save_safetensors, strip_module
from nenya.params import Params


class Payload:
    """Stands for an arbitrary object in a checkpoint: unpickling it would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _encode(encoder, x):
    return encoder.to("cpu").encode(torch.from_numpy(x)).numpy()


def test_dataparallel_and_plain_checkpoints_load_the_same(opt, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    plain = tmp_path / "plain.pth"
    dp = tmp_path / "dp.pth"
    model = save_checkpoint(opt, plain, seed=5)
    save_checkpoint(opt, dp, seed=5, dataparallel=True)
    assert any(".module." in k for k in torch.load(dp, weights_only=False)["model"])
    a = _encode(SupConEncoder.from_checkpoint(plain, opt), x)
    b = _encode(SupConEncoder.from_checkpoint(dp, opt, remove_module=True), x)
    np.testing.assert_allclose(a, b, atol=1e-6)
    ref = model(torch.from_numpy(x - x.mean(axis=(1, 2, 3), keepdims=True)).repeat(1, 3, 1, 1)).detach().numpy()
    np.testing.assert_allclose(a, ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="remove_module"):
        SupConEncoder.from_checkpoint(dp, opt, remove_module=False)


def test_strip_module_everywhere():
    sd = {"module.encoder.module.conv1.weight": 1, "head.0.weight": 2, "encoder.modules_x": 3}
    assert strip_module(sd) == {"encoder.conv1.weight": 1, "head.0.weight": 2, "encoder.modules_x": 3}


def test_pickled_payload_is_refused_and_never_runs(opt, tmp_path):
    marker = tmp_path / "payload-ran"
    model = save_checkpoint(opt, tmp_path / "ok.pth")
    evil = tmp_path / "evil.pth"
    torch.save({"opt": Payload(str(marker)), "model": model.state_dict()}, evil)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth.*trust"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        SupConEncoder.from_checkpoint(evil, opt)
    assert not marker.exists()


def test_trust_allows_other_objects_explicitly(opt, tmp_path):
    model = save_checkpoint(opt, tmp_path / "ok.pth")
    path = tmp_path / "odd.pth"
    torch.save({"opt": opt, "model": model.state_dict(), "extra": argparse.ArgumentParser}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert "model" in load_checkpoint(path, trust=True)


def test_namespace_options_load_as_params(opt, tmp_path):
    model = save_checkpoint(opt, tmp_path / "ok.pth")
    path = tmp_path / "ns.pth"
    torch.save({"opt": argparse.Namespace(**opt.dict), "model": model.state_dict()}, path)
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt["opt"], Params) and ckpt["opt"].feat_dim == opt.feat_dim
    assert SupConEncoder.from_checkpoint(path).dim == opt.feat_dim  # options read from the file


def test_safetensors_round_trip(opt, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 1, 16, 16)).astype(np.float32)
    model = save_checkpoint(opt, tmp_path / "a.pth")
    st = tmp_path / "a.safetensors"
    save_safetensors(st, model.state_dict(), opt)
    a = _encode(load_encoder(str(tmp_path / "a.pth")), x)
    b = _encode(load_encoder(f"supcon:{st}"), x)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bare_state_dict_needs_options(opt, tmp_path):
    model = save_checkpoint(opt, tmp_path / "a.pth")
    path = tmp_path / "sd.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="--opts"):
        SupConEncoder.from_checkpoint(path)
    assert SupConEncoder.from_checkpoint(path, opt).dim == 16


def test_truncated_and_mismatched_checkpoints(opt, tmp_path):
    save_checkpoint(opt, tmp_path / "a.pth")
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated|readable"):
        load_checkpoint(tmp_path / "cut.pth")
    other = Params(None, **dict(opt.dict, feat_dim=32))
    with pytest.raises(CheckpointError, match="feat_dim"):
        SupConEncoder.from_checkpoint(tmp_path / "a.pth", other)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
