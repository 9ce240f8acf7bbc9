"""The autoencoder: training, the ae: encoder, reconstruction, the overfit search."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from nenya.encoders import load_encoder
from nenya.encoders.autoencoder import AutoencoderEncoder
from nenya.encoders.weights import load_checkpoint
from nenya.models.autoencoder import ConvAutoencoder
from nenya.sample_data import make_cutouts, write_preproc
from nenya.train.autoencoder import AutoencoderConfig, logcosh, overfit_search, reconstruct, train_autoencoder


@pytest.fixture
def images(tmp_path):
    """24 two-channel 20x37 images: neither side divisible by the pooling (2 layers of pool 2)."""
    x, _ = make_cutouts(48, size=40, seed=5)
    arr = np.stack([x[:24, :20, :37], 0.5 * x[24:, :20, :37]], axis=1).astype(np.float32)
    path = tmp_path / "imgs.npy"
    np.save(path, arr)
    return path, arr


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP spin-waits make 2 threads far slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(data, out, **kw):
    base = dict(
        data=str(data),
        nlayers=2,
        poolsize=2,
        numfilters=2,
        num_dense=12,
        batch_size=8,
        num_steps=40,
        num_checkpoints=2,
        learning_rate=1e-2,
        output=str(out),
        crop=[18, None],
        crop_offset=(1, 0),
    )
    base.update(kw)
    return AutoencoderConfig(**base)


def test_loss_falls_and_checkpoints_record_architecture(tmp_path, images, caplog):
    path, arr = images
    with caplog.at_level(logging.INFO, logger="nenya.train.autoencoder"):
        summary = train_autoencoder(_cfg(path, tmp_path / "ae"), progress=False)
    assert summary.steps == 40
    # the summary's losses say which they are, and its epoch mean is the one the checkpoint's log line gave
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("checkpoint 2 at step 40")]
    assert logged == [f"checkpoint 2 at step 40: epoch mean loss {summary.epoch_mean:.4g}"]
    line = summary.line()
    assert line.startswith("40 steps, 2 checkpoints,"), line
    want = f"first batch loss {summary.first_loss:.4g} -> last batch {summary.final_loss:.4g}; epoch mean"
    assert want in line and line.endswith(f"epoch mean {summary.epoch_mean:.4g} (checkpoint 2)"), line
    enc = load_encoder(f"ae:{summary.last}")
    x = enc.prepare(torch.from_numpy(arr))  # the whole set, cropped and normalised as in training
    torch.manual_seed(0)  # the same initialisation as the run (seed 0)
    untrained = ConvAutoencoder(enc.opt.input_shape, nlayers=2, poolsize=2, numfilters=2, num_dense=12)
    with torch.no_grad():
        before, after = float(logcosh(untrained(x), x)), float(logcosh(enc.autoencoder(x), x))
    assert after < 0.9 * before, (before, after)  # 0.355 -> 0.291 with seed 0
    for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth", "last.pth", "learning_curve.csv", "learning_curve.png"):
        assert (tmp_path / "ae" / name).exists(), name
    for epoch in (1, 2):  # input-versus-reconstruction panels of fixed examples at every checkpoint
        assert (tmp_path / "ae" / f"reconstruction_epoch_{epoch}.png").stat().st_size > 5_000
    ckpt = load_checkpoint(tmp_path / "ae" / "last.pth")  # weights_only: options are a plain Params
    opt = ckpt["opt"]
    assert ckpt["epoch"] == 2 and ckpt["step"] == 40
    assert opt.model_type == "autoencoder" and opt.input_shape == [2, 18, 37] and opt.crop_box == [1, 19, 0, 37]
    assert len(opt.mean) == len(opt.std) == 2 and opt.raw_shape == [2, 20, 37]

    # resume: continues the step count and Adam's state
    more = train_autoencoder(
        _cfg(path, tmp_path / "ae", num_steps=60, num_checkpoints=3), auto_resume=True, progress=False
    )
    ckpt = load_checkpoint(more.last)
    assert more.steps == 60 and ckpt["step"] == 60 and ckpt["epoch"] == 3
    assert more.line().startswith("20 steps (steps 41-60), 3 checkpoints,"), more.line()  # this run's steps
    assert int(ckpt["optimizer"]["state"][0]["step"]) == 60


def test_ae_encoder_equals_the_models_own_embedding_and_reconstructs(tmp_path, images):
    path, arr = images
    last = train_autoencoder(_cfg(path, tmp_path / "ae", num_steps=4), progress=False).last
    enc = load_encoder(f"ae:{last}")
    assert isinstance(enc, AutoencoderEncoder) and enc.dim == 12
    x = torch.from_numpy(arr[:5])
    got = enc.encode(x).numpy()
    # the reference: the crop and normalisation written in the checkpoint, then the model's encode()
    opt = enc.opt
    ref_in = (x[:, :, 1:19, :] - torch.tensor(opt.mean).view(1, -1, 1, 1)) / torch.tensor(opt.std).view(1, -1, 1, 1)
    with torch.no_grad():
        ref = enc.autoencoder.encode(ref_in).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(enc.encode(x[:, :, 1:19, :]).numpy(), ref, atol=1e-5)  # already cropped: same

    rec = reconstruct(last, str(path) + ":3", tmp_path / "rec" / "one")
    assert rec.kind == "image" and rec.shape == (2, 18, 37)
    assert np.load(rec.npy).shape == (2, 18, 37)
    assert Image.open(tmp_path / "rec" / "one.png").size == (37, 18)  # (width, height): one pixel per value
    assert (tmp_path / "rec" / "one_compare.png").exists()
    np.save(tmp_path / "z.npy", got[:2])
    rec = reconstruct(last, str(tmp_path / "z.npy"), tmp_path / "rec" / "two.npy")
    assert rec.kind == "embedding" and np.load(rec.npy).shape == (2, 2, 18, 37)
    with torch.no_grad():
        direct = enc.autoencoder.decode(torch.from_numpy(got[:1]))[0]
    direct = direct * torch.tensor(opt.std).view(-1, 1, 1) + torch.tensor(opt.mean).view(-1, 1, 1)
    np.testing.assert_allclose(np.load(rec.npy)[0], direct.numpy(), atol=1e-5)


def test_h5_partitions_and_uint8_images(tmp_path):
    h5 = write_preproc(tmp_path / "p_preproc.h5", n_valid=6, n_train=10, size=16, seed=2)
    last = train_autoencoder(
        AutoencoderConfig(
            data=f"{h5}:train",
            nlayers=2,
            poolsize=2,
            numfilters=1,
            num_dense=4,
            num_steps=3,
            num_checkpoints=1,
            output=str(tmp_path / "h"),
            demean=True,
        ),
        progress=False,
    ).last
    enc = load_encoder(f"ae:{last}")
    assert enc.preprocess.demean and enc.opt.input_shape == [1, 16, 16]
    rec = reconstruct(last, f"{h5}:valid:4", tmp_path / "r")
    assert rec.shape == (1, 16, 16)
    u8 = (np.random.default_rng(0).random((6, 3, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp_path / "u8.npy", u8)
    last = train_autoencoder(
        AutoencoderConfig(
            data=str(tmp_path / "u8.npy"),
            nlayers=1,
            poolsize=4,
            numfilters=1,
            num_dense=3,
            num_steps=2,
            num_checkpoints=1,
            output=str(tmp_path / "u"),
        ),
        progress=False,
    ).last
    enc = load_encoder(f"ae:{last}")
    assert 0.3 < enc.opt.mean[0] < 0.7  # statistics of the [0, 1]-scaled images, as Encoder.prepare scales them
    assert enc.encode(torch.from_numpy(u8)).shape == (6, 3)


def test_overfit_search_picks_the_smallest_embedding_reaching_the_threshold(tmp_path, images):
    path, _ = images
    result = overfit_search(
        str(path),
        n_images=2,
        nlayers=[1, 5],
        poolsize=[2],
        numfilters=[2],
        num_dense=[1, 8, 32],
        num_steps=80,
        learning_rate=1e-2,
        threshold=0.0,
        output=tmp_path / "t.csv",
        progress=False,
    )
    assert len(result.rows) == 6 and result.best is None  # nothing reaches a loss of 0
    too_small = [r for r in result.rows if r.nlayers == 5]
    assert all(not np.isfinite(r.final_loss) and "small" in r.note for r in too_small)
    losses = {r.num_dense: r.final_loss for r in result.rows if r.nlayers == 1}
    threshold = losses[8] * 1.0001  # num_dense 8 reaches it; the smallest num_dense that does wins
    fits = sorted(d for d, v in losses.items() if v <= threshold)
    result = overfit_search(
        str(path),
        n_images=2,
        nlayers=[1, 5],
        poolsize=[2],
        numfilters=[2],
        num_dense=[1, 8, 32],
        num_steps=80,
        learning_rate=1e-2,
        threshold=threshold,
        output=tmp_path / "t.csv",
        progress=False,
    )
    assert result.best is not None and result.best.num_dense == fits[0]
    table = result.table()
    assert "smallest embedding" in table and f"num_dense {fits[0]}" in table
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(r["chosen"] == "True" for r in rows) == 1


def test_logcosh_training_signal_is_finite_for_large_errors():
    assert torch.isfinite(logcosh(torch.full((4,), 1e6), torch.zeros(4)))


def _grey_png(path, seed, size):
    x, _ = make_cutouts(1, size=max(size), seed=seed)
    a = x[0, : size[0], : size[1]]
    Image.fromarray(np.uint8(np.clip((a - a.min()) / (np.ptp(a) + 1e-6) * 255, 0, 255))).save(path)


def test_a_folder_of_images_trains_and_extracts(tmp_path, caplog):
    from nenya.preprocess.cpu import decode_image
    from nenya.train.data import open_dataset

    folder = tmp_path / "radar"
    (folder / "day2").mkdir(parents=True)
    for i in range(10):
        _grey_png(folder / ("day2" if i % 2 else "") / f"scan{i:02d}.png", i, (24, 32))
    _grey_png(folder / "scan99_big.png", 99, (30, 40))  # center-cropped to 24x32, not resized
    (folder / "scan50_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    ds = open_dataset(str(folder))
    arr = np.load(ds.path)
    assert arr.shape == (11, 1, 24, 32) and arr.dtype == np.uint8  # grey: one channel; the broken file left out
    assert "1 of 12 images" in caplog.text and "scan50_broken.png" in caplog.text
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png") if "broken" not in p.name)
    from nenya.encoders.base import ImageTransform

    t = ImageTransform(size=(24, 32), resize=None)
    for row, name in enumerate(names):  # folder order, pixels exactly as the extraction reader decodes them
        np.testing.assert_array_equal(arr[row, 0], decode_image((folder / name).read_bytes(), transform=t)[0])
    big = np.asarray(Image.open(folder / "scan99_big.png"))
    np.testing.assert_array_equal(arr[names.index("scan99_big.png"), 0], big[3:27, 4:36])

    summary = train_autoencoder(
        _cfg(folder, tmp_path / "ae", num_steps=6, crop=[None, None], crop_offset=(0, 0)), progress=False
    )
    enc = load_encoder(f"ae:{summary.last}")
    assert enc.dim == 12 and load_checkpoint(summary.last)["opt"].input_shape == [1, 24, 32]
    v = enc.encode(torch.from_numpy(arr[:3])).numpy()
    assert v.shape == (3, 12) and np.isfinite(v).all()


def test_a_folder_of_colour_images_keeps_three_channels(tmp_path):
    from nenya.train.data import open_dataset

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    assert np.load(open_dataset(str(tmp_path)).path).shape == (3, 3, 16, 20)


def test_resume_from_a_damaged_checkpoint_is_refused(tmp_path, images):
    from nenya._errors import CheckpointError

    path, _ = images
    last = train_autoencoder(_cfg(path, tmp_path / "ae", num_steps=2), progress=False).last
    ckpt = load_checkpoint(last)
    ckpt["model"].pop(next(iter(ckpt["model"])))
    torch.save(ckpt, tmp_path / "damaged.pth")
    with pytest.raises(CheckpointError, match=r"cannot resume: .*damaged.pth does not fit the autoencoder.*missing"):
        train_autoencoder(
            _cfg(path, tmp_path / "ae2", num_steps=4), resume=str(tmp_path / "damaged.pth"), progress=False
        )
