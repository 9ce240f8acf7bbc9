"""Nenya's documented latent-extraction API, as a thin face over nenya's runner.

The names and signatures are Nenya's; the defects listed in the formats doc are fixed:
files are opened lazily in each worker, rows are read in slabs, ``calc_latent`` needs no
``no_grad`` from the caller, ``debug`` really shortens a run, latents are streamed to disk,
and ``main`` never deletes the user's input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nenya.encoders.base import Encoder
from nenya.encoders.named import find_weights, latents_dir, resolve_opts
from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions, run
from nenya.extract import DEBUG_BATCHES, extract_preproc
from nenya.params import Params
from nenya.pipeline import storage
from nenya.pipeline.items import Shard
from nenya.sinks.memory import ArraySink
from nenya.sources.h5files import open_checked
from nenya.sources.hdf5 import HDF5PreprocSource, latents_name

log = logging.getLogger(__name__)

__all__ = ["HDF5RGBDataset", "build_loader", "calc_latent", "prep", "model_latents_extract", "main"]


class HDF5RGBDataset(Dataset):
    """One partition of a preproc file as a torch ``Dataset`` of (image, metadata).

    Images come out as (nchannels, H, W) float32: the cutout repeated to 3 channels by default,
    as Nenya's production models expect. Rows are read by :class:`~nenya.sources.hdf5.HDF5PreprocSource`
    (the reader extraction uses), which opens the file lazily in each process; ``__getitems__``
    lets a DataLoader read a whole batch as one contiguous slab.

    Args:
        file_path: a local preproc HDF5 file.
        partition: ``"valid"`` or ``"train"`` (any dataset name).
        allowed_indices: rows to expose, in increasing order (default: all).
        nchannels: channels to repeat each cutout to (1 keeps it as is).

    Raises:
        KeyError: the file has no such partition.
    """

    def __init__(
        self,
        file_path: str,
        partition: str,
        allowed_indices: Sequence[int] | np.ndarray | None = None,
        *,
        nchannels: int = 3,
    ) -> None:
        self.file_path = str(file_path)
        self.partition = partition
        self.meta_dset = f"{partition}_metadata"
        self.nchannels = nchannels
        with open_checked(self.file_path) as f:
            if partition not in f:
                raise KeyError(f"{file_path} has no partition {partition!r}; it holds {sorted(f.keys())}")
        # Nenya's dataset gives the metadata as the file stores it: text
        self._source = HDF5PreprocSource([self.file_path], partitions=(partition,), typed_metadata=False)
        # one shard per partition: only the sizes and metadata columns of the plan are wanted here
        group = self._source.plan(shard_size=2**62).groups[0]
        self._n = group.partitions[partition]
        self._columns = list(group.metadata_columns.get(partition, []))
        self.allowed_indices = None if allowed_indices is None else np.asarray(allowed_indices, dtype=np.int64)

    def __len__(self) -> int:
        return self._n if self.allowed_indices is None else len(self.allowed_indices)

    def _rows(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return idx if self.allowed_indices is None else self.allowed_indices[idx]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[np.ndarray, dict[str, str]]]:
        rows = self._rows(indices)
        if len(rows) == 0:
            return []
        uniq, inverse = np.unique(rows, return_inverse=True)
        if uniq[0] < 0 or uniq[-1] >= self._n:
            raise IndexError(
                f"row {int(uniq[0] if uniq[0] < 0 else uniq[-1])} is outside {self.file_path}:"
                f"{self.partition}, which has {self._n} rows"
            )
        batches = [
            batch
            for start, stop in _spans(uniq)
            for batch in self._source.read(Shard(self.file_path, self.partition, 0, start, stop), stop - start)
        ]
        take = np.searchsorted(np.concatenate([b.rows for b in batches]), uniq)[inverse]
        data = np.concatenate([b.data for b in batches])[take]
        if self.nchannels != data.shape[1]:
            data = np.repeat(data, self.nchannels // data.shape[1], axis=1)
        metas: list[dict[str, str]] = [{} for _ in rows]
        if self._columns:
            columns = [np.concatenate([b.metadata[c] for b in batches])[take].tolist() for c in self._columns]
            metas = [dict(zip(self._columns, values)) for values in zip(*columns)]
        return list(zip(data, metas))

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, str]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.__getitems__([index])[0]


def _spans(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` spans covering increasing unique ``rows``: one slab when they are dense (at
    least a quarter of the span, as :func:`~nenya.sources.h5files.read_rows` reads), else one per run."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    if hi - lo <= 4 * len(rows):
        return [(lo, hi)]
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    return [(int(r[0]), int(r[-1]) + 1) for r in runs]


def build_loader(
    data_file: str,
    dataset: str,
    batch_size: int = 1,
    num_workers: int = 1,
    allowed_indices: Sequence[int] | np.ndarray | None = None,
    *,
    nchannels: int = 3,
) -> tuple[HDF5RGBDataset, DataLoader]:
    """A DataLoader over one partition (``dataset``) of a preproc file, in row order.

    Returns:
        ``(dset, loader)``; each batch is ``(images (B, nchannels, H, W), metadata dict of lists)``.
    """
    dset = HDF5RGBDataset(data_file, partition=dataset, allowed_indices=allowed_indices, nchannels=nchannels)
    loader = DataLoader(
        dset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
    )
    return dset, loader


def calc_latent(model: torch.nn.Module, image_tensor: torch.Tensor | np.ndarray, using_gpu: bool) -> np.ndarray:
    """Latents of a batch of images as a float32 numpy array (eval mode, no gradients)."""
    model.eval()
    x = torch.as_tensor(image_tensor, dtype=torch.float32)
    if using_gpu:
        x = x.cuda(non_blocking=True)
    with torch.inference_mode():
        out = model(x)
    return out.float().cpu().numpy()


def prep(opt: Params) -> tuple[str, list[str]]:
    """Find the model and the latents files already made for it.

    The model is ``last.pth`` in the working folder when present (as Nenya did), else a named
    model's weights (see :mod:`nenya.io`), else ``<s3_outdir>/<model_folder>/last.pth``, fetched
    to the cache when remote (:func:`nenya.encoders.named.find_weights`).

    Returns:
        ``(model_file, existing)``: a local model path and the base names of the ``.h5`` files
        in ``<s3_outdir>/<latents_folder>``.

    Raises:
        WeightsNotFoundError: no weights in any of those places.
    """
    model_file = find_weights(opt)
    existing = [n for n in storage.listdir_names(latents_dir(opt)) if n.endswith(".h5")]
    return model_file, existing


def _run_options(opt: Params, *, progress: bool = True, description: str = "extract") -> RunOptions:
    cpus = os.cpu_count() or 1
    workers = int(opt.get("num_workers", 1))
    return RunOptions(
        batch_size=int(opt.get("batch_size_valid", 128)),
        num_workers=min(workers, max(cpus - 1, 0)),
        device="cpu" if opt.get("cuda_use", True) is False else "auto",
        precision=opt.get("precision", "fp32"),
        progress=progress,
        description=description,
    )


def model_latents_extract(
    opt: Params,
    data_file: str,
    model_path: str,
    remove_module: bool = True,
    in_loader: DataLoader | None = None,
    partitions: Sequence[str] = ("train", "valid"),
    allowed_indices: Sequence[int] | np.ndarray | None = None,
    debug: bool = False,
) -> dict[str, np.ndarray]:
    """Latents of every requested partition present in ``data_file``.

    Args:
        opt: options (``ssl_model``, ``feat_dim``, ``batch_size_valid``, ``num_workers``, ...).
        data_file: a preproc HDF5 file (local path or URL).
        model_path: a checkpoint (``last.pth`` or ``.safetensors``).
        remove_module: strip ``module.`` from parameter names (DataParallel checkpoints).
        in_loader: a DataLoader of (images, metadata) batches to encode instead of the file.
        partitions: partitions to extract, where present.
        allowed_indices: rows to extract (the same for each partition).
        debug: extract only a few batches per partition, and say so.

    Returns:
        ``{partition: (N, feat_dim) float32}``, rows in input order.
    """
    opt = resolve_opts(opt)
    options = _run_options(opt)
    encoder = SupConEncoder.from_checkpoint(model_path, opt, remove_module=remove_module).to(
        options.device, options.precision
    )
    if in_loader is not None:
        return _extract_loader(in_loader, encoder, data_file, partitions, debug)
    limit = DEBUG_BATCHES * options.batch_size if debug else None
    if debug:
        log.warning("debug=True: extracting only the first %d cutouts of each partition", limit)
    source = HDF5PreprocSource([data_file], partitions=partitions, allowed_indices=allowed_indices, limit=limit)
    sink = ArraySink()
    try:
        run(source, encoder, sink, options)
    finally:
        source.close()
    return sink.arrays[str(data_file)]


def _extract_loader(
    loader: DataLoader, encoder: Encoder, data_file: str | None, partitions: Sequence[str], debug: bool
) -> dict[str, np.ndarray]:
    out = []
    for i, item in enumerate(loader):
        if debug and i >= DEBUG_BATCHES:
            log.warning("debug=True: stopped after %d batches", DEBUG_BATCHES)
            break
        images = item[0] if isinstance(item, (tuple, list)) else item
        out.append(encoder.encode(torch.as_tensor(images)).cpu().numpy())
    latents = np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)
    present = list(partitions)[:1]
    if data_file is not None and os.path.exists(str(data_file)):
        with open_checked(str(data_file)) as f:
            present = [p for p in partitions if p in f] or present
    return {p: latents for p in present}


def main(
    opt_path: str | os.PathLike, pp_files: Sequence[str] | str, clobber: bool = False, debug: bool = False
) -> list[str]:
    """Write a Nenya latents file for each preproc file.

    Each ``X_preproc_Y.h5`` (local path or URL) becomes ``X_latents_Y.h5`` under
    ``<s3_outdir>/<latents_folder>/`` (a local folder, or uploaded when a URL). Files whose
    latents already exist are skipped unless ``clobber``. Remote inputs are fetched to a
    temporary folder that is removed afterwards; the user's own files are never deleted.

    Args:
        opt_path: an opts JSON, or a named model (``v4``, ``v5``, ``viirs_v1``).
        pp_files: preproc files or URLs.
        clobber: recompute and replace existing latents files.
        debug: extract only a few batches per partition into ``..._latents_debug.h5``.

    Returns:
        The locations of the latents files written.
    """
    opt = resolve_opts(opt_path)
    files = [str(pp_files)] if isinstance(pp_files, (str, os.PathLike)) else [str(p) for p in pp_files]
    model_file, existing = prep(opt)
    out_dir = latents_dir(opt)
    todo = []
    for f in files:
        if latents_name(f) in existing and not clobber:
            log.info("skipping %s: %s exists (clobber=True to redo it)", f, latents_name(f))
        else:
            todo.append(f)
    if not todo:
        return []
    options = _run_options(opt, description="latents")
    encoder = SupConEncoder.from_checkpoint(model_file, opt).to(options.device, options.precision)
    summary = extract_preproc(todo, encoder, out_dir, clobber=clobber, debug=debug, options=options)
    log.info("%s", summary.line())
    return summary.outputs
