"""nenya outliers: a normalizing flow's log-likelihood (as Ulmo) and a kNN score, on planted anomalies."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nenya._errors import InputError, NenyaError
from nenya.analysis.flow import fit_flow, load_flow
from nenya.analysis.outliers import outliers
from nenya.sinks.parquet import ABOUT_KEY

D = 16


def bulk_and_anomalies(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors from four correlated Gaussian clusters, 0.1% of them replaced by anomalies drawn where the
    bulk has no mass (its clusters' points moved 6 standard deviations along a direction none varies in)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (4, D))
    mix = rng.normal(0, 1, (D, D)) / np.sqrt(D)
    v = centres[rng.integers(0, 4, n)] + rng.normal(0, 1, (n, D)) @ mix
    planted = rng.choice(n, n // 1000, replace=False)
    away = rng.normal(0, 1, D)
    v[planted] += 6 * away / np.linalg.norm(away) * np.std(v, axis=0).mean()
    return v.astype(np.float32), planted


def write_latents(path, vectors: np.ndarray, *, about: dict | None = None, meta: dict | None = None) -> str:
    n, d = vectors.shape
    cols = {"id": pa.array([f"v/{i}" for i in range(n)])}
    cols |= {k: pa.array(v) for k, v in (meta or {}).items()}
    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), d)
    table = pa.table(cols)
    if about is not None:
        table = table.replace_schema_metadata({ABOUT_KEY: json.dumps(about).encode()})
    pq.write_table(table, path)
    return str(path)


ABOUT = {"model": "supcon:a.pth", "dim": D, "vectors": "digest-a"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    v, rows = bulk_and_anomalies()
    path = write_latents(tmp_path_factory.mktemp("outliers") / "x.parquet", v, about=ABOUT)
    return path, v, rows


@pytest.mark.slow
def test_the_flow_ranks_planted_anomalies_lowest_and_the_knn_score_too(planted):
    path, v, rows = planted
    flow = outliers(path, method="flow", fraction=0.002, fit_sample=20_000, progress=False)
    low = set(flow.table.loc[flow.table["outlier"], "id"])  # the lowest 0.2%
    found = np.mean([f"v/{r}" in low for r in rows])
    assert found >= 0.9, found
    knn = outliers(path, method="knn", fraction=0.002, k=10, progress=False)
    found = np.mean([f"v/{r}" in set(knn.table.loc[knn.table["outlier"], "id"]) for r in rows])
    assert found >= 0.8, found
    t = flow.table
    assert (t.sort_values("rank")["score"].is_monotonic_increasing) and t["rank"].min() == 1
    assert t["outlier"].sum() == 40 and flow.record["threshold"] == t.loc[t["outlier"], "score"].max()


@pytest.mark.slow
def test_the_flow_log_likelihood_equals_the_gaussian_density():
    """Fitted on Gaussian vectors, the flow's LL of held-out points is the analytic log-density (within 1%)."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(1)
    d = 8
    a = rng.normal(0, 1, (d, d))
    cov = a @ a.T / d + 0.5 * np.eye(d)
    mean = rng.normal(5, 2, d)
    x = rng.multivariate_normal(mean, cov, 20_000).astype(np.float32)
    held = rng.multivariate_normal(mean, cov, 2_000).astype(np.float32)
    model = fit_flow(x, epochs=60, progress=False, hidden=(64, 64))
    got, want = model.log_prob(held), multivariate_normal(mean, cov).logpdf(held)
    assert abs(got.mean() - want.mean()) < 0.01 * abs(want.mean()), (got.mean(), want.mean())
    assert np.corrcoef(got, want)[0, 1] > 0.98


def test_a_bf16_fit_reaches_the_held_out_likelihood_of_an_fp32_fit(planted):
    """The fit's precision (auto: bf16 where native) changes its speed, not what it learns: held-out LLs of
    fp32 and bf16 fits agree within 2%; the record names the precision and the batch (a 32nd of the
    training part, at least 256)."""
    _, v, _ = planted
    fits = {p: fit_flow(v[:8000], epochs=10, precision=p, progress=False) for p in ("fp32", "bf16")}
    ll = {p: m.record["heldout_ll"] for p, m in fits.items()}
    assert abs(ll["bf16"] - ll["fp32"]) < 0.02 * abs(ll["fp32"]), ll
    assert [m.record["precision"] for m in fits.values()] == ["fp32", "bf16"]
    assert fits["fp32"].record["batch"] == 256 and fits["fp32"].record["epochs"] <= 10
    with pytest.raises(ValueError, match="precision must be one of"):
        fit_flow(v[:100], precision="fp16", progress=False)


