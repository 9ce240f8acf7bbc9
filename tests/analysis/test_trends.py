"""nenya trends: a region's share by month, year and place against independent computations."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nenya.analysis.trends import grid_cells, region_mask, trends

SLOPE = 0.03  # planted: the region's share rises by 0.03 per decade
SEASON = 0.05  # and swings by +-0.05 over the year, highest in January


def collection(seed: int, *, slope: float = SLOPE, season: float = SEASON, years=(2003, 2020), per_month: int = 200):
    """Items with a date, a position and ``U0``; the region (``pattern == 'front'``) has a known share
    0.2 + season * cos(month) + slope * decades."""
    rng = np.random.default_rng(seed)
    months = pd.period_range(f"{years[0]}-01", f"{years[1]}-12", freq="M")
    n = per_month * len(months)
    month_of = np.repeat(np.arange(len(months)), per_month)
    start = months.to_timestamp().to_numpy()[month_of]
    t = pd.to_datetime(start) + pd.to_timedelta(rng.uniform(0, 27, n), unit="D")
    decades = (t.year + (t.month - 0.5) / 12 - years[0]) / 10
    p = 0.2 + season * np.cos(2 * np.pi * (t.month - 1) / 12) + slope * decades
    front = rng.random(n) < p
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    return pd.DataFrame(
        {
            "id": [f"c/{i}" for i in range(n)],
            "datetime": t.strftime("%Y-%m-%dT%H:%M:%S"),
            "lat": lat,
            "lon": rng.uniform(-180, 180, n),
            "pattern": np.where(front, "front", "other"),
            "U0": np.where(front, 1.0, -1.0) + rng.normal(0, 0.1, n),
            "DT40": rng.uniform(0, 3, n),
        }
    )


def test_planted_slope_and_season_are_found_and_equal_an_independent_statsmodels_fit():
    import statsmodels.formula.api as smf

    table = collection(0)
    mask, what = region_mask(table, where="pattern == 'front'")
    r = trends(table, mask, description=what)
    ols = r.fit["ols"]
    assert abs(ols["slope_per_decade"] - SLOPE) < 2 * ols["se"] and ols["p"] < 0.01
    assert ols["seasonal_amplitude"] == pytest.approx(2 * SEASON, abs=0.02)
    # the fit written here, from the table alone: monthly shares, 11 month dummies and a linear time term
    t = pd.to_datetime(table["datetime"])
    m = table.assign(year=t.dt.year, month=t.dt.month, front=table["pattern"] == "front")
    m = m.groupby(["year", "month"])["front"].mean().rename("share").reset_index()
    m["time"] = m["year"] + (m["month"] - 0.5) / 12
    ref = smf.ols("share ~ C(month) + time", data=m).fit()
    assert 10 * ref.params["time"] == pytest.approx(ols["slope_per_decade"], rel=1e-9)
    assert 10 * ref.bse["time"] == pytest.approx(ols["se"], rel=1e-9)
    assert ref.pvalues["time"] == pytest.approx(ols["p"], rel=1e-6)
    glm = r.fit["glm"]
    assert glm["slope_per_decade_logit"] > 0 and glm["p"] < 0.01
    # by month of year and by year: the shares pandas finds
    assert r.seasonal["share"].to_numpy() == pytest.approx(m.groupby("month")["share"].mean().to_numpy(), abs=0.01)
    by_year = table.assign(year=t.dt.year).groupby("year")["pattern"].apply(lambda s: (s == "front").mean())
    assert r.yearly["share"].to_numpy() == pytest.approx(by_year.to_numpy(), rel=1e-12)


def test_no_trend_is_rarely_called_significant():
    """Over 50 seeds without a trend, the fit says p < 0.05 at most 10% of the time."""
    hits = 0
    for seed in range(50):
        table = collection(seed, slope=0.0, years=(2010, 2019), per_month=60)
        r = trends(table, (table["pattern"] == "front").to_numpy(), min_count=10)
        hits += r.fit["ols"]["p"] < 0.05
    assert hits <= 5, hits


def test_grid_shares_equal_a_pandas_groupby():
    table = collection(1, years=(2010, 2012))
    mask = (table["pattern"] == "front").to_numpy()
    r = trends(table, mask, latlon=("lat", "lon"), cell_deg=20.0, min_count=30)
    band, lbin = grid_cells(table["lat"].to_numpy(), table["lon"].to_numpy(), 20.0)
    ref = (
        pd.DataFrame({"band": band, "bin": lbin, "front": mask}).groupby(["band", "bin"])["front"].agg(["mean", "size"])
    )
    got = r.grid.set_index(["band", "bin"])
    assert len(got) == len(ref) and np.allclose(got["share"], ref["mean"].loc[got.index])
    assert (got["n"] == ref["size"].loc[got.index]).all() and (got["used"] == (got["n"] >= 30)).all()
    # equal-area: every cell the same area on the sphere (sin-latitude bands, equal longitude bins)
    area = (np.sin(np.radians(got["lat1"])) - np.sin(np.radians(got["lat0"]))) * (got["lon1"] - got["lon0"])
    assert np.allclose(area, area.iloc[0]) and got["lat0"].min() == pytest.approx(-90)


def test_within_a_subset_and_the_other_ways_to_give_a_region():
    table = collection(2, years=(2010, 2013))
    r = trends(table, (table["pattern"] == "front").to_numpy(), within="DT40 > 1.5")
    keep = table["DT40"] > 1.5
    assert r.n == keep.sum() and r.k == ((table["pattern"] == "front") & keep).sum()
    poly, _ = region_mask(table, polygon=[(0.5, -10), (2, -10), (2, 10), (0.5, 10)], xy=("U0", "U0"))
    assert (poly == (table["U0"] > 0.5).to_numpy()).all()
    lab, _ = region_mask(table, label=("pattern", "front"))
    ids, _ = region_mask(table, ids=table["id"][lab].tolist())
    assert (lab == ids).all() and lab.sum() > 0


def test_bad_input_is_said_not_hidden():
    table = collection(3, years=(2010, 2012), per_month=40)
    front = (table["pattern"] == "front").to_numpy()
    with pytest.raises(ValueError, match="no date column 'when'"):
        trends(table, front, time="when")
    bad = table.copy()
    bad.loc[5, "datetime"] = "yesterday"
    with pytest.raises(ValueError, match="1 value.* not dates .*'yesterday'"):
        trends(bad, front)
    with pytest.raises(ValueError, match="holds no item"):
        trends(table, np.zeros(len(table), bool))
    with pytest.raises(ValueError, match="holds every one"):
        trends(table, np.ones(len(table), bool))
    with pytest.raises(ValueError, match="--where 'nope > 1'"):
        region_mask(table, where="nope > 1")
    with pytest.raises(ValueError, match="one way"):
        region_mask(table, where="DT40 > 1", label=("pattern", "front"))
    few = table[~table["datetime"].str.startswith("2011-03")].copy()  # March 2011 thinned to a few items
    few = pd.concat([few, table[table["datetime"].str.startswith("2011-03")].head(3)])
    r = trends(few, (few["pattern"] == "front").to_numpy(), min_count=10)
    assert r.fit["months_masked"] == 1 and any("masked" in n for n in r.notes)
    undated = table.copy()
    undated.loc[:9, "datetime"] = None
    assert any("10 item(s) without a date" in n for n in trends(undated, front).notes)
    # too few months for the fit: the shares stand, no fit, and the notes and the figure say why
    short = trends(table[table["datetime"] < "2010-07"], front[(table["datetime"] < "2010-07").to_numpy()])
    assert short.fit is None and any(n.startswith("no trend fitted: 6 month(s)") for n in short.notes)
    assert short.seasonal["n"].sum() == (table["datetime"] < "2010-07").sum()


def test_cli_writes_tables_summary_and_figure(tmp_path):
    table = collection(4, years=(2008, 2014), per_month=80)
    path = tmp_path / "x_umap.parquet"
    table.to_parquet(path)
    out = tmp_path / "fronts"
    r = subprocess.run(
        [sys.executable, "-m", "nenya", "trends", str(path), "--where", "U0 > 0", "--within", "DT40 > 0.5",
         "--cell-deg", "30", "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "per decade" in r.stdout and "of DT40 > 0.5" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["region"] == "where U0 > 0" and summary["top_cells"]
    assert summary["in_region"] == ((table["U0"] > 0) & (table["DT40"] > 0.5)).sum()
    for name in ("monthly.csv", "seasonal.csv", "yearly.csv", "grid.csv", "trends.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "trends.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = subprocess.run([sys.executable, "-m", "nenya", "trends", str(path), "--where", "U0 > 99"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "holds no item" in bad.stderr
