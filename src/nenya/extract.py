"""Extraction jobs: Nenya preproc files -> latents files (skipping finished ones), and image
collections (folders, path tables) -> one output, resumed by id.

Sources, sinks and engines are chosen from their registries (:data:`nenya.sources.sources`,
:data:`nenya.sinks.sinks`, :data:`nenya.engines.engines`); nothing here lists formats or kinds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace

from nenya.encoders.base import Encoder
from nenya.engines import Engine, default_engine
from nenya.engines.runner import RunOptions, RunSummary, write_context
from nenya.pipeline import storage
from nenya.pipeline.registry import split_spec
from nenya.preprocess import device_decode_unavailable
from nenya.sinks import Sink, WriteContext, sinks
from nenya.sinks.status import STATUS_SUFFIX, read_status
from nenya.sources import GridOptions, RecordOptions, Source, SourceOptions, sources
from nenya.sources.hdf5 import DEFAULT_PARTITIONS, HDF5PreprocSource

log = logging.getLogger(__name__)

#: Batches per partition that a debug run reads.
DEBUG_BATCHES = 3


def extract_preproc(
    files: Sequence[str],
    encoder: Encoder,
    output: str,
    *,
    fmt: str = "h5",
    partitions: Sequence[str] = DEFAULT_PARTITIONS,
    clobber: bool = False,
    debug: bool = False,
    options: RunOptions = RunOptions(),
    engine: Engine | None = None,
) -> RunSummary:
    """Extract every partition of each preproc file into ``output`` (folder or URL).

    Files whose output already exists are skipped unless ``clobber``; a debug run reads
    only a few batches per partition and names its outputs ``*_latents_debug.*``. ``engine``
    (:mod:`nenya.engines`) decides where shards are encoded (default: this process).
    """
    files = storage.expand(list(files))
    limit = DEBUG_BATCHES * options.batch_size if debug else None
    sink = sinks.get(fmt)(output, overwrite=clobber, suffix="_debug" if debug else "")
    if debug:
        log.warning("debug: only the first %d items of each partition, written as *_latents_debug%s", limit, sink.ext)
    todo = _not_done(files, HDF5PreprocSource, sink, output, clobber=clobber, context=write_context(encoder))
    if not todo:
        sink.tidy()
        return RunSummary()
    source = HDF5PreprocSource(todo, partitions=partitions, limit=limit)
    try:
        return (engine or default_engine()).run(source, encoder, sink, options)
    finally:
        source.close()


def _not_done(
    files: list[str], kind: type[Source], sink: Sink, output: str, *, clobber: bool, context: WriteContext
) -> list[str]:
    """The ``files`` whose output in ``output`` is not finished (all of them with ``clobber``): each
    output's name is the sink's name for the stem the source ``kind`` proposes for that file. An
    existing output made by another model than ``context``'s is an error, not a finished one."""
    existing = set(storage.listdir_names(output))
    unfinished = sink.unfinished()  # killed while publishing: finish them again
    todo = []
    for f in files:
        name = sink.output_name_for(kind.output_stem(f))
        if name in existing and not clobber:
            sink.check_existing(name, context)
            if name not in unfinished:
                log.info("skipping %s: %s exists in %s (--clobber redoes it; clobber=True in Python)", f, name, output)
                continue
        todo.append(f)
    return todo


def split_output(output: str, fmt: str | None = None) -> tuple[str, str, str]:
    """``vectors.parquet`` -> (folder, file name, format), the format told by the extension among
    the sinks that hold a collection in one file (``vectors.lance`` names a dataset folder); any other
    folder (trailing ``/`` or an existing directory) gets ``vectors.<ext>`` inside it (Parquet unless
    ``fmt`` says otherwise)."""
    by_ext = {cls.ext: name for name in sinks.names() if (cls := sinks.get(name)).collections}
    if fmt is not None and fmt not in by_ext.values():
        raise ValueError(f"image collections are written as {' or '.join(sorted(by_ext.values()))}, not {fmt!r}")
    out = str(output)
    named = os.path.splitext(out.rstrip("/"))[1].lower() in by_ext  # vectors.lance is a dataset folder, not a parent
    if not named and (out.endswith("/") or (not storage.is_remote(out) and os.path.isdir(storage.local_path(out)))):
        fmt = fmt or "parquet"
        return out.rstrip("/") or "/", storage.safe_name("vectors" + sinks.get(fmt).ext), fmt
    folder, _, name = out.rstrip("/").rpartition("/")
    if not storage.is_remote(out):
        folder, name = os.path.split(os.path.abspath(storage.local_path(out)))
    fmt = fmt or by_ext.get(os.path.splitext(name)[1].lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the output format of {out!r}; name it "
            f"{' or '.join('*' + e for e in sorted(by_ext))}, or give --format"
        )
    return folder or ".", storage.safe_name(name), fmt


def open_collection(spec: str, options: SourceOptions) -> Source:
    """A source from a spec ``KIND:WHERE`` of the source registry (``images:FOLDER``, ``table:FILE``, ...)."""
    kind, where = split_spec(spec)
    if kind not in sources or not hasattr(sources.get(kind), "from_spec"):
        usable = [n for n in sources.names() if hasattr(sources.get(n), "from_spec")]
        raise ValueError(
            f"unknown source {spec!r}; use one of {', '.join(k + ':...' for k in usable)} "
            "(images:FOLDER, table:FILE.csv|.parquet), or give Nenya preproc .h5 files as arguments"
        )
    return sources.get(kind).from_spec(where, options)