def test_a_saved_flow_scores_identically_in_a_new_process_and_a_pickle_is_refused(planted, tmp_path):
    path, v, _ = planted
    model = fit_flow(v[:3000], epochs=3, progress=False, about=ABOUT)
    saved = model.save(str(tmp_path / "flow.safetensors"))
    np.save(tmp_path / "q.npy", v[:500])
    script = (
        "import numpy as np, sys; from nenya.analysis.flow import load_flow; "
        f"np.save(sys.argv[1], load_flow({saved!r}).log_prob(np.load({str(tmp_path / 'q.npy')!r})))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "ll.npy")], check=True, timeout=300)
    assert np.array_equal(np.load(tmp_path / "ll.npy"), model.log_prob(v[:500]))
    again = load_flow(saved)
    assert again.about == ABOUT and again.record["sample"] == 3000 and again.dim == D
    torch.save(model.flow.state_dict(), tmp_path / "pickled.safetensors")  # a pickle under the right name
    with pytest.raises(NenyaError, match="never unpickles"):
        load_flow(str(tmp_path / "pickled.safetensors"))


def test_a_flow_of_another_model_or_dimension_is_refused_unless_forced(planted, tmp_path):
    path, v, _ = planted
    model = fit_flow(v[:3000], epochs=2, progress=False, about=ABOUT)
    other = write_latents(tmp_path / "other.parquet", v[:2000], about={**ABOUT, "vectors": "digest-b"})
    with pytest.raises(InputError, match="another model.*--force"):
        outliers(other, flow=model, progress=False)
    forced = outliers(other, flow=model, force=True, progress=False)
    assert len(forced.table) == 2000 and forced.record["flow"]["sample"] == 3000
    small = write_latents(tmp_path / "small.parquet", v[:500, :8], about={**ABOUT, "dim": 8})
    with pytest.raises(InputError, match="fitted on 16-d latents"):
        outliers(small, flow=model, force=True, progress=False)


def test_zero_and_nan_vectors_are_left_out_and_marked(tmp_path):
    v, _ = bulk_and_anomalies(3000, seed=2)
    v[:5] = 0  # Nenya's vector of a cutout with NaN
    v[5, 3] = np.nan
    path = write_latents(tmp_path / "x.parquet", v, about=ABOUT)
    r = outliers(path, method="knn", fraction=0.01, progress=False)
    t = r.table
    assert not t["valid"][:6].any() and t["valid"][6:].all()
    assert t["score"][:6].isna().all() and (t["rank"][:6] == 0).all() and not t["outlier"][:6].any()
    assert r.record["invalid"] == 6 and r.record["outliers"] == 30  # 1% of the 2,994 valid, rounded up


def test_cli_writes_table_record_flow_and_pictures_and_reuses_the_flow(tmp_path):
    v, _ = bulk_and_anomalies(4000, seed=3)
    rng = np.random.default_rng(0)
    meta = {
        "lat": rng.uniform(-60, 60, 4000),
        "lon": rng.uniform(-180, 180, 4000),
        "datetime": pd.date_range("2012-01-01", periods=4000, freq="18h").strftime("%Y-%m-%d").tolist(),
    }
    path = write_latents(tmp_path / "x_latents.parquet", v, about=ABOUT, meta=meta)
    run = [sys.executable, "-m", "nenya", "outliers", path, "--fit-sample", "3000", "--epochs", "5"]
    r = subprocess.run([*run, "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "outliers of 4,000 valid vectors" in r.stdout and "held-out mean log-likelihood" in r.stdout
    out = tmp_path / "out"
    for name in ("outliers.parquet", "record.json", "flow.safetensors", "histogram.png", "map.png", "months.png"):
        assert (out / name).stat().st_size > 0, name
    table = pd.read_parquet(out / "outliers.parquet")
    assert list(table.columns[:5]) == ["id", "score", "rank", "outlier", "valid"] and "lat" in table.columns
    assert table["outlier"].sum() == 4  # 0.1% of 4,000
    # the saved flow scores another run the same way, without fitting
    again = subprocess.run([*run[:4], path, "--flow", str(out / "flow.safetensors"), "-o", str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert np.allclose(pd.read_parquet(tmp_path / "again" / "outliers.parquet")["score"], table["score"])


def test_bf16_scores_stay_within_a_hundredth_of_a_nat_of_fp32_and_the_record_names_the_precision(planted, tmp_path):
    """bf16 scoring (the flow's networks in bf16, the transforms and log-determinants in fp32) gives LLs
    within 0.01 nat of fp32 on average and within 1% of each item's LL (16-d; measured 0.009 on average,
    at most 0.15 nat in the bulk (LLs near -27, spread 4.7) and 0.3% at the planted anomalies, LLs -97 to
    -170), in the same order; the record says which precision ran and fitted."""
    from scipy.stats import spearmanr

    from nenya.analysis.flow import scoring_precision
    from nenya.analysis.outliers import write_outliers

    _, v, _ = planted
    model = fit_flow(v[:3000], epochs=5, progress=False, about=ABOUT)
    fp32, bf16 = model.log_prob(v[:4000]), model.log_prob(v[:4000], precision="bf16")
    diff = np.abs(bf16 - fp32)
    assert diff.mean() < 0.01 and (diff < 0.01 * np.abs(fp32)).all(), (diff.mean(), diff.max(), fp32.std())
    assert spearmanr(fp32, bf16).correlation > 0.999
    assert np.array_equal(model.log_prob(v[:100], precision="fp32"), fp32[:100])  # the hooks are gone again
    small = write_latents(tmp_path / "small.parquet", v[:1000], about=ABOUT)
    r = outliers(small, flow=model, precision="bf16", progress=False)
    assert r.record["precision"] == "bf16" and "precision_asked" not in r.record
    assert r.record["flow"]["precision"] == scoring_precision("auto") and r.record["score_seconds"] > 0
    write_outliers(r, str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "record.json").read_text())["precision"] == "bf16"
    auto = outliers(small, flow=model, precision="auto", progress=False).record
    assert auto["precision"] == scoring_precision("auto") and auto["precision_asked"] == "auto"
    assert outliers(small, flow=model, progress=False).record["precision"] == "fp32"  # the default
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto"):
        outliers(small, flow=model, precision="fp16", progress=False)


def test_cli_precision_takes_fp32_bf16_or_auto(capsys):
    from nenya.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["outliers", "x.npy"]).precision == "fp32"
    assert parser.parse_args(["outliers", "x.npy", "--precision", "auto"]).precision == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["outliers", "x.npy", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
