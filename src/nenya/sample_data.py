"""Synthetic SST-like cutouts for the demo and the tests: fronts, eddies, filaments, noise."""

from __future__ import annotations

import os

import h5py
import numpy as np

CLASSES = ("front", "eddy", "filament", "noise")


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


def write_preproc(
    path: str | os.PathLike,
    *,
    n_valid: int = 1000,
    n_train: int = 0,
    size: int = 64,
    seed: int = 0,
    channel_axis: bool = True,
) -> str:
    """Write a Nenya preproc file: ``valid`` (and ``train``) cutouts with ``*_metadata`` tables."""
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
            days = rng.integers(0, 3650, n)
            table = np.column_stack(
                [
                    np.round(rng.uniform(-60, 60, n), 4).astype(str),
                    np.round(rng.uniform(-180, 180, n), 4).astype(str),
                    (np.datetime64("2010-01-01") + days).astype(str),
                    np.round(dt, 4).astype(str),
                    np.asarray(CLASSES)[labels],
                    np.arange(n).astype(str),
                ]
            ).astype("S")
            meta = f.create_dataset(f"{part}_metadata", data=table)
            meta.attrs["columns"] = [c.encode() for c in cols]
    return str(path)
