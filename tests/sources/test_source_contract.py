"""The Source contract, run for every registered input kind (``nenya.sources.sources``).

Each kind has a maker below that writes a tiny input in ``tmp_path`` and says what a source over it
must yield: the ids in order and the raw arrays (for photos: :func:`nenya.preprocess.cpu.decode_image`
of the file's bytes with the source's transform). The kinds are read from the registry when the
tests are collected: a newly registered kind without a maker fails, naming the kind and this file.

Checked through the public API only: ``len`` (where a source has one) and ``plan`` (groups and
contiguous shards), ``read`` (exactly the expected ids, in order, with the expected arrays and
metadata; ``last`` on each shard's last batch), the runner's :class:`ShardStream`, each group's
fingerprint (stable across two opens, different once the input changes), ``localise`` on a pickled
copy (what a remote worker receives), and a missing input (a NenyaError naming the path).
"""

from __future__ import annotations

import os
import pickle
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from nenya._errors import NenyaError
from nenya.engines.runner import ShardStream
from nenya.pipeline.items import Plan
from nenya.preprocess import ImageTransform
from nenya.preprocess.cpu import decode_image
from nenya.sample_data import write_preproc
from nenya.sources import GridOptions, RecordOptions, Source, SourceOptions, sources
from nenya.sources.h5files import as_strings
from photokit import picture, radar_record, save, sst_field, write_tfrecord, write_wds

# memory-mapped arrays reach torch read-only (the runner copies nothing; the encoder never writes in place)
pytestmark = pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")

KINDS = sources.names()  # read at collection time: a newly registered kind is tested too
HERE = "tests/sources/test_source_contract.py"
TRANSFORM = ImageTransform(size=(24, 24), resize=28)


@dataclass
class Case:
    """A tiny input of one source kind and what a source over it must give."""

    open: Callable[[], Source]  # a fresh source over the input
    ids: list[str]  # every id, in plan order
    arrays: np.ndarray  # the raw batch rows for those ids, stacked
    change: Callable[[], None]  # alter the input in a way its fingerprint must notice
    run_missing: Callable[[], None]  # what a run does with this kind of input when it is not there
    missing: str  # the path an error about the missing input must name
    metadata: dict[str, list] = field(default_factory=dict)  # metadata columns -> values, in id order


# -- one maker per source kind ------------------------------------------------------------------
def run_through_stream(open_source: Callable[[], Source]) -> Callable[[], None]:
    """Open, plan and read every shard as the runner does (ShardStream), then close."""

    def run() -> None:
        src = open_source()
        try:
            plan = src.plan(4)
            for _ in ShardStream(src, plan.shards, 3):
                pass
        finally:
            src.close()

    return run


def make_h5(tmp: Path) -> Case:
    path = tmp / "cut_preproc.h5"
    write_preproc(path, n_valid=7, n_train=5, size=16, seed=1)
    with h5py.File(path, "r") as f:
        arrays = np.concatenate([f["train"][:], f["valid"][:]]).astype(np.float32)
        cols = [c.decode() if isinstance(c, bytes) else str(c) for c in f["train_metadata"].attrs["columns"]]
        table = np.concatenate([as_strings(f["train_metadata"][:]), as_strings(f["valid_metadata"][:])])
    cls = sources.get("h5")
    gone = tmp / "gone_preproc.h5"
    return Case(
        open=lambda: cls([str(path)]),
        ids=[f"train/{i}" for i in range(5)] + [f"valid/{i}" for i in range(7)],  # partitions train, valid
        arrays=arrays,
        change=lambda: write_preproc(path, n_valid=8, n_train=5, size=16, seed=1),
        run_missing=run_through_stream(lambda: cls([str(gone)])),
        missing=str(gone),
        metadata=_typed(pd.DataFrame(table, columns=cols)),
    )


