"""Synthetic SST-like cutouts for the demo and the tests: fronts, eddies, filaments, noise.

The images (:func:`make_cutouts`) do not depend on where or when a cutout is. Their metadata
(:func:`write_preproc`) carries a planted structure, so that ``nenya trends`` and ``nenya outliers``
have a known truth to find (docs/science.md, "A worked example on the demo data"):

- **Dates**: 2003-01-01 to 2020-12-31 (Nenya's MODIS years, 216 months). Each cutout's month is drawn
  given its pattern, with probability proportional to the pattern's planted share that month
  (:func:`planted_shares`); its day is uniform within the month. With the patterns equally common (as
  :func:`make_cutouts` draws them), every month then holds the same expected number of cutouts and a
  pattern's expected share of month ``t`` is its planted share:

  - eddy: ``0.25 + 0.15 * (t - 2012) / 10``, with ``t`` the middle of the month in decimal years: a
    trend of **+0.15 per decade** (0.116 in January 2003, 0.384 in December 2020), no seasonal cycle;
  - filament: ``0.25 + 0.15 * cos(2 pi (month - 1) / 12)``: **0.40 in January, 0.10 in July** (more in
    boreal winter; month effects span 0.30, January to July), no trend;
  - front and noise: the rest, half each (so each falls by 0.075 per decade and has half the
    filaments' cycle, in opposite phase).

- **Positions** (lat in [-60, 60], lon in [-180, 180], uniform in degrees unless said):
  60% of the fronts and of the filaments lie in two western boundary current boxes, half in each:
  the **Gulf Stream** (35-41N, 75-55W) and the **Kuroshio** (30-40N, 140-160E); the other fronts and
  filaments, every eddy and every noise cutout lie anywhere outside the boxes (the open ocean). A box
  thus holds fronts and filaments only, about half each; outside the boxes fronts are about 14% of
  the cutouts (200 of 1,400 for 2,000 cutouts).

Stored as Nenya stores it: one bytes-string table per partition, columns lat, lon, datetime
(YYYY-MM-DD), DT40 (T90 - T10 of the central 40x40 pixels, from the image), pattern, pp_idx.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

CLASSES = ("front", "eddy", "filament", "noise")

# The planted structure of write_preproc's metadata (see the module's docstring)
YEARS = (2003, 2020)  # first and last year of the dates
EDDY_SLOPE_PER_DECADE = 0.15  # the eddies' share rises by this much per decade, from 0.25 at YEARS' middle
FILAMENT_AMPLITUDE = 0.15  # the filaments' share is 0.25 + this * cos(2 pi (month - 1) / 12)
BOXES = {"Gulf Stream": (35.0, 41.0, -75.0, -55.0), "Kuroshio": (30.0, 40.0, 140.0, 160.0)}  # lat0, lat1, lon0, lon1
IN_BOXES = 0.6  # the share of fronts and of filaments placed in BOXES (split evenly between them)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, scale: float) -> np.ndarray:
    """Gaussian random fields with a red spectrum (larger ``scale`` = smoother)."""
    k = np.fft.fftfreq(size)
    kk = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    spectrum = np.exp(-((kk * scale) ** 2))
    white = rng.standard_normal((n, size, size))
    field = np.fft.ifft2(np.fft.fft2(white) * spectrum).real
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def make_cutouts(n: int, *, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` demeaned float32 cutouts (n, size, size) in kelvin, and their class index.

    Each holds a smooth background plus one pattern: a front (a tanh step at a random angle),
    an eddy (a warm or cold Gaussian core), a filament (a narrow band), or noise only.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - (size - 1) / 2
    out = 0.15 * _smooth_noise(rng, n, size, scale=12.0)
    for i, c in enumerate(labels):
        amp = rng.uniform(0.5, 2.0)
        theta = rng.uniform(0, 2 * np.pi)
        dist = xx * np.cos(theta) + yy * np.sin(theta) - rng.uniform(-8, 8)
        if CLASSES[c] == "front":
            out[i] += amp * np.tanh(dist / rng.uniform(1.5, 4.0))
        elif CLASSES[c] == "eddy":
            cx, cy = rng.uniform(-12, 12, 2)
            r = rng.uniform(5, 12)
            out[i] += rng.choice([-1, 1]) * amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2))
        elif CLASSES[c] == "filament":
            out[i] += amp * np.exp(-(dist**2) / (2 * rng.uniform(1.0, 2.5) ** 2))
        else:
            out[i] += 0.3 * _smooth_noise(rng, 1, size, scale=3.0)[0]
    out -= out.mean(axis=(1, 2), keepdims=True)
    return out.astype(np.float32), labels


def planted_shares(t: np.ndarray, month: np.ndarray) -> np.ndarray:
    """The planted share of each pattern (columns in :data:`CLASSES` order) at decimal year ``t``
    (the middle of the month) and calendar month ``month`` (1-12); rows sum to 1."""
    t, month = np.broadcast_arrays(np.asarray(t, np.float64), np.asarray(month, np.float64))
    middle = (YEARS[0] + YEARS[1] + 1) / 2  # 2012.0: the middle of the period
    eddy = 0.25 + EDDY_SLOPE_PER_DECADE * (t - middle) / 10
    filament = 0.25 + FILAMENT_AMPLITUDE * np.cos(2 * np.pi * (month - 1) / 12)
    rest = (1 - eddy - filament) / 2
    return np.stack([rest, eddy, filament, rest], axis=-1)


def _dates(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A date (datetime64[D]) for each cutout, its month drawn given its pattern (the module's docstring)."""
    months = np.arange(np.datetime64(f"{YEARS[0]}-01"), np.datetime64(f"{YEARS[1] + 1}-01"))
    first = months.astype("datetime64[D]")
    length = ((months + 1).astype("datetime64[D]") - first).astype(np.int64)
    calendar = months.astype(np.int64) % 12 + 1
    weight = planted_shares(YEARS[0] + (np.arange(len(months)) + 0.5) / 12, calendar)
    out = np.empty(len(labels), "datetime64[D]")
    for c in range(len(CLASSES)):
        rows = np.flatnonzero(labels == c)
        pick = rng.choice(len(months), size=len(rows), p=weight[:, c] / weight[:, c].sum())
        out[rows] = first[pick] + (rng.random(len(rows)) * length[pick]).astype(np.int64)
    return out


