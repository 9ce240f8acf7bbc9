"""The documented API of nenya.latents_extraction, checked against the model applied directly."""

from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import read_partition, reference_latents, save_checkpoint
from nenya._errors import InputError, WeightsNotFoundError
from nenya.latents_extraction import HDF5RGBDataset, build_loader, calc_latent, main, model_latents_extract, prep


def test_model_latents_extract_equals_the_model(opt, checkpoint, preproc):
    path, model = checkpoint
    out = model_latents_extract(opt, str(preproc), str(path))
    assert set(out) == {"train", "valid"}
    for p in ("train", "valid"):
        ref = reference_latents(model, read_partition(preproc, p))
        assert out[p].dtype == np.float32 and out[p].shape == ref.shape
        np.testing.assert_allclose(out[p], ref, atol=1e-5)


def test_no_channel_axis_and_partitions_present(opt, checkpoint, preproc_nochannel):
    path, model = checkpoint
    out = model_latents_extract(opt, str(preproc_nochannel), str(path))
    assert list(out) == ["valid"]  # train absent from the file
    np.testing.assert_allclose(
        out["valid"], reference_latents(model, read_partition(preproc_nochannel, "valid")), atol=1e-5
    )


def test_allowed_indices_and_single_partition(opt, checkpoint, preproc):
    path, _ = checkpoint
    full = model_latents_extract(opt, str(preproc), str(path), partitions=("valid",))
    assert list(full) == ["valid"]
    idx = [0, 3, 4, 20, 36]
    sub = model_latents_extract(opt, str(preproc), str(path), partitions=("valid",), allowed_indices=idx)
    np.testing.assert_allclose(sub["valid"], full["valid"][idx], atol=1e-5)


def test_debug_really_shortens_and_says_so(opt, checkpoint, preproc, caplog):
    path, _ = checkpoint
    with caplog.at_level(logging.WARNING):
        out = model_latents_extract(opt, str(preproc), str(path), debug=True)
    assert len(out["valid"]) == 3 * opt.batch_size_valid < 37
    assert "debug" in caplog.text


def test_in_loader(opt, checkpoint, preproc):
    path, model = checkpoint
    _, loader = build_loader(str(preproc), "valid", batch_size=5, num_workers=0)
    out = model_latents_extract(opt, str(preproc), str(path), in_loader=loader, partitions=("valid",))
    np.testing.assert_allclose(out["valid"], reference_latents(model, read_partition(preproc, "valid")), atol=1e-5)


def test_dataset_items_and_metadata(preproc):
    dset = HDF5RGBDataset(str(preproc), "valid")
    assert len(dset) == 37
    img, meta = dset[5]
    raw = read_partition(preproc, "valid")[5]
    assert img.shape == (3, 16, 16) and img.dtype == np.float32
    np.testing.assert_array_equal(img[2], raw[0])
    with h5py.File(preproc) as f:
        table = pd.DataFrame(
            f["valid_metadata"][:].astype(str), columns=list(f["valid_metadata"].attrs["columns"].astype(str))
        )
    assert meta == table.iloc[5].to_dict()
    sub = HDF5RGBDataset(str(preproc), "valid", allowed_indices=[2, 9])
    assert len(sub) == 2
    np.testing.assert_array_equal(sub[1][0][0], read_partition(preproc, "valid")[9][0])
    with pytest.raises(KeyError, match="holds"):
        HDF5RGBDataset(str(preproc), "test")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_open_files_lazily(preproc, context):
    dset, serial = build_loader(str(preproc), "valid", batch_size=8, num_workers=0)
    parallel = DataLoader(dset, batch_size=8, num_workers=2, multiprocessing_context=context)
    a = torch.cat([b[0] for b in serial])
    b = torch.cat([b[0] for b in parallel])
    assert a.shape == (37, 3, 16, 16)
    assert torch.equal(a, b)
    first = next(iter(serial))
    assert isinstance(first[1], dict) and len(first[1]["lat"]) == 8


def test_calc_latent_needs_no_grad_context(checkpoint):
    _, model = checkpoint
    model.train()
    x = torch.randn(4, 3, 16, 16)
    out = calc_latent(model, x, using_gpu=False)
    assert isinstance(out, np.ndarray) and out.shape == (4, 16)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-6)


