"""Training data: partitions of preproc HDF5 files and ``.npy`` arrays, read lazily in slabs.

A dataset is indexed by batches (``__getitems__``): each batch's rows are read in increasing
order with as few contiguous reads as possible, and the file is opened lazily in whichever process
reads it (fork and spawn safe), so memory stays bounded whatever the file size. Files smaller than
``max_memory_bytes`` are loaded whole instead, which is faster for the small sets of quick runs.
The contrastive trainer's data is opened here too: the partitions of its opts and each epoch's loader.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler

from nenya._errors import InputError, NenyaError
from nenya.params import Params
from nenya.pipeline import storage
from nenya.ranks import Ranks
from nenya.sources import RecordOptions
from nenya.sources.h5files import LazyH5, check_images, read_rows

log = logging.getLogger(__name__)

#: Default largest partition loaded whole into memory ("auto" mode).
MAX_MEMORY_BYTES = 2 * 1024**3


def _as_batch(arr: np.ndarray) -> np.ndarray:
    return arr[:, None] if arr.ndim == 3 else arr


def collate_batch(batch: Any) -> Any:
    """The DataLoader ``collate_fn`` for datasets whose ``__getitems__`` already returns a tensor."""
    return batch


class ArrayDataset(Dataset):
    """Images of a preproc HDF5 partition or a ``.npy`` file as (C, H, W) tensors (float32, or uint8 kept).

    Args:
        path: a local ``.h5`` or ``.npy`` file (fetch URLs with :func:`open_dataset`).
        key: the HDF5 dataset (partition) name; ignored for ``.npy``.
        in_memory: ``True`` load everything, ``False`` read lazily, ``"auto"`` load when smaller
            than ``max_memory_bytes``.
        indices: rows to expose (default all).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        key: str | None = None,
        *,
        in_memory: bool | str = "auto",
        max_memory_bytes: int = MAX_MEMORY_BYTES,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        self.path = str(path)
        self.key = key
        self.is_npy = self.path.endswith(".npy")
        self._h5: LazyH5 | None = None
        self._mm: np.ndarray | None = None
        self._pid: int | None = None
        if self.is_npy:
            arr = np.load(self.path, mmap_mode="r")
            shape, dtype = arr.shape, arr.dtype
            if arr.ndim not in (3, 4):
                raise InputError(
                    f"{self.path} holds an array of shape {arr.shape}; expected images (N, H, W) or (N, C, H, W)"
                )
            del arr
        else:
            if not key:
                raise InputError(f"say which partition of {self.path} to read (e.g. train or valid)")
            self._h5 = LazyH5(self.path)
            f = self._h5.file
            if key not in f:
                raise InputError(f"{self.path} has no partition {key!r}; it holds {sorted(f.keys())}")
            check_images(self.path, key, f[key])
            shape, dtype = f[key].shape, f[key].dtype
            self._h5.close()  # each reading process opens its own handle
        self.n_total = int(shape[0])
        self.image_shape = tuple(int(v) for v in (shape[1:] if len(shape) == 4 else (1,) + tuple(shape[1:])))
        self.dtype = np.dtype(dtype)
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        nbytes = len(self) * int(np.prod(self.image_shape)) * max(self.dtype.itemsize, 4)
        self.in_memory = bool(in_memory) if in_memory != "auto" else nbytes <= max_memory_bytes
        self._data: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None  # class per row (SupCon), set by the trainer
        if self.in_memory:
            self._data = torch.from_numpy(self._read(np.arange(len(self))))

    @property
    def name(self) -> str:
        """``path`` (``.npy``) or ``path:key``."""
        return self.path if self.is_npy else f"{self.path}:{self.key}"

    def __len__(self) -> int:
        return self.n_total if self.indices is None else len(self.indices)

    def _read(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (positions in this dataset) as (B, C, H, W), read in increasing order."""
        rows = idx if self.indices is None else self.indices[idx]
        order = np.argsort(rows, kind="stable")
        if self.is_npy:
            if self._mm is None or self._pid != os.getpid():
                self._mm, self._pid = np.load(self.path, mmap_mode="r"), os.getpid()
            src = read_rows(self._mm, rows[order])
        else:
            assert self._h5 is not None
            src = read_rows(self._h5.file[self.key], rows[order])
        out = np.empty((len(rows),) + src.shape[1:], src.dtype)
        out[order] = src
        out = _as_batch(out)
        if out.dtype != np.uint8:
            out = out.astype(np.float32, copy=False)
        return np.ascontiguousarray(out)

    def __getitems__(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """A batch (B, C, H, W); ``(batch, labels)`` when :attr:`labels` is set."""
        idx = np.asarray(indices, dtype=np.int64)
        x = self._data[torch.from_numpy(idx)] if self._data is not None else torch.from_numpy(self._read(idx))
        if self.labels is not None:
            return x, self.labels[torch.from_numpy(idx)]
        return x

    def __getitem__(self, index: int) -> torch.Tensor:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.__getitems__([index])[0]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mm"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next read)."""
        if self._h5 is not None:
            self._h5.close()
        self._mm = None


def split_data_spec(spec: str) -> tuple[str, str | None, int | None]:
    """``file.h5:valid:12`` -> ("file.h5", "valid", 12); ``file.h5:train`` -> (.., "train", None)."""
    s = str(spec)
    for suffix in (".h5", ".hdf5", ".npy"):
        pos = s.find(suffix + ":")
        if pos >= 0:
            path, rest = s[: pos + len(suffix)], s[pos + len(suffix) + 1 :]
            parts = rest.split(":")
            key = parts[0] or None
            row = int(parts[1]) if len(parts) > 1 and parts[1] != "" else None
            if suffix == ".npy":
                key, row = None, int(parts[0]) if parts[0] else None
            return path, key, row
    return s, None, None


TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrecord.gz", ".tfrecords.gz")


def is_tfrecord_spec(spec: str | os.PathLike) -> bool:
    """``tfrecord:PATTERN``, or a path or pattern ending like a TFRecord file."""
    s = str(spec)
    return s.startswith("tfrecord:") or s.lower().endswith(TFRECORD_SUFFIXES)


def open_dataset(
    spec: str | os.PathLike,
    key: str | None = None,
    *,
    in_memory: bool | str = "auto",
    records: RecordOptions | None = None,
) -> ArrayDataset:
    """A training dataset from ``file.h5`` (+ partition), ``file.h5:train``, ``images.npy``, a folder
    of images (local or URL; see :func:`load_image_folder`), TFRecord files (``tfrecord:PATTERN``
    or ``*.tfrecord``, with ``records`` naming the feature and shape; see :func:`load_tfrecords`)
    or a URL of a file."""
    if is_tfrecord_spec(spec):
        tmp = load_tfrecords(str(spec).removeprefix("tfrecord:"), records or RecordOptions())
        return ArrayDataset(tmp, in_memory=in_memory)
    path, spec_key, _ = split_data_spec(str(spec))
    key = spec_key or key
    if _is_folder(path):
        arr = load_image_folder(path)
        tmp = os.path.join(storage.make_tempdir("nenya-images-"), "images.npy")
        np.save(tmp, arr)
        return ArrayDataset(tmp, in_memory=True)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"training data not found: {path}")
    if not local.endswith((".npy", ".h5", ".hdf5", ".hdf")):
        raise InputError(
            f"cannot read training images from {path}: expected a preproc .h5 file (with a partition), "
            "a .npy array of images (N, H, W) or (N, C, H, W), or a folder of images"
        )
    return ArrayDataset(local, key, in_memory=in_memory)


