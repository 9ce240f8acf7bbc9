"""Fault-injection harness: run ``nenya extract`` as a user would, kill it, rerun, compare.

The "never lose work" contract, checked from the outside:

1. :func:`make_job` builds a tiny job (a preproc file of a few hundred 16x16 cutouts, a resnet18
   SupCon checkpoint with feat_dim 16) and :meth:`Job.args` the CLI command for it.
2. :func:`reference` runs that command once, uninterrupted, and reads what it wrote.
3. :func:`kill_cycle` runs the same command in a subprocess and SIGKILLs it at a random moment
   (a delay from a seeded RNG, within the measured run time, counted from the moment the model
   is loaded, which is when the interesting part starts), ``kills`` times in a row, then reruns
   it until it completes. Named fault points (``NENYA_FAULTS="part.write=kill"``) make the kill
   land exactly on one line of the commit protocol instead.
4. :func:`compare` checks the final output against the reference: ids lost or duplicated,
   output files that fail to open, vectors that are not bit-identical, a status table that does
   not list every id exactly once with the reference's status, and anything left behind
   (``.nenya-work``, ``.*.tmp-*`` temporaries, lock files).

Why bit-identical (atol 0): every run uses the same fp32 weights on the CPU, the same thread
count and, because shards are whole multiples of the batch size and always start at a batch
boundary, exactly the same batches (same members, same shapes) whether a shard is encoded in
the first run or in a rerun. The same kernels on the same inputs give the same bits, so any
difference at all means a row came from the wrong place.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq

TESTS = Path(__file__).resolve().parent
WORK = ".nenya-work"
READY = "model "  # the CLI's first line on stderr, printed once the model is loaded
RESUME_HINT = "rerun the same command to resume"


# -- the job -----------------------------------------------------------------------------------
@dataclass
class Job:
    """One extraction as a CLI command: input, model and run options (not the output folder)."""

    preproc: Path
    ckpt: Path
    fmt: str = "h5"
    batch_size: int = 16
    shard_size: int = 32
    workers: int = 0
    extra: tuple[str, ...] = ()

    def args(self, output: str | os.PathLike, *more: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "nenya",
            "extract",
            str(self.preproc),
            "--model",
            f"supcon:{self.ckpt}",
            "--output",
            str(output),
            "--format",
            self.fmt,
            "--batch-size",
            str(self.batch_size),
            "--shard-size",
            str(self.shard_size),
            "--workers",
            str(self.workers),
            "--device",
            "cpu",
            "--no-progress",
            *self.extra,
            *more,
        ]

    @property
    def output_name(self) -> str:
        from nenya.sinks import sinks
        from nenya.sources.hdf5 import latents_name

        return latents_name(str(self.preproc), sinks.get(self.fmt).ext)


def make_model(folder: Path, *, seed: int = 0) -> Path:
    """A resnet18 SupCon checkpoint (feat_dim 16) in Nenya's format; returns its path."""
    sys.path.insert(0, str(TESTS))
    from conftest import make_opts, save_checkpoint
    from nenya.params import Params, option_preprocess

    folder.mkdir(parents=True, exist_ok=True)
    opt = option_preprocess(Params(make_opts(folder)))
    path = folder / "last.pth"
    save_checkpoint(opt, path, seed=seed)
    return path


def make_job(
    folder: Path,
    *,
    fmt: str = "h5",
    n_valid: int = 160,
    n_train: int = 96,
    workers: int = 0,
    ckpt: Path | None = None,
    seed: int = 3,
    **kwargs,
) -> Job:
    """A tiny job in ``folder``: ``x_preproc.h5`` (16x16 cutouts) and a checkpoint (made when not given)."""
    from nenya.sample_data import write_preproc

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "x_preproc.h5"
    if not data.exists():
        write_preproc(data, n_valid=n_valid, n_train=n_train, size=16, seed=seed)
    return Job(Path(data), ckpt or make_model(folder / "model"), fmt=fmt, workers=workers, **kwargs)


def env(**extra: str) -> dict[str, str]:
    """The environment of a CLI run: no progress bar, no fault unless given, plus ``extra``.

    One torch thread per run: on a shared 2-core machine two threads per process oversubscribe the
    cores (several times slower), and a fixed thread count keeps the vectors bit-identical."""
    e = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    e.pop("NENYA_FAULTS", None)
    e.update(extra)
    return e


def cli(
    args: list[str], *, faults: str | None = None, timeout: float = 300, **extra: str
) -> subprocess.CompletedProcess:
    """Run a CLI command to its end (``faults``: a NENYA_FAULTS spec)."""
    e = env(**extra) if faults is None else env(NENYA_FAULTS=faults, **extra)
    return subprocess.run(args, capture_output=True, text=True, env=e, timeout=timeout)