def extract_collection(
    spec: str,
    encoder: Encoder,
    output: str,
    *,
    fmt: str | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    options: RunOptions = RunOptions(),
    source_options: SourceOptions | None = None,
    engine: Engine | None = None,
    path_column: str | None = None,
    id_column: str | None = None,
    columns: Sequence[str] | None = None,
    max_pixels: int | None = None,
    decode: str | None = None,
    records: RecordOptions | None = None,
    grid: GridOptions | None = None,
) -> RunSummary:
    """Encode an image folder or path table (any ``--source`` kind) into one output file.

    When the output exists, only ids it does not account for are encoded and added after its
    rows (resume by id, owned by the sink: a folder that grew gets only its new images);
    ``overwrite`` starts over. ``engine`` (:mod:`nenya.engines`) decides where shards are encoded
    (default: this process).

    ``source_options`` (:class:`~nenya.sources.SourceOptions`) say how the source reads: a path
    table's columns, the pixel limit, where a record source finds the image (``records``), how a
    gridded source cuts its field (``grid``), and ``jpeg_on_device``: decode JPEGs on the encoder's
    CUDA device (:mod:`nenya.preprocess.device`); where that cannot run (no CUDA device, no image
    operators in torchvision, an interpolation without a tensor equivalent, the Ray engine) it warns
    once and decodes on the CPU. Their ``transform`` and ``skip_ids`` are set here, from the encoder
    and the existing output. The same options may instead be given one by one, as keywords
    (``path_column``, ``id_column``, ``columns``, ``max_pixels``, ``records``, ``grid``, and
    ``decode="gpu"`` for ``jpeg_on_device``), but not together with ``source_options``.

    Example:
        >>> enc = load_encoder("timm:efficientnet_b0", options=EncoderOptions(layer=4, pool="none")).to("cpu")
        >>> extract_collection("images:photos/", enc, "tiles.parquet").items
        >>> extract_collection("table:photos.csv", enc, "v.parquet", source_options=SourceOptions(id_column="uid"))
    """
    given = _source_options(
        source_options,
        path_column=path_column,
        id_column=id_column,
        columns=columns,
        max_pixels=max_pixels,
        decode=decode,
        records=records,
        grid=grid,
    )
    folder, name, fmt = split_output(output, fmt)
    engine = engine or default_engine()
    sink = sinks.get(fmt)(folder, overwrite=overwrite, name=name, **({"dtype": dtype} if dtype != "float32" else {}))
    if not overwrite:  # whether or not anything is new: another model's output is never this run's
        sink.check_existing(name, write_context(encoder))
    skip = sink.resume_ids()
    source = open_collection(
        spec,
        replace(
            given,
            transform=encoder.preprocess.image,
            skip_ids=frozenset(skip),
            jpeg_on_device=given.jpeg_on_device and _device_decodes(encoder, engine),
        ),
    )
    if skip:
        dest = storage.join(folder, name)
        log.info("%s exists with %s: encoding only new ones", dest, _accounted_for(dest, len(skip)))
    try:
        if hasattr(source, "__len__") and len(source) == 0:  # everything is in the output already
            sink.tidy()
            return RunSummary()
        return engine.run(source, encoder, sink, options)
    finally:
        source.close()


def _accounted_for(dest: str, ids: int) -> str:
    """What the ``ids`` an existing output accounts for are: items with vectors, and items skipped
    earlier (in its status table, with their reasons, but not in its rows)."""
    skipped = sum(status != "ok" for _, status in read_status(dest + STATUS_SUFFIX))
    text = f"vectors of {ids - skipped} item{'s' * (ids - skipped != 1)}"
    return text + (f" and {skipped} skipped (see its {STATUS_SUFFIX})" if skipped else "")


def _source_options(given: SourceOptions | None, **one_by_one) -> SourceOptions:
    """``source_options``, or the same built from the keywords older callers give one by one."""
    passed = {k: v for k, v in one_by_one.items() if v is not None}
    if given is not None:
        if passed:
            raise TypeError(
                f"extract_collection() got source_options and {', '.join(passed)}: give either "
                f"source_options=SourceOptions(...) or the keywords, not both"
            )
        return given
    decode = passed.pop("decode", "cpu")
    if decode not in ("cpu", "gpu"):
        raise ValueError(f"decode must be 'cpu' or 'gpu', got {decode!r}")
    if "columns" in passed:
        passed["columns"] = tuple(passed["columns"])
    return SourceOptions(jpeg_on_device=decode == "gpu", **passed)


def _device_decodes(encoder: Encoder, engine: Engine) -> bool:
    """Whether the device can decode the JPEGs readers leave it (``--decode gpu``); warns when not."""
    why: str | None
    if not engine.decodes_on_device:
        why = f"the {type(engine).__name__} decodes in its workers' reader threads"
    else:
        why = device_decode_unavailable(encoder.device, encoder.preprocess.image)
    if why:
        log.warning("--decode gpu: %s; decoding JPEGs on the CPU", why)
        return False
    return True
