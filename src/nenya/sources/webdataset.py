"""WebDataset tar shards as a source: ``wds:shards/{000000..000099}.tar`` (img2dataset's and
clip-retrieval's layout: per sample ``KEY.jpg`` (or another image type) and ``KEY.json``).

The listing reads each shard's member headers and its (small) JSON members once; the images stay
in the tar and are read by their offset in the reader processes, one batch at a time. Shards are
local files or URLs (fetched into nenya's cache, as preproc files are); a patterns may hold
``{a..b}`` ranges (zero-padded like the first bound), ``{x,y}`` lists, globs, or name a folder of
``.tar`` files. Compressed shards (``.tar.gz``, ``.tgz``) are decompressed into the cache first.

A sample's id is its key (the member name up to the first dot of its base name); when keys repeat
across shards, every id is ``<shard stem>/<key>``. Scalar JSON fields become metadata columns
(nested values as JSON text; a name clashing with ``id``, ``path`` or ``vector`` gets a ``json_``
prefix); ``path`` is ``<shard>#<member>``. A sample without an image, or whose image does not
decode, keeps its row with a ``skipped:<reason>`` status. A damaged tar (truncated, bad header) is
an error naming the shard and the byte where it breaks.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.preprocess import DEFAULT_MAX_PIXELS, ImageTransform, SkipItem
from nenya.sources import SourceOptions
from nenya.sources.images import IMAGE_EXTENSIONS, _image_kwargs, _ImageItems

log = logging.getLogger(__name__)

__all__ = ["WebDatasetSource", "expand_braces"]

RESERVED = ("id", "path", "vector")
_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard patterns: ``{000..012}`` ranges (zero-padded like the first bound) and
    ``{a,b}`` lists, expanded left to right."""
    found = [m for m in (_RANGE.search(pattern), _LIST.search(pattern)) if m]
    if not found:
        return [pattern]
    m = min(found, key=lambda m: m.start())
    head, tail = pattern[: m.start()], pattern[m.end() :]
    if m.re is _RANGE:
        lo, hi = m.group(1), m.group(2)
        width = len(lo) if lo.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        values = m.group(1).split(",")
    return [x for v in values for x in expand_braces(head + v + tail)]


def _shards(pattern: str) -> list[str]:
    """The shard files of a pattern, a glob or a folder, in order; an InputError names what is missing."""
    names = expand_braces(pattern)
    out: list[str] = []
    for name in names:
        if not storage.is_remote(name) and os.path.isdir(storage.local_path(name)):
            found = sorted(
                os.path.join(name, f) for f in os.listdir(name) if f.lower().endswith((".tar", ".tar.gz", ".tgz"))
            )
            if not found:
                raise InputError(f"no .tar shards in the folder {name}")
            out += found
            continue
        try:
            out += storage.expand([name])
        except FileNotFoundError:
            raise InputError(f"no WebDataset shard matches {name}") from None
    for name in out:
        if not storage.is_remote(name) and not os.path.exists(storage.local_path(name)):
            raise InputError(f"WebDataset shard not found: {name}")
    return list(dict.fromkeys(out))


def _local_copy(shard: str) -> str:
    """A local, uncompressed, seekable copy of a shard (the shard itself when it is one)."""
    try:
        local = storage.fetch(shard)
    except FileNotFoundError:
        raise InputError(f"WebDataset shard not found: {shard}") from None
    if not local.lower().endswith((".gz", ".tgz")):
        return local
    st = os.stat(local)
    key = hashlib.sha256(f"{os.path.abspath(local)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = storage.cache_dir() / "wds" / f"{key}.tar"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with storage.atomic_local(dest) as tmp, gzip.open(local, "rb") as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return str(dest)


def _split_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``): WebDataset's key and extension."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class _Sample:
    __slots__ = ("key", "member", "offset", "size", "meta")

    def __init__(self, key: str) -> None:
        self.key, self.member, self.offset, self.size = key, "", -1, -1
        self.meta: dict[str, Any] = {}


def _scan(shard: str, local: str, image_exts: Collection[str]) -> list[_Sample]:
    """The samples of one tar, in order (members of a sample are contiguous, as WebDataset writes them)."""
    samples: list[_Sample] = []
    last = ""
    try:
        with tarfile.open(local, "r:") as tf:
            for m in tf:
                last = m.name
                if not m.isfile():
                    continue
                key, ext = _split_name(m.name)
                if not samples or samples[-1].key != key:
                    samples.append(_Sample(key))
                s = samples[-1]
                if ext in image_exts and s.size < 0:
                    s.member, s.offset, s.size = m.name, m.offset_data, m.size
                elif ext == "json":
                    s.meta = _json(tf.extractfile(m), shard, m.name)
            end = tf.offset
        with open(local, "rb") as fh:  # a whole tar ends with two zero blocks; tarfile stops quietly without
            fh.seek(end)
            marker = fh.read(1024)
        if len(marker) < 1024 or marker.strip(b"\0"):
            raise tarfile.ReadError(f"no end-of-archive marker at byte {end}: the file is cut short")
    except (tarfile.TarError, EOFError, OSError) as e:
        where = f"after member {last!r}" if last else "at its start"  # the member before the damage
        raise InputError(
            f"the WebDataset shard {shard} is damaged {where} ({type(e).__name__}: {e}); "
            "re-download or re-write the shard"
        ) from None
    return samples


