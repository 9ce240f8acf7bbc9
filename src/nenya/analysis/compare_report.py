"""The reports of ``nenya compare``: a Markdown and an HTML summary, the tables as Parquet, pictures.

One list of blocks (headings, paragraphs, tables, pictures) is rendered both as Markdown and as a
self-contained HTML page (pictures linked by file name, next to the page). Every file goes inside
the output folder under a fixed name.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd

from nenya.analysis.compare import EncodingAgreement
from nenya.analysis.images import ImageLookup
from nenya.analysis.latents import local_target, write_table
from nenya.analysis.progress import Stages
from nenya.analysis.shift import CollectionShift

log = logging.getLogger(__name__)

__all__ = ["write_shift_report", "write_agreement_report", "JointImages"]

Block = tuple[str, object]
TOP_CLUSTERS = 8
THUMBS_PER_SIDE = 4

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
    "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"
)


def _fmt(v) -> str:
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(str(x) for x in list(v)[:3]) + (" ..." if len(v) > 3 else "")
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


def _markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, value in blocks:
        if kind == "h1":
            out.append(f"# {value}\n")
        elif kind == "h2":
            out.append(f"## {value}\n")
        elif kind == "p":
            out.append(f"{value}\n")
        elif kind == "img":
            out.append(f"![{value}]({value})\n")
        elif kind == "link":
            href, text = cast(tuple[str, str], value)  # (file name, text)
            out.append(f"[{text}]({href})\n")
        elif kind == "table":
            df = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
            rows = [[_fmt(v) for v in r] for r in df.itertuples(index=False)]
            out.append("| " + " | ".join(map(str, df.columns)) + " |")
            out.append("|" + "---|" * len(df.columns))
            out += ["| " + " | ".join(r) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


def _html(blocks: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for kind, value in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(str(value))}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(str(value))}</p>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(str(value))}" alt="{html.escape(str(value))}"></p>')
        elif kind == "link":
            href, text = cast(tuple[str, str], value)  # (file name, text)
            body.append(f'<p><a href="{html.escape(href)}">{html.escape(text)}</a></p>')
        elif kind == "table":
            df = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
            body.append(df.map(_fmt).to_html(index=False, escape=True, border=0))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _write_text(path: str, text: str) -> None:
    with local_target(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def _write_report(out_dir: str, blocks: Sequence[Block], title: str, summary: dict, paths: dict) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    paths["summary"] = os.path.join(out_dir, "summary.json")
    paths["markdown"] = os.path.join(out_dir, "report.md")
    paths["html"] = os.path.join(out_dir, "report.html")
    _write_text(paths["summary"], json.dumps(summary, indent=2, default=float) + "\n")
    _write_text(paths["markdown"], _markdown(blocks))
    _write_text(paths["html"], _html(blocks, title))
    return paths


class JointImages:
    """The images of the rows of a table that stacks A's sample over B's: one lookup per side."""

    def __init__(self, a: ImageLookup, b: ImageLookup, n_a: int) -> None:
        if a.kind != b.kind:
            raise ValueError(f"the collections' images differ in kind: {a.kind} and {b.kind}")
        self.a, self.b, self.n_a, self.kind = a, b, n_a, a.kind

    def get(self, rows) -> list[np.ndarray | None]:
        rows = np.asarray(rows, dtype=np.int64)
        out: list[np.ndarray | None] = [None] * len(rows)
        for lookup, sel, offset in ((self.a, rows < self.n_a, 0), (self.b, rows >= self.n_a, self.n_a)):
            where = np.flatnonzero(sel)
            if len(where):
                for i, im in zip(where, lookup.get(rows[where] - offset)):
                    out[i] = im
        return out


def _project(z: np.ndarray, how: str, seed: int) -> tuple[np.ndarray, tuple[str, str]]:
    if how == "pca":
        from nenya.analysis.pca import pca

        return pca(z, 2, seed=seed).scores[:, :2], ("PC0", "PC1")
    from nenya.analysis.umap import fit_umap

    return fit_umap(z, seed=seed).embedding, ("U0", "U1")


def _points(r: CollectionShift, metas: tuple[pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    """The sample's rows, A's then B's: id, collection, cluster and the metadata both sides share."""
    common = [c for c in metas[0].columns if c in set(metas[1].columns) and c not in ("id", "collection", "cluster")]
    parts = []
    for name, ids, labels, rows, meta in (
        (r.names[0], r.ids_a, r.labels_a, r.rows_a, metas[0]),
        (r.names[1], r.ids_b, r.labels_b, r.rows_b, metas[1]),
    ):
        part = meta.iloc[rows][common].reset_index(drop=True)
        part.insert(0, "cluster", labels[rows].astype(np.int32))
        part.insert(0, "collection", name)
        part.insert(0, "id", np.asarray(ids)[rows].astype(str))
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    if table["id"].duplicated().any():  # the same id in both collections: tell them apart on the page
        table["id"] = table["collection"].astype(str) + ":" + table["id"]
    return table


