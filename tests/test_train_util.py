"""Nenya's training face (nenya.train_util) over the trainers, and the direction of imports between them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import make_opts
from nenya import train_util
from nenya.encoders.weights import load_checkpoint
from nenya.params import Params, option_preprocess
from nenya.train import contrastive

FACES = ("nenya.train_util", "nenya.latents_extraction", "nenya.analyze_image", "nenya.nenya_umap", "nenya.io")


def test_the_trainers_never_import_the_documented_faces():
    code = (
        "import sys\n"
        "import nenya.train, nenya.train.contrastive, nenya.train.autoencoder, nenya.train.common\n"
        "import nenya.train.data, nenya.train.augment, nenya.train.losses, nenya.models.autoencoder\n"
        "import nenya.models.resnet_big\n"
        f"print([m for m in {FACES!r} if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_face_shows_the_trainers_names():
    for name in ("set_model", "set_optimizer", "adjust_learning_rate", "warmup_learning_rate"):
        assert getattr(train_util, name) is getattr(contrastive, name), name
    assert set(train_util.__all__) <= set(dir(train_util))


@pytest.fixture
def small_opt(tmp_path, preproc) -> Params:
    path = make_opts(
        tmp_path,
        images_file=str(preproc),
        batch_size_train=8,
        batch_size_valid=8,
        feat_dim=8,
        num_workers=0,
        flip=True,
        rotate=True,
        print_freq=0,
    )
    return option_preprocess(Params(path))


def test_train_model_trains_and_validates_one_epoch(small_opt, tmp_path):
    torch.manual_seed(0)
    model, criterion = train_util.set_model(small_opt, cuda_use=False)
    optimizer = train_util.set_optimizer(small_opt, model)
    loader = train_util.nenya_loader(small_opt)
    loss, steps, avgs = train_util.train_model(loader, model, criterion, optimizer, 1, small_opt, cuda_use=False)
    assert len(steps) == len(avgs) == len(loader) and np.isfinite(loss)
    np.testing.assert_allclose(avgs[-1], loss, rtol=1e-6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vloss, vsteps, _ = train_util.train_model(
        train_util.nenya_loader(small_opt, valid=True),
        model,
        criterion,
        None,
        1,
        small_opt,
        cuda_use=False,
        update_model=False,
    )
    assert vsteps and np.isfinite(vloss) and not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # validation changes nothing
    train_util.save_model(model, optimizer, small_opt, 1, tmp_path / "out" / "ckpt.pth")
    ckpt = load_checkpoint(tmp_path / "out" / "ckpt.pth")
    assert ckpt["epoch"] == 1 and set(ckpt["model"]) == set(model.state_dict())