def _typed(text: pd.DataFrame) -> dict[str, list]:
    """A preproc file's metadata as the source gives it: Nenya's text typed as pandas' CSV reader would."""
    numbers = {"lat": float, "lon": float, "DT40": float, "pp_idx": int}
    out = {c: list(text[c].astype(numbers[c])) for c in numbers}
    out["datetime"] = list(pd.to_datetime(text["datetime"]).to_numpy("datetime64[us]"))
    out["pattern"] = list(text["pattern"])
    assert set(out) == set(text.columns)
    return out


def _photo(path: Path, seed: int) -> None:
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    save(picture(seed, size=(30 + seed, 41)), str(path), fmt)


def _decoded(paths: list[Path]) -> np.ndarray:
    return np.stack([decode_image(p.read_bytes(), transform=TRANSFORM) for p in paths])


def make_images(tmp: Path) -> Case:
    root = tmp / "photos"
    names = ["b.png", "a.jpg", "sub/c.png", "sub/deep/d.png"]
    for i, name in enumerate(names):
        _photo(root / name, i)
    _photo(root / ".hidden.png", 9)  # hidden: not listed
    (root / "notes.txt").write_text("not an image extension: not listed")
    ids = sorted(names)
    cls = sources.get("images")
    options = SourceOptions(transform=TRANSFORM)
    return Case(
        open=lambda: cls.from_spec(str(root), options),
        ids=ids,
        arrays=_decoded([root / i for i in ids]),
        change=lambda: _photo(root / "sub" / "e.png", 5),
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "no-such-folder"), options)),
        missing=str(tmp / "no-such-folder"),
        metadata={"path": [str(root / i) for i in ids]},
    )


def make_table(tmp: Path) -> Case:
    imgs = tmp / "imgs"
    for i in range(5):
        _photo(imgs / f"p{i}.png", i)
    table = pd.DataFrame(
        {
            "image_id": [f"id-{i}" for i in (3, 1, 4, 0, 2)],
            "file": ["imgs/p3.png", str(imgs / "p1.png"), "imgs/p4.png", "imgs/p0.png", str(imgs / "p2.png")],
            "label": [3, 1, 4, 0, 2],
        }
    )
    path = tmp / "images.csv"
    table.to_csv(path, index=False)
    cls = sources.get("table")
    options = SourceOptions(transform=TRANSFORM, path_column="file", id_column="image_id")

    def change() -> None:
        pd.concat([table, pd.DataFrame({"image_id": ["id-9"], "file": ["imgs/p0.png"], "label": [9]})]).to_csv(
            path, index=False
        )

    files = [imgs / f"p{i}.png" for i in (3, 1, 4, 0, 2)]
    return Case(
        open=lambda: cls.from_spec(str(path), options),
        ids=list(table["image_id"]),  # the table's order
        arrays=_decoded(files),
        change=change,
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "nope.csv"), options)),
        missing=str(tmp / "nope.csv"),
        metadata={"path": [str(f) for f in files], "label": [3, 1, 4, 0, 2]},
    )


def make_arrays(tmp: Path) -> Case:
    """A memory-mapped .npy file: a pickled source reopens it by name, as a worker does."""
    path = tmp / "cutouts.npy"
    arr = np.random.default_rng(4).standard_normal((9, 1, 8, 8)).astype(np.float32)
    np.save(path, arr)
    ids = [f"c{i}" for i in range(9)]
    labels = [i % 3 for i in range(9)]
    cls = sources.get("arrays")

    def open_source() -> Source:
        return cls(np.load(path, mmap_mode="r"), ids=ids, metadata={"label": labels})

    def change() -> None:
        np.save(path, np.concatenate([arr[:1] + 1.0, arr[1:]]))

    def run_missing() -> None:  # planned here, then the file goes before a reader reopens it by name
        src = open_source()
        plan = src.plan(4)
        os.remove(path)
        copy = pickle.loads(pickle.dumps(src))  # what a reader process receives
        copy.localise()
        for _ in ShardStream(copy, plan.shards, 3):
            pass

    return Case(
        open=open_source,
        ids=ids,
        arrays=arr,
        change=change,
        run_missing=run_missing,
        missing=str(path),
        metadata={"label": labels},
    )


