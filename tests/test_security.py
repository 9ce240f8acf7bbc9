"""Untrusted inputs: pickles that would run code, HDF5 files that reach outside themselves, names
that look like paths, and secrets that must never be printed, logged or recorded."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import faultkit as fk
from nenya._errors import CheckpointError, InputError, OutputError
from nenya.encoders.supcon import SupConEncoder
from nenya.encoders.weights import load_checkpoint
from nenya.engines.runner import RunOptions
from nenya.extract import extract_preproc
from nenya.pipeline import storage
from nenya.sample_data import write_preproc
from nenya.sources.h5files import open_checked
from s3server import s3, s3_server  # noqa: F401  (pytest fixtures)

OPTS = RunOptions(batch_size=8, shard_size=16, num_workers=0, device="cpu", progress=False)


class _MakeDir:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.makedirs, (self.path,))


class _SetGlobal:
    def __reduce__(self):
        return (exec, ("import builtins; builtins.NENYA_PWNED = True",))


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> Path:
    return fk.make_model(tmp_path_factory.mktemp("model"))


def _evil(good: Path, dest: Path, payload) -> Path:
    ckpt = torch.load(good, weights_only=False)
    torch.save({"opt": payload, "model": ckpt["model"], "optimizer": None, "epoch": 1}, dest)
    return dest


@pytest.mark.parametrize("kind,named", [("makedirs", "os.makedirs"), ("global", "GLOBAL exec")])
def test_malicious_checkpoint_never_runs(good_ckpt, tmp_path, kind, named):
    marker = tmp_path / "pwned"
    payload = _MakeDir(marker) if kind == "makedirs" else _SetGlobal()
    evil = _evil(good_ckpt, tmp_path / "evil.pth", payload)
    data = write_preproc(tmp_path / "x_preproc.h5", n_valid=8, size=16)
    from nenya.latents_extraction import model_latents_extract

    opt = load_checkpoint(good_ckpt)["opt"]
    calls = [
        lambda: load_checkpoint(evil),
        lambda: SupConEncoder.from_checkpoint(evil),
        lambda: model_latents_extract(opt, data, str(evil)),
    ]
    for call in calls:
        with pytest.raises(CheckpointError, match=rf"refusing to load {evil}.*{named}.*--trust-checkpoint"):
            call()
    r = fk.cli(fk.Job(Path(data), evil).args(tmp_path / "out"))
    assert r.returncode == 2 and "refusing to load" in r.stderr and named in r.stderr, r.stderr
    assert not marker.exists() and not hasattr(builtins, "NENYA_PWNED")
    assert not (tmp_path / "out" / "x_latents.h5").exists()
    # the explicit opt-in does unpickle it (that is what "trust" means)
    try:
        load_checkpoint(evil, trust=True)
        assert marker.exists() if kind == "makedirs" else builtins.NENYA_PWNED
    finally:
        if hasattr(builtins, "NENYA_PWNED"):
            del builtins.NENYA_PWNED


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned2"
    path = tmp_path / "p.pth"
    path.write_bytes(pickle.dumps(_MakeDir(marker)))
    with pytest.raises(CheckpointError, match="refusing to load|not a readable torch checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


# -- HDF5 that reaches outside the file ---------------------------------------------------------------
def test_hdf5_external_link_and_storage_refused(tmp_path):
    target = write_preproc(tmp_path / "secret.h5", n_valid=4, size=16)
    link = tmp_path / "link_preproc.h5"
    with h5py.File(link, "w") as f:
        f["valid"] = h5py.ExternalLink(target, "valid")
    with pytest.raises(InputError, match=r"dataset 'valid' is an external link to .*secret.h5.*refuses"):
        open_checked(str(link))
    raw = tmp_path / "raw.bin"
    np.zeros((4, 1, 16, 16), np.float32).tofile(raw)
    ext = tmp_path / "ext_preproc.h5"
    with h5py.File(ext, "w") as f:
        f.create_dataset("valid", (4, 1, 16, 16), "f4", external=[(str(raw), 0, h5py.h5f.UNLIMITED)])
    with pytest.raises(InputError, match="dataset 'valid' uses external storage; nenya refuses it"):
        open_checked(str(ext))


def test_hdf5_virtual_dataset_into_another_file_refused(tmp_path):
    target = write_preproc(tmp_path / "secret.h5", n_valid=4, size=16)
    vds = tmp_path / "vds_preproc.h5"
    layout = h5py.VirtualLayout(shape=(4, 1, 16, 16), dtype="f4")
    layout[:] = h5py.VirtualSource(target, "valid", shape=(4, 1, 16, 16))
    with h5py.File(vds, "w") as f:
        f.create_virtual_dataset("valid", layout)
    with pytest.raises(InputError, match="virtual dataset"):
        open_checked(str(vds))


# -- names that look like paths -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "a\x00b", "a\nb", "x" * 241, ""])
def test_safe_name_refuses_paths(name):
    with pytest.raises(OutputError, match="must be a single file name"):
        storage.safe_name(name)


@pytest.mark.parametrize("name", ["x_latents.h5", "..x_latents.h5", "é" * 100, "a b.parquet"])
def test_safe_name_keeps_plain_names(name):
    assert storage.safe_name(name) == name


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("stem", ["..", "x" * 240, "new\nline", "\x01ctl"])
def test_odd_input_names_never_write_outside_the_output(good_ckpt, tmp_path, stem):
    enc = SupConEncoder.from_checkpoint(good_ckpt).to("cpu")
    (tmp_path / "in").mkdir()
    data = write_preproc(tmp_path / "in" / "tmp.h5", n_valid=8, size=16)
    odd = tmp_path / "in" / f"{stem}_preproc.h5"
    os.rename(data, odd)
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)
    before = _tree(tmp_path)
    try:
        summary = extract_preproc([str(odd)], enc, str(out), options=OPTS)
    except OutputError as e:
        assert "must be a single file name" in str(e)
    else:
        assert all(Path(p).parent == out for p in summary.outputs)
    new = _tree(tmp_path) - before
    assert all(p.startswith("deep/out/") for p in new), new


def test_path_table_ids_that_look_like_paths(tmp_path):
    table_mod = pytest.importorskip("nenya.sources.table")
    if not hasattr(table_mod, "PathTableSource"):
        pytest.skip("PathTableSource not there yet")
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["../x", "/abs", "ok"], "path": [str(img)] * 3}), tmp_path / "t.parquet")
    from nenya.sinks.parquet import ParquetSink

    src = table_mod.PathTableSource(str(tmp_path / "t.parquet"), id_column="id")
    plan = src.plan(16)
    sink = ParquetSink(tmp_path / "out")
    for g in plan.groups:
        assert Path(sink.output_path(g)).parent == tmp_path / "out"  # ids are column values, never file names


# -- secrets --------------------------------------------------------------------------------------
SECRET = "SeCrEtMaRkEr-7f3a9c1e5b"
TOKEN = "ToKeNmArKeR-2d8e4f6a0c"


@pytest.mark.s3
@pytest.mark.slow
def test_no_secret_in_logs_manifests_errors_or_outputs(s3, good_ckpt, tmp_path):  # noqa: F811
    data = write_preproc(tmp_path / "x_preproc.h5", n_valid=24, size=16)
    s3.fs.put(str(data), f"{s3.bucket}/in/x_preproc.h5")
    s3.fs.put(str(good_ckpt), f"{s3.bucket}/m/last.pth")
    env = s3.subprocess_env(fk.env())
    env.update(AWS_SECRET_ACCESS_KEY=SECRET, AWS_SESSION_TOKEN=TOKEN, NENYA_CACHE=str(tmp_path / "cache"))

    def run(*args: str, faults: str | None = None) -> subprocess.CompletedProcess:
        e = dict(env, NENYA_FAULTS=faults) if faults else env
        cmd = ["python", "-m", "nenya", "-vv", "extract", *args]
        return subprocess.run([fk.sys.executable, *cmd[1:]], capture_output=True, text=True, env=e, timeout=300)

    base = [
        s3.url("in/x_preproc.h5"),
        "--model",
        "supcon:" + s3.url("m/last.pth"),
        "--output",
        s3.url("out"),
        "--format",
        "parquet",
        "--batch-size",
        "8",
        "--shard-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    texts = []
    killed = run(*base, faults="marker.written@2=kill")  # leaves its manifest in the cache
    assert killed.returncode == -9, killed.stderr
    texts += [killed.stdout, killed.stderr] + fk.manifest_texts(tmp_path / "cache")
    assert fk.manifest_texts(tmp_path / "cache"), "the killed run left no manifest to check"
    ok = run(*base)
    assert ok.returncode == 0, ok.stderr
    assert "DEBUG" in ok.stderr  # -vv really logged at debug level
    texts += [ok.stdout, ok.stderr]
    failing = run(s3.url("in/missing_preproc.h5"), *base[1:])
    assert failing.returncode == 2 and "nenya: error:" in failing.stderr, failing.stderr
    texts += [failing.stdout, failing.stderr]
    for key in s3.keys():
        texts.append(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read().decode("latin-1"))
    for p in (tmp_path / "cache").rglob("*"):
        if p.is_file():
            texts.append(p.read_bytes().decode("latin-1"))
    for t in texts:
        assert SECRET not in t and TOKEN not in t, t[max(0, t.find(SECRET) - 300) :][:600]


def test_usage_error_does_not_echo_a_url_password(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    r = fk.cli([fk.sys.executable, "-m", "nenya", "extract", "x_preproc.h5", "--outptu", f"s3://u:{SECRET}@b/o"])
    assert r.returncode == 2 and SECRET not in r.stderr, r.stderr


@pytest.mark.s3
def test_unexpected_error_traceback_is_redacted(s3, good_ckpt, tmp_path):  # noqa: F811
    data = write_preproc(tmp_path / "x_preproc.h5", n_valid=8, size=16)
    env = s3.subprocess_env(fk.env())
    env.update(AWS_SECRET_ACCESS_KEY=SECRET, NENYA_CACHE=str(tmp_path / "cache"))
    args = fk.Job(Path(data), good_ckpt).args(f"s3://user:{SECRET}@{s3.bucket}/out")
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and SECRET not in r.stderr + r.stdout, r.stderr[-1500:]