# -- reading an output -------------------------------------------------------------------------
@dataclass
class Output:
    """What a finished run left in its output folder."""

    ids: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    status: list[tuple[str, str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def by_id(self) -> dict[str, np.ndarray]:
        return {i: v for i, v in zip(self.ids, self.vectors)}


def read_status_csv(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(r["id"], r["status"]) for r in csv.DictReader(f)]


def read_output(folder: str | os.PathLike, name: str) -> Output:
    """Ids and vectors of the rows an output holds (h5: only rows not flagged invalid), and its status table.

    A file that is missing or fails to open is listed in ``unreadable`` rather than raising.
    """
    folder = Path(folder)
    out = Output()
    path, status = folder / name, folder / (name + ".status.csv")
    try:
        if name.endswith(".h5"):
            ids, vecs = [], []
            with h5py.File(path, "r") as f:
                for p in ("train", "valid"):
                    if p not in f:
                        continue
                    v = f[p][:]
                    rows = f[f"{p}_rows"][:] if f"{p}_rows" in f else np.arange(len(v))
                    ok = f[f"{p}_valid"][:] if f"{p}_valid" in f else np.ones(len(v), bool)
                    ids += [f"{p}/{r}" for r, k in zip(rows.tolist(), ok) if k]
                    vecs.append(v[ok])
            out.ids, out.vectors = ids, np.concatenate(vecs) if vecs else out.vectors
        else:
            if name.endswith(".lance"):
                import lance

                t = lance.dataset(str(path)).to_table()
            else:
                t = pq.read_table(path)
            out.ids = t.column("id").to_pylist()
            out.vectors = (
                np.stack(t.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
                if t.num_rows
                else out.vectors
            )
    except Exception as e:  # noqa: BLE001 - anything that fails to open counts as unreadable
        out.unreadable.append(f"{path}: {type(e).__name__}: {e}")
    try:
        out.status = read_status_csv(status)
    except Exception as e:  # noqa: BLE001
        out.unreadable.append(f"{status}: {type(e).__name__}: {e}")
    return out


def leftovers(folder: str | os.PathLike) -> list[str]:
    """Anything a finished run must not leave: the work folder, temporaries, lock files."""
    folder = Path(folder)
    found = []
    if (folder / WORK).exists():
        found.append(str(folder / WORK) + " (" + ", ".join(sorted(os.listdir(folder / WORK)))[:200] + ")")
    for p in folder.rglob("*"):
        if (p.name.startswith(".") and ".tmp-" in p.name) or p.name.endswith(".lock"):
            found.append(str(p))
    return found


# -- comparing ---------------------------------------------------------------------------------
@dataclass
class Report:
    """Differences between an output and the reference (all empty/zero when it is right)."""

    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unreadable or self.mismatched or self.status or self.left)

    def __str__(self) -> str:
        parts = [f"{k} {len(v)}: {v[:3]}" for k, v in vars(self).items() if v]
        return "; ".join(parts) or "identical to the reference"


def compare(ref: Output, got: Output, folder: str | os.PathLike | None = None) -> Report:
    """Compare an output with the reference (vectors with atol 0: see the module docstring)."""
    r = Report(unreadable=list(got.unreadable))
    counts = Counter(got.ids)
    r.duplicated = sorted(i for i, c in counts.items() if c > 1)
    r.lost = sorted(set(ref.ids) - set(counts))
    extra = sorted(set(counts) - set(ref.ids))
    r.mismatched = [f"{i} (not in the reference)" for i in extra]
    mine = got.by_id()
    for i, v in ref.by_id().items():
        if i in mine and not np.array_equal(mine[i], v):
            r.mismatched.append(f"{i} (max |diff| {float(np.abs(mine[i] - v).max()):.3g})")
    sc = Counter(i for i, _ in got.status)
    if not got.unreadable:
        if sorted(sc) != sorted(i for i, _ in ref.status) or any(c != 1 for c in sc.values()):
            r.status.append(f"status ids: {len(sc)} distinct of {len(got.status)} rows, reference {len(ref.status)}")
        elif dict(got.status) != dict(ref.status):
            r.status.append("status values differ from the reference")
    if folder is not None:
        r.left = leftovers(folder)
    return r


# -- runs --------------------------------------------------------------------------------------
@dataclass
class Reference:
    output: Output
    seconds: float  # whole run
    ready: float  # until the model was loaded (process start + imports + checkpoint)


def reference(job: Job, folder: str | os.PathLike, zygote: Zygote | None = None) -> Reference:
    """An uninterrupted run into ``folder``: what every interrupted run must end up equal to."""
    t0 = time.perf_counter()
    res = _popen(job.args(folder), env(), Path(folder).parent / (Path(folder).name + ".ref-stderr"), zygote)
    ready = _wait_ready(res, timeout=300) - t0
    rc = res.proc.wait(timeout=600)
    seconds = time.perf_counter() - t0
    if rc != 0:
        raise AssertionError(f"reference run failed ({rc}): {res.stderr()}")
    out = read_output(folder, job.output_name)
    if out.unreadable or not out.ids:
        raise AssertionError(f"reference output unreadable: {out.unreadable}")
    return Reference(out, seconds, ready)


class Zygote:
    """A process that has imported nenya, torch, h5py and pyarrow once and forks a child per run.

    Each child sets the run's environment, points stdout/stderr at files and calls
    ``nenya.cli.main(argv)``, exactly what ``python -m nenya`` does, without paying the 2-4 s of
    imports again: that is what lets the CI suite afford 20+ random SIGKILLs. The zygote itself
    never runs a torch operation (no thread pools exist at fork time). The child is killed by
    pid like any process; its exit status comes back through the zygote.

    Use as a context manager; :meth:`start` returns a handle with ``pid``, ``poll``, ``wait``.
    """

    CODE = (
        "import json, os, sys, traceback\n"
        "import torch, h5py, pyarrow.parquet, numpy, nenya.cli, nenya.extract, nenya.encoders.supcon\n"
        "import nenya.sinks.hdf5, nenya.sinks.parquet, nenya.engines.runner\n"
        "out = sys.stdout\n"
        "for line in sys.stdin:\n"
        "    job = json.loads(line)\n"
        "    if job.get('wait'):\n"
        "        _, st = os.waitpid(job['wait'], 0)\n"
        "        out.write(json.dumps({'rc': os.waitstatus_to_exitcode(st)}) + '\\n'); out.flush(); continue\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        rc = 1\n"
        "        try:\n"
        "            os.setsid()\n"
        "            os.environ.clear(); os.environ.update(job['env'])\n"
        "            for fd, path in ((1, job['out']), (2, job['err'])):\n"
        "                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(f, fd); os.close(f)\n"
        "            sys.stdin = open(os.devnull)\n"
        "            sys.stdout = os.fdopen(1, 'w', buffering=1); sys.stderr = os.fdopen(2, 'w', buffering=1)\n"
        "            rc = nenya.cli.main(job['argv'])\n"
        "        except SystemExit as e:\n"
        "            rc = e.code if isinstance(e.code, int) else 1\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "        finally:\n"
        "            sys.stdout.flush(); sys.stderr.flush(); os._exit(rc or 0)\n"
        "    out.write(json.dumps({'pid': pid}) + '\\n'); out.flush()\n"
    )

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Zygote:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(),
            bufsize=1,
        )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None

    def _ask(self, msg: dict) -> dict:
        assert self.proc is not None, "use the Zygote as a context manager"
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, args: list[str], e: dict[str, str], out_path: Path, err_path: Path) -> _Child:
        """Run ``args`` (a full ``python -m nenya ...`` command line) in a fresh fork."""
        assert args[1:3] == ["-m", "nenya"], args
        pid = self._ask({"argv": args[3:], "env": e, "out": str(out_path), "err": str(err_path)})["pid"]
        return _Child(self, pid)


