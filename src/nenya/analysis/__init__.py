"""Analysis of latents files of any layout: readers, PCA, UMAP, clusters, FAISS search, plots, the explorer page.

Heavy libraries (scikit-learn, umap-learn, faiss, matplotlib) are imported only by the functions
that use them.
"""

from __future__ import annotations

import logging
import os
import time

from nenya.analysis.cluster import hdbscan, kmeans
from nenya.analysis.compare import EncodingAgreement, compare_encodings
from nenya.analysis.duplicates import DuplicateResult, find_duplicates
from nenya.analysis.explorer import write_explorer
from nenya.analysis.flow import FlowModel, fit_flow, load_flow
from nenya.analysis.images import ImageLookup
from nenya.analysis.latents import Latents, open_latents, output_path, read_about, read_latents, read_table, write_table
from nenya.analysis.outliers import OutlierResult, outliers, write_outliers
from nenya.analysis.pca import PCAResult, pca
from nenya.analysis.plots import gallery_plot, neighbours_plot, scatter_plot
from nenya.analysis.search import LatentIndex, build_index, load_index
from nenya.analysis.shift import CollectionShift, compare_collections
from nenya.analysis.trends import Trends, region_mask, trends, write_trends
from nenya.analysis.umap import UMAPResult, fit_umap

log = logging.getLogger(__name__)

__all__ = [
    "EncodingAgreement",
    "compare_encodings",
    "CollectionShift",
    "compare_collections",
    "DuplicateResult",
    "find_duplicates",
    "Latents",
    "open_latents",
    "read_about",
    "read_latents",
    "read_table",
    "write_table",
    "output_path",
    "PCAResult",
    "pca",
    "UMAPResult",
    "fit_umap",
    "kmeans",
    "hdbscan",
    "LatentIndex",
    "build_index",
    "load_index",
    "ImageLookup",
    "scatter_plot",
    "gallery_plot",
    "neighbours_plot",
    "write_explorer",
    "FlowModel",
    "fit_flow",
    "load_flow",
    "OutlierResult",
    "outliers",
    "write_outliers",
    "Trends",
    "region_mask",
    "trends",
    "write_trends",
    "demo_outputs",
]


def demo_outputs(latents_path: str, preproc_path: str, out_dir: str) -> dict[str, str]:
    """The pictures of ``nenya demo``: a UMAP plot, a gallery and the explorer page of a latents file.

    Fits UMAP on all the vectors (up to 200,000), colours by the first categorical metadata column
    (the demo's ``pattern``), draws the cutouts of ``preproc_path`` on the UMAP grid and writes the
    explorer with 10 neighbours per point.

    Args:
        latents_path: a latents file (the demo's ``_latents.h5``; any layout works).
        preproc_path: the preproc HDF5 file the latents came from (for the images).
        out_dir: folder for the outputs (created if needed).

    Returns:
        ``{"table": ..._umap.parquet, "umap_plot": ..._umap.png, "gallery": ..._gallery.png,
        "explorer": ..._explorer.html}``.

    Example:
        >>> paths = demo_outputs("demo/latents/x_latents.h5", "demo/data/x_preproc.h5", "demo/explore")  # doctest: +SKIP
    """
    from nenya.analysis.plots import is_categorical

    t0 = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    with open_latents(latents_path) as lat:
        vectors = lat.vectors()
        table = lat.metadata.copy()
        table.insert(0, "id", lat.ids)
    t1 = time.perf_counter()
    res = fit_umap(vectors)
    t_umap = time.perf_counter() - t1
    table["U0"], table["U1"] = res.embedding[:, 0], res.embedding[:, 1]
    stem = os.path.basename(output_path(latents_path, ""))
    paths = {
        "table": os.path.join(out_dir, f"{stem}_umap.parquet"),
        "umap_plot": os.path.join(out_dir, f"{stem}_umap.png"),
        "gallery": os.path.join(out_dir, f"{stem}_gallery.png"),
        "explorer": os.path.join(out_dir, f"{stem}_explorer.html"),
    }
    write_table(table, paths["table"])
    skip = {"id", "partition", "row", "path", "U0", "U1"}
    cats = [c for c in table.columns if c not in skip and is_categorical(table[c]) and 1 < table[c].nunique() <= 20]
    color = "pattern" if "pattern" in table.columns else (cats[0] if cats else None)
    scatter_plot(
        table["U0"],
        table["U1"],
        paths["umap_plot"],
        color=None if color is None else table[color],
        color_name=color,
        title=f"UMAP of {len(table):,} latents" + (f" by {color}" if color else ""),
    )
    lookup = ImageLookup(table, images=preproc_path)
    t1 = time.perf_counter()
    gallery_plot(table["U0"].to_numpy(), table["U1"].to_numpy(), lookup.get, paths["gallery"], nxy=16)
    t_gallery = time.perf_counter() - t1
    t1 = time.perf_counter()
    write_explorer(
        paths["explorer"],
        table["U0"].to_numpy(),
        table["U1"].to_numpy(),
        table,
        vectors=vectors,
        images=lookup,
        color=color,
        title=f"nenya explorer: {os.path.basename(latents_path)}",
    )
    log.info(
        "demo outputs in %s (%.1f s: UMAP %.1f s, gallery %.1f s, explorer %.1f s)",
        out_dir,
        time.perf_counter() - t0,
        t_umap,
        t_gallery,
        time.perf_counter() - t1,
    )
    return paths