def test_main_writes_nenya_layout_skips_and_keeps_input(opt, opts_file, checkpoint, preproc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, model = checkpoint
    outputs = main(str(opts_file), [str(preproc)])
    expected = os.path.join(str(tmp_path), opt.latents_folder, "tiny_latents_test.h5")
    assert outputs == [expected]
    assert preproc.exists()  # the user's input is never deleted
    with h5py.File(expected, "r") as f:
        assert set(f) >= {"train", "valid", "valid_metadata", "train_metadata"}
        assert f["valid"].dtype == np.float32 and f["valid"].shape == (37, 16)
        meta = pd.DataFrame(f["valid_metadata"][:].astype(str), columns=list(f["valid_metadata"].attrs["columns"]))
        ref_latents = reference_latents(model, read_partition(preproc, "valid"))
        np.testing.assert_allclose(f["valid"][:], ref_latents, atol=1e-5)
    with h5py.File(preproc, "r") as f:
        src = pd.DataFrame(f["valid_metadata"][:].astype(str), columns=list(f["valid_metadata"].attrs["columns"]))
    pd.testing.assert_frame_equal(
        meta.set_axis([c.decode() if isinstance(c, bytes) else c for c in meta.columns], axis=1), src
    )
    mtime = os.path.getmtime(expected)
    assert main(str(opts_file), [str(preproc)]) == []  # exists: skipped
    assert os.path.getmtime(expected) == mtime
    assert main(str(opts_file), [str(preproc)], clobber=True) == [expected]
    assert not [n for n in os.listdir(os.path.dirname(expected)) if n.startswith(".")]  # no temporaries left


def test_prep_prefers_last_pth_in_working_folder(opt, checkpoint, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path, _ = checkpoint
    model_file, existing = prep(opt)
    assert os.path.samefile(model_file, path) and existing == []
    save_checkpoint(opt, work / "last.pth", seed=9)
    assert prep(opt)[0] == "last.pth"


def test_prep_without_weights_says_where(opt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="last.pth"):
        prep(opt)


def test_bad_inputs_are_clear_errors(opt, checkpoint, tmp_path):
    path, _ = checkpoint
    flat = tmp_path / "flat_preproc.h5"
    with h5py.File(flat, "w") as f:
        f["valid"] = np.zeros((4, 256), np.float32)
    with pytest.raises(InputError, match=r"shape \(4, 256\).*never reshapes"):
        model_latents_extract(opt, str(flat), str(path))
    text = tmp_path / "text_preproc.h5"
    text.write_text("not hdf5")
    with pytest.raises(InputError, match="not an HDF5 file"):
        model_latents_extract(opt, str(text), str(path))
    empty = tmp_path / "nothing_preproc.h5"
    with h5py.File(empty, "w") as f:
        f["images"] = np.zeros((2, 16, 16), np.float32)
    with pytest.raises(InputError, match="none of the partitions.*images"):
        model_latents_extract(opt, str(empty), str(path))
    with pytest.raises(InputError, match="not found"):
        model_latents_extract(opt, str(tmp_path / "missing_preproc.h5"), str(path))


def test_non_finite_cutouts_are_skipped_not_written(opt, opts_file, checkpoint, preproc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, model = checkpoint
    with h5py.File(preproc, "r+") as f:
        f["valid"][4, 0, 3, 3] = np.nan
        f["valid"][7] = np.inf
    out = main(str(opts_file), [str(preproc)])[0]
    with h5py.File(out, "r") as f:
        lat, valid = f["valid"][:], f["valid_valid"][:]
    assert np.isfinite(lat).all()
    assert list(np.nonzero(~valid)[0]) == [4, 7]
    assert not lat[[4, 7]].any()
    good = [i for i in range(37) if i not in (4, 7)]
    ref = reference_latents(model, read_partition(preproc, "valid")[good])
    np.testing.assert_allclose(lat[good], ref, atol=1e-5)
    status = pd.read_csv(out + ".status.csv")  # every item exactly once, train then valid
    assert list(status["id"]) == [f"train/{i}" for i in range(21)] + [f"valid/{i}" for i in range(37)]
    bad = status[status.status != "ok"]
    assert bad.to_dict("list") == {"id": ["valid/4", "valid/7"], "status": ["skipped:non-finite values"] * 2}


def test_dataset_reads_any_rows_in_any_order(preproc):
    dset = HDF5RGBDataset(str(preproc), "valid", nchannels=1)
    raw = read_partition(preproc, "valid")
    for rows in ([9, 2, 9, 30], [36, 0], [3, 4, 5, 6], [0, 35]):  # shuffled, repeated, a slab, far apart
        items = dset.__getitems__(rows)
        np.testing.assert_array_equal(np.stack([img for img, _ in items]), raw[rows])
        assert [meta for _, meta in items] == [dset[r][1] for r in rows]
    assert dset.__getitems__([]) == []
    with pytest.raises(IndexError):
        dset[37]
    sub = HDF5RGBDataset(str(preproc), "valid", allowed_indices=[1, 3, 4, 30], nchannels=1)
    with pytest.raises(IndexError, match="outside"):
        HDF5RGBDataset(str(preproc), "valid", allowed_indices=[1, 40]).__getitems__([1])
    np.testing.assert_array_equal(np.stack([img for img, _ in sub.__getitems__([3, 0])]), raw[[30, 1]])