def _encoded(seed: int, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    picture(seed, size=(30 + seed, 41)).save(buf, format=fmt)
    return buf.getvalue()


def make_wds(tmp: Path) -> Case:
    """Two shards written by the tests' own tar writer: image + JSON per key (one sample without JSON)."""
    folder = tmp / "shards"
    folder.mkdir()
    blobs = {f"{i:05d}": _encoded(i, "PNG" if i % 2 else "JPEG") for i in range(5)}
    ext = {k: "png" if int(k) % 2 else "jpg" for k in blobs}
    shard = {"00000": 0, "00001": 0, "00002": 0, "00003": 1, "00004": 1}
    for n in (0, 1):
        samples = []
        for k in [k for k in blobs if shard[k] == n]:
            members = {ext[k]: blobs[k]} | (
                {"json": {"caption": f"photo {k}", "width": 30 + int(k)}} if k != "00002" else {}
            )
            samples.append((k, members))
        write_wds(folder / f"train-{n:03d}.tar", samples)
    cls = sources.get("wds")
    options = SourceOptions(transform=TRANSFORM)
    pattern = str(folder / "train-{000..001}.tar")
    paths = [f"{folder / f'train-{shard[k]:03d}.tar'}#{k}.{ext[k]}" for k in blobs]
    return Case(
        open=lambda: cls.from_spec(pattern, options),
        ids=list(blobs),
        arrays=np.stack([decode_image(b, transform=TRANSFORM) for b in blobs.values()]),
        change=lambda: write_wds(folder / "train-001.tar", [("00009", {"png": blobs["00001"]})]),
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "gone-{000..001}.tar"), options)),
        missing=str(tmp / "gone-000.tar"),
        metadata={
            "path": paths,
            "caption": [f"photo {k}" if k != "00002" else None for k in blobs],
            "width": [float(30 + int(k)) if k != "00002" else float("nan") for k in blobs],
        },
    )


def make_tfrecord(tmp: Path) -> Case:
    files = {tmp / "hrrr_a.tfrecord": [1, 2, 3], tmp / "hrrr_b.tfrecord": [4, 5]}
    for path, idx in files.items():
        write_tfrecord(path, [radar_record(i) for i in idx])
    cls = sources.get("tfrecord")
    options = SourceOptions(records=RecordOptions(feature="ref", shape="size"))
    idx = [i for v in files.values() for i in v]
    arrays = np.stack([np.random.default_rng(i).normal(size=(1, 6, 5)).astype(np.float32) for i in idx])
    return Case(
        open=lambda: cls.from_spec(str(tmp / "hrrr_*.tfrecord"), options),
        ids=[f"hrrr_a/{r}" for r in range(3)] + [f"hrrr_b/{r}" for r in range(2)],
        arrays=arrays,
        change=lambda: write_tfrecord(tmp / "hrrr_b.tfrecord", [radar_record(i) for i in (4, 5, 6)]),
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "gone.tfrecord"), options)),
        missing=str(tmp / "gone.tfrecord"),
        metadata={
            "time": [f"2021-06-0{i}T00" for i in idx],
            "valid_time": [f"2021-06-0{i}T01" for i in idx],
            "record": [0, 1, 2, 0, 1],
        },
    )