class _Child:
    """A zygote's child, with the parts of the Popen interface the harness uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:  # a zombie (exited, not yet reaped by the zygote) counts as ended
                with open(f"/proc/{self.pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                state = "Z"
            if state != "Z":
                return None
            self.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if timeout is not None:
                end = time.perf_counter() + timeout
                while self.poll_running():
                    if time.perf_counter() > end:
                        raise subprocess.TimeoutExpired(str(self.pid), timeout)
                    time.sleep(0.01)
            self.returncode = self.zygote._ask({"wait": self.pid})["rc"]
        return self.returncode

    def poll_running(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False


@dataclass
class _Proc:
    proc: subprocess.Popen | _Child
    err_path: Path
    out_path: Path | None = None

    def stdout(self) -> str:
        try:
            return self.out_path.read_text(errors="replace") if self.out_path else ""
        except FileNotFoundError:
            return ""

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _popen(args: list[str], e: dict[str, str], err_path: Path, zygote: Zygote | None = None) -> _Proc:
    err_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = err_path.with_name(err_path.name + ".out")
    if zygote is not None:
        return _Proc(zygote.start(args, e, out_path, err_path), err_path, out_path)
    with open(err_path, "w") as err, open(out_path, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env=e, start_new_session=True)
    return _Proc(proc, err_path, out_path)


def _wait_ready(p: _Proc, *, timeout: float) -> float:
    """The time the CLI said the model is loaded (or ended, or timed out)."""
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if READY in p.stderr() or p.proc.poll() is not None:
            return time.perf_counter()
        time.sleep(0.01)
    return time.perf_counter()


def _reap_group(pgid: int, *, grace: float = 10.0) -> None:
    """Wait for orphaned reader processes of a killed run to exit by themselves (they notice their
    parent is gone); SIGKILL any still there after ``grace`` seconds so runs stay independent."""
    end = time.perf_counter() + grace
    while time.perf_counter() < end:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_and_kill(
    args: list[str],
    delay: float,
    *,
    err_path: Path,
    faults: str | None = None,
    sig: int = signal.SIGKILL,
    zygote: Zygote | None = None,
) -> tuple[bool, int, str]:
    """Start the command, send ``sig`` to its main process ``delay`` s after the model is loaded.

    Returns (the signal landed while it ran, exit status, stderr)."""
    e = env() if faults is None else env(NENYA_FAULTS=faults)
    p = _popen(args, e, err_path, zygote)
    _wait_ready(p, timeout=300)
    landed = False
    try:
        p.proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        try:
            os.kill(p.proc.pid, sig)
            landed = True
        except ProcessLookupError:
            pass
    rc = p.proc.wait(timeout=600)
    if rc == 0 and landed and sig == signal.SIGKILL:
        landed = False  # it had already finished: the signal missed
    _reap_group(p.proc.pid)  # each run is its own session (process group)
    return landed, rc, p.stderr()


@dataclass
class Cycle:
    """One kill-rerun cycle: kills that landed, runs made, seconds, and the comparison."""

    kills: int = 0
    runs: int = 0
    seconds: float = 0.0
    report: Report = field(default_factory=Report)
    failures: list[str] = field(default_factory=list)  # reruns that ended with an error
    log: list[str] = field(default_factory=list)


def kill_cycle(
    job: Job,
    folder: str | os.PathLike,
    ref: Reference,
    rng: random.Random,
    *,
    kills: int = 1,
    faults: str | None = None,
    max_runs: int = 20,
    zygote: Zygote | None = None,
) -> Cycle:
    """SIGKILL the command ``kills`` times in a row at random moments (or let ``faults`` kill it at
    a named point: then once), rerun until it completes, and compare with the reference."""
    folder = Path(folder)
    c = Cycle()
    t0 = time.perf_counter()
    window = max(0.2, ref.seconds - ref.ready)
    err = folder.parent / (folder.name + ".stderr")
    done = False
    if faults is not None:
        landed, rc, text = run_and_kill(job.args(folder), 600, err_path=err, faults=faults, zygote=zygote)
        c.runs += 1
        c.kills += rc == -signal.SIGKILL
        c.log.append(f"fault {faults}: rc {rc}")
        done = rc == 0
    else:
        for _ in range(kills):
            delay = rng.uniform(0.0, window)
            landed, rc, text = run_and_kill(job.args(folder), delay, err_path=err, zygote=zygote)
            c.runs += 1
            c.kills += landed
            c.log.append(f"kill after {delay:.2f} s: rc {rc}")
            if rc == 0:
                done = True
                break
            if rc != -signal.SIGKILL:
                c.failures.append(f"rc {rc}: {text[-2000:]}")
    while not done and c.runs < max_runs:
        p = _popen(job.args(folder), env(), err, zygote)
        rc = p.proc.wait(timeout=600)
        c.runs += 1
        c.log.append(f"rerun: rc {rc}: {p.stdout().strip().splitlines()[-1:] or ''}")
        if rc == 0:
            done = True
        else:
            c.failures.append(f"rc {rc}: {p.stderr()[-2000:]}")
    c.seconds = time.perf_counter() - t0
    c.report = compare(ref.output, read_output(folder, job.output_name), folder)
    if not done:
        c.failures.append(f"did not complete in {max_runs} runs")
    return c


def summary_counts(stdout: str) -> tuple[int, int]:
    """(items encoded in this run, shards already done) from the CLI's summary line."""
    import re

    m = re.search(r"^(\d+) images in .*?(?:, (\d+) shard\(s\) already done)?(?: \[|$)", stdout, re.M)
    if not m:
        raise AssertionError(f"no summary line in {stdout!r}")
    return int(m.group(1)), int(m.group(2) or 0)


def manifest_texts(folder: str | os.PathLike) -> list[str]:
    return [p.read_text() for p in Path(folder).rglob("manifest.json")]


__all__ = [
    "Job",
    "Output",
    "Report",
    "Reference",
    "Cycle",
    "Zygote",
    "make_job",
    "make_model",
    "cli",
    "env",
    "reference",
    "read_output",
    "read_status_csv",
    "leftovers",
    "compare",
    "run_and_kill",
    "kill_cycle",
    "summary_counts",
    "manifest_texts",
]