def _cluster_pictures(r: CollectionShift, images: JointImages, path: str) -> str:
    """One row per most-changed cluster: examples from A, then from B."""
    from nenya.analysis.plots import image_rows

    pos_a = pd.Index(np.asarray(r.ids_a)[r.rows_a].astype(str))
    pos_b = pd.Index(np.asarray(r.ids_b)[r.rows_b].astype(str))
    rows_of_images, titles = [], []
    for c in r.clusters.head(TOP_CLUSTERS).itertuples():
        ex_a = [i for i in pos_a.get_indexer(list(c.examples_a)[:THUMBS_PER_SIDE]) if i >= 0]
        ex_b = [i + len(pos_a) for i in pos_b.get_indexer(list(c.examples_b)[:THUMBS_PER_SIDE]) if i >= 0]
        ims = images.get(np.array(ex_a + ex_b, dtype=np.int64))
        rows_of_images.append(ims[: len(ex_a)] + [None] * (THUMBS_PER_SIDE - len(ex_a)) + ims[len(ex_a) :])
        titles.append(f"cluster {c.cluster}: {r.names[0]} {c.share_a:.1%}, {r.names[1]} {c.share_b:.1%}")
    title = f"examples nearest each centre: {THUMBS_PER_SIDE} from {r.names[0]} (left), {THUMBS_PER_SIDE} from {r.names[1]} (right)"
    return image_rows(rows_of_images, titles, path, kind=images.kind or "anomaly", title=title)


def write_shift_report(
    r: CollectionShift,
    out_dir: str,
    *,
    vectors: tuple,  # arrays or opened Latents
    metas: tuple[pd.DataFrame, pd.DataFrame],
    projection: str = "umap",
    images: JointImages | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, str]:
    """Write the report of :func:`~nenya.analysis.shift.compare_collections` into ``out_dir``.

    Writes ``report.md``, ``report.html``, ``summary.json``, ``clusters.parquet``; with a
    ``projection`` (``umap`` or ``pca``; ``none`` for neither) also ``points.parquet`` (the sample's
    id, collection, cluster and coordinates), ``projection.png`` and ``explorer.html`` (the explorer
    page with a ``collection`` column); with ``images``, ``clusters.png`` (examples of the
    most-changed clusters). ``progress``: a bar over these stages, saying which runs. Returns the
    paths by name.
    """
    pictures = images is not None and images.kind is not None
    names = [f"{projection.upper()} projection", "explorer page"] if projection != "none" else []
    names += ["cluster pictures"] * pictures + ["report files"]
    paths = {"clusters": os.path.join(out_dir, "clusters.parquet")}
    os.makedirs(out_dir, exist_ok=True)
    write_table(r.clusters, paths["clusters"])
    with Stages("report", names, progress=progress) as stages:
        if projection != "none":
            stages.start(names[0])
            table, xy, z, (xl, yl) = _projection(r, vectors, metas, projection, seed, out_dir, paths)
            stages.start("explorer page")
            from nenya.analysis.explorer import write_explorer

            paths["explorer"] = write_explorer(
                os.path.join(out_dir, "explorer.html"),
                xy[:, 0],
                xy[:, 1],
                table,
                vectors=z,
                images=images,
                color="collection",
                title=f"nenya compare: {r.names[0]} vs {r.names[1]}",
                xlabel=xl,
                ylabel=yl,
            )
        if pictures:
            assert images is not None
            stages.start("cluster pictures")
            paths["cluster_images"] = _cluster_pictures(r, images, os.path.join(out_dir, "clusters.png"))
        stages.start("report files")
        return _write_report(out_dir, _shift_blocks(r, paths), f"{r.names[0]} vs {r.names[1]}", r.summary(), paths)


def _projection(
    r: CollectionShift,
    vectors: tuple,  # arrays or opened Latents
    metas: tuple[pd.DataFrame, pd.DataFrame],
    projection: str,
    seed: int,
    out_dir: str,
    paths: dict[str, str],
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, tuple[str, str]]:
    """Project the sample; write ``points.parquet`` and ``projection.png`` (into ``paths``); return the
    points table, the coordinates, the sample's vectors and the axes' names."""
    from nenya.analysis.duplicates_index import Rows
    from nenya.analysis.plots import scatter_plot

    table = _points(r, metas)
    z = np.concatenate([Rows(vectors[0], "l2").get(r.rows_a), Rows(vectors[1], "l2").get(r.rows_b)])
    xy, (xl, yl) = _project(z, projection, seed)
    table[xl], table[yl] = xy[:, 0], xy[:, 1]
    paths["points"] = os.path.join(out_dir, "points.parquet")
    write_table(table, paths["points"])
    paths["projection"] = os.path.join(out_dir, "projection.png")
    title = f"{projection.upper()} of {r.names[0]} and {r.names[1]} ({len(table):,} items)"
    scatter_plot(
        xy[:, 0],
        xy[:, 1],
        paths["projection"],
        color=table["collection"],
        color_name="collection",
        title=title,
        xlabel=xl,
        ylabel=yl,
    )
    return table, xy, z, (xl, yl)


def _verdict(p: float, alpha: float = 0.01) -> str:
    return "differ" if p < alpha else "are not shown to differ"


