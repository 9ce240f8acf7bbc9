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

from nenya._errors import WeightsNotFoundError
from nenya.encoders.supcon import SupConEncoder
from nenya.extract import DEBUG_BATCHES, extract_preproc
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage
from nenya.pipeline.runner import RunOptions, run
from nenya.sinks.memory import ArraySink
from nenya.sources.h5files import LazyH5, as_strings, check_images, metadata_columns, read_rows
from nenya.sources.hdf5 import HDF5PreprocSource, latents_name

log = logging.getLogger(__name__)

__all__ = ["HDF5RGBDataset", "build_loader", "calc_latent", "prep", "model_latents_extract", "main"]


class HDF5RGBDataset(Dataset):
    """One partition of a preproc file as a torch ``Dataset`` of (image, metadata).

    Images come out as (nchannels, H, W) float32: the cutout repeated to 3 channels by default,
    as Nenya's production models expect. The file is opened lazily in each process, and
    ``__getitems__`` lets a DataLoader read a whole batch as one contiguous slab.

    Args:
        file_path: a local preproc HDF5 file.
        partition: ``"valid"`` or ``"train"`` (any dataset name).
        allowed_indices: rows to expose, in increasing order (default: all).
        nchannels: channels to repeat each cutout to (1 keeps it as is).
    """

    def __init__(self, file_path: str, partition: str, allowed_indices: Sequence[int] | np.ndarray | None = None,
                 *, nchannels: int = 3) -> None:
        self.file_path = str(file_path)
        self.partition = partition
        self.meta_dset = f"{partition}_metadata"
        self.nchannels = nchannels
        self._h5 = LazyH5(self.file_path)
        f = self._h5.file
        if partition not in f:
            raise KeyError(f"{file_path} has no partition {partition!r}; it holds {sorted(f.keys())}")
        check_images(self.file_path, partition, f[partition])
        self._n = f[partition].shape[0]
        self._columns = metadata_columns(f, partition)
        self.allowed_indices = None if allowed_indices is None else np.asarray(allowed_indices, dtype=np.int64)
        self._h5.close()  # the parent keeps no handle: each worker opens its own

    def __len__(self) -> int:
        return self._n if self.allowed_indices is None else len(self.allowed_indices)

    def _rows(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return idx if self.allowed_indices is None else self.allowed_indices[idx]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[np.ndarray, dict[str, str]]]:
        rows = self._rows(indices)
        order = np.argsort(rows, kind="stable")
        f = self._h5.file
        data = np.empty((len(rows),) + f[self.partition].shape[1:], f[self.partition].dtype)
        data[order] = read_rows(f[self.partition], rows[order])
        if data.ndim == 3:
            data = data[:, None]
        data = data.astype(np.float32, copy=False)
        if self.nchannels != data.shape[1]:
            data = np.repeat(data, self.nchannels // data.shape[1], axis=1)
        metas: list[dict[str, str]] = [{} for _ in rows]
        if self._columns:
            table = np.empty((len(rows), len(self._columns)), dtype=object)
            table[order] = as_strings(read_rows(f[self.meta_dset], rows[order]))
            metas = [dict(zip(self._columns, r)) for r in table]
        return list(zip(data, metas))

    def __getitem__(self, index: int) -> tuple[np.ndarray, dict[str, str]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.__getitems__([index])[0]


def build_loader(data_file: str, dataset: str, batch_size: int = 1, num_workers: int = 1,
                 allowed_indices: Sequence[int] | np.ndarray | None = None, *, nchannels: int = 3
                 ) -> tuple[HDF5RGBDataset, DataLoader]:
    """A DataLoader over one partition (``dataset``) of a preproc file, in row order.

    Returns:
        ``(dset, loader)``; each batch is ``(images (B, nchannels, H, W), metadata dict of lists)``.
    """
    dset = HDF5RGBDataset(data_file, partition=dataset, allowed_indices=allowed_indices, nchannels=nchannels)
    loader = DataLoader(dset, batch_size=batch_size, shuffle=False, drop_last=False,
                        num_workers=num_workers, pin_memory=torch.cuda.is_available())
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


def _opt(opt: Params | str | os.PathLike) -> Params:
    if isinstance(opt, Params):
        return opt
    from nenya.io import NAMED_MODELS, load_opt

    return load_opt(str(opt))[0] if str(opt) in NAMED_MODELS else option_preprocess(Params(opt))


def prep(opt: Params) -> tuple[str, list[str]]:
    """Find the model and the latents files already made for it.

    The model is ``last.pth`` in the working folder when present (as Nenya did), else a named
    model's weights (see :mod:`nenya.io`), else ``<s3_outdir>/<model_folder>/last.pth``, fetched
    to the cache when remote.

    Returns:
        ``(model_file, existing)``: a local model path and the base names of the ``.h5`` files
        in ``<s3_outdir>/<latents_folder>``.
    """
    from nenya.io import named_weights_path

    candidates = ["last.pth"]
    if getattr(opt, "model_root", None) and opt.model_name:
        candidates.append(named_weights_path(opt))
    if opt.model_folder:
        candidates.append(storage.join(opt.s3_outdir or ".", opt.model_folder, "last.pth"))
    model_file = None
    for c in candidates:
        try:
            if storage.exists(c):
                model_file = storage.fetch(c)
                break
        except Exception as e:  # unreachable or unauthorised remote: try the next place
            log.debug("cannot reach %s: %s", c, e)
    if model_file is None:
        raise WeightsNotFoundError(
            f"no model weights found for {opt.model_name}; looked for {', '.join(candidates)}. "
            "Put the model's last.pth in one of these places (or set NENYA_MODEL_DIR, see nenya.io)")
    existing = [n for n in storage.listdir_names(latents_dir(opt)) if n.endswith(".h5")]
    return model_file, existing


def latents_dir(opt: Params) -> str:
    return storage.join(opt.s3_outdir or ".", opt.latents_folder or "latents")


def _run_options(opt: Params, *, progress: bool = True, description: str = "extract") -> RunOptions:
    cpus = os.cpu_count() or 1
    workers = int(opt.get("num_workers", 1))
    return RunOptions(batch_size=int(opt.get("batch_size_valid", 128)), num_workers=min(workers, max(cpus - 1, 0)),
                      device="cpu" if opt.get("cuda_use", True) is False else "auto",
                      precision=opt.get("precision", "fp32"), progress=progress, description=description)


def model_latents_extract(opt: Params, data_file: str, model_path: str, remove_module: bool = True,
                          in_loader: DataLoader | None = None, partitions: Sequence[str] = ("train", "valid"),
                          allowed_indices: Sequence[int] | np.ndarray | None = None, debug: bool = False,
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
    opt = _opt(opt)
    options = _run_options(opt)
    encoder = SupConEncoder.from_checkpoint(model_path, opt, remove_module=remove_module).to(options.device, options.precision)
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


def _extract_loader(loader, encoder, data_file, partitions, debug) -> dict[str, np.ndarray]:
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
        with LazyH5(str(data_file)).file as f:
            present = [p for p in partitions if p in f] or present
    return {p: latents for p in present}


def main(opt_path: str | os.PathLike, pp_files: Sequence[str] | str, clobber: bool = False, debug: bool = False,
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
    opt = _opt(opt_path)
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
