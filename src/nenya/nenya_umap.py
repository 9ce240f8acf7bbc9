"""Nenya's UMAP API: DT bins, UMAPs of table subsets, the UMAP folder, and the UMAP-grid helpers.

Fitted UMAPs are kept as pickles (umap-learn has no other format) in one local folder, the
*UMAP dir*: ``$NENYA_UMAP_DIR``, else ``umap_dir`` in the nenya config file (``$NENYA_CONFIG``,
default ``~/.config/nenya/config.json``), else ``<nenya cache>/umap`` (``~/.cache/nenya/umap``).
Unpickling runs code, so :func:`load` reads only files inside that folder, and only those nenya
wrote (each pickle has a ``.sha256`` companion that must match). Put only UMAPs you made there.

Names follow Nenya: ``<sensor>_Nenya_<root>_<DTkey>_UMAP.pkl`` with its table
``<sensor>_Nenya_<root>_<DTkey>.parquet`` (e.g. ``MODIS_Nenya_96clear_v5_DT1_UMAP.pkl``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nenya._errors import InputError
from nenya.analysis.dtbins import DT_bins
from nenya.analysis.plots import cells_on_grid, grid_umap
from nenya.analysis.umap_files import UMAPFileError, load_umap, save_umap, umap_dir
from nenya.encoders.named import resolve_opts
from nenya.params import Params
from nenya.pipeline import storage

log = logging.getLogger(__name__)

__all__ = [
    "umap_DT",
    "DT_bins",
    "DT_key",
    "DT_interval",
    "umap_dir",
    "umap_paths",
    "umap_prefix",
    "umap_subset",
    "load",
    "save_umap",
    "load_umap",
    "grid_umap",
    "cutouts_on_umap_grid",
    "UMAPFileError",
]

#: Nenya's name for the bins (``defs.umap_DT``): key -> (lower, upper].
umap_DT = DT_bins

#: (sensor, root) of the named models' UMAP files.
NAMED_UMAPS = {"v4": ("MODIS", "96clear_v4"), "v5": ("MODIS", "96clear_v5"), "viirs_v1": ("VIIRS", "98clear_v1")}


def DT_key(DT: float) -> str:
    """The DT bin holding ``DT`` (lower < DT <= upper)."""
    for key, (lo, hi) in DT_bins.items():
        if key != "all" and lo < DT <= hi:
            return key
    raise ValueError(f"DT={DT} is in no DT bin (bins start above 0 K); expected a positive temperature range")


def DT_interval(inp: tuple[float, float] | str | None) -> tuple[float, float]:
    """The (lower, upper] range of a bin key, of Nenya's (DT, dDT) pair (dDT < 0: no upper limit), or all."""
    if inp is None:
        return (0.0, 1e12)
    if isinstance(inp, str):
        if inp not in DT_bins:
            raise ValueError(f"unknown DT bin {inp!r}; expected one of {', '.join(DT_bins)}")
        return DT_bins[inp]
    DT, dDT = inp
    return (DT, DT + 1e12) if dDT < 0 else (DT - dDT, DT + dDT)


def umap_prefix(model_name: str) -> str:
    """``<sensor>_Nenya_<root>`` of a named model, or of an opts JSON (``SST_Nenya_<model_root>``)."""
    if model_name in NAMED_UMAPS:
        sensor, root = NAMED_UMAPS[model_name]
    else:
        opt = Params(model_name)
        sensor = str(opt.get("sensor", "SST"))
        root = str(opt.get("model_root") or Path(model_name).stem)
    return f"{sensor}_Nenya_{root}"


