"""Extraction jobs: Nenya preproc files -> latents files (skipping finished ones), and image
collections (folders, path tables) -> one Parquet or npy output, resumed by id."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from nenya.encoders.base import Encoder
from nenya.pipeline import storage
from nenya.pipeline.registry import sinks
from nenya.pipeline.runner import RunOptions, RunSummary, run
from nenya.sources.hdf5 import DEFAULT_PARTITIONS, HDF5PreprocSource, latents_name

log = logging.getLogger(__name__)

#: Batches per partition that a debug run reads.
DEBUG_BATCHES = 3
FORMATS = {"h5": ".h5", "parquet": ".parquet", "npy": ".npy"}


def extract_preproc(files: Sequence[str], encoder: Encoder, output: str, *, fmt: str = "h5",
                    partitions: Sequence[str] = DEFAULT_PARTITIONS, clobber: bool = False, debug: bool = False,
                    options: RunOptions = RunOptions(), engine=None) -> RunSummary:
    """Extract every partition of each preproc file into ``output`` (folder or URL).

    Files whose output already exists are skipped unless ``clobber``; a debug run reads
    only a few batches per partition and names its outputs ``*_latents_debug.*``. ``engine``
    (:mod:`nenya.engines`) decides where shards are encoded (default: this process).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    files = storage.expand(list(files))
    ext = ("_debug" if debug else "") + FORMATS[fmt]
    limit = DEBUG_BATCHES * options.batch_size if debug else None
    if debug:
        log.warning("debug: only the first %d items of each partition, written as *_latents_debug%s", limit, FORMATS[fmt])
    sink = sinks.get(fmt)(output, overwrite=clobber)
    existing = set(storage.listdir_names(output))
    # an output whose work folder is still there was killed while publishing: finish it again
    unfinished = set(os.listdir(sink.work)) if os.path.isdir(sink.work) else set()
    todo = []
    for f in files:
        name = latents_name(f, ext)
        if name in existing and name not in unfinished and not clobber:
            log.info("skipping %s: %s exists in %s (use clobber to redo it)", f, latents_name(f, ext), output)
        else:
            todo.append(f)
    if not todo:
        return RunSummary()
    source = HDF5PreprocSource(todo, partitions=partitions, limit=limit, output_ext=ext)
    try:
        return (engine.run if engine is not None else run)(source, encoder, sink, options)
    finally:
        source.close()



#: Output formats of image collections, by the output's extension.
COLLECTION_FORMATS = {".parquet": "parquet", ".npy": "npy"}


def split_output(output: str, fmt: str | None = None) -> tuple[str, str, str]:
    """``vectors.parquet`` -> (folder, file name, format); a folder (trailing ``/`` or an existing
    directory) gets ``vectors.<ext>`` inside it."""
    out = str(output)
    is_dir = out.endswith("/") or (not storage.is_remote(out) and os.path.isdir(storage.local_path(out)))
    if is_dir:
        fmt = fmt or "parquet"
        folder, name = out.rstrip("/") or "/", "vectors" + (".npy" if fmt == "npy" else ".parquet")
    else:
        folder, _, name = out.rstrip("/").rpartition("/")
        if not storage.is_remote(out):
            folder, name = os.path.split(os.path.abspath(storage.local_path(out)))
        ext = os.path.splitext(name)[1].lower()
        fmt = fmt or COLLECTION_FORMATS.get(ext)
        if fmt is None:
            raise ValueError(f"cannot tell the output format of {out!r}; name it *.parquet or *.npy, or give --format")
        if fmt not in COLLECTION_FORMATS.values():
            raise ValueError(f"image collections are written as parquet or npy, not {fmt!r}")
    return folder or ".", storage.safe_name(name), fmt


def done_ids(folder: str, name: str) -> set[str]:
    """Ids an existing output already accounts for (its status table; else its ``id`` column)."""
    from nenya.sinks._parts import STATUS_SUFFIX, read_status
    from nenya.sinks.npy import metadata_name

    dest = storage.join(folder, name)
    if not storage.exists(dest):
        return set()
    rows = read_status(dest + STATUS_SUFFIX)
    if rows:
        return {i for i, _ in rows}
    import pyarrow.parquet as pq

    table = metadata_name(dest) if name.endswith(".npy") else dest
    return set(pq.read_table(storage.fetch(table), columns=["id"]).column("id").to_pylist())


