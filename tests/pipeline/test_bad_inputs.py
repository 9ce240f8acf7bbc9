"""Bad inputs and bad output locations: a clear error, or a recorded skip reason, and the good
items' vectors unchanged and aligned by id."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

import faultkit as fk
from nenya._errors import InputError, NenyaError, OutputError
from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions, run
from nenya.extract import extract_preproc
from nenya.sample_data import write_preproc
from nenya.sinks.npy import NpySink
from nenya.sources.hdf5 import HDF5PreprocSource

OPTS = RunOptions(batch_size=8, shard_size=16, num_workers=0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return SupConEncoder.from_checkpoint(fk.make_model(tmp_path_factory.mktemp("model"))).to("cpu")


@pytest.fixture
def clean(tmp_path) -> Path:
    (tmp_path / "in").mkdir()
    return Path(write_preproc(tmp_path / "in" / "a_preproc.h5", n_valid=24, n_train=8, size=16, seed=5))


def _extract(files, encoder, out, **kw):
    return extract_preproc([str(f) for f in files], encoder, str(out), options=kw.pop("options", OPTS), **kw)


def _latents(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def _copy_with(src: Path, dest: Path, edit) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    with h5py.File(dest, "r+") as f:
        edit(f)
    return dest


# -- unreadable files -----------------------------------------------------------------------------
def test_truncated_hdf5(encoder, clean, tmp_path):
    bad = tmp_path / "cut" / "t_preproc.h5"
    bad.parent.mkdir()
    bad.write_bytes(clean.read_bytes()[: os.path.getsize(clean) // 2])
    with pytest.raises(InputError, match=rf"cannot open {bad} as HDF5 .*truncated.*re-copy"):
        _extract([bad], encoder, tmp_path / "out")
    assert not (tmp_path / "out" / "t_latents.h5").exists()


def test_text_file_is_not_hdf5(encoder, tmp_path):
    bad = tmp_path / "x_preproc.h5"
    bad.write_text("lat,lon\n1,2\n")
    with pytest.raises(InputError, match=rf"{bad} is not an HDF5 file"):
        _extract([bad], encoder, tmp_path / "out")
    empty = tmp_path / "e_preproc.h5"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        _extract([empty], encoder, tmp_path / "out")


def test_missing_file_cli(tmp_path, encoder):
    ckpt = fk.make_model(tmp_path / "m")
    r = fk.cli([*fk.Job(tmp_path / "nope_preproc.h5", ckpt).args(tmp_path / "out")])
    assert r.returncode == 2 and f"input file not found: {tmp_path / 'nope_preproc.h5'}" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out" / "nope_latents.h5").exists()


def test_missing_partition(encoder, clean, tmp_path):
    with pytest.raises(InputError, match=r"has none of the partitions \['bogus'\]; it holds .*'train'.*'valid'"):
        _extract([clean], encoder, tmp_path / "o1", partitions=["bogus"])
    summary = _extract([clean], encoder, tmp_path / "o2", partitions=["valid", "bogus"])  # where present
    assert summary.items == 24
    with h5py.File(summary.outputs[0]) as f:
        assert set(f) == {"valid", "valid_metadata"}


# -- wrong dtypes and shapes ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,dtype,match",
    [
        ((10, 256), "f4", r"has shape \(10, 256\); expected \(N, H, W\) or \(N, C, H, W\)"),
        ((4, 1, 1, 16, 16), "f4", r"has shape \(4, 1, 1, 16, 16\)"),
        ((4, 1, 16, 16), "S4", r"has dtype \|S4; expected float32"),
    ],
)
def test_wrong_layout_is_refused(encoder, tmp_path, shape, dtype, match):
    bad = tmp_path / "w_preproc.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("valid", data=np.zeros(shape, dtype=dtype))
    with pytest.raises(InputError, match=f"{bad}: dataset 'valid' " + match):
        _extract([bad], encoder, tmp_path / "out")
    assert not (tmp_path / "out" / "w_latents.h5").exists()


def test_integer_cutouts_are_read_as_float(encoder, clean, tmp_path):
    """Integer pixels are numbers: read as float32, same vectors as the same values stored as float32."""

    def to_int(f):
        v = np.round(f["valid"][:] * 10)
        del f["valid"]
        f.create_dataset("valid", data=v.astype(np.int16))

    ints = _copy_with(clean, tmp_path / "i" / "i_preproc.h5", to_int)

    def to_float(f):
        v = f["valid"][:].astype(np.float32)
        del f["valid"]
        f.create_dataset("valid", data=v)

    floats = _copy_with(ints, tmp_path / "f" / "f_preproc.h5", to_float)
    a = _latents(Path(_extract([ints], encoder, tmp_path / "oi").outputs[0]))
    b = _latents(Path(_extract([floats], encoder, tmp_path / "of").outputs[0]))
    np.testing.assert_array_equal(a["valid"], b["valid"])


# -- NaN and Inf ------------------------------------------------------------------------------------
BAD_ROWS = {3: "all-nan", 9: "some-nan", 17: "inf", 18: "-inf"}


def _poison(f):
    v = f["valid"][:]
    v[3] = np.nan
    v[9, 0, 2:5, 7] = np.nan
    v[17, 0, 0, 0] = np.inf
    v[18] = -np.inf
    f["valid"][:] = v


@pytest.mark.parametrize("fmt", ["h5", "parquet"])
def test_non_finite_cutouts_are_skipped_with_reason(encoder, clean, tmp_path, fmt):
    bad = _copy_with(clean, tmp_path / "nan" / "a_preproc.h5", _poison)
    ref = fk.read_output(
        Path(_extract([clean], encoder, tmp_path / "ref", fmt=fmt).outputs[0]).parent,
        f"a_latents.{'h5' if fmt == 'h5' else 'parquet'}",
    )
    out_path = Path(_extract([bad], encoder, tmp_path / "out", fmt=fmt).outputs[0])
    got = fk.read_output(out_path.parent, out_path.name)
    status = dict(got.status)
    assert len(got.status) == len(status) == 32  # every id exactly once
    bad_ids = {f"valid/{r}" for r in BAD_ROWS}
    assert {i for i, s in status.items() if s != "ok"} == bad_ids
    assert all(status[i] == "skipped:non-finite values" for i in bad_ids)
    assert set(got.ids) == set(ref.ids) - bad_ids  # h5: flagged rows hidden by <p>_valid; parquet: left out
    mine, theirs = got.by_id(), ref.by_id()
    for i in got.ids:  # the good rows, aligned by id, exactly as in a clean run
        np.testing.assert_array_equal(mine[i], theirs[i], err_msg=i)
    if fmt == "h5":
        lat = _latents(out_path)
        assert lat["valid"].shape == (24, 16) and np.isfinite(lat["valid"]).all()
        assert not lat["valid_valid"][list(BAD_ROWS)].any() and lat["valid_valid"].sum() == 20
        assert (lat["valid"][list(BAD_ROWS)] == 0).all() and "train_valid" not in lat
    else:
        assert pq.read_table(out_path).num_rows == 28


def test_max_skip_fraction_exceeded(encoder, tmp_path):
    data = Path(write_preproc(tmp_path / "m_preproc.h5", n_valid=128, size=16, seed=1))
    with h5py.File(data, "r+") as f:
        v = f["valid"][:]
        v[::3] = np.nan  # a third of the cutouts
        f["valid"][:] = v
    with pytest.raises(NenyaError, match=r"items skipped so far, more than --max-skip-fraction 0.1"):
        _extract(
            [data],
            encoder,
            tmp_path / "out",
            options=RunOptions(
                batch_size=16, shard_size=32, num_workers=0, device="cpu", progress=False, max_skip_fraction=0.1
            ),
        )
    assert not (tmp_path / "out" / "m_latents.h5").exists()
    summary = _extract(
        [data],
        encoder,
        tmp_path / "out",
        options=RunOptions(
            batch_size=16, shard_size=32, num_workers=0, device="cpu", progress=False, max_skip_fraction=0.5
        ),
    )
    # the first run committed whole shards before it stopped: the rerun did the rest
    assert summary.shards_already_done >= 1
    status = fk.read_status_csv(tmp_path / "out" / "m_latents.h5.status.csv")
    assert len(status) == 128 and sum(s == "skipped:non-finite values" for _, s in status) == 43


# -- output locations that cannot be written ----------------------------------------------------------
def test_output_under_a_regular_file(encoder, clean, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=rf"cannot create output folder {blocker / 'sub'}.*choose a writable"):
        _extract([clean], encoder, blocker / "sub")
    assert blocker.read_text() == "not a folder"


def test_read_only_output_folder(encoder, clean, tmp_path):
    if os.geteuid() == 0:  # root writes into chmod 555 folders: use a filesystem that refuses even root
        with pytest.raises(OutputError, match=r"cannot create output folder /sys/nenya-out.*choose a writable"):
            _extract([clean], encoder, "/sys/nenya-out")
        assert not os.path.exists("/sys/nenya-out")
        return
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=rf"{ro} is not writable"):
            _extract([clean], encoder, ro)
    finally:
        ro.chmod(0o755)
    assert os.listdir(ro) == []


@pytest.mark.parametrize("point", ["part.write", "assemble.write"])
def test_full_disk_in_process_npy(encoder, clean, tmp_path, monkeypatch, point):
    """ENOSPC (the fault point stands in for a full disk) -> OutputError naming the path; the
    destination is untouched; after "freeing space" the same run completes."""
    out = tmp_path / "npy"
    monkeypatch.setenv("NENYA_FAULTS", f"{point}=enospc")
    source = HDF5PreprocSource([str(clean)])  # the sink names the output: a_latents + .npy
    with pytest.raises(
        OutputError,
        match=rf"no space left on the device while writing {tmp_path}.*"
        rf"{out / 'a_latents.npy'} was not touched",
    ):
        run(source, encoder, NpySink(out), OPTS)
    assert not (out / "a_latents.npy").exists() and not (out / "a_latents.parquet").exists()
    monkeypatch.delenv("NENYA_FAULTS")
    summary = run(source, encoder, NpySink(out), OPTS)
    source.close()
    vectors = np.load(out / "a_latents.npy")
    ids = pq.read_table(out / "a_latents.parquet").column("id").to_pylist()
    ref = fk.read_output(Path(_extract([clean], encoder, tmp_path / "ref").outputs[0]).parent, "a_latents.h5")
    # part.write fails on the first shard (nothing committed); assemble.write once all are committed
    assert (summary.items, summary.shards_already_done) == ((32, 0) if point == "part.write" else (0, 3))
    assert sorted(ids) == sorted(ref.ids) and len(ids) == len(set(ids)) == 32
    theirs = ref.by_id()
    for i, v in zip(ids, vectors):
        np.testing.assert_array_equal(v, theirs[i], err_msg=i)
    assert fk.leftovers(out) == []
