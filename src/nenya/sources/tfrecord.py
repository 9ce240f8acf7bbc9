"""TFRecord files of ``tf.train.Example`` records as a source, without TensorFlow:
``tfrecord:radar/*.tfrecord --feature ref --shape size`` (the radar-autoencoder recipe's HRRR
fields: a float list ``ref``, its shape in ``size``, and ``time``/``valid_time``).

The listing reads each file's record headers (8-byte length, CRC) and seeks past the data, so it
costs no parsing; a record cut short is an error naming the file, the record and its byte. Records
are parsed (with the ``tfrecord`` package's protobuf classes) in the reader processes, a batch at a
time, by their offsets. Gzip-compressed files (by their magic bytes) are decompressed into nenya's
cache first; URLs are fetched there.

The image is ``feature``: a float or int list reshaped to ``shape`` (``H,W`` or ``H,W,C``, or the
name of an int feature holding it per record), or bytes holding an encoded image (PNG, JPEG, TIFF:
decoded with Pillow to grey or RGB) or a raw array (``dtype``, reshaped likewise). Items come out as
float32 (C, H, W), as Nenya cutouts do; every record of a run must have the same shape. Ids are
``<file stem>/<record>``, or the values of ``id_feature``. The other features holding one value
(numbers, or bytes that are UTF-8 text) are carried as metadata columns, with ``file`` and ``record``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import struct
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.pipeline.items import Batch, Shard
from nenya.sources import CollectionSource, SourceOptions

log = logging.getLogger(__name__)

__all__ = ["TFRecordSource", "parse_shape"]

IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")
RESERVED = ("id", "vector", "file", "record")


def parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | str | None:
    """``"64,64"`` -> (64, 64); a name (``"size"``) stays a feature name; None stays None."""
    if text is None or isinstance(text, tuple):
        return text
    if not isinstance(text, str):
        return tuple(int(v) for v in text)
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all(p.isdigit() for p in parts):
        if len(parts) not in (2, 3):
            raise InputError(f"--shape takes H,W or H,W,C; got {text!r}")
        return tuple(int(p) for p in parts)
    return text


def _local_copy(path: str) -> str:
    """A local, uncompressed copy of a TFRecord file (the file itself when it is one)."""
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"TFRecord file not found: {path}")
    with open(local, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return local
    st = os.stat(local)
    key = hashlib.sha256(f"{os.path.abspath(local)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = storage.cache_dir() / "tfrecord" / f"{key}.tfrecord"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with storage.atomic_local(dest) as tmp, gzip.open(local, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, EOFError) as e:
            raise InputError(f"the gzip-compressed TFRecord file {path} is damaged ({e})") from None
    return str(dest)


def _offsets(path: str, local: str) -> np.ndarray:
    """The byte offset of every record of a TFRecord file (header reads and seeks only)."""
    size = os.path.getsize(local)
    out: list[int] = []
    with open(local, "rb") as fh:
        pos = 0
        while pos < size:
            head = fh.read(12)
            if len(head) < 12:
                raise InputError(f"{path}: record {len(out)} at byte {pos} is cut short (a partial header)")
            (length,) = struct.unpack("<Q", head[:8])
            end = pos + 12 + length + 4
            if end > size:
                raise InputError(
                    f"{path}: record {len(out)} at byte {pos} is cut short ({length} bytes announced, "
                    f"{max(size - pos - 16, 0)} there): the file is truncated"
                )
            out.append(pos)
            fh.seek(end)
            pos = end
    return np.asarray(out, dtype=np.int64)


def _read_record(fh, offset: int):
    try:
        from tfrecord import example_pb2
    except ImportError:
        raise InputError('reading TFRecord files needs the tfrecord package: pip install "nenya[records]"') from None

    fh.seek(offset)
    (length,) = struct.unpack("<Q", fh.read(12)[:8])
    example = example_pb2.Example()
    example.ParseFromString(fh.read(length))
    return example.features.feature


def _values(feature) -> tuple[str, Any]:
    """(kind, values) of a ``tf.train.Feature``: ``float``/``int`` numpy arrays or ``bytes`` lists."""
    kind = feature.WhichOneof("kind")
    if kind == "float_list":
        return "float", np.asarray(feature.float_list.value, dtype=np.float32)
    if kind == "int64_list":
        return "int", np.asarray(feature.int64_list.value, dtype=np.int64)
    if kind == "bytes_list":
        return "bytes", list(feature.bytes_list.value)
    return "empty", None


def _scalar(feature) -> Any:
    """A one-value feature as a Python scalar (bytes as text), else None."""
    kind, v = _values(feature)
    if kind in ("float", "int") and len(v) == 1:
        return v[0].item()
    if kind == "bytes" and len(v) == 1:
        try:
            return v[0].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _column(values: list) -> np.ndarray:
    """Numbers as a numeric array; anything else (text, gaps) as objects."""
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.asarray(values)
    return np.asarray(values, dtype=object)


class TFRecordSource(CollectionSource):
    """Arrays (or encoded images) of one feature of ``tf.train.Example`` records (see the module docstring).

    Example:
        >>> src = TFRecordSource("hrrr/*.tfrecord", feature="ref", shape="size", id_feature="time")

    Args:
        pattern: file(s), glob(s) or URL(s).
        feature: the feature holding the image. shape: ``(H, W[, C])``, ``"H,W[,C]"`` or the name
            of an int feature holding it. id_feature: a one-value feature whose values are the ids.
        dtype: the element type of raw-array bytes. skip_ids: ids not to read again (resume).
    """

    key = "tfrecord"

    def __init__(
        self,
        pattern: str | Sequence[str],
        *,
        feature: str,
        shape: str | Sequence[int] | None = None,
        id_feature: str | None = None,
        dtype: str = "float32",
        skip_ids: Collection[str] = (),
    ) -> None:
        if not feature:
            raise InputError("a tfrecord source needs --feature NAME: the feature holding the image")
        self.patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        self.feature, self.shape, self.id_feature = feature, parse_shape(shape), id_feature
        self.dtype = np.dtype(dtype)
        self.skip_ids = frozenset(skip_ids)
        self.files: list[str] = []
        self._local: list[str] = []
        self._listed = False

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> TFRecordSource:
        """``tfrecord:PATTERN`` with ``--feature``, ``--shape``, ``--id-feature`` (``nenya extract``)."""
        r = options.records
        if not r.feature:
            raise InputError("tfrecord:PATTERN needs --feature NAME (the feature holding the image)")
        return cls(where, feature=r.feature, shape=r.shape, id_feature=r.id_feature, skip_ids=options.skip_ids)

    # -- listing -------------------------------------------------------------------------------
    def _list(self) -> None:
        try:
            self.files = storage.expand(self.patterns)
        except FileNotFoundError as e:
            raise InputError(f"no TFRecord file matches: {e}") from None
        self._local = [_local_copy(f) for f in self.files]
        offsets = [_offsets(f, loc) for f, loc in zip(self.files, self._local)]
        self._file = np.repeat(np.arange(len(offsets)), [len(o) for o in offsets])
        self._offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self._record = np.concatenate([np.arange(len(o)) for o in offsets]) if offsets else np.zeros(0, np.int64)
        if not len(self._offset):
            raise InputError(f"no records in {', '.join(self.files)}")
        ids = self._read_ids()
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            raise InputError(f"the id {dup!r} repeats; name a unique --id-feature, or leave it out")
        keep = np.array([i not in self.skip_ids for i in ids], dtype=bool)
        self._listed_total = len(ids)
        self._rows = np.flatnonzero(keep)
        self._ids = [i for i, k in zip(ids, keep) if k]
        self._column_names = self._metadata_columns()
        self._listed = True

    def _read_ids(self) -> list[str]:
        if self.id_feature is None:
            stems = [os.path.basename(f).split(".", 1)[0] for f in self.files]
            return [f"{stems[f]}/{r}" for f, r in zip(self._file, self._record)]
        ids = []
        for f, local in enumerate(self._local):
            with open(local, "rb") as fh:
                for off, rec in zip(self._offset[self._file == f], self._record[self._file == f]):
                    features = _read_record(fh, int(off))
                    if self.id_feature not in features:
                        raise InputError(f"{self.files[f]}: record {rec} has no id feature {self.id_feature!r}")
                    ids.append(str(_scalar(features[self.id_feature])))
        return ids

    def _metadata_columns(self) -> list[str]:
        """The one-value features of the first record (besides the image and its shape), then file, record."""
        with open(self._local[0], "rb") as fh:
            features = _read_record(fh, int(self._offset[0]))
        if self.feature not in features:
            raise InputError(
                f"{self.files[0]}: no feature {self.feature!r} in its records (they hold {sorted(features)}); "
                "name one with --feature"
            )
        skip = {self.feature, self.shape if isinstance(self.shape, str) else None}
        names = [k for k in sorted(features) if k not in skip and _scalar(features[k]) is not None]
        return [f"tf_{k}" if k in RESERVED else k for k in names] + ["file", "record"]

    def _columns(self) -> list[str]:
        return list(self._column_names)

    def fingerprint(self) -> str:
        self._ensure_listed()
        h = hashlib.sha256()
        h.update(repr((self.files, [os.path.getsize(p) for p in self._local], self.feature, self.shape)).encode())
        h.update(repr((self.id_feature, str(self.dtype), len(self._ids))).encode())
        h.update("\n".join(self._ids).encode())
        return h.hexdigest()[:16]

    def localise(self) -> None:
        if self.files and (any(storage.is_remote(f) for f in self.files) or not all(map(os.path.exists, self._local))):
            self._local = [_local_copy(f) for f in self.files]

    # -- reading -------------------------------------------------------------------------------
    def _image(self, features, where: str) -> np.ndarray:
        """The record's image as float32 (C, H, W)."""
        if self.feature not in features:
            raise InputError(f"{where} has no feature {self.feature!r}")
        kind, v = _values(features[self.feature])
        if kind == "bytes" and len(v) == 1 and v[0].startswith(IMAGE_MAGIC):
            from PIL import Image

            with Image.open(io.BytesIO(v[0])) as im:
                arr = np.asarray(im.convert("RGB" if im.mode in ("RGB", "RGBA", "P", "CMYK") else "F"), np.float32)
            return arr.transpose(2, 0, 1) if arr.ndim == 3 else arr[None]
        if kind == "bytes":
            v = np.frombuffer(b"".join(v), dtype=self.dtype)
        elif kind == "empty":
            raise InputError(f"{where}: the feature {self.feature!r} is empty")
        shape = self._shape_of(features, where)
        if shape is None:
            raise InputError(f"{where}: give --shape H,W[,C] (or the name of a feature holding it)")
        if int(np.prod(shape)) != v.size:
            raise InputError(f"{where}: {v.size} values of {self.feature!r} do not fill the shape {shape}")
        arr = np.asarray(v, dtype=np.float32).reshape(shape)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _shape_of(self, features, where: str) -> tuple[int, ...] | None:
        if not isinstance(self.shape, str):
            return self.shape
        if self.shape not in features:
            raise InputError(f"{where} has no shape feature {self.shape!r}")
        kind, v = _values(features[self.shape])
        if kind != "int" or len(v) not in (2, 3):
            raise InputError(f"{where}: the shape feature {self.shape!r} must hold 2 or 3 integers")
        return tuple(int(x) for x in v)

    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        self._ensure_listed()
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            rows = self._rows[a:b]
            images: list[np.ndarray] = []
            meta: dict[str, list] = {c: [] for c in self._column_names}
            handles: dict[int, Any] = {}
            try:
                for r in rows:
                    f = int(self._file[r])
                    fh = handles.get(f) or handles.setdefault(f, open(self._local[f], "rb"))
                    where = f"{self.files[f]}: record {int(self._record[r])}"
                    features = _read_record(fh, int(self._offset[r]))
                    images.append(self._image(features, where))
                    if images[-1].shape != images[0].shape:
                        raise InputError(f"{where} has shape {images[-1].shape}, earlier ones {images[0].shape}")
                    for c in self._column_names[:-2]:
                        name = c[3:] if c.startswith("tf_") and c[3:] in RESERVED else c
                        meta[c].append(_scalar(features[name]) if name in features else None)
                    meta["file"].append(self.files[f])
                    meta["record"].append(int(self._record[r]))
            finally:
                for fh in handles.values():
                    fh.close()
            yield Batch(
                shard,
                self._ids[a:b],
                np.arange(a, b, dtype=np.int64),
                rows.copy(),
                np.stack(images),
                {c: _column(v) for c, v in meta.items()},
                last=b >= shard.stop,
            )