def open_collection(spec: str, *, transform, output_name: str, skip_ids=(), path_column: str = "path",
                    id_column: str | None = None, columns: Sequence[str] | None = None,
                    max_pixels: int | None = None, jpeg_on_device: bool = False):
    """A source from a spec: ``images:FOLDER`` or ``table:FILE.csv|.parquet`` (local or URL)."""
    from nenya.pipeline.registry import sources, split_spec

    kind, where = split_spec(spec)
    if kind not in ("images", "table"):
        raise ValueError(f"unknown source {spec!r}; use images:FOLDER or table:FILE (CSV or Parquet), "
                         "or give Nenya preproc .h5 files as arguments")
    cls = sources.get(kind)
    extra = {"jpeg_on_device": jpeg_on_device} if jpeg_on_device else {}
    if max_pixels is not None:
        extra["max_pixels"] = max_pixels
    if kind == "images":
        return cls(where, transform=transform, output_name=output_name, skip_ids=skip_ids, **extra)
    return cls(where, transform=transform, output_name=output_name, skip_ids=skip_ids, path_column=path_column,
               id_column=id_column, columns=columns, **extra)


def extract_collection(spec: str, encoder: Encoder, output: str, *, fmt: str | None = None, overwrite: bool = False,
                       dtype: str = "float32", options: RunOptions = RunOptions(), path_column: str = "path",
                       id_column: str | None = None, columns: Sequence[str] | None = None,
                       max_pixels: int | None = None, engine=None, decode: str = "cpu") -> RunSummary:
    """Encode an image folder or path table into one Parquet (or ``.npy`` + Parquet) output.

    When the output exists, only ids it does not account for are encoded and added after its
    rows (resume by id: a folder that grew gets only its new images); ``overwrite`` starts over.
    ``engine`` (:mod:`nenya.engines`) decides where shards are encoded (default: this process).
    ``decode="gpu"`` decodes JPEGs on the encoder's CUDA device (:mod:`nenya.preprocess.device`);
    where that cannot run (no CUDA device, no image operators in torchvision, an interpolation
    without a tensor equivalent, the Ray engine) it warns once and decodes on the CPU.

    Example:
        >>> enc = load_encoder("timm:efficientnet_b0", options=EncoderOptions(layer=4, pool="none")).to("cpu")
        >>> extract_collection("images:photos/", enc, "tiles.parquet").items
    """
    folder, name, fmt = split_output(output, fmt)
    transform = encoder.preprocess.image
    if transform is None:
        raise ValueError(f"model {encoder.name} has no image preprocessing (it takes fixed-size arrays); "
                         "use a timm:, torchvision: or torchscript: model, or give --size")
    skip = set() if overwrite else done_ids(folder, name)
    source = open_collection(spec, transform=transform, output_name=name, skip_ids=skip,
                             path_column=path_column, id_column=id_column, columns=columns, max_pixels=max_pixels,
                             jpeg_on_device=_jpeg_on_device(decode, encoder, engine))
    if skip:
        log.info("%s exists with %d ids: encoding only new ones", storage.join(folder, name), len(skip))
    if len(source) == 0:
        return RunSummary()
    sink = sinks.get(fmt)(folder, overwrite=overwrite, append=bool(skip), dtype=dtype)
    try:
        return (engine.run if engine is not None else run)(source, encoder, sink, options)
    finally:
        source.close()


def _jpeg_on_device(decode: str, encoder: Encoder, engine) -> bool:
    """Whether readers leave JPEGs for the device to decode (``--decode gpu`` where it can run)."""
    if decode not in ("cpu", "gpu"):
        raise ValueError(f"decode must be 'cpu' or 'gpu', got {decode!r}")
    if decode == "cpu":
        return False
    from nenya.preprocess.device import unavailable

    if engine is not None and not getattr(engine, "decodes_on_device", True):
        why = f"the {type(engine).__name__} decodes in its workers' reader threads"
    else:
        why = unavailable(encoder.device, encoder.preprocess.image)
    if why:
        log.warning("--decode gpu: %s; decoding JPEGs on the CPU", why)
        return False
    return True
