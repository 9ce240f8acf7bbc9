"""The Nenya extraction job: preproc files + an encoder -> latents files, skipping finished ones."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nenya.encoders.base import Encoder
from nenya.pipeline import storage
from nenya.pipeline.registry import sinks
from nenya.pipeline.runner import RunOptions, RunSummary, run
from nenya.sources.hdf5 import DEFAULT_PARTITIONS, HDF5PreprocSource, latents_name

log = logging.getLogger(__name__)

#: Batches per partition that a debug run reads.
DEBUG_BATCHES = 3
FORMATS = {"h5": ".h5", "parquet": ".parquet"}


def extract_preproc(files: Sequence[str], encoder: Encoder, output: str, *, fmt: str = "h5",
                    partitions: Sequence[str] = DEFAULT_PARTITIONS, clobber: bool = False, debug: bool = False,
                    options: RunOptions = RunOptions()) -> RunSummary:
    """Extract every partition of each preproc file into ``output`` (folder or URL).

    Files whose output already exists are skipped unless ``clobber``; a debug run reads
    only a few batches per partition and names its outputs ``*_latents_debug.*``.
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
    todo = []
    for f in files:
        if latents_name(f, ext) in existing and not clobber:
            log.info("skipping %s: %s exists in %s (use clobber to redo it)", f, latents_name(f, ext), output)
        else:
            todo.append(f)
    if not todo:
        return RunSummary()
    source = HDF5PreprocSource(todo, partitions=partitions, limit=limit, output_ext=ext)
    try:
        return run(source, encoder, sink, options)
    finally:
        source.close()

