"""A demo-like collection of any size for ``nenya serve`` tests and its bench.

A few hundred real SST-like cutouts are extracted with a SupCon checkpoint (so an uploaded cutout is
encoded exactly as its stored vector was); the rest are jittered copies of them (other ids, positions,
dates and DT values, the same cutout for their thumbnail), written as one Parquet latents file that
records the model, with a coordinates table beside it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class ServeData:
    latents: str
    coords: str
    preproc: str
    table: pd.DataFrame  # id, metadata, U0, U1: what the server should hold
    n_real: int


def make_collection(
    folder: Path, n: int, *, n_real: int = 400, size: int = 32, seed: int = 0, hostile: str | None = None
) -> ServeData:
    """Write ``n`` demo-like points under ``folder`` (``n_real`` of them real extractions); ``hostile``
    is the id of the first jittered copy (markup, to check that the page shows ids as text)."""
    from conftest import make_opts, save_checkpoint
    from nenya.analysis import open_latents, read_about
    from nenya.encoders.supcon import SupConEncoder
    from nenya.engines.runner import RunOptions
    from nenya.latents_extraction import extract_preproc
    from nenya.params import Params
    from nenya.sample_data import write_preproc
    from nenya.sinks.parquet import ABOUT_KEY
    from nenya.train_util import option_preprocess

    folder.mkdir(parents=True, exist_ok=True)
    pre = write_preproc(folder / "s_preproc.h5", n_valid=n_real, size=size, seed=seed + 3)
    opt = option_preprocess(Params(make_opts(folder, feat_dim=16)))
    ckpt = folder / opt.model_folder / "last.pth"
    save_checkpoint(opt, ckpt)
    enc = SupConEncoder.from_checkpoint(str(ckpt), opt).to("cpu")
    run = RunOptions(batch_size=64, shard_size=256, num_workers=0, device="cpu", progress=False)
    real = extract_preproc([pre], enc, str(folder / "real"), options=run).outputs[0]
    about = read_about(real)
    with open_latents(real) as lat:
        vec0, meta0, ids0 = lat.vectors(), lat.metadata.reset_index(drop=True), [str(i) for i in lat.ids]
    rng = np.random.default_rng(seed)
    src = np.concatenate([np.arange(n_real), rng.integers(0, n_real, n - n_real)])
    vectors = vec0[src] + np.where(np.arange(n) < n_real, 0.0, 1.0)[:, None] * rng.normal(0, 0.05, (n, vec0.shape[1]))
    table = meta0.iloc[src].reset_index(drop=True)
    table.insert(0, "id", ids0 + [f"syn/{i}" for i in range(n - n_real)])
    if hostile is not None and n > n_real:
        table.loc[n_real, "id"] = hostile
    fake = np.arange(n) >= n_real
    table.loc[fake, "lat"] = rng.uniform(-60, 60, fake.sum())
    table.loc[fake, "lon"] = rng.uniform(-180, 180, fake.sum())
    table.loc[fake, "DT40"] = rng.gamma(2.0, 1.0, fake.sum())
    days = rng.integers(0, 3650, fake.sum())
    table.loc[fake, "datetime"] = (pd.Timestamp("2010-01-01") + pd.to_timedelta(days, unit="D")).astype(str)
    levels = sorted(table["pattern"].astype(str).unique())
    centre = {p: (4.0 * np.cos(i), 4.0 * np.sin(i)) for i, p in enumerate(levels)}
    cx = np.array([centre[p][0] for p in table["pattern"].astype(str)])
    cy = np.array([centre[p][1] for p in table["pattern"].astype(str)])
    table["U0"] = cx + rng.normal(0, 1.0, n)
    table["U1"] = cy + rng.normal(0, 1.0, n)
    meta_cols = [c for c in table.columns if c not in ("U0", "U1")]
    arrow = pa.Table.from_pandas(table[meta_cols], preserve_index=False)
    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    arrow = arrow.append_column("vector", pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]))
    arrow = arrow.replace_schema_metadata({ABOUT_KEY: json.dumps(about).encode()})
    latents = str(folder / "big.parquet")
    pq.write_table(arrow, latents)
    coords = str(folder / "big_umap.parquet")
    table[["id", "U0", "U1"]].to_parquet(coords, index=False)
    return ServeData(latents, coords, pre, table, n_real)


@dataclass
class Served:
    """A running ``nenya serve``: its process, base URL (``http://127.0.0.1:PORT/``), the URL it
    printed (``page``: with ``?token=``), its token, seconds to start and output so far."""

    proc: subprocess.Popen
    url: str
    startup: float
    lines: list[str]
    page: str = ""
    token: str = ""

    def get(
        self, path: str, *, data: bytes | None = None, method: str = "GET", headers: dict | None = None
    ) -> tuple[int, bytes]:
        """``path`` (relative to the base URL) with the token in an Authorization header unless
        ``headers`` say otherwise; (status, body) for errors too."""
        import urllib.error
        import urllib.request

        h = {"Authorization": f"token {self.token}"} if headers is None else headers
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()


def start_server(args: list[str], cwd: Path | str, *, timeout: float = 180, env: dict | None = None) -> Served:
    """Launch ``nenya serve ARGS --port 0`` and wait for its URL line; its output is drained by a thread
    (so the server never blocks on a full pipe) into ``Served.lines``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nenya", "serve", *map(str, args), "--port", "0"],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while time.perf_counter() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving .* at (http://\S+/)(\?token=(\S+))? \(", line)
        if m:
            threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
            page = m.group(1) + (m.group(2) or "")
            return Served(proc, m.group(1), time.perf_counter() - t0, lines, page, m.group(3) or "")
    proc.kill()
    raise RuntimeError("nenya serve did not start:\n" + "".join(lines))


def stop_server(served: Served, *, timeout: float = 60, sig: int = signal.SIGINT) -> tuple[int, float, str]:
    """Ctrl-C (SIGINT, or ``sig``); the exit status, the seconds it took to exit and the server's whole
    output (with every thread's stack, when py-spy is installed, if it did not exit in time)."""
    t0 = time.perf_counter()
    served.proc.send_signal(sig)
    try:
        rc = served.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        import shutil

        if shutil.which("py-spy"):
            dump = subprocess.run(
                ["py-spy", "dump", "--native", "--pid", str(served.proc.pid)], capture_output=True, text=True
            )
            served.lines.append(f"still running {timeout} s after signal {sig}; its threads:\n{dump.stdout}")
        served.proc.kill()
        rc = served.proc.wait()
    seconds = time.perf_counter() - t0
    time.sleep(0.2)  # the drain thread reads the last lines
    return rc, seconds, "".join(served.lines)