def make_xarray(tmp: Path) -> Case:
    path = tmp / "sst.nc"
    ds = sst_field()
    ds.to_netcdf(path, engine="h5netcdf")
    cls = sources.get("xarray")
    options = SourceOptions(grid=GridOptions(var="sst", sample_dim="time", tile=4, stride=4))
    tiles = [(t, y, x) for t in range(3) for y in (0, 4) for x in (0, 4, 8)]
    data, lat, lon = ds["sst"].values, ds["lat"].values, ds["lon"].values
    days = [f"2020-01-0{t + 1}T00:00:00" for t in range(3)]
    return Case(
        open=lambda: cls.from_spec(str(path), options),
        ids=[f"{days[t]}/{y}_{x}" for t, y, x in tiles],
        arrays=np.stack([data[t, y : y + 4, x : x + 4][None] for t, y, x in tiles]),
        change=lambda: sst_field(times=4).to_netcdf(path, engine="h5netcdf"),
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "gone.nc"), options)),
        missing=str(tmp / "gone.nc"),
        metadata={
            "time": [days[t] for t, _, _ in tiles],
            "lat": [(lat[y + 1] + lat[y + 2]) / 2 for _, y, _ in tiles],
            "lon": [(lon[x + 1] + lon[x + 2]) / 2 for _, _, x in tiles],
            "y0": [y for _, y, _ in tiles],
            "x0": [x for _, _, x in tiles],
        },
    )


def make_hf(tmp: Path) -> Case:
    """A DatasetDict written by the datasets library itself (splits train and test; train is read)."""
    import datasets

    datasets.disable_progress_bars()
    root = tmp / "flowers"
    pics = [picture(i, size=(30 + i, 41)) for i in range(6)]

    def write(n: int) -> None:
        def split(rows: range) -> datasets.Dataset:
            data = {"image": [pics[i] for i in rows], "label": list(rows), "caption": [f"pic {i}" for i in rows]}
            return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())

        datasets.DatasetDict({"train": split(range(n)), "test": split(range(1))}).save_to_disk(str(root))

    write(5)
    cls = sources.get("hf")
    options = SourceOptions(transform=TRANSFORM)
    png = [_png(p) for p in pics[:5]]  # datasets stores in-memory pictures as PNG: the same pixels
    arrow = root / "train" / "data-00000-of-00001.arrow"
    return Case(
        open=lambda: cls.from_spec(str(root), options),
        ids=[f"train/{i}" for i in range(5)],
        arrays=np.stack([decode_image(b, transform=TRANSFORM) for b in png]),
        change=lambda: write(6),
        run_missing=run_through_stream(lambda: cls.from_spec(str(tmp / "gone"), options)),
        missing=str(tmp / "gone"),
        metadata={
            "path": [f"{arrow}#{i}" for i in range(5)],
            "label": list(range(5)),
            "caption": [f"pic {i}" for i in range(5)],
        },
    )


def _png(im) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


MAKERS: dict[str, Callable[[Path], Case]] = {
    "h5": make_h5,
    "images": make_images,
    "table": make_table,
    "arrays": make_arrays,
    "wds": make_wds,
    "tfrecord": make_tfrecord,
    "xarray": make_xarray,
    "hf": make_hf,
}


def test_every_registered_source_kind_has_a_maker():
    missing = sorted(set(KINDS) - set(MAKERS))
    assert not missing, f"add a maker for new source kind(s) {missing} to MAKERS in {HERE}"


@pytest.fixture(params=KINDS)
def case(request, tmp_path) -> Case:
    kind = request.param
    if kind not in MAKERS:
        pytest.fail(f"add a maker for new source kind {kind!r} to MAKERS in {HERE}")
    return MAKERS[kind](tmp_path)


# -- reading ------------------------------------------------------------------------------------
def check_plan(plan: Plan, n: int, shard_size: int) -> None:
    """Groups and shards cover every item once: contiguous shards of ``shard_size`` per partition."""
    assert plan.total == n
    keys = [g.key for g in plan.groups]
    assert plan.groups and len(set(keys)) == len(keys)
    assert sum(sum(g.partitions.values()) for g in plan.groups) == n
    assert all(s.group in keys for s in plan.shards)
    assert len({(s.group, s.key) for s in plan.shards}) == len(plan.shards), "shard keys repeat"
    for g in plan.groups:
        assert g.name and isinstance(g.fingerprint, str) and g.fingerprint
        for p, count in g.partitions.items():
            shards = [s for s in plan.shards if s.group == g.key and s.partition == p]
            assert [s.index for s in shards] == list(range(len(shards)))
            assert [s.start for s in shards] == list(range(0, count, shard_size))
            assert [s.stop for s in shards] == [min(count, a + shard_size) for a in range(0, count, shard_size)]


