"""Engines: torchrun-style ranks, ``--devices N`` and Ray write exactly what the local engine writes.

Ranks run as real processes through the CLI (RANK/WORLD_SIZE in the environment, as torchrun
sets them); Ray runs on a real two-node local cluster started with ``ray start``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
import pandas as pd
import pytest

from nenya._errors import NenyaError, OutputError
from nenya.encoders.supcon import SupConEncoder
from nenya.engines.runner import RunOptions
from nenya.extract import extract_collection, extract_preproc
from nenya.sinks import WriteContext
from nenya.sinks.parquet import ParquetSink
from nenya.sources.hdf5 import HDF5PreprocSource
from photokit import picture, save, small_encoder

BATCH, SHARD = 4, 8  # preproc: valid 37 -> 5 shards, train 21 -> 3: 8 shards for 2 ranks
OPTS = RunOptions(batch_size=BATCH, shard_size=SHARD, num_workers=0, device="cpu", progress=False)
ENV = dict(os.environ, TQDM_DISABLE="1", RAY_USAGE_STATS_ENABLED="0")
for _k in (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "NENYA_JOB_ID",
    "TORCHELASTIC_RUN_ID",
    "NENYA_FAULTS",
    "RAY_ADDRESS",
):
    ENV.pop(_k, None)
# Ranks on CPU use fewer threads than the local run, which may reorder float sums: equal to
# within a few ulps of float32 (in practice the files have been bitwise equal).
ATOL = 1e-6


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "nenya", *map(str, args)]


def preproc_args(preproc, checkpoint, opts_file, out, fmt="parquet"):
    return [
        "extract",
        preproc,
        "--model",
        f"supcon:{checkpoint[0]}",
        "--opts",
        opts_file,
        "--output",
        out,
        "--format",
        fmt,
        "--batch-size",
        BATCH,
        "--shard-size",
        SHARD,
        "--workers",
        0,
        "--no-progress",
    ]


def env_with(os_env=None, **kw) -> dict:
    e = dict(ENV if os_env is None else os_env)
    e.update({k: str(v) for k, v in kw.items()})
    return e


def ranks(args, world: int, cwd=None, **per_rank_env) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks as torchrun would (RANK/WORLD_SIZE/LOCAL_RANK set), wait for all."""
    procs = []
    for r in range(world):
        extra = per_rank_env.get(f"rank{r}", {})
        procs.append(
            subprocess.Popen(
                cli(*args),
                env=env_with(RANK=r, WORLD_SIZE=world, LOCAL_RANK=r, LOCAL_WORLD_SIZE=world, **extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=cwd,
            )
        )
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.fixture
def reference(opt, checkpoint, preproc, tmp_path):
    """The local engine's Parquet output of the preproc file (the same batches and shards)."""
    enc = SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu")
    path = extract_preproc([str(preproc)], enc, str(tmp_path / "ref"), fmt="parquet", options=OPTS).outputs[0]
    return pd.read_parquet(path)


def assert_same(got: pd.DataFrame, ref: pd.DataFrame) -> None:
    assert got["id"].is_unique and list(got["id"]) == list(ref["id"])  # every id once, in the same order
    assert list(got.columns) == list(ref.columns)
    for c in ref.columns:
        if c != "vector":
            assert list(got[c]) == list(ref[c]), c
    np.testing.assert_allclose(np.stack(got["vector"]), np.stack(ref["vector"]), rtol=0, atol=ATOL)


def assert_status_complete(path, ids) -> None:
    status = pd.read_csv(str(path) + ".status.csv")
    assert status["id"].is_unique and sorted(status["id"]) == sorted(ids)


# -- torchrun-style ranks -------------------------------------------------------------------------
def test_two_ranks_from_environment_equal_local(preproc, checkpoint, opts_file, reference, tmp_path):
    out = tmp_path / "ranks"
    results = ranks(preproc_args(preproc, checkpoint, opts_file, out), 2)
    for r in results:
        assert r.returncode == 0, r.stderr
    final = out / "tiny_latents_test.parquet"
    assert str(final) in results[0].stdout and str(final) not in results[1].stdout  # rank 0 publishes
    assert "rank 1 of 2: 29 images" in results[1].stdout  # 4 of the 8 shards each
    assert_same(pd.read_parquet(final), reference)
    assert_status_complete(final, reference["id"])
    assert not (out / ".nenya-work").exists()  # parts, locks and markers all gone


def test_devices_h5_equals_local(opt, preproc, checkpoint, opts_file, tmp_path):
    enc = SupConEncoder.from_checkpoint(checkpoint[0], opt).to("cpu")
    ref = extract_preproc([str(preproc)], enc, str(tmp_path / "ref"), options=OPTS).outputs[0]
    out = tmp_path / "dev"
    r = subprocess.run(
        cli(*preproc_args(preproc, checkpoint, opts_file, out, "h5"), "--devices", 2),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "rank 0 of 2" in r.stdout and "rank 1 of 2" in r.stdout
    with h5py.File(ref) as a, h5py.File(out / "tiny_latents_test.h5") as b:
        assert set(a) == set(b)
        for p in ("train", "valid"):
            np.testing.assert_allclose(b[p][:], a[p][:], rtol=0, atol=ATOL)
            np.testing.assert_array_equal(b[f"{p}_metadata"][:], a[f"{p}_metadata"][:])


def test_devices_image_folder_equals_local(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        save(picture(i), root / f"{i:02d}.png", "PNG")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    opts = RunOptions(batch_size=2, shard_size=2, num_workers=0, device="cpu", progress=False)
    ref_path = tmp_path / "ref.parquet"
    extract_collection(f"images:{root}", small_encoder(), str(ref_path), options=opts)
    out = tmp_path / "dev" / "v.parquet"
    r = subprocess.run(
        cli(
            "extract",
            "--source",
            f"images:{root}",
            "--model",
            "timm:resnet18",
            "--size",
            32,
            "--batch-size",
            2,
            "--shard-size",
            2,
            "--workers",
            0,
            "--no-progress",
            "-o",
            out,
            "--devices",
            2,
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    ref, got = pd.read_parquet(ref_path), pd.read_parquet(out)
    assert len(got) == 6
    # same model (seeded random weights) built in each rank; timm convs on CPU: a few ulps apart at most
    assert list(got["id"]) == list(ref["id"]) and list(got["path"]) == list(ref["path"])
    np.testing.assert_allclose(np.stack(got["vector"]), np.stack(ref["vector"]), rtol=0, atol=1e-5)
    assert_status_complete(out, [f"{i:02d}.png" for i in range(6)] + ["broken.jpg"])
    status = pd.read_csv(str(out) + ".status.csv").set_index("id")["status"]
    assert status["broken.jpg"].startswith("skipped:")


def test_killed_rank_is_reported_and_rerun_resumes(preproc, checkpoint, opts_file, reference, tmp_path):
    out = tmp_path / "killed"
    args = preproc_args(preproc, checkpoint, opts_file, out)
    # rank 1 dies (SIGKILL, no cleanup) right after committing its second shard
    first = ranks(args, 2, rank1={"NENYA_FAULTS": "marker.written@2=kill"})
    assert first[1].returncode == -signal.SIGKILL
    assert first[0].returncode == 2 and "rank 1 (pid" in first[0].stderr and "died" in first[0].stderr
    assert "rerun the same command to resume" in first[0].stderr
    final = out / "tiny_latents_test.parquet"
    assert not final.exists()  # nothing published while a shard is missing
    work = out / ".nenya-work" / "tiny_latents_test.parquet"
    assert len(list(work.glob("*.done.json"))) == 4 + 2  # rank 0's four and rank 1's first two are kept
    second = subprocess.run(cli(*args, "--devices", 2), capture_output=True, text=True, env=ENV, timeout=300)
    assert second.returncode == 0, second.stderr
    # rank 0 has nothing to do; it may plan after rank 1 has already committed one of its two shards
    assert re.search(r"rank 0 of 2: 0 of 8 shards to encode \([678] already committed\)", second.stderr)
    assert "rank 1 of 2: 2 of 8 shards to encode (6 already committed)" in second.stderr  # only what was lost
    assert_same(pd.read_parquet(final), reference)
    assert_status_complete(final, reference["id"])


def test_rank_locks_share_one_job_and_refuse_another(preproc, tmp_path):
    plan = HDF5PreprocSource([str(preproc)]).plan(SHARD)

    def start(rank, world):  # the engine tells the sink its rank through the WriteContext
        s = ParquetSink(tmp_path / "out")
        s.start(plan, WriteContext(dim=4, fingerprint="f", rank=rank, world=world))
        return s

    a, b = start(0, 2), start(1, 2)  # ranks of one job do not refuse each other
    holder = a.lock_holder(plan.groups[0], 1)  # who holds a lock is data, not text to parse
    assert holder is not None and holder.pid == os.getpid() and not holder.dead_here()
    for rank, world in ((0, 1), (1, 2), (0, 3)):  # a second job is refused, whatever its size
        with pytest.raises(OutputError, match=rf"writing the same output|another nenya run \(pid {os.getpid()}"):
            start(rank, world)
    a.abort()
    with pytest.raises(OutputError, match="multi-process"):  # rank 1 still holds its lock
        start(0, 1)
    b.abort()
    start(0, 1).abort()


def test_rank_zero_tells_this_jobs_dead_rank_from_an_earlier_runs_lock(preproc):
    """A killed run's lock can be seconds old when the rerun starts: it must never be taken for a rank
    of the rerun dying (the killed-rank test above failed this way on a fresh clone)."""
    from nenya import ranks as _ranks
    from nenya.engines.torchrun import Ranks, RankShare
    from nenya.sinks.locks import LockHolder

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = os.uname().nodename
    plan = HDF5PreprocSource([str(preproc)]).plan(SHARD)

    class Locks:  # the only part of a sink rank 0 reads to call a rank dead
        holder: LockHolder | None = None

        def lock_holder(self, group, rank):
            return self.holder

    def verdict(token: str, holder: LockHolder) -> str | None:
        sink = Locks()
        sink.holder = holder
        share = RankShare(Ranks(0, 2, 0, 2, token), sink)
        share.plan = plan
        return share._dead(1)

    now = time.time()
    # this run has a job id: only a lock with that id is this job's, however recent the other is
    assert verdict("job-b", LockHolder(gone.pid, here, now, "", os.getppid())) is None
    assert verdict("job-b", LockHolder(gone.pid, here, now, "job-a", os.getppid())) is None
    assert verdict("job-b", LockHolder(gone.pid, here, now, "job-b", os.getppid())) == f"rank 1 (pid {gone.pid}) died"
    assert verdict("job-b", LockHolder(os.getpid(), here, now, "job-b", os.getppid())) is None  # alive
    # no job id (torchrun without --rdzv-id): a lock from another launch, or from before this process
    assert verdict("", LockHolder(gone.pid, here, now, "", os.getpid())) is None
    assert verdict("", LockHolder(gone.pid, here, _ranks.PROCESS_T0 - 60, "", os.getppid())) is None
    assert verdict("", LockHolder(gone.pid, here, now, "job-a", os.getppid())) is None
    assert verdict("", LockHolder(gone.pid, here, now, "", os.getppid())) == f"rank 1 (pid {gone.pid}) died"
    assert verdict("", LockHolder(gone.pid, "elsewhere", now, "", os.getppid())) is None  # not judged from here


def test_engine_flags_are_checked(preproc, checkpoint, opts_file, tmp_path):
    r = subprocess.run(
        cli(*preproc_args(preproc, checkpoint, opts_file, tmp_path / "o"), "--engine", "torchrun"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert r.returncode == 2 and "torchrun --nproc-per-node" in r.stderr
    from nenya.engines.torchrun import Ranks

    assert Ranks.from_env({}) is None
    assert Ranks.from_env({"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"}) == Ranks(1, 2, 1, 2, "")
    with pytest.raises(NenyaError, match="not within"):
        Ranks.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_ray_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    from nenya.engines.ray import EncoderBuilder, RayEngine

    with pytest.raises(NenyaError, match=r'pip install "nenya\[ray\]"'):
        RayEngine(EncoderBuilder("timm:resnet18"))


# -- Ray: a real two-node local cluster -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(temp_dir: str) -> list:
    """Processes of our cluster only (their command lines name its temp dir), with their children."""
    import psutil

    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in a for a in (p.info["cmdline"] or [])):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return list(found.values())


class _Cluster(str):
    """The cluster's address (what --address takes), with the temp dir that names its processes."""

    def __new__(cls, address: str, temp_dir: str):
        self = super().__new__(cls, address)
        self.temp_dir = temp_dir
        return self


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node (one CPU each) started with ``ray start``; stopped and checked gone after."""
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the ray command is not installed")
    temp_dir = tempfile.mkdtemp(prefix="nr", dir="/tmp")  # short: Ray's socket paths are length-limited
    port = _free_port()
    common = [
        "--num-cpus",
        "1",
        "--num-gpus",
        "0",
        "--object-store-memory",
        "100000000",
        "--disable-usage-stats",
        "--temp-dir",
        temp_dir,
    ]
    env = dict(ENV)
    try:
        for extra in (
            ["--head", "--port", port, "--include-dashboard", "false", "--ray-client-server-port", _free_port()],
            ["--address", f"127.0.0.1:{port}"],
        ):
            r = subprocess.run(
                [
                    ray_bin,
                    "start",
                    *map(str, extra),
                    *common,
                    "--dashboard-agent-listen-port",
                    str(_free_port()),
                    "--metrics-export-port",
                    str(_free_port()),
                ],
                capture_output=True,
                text=True,
                env=env,
                timeout=240,
            )
            assert r.returncode == 0, r.stdout + r.stderr
        yield _Cluster(f"127.0.0.1:{port}", temp_dir)
    finally:
        procs = _ray_processes(temp_dir)
        for p in procs:  # never `ray stop`: it would stop every Ray cluster of this machine
            try:
                p.terminate()
            except Exception:
                pass
        import psutil

        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except Exception:
                pass
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        left = []
        for p in _ray_processes(temp_dir):
            try:
                if p.status() != psutil.STATUS_ZOMBIE:  # a zombie is only waiting for its parent to reap it
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        assert not left, f"Ray processes left behind: {left}"


@pytest.mark.ray
def test_ray_two_nodes_equal_local(ray_cluster, preproc, checkpoint, opts_file, reference, tmp_path):
    out = tmp_path / "ray"
    t = time.perf_counter()
    r = subprocess.run(
        cli(
            "-v",
            *preproc_args(preproc, checkpoint, opts_file, out),
            "--engine",
            "ray",
            "--address",
            ray_cluster,
            "--actors",
            2,
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "encoded by 2 actor(s) on 2 node(s)" in r.stderr  # one actor per one-CPU node
    final = out / "tiny_latents_test.parquet"
    assert str(final) in r.stdout
    assert_same(pd.read_parquet(final), reference)
    assert_status_complete(final, reference["id"])
    assert time.perf_counter() - t < 400


@pytest.mark.slow
@pytest.mark.ray
def test_ray_actor_killed_mid_run_is_replaced_and_nothing_is_lost(
    ray_cluster, preproc, checkpoint, opts_file, reference, tmp_path
):
    import psutil

    out = tmp_path / "ray-kill"
    proc = subprocess.Popen(
        cli(
            "-v",
            *preproc_args(preproc, checkpoint, opts_file, out),
            "--engine",
            "ray",
            "--address",
            ray_cluster,
            "--actors",
            2,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    killed, deadline = None, time.monotonic() + 300
    try:
        while killed is None and proc.poll() is None and time.monotonic() < deadline:
            for p in _ray_processes(ray_cluster.temp_dir):
                try:
                    title = " ".join(p.cmdline())
                except psutil.NoSuchProcess:
                    continue
                if title.startswith("ray::ShardEncoder.encode"):  # an actor in the middle of a shard
                    p.send_signal(signal.SIGKILL)
                    killed = p.pid
                    break
            time.sleep(0.01)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "no actor was seen encoding: the run ended before the kill"
    assert proc.returncode == 0, stderr[-3000:]
    assert "an actor died on shard" in stderr and "retrying it on a new actor" in stderr
    final = out / "tiny_latents_test.parquet"
    assert str(final) in stdout
    assert_same(pd.read_parquet(final), reference)  # every id once, vectors equal to the local run
    assert_status_complete(final, reference["id"])
