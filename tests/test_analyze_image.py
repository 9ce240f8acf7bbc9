"""nenya.analyze_image: calc_DT against Nenya's value and an independent computation; get_latents equals extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import reference_latents
from nenya.analyze_image import calc_DT, get_latents


def _dt_reference(fields: np.ndarray, c: int) -> np.ndarray:
    """An independent DT: loop over images, sort the window, interpolate the 10th/90th percentiles by hand."""
    out = []
    for f in fields:
        h, w = f.shape
        win = np.sort(
            f[h // 2 - c // 2 : h // 2 + c // 2, w // 2 - c // 2 : w // 2 + c // 2].ravel().astype(np.float64)
        )

        def pct(q, win=win):
            pos = q / 100 * (len(win) - 1)
            lo = int(np.floor(pos))
            hi = min(lo + 1, len(win) - 1)
            return win[lo] + (win[hi] - win[lo]) * (pos - lo)

        out.append(pct(90) - pct(10))
    return np.array(out)


def test_calc_dt_on_real_modis_cutout(shared_sst):
    img = np.load(shared_sst / "raw_sst_cutout.npy")
    dt = calc_DT(img, [40, 5])
    assert isinstance(dt, float)
    assert round(dt, 4) == 1.0441
    assert calc_DT(img - img.mean(), [40, 5]) == pytest.approx(dt, abs=1e-5)  # shift-invariant


@pytest.mark.parametrize("shape", [(7, 64, 64), (5, 1, 64, 64), (4, 3, 64, 64), (6, 128, 128), (3, 33, 33)])
def test_calc_dt_batches_match_independent_percentiles(shape):
    rng = np.random.default_rng(1)
    batch = rng.normal(size=shape).astype(np.float32) * rng.uniform(0.1, 3)
    dt = calc_DT(batch, [40, 5] if shape[-1] >= 40 else [20, 2])
    fields = batch[:, 0] if batch.ndim == 4 else batch
    assert isinstance(dt, np.ndarray) and dt.shape == (shape[0],)
    np.testing.assert_allclose(dt, _dt_reference(fields, 40 if shape[-1] >= 40 else 20), rtol=1e-5, atol=1e-6)


def test_calc_dt_rejects_bad_shapes():
    with pytest.raises(ValueError, match="calc_DT takes"):
        calc_DT(np.zeros(10), [40, 5])
    with pytest.raises(ValueError, match="does not fit"):
        calc_DT(np.zeros((16, 16)), [40, 5])


@pytest.mark.parametrize("layout", ["hw", "1hw", "chw"])
def test_get_latents_equals_model(checkpoint, opt, layout):
    path, model = checkpoint
    rng = np.random.default_rng(0)
    img = rng.normal(size=(16, 16)).astype(np.float32) + 20.0  # raw SST: demeaned inside
    arg = {"hw": img, "1hw": img[None], "chw": np.repeat(img[None], 3, axis=0)}[layout]
    latents, pp = get_latents(arg, str(path), opt)
    assert latents.shape == (1, opt.feat_dim) and latents.dtype == np.float32
    assert pp.shape == (1, 3, 16, 16)
    assert abs(pp.mean()) < 1e-5
    expected = reference_latents(model, (img - img.mean())[None])
    np.testing.assert_allclose(latents, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=1), 1.0, atol=1e-5)


def test_get_latents_rejects_nan(checkpoint, opt):
    img = np.zeros((16, 16), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        get_latents(img, str(checkpoint[0]), opt)
    assert torch.is_grad_enabled()
