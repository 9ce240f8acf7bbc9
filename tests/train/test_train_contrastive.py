"""Contrastive training: checkpoints in Nenya's format, extraction from them, resume, time limits, learning."""

from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch

from conftest import make_opts, read_partition, reference_latents
from nenya.encoders.weights import load_checkpoint
from nenya.latents_extraction import model_latents_extract
from nenya.params import Params, option_preprocess
from nenya.sample_data import CLASSES, make_cutouts
from nenya.train.contrastive import train, train_run
from nenya.train_util import set_model

SHORT = {
    "batch_size_train": 8,
    "batch_size_valid": 8,
    "epochs": 2,
    "save_freq": 1,
    "valid_freq": 1,
    "feat_dim": 16,
    "cosine": True,
    "warm": False,
}


def _opts(tmp_path, preproc, **extra) -> Params:
    path = make_opts(tmp_path, images_file=str(preproc), **{**SHORT, **extra})
    return option_preprocess(Params(path))


def _model_from(path) -> torch.nn.Module:
    ckpt = load_checkpoint(path)
    model, _ = set_model(ckpt["opt"], cuda_use=False)
    model.load_state_dict(ckpt["model"])
    return model.eval()


def test_checkpoints_follow_nenya_format_and_extract_unchanged(tmp_path, preproc):
    opt = _opts(tmp_path, preproc)
    summary = train_run(opt, progress=False, max_valid_batches=2)
    folder = tmp_path / opt.model_folder  # <s3_outdir>/<model_folder>, where prep() looks
    assert summary.last == str(folder / "last.pth") and summary.epochs_done == 2
    for name in (
        "ckpt_epoch_1.pth",
        "ckpt_epoch_2.pth",
        "last.pth",
        "learning_curve.csv",
        "learning_curve.png",
        "opts.json",
    ):
        assert (folder / name).exists(), name
    raw = torch.load(folder / "last.pth", map_location="cpu", weights_only=False)
    assert set(raw) >= {"opt", "model", "optimizer", "epoch"} and raw["epoch"] == 2
    assert isinstance(raw["opt"], Params) and raw["opt"].ssl_model == "resnet18"
    assert all(not k.startswith("module.") and ".module." not in k for k in raw["model"])
    assert load_checkpoint(folder / "ckpt_epoch_1.pth")["epoch"] == 1  # loads with weights_only=True
    latents = model_latents_extract(opt, str(preproc), str(folder / "last.pth"))
    expected = reference_latents(_model_from(folder / "last.pth"), read_partition(preproc, "valid"))
    np.testing.assert_allclose(latents["valid"], expected, atol=1e-5)
    assert latents["train"].shape == (21, 16)
    with open(folder / "learning_curve.csv") as f:
        rows = list(csv.DictReader(f))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"train_step", "train_epoch", "valid_step", "valid_epoch"}
    assert [r["epoch"] for r in rows if r["kind"] == "valid_epoch"] == ["0", "1", "2"]  # 0: the untrained model
    assert (folder / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_epochs_and_optimiser_exactly(tmp_path, preproc):
    # step decay (not cosine), so that a 1-epoch run has the same schedule as the first epoch of a 2-epoch one
    opt = _opts(tmp_path, preproc, valid_freq=5, cosine=False)
    straight = train_run(opt, progress=False, output=str(tmp_path / "a"))
    first = train_run(
        _opts(tmp_path, preproc, epochs=1, valid_freq=5, cosine=False), progress=False, output=str(tmp_path / "b")
    )
    assert load_checkpoint(first.last)["epoch"] == 1
    resumed = train_run(opt, progress=False, output=str(tmp_path / "b"), auto_resume=True)
    assert resumed.start_epoch == 2 and resumed.epochs_done == 2
    # the summary counts this run's steps and images (the total steps apart)
    assert resumed.line().startswith(f"epochs 2-2, 2 steps (4 in all), {first.images} images in "), resumed.line()
    a, b = load_checkpoint(straight.last), load_checkpoint(resumed.last)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4, msg=k)
    for k, state in a["optimizer"]["state"].items():
        torch.testing.assert_close(
            state["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"], atol=1e-5, rtol=1e-4
        )
    with open(tmp_path / "b" / "learning_curve.csv") as f:
        epochs = [r["epoch"] for r in csv.DictReader(f) if r["kind"] == "train_epoch"]
    assert epochs == ["1", "2"]
    again = train_run(opt, progress=False, resume=str(tmp_path / "b" / "ckpt_epoch_2.pth"), output=str(tmp_path / "b"))
    assert again.steps == 4 and again.epochs_done == 2  # nothing left to do
    assert again.line().startswith("no epoch run, 0 steps (4 in all), 0 images in "), again.line()


