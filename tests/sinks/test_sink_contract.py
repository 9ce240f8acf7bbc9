"""The Sink contract, run for every registered output format (``nenya.sinks.sinks``).

The formats are read from the registry when the tests are collected, so a newly registered sink is
tested here without new test code. Through the public extraction entry points
(:func:`nenya.extract.extract_preproc`, :func:`nenya.extract.extract_collection`), with a tiny seeded
encoder, every sink must:

(a) round trip: what :mod:`nenya.analysis` reads back holds every id exactly once, with the vector
    the encoder gives when applied directly, the input's metadata and a status table;
(b) rerun: a second identical run re-encodes nothing and leaves every file as it was;
(c) resume after an interruption (the ``NENYA_FAULTS`` fault points of ``nenya.pipeline.faults``,
    as the reliability tests use): no partial output appears, committed shards are kept, and the
    rerun's output equals an uninterrupted run's bit for bit;
(d) sinks with ``collections = True`` additionally hold a photo folder in one file and resume by
    id: images added to the folder are the only ones encoded, and every image has one row.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from nenya.analysis import read_about, read_latents
from nenya.encoders.base import Encoder
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection, extract_preproc
from nenya.preprocess import ImageTransform, Preprocess
from nenya.preprocess.cpu import decode_image
from nenya.sample_data import write_preproc
from nenya.sinks import Sink, sinks
from nenya.sources.h5files import as_strings
from nenya.sources.hdf5 import latents_stem
from photokit import picture, save

SINKS = sinks.names()  # read at collection time: a newly registered sink is tested too
COLLECTION_SINKS = [n for n in SINKS if getattr(sinks.get(n), "collections", False)]

DIM = 5
FAULTS = "NENYA_FAULTS"
# 4-item shards of 4-item batches: preproc train 6 -> 2 shards, valid 10 -> 3 shards (5 batches)
PREPROC_OPTS = RunOptions(batch_size=4, shard_size=4, num_workers=0, device="cpu", progress=False)
# photos: 2-item shards of 2-item batches, 7 photos -> 4 shards
PHOTO_OPTS = RunOptions(batch_size=2, shard_size=2, num_workers=0, device="cpu", progress=False)
INTERRUPT_AT_THIRD_BATCH = "encode.batch@3=interrupt"  # the first two batches (two shards) get committed

# Bugs these tests found in src, fixed since: (test, sink) -> reason; a new known bug goes here, marked
# strict so that the mark must go once the bug is fixed.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


def each(names: list[str], test: str) -> list:
    """``names`` as parameters, those with a known bug in ``test`` marked xfail (strict)."""
    return [
        pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_BUGS[test, n], strict=True))
        if (test, n) in KNOWN_BUGS
        else n
        for n in names
    ]


# -- a tiny seeded encoder, counting what it encodes --------------------------------------------
class Counted:
    """Items an encoder was asked to encode (its ``encode`` wrapped)."""

    def __init__(self, enc: Encoder) -> None:
        self.items = 0
        self.calls = 0
        original = enc.encode

        def encode(x):
            self.calls += 1
            self.items += len(x)
            return original(x)

        enc.encode = encode  # type: ignore[method-assign]

    def reset(self) -> None:
        self.items = self.calls = 0


def tiny_encoder() -> Encoder:
    """A seeded conv net: cutouts (1 channel, repeated) and 32x32 photos -> 5 numbers."""
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, DIM),
    )
    enc = Encoder(
        model,
        name="tiny-conv",
        dim=DIM,
        preprocess=Preprocess(in_channels=3, demean=True, image=ImageTransform(size=(32, 32), resize=32)),
        fingerprint="tiny-conv-seed7",
    )
    return enc.to("cpu", "fp32", channels_last=False)


@pytest.fixture
def enc():
    return tiny_encoder()


# -- inputs and what the encoder makes of them directly -----------------------------------------
@pytest.fixture
def preproc(tmp_path) -> Path:
    (tmp_path / "data").mkdir()
    return Path(write_preproc(tmp_path / "data" / "tiny_preproc.h5", n_valid=10, n_train=6, size=32, seed=11))


def preproc_reference(enc: Encoder, path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """id -> the encoder applied to that cutout directly, and id -> its ``pattern`` metadata."""
    vectors, pattern = {}, {}
    with h5py.File(path, "r") as f:
        for p in ("train", "valid"):
            cutouts = f[p][:]
            cols = [c.decode() if isinstance(c, bytes) else str(c) for c in f[f"{p}_metadata"].attrs["columns"]]
            table = as_strings(f[f"{p}_metadata"][:])
            out = enc.encode(torch.from_numpy(cutouts)).numpy()
            for r in range(len(cutouts)):
                vectors[f"{p}/{r}"] = out[r]
                pattern[f"{p}/{r}"] = table[r, cols.index("pattern")]
    return vectors, pattern


def add_photos(root: Path, names: list[str]) -> None:
    for name in names:
        seed = sum(map(ord, name))  # a different picture per name
        fmt = "JPEG" if name.endswith(".jpg") else "PNG"
        save(picture(seed), str(root / name), fmt, **({"quality": 95} if fmt == "JPEG" else {}))


PHOTOS = ["a.png", "b.jpg", "c.png", "nested/d.png", "nested/deeper/e.jpg", "f.png", "g.png"]


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    add_photos(root, PHOTOS)
    return root


def photo_reference(enc: Encoder, root: Path, ids) -> dict[str, np.ndarray]:
    """id -> the encoder applied directly to the photo decoded with its transform."""
    x = np.stack([decode_image((root / i).read_bytes(), transform=enc.preprocess.image) for i in ids])
    out = enc.encode(torch.from_numpy(x)).numpy()
    return dict(zip(ids, out))


# -- reading outputs back -----------------------------------------------------------------------
def preproc_output(sink: str, out: Path, preproc: Path) -> Path:
    """Where a sink puts the output of one preproc file: the file's latents stem + the sink's extension."""
    return out / (latents_stem(str(preproc)) + sinks.get(sink).ext)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def status_rows(path: Path) -> list[tuple[str, str]]:
    with open(str(path) + ".status.csv", newline="") as f:
        return [(r["id"], r["status"]) for r in csv.DictReader(f)]


def check_round_trip(path: Path, reference: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, object]:
    """The output at ``path`` holds every reference id once, with the reference vector."""
    assert path.exists(), (
        f"no output at {path}; the folder holds {sorted(os.listdir(path.parent))}"
    )  # a file, or a dataset folder (Lance)
    ids, vectors, meta = read_latents(path)
    ids = [str(i) for i in ids]
    assert len(ids) == len(set(ids)), f"duplicated ids in {path}"
    assert sorted(ids) == sorted(reference), f"ids of {path} differ from the input's"
    assert vectors.shape == (len(reference), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.stack([reference[i] for i in ids]), rtol=1e-5, atol=1e-6)
    assert len(meta) == len(ids)
    rows = status_rows(path)  # every output comes with its status table: every id once, ok
    assert sorted(i for i, _ in rows) == sorted(reference) and {s for _, s in rows} == {"ok"}
    about = read_about(path)
    assert about is not None and about["model"] == "tiny-conv" and about["dim"] == DIM
    return ids, vectors, meta


# -- every sink: Nenya preproc files ------------------------------------------------------------
def test_registry_lists_sinks():
    assert SINKS, "the sink registry is empty"
    for name in SINKS:
        cls = sinks.get(name)
        assert isinstance(cls.ext, str) and isinstance(cls.collections, bool) and isinstance(cls.supports_ranks, bool)
        if cls.collections:  # a collection's format is chosen by the output's extension
            assert cls.ext.startswith("."), f"sink {name!r} holds collections but has no extension"
    exts = [sinks.get(n).ext for n in COLLECTION_SINKS]
    assert len(set(exts)) == len(exts), f"two collection sinks share an extension: {exts}"


@pytest.mark.parametrize("sink", SINKS)
def test_preproc_round_trip(sink, enc, preproc, tmp_path):
    reference, pattern = preproc_reference(enc, preproc)
    out = tmp_path / "out"
    summary = extract_preproc([str(preproc)], enc, str(out), fmt=sink, options=PREPROC_OPTS)
    path = preproc_output(sink, out, preproc)
    assert summary.items == 16 and summary.skipped == 0 and str(path) in summary.outputs
    ids, _, meta = check_round_trip(path, reference)
    assert list(meta["partition"]) == [i.split("/")[0] for i in ids]  # where each row came from
    assert list(meta["row"]) == [int(i.split("/")[1]) for i in ids]
    assert list(meta["pattern"]) == [pattern[i] for i in ids]  # the input's metadata, carried row by row
    assert not (out / ".nenya-work").exists(), "the work folder stays after a finished run"


@pytest.mark.parametrize("sink", SINKS)
def test_preproc_rerun_changes_nothing(sink, enc, preproc, tmp_path):
    out = tmp_path / "out"
    counted = Counted(enc)
    extract_preproc([str(preproc)], enc, str(out), fmt=sink, options=PREPROC_OPTS)
    assert counted.items == 16
    before = snapshot(out)
    counted.reset()
    summary = extract_preproc([str(preproc)], enc, str(out), fmt=sink, options=PREPROC_OPTS)
    assert counted.calls == 0 and summary.items == 0, "an identical rerun encoded again"
    assert snapshot(out) == before, "an identical rerun changed the output folder"


@pytest.mark.parametrize("sink", SINKS)
def test_preproc_resume_after_interruption(sink, enc, preproc, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    extract_preproc([str(preproc)], tiny_encoder(), str(reference), fmt=sink, options=PREPROC_OPTS)
    out = tmp_path / "out"
    counted = Counted(enc)
    monkeypatch.setenv(FAULTS, INTERRUPT_AT_THIRD_BATCH)
    with pytest.raises(KeyboardInterrupt):
        extract_preproc([str(preproc)], enc, str(out), fmt=sink, options=PREPROC_OPTS)
    monkeypatch.delenv(FAULTS)
    path = preproc_output(sink, out, preproc)
    assert not path.exists(), "an interrupted run published a partial output"
    counted.reset()
    summary = extract_preproc([str(preproc)], enc, str(out), fmt=sink, options=PREPROC_OPTS)
    assert summary.shards == 5 and summary.shards_already_done == 2, summary
    assert counted.items == 16 - 6, "the rerun did not keep the shards committed before the interruption"
    ref_ids, ref_vectors, ref_meta = read_latents(preproc_output(sink, reference, preproc))
    ids, vectors, meta = read_latents(path)
    assert list(ids) == list(ref_ids)
    np.testing.assert_array_equal(vectors, ref_vectors)  # bit-identical: the same batches were encoded
    assert meta.equals(ref_meta)
    assert status_rows(path) == status_rows(preproc_output(sink, reference, preproc))
    assert not (out / ".nenya-work").exists()


class MinimalSink(Sink):
    """Only what the Sink contract asks for (design.md's worked example), one file per group: ids and vectors."""

    ext = ".rows"

    def __init__(self, output, *, overwrite: bool = False, name: str | None = None, suffix: str = "") -> None:
        self.output, self.suffix, self.rows = str(output), suffix, {}

    def start(self, plan, context):
        self.plan = plan
        return set()

    def write(self, batch, vectors):
        self.rows.setdefault(batch.shard.group, []).extend(zip(batch.ids, vectors.tolist()))

    def commit(self, shard):
        pass

    def finish(self):
        os.makedirs(self.output, exist_ok=True)
        paths = []
        for g in self.plan.groups:
            paths.append(os.path.join(self.output, g.name + self.suffix + self.ext))
            with open(paths[-1], "w") as f:
                f.writelines(f"{i} {' '.join(map(repr, v))}\n" for i, v in self.rows.get(g.key, []))
        return paths


def test_a_sink_with_only_the_contract_writes_preproc_files(enc, preproc, tmp_path):
    sinks.register("contract-only", MinimalSink, help="a sink with the Sink contract only")
    try:
        summary = extract_preproc([str(preproc)], enc, str(tmp_path / "out"), fmt="contract-only", options=PREPROC_OPTS)
    finally:
        sinks.unregister("contract-only")
    reference, _ = preproc_reference(enc, preproc)
    (path,) = summary.outputs
    rows = [line.split() for line in Path(path).read_text().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(reference)
    for r in rows:
        np.testing.assert_allclose(np.array(r[1:], dtype=np.float32), reference[r[0]], rtol=1e-5, atol=1e-6)


# -- sinks that hold an image collection in one file -------------------------------------------
def collection_output(sink: str, out: Path) -> Path:
    return out / ("vectors" + sinks.get(sink).ext)


@pytest.mark.parametrize("sink", COLLECTION_SINKS)
def test_photo_folder_round_trip(sink, enc, photos, tmp_path):
    ids = sorted(PHOTOS)
    reference = photo_reference(enc, photos, ids)
    path = collection_output(sink, tmp_path / "out")
    summary = extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    assert summary.items == len(ids) and summary.outputs == [str(path)]
    got, _, meta = check_round_trip(path, reference)
    assert got == ids  # a folder is written in id order
    assert list(meta["path"]) == [str(photos / i) for i in ids]


@pytest.mark.parametrize("sink", COLLECTION_SINKS)
def test_photo_folder_rerun_changes_nothing(sink, enc, photos, tmp_path):
    path = collection_output(sink, tmp_path / "out")
    counted = Counted(enc)
    extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    assert counted.items == len(PHOTOS)
    before = snapshot(path.parent)
    counted.reset()
    summary = extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    assert counted.calls == 0 and summary.items == 0, "an identical rerun encoded again"
    assert snapshot(path.parent) == before, "an identical rerun changed the output folder"


@pytest.mark.parametrize("sink", COLLECTION_SINKS)
def test_photo_folder_resume_after_interruption(sink, enc, photos, tmp_path, monkeypatch):
    reference = collection_output(sink, tmp_path / "ref")
    extract_collection(f"images:{photos}", tiny_encoder(), str(reference), options=PHOTO_OPTS)
    path = collection_output(sink, tmp_path / "out")
    counted = Counted(enc)
    monkeypatch.setenv(FAULTS, INTERRUPT_AT_THIRD_BATCH)
    with pytest.raises(KeyboardInterrupt):
        extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    monkeypatch.delenv(FAULTS)
    assert not path.exists(), "an interrupted run published a partial output"
    counted.reset()
    summary = extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    assert summary.shards == 4 and summary.shards_already_done == 2, summary
    assert counted.items == len(PHOTOS) - 4
    ref_ids, ref_vectors, ref_meta = read_latents(reference)
    ids, vectors, meta = read_latents(path)
    assert list(ids) == list(ref_ids)
    np.testing.assert_array_equal(vectors, ref_vectors)
    assert meta.equals(ref_meta)
    assert status_rows(path) == status_rows(reference)


@pytest.mark.parametrize("sink", each(COLLECTION_SINKS, "resume_by_id"))
def test_photo_folder_resume_by_id(sink, enc, photos, tmp_path):
    path = collection_output(sink, tmp_path / "out")
    counted = Counted(enc)
    extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    first, _, _ = read_latents(path)
    new = ["0_first.png", "e2.jpg", "nested/z.png"]  # sorting before, among and after the others
    add_photos(photos, new)
    counted.reset()
    summary = extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS)
    assert summary.items == len(new) and counted.items == len(new), "resume by id encoded old images again"
    ids = sorted(PHOTOS + new)
    ids_out, _, _ = check_round_trip(path, photo_reference(enc, photos, ids))
    assert ids_out[: len(first)] == list(first), "the existing rows do not come first"
    assert sorted(ids_out[len(first) :]) == sorted(new)
    assert [i for i, _ in status_rows(path)] == ids_out  # the status table in output order, every id once
    counted.reset()
    assert extract_collection(f"images:{photos}", enc, str(path), options=PHOTO_OPTS).items == 0
    assert counted.calls == 0
