"""The `nenya` command, run exactly as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import read_partition, reference_latents

ENV = dict(os.environ, TQDM_DISABLE="1")


def nenya(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nenya", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def test_help_reads_well():
    r = nenya("--help")
    assert r.returncode == 0
    for word in ("extract", "demo", "models", "examples"):
        assert word in r.stdout
    r = nenya("extract", "--help")
    assert r.returncode == 0 and "--precision" in r.stdout and "--format" in r.stdout


def test_extract_with_checkpoint(checkpoint, preproc, tmp_path):
    path, model = checkpoint
    r = nenya(
        "extract",
        preproc,
        "--model",
        f"supcon:{path}",
        "--output",
        tmp_path / "out",
        "--no-progress",
        "--batch-size",
        16,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out" / "tiny_latents_test.h5"
    assert str(out) in r.stdout and "images/s" in r.stdout
    np.testing.assert_allclose(
        read_partition(out, "valid"), reference_latents(model, read_partition(preproc, "valid")), atol=1e-5
    )
    again = nenya("extract", preproc, "--model", f"supcon:{path}", "--output", tmp_path / "out")
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_extract_with_opts_alone_and_glob(opt, opts_file, checkpoint, preproc, tmp_path):
    r = nenya(
        "extract",
        str(preproc.parent / "*_preproc_*.h5"),
        "--opts",
        opts_file,
        "--format",
        "parquet",
        "--partitions",
        "valid",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / opt.latents_folder / "tiny_latents_test.parquet"
    assert out.exists()


def test_clear_errors(checkpoint, preproc, tmp_path):
    r = nenya("extract", preproc, "--model", "bogus:x", "--output", tmp_path)
    assert r.returncode == 2 and "unknown encoder 'bogus'" in r.stderr and "supcon" in r.stderr
    r = nenya("extract", tmp_path / "missing_preproc.h5", "--model", f"supcon:{checkpoint[0]}", "--output", tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = nenya("extract", preproc, "--output", tmp_path)
    assert r.returncode == 2 and "--model" in r.stderr


def test_malicious_checkpoint_refused_from_cli(checkpoint, preproc, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    code = (
        "import os, torch\n"
        "class P:\n"
        f"    def __reduce__(self): return (os.makedirs, ({str(marker)!r},))\n"
        f"sd = torch.load({str(checkpoint[0])!r}, weights_only=False)['model']\n"
        f"torch.save({{'opt': P(), 'model': sd}}, {str(evil)!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    r = nenya("extract", preproc, "--model", f"supcon:{evil}", "--output", tmp_path / "o")
    assert r.returncode == 2 and "refusing to load" in r.stderr and "--trust-checkpoint" in r.stderr
    assert not marker.exists()


def test_models_lists_specs():
    r = nenya("models")
    assert r.returncode == 0 and "supcon:" in r.stdout and "nenya:" in r.stdout and "NENYA_MODEL_DIR" in r.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    r = nenya("demo", tmp_path / "demo", "--n", 24, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "latents:" in r.stdout
    latents = next((tmp_path / "demo" / "latents").rglob("*_latents.h5"))
    with h5py.File(latents) as f:
        assert f["valid"].shape == (18, 128) and f["train"].shape == (6, 128)
        norms = np.linalg.norm(f["valid"][:], axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    torch.load(next((tmp_path / "demo" / "models").rglob("last.pth")), weights_only=False)


def test_the_demo_names_the_science_extra_only_when_it_is_missing(monkeypatch):
    """The demo prints `nenya trends` and `nenya outliers` commands; on the README's plain install (no
    science extra) it says which packages they need and how to install them."""
    import importlib.util

    from nenya import demo

    assert demo.science_missing() == []  # the test extra holds every extra
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "zuko" else real(name, *a))
    assert demo.science_missing() == ["zuko"]


@pytest.mark.parametrize(
    ("precision", "native", "hinted"),
    [(None, True, True), (None, False, False), ("auto", True, False), ("bf16", True, False), ("fp32", True, False)],
)
def test_bf16_hint_only_for_the_default_fp32_on_a_native_bf16_cpu(
    precision, native, hinted, checkpoint, preproc, tmp_path, monkeypatch, capsys
):
    """Issue 27: a CPU that computes bf16 natively is told once that --precision auto would be faster;
    not one without, not when a precision was asked for (a typed fp32 too), not on a GPU."""
    import nenya.device
    from nenya.cli import main
    from nenya.cli.extract import BF16_HINT, _precision_hint

    monkeypatch.setattr(nenya.device, "cpu_has_native_bf16", lambda: native)
    args = ["extract", preproc, "--model", f"supcon:{checkpoint[0]}", "-o", tmp_path / "o", "--no-progress"]
    args += ["--device", "cpu", "--partitions", "valid"] + (["--precision", precision] if precision else [])
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    assert err.count(BF16_HINT) == (1 if hinted else 0), err
    assert "about 2x faster" in BF16_HINT and "not bit-identical" in BF16_HINT
    _precision_hint(torch.device("cuda"))  # a GPU run: never
    assert BF16_HINT not in capsys.readouterr().err