def _is_folder(path: str) -> bool:
    if not storage.is_remote(path):
        return os.path.isdir(storage.local_path(path))
    try:
        fs, p = storage.url_to_fs(path)
        return bool(fs.isdir(p))
    except Exception:  # not reachable as a folder: let the file path give its own error
        return False


def load_tfrecords(pattern: str, records: RecordOptions, *, batch_size: int = 64) -> str:
    """TFRecord files as one float32 ``.npy`` (N, C, H, W) in a temporary folder, written a batch at a
    time into a memory map (memory holds one batch), read by
    :class:`~nenya.sources.tfrecord.TFRecordSource`; returns its path."""
    from nenya.sources.tfrecord import TFRecordSource

    if not records.feature:
        raise InputError(
            f"training on TFRecord files ({pattern}) needs the image feature: --feature NAME "
            "(and --shape H,W or a shape feature), or feature/shape in the options"
        )
    source = TFRecordSource(pattern, feature=records.feature, shape=records.shape)
    plan = source.plan(max(len(source), 1))
    out = None
    path = os.path.join(storage.make_tempdir("nenya-tfrecord-"), "images.npy")
    for shard in plan.shards:
        for batch in source.read(shard, batch_size):
            if out is None:
                shape = (len(source), *batch.data.shape[1:])
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            if batch.data.shape[1:] != out.shape[1:]:
                raise InputError(
                    f"{pattern}: record {batch.ids[0]} has shape {batch.data.shape[1:]}, the first {out.shape[1:]}; "
                    "training needs images of one shape"
                )
            out[batch.positions] = batch.data
    assert out is not None
    out.flush()
    del out
    log.info("%d TFRecord images from %s as %s", len(source), pattern, path)
    return path


