"""Image files as a source: a folder (local or any fsspec URL), listed recursively and sorted.

The listing is the whole plan: names only, no per-file stat or open, so a million-file folder
is planned in the time it takes to read its directories. Pixels are read in the workers, one
batch at a time (remote batches fetched concurrently with one ``fs.cat`` call), and decoded by
:func:`nenya.preprocess.cpu.decode_image`. A file that cannot be used keeps its slot with a
``skipped:<reason>`` status and zero pixels, so positions and rows never shift.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import pyarrow as pa

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.pipeline.items import Batch, Plan, ReadTiming, Shard
from nenya.preprocess import (
    DEFAULT_MAX_PIXELS,
    ImageTransform,
    SkipItem,
    check_transform,
    decode_image,
    device_candidate,
    read_bytes,
)
from nenya.sources import Source, SourceOptions, collection_plan

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")


def _image_kwargs(options: SourceOptions) -> dict:
    """The image sources' arguments from :class:`SourceOptions`."""
    if options.transform is None:
        raise InputError(
            "photo sources need the model's image preprocessing (a timm:, torchvision: or "
            "torchscript: model, or --size)"
        )
    kwargs = {"transform": options.transform, "skip_ids": options.skip_ids, "jpeg_on_device": options.jpeg_on_device}
    if options.max_pixels is not None:
        kwargs["max_pixels"] = options.max_pixels
    return kwargs


class _ImageItems(Source):
    """Shared machinery of the image sources: a listing of (id, location) pairs -> batches.

    Subclasses implement :meth:`_list`, which sets ``_ids`` and ``_paths`` (pyarrow string
    arrays: cheap to slice and to pickle), ``_rows`` (int64 rows in the full listing) and,
    optionally, ``_meta`` (a pyarrow table of extra metadata columns, one row per listed item).
    """

    key: str = ""

    def __init__(
        self, *, transform: ImageTransform, skip_ids: Collection[str], max_pixels: int, jpeg_on_device: bool = False
    ) -> None:
        self.transform = check_transform(transform)
        self.jpeg_on_device = bool(jpeg_on_device)
        self.skip_ids = frozenset(skip_ids)
        self.max_pixels = int(max_pixels)
        self._ids: pa.Array | None = None
        self._paths: pa.Array | None = None
        self._rows: np.ndarray | None = None
        self._meta: pa.Table | None = None
        self._listed_total = 0

    # -- planning ------------------------------------------------------------------------
    def _list(self) -> None:
        raise NotImplementedError

    def _ensure_listed(self) -> None:
        if self._ids is None:
            self._list()

    def __len__(self) -> int:
        self._ensure_listed()
        return len(self._ids)

    def _apply_skip(self, ids: pa.Array) -> np.ndarray:
        """Rows (of ``ids``) that stay after removing ``skip_ids``."""
        n = len(ids)
        if not self.skip_ids:
            return np.arange(n, dtype=np.int64)
        import pyarrow.compute as pc

        drop = pc.is_in(ids, value_set=pa.array(sorted(self.skip_ids), pa.string()))
        keep = pc.invert(pc.fill_null(drop, False)).to_numpy(zero_copy_only=False)
        return np.flatnonzero(keep).astype(np.int64)

    def metadata_columns(self) -> list[str]:
        """Metadata columns of every batch, ``path`` first."""
        self._ensure_listed()
        return ["path"] + ([] if self._meta is None else list(self._meta.column_names))

    def fingerprint(self) -> str:
        """sha256 of what this run reads: the (filtered) ids and paths in order, and the transform."""
        self._ensure_listed()
        h = hashlib.sha256()
        for arr in (self._ids, self._paths):
            _hash_strings(h, arr)
        h.update(repr((self.transform, self.max_pixels, self.metadata_columns())).encode())
        if self.jpeg_on_device:  # other pixels (nvjpeg, tensor resize): never mixed with a CPU-decoded run
            h.update(b"jpeg-on-device")
        return h.hexdigest()[:16]

    def plan(self, shard_size: int) -> Plan:
        self._ensure_listed()
        n = len(self._ids)
        skipped = self._listed_total - n
        if skipped:
            log.info("%s: %d of %d items already done (skip_ids); %d to read", self.key, skipped, self._listed_total, n)
        return collection_plan(self.key, n, self.metadata_columns(), self.fingerprint(), shard_size)

    # -- reading -------------------------------------------------------------------------
    def locations(self, start: int, stop: int) -> list[str | None]:
        """Paths or URLs of items ``start:stop`` (None: no path), listing the source if needed."""
        self._ensure_listed()
        return self._locations(start, stop)

    def _locations(self, a: int, b: int) -> list[str | None]:
        return self._paths[a:b].to_pylist()

    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        self._ensure_listed()
        th, tw = self.transform.size
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            ids = self._ids[a:b].to_pylist()
            locations = self._locations(a, b)
            data = np.zeros((b - a, 3, th, tw), dtype=np.uint8)
            status = ["ok"] * (b - a)
            encoded: list[tuple[int, object, int]] = []
            blobs = self._blobs(a, b, locations)
            t_decode = time.perf_counter()
            for i, blob in enumerate(blobs):
                try:
                    if isinstance(blob, SkipItem):
                        raise blob
                    if self.jpeg_on_device:
                        orientation = device_candidate(blob, max_pixels=self.max_pixels)
                        if orientation is not None:  # the encoder's device decodes it (header read only)
                            encoded.append((i, blob, orientation))
                            continue
                    data[i] = decode_image(blob, transform=self.transform, max_pixels=self.max_pixels)
                except SkipItem as e:
                    status[i] = f"skipped:{e.reason}"
                    log.debug("skipping %s: %s", locations[i], e.reason)
                except Exception as e:  # one odd file must not end a million-image run
                    status[i] = f"skipped:decode error: {type(e).__name__}"
                    log.warning("skipping %s: unexpected %s: %s", locations[i], type(e).__name__, e)
            metadata = {"path": np.array([p or "" for p in locations], dtype=object)}
            if self._meta is not None:
                part = self._meta.slice(a, b - a)
                for name in part.column_names:
                    metadata[name] = _to_numpy(part.column(name))
            positions = np.arange(a, b, dtype=np.int64)
            yield Batch(
                shard,
                [str(i) for i in ids],
                positions,
                self._rows[a:b].copy(),
                data,
                metadata,
                last=b >= shard.stop,
                status=None if all(s == "ok" for s in status) else status,
                encoded=encoded or None,
                timing=ReadTiming(decode_seconds=time.perf_counter() - t_decode),
            )

    def _blobs(self, a: int, b: int, locations: Sequence[str | None]) -> list[bytes | SkipItem]:
        """The encoded bytes of items ``a:b`` (a SkipItem where one cannot be read): by default the
        files at their locations; a source that packs items in containers overrides this."""
        return self._fetch(locations)

    def _fetch(self, locations: Sequence[str | None]) -> list[bytes | SkipItem]:
        """The bytes of each location (a SkipItem in place of those that cannot be read)."""
        out: list[bytes | SkipItem] = [SkipItem("no path")] * len(locations)
        remote = [i for i, p in enumerate(locations) if p and storage.is_remote(p)]
        for i, p in enumerate(locations):
            if p and not storage.is_remote(p):
                try:
                    out[i] = read_bytes(p)
                except SkipItem as e:
                    out[i] = e
        if remote:
            by_proto: dict[str, list[int]] = {}
            for i in remote:
                by_proto.setdefault(locations[i].split("://", 1)[0], []).append(i)
            for idx in by_proto.values():
                fs, _ = storage.url_to_fs(locations[idx[0]])
                paths = [fs._strip_protocol(locations[i]) for i in idx]
                try:  # one concurrent request batch on async filesystems (s3, gcs, http)
                    got = storage.retry(
                        lambda fs=fs, paths=paths: fs.cat(paths, on_error="return"), what=f"read of {len(paths)} files"
                    )
                except Exception:  # fall back to one file at a time, each with its own reason
                    got = {}
                    for p in paths:
                        try:
                            got[p] = read_bytes(p, fs=fs, fs_path=p)
                        except SkipItem as e:
                            got[p] = e
                if not isinstance(got, dict):  # a single path gives its bytes, not a dict
                    got = {paths[0]: got}
                for i, p in zip(idx, paths):
                    out[i] = _as_blob(got.get(p, SkipItem("missing file")))
        return out


