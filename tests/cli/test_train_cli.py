"""`nenya train ...` and `nenya reconstruct`, run through a subprocess exactly as a user types them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_opts
from nenya.sample_data import make_cutouts

# one intra-op thread: tiny models, and a busy 2-core machine makes OpenMP spin-waits costly
ENV = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")


def nenya(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nenya", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=600
    )


def test_help_lists_the_trainers():
    r = nenya("train", "--help")
    assert r.returncode == 0
    for word in ("contrastive", "autoencoder", "overfit"):
        assert word in r.stdout
    r = nenya("train", "contrastive", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout and "--precision" in r.stdout
    assert nenya("reconstruct", "--help").returncode == 0


@pytest.mark.slow
def test_train_contrastive_then_extract_with_the_checkpoint(tmp_path, preproc):
    opts = make_opts(tmp_path, images_file=str(preproc), batch_size_train=8, epochs=1, feat_dim=8)
    r = nenya("train", "contrastive", "--opts", opts, "--max-valid-batches", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[0]
    assert last.endswith("last.pth") and os.path.exists(last) and "images/s" in r.stdout
    r = nenya("extract", preproc, "--model", f"supcon:{last}", "--output", tmp_path / "lat", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "lat" / "tiny_latents_test.h5").exists()
    r = nenya(
        "train",
        "contrastive",
        "--opts",
        opts,
        "--auto-resume",
        "--epochs",
        "2",
        "--max-valid-batches",
        "1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "epochs 2-2" in r.stdout
    r = nenya("train", "contrastive", "--opts", tmp_path / "missing.json")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_autoencoder_overfit_and_reconstruct(tmp_path):
    x, _ = make_cutouts(12, size=24, seed=1)
    np.save(tmp_path / "imgs.npy", x[:, :, :21])
    r = nenya(
        "train",
        "autoencoder",
        "--data",
        "imgs.npy",
        "--nlayers",
        "2",
        "--poolsize",
        "2",
        "--numfilters",
        "1",
        "--num-dense",
        "6",
        "--num-steps",
        "6",
        "--num-checkpoints",
        "2",
        "--crop",
        "20,none",
        "-o",
        "ae",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ae" / "ckpt_epoch_2.pth").exists() and "6 steps" in r.stdout
    r = nenya("reconstruct", "ae/last.pth", "imgs.npy:2", "-o", "out/rec", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "out" / "rec.npy").shape == (1, 20, 21) and (tmp_path / "out" / "rec.png").exists()
    r = nenya(
        "train",
        "overfit",
        "--data",
        "imgs.npy",
        "--n-images",
        "2",
        "--nlayers",
        "1,2",
        "--poolsize",
        "2",
        "--numfilters",
        "1",
        "--num-dense",
        "2,8",
        "--num-steps",
        "5",
        "--threshold",
        "10",
        "-o",
        "grid.csv",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "num_dense 2" in r.stdout and (tmp_path / "grid.csv").exists()
    r = nenya("train", "autoencoder", "--data", "nothing.npy", cwd=tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_on_cpu(tmp_path, preproc):
    """DDP under torchrun (gloo on CPU): rank 0 alone writes, and the checkpoint has no module. names."""
    pytest.importorskip("torch.distributed.run")
    opts = make_opts(tmp_path, images_file=str(preproc), batch_size_train=8, epochs=1, feat_dim=8, valid_freq=5)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29731",
            "-m",
            "nenya",
            "train",
            "contrastive",
            "--opts",
            str(opts),
            "--device",
            "cpu",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=ENV,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    from nenya.encoders.weights import load_checkpoint

    printed = [line for line in r.stdout.splitlines() if line.endswith("last.pth")]
    assert len(printed) == 1, r.stdout  # rank 0 alone prints the summary
    ckpt = load_checkpoint(printed[0])
    assert ckpt["epoch"] == 1 and not any("module." in k for k in ckpt["model"])
