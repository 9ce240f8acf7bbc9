"""nenya.nenya_umap and umap_image: DT bins, a UMAP fitted on a table subset, loading it back safely."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from conftest import make_opts, save_checkpoint
from nenya import nenya_umap
from nenya.analyze_image import calc_DT, umap_image
from nenya.params import Params, option_preprocess
from nenya.sample_data import write_preproc


def test_dt_bins_follow_nenya():
    assert nenya_umap.DT_key(0.3) == "DT0"
    assert nenya_umap.DT_key(0.5) == "DT0"  # (lower, upper]
    assert nenya_umap.DT_key(0.51) == "DT1"
    assert nenya_umap.DT_key(1.0441) == "DT15"
    assert nenya_umap.DT_key(2.0) == "DT2"
    assert nenya_umap.DT_key(3.0) == "DT4"
    assert nenya_umap.DT_key(40.0) == "DT5"
    assert nenya_umap.DT_interval("DT2") == (1.5, 2.5)
    assert nenya_umap.DT_interval((2.0, -1)) == (2.0, 2.0 + 1e12)
    with pytest.raises(ValueError):
        nenya_umap.DT_key(0.0)


def test_umap_dir_and_names(monkeypatch, tmp_path):
    monkeypatch.setenv("NENYA_UMAP_DIR", str(tmp_path / "u"))
    pkl, table = nenya_umap.umap_paths("v5", "DT1")
    assert pkl == str(tmp_path / "u" / "MODIS_Nenya_96clear_v5_DT1_UMAP.pkl")
    assert table == str(tmp_path / "u" / "MODIS_Nenya_96clear_v5_DT1.parquet")
    monkeypatch.delenv("NENYA_UMAP_DIR")
    assert nenya_umap.umap_dir().name == "umap"  # under the (test's private) nenya cache


def test_grid_helpers():
    rng = np.random.default_rng(0)
    tbl = pd.DataFrame({"US0": rng.normal(size=3000), "US1": rng.normal(size=3000), "LL": rng.normal(size=3000)})
    grid = nenya_umap.grid_umap(tbl.US0.values, tbl.US1.values, nxy=8)
    assert len(grid["xval"]) == 11 and grid["dxv"] > 0
    sub, cutouts, grid2 = nenya_umap.cutouts_on_umap_grid(tbl, 8, ("US0", "US1"), min_pts=5)
    assert len(cutouts) == 100
    chosen = [c for c in cutouts if c is not None]
    assert 20 < len(chosen) <= 100
    for i, c in enumerate(cutouts):  # each pick lies in its own cell
        if c is None:
            continue
        ix, iy = divmod(i, 10)
        assert grid2["xval"][ix] <= c.US0 < grid2["xval"][ix + 1]
        assert grid2["yval"][iy] <= c.US1 < grid2["yval"][iy + 1]


@pytest.fixture
def umap_setup(tmp_path, monkeypatch):
    """Synthetic 16x16 cutouts, a random-init SupCon model, its latents, a table, and a DT-bin UMAP."""
    from nenya.latents_extraction import main as extract_main

    monkeypatch.setenv("NENYA_UMAP_DIR", str(tmp_path / "umaps"))
    opts_file = make_opts(tmp_path)
    opt = option_preprocess(Params(opts_file))
    save_checkpoint(opt, tmp_path / opt.model_folder / "last.pth")
    (tmp_path / "data").mkdir()
    pre = write_preproc(tmp_path / "data" / "synth_preproc.h5", n_valid=240, n_train=60, size=16, seed=5)
    extract_main(opts_file, [pre])
    rows = []
    with h5py.File(pre) as f:
        for t, p in ((0, "valid"), (1, "train")):
            dt = calc_DT(f[p][:], opt.random_jitter)
            rows += [
                {"pp_file": pre, "pp_type": t, "pp_idx": i, "DT40": float(d), "lat": 0.0} for i, d in enumerate(dt)
            ]
    table = pd.DataFrame(rows)
    key = table.DT40.map(nenya_umap.DT_key).value_counts().index[0]
    pkl, out = nenya_umap.umap_paths(str(opts_file), key)
    cut = nenya_umap.umap_subset(
        table, str(opts_file), out, DT_cut=key, umap_savefile=pkl, ntrain=10_000, chunk_size=37
    )
    return {"opts": str(opts_file), "pre": pre, "key": key, "cut": cut, "pkl": pkl, "out": out, "table": table}


@pytest.mark.slow
def test_umap_subset_umap_image_and_safe_load(umap_setup, tmp_path):
    s = umap_setup
    cut = s["cut"]
    assert len(cut) == int((s["table"].DT40.map(nenya_umap.DT_key) == s["key"]).sum()) >= 20
    assert np.isfinite(cut[["US0", "US1"]].to_numpy()).all()
    written = pd.read_parquet(s["out"])
    np.testing.assert_allclose(written[["US0", "US1"]].to_numpy(), cut[["US0", "US1"]].to_numpy())
    # images of the training set land on their stored coordinates (not wherever UMAP's stochastic
    # transform would put them: its per-point random stream changes with 1e-7 differences in the latents)
    dists = []
    for j in np.linspace(0, len(cut) - 1, 8).astype(int):
        row = cut.iloc[j]
        with h5py.File(s["pre"]) as f:
            img = f["valid" if row.pp_type == 0 else "train"][int(row.pp_idx)][0]
        emb, pp_img, table_file, DT, latents = umap_image(s["opts"], img)
        assert emb.shape == (1, 2) and latents.shape == (1, 16) and pp_img.shape == (1, 3, 16, 16)
        assert DT == pytest.approx(row.DT40, abs=1e-6)
        assert table_file == s["out"]
        dists.append(float(np.hypot(emb[0, 0] - row.US0, emb[0, 1] - row.US1)))
    span = float(np.ptp(cut.US0.to_numpy()))
    assert max(dists) < 0.5, f"distances to the stored US0/US1: {np.round(dists, 3)} (map span {span:.1f})"
    # a new image (not in the training set) goes through UMAP's transform and lands on the map
    from nenya.analyze_image import _stored_position

    reducer, _ = nenya_umap.load(s["opts"], DT=float(cut.iloc[0].DT40))
    assert _stored_position(reducer, latents + 0.01) is None
    # the pickle loads only from the UMAP dir, and only as nenya wrote it
    reducer = nenya_umap.load_umap(s["pkl"])
    assert hasattr(reducer, "transform")
    outside = tmp_path / "elsewhere_UMAP.pkl"
    outside.write_bytes(open(s["pkl"], "rb").read())
    with pytest.raises(nenya_umap.UMAPFileError, match="outside the UMAP dir"):
        nenya_umap.load_umap(outside)
    with open(s["pkl"], "ab") as f:
        f.write(b"x")
    with pytest.raises(nenya_umap.UMAPFileError, match="not written by nenya"):
        nenya_umap.load(s["opts"], DT=float(s["cut"].DT40.iloc[0]))
