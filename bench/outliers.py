"""`nenya outliers` and `nenya trends` at scale: the flow's fit, scoring every vector (fp32 and bf16), the
kNN score and trends over every row, with time and peak memory of each step.

The collection is made once into ``--work`` (kept for later runs; ``--clean`` deletes it): N 256-d
float32 vectors, Nenya-like in size and clustered: a mixture of 40 Gaussian clusters of unequal weight
in a random 32-d subspace (each cluster spread along 8 directions of its own), plus isotropic noise
(0.1) in all 256 dimensions; 0.1% of them planted anomalies the bulk does not cover (half halfway
between two clusters' centres, half bulk points with noise 0.3 added in every dimension). They are written slab by slab as ``latents_N.npy`` (memory-mapped when
read: 8.2 GB at 8,000,000) beside ``latents_N.parquet`` (id, lat, lon, datetime as text over
2003-2020, and a model record in the schema as nenya writes it), the ``.npy`` + Parquet layout of
``open_latents``, the one that memory-maps.

Each step runs in a FRESH subprocess through the public API the commands use, with a thread reading
/proc/self/status every 0.05 s for the step's peaks: anonymous memory (what the step needs) and the
whole RSS (with the pages of the memory-mapped file it has touched, which the kernel can take back):

    fit        nenya.analysis.flow.fit_flow on --fit-sample random rows (as outliers() draws them), saved;
               at the first size only (its cost does not depend on N: --fit-every-size repeats it), the
               larger collections (whose first rows are the smaller one) read the sample and use that flow
    fp32/bf16  nenya.analysis.outliers(--flow the fitted one, precision=...) + write_outliers (the
               table, record.json, flow.safetensors and the pictures: what `nenya outliers --flow` does);
               recall of the planted anomalies in the lowest 0.1% and 0.2%; bf16 against fp32
    knn        outliers(method="knn") (HNSW over all vectors, in memory) up to --knn-max vectors,
               within --knn-timeout
    trends     read_table(outliers.parquet) + region_mask(where="outlier") + trends(...) + write_trends:
               where and when the outliers are, over every row (`nenya trends ... --where outlier`)

    python bench/outliers.py --sizes 20000 --no-save          # a quick check
    python bench/outliers.py                                   # 1,000,000 and 8,000,000 (~10 GB in --work)

Prints a table and appends it, dated and with the machine, to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _report import HERE, add_save_args, load_average, markdown_table, report  # noqa: E402
from nenya.analysis.flow import EPOCHS  # noqa: E402

DIM, SUB, CLUSTERS, RANK = 256, 32, 40, 8
NOISE = 0.1  # isotropic, in all 256 dimensions
ANOMALY = 0.001  # planted share
SLAB = 100_000
RESUMED: list[str] = []  # steps whose result an earlier, interrupted invocation left (--resume)
ABOUT = {"model": "bench:synthetic-mixture", "dim": DIM, "vectors": "bench-outliers-seed0"}


# -- the collection, written slab by slab ------------------------------------------------------------
def make_latents(work: Path, n: int, seed: int = 0) -> dict:
    """``latents_N.npy`` + ``latents_N.parquet`` and the planted rows, unless already made; its record."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from nenya.sinks.parquet import ABOUT_KEY

    done = work / f"latents_{n}.json"
    if done.exists():
        return json.loads(done.read_text())
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(DIM, SUB)))[0].T.astype(np.float32)  # the bulk's subspace
    centres = rng.normal(0, 1.5, (CLUSTERS, SUB)).astype(np.float32)
    loadings = (rng.normal(0, 1, (CLUSTERS, RANK, SUB)) / np.sqrt(RANK)).astype(np.float32)
    weights = rng.dirichlet(np.full(CLUSTERS, 2.0))
    npy, table = work / f"latents_{n}.npy", work / f"latents_{n}.parquet"
    arr = np.lib.format.open_memmap(str(npy) + ".tmp", mode="w+", dtype=np.float32, shape=(n, DIM))
    schema = pa.schema(
        [("id", pa.string()), ("lat", pa.float64()), ("lon", pa.float64()), ("datetime", pa.string())],
        metadata={ABOUT_KEY: json.dumps(ABOUT).encode()},
    )
    planted = []
    t_lo, t_hi = np.datetime64("2003-01-01T00:00:00", "s"), np.datetime64("2021-01-01T00:00:00", "s")
    with pq.ParquetWriter(str(table) + ".tmp", schema) as writer:
        for a in tqdm(range(0, n, SLAB), desc=f"writing {n:,} vectors", unit="slab"):
            r = np.random.default_rng([seed, a])
            m = min(SLAB, n - a)
            c = r.choice(CLUSTERS, m, p=weights)
            sub = centres[c] + 0.3 * r.standard_normal((m, SUB), dtype=np.float32)
            z = r.standard_normal((m, RANK), dtype=np.float32)
            for j in np.unique(c):
                sub[c == j] += z[c == j] @ loadings[j]
            odd = r.choice(m, max(1, int(round(m * ANOMALY))), replace=False)
            half, rest = odd[: len(odd) // 2], odd[len(odd) // 2 :]
            other = (c[half] + 1 + r.integers(0, CLUSTERS - 1, len(half))) % CLUSTERS
            sub[half] += 0.5 * (centres[other] - centres[c[half]])  # halfway to another cluster
            v = sub @ basis + NOISE * r.standard_normal((m, DIM), dtype=np.float32)
            v[rest] += 3 * NOISE * r.standard_normal((len(rest), DIM), dtype=np.float32)  # out of the subspace
            arr[a : a + m] = v
            planted.append(a + np.sort(odd))
            seconds = r.integers(0, int((t_hi - t_lo).astype(np.int64)), m)
            writer.write_table(
                pa.table(
                    {
                        "id": [f"cut/{i}" for i in range(a, a + m)],
                        "lat": np.degrees(np.arcsin(r.uniform(-1, 1, m))),
                        "lon": r.uniform(-180, 180, m),
                        "datetime": np.datetime_as_string(t_lo + seconds.astype("timedelta64[s]")),
                    },
                    schema=schema,
                )
            )
    arr.flush()
    del arr
    os.replace(str(npy) + ".tmp", npy)
    os.replace(str(table) + ".tmp", table)
    np.save(work / f"planted_{n}.npy", np.concatenate(planted))
    rec = {"n": n, "seconds": time.perf_counter() - t0, "gb": npy.stat().st_size / 1e9}
    done.write_text(json.dumps(rec))
    return rec


# -- one step in a fresh process ---------------------------------------------------------------------
class Peaks(threading.Thread):
    """The highest RssAnon and VmRSS of this process, read from /proc/self/status every ``every`` s."""

    def __init__(self, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every, self.anon, self.rss = every, 0, 0
        self.start()

    def _read(self) -> None:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("RssAnon:", "VmRSS:")):
                    kb = int(line.split()[1])
                    if line.startswith("RssAnon"):
                        self.anon = max(self.anon, kb)
                    else:
                        self.rss = max(self.rss, kb)

    def run(self) -> None:
        while True:
            self._read()
            time.sleep(self.every)

    def result(self) -> dict:
        self._read()
        return {"anon_mb": self.anon / 1024, "rss_mb": self.rss / 1024}


class Load(threading.Thread):
    """The 1-minute load average every 30 s while the bench runs: on a shared machine, how shared."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: list[float] = []
        self.start()

    def run(self) -> None:
        while True:
            self.seen.append(os.getloadavg()[0])
            time.sleep(30)

    def summary(self) -> str:
        cores = os.cpu_count() or 1
        mean, top = float(np.mean(self.seen)), max(self.seen)
        shared = f" (over {cores} cores: other work shared the CPUs)" if mean > cores + 0.5 else ""
        return f"1-minute load average over the run: mean {mean:.1f}, max {top:.1f}{shared}; now {load_average()}"


def _recall(rank: np.ndarray, planted: np.ndarray, valid: int) -> dict:
    return {f"recall_{f}": float(np.mean(rank[planted] <= int(np.ceil(f * valid)))) for f in (0.001, 0.002)}


def child(step: str, n: int, args) -> dict:
    work = Path(args.work)
    path = str(work / f"latents_{n}.npy")
    flow_path = work / f"flow_{n}.safetensors"
    planted = np.load(work / f"planted_{n}.npy")
    peaks = Peaks()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if step == "fit":
        from nenya.analysis.flow import fit_flow
        from nenya.analysis.latents import open_latents, read_about

        lat = open_latents(path, metadata=False)  # the sample as outliers() draws it
        rows = np.sort(np.random.default_rng(0).choice(lat.n, min(args.fit_sample, lat.n), replace=False))
        v = lat.vectors(rows)
        read_s = time.perf_counter() - t0
        out = {"read_s": read_s, "sample": len(v)}
        if not args.sample_only:
            model = fit_flow(v, epochs=args.epochs, about=read_about(path))
            model.save(str(flow_path))
            out.update(model.record)
    elif step in ("fp32", "bf16", "knn"):
        from nenya.analysis import outliers, write_outliers

        if step == "knn":
            r = outliers(path, method="knn")
        else:
            r = outliers(path, flow=str(flow_path), precision=step)
        run_s = time.perf_counter() - t0
        write_outliers(r, str(work / f"out_{n}_{step}"))
        out = {"run_s": run_s, "write_s": time.perf_counter() - t0 - run_s, **_recall(r.table["rank"].to_numpy(),
               planted, r.record["valid"]), "record": r.record}  # fmt: skip
        np.save(work / f"scores_{n}_{step}.npy", r.table["score"].to_numpy())
    else:  # trends over every row of the fp32 run's table
        from nenya.analysis import region_mask, trends, write_trends
        from nenya.analysis.explorer.data import find_lat_lon
        from nenya.analysis.latents import read_table

        table = read_table(str(work / f"out_{n}_fp32" / "outliers.parquet"))
        read_s = time.perf_counter() - t0
        mask, what = region_mask(table, where="outlier")
        r = trends(table, mask, latlon=find_lat_lon(table), description=what)
        trends_s = time.perf_counter() - t0 - read_s
        write_trends(r, str(work / f"trends_{n}"))
        fit = f"slope {r.fit['ols']['slope_per_decade']:+.5f}/decade (p {r.fit['ols']['p']:.2f})" if r.fit else "no fit"
        out = {"read_s": read_s, "trends_s": trends_s, "write_s": time.perf_counter() - t0 - read_s - trends_s,
               "k": r.k, "n": r.n, "fit": fit}  # fmt: skip
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0, **out, **peaks.result()}


def run_child(step: str, n: int, args, timeout: float | None = None, sample_only: bool = False) -> dict | str:
    """The step's result, or why there is none."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", step, str(n), "--work", args.work]
    cmd += ["--fit-sample", str(args.fit_sample), "--epochs", str(args.epochs)]
    cmd += ["--sample-only"] if sample_only else []
    done = Path(args.work) / f"result_{step}_{n}.json"
    if args.resume and done.exists():
        RESUMED.append(f"{step} at {n:,}")
        return json.loads(done.read_text())
    done.unlink(missing_ok=True)
    print(f"\n== {step} at {n:,} vectors, {time.strftime('%H:%M:%S')} ==", file=sys.stderr, flush=True)
    try:  # progress bars (stderr) show as the step runs; the result is stdout's last line
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"not finished in {timeout / 60:.0f} min (stopped)"
    if out.returncode:
        return f"failed (exit {out.returncode}; see the log)"
    done.write_text(out.stdout.strip().splitlines()[-1])
    return json.loads(done.read_text())


# -- the table ---------------------------------------------------------------------------------------
def _mem(r: dict) -> list[str]:
    return [f"{r['anon_mb']:,.0f}", f"{r['rss_mb']:,.0f}"]


def _vs_fp32(work: Path, n: int) -> str:
    from scipy.stats import spearmanr

    a, b = np.load(work / f"scores_{n}_fp32.npy"), np.load(work / f"scores_{n}_bf16.npy")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    d = np.abs(a - b)
    m = max(1, int(np.ceil(ANOMALY * len(a))))
    same = len(np.intersect1d(np.argpartition(a, m)[:m], np.argpartition(b, m)[:m])) / m
    rho = spearmanr(a, b).correlation
    return (
        f"vs fp32: mean abs dLL {d.mean():.3f}, max {d.max():.2f} (LL sd {a.std():.1f}); Spearman {rho:.6f}; "
        f"{same:.1%} of the lowest 0.1% the same"
    )


def rows_for(n: int, args, fitted: Path | None) -> list[list[str]]:
    """The table's rows of one size; ``fitted``: the flow of a smaller size to score with (no new fit)."""
    work, rows, big = Path(args.work), [], f"{n:,}"
    rec = make_latents(work, n)
    if not args.resume:  # no figure of an earlier run is taken for this one's
        for old in [*work.glob(f"scores_{n}_*.npy"), *work.glob(f"result_*_{n}.json")]:
            old.unlink()
        for old in work.glob(f"out_{n}_*"):
            shutil.rmtree(old)
        (work / f"flow_{n}.safetensors").unlink(missing_ok=True)
    print(f"{big} vectors: {rec['gb']:.1f} GB, made in {rec['seconds']:.0f} s", file=sys.stderr, flush=True)
    fit = run_child("fit", n, args, sample_only=fitted is not None)
    if isinstance(fit, str):
        return [[big, "fit", "-", "-", "-", "-", "-", fit]]
    if fitted is None:
        rows.append([big, f"fit ({fit['sample']:,} sample)", f"{fit['seconds']:.0f}", f"{fit['cpu_s']:.0f}",
                     f"{fit['epochs']} epochs", *_mem(fit), f"held-out LL {fit['heldout_ll']:.1f}; {fit.get('precision', 'fp32')}, "
                     f"batch {fit.get('batch', 1024):,}; reading the sample {fit['read_s']:.1f} s"])  # fmt: skip
    else:  # the same collection's flow: this file's first rows are the smaller one's
        shutil.copyfile(fitted, work / f"flow_{n}.safetensors")
        rows.append([big, f"sample ({fit['sample']:,})", f"{fit['seconds']:.1f}", f"{fit['cpu_s']:.1f}", "-",
                     *_mem(fit), "reading the fit's sample only; scored with the flow fitted above (same "
                     "generator and seed: the smaller collection is this one's first rows)"])  # fmt: skip
    print(rows[-1], file=sys.stderr, flush=True)
    for p in ("fp32", "bf16"):
        r = run_child(p, n, args)
        if isinstance(r, str):
            rows.append([big, f"score {p}", "-", "-", "-", "-", "-", r])
            continue
        s = r["record"]["score_seconds"]
        note = f"recall {r['recall_0.001']:.1%} / {r['recall_0.002']:.1%} in the lowest 0.1% / 0.2%"
        if p == "bf16" and (work / f"scores_{n}_fp32.npy").exists():
            note += "; " + _vs_fp32(work, n)
        rows.append([big, f"score {p}", f"{r['run_s']:.0f} + {r['write_s']:.0f}", f"{r['cpu_s']:.0f}", f"{n / s:,.0f} vectors/s "
                     f"({s:.0f} s)", *_mem(r), note])  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    if n <= args.knn_max:
        r = run_child("knn", n, args, timeout=args.knn_timeout)
        if isinstance(r, str):
            rows.append([big, "kNN (k=10)", "-", "-", "-", "-", "-", r])
        else:
            note = f"recall {r['recall_0.001']:.1%} / {r['recall_0.002']:.1%}; index {r['record']['index']}"
            rows.append(
                [big, "kNN (k=10)", f"{r['run_s']:.0f} + {r['write_s']:.0f}", f"{r['cpu_s']:.0f}", "-", *_mem(r), note]
            )
    else:
        rows.append([big, "kNN (k=10)", "-", "-", "-", "-", "-", f"skipped: over --knn-max {args.knn_max:,} (every "
                     f"vector in memory, {n * DIM * 4 / 2**30:.1f} GiB, plus an HNSW graph built on 2 cores)"])  # fmt: skip
    print(rows[-1], file=sys.stderr, flush=True)
    if (work / f"out_{n}_fp32" / "outliers.parquet").exists():
        r = run_child("trends", n, args)
        if isinstance(r, str):
            rows.append([big, "trends", "-", "-", "-", "-", "-", r])
        else:
            rows.append([big, "trends (every row)", f"{r['read_s']:.1f} + {r['trends_s']:.1f} + {r['write_s']:.1f}",
                         f"{r['cpu_s']:.0f}", "-", *_mem(r), f"{r['k']:,} outliers of {r['n']:,}; {r['fit']}"])  # fmt: skip
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,8000000", help="vectors per collection, comma-separated")
    ap.add_argument("--work", default=os.path.join("/tmp", "nenya-bench-outliers"), help="cache and outputs")
    ap.add_argument("--fit-sample", type=int, default=150_000, help="the flow's fit sample (outliers' default)")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="most epochs of the fit (outliers' default)")
    ap.add_argument("--knn-max", type=int, default=1_000_000, help="the kNN score runs up to this many vectors")
    ap.add_argument("--knn-timeout", type=float, default=1800, help="seconds the kNN score may take")
    ap.add_argument(
        "--fit-every-size",
        action="store_true",
        help="fit a flow at every size (default: at the first; the others read the sample and score with it)",
    )
    ap.add_argument(
        "--resume", action="store_true", help="keep the results of steps an interrupted run finished (in --work)"
    )
    ap.add_argument("--sample-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--clean", action="store_true", help="delete --work at the end")
    ap.add_argument("--child", nargs=2, metavar=("STEP", "N"), help=argparse.SUPPRESS)
    add_save_args(ap, HERE / "RESULTS.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args), default=float))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    t0, load = time.perf_counter(), Load()
    rows = []
    for i, n in enumerate(sizes):
        first = Path(args.work) / f"flow_{sizes[0]}.safetensors"
        rows += rows_for(n, args, first if i and not args.fit_every_size and first.exists() else None)
    header = ["vectors", "step", "seconds", "CPU s", "rate", "peak anon MB", "peak RSS MB", "result"]
    lines = markdown_table(header, rows)
    lines += [
        "",
        f"{DIM}-d float32 vectors: {CLUSTERS} Gaussian clusters in a {SUB}-d subspace ({RANK}-d structure each), "
        f"noise {NOISE} in every dimension, "
        f"{ANOMALY:.1%} planted anomalies; `.npy` + Parquet latents, the vectors memory-mapped (never read whole "
        "but by kNN). Each step in a fresh process through the public API. seconds: fit: the whole step "
        "(reading the sample, fit_flow, saving); score: outliers() (opening the table, scoring, ranking) + "
        "write_outliers (table, record, flow, pictures); trends: read_table + trends() + write_trends; CPU s: the "
        "step's process time (both cores: up to twice the seconds). rate: "
        "vectors scored per second in the scoring loop (the record's score_seconds). Peak anon: the process's "
        "own memory; peak RSS: with the pages of the memory-mapped vectors it touched (reclaimable page cache). "
        f"Whole run {(time.perf_counter() - t0) / 60:.0f} min; {load.summary()}.",
    ]
    if RESUMED:
        lines[-1] += f" Results of an earlier, interrupted invocation (--resume): {', '.join(RESUMED)}."
    report(args, f"outliers.py (sizes {args.sizes})", lines)
    if args.clean:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
