"""Nenya's DT bins: the ranges of DT (T90 - T10 of a cutout, in kelvin) that Nenya's DT-subset UMAPs
and portal use. Defined here, in the core, so that the explorer page and ``nenya.nenya_umap`` (which
re-exports it as ``DT_bins`` and ``umap_DT``) share one definition."""

from __future__ import annotations

#: DT bins of the DT-subset UMAPs: key -> (lower, upper], in kelvin. "all" means no cut.
DT_bins: dict[str, tuple[float, float]] = {
    "DT0": (0.0, 0.5),
    "DT1": (0.5, 1.0),
    "DT15": (1.0, 1.5),
    "DT2": (1.5, 2.5),
    "DT4": (2.5, 4.0),
    "DT5": (4.0, float("inf")),
    "all": (-float("inf"), float("inf")),
}
