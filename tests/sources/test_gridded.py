"""The xarray source: NetCDF and Zarr fields cut into tiles through `nenya extract`, vectors equal to
the encoder on the tiles the test cuts, the NaN policy, curvilinear coordinates, whole fields, and a
variable of the wrong rank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from nenya._errors import InputError
from nenya.cli import main
from nenya.encoders import load_encoder
from nenya.sources import GridOptions, SourceOptions
from nenya.sources.gridded import GriddedSource
from photokit import sst_field


def _read(src):
    plan = src.plan(5)
    batches = [b for s in plan.shards for b in src.read(s, 4)]
    status = [st for b in batches for st in (b.status or ["ok"] * len(b))]
    meta = {c: [v for b in batches for v in b.metadata[c]] for c in batches[0].metadata}
    return [i for b in batches for i in b.ids], np.concatenate([b.data for b in batches]), status, meta


def test_zarr_tiles_through_extract_equal_the_encoder_on_the_same_tiles(checkpoint, tmp_path):
    path, _ = checkpoint
    ds = sst_field(times=2, h=20, w=24, seed=3)
    ds.to_zarr(tmp_path / "sst.zarr", mode="w", consolidated=False)
    out = tmp_path / "v.parquet"
    args = ["extract", "--source", f"xarray:{tmp_path / 'sst.zarr'}", "--var", "sst", "--sample-dim", "time"]
    assert (
        main([*args, "--tile", "8", "--stride", "6", "--model", f"supcon:{path}", "-o", str(out), "--no-progress"]) == 0
    )
    df = pd.read_parquet(out)
    tiles = [(t, y, x) for t in range(2) for y in (0, 6, 12) for x in (0, 6, 12)]  # 24 - 8 = 16: x = 18 does not fit
    assert list(df["y0"]) == [y for _, y, _ in tiles] and list(df["x0"]) == [x for _, _, x in tiles]
    x = np.stack([ds["sst"].values[t, y : y + 8, x : x + 8][None] for t, y, x in tiles])
    enc = load_encoder(f"supcon:{path}").to("cpu")
    with torch.no_grad():
        expected = enc.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.stack(df["vector"]), expected, rtol=1e-4, atol=1e-5)
    lat = ds["lat"].values
    assert df["lat"].iloc[0] == pytest.approx((lat[3] + lat[4]) / 2) and set(df["time"]) == {
        "2020-01-01T00:00:00",
        "2020-01-02T00:00:00",
    }


def test_nan_tiles_are_skipped_or_filled_as_documented(tmp_path):
    ds = sst_field(times=1, h=8, w=12, seed=1)
    v = ds["sst"].values
    v[0, :4, :4] = np.nan  # a whole tile of land: skipped
    v[0, 4, 4] = np.nan  # one pixel of 16: filled with the tile's valid mean
    ds.to_netcdf(tmp_path / "sst.nc", engine="h5netcdf")
    src = GriddedSource(str(tmp_path / "sst.nc"), var="sst", tile=4, max_nan_fraction=0.25)
    ids, data, status, meta = _read(src)
    assert len(ids) == 6 and status[0] == "skipped:nan fraction 1.000 > 0.25" and set(status[1:]) == {"ok"}
    assert meta["nan_fraction"][0] == 1.0 and meta["nan_fraction"][4] == pytest.approx(1 / 16)
    tile = v[0, 4:8, 4:8]
    filled = np.where(np.isnan(tile), np.nanmean(tile), tile)
    np.testing.assert_allclose(data[4, 0], filled, rtol=1e-6)
    assert not np.isnan(data).any()


def test_curvilinear_coordinates_and_whole_fields(tmp_path):
    yy, xx = np.meshgrid(np.arange(6.0), np.arange(8.0), indexing="ij")
    ds = xr.Dataset(
        {"ref": (("y", "x"), np.arange(48, dtype=np.float32).reshape(6, 8))},
        coords={"lat": (("y", "x"), 30 + yy + 0.1 * xx), "lon": (("y", "x"), -100 + xx)},
    )
    ds.to_netcdf(tmp_path / "radar.nc", engine="h5netcdf")
    ids, data, _, meta = _read(GriddedSource(str(tmp_path / "radar.nc"), tile=3))
    assert ids == ["radar.nc/0_0", "radar.nc/0_3", "radar.nc/3_0", "radar.nc/3_3"]
    assert meta["lat"][3] == pytest.approx(30 + 4 + 0.1 * 4) and meta["lon"][1] == pytest.approx(-100 + 4)
    ids, data, _, _ = _read(GriddedSource(str(tmp_path / "radar.nc")))
    assert ids == ["radar.nc"] and data.shape == (1, 1, 6, 8)


def test_a_variable_of_the_wrong_rank_is_a_clear_error(tmp_path):
    ds = xr.Dataset({"t": (("time", "level", "y", "x"), np.zeros((2, 3, 4, 4), np.float32))})
    ds.to_netcdf(tmp_path / "cube.nc", engine="h5netcdf")
    options = SourceOptions(grid=GridOptions(var="t", tile=2))
    with pytest.raises(InputError) as err:
        GriddedSource.from_spec(str(tmp_path / "cube.nc"), options).plan(4)
    assert "cube.nc" in str(err.value) and "4 dimensions ['time', 'level', 'y', 'x']" in str(err.value)
    xr.Dataset({"t": (("y", "x"), np.zeros((4, 4), np.float32))}).to_netcdf(tmp_path / "flat.nc", engine="h5netcdf")
    with pytest.raises(InputError, match="larger than the field"):
        GriddedSource(str(tmp_path / "flat.nc"), var="t", tile=9).plan(4)


def test_skipped_nan_tiles_are_listed_in_the_status_table(checkpoint, tmp_path):
    path, _ = checkpoint
    ds = sst_field(times=2, h=8, w=8, seed=2)
    ds["sst"].values[1, :, :4] = np.nan  # day 2: the western half is land
    ds.to_netcdf(tmp_path / "sst.nc", engine="h5netcdf")
    out = tmp_path / "v.parquet"
    args = ["extract", "--source", f"xarray:{tmp_path / 'sst.nc'}", "--tile", "4", "--max-nan-fraction", "0.2"]
    assert main([*args, "--model", f"supcon:{path}", "-o", str(out), "--no-progress"]) == 0
    status = pd.read_csv(str(out) + ".status.csv")
    skipped = status[status["status"] != "ok"]
    assert list(skipped["id"]) == ["2020-01-02T00:00:00/0_0", "2020-01-02T00:00:00/4_0"]
    assert set(skipped["status"]) == {"skipped:nan fraction 1.000 > 0.2"}
    df = pd.read_parquet(out)
    assert len(df) == 8 - 2
    v = ds["sst"].values
    kept = [(t, y, x) for t in range(2) for y in (0, 4) for x in (0, 4) if not (t == 1 and x == 0)]
    x = np.stack([v[t, y : y + 4, x : x + 4][None] for t, y, x in kept])  # a NetCDF read by the test itself
    enc = load_encoder(f"supcon:{path}").to("cpu")
    with torch.no_grad():
        np.testing.assert_allclose(
            np.stack(df["vector"]), enc.encode(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5
        )
