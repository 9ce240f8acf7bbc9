"""Encoder speed features: out-of-memory back-off, torch.compile opt-in, bf16 on CPUs, uint8 transfer."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_opts, save_checkpoint
from nenya import device as _speed
from nenya._errors import NenyaError
from nenya.encoders.base import Encoder, Preprocess, resolve_precision
from nenya.params import Params, option_preprocess


class Picky(nn.Module):
    """A tiny conv net that raises an allocator-style out-of-memory error on batches larger than ``fits``."""

    def __init__(self, fits: int, message: str = "CUDA out of memory. Tried to allocate 2.00 GiB") -> None:
        super().__init__()
        self.fits, self.message = fits, message
        self.sizes: list[int] = []
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        if len(x) > self.fits:
            raise RuntimeError(self.message)
        return self.net(x)


def encoder(model: nn.Module, dim: int = 5, **to) -> Encoder:
    return Encoder(
        model, name="picky", dim=dim, preprocess=Preprocess(in_channels=3, demean=True), fingerprint="test"
    ).to("cpu", **to)


def batch(n: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 1, 12, 12), dtype=np.float32))


@pytest.mark.parametrize(
    "message",
    [
        "CUDA out of memory. Tried to allocate 2.00 GiB",
        "MPS backend out of memory (MPS allocated: 1 GB)",
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
    ],
)
def test_oom_backoff_keeps_order_and_values(message, caplog):
    torch.manual_seed(0)
    model = Picky(fits=5, message=message)
    x = batch(16)
    plain = Picky(fits=10**9)
    plain.load_state_dict(model.state_dict())
    want = encoder(plain).encode(x)

    enc = encoder(model)
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        got = enc.encode(x)
    assert got.shape == (16, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # order and values, nothing lost or twice
    assert enc.max_batch == 4  # 16 -> 8 -> 4 fits (5 would, but halving goes 16, 8, 4)
    assert model.sizes == [16, 8, 4, 4, 4, 4]  # after learning 4, the second half goes straight in fours
    warnings = [r for r in caplog.records if "sub-batches of 4" in r.getMessage()]
    assert len(warnings) == 1

    # later calls use the remembered size directly, without new out-of-memory attempts or warnings
    model.sizes.clear()
    caplog.clear()
    y = batch(10, seed=2)
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        got2 = enc.encode(y)
    assert model.sizes == [4, 4, 2]
    assert not caplog.records
    torch.testing.assert_close(got2, encoder(plain).encode(y), rtol=1e-5, atol=1e-6)


def test_oom_backoff_odd_sizes_and_cuda_error_type(monkeypatch):
    class CudaPicky(Picky):
        def forward(self, x):
            if len(x) > self.fits:
                raise torch.cuda.OutOfMemoryError("CUDA error: out of memory")
            return self.net(x)

    torch.manual_seed(0)
    model = CudaPicky(fits=3)
    plain = Picky(fits=10**9)
    plain.load_state_dict(model.state_dict())
    x = batch(13)
    enc = encoder(model)
    torch.testing.assert_close(enc.encode(x), encoder(plain).encode(x), rtol=1e-5, atol=1e-6)
    assert enc.max_batch == 2  # 13 -> 7 -> 4 -> 2


def test_single_item_that_does_not_fit_is_a_clear_error():
    enc = encoder(Picky(fits=0))
    with pytest.raises(NenyaError, match="one item of shape .* does not fit in cpu memory") as info:
        enc.encode(batch(4))
    assert isinstance(info.value.__cause__, RuntimeError)  # the allocator's own message is kept
    assert enc.max_batch == 1


def test_other_errors_are_not_retried():
    model = Picky(fits=0, message="mat1 and mat2 shapes cannot be multiplied")
    enc = encoder(model)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        enc.encode(batch(8))
    assert model.sizes == [8] and enc.max_batch is None


def test_uint8_travels_as_uint8_and_is_normalised_in_prepare(monkeypatch):
    seen = []
    real = Encoder.prepare

    def spy(self, x):
        seen.append(x.dtype)
        return real(self, x)

    monkeypatch.setattr(Encoder, "prepare", spy)
    enc = encoder(Picky(fits=99))
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 3, 12, 12), dtype=np.uint8))
    out = enc.encode(x)
    assert seen == [torch.uint8] and out.dtype == torch.float32


def test_compile_failure_falls_back_to_eager(monkeypatch, caplog):
    def broken(model, **kw):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    torch.manual_seed(0)
    model = Picky(fits=99)
    with caplog.at_level(logging.WARNING, logger="nenya.device"):
        enc = encoder(model, compile=True)
    assert not enc.compiled
    assert any("torch.compile failed" in r.getMessage() for r in caplog.records)
    x = batch(4)
    torch.testing.assert_close(enc.encode(x), encoder(model).encode(x))


def test_compile_failing_at_first_batch_falls_back_to_eager(monkeypatch, caplog):
    class Lazy(nn.Module):  # what torch.compile returns: compiles, and may fail, at the first call
        def forward(self, x):
            raise RuntimeError("InductorError: CppCompileError: C++ compile error")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Lazy())
    torch.manual_seed(0)
    model = Picky(fits=99)
    enc = encoder(model, compile=True)
    assert enc.compiled
    x = batch(4)
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        got = enc.encode(x)
    assert not enc.compiled
    assert any("running it eagerly" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(got, encoder(model).encode(x))


@pytest.mark.slow
def test_real_compile_equals_eager():
    """A real torch.compile (inductor, C++ on CPU) of a tiny model: ~40 s on 2 busy EPYC cores."""
    torch.manual_seed(0)
    model = Picky(fits=99)
    x = batch(4)
    want = encoder(model).encode(x)
    enc = encoder(model, compile=True)
    got = enc.encode(x)
    if not enc.compiled:
        pytest.skip("torch.compile is not usable here (fell back to eager)")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_on_cpu_without_native_support_warns(monkeypatch, caplog):
    monkeypatch.setattr(_speed, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr("nenya.device.cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        enc = encoder(Picky(fits=99), precision="bf16")
    assert enc.autocast_dtype == torch.bfloat16  # asked for explicitly: honoured, with the warning
    assert any("slower than fp32" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        assert resolve_precision("auto", torch.device("cpu")) is None
        assert resolve_precision("fp32", torch.device("cpu")) is None
    assert not caplog.records


def test_auto_picks_bf16_on_cpus_with_native_support(monkeypatch, caplog):
    monkeypatch.setattr("nenya.device.cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="nenya.encoders.base"):
        assert resolve_precision("auto", torch.device("cpu")) == torch.bfloat16
        assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16
    assert not caplog.records


def test_this_cpu_detection_matches_its_flags():
    """This machine's answer agrees with /proc/cpuinfo (the AVX2 EPYC the tests run on has no native bf16)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith(("flags", "Features"))).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo")
    native = any(f in flags for f in ("avx512_bf16", "amx_bf16", "bf16"))
    assert _speed.cpu_has_native_bf16() is native
    if not native:
        assert resolve_precision("auto", torch.device("cpu")) is None


def test_bf16_latents_close_to_fp32_on_supcon(tmp_path):
    """bf16 autocast changes SupCon latents by little: cosine similarity >= 0.999 per cutout."""
    from nenya.encoders.supcon import SupConEncoder

    opt = option_preprocess(Params(make_opts(tmp_path, ssl_model="resnet18", feat_dim=16)))
    path = tmp_path / "model" / "last.pth"
    save_checkpoint(opt, path)
    x = batch(8, seed=5)
    fp32 = SupConEncoder.from_checkpoint(path, opt).to("cpu", "fp32").encode(x)
    bf16 = SupConEncoder.from_checkpoint(path, opt).to("cpu", "bf16").encode(x)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    cos = torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
    assert float(cos.min()) >= 0.999, cos