def test_time_limit_debug_and_nenya_main(tmp_path, preproc):
    opt = _opts(tmp_path, preproc, epochs=50)
    last = train(opt, max_seconds=0.0, progress=False, output=str(tmp_path / "capped"))
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 0 and ckpt["step"] == 0
    from nenya.train import main

    opts_file = make_opts(tmp_path, images_file=str(preproc), **{**SHORT, "epochs": 30})
    last = main(str(opts_file), debug=True)
    assert "_debug" in last and load_checkpoint(last)["epoch"] == 2
    saved = json.loads(
        (tmp_path / opt.model_folder).with_name(opt.model_name + "_debug").joinpath("opts.json").read_text()
    )
    assert saved["ssl_model"] == "resnet18"


def test_refuses_bad_options(tmp_path, preproc):
    from nenya._errors import NenyaError

    with pytest.raises(NenyaError, match="label_column"):
        train(_opts(tmp_path, preproc, ssl_method="SupCon"), progress=False)
    with pytest.raises(NenyaError, match="images_file"):
        train(Params(ssl_model="resnet18", feat_dim=8), progress=False)


def _downsampled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 cutouts: the 32x32 synthetic patterns averaged 4x4 (cheap enough to train on a CPU)."""
    x, y = make_cutouts(n, size=32, seed=seed)
    return x.reshape(n, 8, 4, 8, 4).mean(axis=(2, 4))[:, None].astype(np.float32), y


def _knn_accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    with torch.no_grad():
        z = model.eval()(torch.from_numpy(x)).numpy()
    return float(cross_val_score(KNeighborsClassifier(5), z, y, cv=5).mean())


@pytest.mark.slow
def test_trained_latents_separate_known_classes(tmp_path):
    """SupCon on the pattern labels of synthetic fronts/eddies/filaments/noise lifts held-out kNN accuracy.

    Measured (seed 0): untrained 0.580, trained 0.787 after 64 steps (8 epochs of 256 cutouts). SimCLR
    (no labels) reached only 0.650 in the same budget, too close to assert reliably on a CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread beats OpenMP spinning on a busy 2-core box
    try:
        xt, yt = _downsampled(256, seed=1)
        xv, yv = _downsampled(300, seed=2)
        data = tmp_path / "classes_preproc.h5"
        with h5py.File(data, "w") as f:
            f["train"] = xt
            meta = f.create_dataset("train_metadata", data=np.asarray(CLASSES)[yt][:, None].astype("S"))
            meta.attrs["columns"] = [b"pattern"]
        opt = option_preprocess(
            Params(
                make_opts(
                    tmp_path,
                    images_file=str(data),
                    ssl_method="SupCon",
                    label_column="pattern",
                    nchannels=1,
                    feat_dim=32,
                    batch_size_train=32,
                    learning_rate=0.3,
                    temp=0.1,
                    epochs=8,
                    cosine=False,
                    random_jitter=None,
                )
            )
        )
        torch.manual_seed(0)
        untrained, _ = set_model(opt, cuda_use=False)
        before = _knn_accuracy(untrained, xv, yv)
        last = train(opt, progress=False)
        after = _knn_accuracy(_model_from(last), xv, yv)
    finally:
        torch.set_num_threads(threads)
    print(f"kNN accuracy (5-NN, 5-fold, 300 held-out 8x8 cutouts): untrained {before:.3f}, trained {after:.3f}")
    assert after >= before + 0.1


def test_resume_from_a_checkpoint_of_another_model_is_refused(tmp_path, preproc):
    from nenya._errors import CheckpointError
    from nenya.train_util import save_model

    other = _opts(tmp_path, preproc, feat_dim=8)
    model, _ = set_model(other, cuda_use=False)
    save_model(model, None, other, 1, tmp_path / "other" / "last.pth")
    with pytest.raises(
        CheckpointError, match=r"cannot resume: .*last.pth does not fit the model of the opts.*feat_dim"
    ):
        train_run(
            _opts(tmp_path, preproc),
            progress=False,
            output=str(tmp_path / "c"),
            resume=str(tmp_path / "other" / "last.pth"),
        )
