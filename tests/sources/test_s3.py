"""nenya against a real local S3-compatible server (moto server mode, see ``s3server.py``).

Inputs, models and outputs live in a bucket; the documented API (``latents_extraction.main``)
and the ``nenya extract`` command (in a subprocess, configured by environment variables only)
must read and write them there, never show a partial output, and resume after a kill.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import h5py
import numpy as np
import pytest
import torch

from nenya.demo import demo_opts
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage
from nenya.sample_data import write_preproc
from s3server import s3, s3_server  # noqa: F401  (pytest fixtures)

pytestmark = pytest.mark.s3

FEAT_DIM = 16
N_VALID, N_TRAIN = 24, 12
ATOL = 1e-5


# -- shared, made once per session ------------------------------------------------------------
def _opts_dict(s3_outdir: str) -> dict:
    d = demo_opts(".", "resnet18")
    d.update(feat_dim=FEAT_DIM, batch_size_valid=16, num_workers=1, cuda_use=False, s3_outdir=s3_outdir)
    return d


def _write_opts(path, s3_outdir: str) -> str:
    with open(path, "w") as f:
        json.dump(_opts_dict(s3_outdir), f, indent=1)
    return str(path)


def _make_checkpoint(opts_path: str, dest: str, seed: int) -> Params:
    from nenya.train_util import set_model

    opt = option_preprocess(Params(opts_path))
    torch.manual_seed(seed)
    net, _ = set_model(opt, cuda_use=False)
    torch.save({"opt": opt, "model": net.state_dict(), "optimizer": None, "epoch": 0}, dest)
    return opt


def _reference(opt: Params, data_file: str, ckpt: str) -> dict[str, np.ndarray]:
    """Latents computed locally, through the documented API, from local files only."""
    from nenya.latents_extraction import model_latents_extract

    out = model_latents_extract(opt, data_file, ckpt)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="session")
def job(tmp_path_factory):
    """A resnet18 (feat_dim 16) checkpoint, a small preproc file, and their local latents."""
    d = tmp_path_factory.mktemp("s3job")
    opts = _write_opts(d / "opts.json", str(d))
    ckpt = str(d / "last.pth")
    opt = _make_checkpoint(opts, ckpt, seed=0)
    data = write_preproc(d / "x_preproc.h5", n_valid=N_VALID, n_train=N_TRAIN, seed=3)
    ref = _reference(opt, data, ckpt)
    assert ref["valid"].shape == (N_VALID, FEAT_DIM) and ref["train"].shape == (N_TRAIN, FEAT_DIM)
    return {"dir": d, "opt": opt, "ckpt": ckpt, "data": data, "ref": ref}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Run in an empty folder (no stray last.pth) with a private cache and temp folder."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = tmp_path / "cache"
    monkeypatch.setenv("NENYA_CACHE", str(cache))
    monkeypatch.setenv("NENYA_MODEL_DIR", str(tmp_path / "no-named-models"))
    monkeypatch.setenv("NENYA_CONFIG", str(tmp_path / "no-config.json"))
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    return {"tmp": tmp_path, "cwd": work, "cache": cache, "systmp": systmp}


def _upload_job(s3, job, tmp_path, *, ckpt: str | None = None) -> dict:
    """Opts with s3_outdir in the bucket, the model at <s3_outdir>/<model_folder>/last.pth, the input."""
    opts = _write_opts(tmp_path / "opts.json", s3.url("SSL/"))
    opt = option_preprocess(Params(opts))
    assert opt.model_folder == f"models/demo/{opt.model_name}"
    assert opt.latents_folder == f"latents/demo/{opt.model_name}"
    model_key = f"SSL/{opt.model_folder}/last.pth"
    s3.client.upload_file(ckpt or job["ckpt"], s3.bucket, model_key)
    s3.client.upload_file(job["data"], s3.bucket, "preproc/x_preproc.h5")
    return {
        "opts": opts,
        "opt": opt,
        "model_key": model_key,
        "input": s3.url("preproc/x_preproc.h5"),
        "out_key": f"SSL/{opt.latents_folder}/x_latents.h5",
    }


def _download(s3, key: str, dest) -> str:
    s3.client.download_file(s3.bucket, key, str(dest))
    return str(dest)


def _check_latents_h5(path: str, ref: dict[str, np.ndarray], source_h5: str) -> None:
    with h5py.File(path, "r") as f, h5py.File(source_h5, "r") as src:
        for part, n in (("valid", N_VALID), ("train", N_TRAIN)):
            assert f[part].shape == (n, FEAT_DIM)
            assert f[part].dtype == np.float32
            np.testing.assert_allclose(f[part][:], ref[part], atol=ATOL, rtol=0)
            meta = f[f"{part}_metadata"]
            assert [c.decode() if isinstance(c, bytes) else c for c in meta.attrs["columns"]] == [
                "lat",
                "lon",
                "datetime",
                "DT40",
                "pattern",
                "pp_idx",
            ]
            assert meta.shape == (n, 6)
            np.testing.assert_array_equal(meta[:], src[f"{part}_metadata"][:])
            assert f"{part}_rows" not in f and f"{part}_valid" not in f


# -- 1. main() with inputs, model and outputs in the bucket ---------------------------------------
def test_main_reads_and_writes_s3(s3, job, isolated, monkeypatch):
    from nenya.latents_extraction import main

    up = _upload_job(s3, job, isolated["tmp"])
    assert up["model_key"] in s3.keys("SSL/models/")
    assert s3.keys("preproc/") == ["preproc/x_preproc.h5"]
    with h5py.File(_download(s3, "preproc/x_preproc.h5", isolated["tmp"] / "check.h5"), "r") as f:
        assert f["valid"].shape[0] == N_VALID and f["train"].shape[0] == N_TRAIN

    fetch_dirs: list[str] = []
    real_make_tempdir = storage.make_tempdir

    def spy(prefix="nenya-"):
        d = real_make_tempdir(prefix)
        fetch_dirs.append(d)
        return d

    monkeypatch.setattr(storage, "make_tempdir", spy)

    outputs = main(up["opts"], [up["input"]])

    assert outputs == [s3.url(up["out_key"])]
    assert up["out_key"] in s3.keys("SSL/latents/")
    # the output and its status table, nothing else (no temporaries)
    assert s3.keys(f"SSL/{up['opt'].latents_folder}/") == [up["out_key"], up["out_key"] + ".status.csv"]
    local = _download(s3, up["out_key"], isolated["tmp"] / "x_latents.h5")
    _check_latents_h5(local, job["ref"], job["data"])

    # the user's input is untouched, and the fetched copy is gone
    head = s3.client.head_object(Bucket=s3.bucket, Key="preproc/x_preproc.h5")
    assert head["ContentLength"] == os.path.getsize(job["data"])
    assert len(fetch_dirs) == 1 and os.path.dirname(fetch_dirs[0]) == isolated["systmp"].as_posix()
    assert not os.path.exists(fetch_dirs[0])
    assert glob.glob(os.path.join(tempfile.gettempdir(), "nenya-fetch-*")) == []
    # the work folder of the remote output is cleaned up after publishing
    work = isolated["cache"] / "work"
    assert not work.exists() or not any(work.rglob("*.arrow"))
    # the model came from the bucket (no last.pth in the working folder)
    assert not os.path.exists("last.pth")
    assert list((isolated["cache"] / "fetch").rglob("last.pth"))


# -- 2. skip and clobber against an S3 output -------------------------------------------------
def test_main_skips_existing_s3_output_and_clobber_rewrites(s3, job, isolated):
    from nenya.latents_extraction import main

    s3.client.put_bucket_versioning(Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"})
    up = _upload_job(s3, job, isolated["tmp"])
    key = up["out_key"]

    def versions() -> list[dict]:
        r = s3.client.list_object_versions(Bucket=s3.bucket, Prefix=key)  # the output (not its status table)
        return [v for v in r.get("Versions", []) + r.get("DeleteMarkers", []) if v["Key"] == key]

    assert main(up["opts"], [up["input"]]) == [s3.url(key)]
    first = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert len(versions()) == 1

    time.sleep(1.1)  # LastModified has one-second resolution
    assert main(up["opts"], [up["input"]]) == []
    again = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert (again["ETag"], again["LastModified"], again["VersionId"]) == (
        first["ETag"],
        first["LastModified"],
        first["VersionId"],
    )
    assert len(versions()) == 1  # not rewritten, not even with the same bytes

    assert main(up["opts"], [up["input"]], clobber=True) == [s3.url(key)]
    third = s3.client.head_object(Bucket=s3.bucket, Key=key)
    assert third["VersionId"] != first["VersionId"]
    assert third["LastModified"] > first["LastModified"]
    assert len(versions()) == 2
    assert s3.keys(f"SSL/{up['opt'].latents_folder}/") == [key, key + ".status.csv"]
    _check_latents_h5(_download(s3, key, isolated["tmp"] / "again.h5"), job["ref"], job["data"])


# -- 3. the command line, in a subprocess configured by environment variables only -----------
def _cli_env(s3, isolated) -> dict[str, str]:
    env = s3.subprocess_env()
    env.update(
        NENYA_CACHE=str(isolated["cache"]),
        NENYA_MODEL_DIR=str(isolated["tmp"] / "no-named-models"),
        NENYA_CONFIG=str(isolated["tmp"] / "no-config.json"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        TMPDIR=str(isolated["systmp"]),
    )
    return env


def _read_parquet_vectors(table) -> dict[str, np.ndarray]:
    from nenya.sinks import vectors_of

    out = {}
    for part in ("train", "valid"):
        t = table.filter(table.column("partition").to_numpy(zero_copy_only=False) == part)
        rows = t.column("row").to_numpy()
        vec = vectors_of(t)
        full = np.full((len(rows), FEAT_DIM), np.nan, np.float32)
        full[rows] = vec
        out[part] = full
    return out


def test_cli_extract_s3_to_parquet_subprocess(s3, job, isolated):
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    s3.client.upload_file(job["data"], s3.bucket, "in/y_preproc.h5")
    cmd = [
        sys.executable,
        "-m",
        "nenya",
        "extract",
        s3.url("in/y_preproc.h5"),
        "--model",
        f"supcon:{job['ckpt']}",
        "--output",
        s3.url("out"),
        "--format",
        "parquet",
        "--no-progress",
    ]
    r = subprocess.run(
        cmd, cwd=isolated["cwd"], env=_cli_env(s3, isolated), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert s3.url("out/y_latents.parquet") in r.stdout.splitlines()
    assert s3.keys("out/") == ["out/y_latents.parquet", "out/y_latents.parquet.status.csv"]
    assert s3.keys("in/") == ["in/y_preproc.h5"]
    assert glob.glob(str(isolated["systmp"] / "nenya-fetch-*")) == []

    # through s3fs, as a user would read it
    df = pd.read_parquet(s3.url("out/y_latents.parquet"))
    assert list(df.columns) == [
        "id",
        "partition",
        "row",
        "lat",
        "lon",
        "datetime",
        "DT40",
        "pattern",
        "pp_idx",
        "vector",
    ]
    assert len(df) == N_VALID + N_TRAIN
    assert df["id"].tolist() == [f"{p}/{r}" for p, r in zip(df["partition"], df["row"])]
    assert sorted(df.loc[df.partition == "valid", "row"]) == list(range(N_VALID))
    assert sorted(df.loc[df.partition == "train", "row"]) == list(range(N_TRAIN))

    with s3.fs.open(f"{s3.bucket}/out/y_latents.parquet", "rb") as f:
        table = pq.read_table(f)
    vtype = table.schema.field("vector").type
    assert pa.types.is_fixed_size_list(vtype) and vtype.list_size == FEAT_DIM
    assert vtype.value_type == pa.float32()
    with h5py.File(job["data"], "r") as src:
        for part in ("valid", "train"):
            meta = src[f"{part}_metadata"][:].astype(str)
            sub = df[df.partition == part].sort_values("row")
            np.testing.assert_array_equal(sub["pp_idx"].to_numpy(dtype=str), meta[:, 5])
            np.testing.assert_array_equal(sub["pattern"].to_numpy(dtype=str), meta[:, 4])
    vecs = _read_parquet_vectors(table)
    for part in ("valid", "train"):
        np.testing.assert_allclose(vecs[part], job["ref"][part], atol=ATOL, rtol=0)


# -- 4. a killed run shows no partial object; the rerun resumes and publishes ------------------
@pytest.mark.slow
def test_cli_killed_run_leaves_no_partial_object_and_resumes(s3, job, isolated):
    import pyarrow.parquet as pq

    n_valid, n_train, shard = 64, 32, 16
    data = write_preproc(isolated["tmp"] / "z_preproc.h5", n_valid=n_valid, n_train=n_train, seed=11)
    s3.client.upload_file(data, s3.bucket, "big/z_preproc.h5")
    final = "res/z_latents.parquet"
    cmd = [
        sys.executable,
        "-m",
        "nenya",
        "extract",
        s3.url("big/z_preproc.h5"),
        "--model",
        f"supcon:{job['ckpt']}",
        "--output",
        s3.url("res"),
        "--format",
        "parquet",
        "--no-progress",
        "--shard-size",
        str(shard),
        "--batch-size",
        str(shard),
    ]
    env = _cli_env(s3, isolated)
    work = isolated["cache"] / "work"

    listings: list[list[str]] = []
    proc = subprocess.Popen(
        cmd,
        cwd=isolated["cwd"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(work.rglob("*.done.json")):  # the first shard is committed
            listings.append(s3.keys("res/"))
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the run ended (rc {proc.returncode}) before a shard was committed:\n{out}\n{err}")
            if time.monotonic() > deadline:
                pytest.fail("no shard committed within 120 s")
            time.sleep(0.05)
        listings.append(s3.keys("res/"))
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its reader process, nothing else
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(p.name for p in work.rglob("*.done.json"))
    assert 0 < len(done) < (n_valid + n_train) // shard, "the run was not killed midway"
    assert all(listing == [] for listing in listings)
    assert s3.keys("res/") == []  # no object, partial or temporary, under the output prefix
    assert s3.keys("big/") == ["big/z_preproc.h5"]

    r = subprocess.run(cmd, cwd=isolated["cwd"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "already done" in r.stdout  # resumed from the committed shards
    assert s3.keys("res/") == [final, final + ".status.csv"]
    assert not any(work.rglob("*.arrow"))

    from nenya.latents_extraction import model_latents_extract

    ref = model_latents_extract(job["opt"], data, job["ckpt"])
    with s3.fs.open(f"{s3.bucket}/{final}", "rb") as f:
        table = pq.read_table(f)
    assert table.num_rows == n_valid + n_train
    for part, n in (("valid", n_valid), ("train", n_train)):
        t = table.filter(table.column("partition").to_numpy(zero_copy_only=False) == part)
        assert t.column("row").to_pylist() == list(range(n))
        from nenya.sinks import vectors_of

        np.testing.assert_allclose(vectors_of(t), ref[part], atol=ATOL, rtol=0)


# -- 5. transient errors are retried, others are not ------------------------------------------
@pytest.fixture
def no_sleep(monkeypatch):
    delays: list[float] = []
    me = threading.get_ident()
    real_sleep = time.sleep

    def fake_sleep(s):
        if threading.get_ident() == me:
            delays.append(s)
        else:  # another thread (the S3 server): really sleep
            real_sleep(s)

    monkeypatch.setattr(storage.time, "sleep", fake_sleep)
    return delays


def test_retry_transient_errors(no_sleep):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("connection reset by peer")
        return "ok"

    assert storage.retry(flaky, what="flaky") == "ok"
    assert len(calls) == 3
    assert no_sleep == [0.5, 1.0]  # exponential back-off

    calls.clear()
    no_sleep.clear()

    def always():
        calls.append(1)
        raise TimeoutError("read timed out")

    with pytest.raises(TimeoutError):
        storage.retry(always, what="always", attempts=3, base_delay=0.1)
    assert len(calls) == 3 and no_sleep == [0.1, 0.2]


@pytest.mark.parametrize("exc", [FileNotFoundError, PermissionError])
def test_retry_does_not_retry_permanent_errors(no_sleep, exc):
    calls = []

    def missing():
        calls.append(1)
        raise exc("s3://bucket/nothing-here")

    with pytest.raises(exc):
        storage.retry(missing, what="missing")
    assert len(calls) == 1 and no_sleep == []


def test_publish_retries_a_dropped_upload(s3, tmp_path, no_sleep, monkeypatch):
    import s3fs

    real_put = s3fs.S3FileSystem.put_file
    attempts = []

    def flaky_put(self, lpath, rpath, *args, **kwargs):
        attempts.append(rpath)
        if len(attempts) <= 2:
            raise ConnectionError("connection dropped")
        return real_put(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "put_file", flaky_put)
    local = tmp_path / "payload.bin"
    payload = os.urandom(4096)
    local.write_bytes(payload)
    storage.publish(str(local), s3.url("pub/payload.bin"))
    assert len(attempts) == 3 and len(no_sleep) == 2
    assert s3.keys("pub/") == ["pub/payload.bin"]
    assert s3.client.get_object(Bucket=s3.bucket, Key="pub/payload.bin")["Body"].read() == payload
    assert not local.exists()  # published: the local file is moved, not copied


# -- remote paths in storage helpers ----------------------------------------------------------
def test_storage_expands_and_lists_s3(s3, tmp_path):
    for name in ("b_preproc.h5", "a_preproc.h5", "c.txt"):
        s3.client.put_object(Bucket=s3.bucket, Key=f"g/{name}", Body=b"x")
    urls = storage.expand([s3.url("g/*_preproc.h5"), s3.url("g/a_preproc.h5")])
    assert urls == [s3.url("g/a_preproc.h5"), s3.url("g/b_preproc.h5")]
    with pytest.raises(FileNotFoundError):
        storage.expand([s3.url("g/*_nothing.h5")])
    assert storage.listdir_names(s3.url("g")) == ["a_preproc.h5", "b_preproc.h5", "c.txt"]
    assert storage.listdir_names(s3.url("g/")) == ["a_preproc.h5", "b_preproc.h5", "c.txt"]
    assert storage.listdir_names(s3.url("nothing/here")) == []
    assert storage.exists(s3.url("g/c.txt")) and not storage.exists(s3.url("g/d.txt"))
    assert storage.join(s3.url("SSL/"), "latents/x", "f.h5") == s3.url("SSL/latents/x/f.h5")


def test_storage_sees_changes_made_by_others(s3):
    s3.client.put_object(Bucket=s3.bucket, Key="lat/x_latents.h5", Body=b"x")
    assert storage.listdir_names(s3.url("lat")) == ["x_latents.h5"]
    # another process (or the user, to force a redo) replaces the output
    s3.client.delete_object(Bucket=s3.bucket, Key="lat/x_latents.h5")
    s3.client.put_object(Bucket=s3.bucket, Key="lat/y_latents.h5", Body=b"x")
    assert storage.listdir_names(s3.url("lat")) == ["y_latents.h5"]
    assert not storage.exists(s3.url("lat/x_latents.h5"))
    assert storage.exists(s3.url("lat/y_latents.h5"))
    assert storage.expand([s3.url("lat/*_latents.h5")]) == [s3.url("lat/y_latents.h5")]


def test_fetch_of_an_updated_remote_model_is_not_stale(s3, job, isolated):
    """Replacing <s3_outdir>/<model_folder>/last.pth must change the latents main() writes."""
    from nenya.latents_extraction import main, prep

    up = _upload_job(s3, job, isolated["tmp"])
    old_copy, _ = prep(up["opt"])  # what main() does first: the model is fetched into the cache
    assert old_copy.startswith(str(isolated["cache"]))
    other = str(isolated["tmp"] / "other.pth")
    _make_checkpoint(up["opts"], other, seed=1)
    s3.client.upload_file(other, s3.bucket, up["model_key"])  # the model was retrained
    assert main(up["opts"], [up["input"]]) == [s3.url(up["out_key"])]
    ref_other = _reference(job["opt"], job["data"], other)
    local = _download(s3, up["out_key"], isolated["tmp"] / "new.h5")
    with h5py.File(local, "r") as f:
        assert not np.allclose(f["valid"][:], job["ref"]["valid"], atol=ATOL), "main() used the old, cached model"
        np.testing.assert_allclose(f["valid"][:], ref_other["valid"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(f["train"][:], ref_other["train"], atol=ATOL, rtol=0)
    assert len(list((isolated["cache"] / "fetch").rglob("last.pth"))) == 2  # one cached copy per version


def test_image_folder_and_path_table_from_s3_to_s3_equal_local(s3, isolated, tmp_path):
    """Photos read from s3:// (a folder prefix and a path table of s3:// URLs), vectors written to
    s3:// (Parquet, then npy + Parquet), equal to the same run on local copies; a rerun adds nothing."""
    import pandas as pd
    from PIL import Image

    from nenya.encoders import load_encoder
    from nenya.encoders.base import EncoderOptions
    from nenya.engines.runner import RunOptions
    from nenya.extract import extract_collection

    local = tmp_path / "photos"
    (local / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["a.png", "b.jpg", "sub/c.png", "sub/d.png"]
    for n in names:
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(local / n)
    (local / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for n in names + ["broken.png"]:
        s3.client.upload_file(str(local / n), s3.bucket, f"photos/{n}")
    pd.DataFrame({"url": [s3.url(f"photos/{n}") for n in names], "name": names, "label": [0, 1, 0, 1]}).to_csv(
        tmp_path / "table.csv", index=False
    )
    s3.client.upload_file(str(tmp_path / "table.csv"), s3.bucket, "tables/table.csv")

    torch.manual_seed(0)
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=32)).to("cpu")
    opts = RunOptions(batch_size=2, shard_size=2, num_workers=1, device="cpu", progress=False)
    extract_collection(f"images:{local}", enc, str(tmp_path / "ref.parquet"), options=opts)
    ref = pd.read_parquet(tmp_path / "ref.parquet")

    s = extract_collection(f"images:{s3.url('photos')}", enc, s3.url("vec/photos.parquet"), options=opts)
    assert s.items == 5 and s.skipped == 1
    got = pd.read_parquet(s3.url("vec/photos.parquet"))
    assert list(got["id"]) == list(ref["id"]) == names
    assert got["path"].tolist() == [s3.url(f"photos/{n}") for n in names]
    np.testing.assert_allclose(np.stack(got["vector"]), np.stack(ref["vector"]), atol=1e-6)
    status = pd.read_csv(s3.url("vec/photos.parquet.status.csv"))
    assert dict(zip(status["id"], status["status"]))["broken.png"].startswith("skipped:")
    assert extract_collection(f"images:{s3.url('photos')}", enc, s3.url("vec/photos.parquet"), options=opts).items == 0

    s = extract_collection(
        f"table:{s3.url('tables/table.csv')}",
        enc,
        s3.url("vec/t.npy"),
        options=opts,
        path_column="url",
        id_column="name",
    )
    assert s.items == 4 and s.skipped == 0
    with s3.fs.open(f"{s3.bucket}/vec/t.npy", "rb") as f:
        vectors = np.load(f)
    meta = pd.read_parquet(s3.url("vec/t.parquet"))
    assert list(meta["id"]) == names and list(meta["label"]) == [0, 1, 0, 1]
    np.testing.assert_allclose(vectors, np.stack(ref["vector"]), atol=1e-6)
    assert s3.keys("vec/") == [
        "vec/photos.parquet",
        "vec/photos.parquet.status.csv",
        "vec/t.npy",
        "vec/t.npy.status.csv",
        "vec/t.parquet",
    ]


