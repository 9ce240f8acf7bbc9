"""Sources: list work cheaply (``plan``) and read one shard into batches (``read``).

To add an input kind, write a module in this package with a :class:`Source` subclass whose
``from_spec(where, options)`` builds it, and register it below (or through the ``nenya.sources``
entry-point group): ``nenya extract --source KIND:WHERE`` and ``nenya models`` find it there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nenya.pipeline.items import Batch, Group, Plan, Shard
from nenya.pipeline.registry import Registry

if TYPE_CHECKING:
    from nenya.preprocess import ImageTransform


@dataclass(frozen=True)
class RecordOptions:
    """How a record source (``tfrecord:``) finds the image: ``feature``, its ``shape`` (``H,W[,C]`` or
    an int feature's name) and the ``id_feature`` (default ids: ``<file>/<record>``)."""

    feature: str | None = None
    shape: str | None = None
    id_feature: str | None = None


@dataclass(frozen=True)
class GridOptions:
    """How a gridded source (``xarray:``) cuts a field: the variable ``var``, the ``sample_dim``, the
    ``tile`` side and ``stride`` in pixels (None: whole fields) and ``max_nan_fraction`` (tiles with
    more NaN pixels are skipped; below it NaNs are filled with the tile's valid mean)."""

    var: str | None = None
    sample_dim: str | None = None
    tile: int | None = None
    stride: int | None = None
    max_nan_fraction: float = 0.5


@dataclass(frozen=True)
class SourceOptions:
    """What ``nenya extract --source KIND:WHERE`` passes to every source's ``from_spec``.

    Attributes:
        transform: the encoder's CPU-side image preprocessing (resize and crop), for photo sources.
        skip_ids: ids an existing output already holds (resume by id): not read again.
        path_column, id_column, columns: a path table's columns (path, id, metadata to carry).
        max_pixels: skip images with more pixels (decompression bombs); None: the default.
        jpeg_on_device: leave clean JPEGs for the device to decode (``--decode gpu``); the extraction
            job turns it off, with a warning, where the device or the engine cannot decode them.
        records: where a record source (``tfrecord:``) finds the image and the ids.
        grid: how a gridded source (``xarray:``) cuts its field.
        split, image_column: which split of a Hugging Face dataset (``hf:``) to read (None: ``train``
            or the only one) and its column of images (None: the first ``{bytes, path}`` column).
    """

    transform: ImageTransform | None = None
    skip_ids: frozenset[str] = frozenset()
    path_column: str = "path"
    id_column: str | None = None
    columns: tuple[str, ...] | None = None
    max_pixels: int | None = None
    jpeg_on_device: bool = False
    records: RecordOptions = RecordOptions()
    grid: GridOptions = GridOptions()
    split: str | None = None
    image_column: str | None = None


class Source(ABC):
    """One kind of input. Must pickle cheaply: workers receive it and open files lazily."""

    @abstractmethod
    def plan(self, shard_size: int) -> Plan:
        """List groups and shards without reading pixels."""

    @abstractmethod
    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        """Yield the shard's items in order, ``batch_size`` at a time; the last has ``last=True``."""

    @classmethod
    def output_stem(cls, url: str) -> str:
        """The stem this kind of source proposes for the output of one input ``url`` (that input's group's
        ``name`` in the plan), told from the input's name alone: what a job passes to the sink's
        ``output_name_for`` to see whether an output is done before planning (which may fetch files)."""
        raise NotImplementedError(f"{cls.__name__} does not name one output per input")

    def localise(self) -> None:
        """Make this (unpickled) source readable in the process it landed in: a remote worker
        fetches what the planning process fetched from URLs into its own cache. Default: nothing."""

    def close(self) -> None:
        """Release temporary copies and handles (called once by whoever made the source)."""


def collection_plan(key: str, n: int, columns: list[str], fingerprint: str, shard_size: int) -> Plan:
    """The plan of a source that is one collection: one group ``key`` of ``n`` items (output stem
    ``vectors``) with these metadata ``columns``, cut into contiguous shards of ``shard_size``."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    group = Group(key, key, "vectors", {"": n}, {"": list(columns)}, fingerprint)
    shards = [Shard(key, "", i, a, min(n, a + shard_size)) for i, a in enumerate(range(0, n, shard_size))]
    return Plan([group], shards)


class CollectionSource(Source):
    """Base of sources that are one collection listed lazily: subclasses implement ``_list`` (which
    sets ``_ids`` and ``_listed``), ``_columns`` and ``fingerprint``; the length and the plan follow."""

    key: str = ""
    _listed: bool = False
    _ids: list[str]

    def _list(self) -> None:
        raise NotImplementedError

    def _columns(self) -> list[str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def _ensure_listed(self) -> None:
        if not self._listed:
            self._list()

    def __len__(self) -> int:
        self._ensure_listed()
        return len(self._ids)

    def plan(self, shard_size: int) -> Plan:
        self._ensure_listed()
        return collection_plan(self.key, len(self._ids), self._columns(), self.fingerprint(), shard_size)


#: Input kinds by name (``--source NAME:WHERE``; ``h5`` files are given as arguments).
sources = Registry("source")
sources.register("h5", "nenya.sources.hdf5:HDF5PreprocSource", help="Nenya preprocessed HDF5 files of cutouts")
sources.register(
    "images",
    "nenya.sources.images:ImageFolderSource",
    help="a folder of images (recursive; ids are relative paths): images:photos/",
)
sources.register(
    "table",
    "nenya.sources.table:PathTableSource",
    help="a CSV or Parquet table with a path column, an id column and metadata columns: table:images.csv",
)
sources.register("arrays", "nenya.sources.arrays:ArraySource", help="in-memory arrays (Python API only)")
sources.register(
    "tfrecord",
    "nenya.sources.tfrecord:TFRecordSource",
    help="TFRecord files of tf.train.Example (--feature, --shape, --id-feature): tfrecord:radar/*.tfrecord",
    install_hint='pip install "nenya[records]"',
)
sources.register(
    "xarray",
    "nenya.sources.gridded:GriddedSource",
    help="a NetCDF file or Zarr store, cut into tiles (--var, --sample-dim, --tile, --stride, --max-nan-fraction)",
    install_hint='pip install "nenya[gridded]"',
)
sources.register(
    "wds",
    "nenya.sources.webdataset:WebDatasetSource",
    help="WebDataset tar shards (KEY.jpg + KEY.json per sample): wds:shards/{00000..00099}.tar",
)
sources.register(
    "hf",
    "nenya.sources.hf:HFDatasetSource",
    help="a Hugging Face dataset: a save_to_disk folder or Parquet files (--split, --image-column): hf:flowers/",
)

__all__ = ["GridOptions", "RecordOptions", "Source", "SourceOptions", "CollectionSource", "collection_plan", "sources"]