def load_image_folder(path: str, *, batch_size: int = 256) -> np.ndarray:
    """Every image under a folder as one uint8 array (N, C, H, W), in the folder's sorted order.

    Images are read by :class:`~nenya.sources.images.ImageFolderSource` (recursive, EXIF applied,
    every mode to RGB by one rule) at the size of the first readable image: others are
    center-cropped or zero-padded to it, never resized, so pixels keep their scale. ``C`` is 1
    when every image is grey (all three channels equal), else 3. Files that cannot be used are
    left out with one warning that counts them and names a few.

    Raises:
        InputError: the folder holds no images, or none that decode.
    """
    from nenya.preprocess import ImageTransform
    from nenya.sources.images import ImageFolderSource

    source = ImageFolderSource(path, transform=ImageTransform(size=(1, 1), resize=None))
    n = len(source)  # lists the folder (once)
    size = next((s for s in map(_upright_size, source.locations(0, n)) if s is not None), None)
    if size is None:
        raise InputError(f"none of the {n} image files under {path} can be read as an image")
    source.transform = ImageTransform(size=size, resize=None)
    out: list[np.ndarray] = []
    bad: list[tuple[str, str]] = []
    for shard in source.plan(max(n, 1)).shards:
        for batch in source.read(shard, batch_size):
            status = batch.status or ["ok"] * len(batch)
            keep = [i for i, st in enumerate(status) if st == "ok"]
            bad += [(batch.ids[i], st) for i, st in enumerate(status) if st != "ok"]
            out.append(batch.data[keep])
    if bad:
        log.warning(
            "%d of %d images under %s left out of training: %s",
            len(bad),
            n,
            path,
            "; ".join(f"{i} ({st})" for i, st in bad[:3]) + ("; ..." if len(bad) > 3 else ""),
        )
    arr = np.concatenate(out) if out else np.zeros((0, 3, *size), np.uint8)
    if not len(arr):
        raise InputError(f"no readable images under {path}")
    if (arr[:, 0] == arr[:, 1]).all() and (arr[:, 1] == arr[:, 2]).all():
        arr = np.ascontiguousarray(arr[:, :1])
    log.info("%s: %d images of %dx%d px, %d channel(s)", path, len(arr), size[1], size[0], arr.shape[1])
    return arr


def _upright_size(location: str | None) -> tuple[int, int] | None:
    """(height, width) of an image as displayed (EXIF orientation applied), from its header only."""
    if location is None:
        return None
    import io

    from PIL import Image

    from nenya.preprocess.cpu import exif_orientation, read_bytes

    try:
        im = Image.open(io.BytesIO(read_bytes(location)))
        w, h = im.size
        transposed = exif_orientation(im) in (5, 6, 7, 8)
    except Exception:  # SkipItem or any file Pillow cannot open (the reader gives its reason later)
        return None
    return (w, h) if transposed else (h, w)


def load_labels(ds: ArrayDataset, column: str) -> tuple[np.ndarray, list[str]]:
    """Integer class labels of a dataset's rows from a metadata column (``<partition>_metadata``)
    or an integer dataset of that name in the same file; returns ``(labels, class names)``."""
    from nenya.sources.h5files import as_strings, metadata_columns

    if ds.is_npy:
        raise InputError(f"labels ({column!r}) need a preproc HDF5 file; {ds.path} is a .npy array")
    assert ds._h5 is not None and ds.key is not None
    f = ds._h5.file
    try:
        cols = metadata_columns(f, ds.key)
        if column in cols:
            values = as_strings(f[f"{ds.key}_metadata"][:, cols.index(column)])
        elif column in f and f[column].shape[:1] == (ds.n_total,):
            values = np.asarray(f[column][:]).astype(str)
        else:
            raise InputError(
                f"{ds.path}: no label column {column!r} in {ds.key}_metadata (columns: {cols}) "
                f"and no dataset of that name with one value per row; set label_column to one of them"
            )
    finally:
        ds._h5.close()
    if ds.indices is not None:
        values = values[ds.indices]
    names, labels = np.unique(values, return_inverse=True)
    return labels.astype(np.int64), [str(n) for n in names]


# --------------------------------------------------------------------------- the contrastive trainer's data
#: the contrastive trainer's logger: its messages about its data keep the name they always had
_trainer_log = logging.getLogger("nenya.train.contrastive")


def loader_workers(ds: ArrayDataset, num_workers: Any) -> int:
    """Reader processes for ``ds``: none for data in memory, else ``num_workers`` (at most the CPUs but one)."""
    return 0 if ds.in_memory else min(int(num_workers), max((os.cpu_count() or 1) - 1, 0))


