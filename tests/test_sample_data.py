"""The demo data's planted structure (nenya.sample_data's docstring): the eddies' share rises by the
planted slope per decade, the filaments' share peaks in boreal winter by the planted amplitude, and
fronts and filaments cluster in the western boundary current boxes. The images do not depend on it."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pandas as pd
import pytest

from nenya import sample_data as sd

N = 20_000  # about 1 s at 16x16; the shares below are then within a few hundredths of the truth


def _table(path, part="valid") -> pd.DataFrame:
    with h5py.File(path, "r") as f:
        raw = f[f"{part}_metadata"][:]
        cols = [c.decode() if isinstance(c, bytes) else str(c) for c in f[f"{part}_metadata"].attrs["columns"]]
    assert raw.dtype.kind == "S"  # bytes strings, as Nenya stores its tables
    df = pd.DataFrame(raw.astype(str), columns=cols)
    return df.assign(lat=df["lat"].astype(float), lon=df["lon"].astype(float), t=pd.to_datetime(df["datetime"]))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "x_preproc.h5"
    sd.write_preproc(path, n_valid=N, n_train=50, size=16, seed=0)
    return path


def test_planted_shares_formula():
    t = sd.YEARS[0] + (np.arange(12 * (sd.YEARS[1] - sd.YEARS[0] + 1)) + 0.5) / 12
    month = np.arange(len(t)) % 12 + 1
    p = sd.planted_shares(t, month)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p > 0.05).all() and (p < 0.6).all()
    eddy, filament = p[:, sd.CLASSES.index("eddy")], p[:, sd.CLASSES.index("filament")]
    assert np.polyfit(t, eddy, 1)[0] * 10 == pytest.approx(sd.EDDY_SLOPE_PER_DECADE)
    assert eddy.mean() == pytest.approx(0.25) and filament.mean() == pytest.approx(0.25)
    assert filament[0] == pytest.approx(0.25 + sd.FILAMENT_AMPLITUDE)  # January
    assert filament[6] == pytest.approx(0.25 - sd.FILAMENT_AMPLITUDE)  # July


def test_metadata_columns_and_ranges(planted):
    df = _table(planted)
    assert list(df.columns[:6]) == ["lat", "lon", "datetime", "DT40", "pattern", "pp_idx"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in df["datetime"])
    assert df["t"].min() >= pd.Timestamp(f"{sd.YEARS[0]}-01-01")
    assert df["t"].max() <= pd.Timestamp(f"{sd.YEARS[1]}-12-31")
    assert df["lat"].between(-60, 60).all() and df["lon"].between(-180, 180).all()
    assert set(df["pattern"]) == set(sd.CLASSES)
    assert (df["pp_idx"].astype(int) == np.arange(N)).all()
    assert len(_table(planted, "train")) == 50


def test_images_do_not_depend_on_the_metadata(planted):
    imgs, labels = sd.make_cutouts(N, size=16, seed=0)
    with h5py.File(planted, "r") as f:
        np.testing.assert_array_equal(f["valid"][:, 0], imgs)
    np.testing.assert_array_equal(_table(planted)["pattern"], np.asarray(sd.CLASSES)[labels])


def test_eddy_share_rises_by_the_planted_slope(planted):
    df = _table(planted)
    yearly = (df["pattern"] == "eddy").groupby(df["t"].dt.year).mean()
    slope = np.polyfit(yearly.index + 0.5, yearly.to_numpy(), 1)[0] * 10
    assert slope == pytest.approx(sd.EDDY_SLOPE_PER_DECADE, abs=0.03)  # about 5 standard errors
    filament = (df["pattern"] == "filament").groupby(df["t"].dt.year).mean()
    assert abs(np.polyfit(filament.index + 0.5, filament.to_numpy(), 1)[0] * 10) < 0.03  # no trend planted


def test_filament_share_peaks_in_boreal_winter(planted):
    df = _table(planted)
    by_month = (df["pattern"] == "filament").groupby(df["t"].dt.month).mean()
    assert by_month.idxmax() in (12, 1, 2) and by_month.idxmin() in (6, 7, 8)
    assert by_month[1] - by_month[7] == pytest.approx(2 * sd.FILAMENT_AMPLITUDE, abs=0.06)
    eddy = (df["pattern"] == "eddy").groupby(df["t"].dt.month).mean()
    assert eddy.max() - eddy.min() < 0.06  # no cycle planted
    counts = df.groupby(df["t"].dt.month).size()
    assert counts.min() > 0.85 * counts.mean()  # every month about as full


def test_fronts_and_filaments_cluster_in_the_boxes(planted):
    df = _table(planted)
    inside = np.zeros(len(df), bool)
    for lat0, lat1, lon0, lon1 in sd.BOXES.values():
        inside |= df["lat"].between(lat0, lat1).to_numpy() & df["lon"].between(lon0, lon1).to_numpy()
    share = pd.Series(inside).groupby(df["pattern"]).mean()
    assert share["front"] == pytest.approx(sd.IN_BOXES, abs=0.03)
    assert share["filament"] == pytest.approx(sd.IN_BOXES, abs=0.03)
    assert share["eddy"] == share["noise"] == 0.0  # the open ocean only
    assert set(df.loc[inside, "pattern"]) == {"front", "filament"}
    for lat0, lat1, lon0, lon1 in sd.BOXES.values():  # each box gets about half
        box = df["lat"].between(lat0, lat1) & df["lon"].between(lon0, lon1)
        assert box.sum() == pytest.approx(inside.sum() / 2, rel=0.1)


def test_same_seed_same_metadata(tmp_path):
    a = sd.write_preproc(tmp_path / "a.h5", n_valid=40, n_train=10, size=16, seed=3)
    b = sd.write_preproc(tmp_path / "b.h5", n_valid=40, n_train=10, size=16, seed=3)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for k in ("valid_metadata", "train_metadata"):
            np.testing.assert_array_equal(fa[k][:], fb[k][:])