def _in_boxes(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    inside = np.zeros(len(lat), bool)
    for lat0, lat1, lon0, lon1 in BOXES.values():
        inside |= (lat >= lat0) & (lat <= lat1) & (lon >= lon0) & (lon <= lon1)
    return inside


def _positions(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude of each cutout: fronts and filaments partly in BOXES, the rest outside."""
    n = len(labels)
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(-180, 180, n)
    clustered = np.isin(labels, [CLASSES.index("front"), CLASSES.index("filament")])
    boxed = clustered & (rng.random(n) < IN_BOXES)
    which = rng.integers(0, len(BOXES), n)
    for b, (lat0, lat1, lon0, lon1) in enumerate(BOXES.values()):
        rows = np.flatnonzero(boxed & (which == b))
        lat[rows], lon[rows] = rng.uniform(lat0, lat1, len(rows)), rng.uniform(lon0, lon1, len(rows))
    redraw = ~boxed & _in_boxes(lat, lon)
    while redraw.any():  # the open ocean: redraw what fell in a box
        lat[redraw], lon[redraw] = rng.uniform(-60, 60, redraw.sum()), rng.uniform(-180, 180, redraw.sum())
        redraw &= _in_boxes(lat, lon)
    return lat, lon


def write_preproc(
    path: str | os.PathLike,
    *,
    n_valid: int = 1000,
    n_train: int = 0,
    size: int = 64,
    seed: int = 0,
    channel_axis: bool = True,
) -> str:
    """Write a Nenya preproc file: ``valid`` (and ``train``) cutouts with ``*_metadata`` tables whose
    dates and positions carry the planted structure of the module's docstring."""
    rng = np.random.default_rng(seed + 1)
    with h5py.File(path, "w") as f:
        for part, n, s in (("valid", n_valid, seed), ("train", n_train, seed + 7)):
            if n <= 0:
                continue
            imgs, labels = make_cutouts(n, size=size, seed=s)
            f.create_dataset(part, data=imgs[:, None] if channel_axis else imgs)
            dt = np.percentile(imgs[:, 12:52, 12:52], 90, axis=(1, 2)) - np.percentile(
                imgs[:, 12:52, 12:52], 10, axis=(1, 2)
            )
            cols = ["lat", "lon", "datetime", "DT40", "pattern", "pp_idx"]
            dates = _dates(rng, labels)
            lat, lon = _positions(rng, labels)
            table = np.column_stack(
                [
                    np.round(lat, 4).astype(str),
                    np.round(lon, 4).astype(str),
                    dates.astype(str),
                    np.round(dt, 4).astype(str),
                    np.asarray(CLASSES)[labels],
                    np.arange(n).astype(str),
                ]
            ).astype("S")
            meta = f.create_dataset(f"{part}_metadata", data=table)
            meta.attrs["columns"] = [c.encode() for c in cols]
    return str(path)