def _shift_blocks(r: CollectionShift, paths: dict) -> list[Block]:
    a, b = r.names
    cols = ["cluster", "n_a", "n_b", "share_a", "share_b", "difference", "q_value", "examples_a", "examples_b"]
    blocks: list[Block] = [
        ("h1", f"{a} vs {b} in latent space"),
        (
            "p",
            f"{a}: {r.n_a:,} items; {b}: {r.n_b:,} items. Tests on a random sample of "
            f"{r.sample_a:,} and {r.sample_b:,} items.",
        ),
        ("h2", "Two-sample tests"),
        (
            "table",
            pd.DataFrame(
                {
                    "test": ["MMD² (Gaussian kernel)", "classifier (logistic regression)"],
                    "statistic": [
                        f"MMD² = {r.mmd2:.4g} (σ = {r.bandwidth:.4g})",
                        f"accuracy = {r.accuracy:.4f} (chance 0.5)",
                    ],
                    "p_value": [r.mmd_p, r.classifier_p],
                    "how": [
                        f"{r.permutations} permutations",
                        f"fitted on half, scored on {r.classifier_n:,} held-out items, binomial",
                    ],
                }
            ),
        ),
        (
            "p",
            f"At the 0.01 level, the MMD test says the collections {_verdict(r.mmd_p)}; the classifier "
            f"test says they {_verdict(r.classifier_p)}. The smallest possible permutation p-value is "
            f"{1 / (1 + r.permutations):.2g}.",
        ),
        ("h2", f"Where they differ: {len(r.clusters)} k-means clusters of the union"),
        (
            "p",
            f"difference = share in {b} - share in {a}; q: Benjamini-Hochberg over clusters of a "
            "two-proportion z-test. Largest differences first.",
        ),
        ("table", r.clusters[cols].head(20)),
    ]
    for key, caption in (("projection", "Joint projection"), ("cluster_images", "Examples of the top clusters")):
        if key in paths:
            blocks += [("h2", caption), ("img", os.path.basename(paths[key]))]
    if "explorer" in paths:
        text = "Interactive: explorer.html (colour by collection or cluster, select, filter, export)"
        blocks.append(("link", (os.path.basename(paths["explorer"]), text)))
    return blocks


def write_agreement_report(r: EncodingAgreement, out_dir: str, names: tuple[str, str], *, most: int = 50) -> dict:
    """Write the report of :func:`~nenya.analysis.compare.compare_encodings` into ``out_dir``:
    ``overlap.parquet`` (id, overlap per item), ``most_changed.parquet``, ``summary.json``,
    ``report.md`` and ``report.html``."""
    paths = {
        "overlap": os.path.join(out_dir, "overlap.parquet"),
        "most_changed": os.path.join(out_dir, "most_changed.parquet"),
    }
    os.makedirs(out_dir, exist_ok=True)
    write_table(r.per_item, paths["overlap"])
    changed = r.most_changed(most)
    write_table(changed, paths["most_changed"])
    q = np.quantile(r.per_item["overlap"], [0.1, 0.5, 0.9]) if r.n else [np.nan] * 3
    summary = {
        "a": names[0],
        "b": names[1],
        "n": r.n,
        "only_a": r.only_a,
        "only_b": r.only_b,
        "k": r.k,
        "metric": r.metric,
        "exact": r.exact,
        "search": r.search,
        "recall_a": r.recall_a,
        "recall_b": r.recall_b,
        "recall_queries": r.recall_queries,
        "sample_overlap": None if np.isnan(r.sample_overlap) else r.sample_overlap,
        "sample_overlap_exact": None if np.isnan(r.sample_overlap_exact) else r.sample_overlap_exact,
        "mean_overlap": r.mean_overlap,
        "cka": r.cka,
    }
    how = "exact" if r.exact else (
        f"approximate: {r.search}; recall@{r.k} {r.recall_a:.3f} (A) and {r.recall_b:.3f} (B) against exact "
        f"neighbours on {r.recall_queries:,} sampled items, whose mean overlap is {r.sample_overlap:.4f} "
        f"({r.sample_overlap_exact:.4f} with exact neighbours)"
    )  # fmt: skip
    blocks: list[Block] = [
        ("h1", f"Agreement of {names[0]} and {names[1]} on the same items"),
        (
            "p",
            f"{r.n:,} items in both ({r.only_a:,} only in {names[0]}, {r.only_b:,} only in {names[1]}: left out). "
            f"Neighbours: k = {r.k}, {r.metric}, {how}.",
        ),
        (
            "table",
            pd.DataFrame(
                {
                    "figure": [f"mean kNN overlap@{r.k} (Jaccard)", "overlap 10% / 50% / 90% quantiles", "linear CKA"],
                    "value": [f"{r.mean_overlap:.4f}", " / ".join(f"{v:.3f}" for v in q), f"{r.cka:.4f}"],
                }
            ),
        ),
        ("p", "1.0 means the same neighbourhoods (overlap) or encodings equal up to a rotation and a scale (CKA)."),
        ("h2", "Items whose neighbourhoods changed most"),
        ("table", changed.head(20)),
    ]
    return _write_report(out_dir, blocks, f"{names[0]} vs {names[1]}", summary, paths)
