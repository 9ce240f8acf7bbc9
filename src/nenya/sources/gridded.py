"""Gridded fields in NetCDF or Zarr as a source, through xarray: ``xarray:sst.nc --var sst
--sample-dim time --tile 64 --stride 64`` cuts every time step of a field into 64x64 cutouts.

The variable is (sample, y, x) or (y, x) (one sample); anything else is an error that names its
dimensions. Without ``tile`` each sample is one item (the whole field). With it, tiles start every
``stride`` pixels (the last ones that fit; a border narrower than a tile is left out). Items are
float32 (1, tile, tile), as Nenya cutouts are.

**NaN policy** (land, clouds, missing values): a tile whose share of NaN pixels is above
``max_nan_fraction`` is skipped, with ``skipped:nan fraction F > M`` in the status table; below it,
its NaNs are filled with the mean of the tile's valid pixels (so a demeaned tile holds 0 there).

**Metadata**: the sample coordinate's value (dates as ISO text), the tile's centre coordinates
(``lat``/``lon``, or whatever 1-D or 2-D coordinates the grid has; the mean of the middle pixels for
even tiles), ``y0``/``x0`` (its top-left pixel) and ``nan_fraction``. Ids are
``<sample>/<y0>_<x0>`` (``<sample>`` alone without tiles).

Reading is lazy (no dask): the reader processes load, per sample, only the band of rows that the
batch's tiles cover, so memory holds a band, not the field; a field larger than memory streams.
Local files, Zarr stores at URLs (read through fsspec, chunk by chunk) and NetCDF files at URLs
(fetched into nenya's cache) are accepted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Collection, Iterator
from typing import Any

import numpy as np

from nenya._errors import InputError
from nenya.pipeline import storage
from nenya.pipeline.items import Batch, Shard
from nenya.sources import CollectionSource, SourceOptions

log = logging.getLogger(__name__)

__all__ = ["GriddedSource"]

LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")
LON_NAMES = ("lon", "longitude", "nav_lon", "x_lon")


def _open(path: str):
    """The dataset at ``path`` (NetCDF or Zarr; local or URL), opened lazily without caching."""
    try:
        import xarray as xr
    except ImportError:
        raise InputError('reading NetCDF and Zarr needs xarray: pip install "nenya[gridded]"') from None
    is_zarr = path.rstrip("/").endswith(".zarr") or (
        not storage.is_remote(path) and os.path.isdir(storage.local_path(path))
    )
    try:
        if is_zarr:
            store = storage.url_to_fs(path)[0].get_mapper(path) if storage.is_remote(path) else path
            try:  # consolidated metadata when the store has it (one read), else the arrays' own
                return xr.open_zarr(store, chunks=None, consolidated=True)
            except Exception:  # noqa: BLE001 - any failure of the consolidated path: try the plain one
                return xr.open_zarr(store, chunks=None, consolidated=False)
        local = storage.fetch(path)
        if not os.path.exists(local):
            raise InputError(f"gridded file not found: {path}")
        return xr.open_dataset(local, chunks=None, cache=False)
    except (FileNotFoundError, KeyError) as e:
        raise InputError(f"gridded file not found or not readable: {path} ({e})") from None
    except ValueError as e:
        raise InputError(f"{path}: cannot open it as NetCDF or Zarr ({e})") from None


def _text(value: Any) -> Any:
    """A coordinate value as metadata: dates as ISO text, numpy scalars as Python ones."""
    if isinstance(value, np.datetime64):
        return np.datetime_as_string(value, unit="s")
    return value.item() if isinstance(value, np.generic) else value


class GriddedSource(CollectionSource):
    """Tiles (or whole fields) of one variable of a NetCDF file or Zarr store (see the module docstring).

    Example:
        >>> src = GriddedSource("sst.zarr", var="sst", sample_dim="time", tile=64, stride=64, max_nan_fraction=0.2)

    Args:
        path: NetCDF file or Zarr store (local or URL).
        var: the variable (default: the only one with two or more dimensions).
        sample_dim: the dimension of samples (default: the first of three).
        tile, stride: tile side and step in pixels (None: whole fields; stride defaults to tile).
        max_nan_fraction: tiles with a larger share of NaN pixels are skipped.
        skip_ids: ids not to read again (resume).
    """

    key = "xarray"

    def __init__(
        self,
        path: str,
        *,
        var: str | None = None,
        sample_dim: str | None = None,
        tile: int | None = None,
        stride: int | None = None,
        max_nan_fraction: float = 0.5,
        skip_ids: Collection[str] = (),
    ) -> None:
        self.path, self.var, self.sample_dim = str(path), var, sample_dim
        self.tile = int(tile) if tile else None
        self.stride = int(stride) if stride else self.tile
        if self.tile is not None and (self.tile < 1 or (self.stride or 0) < 1):
            raise InputError(f"--tile and --stride must be positive; got {tile} and {stride}")
        self.max_nan_fraction = float(max_nan_fraction)
        self.skip_ids = frozenset(skip_ids)
        self._da: Any = None
        self._ds: Any = None
        self._listed = False
        self._lat: str | None = None
        self._lon: str | None = None

    @classmethod
    def from_spec(cls, where: str, options: SourceOptions) -> GriddedSource:
        """``xarray:PATH`` with ``--var``, ``--sample-dim``, ``--tile``, ``--stride``, ``--max-nan-fraction``."""
        g = options.grid
        return cls(
            where,
            var=g.var,
            sample_dim=g.sample_dim,
            tile=g.tile,
            stride=g.stride,
            max_nan_fraction=g.max_nan_fraction,
            skip_ids=options.skip_ids,
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_da"] = state["_ds"] = None  # reopened lazily in the reader process
        return state

    def close(self) -> None:
        """Close the file or store (it reopens on the next read)."""
        if self._ds is not None:
            self._ds.close()
        self._ds = self._da = None

    # -- listing -------------------------------------------------------------------------------
    def _variable(self):
        if self._da is not None:
            return self._da
        ds = self._ds = _open(self.path)
        names = [v for v in ds.data_vars if ds[v].ndim >= 2]
        var = self.var or (names[0] if len(names) == 1 else None)
        if var is None or var not in ds.data_vars:
            raise InputError(f"{self.path}: name the variable with --var (it holds {sorted(ds.data_vars)})")
        da = ds[var]
        dims = list(da.dims)
        if da.ndim == 2:
            sample = None
        elif da.ndim == 3:
            sample = self.sample_dim or dims[0]
            if sample not in dims:
                raise InputError(f"{self.path}: {var!r} has no dimension {sample!r} (it has {dims})")
        else:
            raise InputError(
                f"{self.path}: the variable {var!r} has {da.ndim} dimensions {dims}; expected (sample, y, x) "
                "or (y, x): select the others first (for example one level) and save it, or pick another --var"
            )
        self._da, self._sample = (da.transpose(sample, *[d for d in dims if d != sample]) if sample else da), sample
        self._ydim, self._xdim = self._da.dims[-2:]
        return self._da

    def _list(self) -> None:
        da = self._variable()
        h, w = da.shape[-2:]
        t = self.tile or 0
        if t and (t > h or t > w):
            raise InputError(f"{self.path}: --tile {t} is larger than the field ({h} x {w})")
        self._ys = np.arange(0, h - t + 1, self.stride) if t else np.array([0])
        self._xs = np.arange(0, w - t + 1, self.stride) if t else np.array([0])
        n_samples = da.shape[0] if self._sample else 1
        labels = [str(_text(v)) for v in da[self._sample].values] if self._sample else [os.path.basename(self.path)]
        per = len(self._ys) * len(self._xs)
        ids = [f"{labels[s]}/{y}_{x}" if t else labels[s] for s in range(n_samples) for y in self._ys for x in self._xs]
        if len(set(ids)) != len(ids):
            ids = [f"{s}/{y}_{x}" for s in range(n_samples) for y in self._ys for x in self._xs]
        keep = np.array([i not in self.skip_ids for i in ids], dtype=bool)
        self._rows = np.flatnonzero(keep)
        self._ids = [i for i, k in zip(ids, keep) if k]
        self._per, self._n_total = per, len(ids)
        self._listed = True

    def _columns(self) -> list[str]:
        cols = [self._sample] if self._sample else []
        cols += [c for c in (self._coord(LAT_NAMES), self._coord(LON_NAMES)) if c]
        return cols + ["y0", "x0", "nan_fraction"]

    def _coord(self, names: tuple[str, ...]) -> str | None:
        da = self._variable()
        return next((c for c in da.coords if c.lower() in names and set(da[c].dims) <= {self._ydim, self._xdim}), None)

    def fingerprint(self) -> str:
        self._ensure_listed()
        da = self._variable()
        h = hashlib.sha256()
        h.update(repr((self.path, da.name, da.shape, str(da.dtype), self.tile, self.stride)).encode())
        h.update(repr((self.max_nan_fraction, self._sample)).encode())
        if not storage.is_remote(self.path):  # a rewritten file or store is another input
            st = os.stat(storage.local_path(self.path))
            h.update(repr((st.st_size, st.st_mtime_ns)).encode())
        h.update("\n".join(self._ids).encode())
        return h.hexdigest()[:16]

    def localise(self) -> None:
        self.close()  # reopened (and a NetCDF URL fetched) in this process on the first read

    # -- reading -------------------------------------------------------------------------------
    def _centres(self, name: str | None, ys: np.ndarray, xs: np.ndarray, top: int, bottom: int) -> list:
        """The coordinate ``name`` at each tile's centre (the mean of the middle pixels for even tiles):
        1-D coordinates read whole (they are small), 2-D ones over the band only."""
        if name is None:
            return []
        c = self._da[name]
        t = self.tile or 0
        h, w = self._da.shape[-2:]
        yc = [ys + t // 2 - 1, ys + t // 2] if t and t % 2 == 0 else [ys + t // 2 if t else ys * 0 + h // 2]
        xc = [xs + t // 2 - 1, xs + t // 2] if t and t % 2 == 0 else [xs + t // 2 if t else xs * 0 + w // 2]
        if c.dims == (self._ydim,) or c.dims == (self._xdim,):
            values = np.asarray(c.values, dtype=np.float64)
            idx = yc if c.dims == (self._ydim,) else xc
            return list(np.mean([values[i] for i in idx], axis=0))
        band = np.asarray(c.transpose(self._ydim, self._xdim).isel({self._ydim: slice(top, bottom)}).values, np.float64)
        return list(np.mean([band[yi - top, xi] for yi in yc for xi in xc], axis=0))

    def _tiles(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, dict]]:
        """Per sample of ``rows``: (sample, y0s, x0s, pixels (n, t, t), tile-centre coordinates),
        loading one band of rows of the field."""
        da = self._variable()
        t = self.tile
        samples = rows // self._per
        for s in np.unique(samples):
            sel = rows[samples == s] % self._per
            ys, xs = self._ys[sel // len(self._xs)], self._xs[sel % len(self._xs)]
            top, bottom = int(ys.min()), int(ys.max()) + (t or da.shape[-2])
            field = da[int(s)] if self._sample else da
            band = np.asarray(field.isel({self._ydim: slice(top, bottom)}).values, dtype=np.float32)
            px = np.stack([band[y - top : y - top + t, x : x + t] if t else band for y, x in zip(ys, xs)])
            centres = {n: self._centres(n, ys, xs, top, bottom) for n in (self._lat, self._lon) if n}
            yield int(s), ys, xs, px, centres

    def read(self, shard: Shard, batch_size: int) -> Iterator[Batch]:
        self._ensure_listed()
        self._variable()
        self._lat, self._lon = self._coord(LAT_NAMES), self._coord(LON_NAMES)
        samples = self._da[self._sample].values if self._sample else None
        for a in range(shard.start, shard.stop, batch_size):
            b = min(shard.stop, a + batch_size)
            rows = self._rows[a:b]
            parts: list[np.ndarray] = []
            meta: dict[str, list] = {c: [] for c in self._columns()}
            for s, ys, xs, px, centres in self._tiles(rows):
                parts.append(px)
                if samples is not None:
                    meta[self._sample] += [_text(samples[s])] * len(ys)
                for name, values in centres.items():
                    meta[name] += values
                meta["y0"] += list(ys)
                meta["x0"] += list(xs)
            data, status, fractions = _nan_policy(np.concatenate(parts), self.max_nan_fraction)
            meta["nan_fraction"] = fractions
            yield Batch(
                shard,
                self._ids[a:b],
                np.arange(a, b, dtype=np.int64),
                rows.copy(),
                data[:, None],
                {c: np.asarray(v, dtype=object if c == self._sample else None) for c, v in meta.items()},
                last=b >= shard.stop,
                status=None if all(st == "ok" for st in status) else status,
            )


def _nan_policy(px: np.ndarray, max_fraction: float) -> tuple[np.ndarray, list[str], list[float]]:
    """Tiles (n, t, t) with NaNs filled by their valid mean, the status of each (``skipped`` above
    ``max_fraction``, its pixels zeroed) and each tile's NaN fraction."""
    bad = np.isnan(px)
    fractions = bad.mean(axis=(1, 2))
    valid = np.where(bad, 0, px).sum(axis=(1, 2)) / np.maximum((~bad).sum(axis=(1, 2)), 1)
    out = np.where(bad, valid[:, None, None].astype(np.float32), px)
    skip = fractions > max_fraction
    out[skip] = 0
    status = [f"skipped:nan fraction {f:.3f} > {max_fraction:g}" if k else "ok" for f, k in zip(fractions, skip)]
    return out.astype(np.float32), status, [float(f) for f in fractions]