def test_wds_tfrecord_and_gridded_sources_read_from_s3_as_from_disk(s3, isolated, tmp_path):
    """WebDataset shards, a TFRecord file, a NetCDF file and a Zarr store in a bucket: each source reads
    the same ids, arrays and metadata from s3:// as from the local copies (the files fetched into the
    cache, the Zarr store read chunk by chunk through fsspec)."""
    import io

    from PIL import Image

    from nenya.preprocess import ImageTransform
    from nenya.sources import GridOptions, RecordOptions, SourceOptions, sources
    from photokit import radar_record, sst_field, write_tfrecord, write_wds

    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)).save(buf, format="PNG")
    write_wds(tmp_path / "s-000.tar", [("k0", {"png": buf.getvalue(), "json": {"label": 3}})])
    write_tfrecord(tmp_path / "r.tfrecord", [radar_record(i) for i in (1, 2)])
    sst_field(times=2, h=8, w=8).to_netcdf(tmp_path / "sst.nc", engine="h5netcdf")
    sst_field(times=2, h=8, w=8).to_zarr(tmp_path / "sst.zarr", mode="w", consolidated=False)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            s3.client.upload_file(str(p), s3.bucket, f"in/{p.relative_to(tmp_path)}")
    cases = [
        ("wds", "s-{000..000}.tar", SourceOptions(transform=ImageTransform(size=(16, 16)))),
        ("tfrecord", "r.tfrecord", SourceOptions(records=RecordOptions(feature="ref", shape="size"))),
        ("xarray", "sst.nc", SourceOptions(grid=GridOptions(var="sst", tile=4))),
        ("xarray", "sst.zarr", SourceOptions(grid=GridOptions(var="sst", tile=4))),
    ]
    for kind, name, options in cases:
        got = []
        for where in (str(tmp_path / name), s3.url(f"in/{name}")):
            src = sources.get(kind).from_spec(where, options)
            batches = [b for s in src.plan(8).shards for b in src.read(s, 8)]
            src.close()
            got.append(([i for b in batches for i in b.ids], np.concatenate([b.data for b in batches])))
        assert got[0][0] == got[1][0] and len(got[0][0]) > 0, (kind, name)
        np.testing.assert_array_equal(got[0][1], got[1][1])