def umap_paths(model_name: str, DT_key: str = "all", folder: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(umap pickle, table)`` paths of a model's UMAP for one DT bin, in the UMAP dir by default."""
    base = Path(folder) if folder is not None else umap_dir()
    stem = f"{umap_prefix(model_name)}_{DT_key}"
    return str(base / f"{stem}_UMAP.pkl"), str(base / f"{stem}.parquet")


def load(model_name: str, DT: float | None = None, use_s3: bool = False) -> tuple[Any, str]:
    """The fitted UMAP for the DT bin of ``DT`` (None: the "all" UMAP) and its table path.

    Args:
        model_name: a named model (``v4``, ``v5``, ``viirs_v1``) or the opts JSON of your own model.
        DT: the image's DT (K); picks the DT bin. When the bin's UMAP is absent, the ``all`` UMAP is
            used if present (with a warning).
        use_s3: not supported: UMAPs are loaded from the local UMAP dir only.

    Returns:
        ``(umap, table_file)``.
    """
    if use_s3:
        raise ValueError(
            "UMAPs are loaded from the local UMAP dir only (see nenya.nenya_umap.umap_dir); download them there first"
        )
    key = "all" if DT is None else DT_key(float(DT))
    pkl, table = umap_paths(model_name, key)
    if not os.path.exists(pkl) and key != "all":
        pkl_all, table_all = umap_paths(model_name, "all")
        if os.path.exists(pkl_all):
            log.warning("no UMAP for %s bin %s in %s; using the 'all' UMAP", model_name, key, umap_dir())
            pkl, table = pkl_all, table_all
    log.info("loading UMAP %s", pkl)
    return load_umap(pkl), table


# -- fitting on a table subset ------------------------------------------------------------------
def _col(tbl: pd.DataFrame, *names: str) -> str:
    for n in names:
        if n in tbl.columns:
            return n
    raise InputError(
        f"the table has none of the columns {', '.join(names)}; columns: {', '.join(map(str, tbl.columns[:20]))}"
    )


def _keep_range(values: pd.Series, rng: Sequence[float]) -> np.ndarray:
    lo, hi = float(rng[0]), float(rng[1])
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    return (v > lo) & (v <= hi)


def _latents_for(pp_file: str, opt: Params | None, latents: str | Mapping[str, str] | None) -> str:
    from nenya.sources.hdf5 import latents_name

    if isinstance(latents, Mapping):
        if pp_file not in latents:
            raise InputError(f"no latents file given for {pp_file}; the latents mapping has {list(latents)[:3]}")
        return latents[pp_file]
    if isinstance(latents, str):
        return storage.join(latents, latents_name(pp_file))
    if opt is None or not opt.latents_folder:
        raise InputError(
            "say where the latents files are: latents=FOLDER or a {pp_file: latents_file} mapping, "
            "or an opts file with s3_outdir and the model options"
        )
    return storage.join(opt.s3_outdir or ".", opt.latents_folder, latents_name(pp_file))


class _LatentsRows:
    """Reads latents rows (partition, pp_idx) from one Nenya latents file, lazily and in slabs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.local = storage.fetch(url) if storage.is_remote(url) else storage.local_path(url)
        if not os.path.exists(self.local):
            raise InputError(
                f"latents file not found: {url}; extract it first (nenya extract / latents_extraction.main)"
            )

    def read(self, partition: str, pp_idx: np.ndarray) -> np.ndarray:
        """The vectors of rows ``pp_idx`` of ``partition`` (any order, repeats allowed), float32."""
        from nenya.sources.h5files import open_checked, read_rows

        with open_checked(self.local) as f:
            if partition not in f:
                raise InputError(f"{self.url} has no partition {partition!r} (it holds {sorted(f.keys())})")
            dset = f[partition]
            pos = pp_idx.astype(np.int64)
            if f"{partition}_rows" in f:  # a subset was extracted: map input rows to positions
                rows = f[f"{partition}_rows"][:]
                order = np.argsort(rows)
                at = np.searchsorted(rows, pos, sorter=order)
                at = np.clip(at, 0, len(rows) - 1)
                found = rows[order[at]] == pos
                if not found.all():
                    raise InputError(f"{self.url}:{partition} lacks rows such as {int(pos[~found][0])} of the table")
                pos = order[at]
            if len(pos) and (pos.min() < 0 or pos.max() >= dset.shape[0]):
                raise InputError(
                    f"pp_idx up to {int(pos.max())} but {self.url}:{partition} has {dset.shape[0]} rows; "
                    "is the table from the same preproc files?"
                )
            order = np.argsort(pos, kind="stable")
            out = np.empty((len(pos), dset.shape[1]), np.float32)
            uniq, inv = np.unique(pos[order], return_inverse=True)
            out[order] = read_rows(dset, uniq)[inv]
            if f"{partition}_valid" in f and not f[f"{partition}_valid"][:][pos].all():
                log.warning("%s: some rows of %s were skipped at extraction (zero vectors)", self.url, partition)
        return out


def _apply_cuts(
    tbl: pd.DataFrame,
    DT_cut: str | None,
    alpha_cut: tuple[float, float] | None,
    cut_column: str | None,
    cut_range: tuple[float, float] | None,
) -> pd.DataFrame:
    """The rows of ``tbl`` inside every (lower, upper] cut, renumbered from 0."""
    tbl = tbl.reset_index(drop=True)
    keep = np.ones(len(tbl), dtype=bool)
    if DT_cut is not None and DT_cut != "all":
        keep &= _keep_range(tbl[_col(tbl, "DT40", "DT")], DT_interval(DT_cut))
    if alpha_cut is not None:
        keep &= _keep_range(tbl[_col(tbl, "min_slope")], alpha_cut)
    if cut_column is not None:
        if cut_range is None:
            raise ValueError("cut_column needs cut_range=(lower, upper)")
        keep &= _keep_range(tbl[_col(tbl, cut_column)], cut_range)
    tbl = tbl[keep].reset_index(drop=True)
    log.info("after the cuts, %d cutouts to work on", len(tbl))
    if len(tbl) < 3:
        raise InputError(
            f"only {len(tbl)} row(s) of the table pass the cuts (DT_cut={DT_cut}, alpha_cut={alpha_cut}, "
            f"{cut_column}={cut_range}); UMAP needs more"
        )
    return tbl


def _pp_columns(tbl: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pp_type, pp_idx, pp_file)`` of each row (Ulmo's ``ulmo_pp_*`` names are read too)."""
    ftype = tbl[_col(tbl, "pp_type", "ulmo_pp_type")].astype(int).to_numpy()
    fidx = tbl[_col(tbl, "pp_idx", "ulmo_pp_idx")].astype(np.int64).to_numpy()
    ffile = tbl[_col(tbl, "pp_file", "ulmo_pp_file")].astype(str).to_numpy()
    bad = ~np.isin(ftype, (0, 1))
    if bad.any():
        raise InputError(f"{int(bad.sum())} row(s) have pp_type not in (0 valid, 1 train); cut them out first")
    return ftype, fidx, ffile


class _Vectors:
    """The latent vectors of a cut table's rows, read file by file and partition by partition."""

    def __init__(
        self,
        ffile: np.ndarray,
        ftype: np.ndarray,
        fidx: np.ndarray,
        opt: Params | None,
        latents: str | Mapping[str, str] | None,
    ) -> None:
        files = list(pd.unique(ffile))
        self.fidx = fidx
        self.readers = {f: _LatentsRows(_latents_for(f, opt, latents)) for f in files}
        groups = [
            (f, p, np.flatnonzero((ffile == f) & (ftype == t))) for f in files for t, p in ((0, "valid"), (1, "train"))
        ]
        #: (pp_file, partition, table rows) of every non-empty group
        self.groups = [g for g in groups if len(g[2])]

    def read(self, f: str, partition: str, rows: np.ndarray) -> np.ndarray:
        """The vectors of table ``rows`` (all of file ``f``, ``partition``)."""
        return self.readers[f].read(partition, self.fidx[rows])

    def remove_copies(self) -> None:
        """Delete the local copies of remote latents files (never the user's own files)."""
        import shutil

        for rd in self.readers.values():
            if rd.local != rd.url and storage.is_remote(rd.url):
                shutil.rmtree(os.path.dirname(rd.local), ignore_errors=True)


def _fit_umap(
    vectors: _Vectors, n: int, ntrain: int, seed: int, umap_kwargs: Mapping[str, Any] | None, umap_savefile: str | None
) -> tuple[Any, np.ndarray]:
    """Fit UMAP on a random ``ntrain`` of the ``n`` rows; returns the reducer and the rows it was fitted on,
    in the order of ``reducer.embedding_``."""
    import warnings

    from nenya.analysis.umap import make_umap

    rng = np.random.default_rng(seed)
    ntrain = min(int(ntrain), n)
    is_train = np.zeros(n, dtype=bool)
    is_train[np.sort(rng.choice(n, ntrain, replace=False))] = True
    parts, order = [], []
    for f, p, rows in vectors.groups:
        r = rows[is_train[rows]]
        if len(r):
            parts.append(vectors.read(f, p, r))
            order.append(r)
    x = np.concatenate(parts)
    del parts
    kwargs = dict(umap_kwargs or {})
    kwargs.setdefault("n_neighbors", min(15, ntrain - 1))
    reducer = make_umap(seed=seed, **kwargs)
    log.info("training UMAP on a random %d of %d vectors", ntrain, n)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        reducer.fit(x)
    if umap_savefile is not None:
        save_umap(reducer, umap_savefile)
    return reducer, np.concatenate(order)


def _place(reducer: Any, vectors: _Vectors, n: int, fitted_rows: np.ndarray, chunk_size: int) -> np.ndarray:
    """(n, 2) UMAP positions: the fitted rows keep their fitted place, the others are transformed."""
    from nenya.analysis.umap import transform_chunked

    us = np.full((n, 2), np.nan, np.float32)
    placed = np.zeros(n, dtype=bool)
    if len(fitted_rows):
        us[fitted_rows] = reducer.embedding_
        placed[fitted_rows] = True
    for f, p, rows in vectors.groups:
        rows = rows[~placed[rows]]
        for a in range(0, len(rows), chunk_size):
            r = rows[a : a + chunk_size]
            us[r] = transform_chunked(reducer, vectors.read(f, p, r), chunk=chunk_size)
    return us


def umap_subset(
    modis_tbl: pd.DataFrame | str,
    opt_path: str | Params | None,
    outfile: str,
    DT_cut: str | None = None,
    alpha_cut: tuple[float, float] | None = None,
    ntrain: int = 200_000,
    remove: bool = True,
    umap_savefile: str | None = None,
    train_umap: bool = True,
    local: bool = True,
    CF: bool = False,
    debug: bool = False,
    *,
    latents: str | Mapping[str, str] | None = None,
    cut_column: str | None = None,
    cut_range: tuple[float, float] | None = None,
    chunk_size: int = 50_000,
    seed: int = 42,
    umap_kwargs: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Fit a UMAP on a subset of a table's cutouts and write ``US0``/``US1`` for every row of the subset.

    Rows are matched to latent vectors through ``pp_file`` (the preproc file; its latents file is
    ``latents_name(pp_file)`` in the model's latents folder or ``latents``), ``pp_type`` (0 valid,
    1 train; ``ulmo_pp_type`` is read too) and ``pp_idx`` (row in the partition). UMAP is fitted on
    a random subset of at most ``ntrain`` of them; the fitted vectors keep their fitted positions
    (UMAP's ``embedding_``; Nenya passed them through ``transform`` again, which moves them by up to a
    unit at random) and every other vector is transformed, ``chunk_size`` at a time and file by file,
    so memory holds at most ``ntrain + chunk_size`` vectors.

    Args:
        modis_tbl: the table (a DataFrame, or a Parquet/CSV path or URL).
        opt_path: the model's opts JSON (or Params): where its latents are (``s3_outdir``/``latents_folder``).
        outfile: where the cut table with ``US0``/``US1`` goes (Parquet, local or URL).
        DT_cut: a DT bin key (:data:`DT_bins`) cutting on ``DT40`` (or ``DT``); None or "all": no DT cut.
        alpha_cut: a (lower, upper] range of ``min_slope`` (Nenya's alpha cut).
        ntrain: the largest number of vectors the UMAP is fitted on.
        remove: delete the local copies of remote latents files afterwards (never the user's own files).
        umap_savefile: save the fitted UMAP here (local; with a ``.sha256`` companion). With
            ``train_umap=False``, the UMAP to load instead (it must be in the UMAP dir).
        train_umap: fit a new UMAP (else load ``umap_savefile``).
        local, CF: kept for Nenya compatibility (files are read wherever the paths point).
        debug: use at most 2 latents files and do not write ``outfile``.
        latents: a folder holding the latents files, or a ``{pp_file: latents file}`` mapping.
        cut_column, cut_range: any other (lower, upper] cut, e.g. ``("clear_fraction", (0, 0.05))``.
        chunk_size: vectors per transform call.
        seed: seed of the training subset and of UMAP (Nenya: 42).
        umap_kwargs: extra ``umap.UMAP`` settings (n_neighbors, min_dist, n_epochs).

    Returns:
        The cut table with ``US0`` and ``US1``.
    """
    from nenya.analysis.latents import read_table, write_table

    if isinstance(modis_tbl, (str, os.PathLike)):
        modis_tbl = read_table(str(modis_tbl))
    opt = resolve_opts(opt_path) if opt_path is not None else None
    tbl = _apply_cuts(modis_tbl, DT_cut, alpha_cut, cut_column, cut_range)
    ftype, fidx, ffile = _pp_columns(tbl)
    if debug:
        sel = np.isin(ffile, list(pd.unique(ffile))[:2])
        tbl, ftype, fidx, ffile = tbl[sel].reset_index(drop=True), ftype[sel], fidx[sel], ffile[sel]
    vectors = _Vectors(ffile, ftype, fidx, opt, latents)
    n = len(tbl)
    try:
        reducer, fitted_rows = _reducer(vectors, n, ntrain, seed, umap_kwargs, umap_savefile, train_umap)
        us = _place(reducer, vectors, n, fitted_rows, chunk_size)
    finally:
        if remove:
            vectors.remove_copies()
    tbl["US0"], tbl["US1"] = us[:, 0], us[:, 1]
    if not debug:
        write_table(tbl, outfile)
        log.info("wrote %s", outfile)
    return tbl


def _reducer(vectors, n, ntrain, seed, umap_kwargs, umap_savefile, train_umap: bool):
    """(UMAP, rows it was fitted on): fitted here on a subset, or loaded from ``umap_savefile``."""
    if train_umap:
        return _fit_umap(vectors, n, ntrain, seed, umap_kwargs, umap_savefile)
    if umap_savefile is None:
        raise ValueError("train_umap=False needs umap_savefile: the UMAP to load")
    return load_umap(umap_savefile), np.zeros(0, dtype=np.int64)


# -- the UMAP grid -------------------------------------------------------------------------------
def cutouts_on_umap_grid(
    tbl: pd.DataFrame, nxy: int, umap_keys: tuple[str, str], min_pts: int = 1, *, seed: int = 0
) -> tuple[pd.DataFrame, list[pd.Series | None], dict]:
    """One random row per cell of :func:`grid_umap` (None for cells with fewer than ``min_pts`` rows).

    Returns:
        ``(tbl, cutouts, grid)``: the rows inside the grid (finite LL when the table has it), a list
        over cells in Nenya's order (x outer, y inner) of the chosen row or None, and the grid.
    """
    u0 = pd.to_numeric(tbl[umap_keys[0]], errors="coerce").to_numpy(dtype=np.float64)
    u1 = pd.to_numeric(tbl[umap_keys[1]], errors="coerce").to_numpy(dtype=np.float64)
    grid = grid_umap(u0, u1, nxy)
    good = (u0 > grid["xmin"]) & (u0 < grid["xmax"]) & (u1 > grid["ymin"]) & (u1 < grid["ymax"])
    if "LL" in tbl.columns:
        good &= np.isfinite(pd.to_numeric(tbl["LL"], errors="coerce").to_numpy(dtype=np.float64))
    sub = tbl.loc[good].reset_index(drop=True)
    picks, _ = cells_on_grid(u0[good], u1[good], nxy, min_pts=min_pts, seed=seed, grid=grid)
    ncell = len(grid["xval"]) - 1
    chosen: dict[tuple[int, int], int] = {(ix, iy): r for ix, iy, r in picks}
    cutouts: list[pd.Series | None] = []
    for ix in range(ncell):
        for iy in range(ncell):
            r = chosen.get((ix, iy))
            cutouts.append(None if r is None else sub.iloc[r])
    return sub, cutouts, grid