def _json(fh, shard: str, member: str) -> dict[str, Any]:
    try:
        value = json.loads(fh.read()) if fh is not None else {}
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s: %s is not valid JSON (%s); its sample has no metadata", shard, member, e)
        return {}
    return value if isinstance(value, dict) else {"json": value}


def _columns(samples: list[_Sample]) -> pa.Table | None:
    """Scalar JSON fields as columns (nested ones as JSON text), one row per sample."""
    names: dict[str, None] = {}
    for s in samples:
        names.update(dict.fromkeys(s.meta))
    if not names:
        return None
    cols = {}
    for name in names:
        values = [s.meta.get(name) for s in samples]
        values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in values]
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: text
            arr = pa.array([None if v is None else str(v) for v in values], pa.string())
        if pa.types.is_null(arr.type):
            arr = arr.cast(pa.string())
        elif arr.null_count and (pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type)):
            arr = arr.cast(pa.float64())  # missing values as NaN in every batch, not only in those that have one
        cols[f"json_{name}" if name in RESERVED else name] = arr
    return pa.table(cols)


class WebDatasetSource(_ImageItems):
    """The images of WebDataset tar shards (see the module docstring).

    Example:
        >>> src = WebDatasetSource("shards/{00000..00009}.tar", transform=ImageTransform(size=(224, 224)))

    Args:
        pattern: shard pattern(s), glob(s), folder(s) or URL(s).
        transform: the encoder's image preprocessing. skip_ids: ids not to read again (resume).
        max_pixels: skip images with more pixels. jpeg_on_device: leave JPEGs for the device.
        extensions: member extensions that are the sample's image (the first one found is used).
    """

    key = "wds"

    def __init__(
        self,
        pattern: str | Sequence[str],
        *,
        transform: ImageTransform,
        skip_ids: Collection[str] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        jpeg_on_device: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__(transform=transform, skip_ids=skip_ids, max_pixels=max_pixels, jpeg_on_device=jpeg_on_device)
        self.patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        self.image_exts = frozenset(e.lower().lstrip(".") for e in extensions)
        self.shards: list[str] = []
        self._local: list[str] = []
        self._shard_of = self._offset = self._size = np.zeros(0, dtype=np.int64)

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> WebDatasetSource:
        """``wds:PATTERN`` (``nenya extract --source``)."""
        return cls(where, **_image_kwargs(options))

    def _list(self) -> None:
        self.shards = [s for p in self.patterns for s in _shards(p)]
        self._local = [_local_copy(s) for s in self.shards]
        per_shard = [_scan(s, loc, self.image_exts) for s, loc in zip(self.shards, self._local)]
        samples = [x for shard in per_shard for x in shard]
        if not samples:
            raise InputError(f"no samples in the WebDataset shards {', '.join(self.shards)}")
        shard_of = np.repeat(np.arange(len(per_shard)), [len(p) for p in per_shard])
        keys = [s.key for s in samples]
        if len(set(keys)) != len(keys):  # keys repeat across shards: qualify them by shard
            stems = [os.path.basename(s).split(".", 1)[0] for s in self.shards]
            keys = [f"{stems[i]}/{k}" for i, k in zip(shard_of, keys)]
            if len(set(keys)) != len(keys):
                dup = next(k for k, c in Counter(keys).items() if c > 1)
                raise InputError(f"the sample key {dup!r} appears twice in one shard; keys must be unique")
        ids = pa.array(keys, pa.string())
        rows = self._apply_skip(ids)
        self._listed_total = len(ids)
        self._rows = rows
        take = pa.array(rows)
        self._ids = ids if len(rows) == len(ids) else ids.take(take)
        paths = [f"{self.shards[i]}#{s.member or s.key}" for i, s in zip(shard_of, samples)]
        self._paths = pa.array(paths, pa.string()).take(take)
        meta = _columns(samples)
        self._meta = None if meta is None else meta.take(take)
        self._shard_of = shard_of[rows]
        self._offset = np.array([s.offset for s in samples], dtype=np.int64)[rows]
        self._size = np.array([s.size for s in samples], dtype=np.int64)[rows]
        log.info("%d samples in %d WebDataset shard(s)", len(ids), len(self.shards))

    def fingerprint(self) -> str:
        """The listing's fingerprint, and the shards' sizes (a re-written shard is another input)."""
        h = hashlib.sha256(super().fingerprint().encode())
        h.update(repr([os.path.getsize(p) for p in self._local]).encode())
        return h.hexdigest()[:16]

    def localise(self) -> None:
        if any(storage.is_remote(s) for s in self.shards) or any(not os.path.exists(p) for p in self._local):
            self._local = [_local_copy(s) for s in self.shards]

    def _blobs(self, a: int, b: int, locations: Sequence[str | None]) -> list[bytes | SkipItem]:
        out: list[bytes | SkipItem] = [SkipItem("no image in the sample")] * (b - a)
        shard_of, offset, size = self._shard_of[a:b], self._offset[a:b], self._size[a:b]
        for s in np.unique(shard_of):
            path = self._local[int(s)]
            try:
                with open(path, "rb") as fh:
                    for i in np.flatnonzero((shard_of == s) & (size >= 0)):
                        fh.seek(int(offset[i]))
                        data = fh.read(int(size[i]))
                        out[i] = data if len(data) == size[i] else SkipItem("truncated member")
            except FileNotFoundError:
                raise InputError(f"WebDataset shard not found: {self.shards[int(s)]}") from None
        return out