def data_file(opt: Params) -> str:
    """``<data_folder>/<images_file>`` (either may be a URL), or ``images_file`` alone."""
    images = getattr(opt, "images_file", None)
    if not images:
        raise NenyaError("the opts name no training data: set images_file (and data_folder) to a preproc .h5 file")
    folder = getattr(opt, "data_folder", None)
    prefix, images = ("tfrecord:", str(images)[9:]) if str(images).startswith("tfrecord:") else ("", str(images))
    if folder and not os.path.isabs(images) and not storage.is_remote(images):
        return prefix + storage.join(folder, images)
    return prefix + images


def epoch_loader(
    ds: ArrayDataset,
    batch_size: int,
    *,
    shuffle: bool,
    epoch: int,
    seed: int,
    ranks: Ranks,
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """One epoch's batches of ``ds`` for this rank: shuffled by ``seed`` and ``epoch`` (a
    DistributedSampler over several ranks) or in order; the last partial batch of a shuffled
    dataset of at least two batches per rank is dropped."""
    sampler: Any
    if ranks.distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, num_replicas=ranks.world, rank=ranks.rank, shuffle=shuffle, seed=seed, drop_last=shuffle
        )
        sampler.set_epoch(epoch)
    elif shuffle:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    else:
        sampler = SequentialSampler(ds)
    workers = loader_workers(ds, num_workers)
    drop_last = shuffle and len(ds) // max(ranks.world, 1) >= 2 * batch_size
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        collate_fn=collate_batch,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def per_rank(batch_size: Any, ranks: Ranks) -> int:
    """Each rank's share of a global batch size (at least 1)."""
    return max(1, int(batch_size) // ranks.world)


def _open_tfrecords(opt: Params, path: str) -> tuple[ArrayDataset, ArrayDataset | None]:
    """TFRecord training data (``feature`` and ``shape`` from the opts): every record trains; no
    validation partition (the health metrics then use a fixed sample of the training records)."""
    if opt.ssl_method == "SupCon":
        raise InputError(f"SupCon reads its labels from a preproc HDF5 file's metadata; {path} is TFRecord data")
    records = RecordOptions(feature=opt.get("feature"), shape=opt.get("shape"))
    train_ds = open_dataset(path, in_memory=opt.get("data_in_memory", "auto"), records=records)
    _trainer_log.warning("%s: TFRecord data has no validation partition: no validation loss", path)
    return train_ds, None


def open_partitions(opt: Params) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The training and validation partitions of a contrastive run's data (:func:`data_file`); the
    validation one is None when the file has none (or the data is TFRecord), and SupCon's labels
    are attached."""
    path = data_file(opt)
    if is_tfrecord_spec(path):
        return _open_tfrecords(opt, path)
    local = storage.fetch(path)
    if not os.path.exists(local):
        raise InputError(f"training data not found: {path} (from data_folder / images_file in the opts)")
    in_memory = opt.get("data_in_memory", "auto")
    keys = _partition_names(local)
    train_key, valid_key = opt.train_key, opt.valid_key
    if train_key not in keys:
        if valid_key in keys:
            _trainer_log.warning(
                "%s has no %r partition: training on %r (and validating on it too)", path, train_key, valid_key
            )
            train_key = valid_key
        else:
            raise InputError(
                f"{path} has neither {train_key!r} nor {valid_key!r}; it holds {keys}. Set train_key "
                "and valid_key in the opts"
            )
    train_ds = open_dataset(local, train_key, in_memory=in_memory)
    valid_ds = open_dataset(local, valid_key, in_memory=in_memory) if valid_key in keys else None
    if valid_ds is None:
        _trainer_log.warning("%s has no %r partition: no validation loss", path, valid_key)
    if opt.ssl_method == "SupCon":
        _attach_labels(opt, train_ds, valid_ds)
    return train_ds, valid_ds


def _attach_labels(opt: Params, *datasets: ArrayDataset | None) -> None:
    """SupCon: give each dataset the integer classes of ``opt.label_column``."""
    column = str(opt.label_column)  # set: prepare_opt refuses SupCon without it
    for ds in datasets:
        if ds is not None:
            labels, names = load_labels(ds, column)
            ds.labels = torch.from_numpy(labels)
            _trainer_log.info("SupCon labels from %r: %d classes (%s)", column, len(names), ", ".join(names[:8]))


def _partition_names(local: str) -> list[str]:
    from nenya.sources.h5files import open_checked

    with open_checked(local) as f:
        return sorted(k for k in f.keys() if not k.endswith("_metadata"))