def read_all(src: Source, plan: Plan, batch_size: int) -> tuple[list[str], np.ndarray, dict[str, list]]:
    """Ids, raw arrays and metadata of every shard read in plan order, checking each batch."""
    ids, arrays, meta = [], [], defaultdict(list)
    for shard in plan.shards:
        batches = list(src.read(shard, batch_size))
        assert [b.last for b in batches] == [False] * (len(batches) - 1) + [True], f"last flags of {shard.key}"
        positions = np.concatenate([b.positions for b in batches])
        np.testing.assert_array_equal(positions, np.arange(shard.start, shard.stop))
        for b in batches:
            assert b.shard == shard and 0 < len(b) <= batch_size
            assert len(b.ids) == len(b.data) == len(b.positions) == len(b.rows)
            assert b.status is None or set(b.status) == {"ok"}, b.status
            ids += b.ids
            arrays.append(np.asarray(b.data))
            for c, values in b.metadata.items():
                assert len(values) == len(b), c
                meta[c] += list(values)
    return ids, np.concatenate(arrays), meta


def check_reads(src: Source, case: Case, plan: Plan, batch_size: int) -> None:
    ids, arrays, meta = read_all(src, plan, batch_size)
    assert ids == case.ids
    assert arrays.dtype == case.arrays.dtype and arrays.shape == case.arrays.shape
    np.testing.assert_array_equal(arrays, case.arrays)
    for c, values in case.metadata.items():
        assert c in meta, f"metadata column {c!r} missing from the batches (they have {sorted(meta)})"
        assert [str(v) for v in meta[c]] == [str(v) for v in values], c


def fingerprints(src: Source) -> list[str]:
    return [g.fingerprint for g in src.plan(4).groups]


@pytest.mark.parametrize("shard_size, batch_size", [(4, 3), (64, 5)])
def test_plan_and_read(case, shard_size, batch_size):
    src = case.open()
    try:
        if hasattr(src, "__len__"):
            assert len(src) == len(case.ids)
        plan = src.plan(shard_size)
        check_plan(plan, len(case.ids), shard_size)
        check_reads(src, case, plan, batch_size)
    finally:
        src.close()


def test_shard_stream_reads_what_the_source_reads(case):
    src = case.open()
    try:
        plan = src.plan(4)
        batches = list(ShardStream(src, plan.shards, 3))  # what the runner iterates
        assert [i for b in batches for i in b.ids] == case.ids
        np.testing.assert_array_equal(np.concatenate([b.data.numpy() for b in batches]), case.arrays)
    finally:
        src.close()


def test_fingerprint_stable_and_follows_the_input(case):
    first, second = case.open(), case.open()
    before = fingerprints(first)
    assert before == fingerprints(second), "two opens of the same input disagree"
    assert before == fingerprints(first), "planning twice changed the fingerprint"
    first.close()
    second.close()
    case.change()
    changed = case.open()
    try:
        assert fingerprints(changed) != before, "the fingerprint did not change with the input"
    finally:
        changed.close()


def test_pickled_and_localised_copy_reads_the_same(case):
    src = case.open()
    plan = src.plan(4)  # planned here, read elsewhere: as the runner hands sources to readers
    copy = pickle.loads(pickle.dumps(src))
    assert copy.localise() is None
    try:
        check_reads(copy, case, plan, 3)
    finally:
        copy.close()
        src.close()


def test_missing_input_is_a_clear_error(case):
    with pytest.raises(NenyaError) as err:
        case.run_missing()
    assert case.missing in str(err.value), f"the error does not name {case.missing}: {err.value}"