def _as_blob(value) -> bytes | SkipItem:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, SkipItem):
        return value
    if isinstance(value, FileNotFoundError):
        return SkipItem("missing file")
    if isinstance(value, IsADirectoryError):
        return SkipItem("not a file")
    if isinstance(value, PermissionError):
        return SkipItem("unreadable: permission denied")
    return SkipItem(f"unreadable: {type(value).__name__}")


def _to_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """A metadata column as numpy, in its native dtype where it has one (strings as objects)."""
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.array(col.to_pylist(), dtype=object)
    return col.to_numpy()


def _hash_strings(h, arr: pa.Array) -> None:
    """Feed a string array into a hash, fast (its buffers) and unambiguous (offsets included)."""
    arr = arr.cast(pa.large_string()) if not pa.types.is_large_string(arr.type) else arr
    if arr.offset or arr.null_count:
        arr = pa.array(arr.to_pylist(), pa.large_string())
    for buf in arr.buffers()[1:]:
        if buf is not None:
            h.update(memoryview(buf))
    h.update(str(len(arr)).encode())


class ImageFolderSource(_ImageItems):
    """Every image under a folder, recursively; ids are posix paths relative to the folder.

    Files are listed from directory entries only (``os.scandir``; ``fs.find`` for URLs), sorted
    by id, so the listing is the same on every machine and costs no per-file stat. Names
    starting with ``.`` (hidden files and folders) are ignored, as are files whose extension is
    not in ``extensions`` (case-insensitive). Files with an image extension that do not decode
    are kept with a ``skipped:<reason>`` status.

    Example:
        >>> src = ImageFolderSource("photos/", transform=ImageTransform(size=(224, 224)))
        >>> plan = src.plan(shard_size=4096)        # names only
        >>> batch = next(src.read(plan.shards[0], 64))
        >>> batch.ids[:2], batch.data.shape          # (['a.jpg', 'sub/b.png'], (64, 3, 224, 224))

    Args:
        root: a local folder or URL (``s3://bucket/prefix``, ``memory://x``, ...).
        transform: resize/crop to the model's input (``encoder.preprocess.image``).
        extensions: file suffixes taken as images.
        skip_ids: ids to leave out before sharding (those already in the output: resume by id).
        max_pixels: images over this many pixels are skipped (``pixel limit``) before decoding.
        jpeg_on_device: send clean JPEGs' bytes for the encoder's device to decode
            (``--decode gpu``, :mod:`nenya.preprocess.device`); other files are decoded here.

    Raises:
        InputError: (at ``plan``) the folder does not exist, is a file, or holds no images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        transform: ImageTransform = ImageTransform(),
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        skip_ids: Collection[str] = (),
        max_pixels: int = DEFAULT_MAX_PIXELS,
        jpeg_on_device: bool = False,
    ) -> None:
        super().__init__(transform=transform, skip_ids=skip_ids, max_pixels=max_pixels, jpeg_on_device=jpeg_on_device)
        self.root = str(root)
        self.key = self.root
        self.extensions = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        # local roots are made absolute here, in the planning process: paths in the output are
        # then usable from anywhere, and a relative root run from another folder is another input
        self._base = (
            self.root.rstrip("/") if storage.is_remote(self.root) else os.path.abspath(storage.local_path(self.root))
        )

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> ImageFolderSource:
        """``images:FOLDER`` (``nenya extract --source``)."""
        return cls(where, **_image_kwargs(options))

    def _list(self) -> None:
        names = self._list_remote() if storage.is_remote(self.root) else self._list_local()
        names.sort()
        self._listed_total = len(names)
        if not names:
            raise InputError(
                f"no images found under {self.root} (looked for {', '.join(self.extensions)}, "
                "recursively); check the folder, or pass extensions=... for other suffixes"
            )
        ids = pa.array(names, pa.string())
        rows = self._apply_skip(ids)
        self._rows = rows
        self._ids = ids if len(rows) == len(ids) else ids.take(pa.array(rows))
        self._paths = self._ids  # locations are root + "/" + id (see _locations)

    def _locations(self, a: int, b: int) -> list[str | None]:
        sep = "/" if storage.is_remote(self.root) else os.sep
        base = self._base.rstrip(sep) if len(self._base) > 1 else self._base
        return [base + sep + (i if sep == "/" else i.replace("/", sep)) for i in self._ids[a:b].to_pylist()]

    def fingerprint(self) -> str:
        self._ensure_listed()
        h = hashlib.sha256(self._base.encode())
        h.update(super().fingerprint().encode())
        return h.hexdigest()[:16]

    def _is_image(self, name: str) -> bool:
        return not name.startswith(".") and name.lower().endswith(self.extensions)

    def _list_local(self) -> list[str]:
        root = self._base
        if not os.path.exists(root):
            raise InputError(f"image folder not found: {self.root}; check the path")
        if not os.path.isdir(root):
            raise InputError(
                f"{self.root} is a file, not a folder; give the folder that holds the images "
                "(or a table of paths with table:FILE)"
            )
        out: list[str] = []
        seen_dirs: set[tuple[int, int]] = set()
        stack = [("", root)]
        while stack:
            prefix, folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except PermissionError:
                log.warning("cannot list %s (permission denied); its images are left out", folder)
                continue
            for e in entries:
                if e.name.startswith("."):
                    continue
                rel = prefix + e.name
                if e.is_dir():
                    if e.is_symlink():  # guard against link cycles (one stat per linked folder only)
                        st = os.stat(e.path)
                        if (st.st_dev, st.st_ino) in seen_dirs:
                            continue
                        seen_dirs.add((st.st_dev, st.st_ino))
                    stack.append((rel + "/", e.path))
                elif self._is_image(e.name) and (e.is_file() or e.is_symlink()):
                    out.append(rel)
        return out

    def _list_remote(self) -> list[str]:
        fs, path = storage.url_to_fs(self.root)
        base = path.rstrip("/")
        if not fs.exists(base):
            raise InputError(f"image folder not found: {self.root}; check the URL (and your credentials)")
        if fs.isfile(base):
            raise InputError(f"{self.root} is a file, not a folder; give the folder that holds the images")
        found = storage.retry(lambda: fs.find(base), what=f"listing of {self.root}")
        out = []
        for p in found:
            rel = p[len(base) :].lstrip("/") if p.startswith(base) else p
            if (
                rel
                and all(not part.startswith(".") for part in rel.split("/"))
                and self._is_image(rel.rsplit("/", 1)[-1])
            ):
                out.append(rel)
        return out
