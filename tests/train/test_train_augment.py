"""Training pieces without training: augmentations, schedules, options, the autoencoder model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nenya.models.autoencoder import ConvAutoencoder
from nenya.params import Params
from nenya.train.augment import AugmentConfig, augment, compose_affine, two_views, warp
from nenya.train.autoencoder import AutoencoderConfig, crop_box, logcosh
from nenya.train.contrastive import epoch_learning_rate, prepare_opt, warmup_learning_rate


def _theta(flip=(False, False), angle=0.0, shift=(0, 0), size=16, crop=None):
    return compose_affine(
        torch.tensor([flip]),
        torch.tensor([angle], dtype=torch.float64),
        torch.tensor([shift], dtype=torch.float64),
        size,
        size,
        crop,
    )


def test_flips_and_quarter_turns_are_exact():
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(warp(x, _theta(flip=(True, False))), torch.flip(x, dims=[3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(warp(x, _theta(flip=(False, True))), torch.flip(x, dims=[2]), atol=1e-5, rtol=0)
    quarter = warp(x, _theta(angle=math.pi / 2))
    assert any(torch.allclose(quarter, torch.rot90(x, k, dims=(2, 3)), atol=1e-5) for k in (1, 3))
    torch.testing.assert_close(warp(x, _theta(angle=math.pi)), torch.rot90(x, 2, dims=(2, 3)), atol=1e-5, rtol=0)


def test_jitter_crop_is_the_shifted_centre_crop_resized():
    x = torch.randn(1, 1, 64, 64)
    for dy, dx in ((0, 0), (3, -5)):
        ref = F.interpolate(
            x[:, :, 12 + dy : 52 + dy, 12 + dx : 52 + dx], size=(64, 64), mode="bilinear", align_corners=False
        )
        out = warp(x, _theta(shift=(dx, dy), size=64, crop=40))
        # inside the crop the two resamplings agree; at its edge interpolate clamps while we read the neighbours
        torch.testing.assert_close(out[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-5, rtol=0)


def test_rotation_fills_corners_with_zero_and_keeps_the_centre():
    x = torch.ones(1, 1, 32, 32)
    out = warp(x, _theta(angle=math.pi / 4, size=32))
    assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 0, 16, 16]) == pytest.approx(1.0)


def test_augment_chain_shapes_demean_channels_and_seeding():
    cfg = AugmentConfig(flip=True, rotate=True, crop=12, jitter=2, gauss_noise=0.1, demean=True, nchannels=3)
    x = torch.randn(5, 1, 16, 16) + 3.0
    a = augment(x, cfg, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    b = augment(x, cfg, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    assert a.shape == (5, 3, 16, 16)
    torch.testing.assert_close(a, b)
    assert torch.allclose(a[:, 0], a[:, 2])
    assert a.mean(dim=(1, 2, 3)).abs().max() < 1e-5
    views = two_views(x, cfg, torch.Generator().manual_seed(3))
    assert views.shape == (10, 3, 16, 16) and not torch.allclose(views[:5], views[5:])
    with pytest.raises(ValueError, match="channels"):
        augment(torch.randn(2, 2, 16, 16), cfg)
    with pytest.raises(ValueError, match="larger than"):
        augment(x, AugmentConfig(crop=20))


def test_options_accept_both_crop_keys_and_decay_forms():
    old = AugmentConfig.from_opt(Params(random_jitter=[40, 5], nchannels=1))
    new = AugmentConfig.from_opt(Params(random_cropjitter=[40, 5], flip=False))
    assert (old.crop, old.jitter, old.nchannels, old.flip) == (40, 5, 1, True)
    assert (new.crop, new.jitter, new.flip, new.rotate, new.demean) == (40, 5, False, True, True)
    base = {
        "ssl_model": "resnet18",
        "feat_dim": 8,
        "learning_rate": 0.1,
        "lr_decay_rate": 0.1,
        "epochs": 10,
        "cosine": False,
        "images_file": "x.h5",
    }
    a = prepare_opt({**base, "lr_decay_epochs": "3,6"})
    b = prepare_opt({**base, "lr_decay_epochs": [3, 6]})
    assert a.lr_decay_epochs == b.lr_decay_epochs == [3, 6]
    assert [round(epoch_learning_rate(a, e), 6) for e in (1, 3, 4, 6, 7)] == [0.1, 0.1, 0.01, 0.01, 0.001]
    assert a.model_folder == b.model_folder and a.model_name.startswith("SimCLR_resnet18_lr_0.1")


def test_cosine_and_warmup_follow_nenya():
    opt = prepare_opt(
        {
            "ssl_model": "resnet18",
            "feat_dim": 8,
            "learning_rate": 0.05,
            "lr_decay_rate": 0.1,
            "epochs": 50,
            "cosine": True,
            "warm": True,
            "batch_size_train": 256,
        }
    )
    eta_min = 0.05 * 0.1**3
    assert epoch_learning_rate(opt, 25) == pytest.approx(eta_min + (0.05 - eta_min) * 0.5)
    assert epoch_learning_rate(opt, 50) == pytest.approx(eta_min)
    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warmup_learning_rate(opt, 1, 0, 100, optim)
    assert optim.param_groups[0]["lr"] == pytest.approx(0.01)
    warmup_learning_rate(opt, 10, 100, 100, optim)  # the end of warm-up reaches warmup_to
    assert optim.param_groups[0]["lr"] == pytest.approx(opt.warmup_to)
    assert opt.model_name.endswith("_cosine_warm")


@pytest.mark.parametrize("shape", [(1, 64, 64), (1, 37, 50), (3, 40, 29)])
def test_autoencoder_shapes_and_zero_padding(shape):
    torch.manual_seed(0)
    ae = ConvAutoencoder(shape, nlayers=2, poolsize=4, numfilters=2, num_dense=7)
    x = torch.randn(2, *shape)
    z, out = ae.encode(x), ae(x)
    assert z.shape == (2, 7) and out.shape == (2, *shape)
    c, h, w = shape
    covered_h, covered_w = (h // 16) * 16, (w // 16) * 16
    assert ae.bottleneck == (8, h // 16, w // 16)
    assert torch.all(out[:, :, covered_h:, :] == 0) and torch.all(out[:, :, :, covered_w:] == 0)
    if covered_h == h and covered_w == w:
        assert out[:, :, -1, -1].abs().sum() > 0  # nothing padded when the pooling divides the size


def test_autoencoder_refuses_too_small_inputs_and_crop_box():
    with pytest.raises(ValueError, match="too small"):
        ConvAutoencoder((1, 15, 64), nlayers=2, poolsize=4)
    cfg = AutoencoderConfig(crop="pool", nlayers=2, poolsize=4)
    assert crop_box(cfg, 1059, 1799) == [0, 1056, 0, 1792]
    assert crop_box(AutoencoderConfig(crop=[1024, None]), 1059, 1799) == [0, 1024, 0, 1799]
    assert crop_box(AutoencoderConfig(crop=[8, 8], crop_offset=(2, 3)), 16, 16) == [2, 10, 3, 11]


def test_logcosh_matches_the_formula():
    a, b = torch.randn(100) * 5, torch.randn(100)
    ref = torch.log(torch.cosh((a - b).double())).mean().float()
    torch.testing.assert_close(logcosh(a, b), ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(logcosh(torch.tensor([1e4]), torch.tensor([0.0])))
    np.testing.assert_allclose(float(logcosh(torch.tensor([1e4]), torch.tensor([0.0]))), 1e4 - math.log(2), rtol=1e-6)


def test_training_precision_follows_the_one_policy(monkeypatch):
    import nenya.device
    from nenya._errors import NenyaError
    from nenya.train.common import autocast_dtype

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(nenya.device, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", cpu) == nenya.device.resolve_precision("auto", cpu)
        assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(NenyaError, match="fp16 training needs a CUDA GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(NenyaError, match="unknown precision"):
        autocast_dtype("fp8", cpu)


def test_training_ranks_come_from_the_one_rank_parser(monkeypatch):
    from nenya.ranks import Ranks
    from nenya.train.common import setup_distributed

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    ranks, dev = setup_distributed("cpu")
    assert ranks == Ranks() and ranks.is_main and not ranks.distributed and dev == torch.device("cpu")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ranks, dev = setup_distributed("auto" if not torch.cuda.is_available() else "cpu")
    assert (ranks.rank, ranks.world, ranks.local_rank) == (0, 1, 0) and dev == torch.device("cpu")


def test_prepare_opt_fills_defaults_without_changing_the_callers_options():
    from nenya.train.contrastive import DEFAULTS

    given = Params(ssl_model="resnet18", feat_dim=8, learning_rate=0.1, batch_size_train=4, temp=0.5)
    before = dict(given.dict)
    opt = prepare_opt(given)
    assert given.dict == before  # a copy is filled in
    assert opt.batch_size_valid == 4 and opt.epochs == DEFAULTS["epochs"] and opt.ssl_method == "SimCLR"
    assert opt.model_name == "SimCLR_resnet18_lr_0.1_decay_0.0001_bsz_4_temp_0.5_trial_0"
    assert opt.model_folder.endswith(opt.model_name)
