"""Never lose work: ``nenya extract`` killed, interrupted, out of disk, raced, then rerun.

Every case runs the CLI as a user types it (forked from a warm process, see ``faultkit.Zygote``,
so that 20+ random SIGKILLs fit in the CI budget) and ends by comparing the final output with an
uninterrupted reference run: no id lost or duplicated, every file readable, vectors bit-identical,
a status table with every id once, nothing left behind.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

import faultkit as fk
from nenya.sinks.locks import LockHolder

N_VALID, N_TRAIN = 64, 32  # 16x16 cutouts; shards of 32 (2 batches of 16): valid 2 shards, train 1
TOTAL = N_VALID + N_TRAIN
SHARD = 32
RANDOM_KILLS = 10  # per format: 30 random SIGKILLs in all
WORK_DIR = "/" + fk.WORK


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A warm zygote, one checkpoint, and per format a job and its uninterrupted reference."""
    root = tmp_path_factory.mktemp("faults")
    ckpt = fk.make_model(root / "model")
    with fk.Zygote() as z:
        jobs, refs = {}, {}
        for fmt in ("h5", "parquet", "lance"):
            jobs[fmt] = fk.make_job(root / fmt, fmt=fmt, n_valid=N_VALID, n_train=N_TRAIN, ckpt=ckpt)
            refs[fmt] = fk.reference(jobs[fmt], root / fmt / "ref", zygote=z)
            assert len(refs[fmt].output.ids) == TOTAL
        yield {"root": root, "zygote": z, "jobs": jobs, "refs": refs, "ckpt": ckpt}


def _run(kit, fmt: str, folder: Path, *more: str, faults: str | None = None, workers: int | None = None):
    """One run to its end: (exit status, stdout, stderr)."""
    job = kit["jobs"][fmt]
    if workers is not None:
        job = fk.Job(job.preproc, job.ckpt, fmt=fmt, workers=workers)
    e = fk.env() if faults is None else fk.env(NENYA_FAULTS=faults)
    p = fk._popen(job.args(folder, *more), e, folder.parent / f"{folder.name}.{time.monotonic_ns()}.err", kit["zygote"])
    rc = p.proc.wait(timeout=300)
    return rc, p.stdout(), p.stderr()


def _check_final(kit, fmt: str, folder: Path) -> None:
    report = fk.compare(kit["refs"][fmt].output, fk.read_output(folder, kit["jobs"][fmt].output_name), folder)
    assert report.ok, str(report)


def _done_markers(folder: Path) -> int:
    return len(list((folder / fk.WORK).rglob("*.done.json")))


# -- random SIGKILLs -----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["h5", "parquet", "lance"])
def test_random_sigkills_lose_nothing(kit, fmt):
    """RANDOM_KILLS SIGKILLs at random moments (seeded), 4 in a row per cycle, then a completing rerun:
    every output equals the reference."""
    rng = random.Random(f"sigkill-{fmt}")
    kills = cycles = 0
    while kills < RANDOM_KILLS:
        folder = kit["root"] / fmt / f"random{cycles}"
        c = fk.kill_cycle(kit["jobs"][fmt], folder, kit["refs"][fmt], rng, kills=4, zygote=kit["zygote"])
        assert not c.failures, c.failures
        r = c.report
        assert not (r.lost or r.duplicated or r.unreadable or r.mismatched or r.status), f"{r}; {c.log}"
        assert not r.left, f"{r}; {c.log}"
        kills += c.kills
        cycles += 1
        assert cycles < 3 * RANDOM_KILLS, "the kills keep missing: the runs end before the delay"
    assert kills >= RANDOM_KILLS


# -- every named fault point with `kill` -----------------------------------------------------------
POINTS = [
    "read.batch@3",
    "encode.batch@3",
    "part.write@2",
    "part.renamed@2",
    "marker.written@2",
    "assemble.write@2",
    "publish.before",
    "publish.after",
]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_fault_point(kit, point):
    fmt = "h5" if POINTS.index(point) % 2 == 0 else "parquet"
    folder = kit["root"] / fmt / f"kill-{point}"
    rc, _, _ = _run(kit, fmt, folder, faults=f"{point}=kill")
    assert rc == -signal.SIGKILL
    assert not (folder / kit["jobs"][fmt].output_name).exists() or point == "publish.after"
    done = _done_markers(folder)
    rc, out, err = _run(kit, fmt, folder)
    assert rc == 0, err
    items, already = fk.summary_counts(out)
    assert already == done and items == TOTAL - SHARD * done  # only unfinished shards are encoded again
    _check_final(kit, fmt, folder)


@pytest.mark.parametrize("point", ["publish.before", "assemble.write", "publish.after"])
def test_lance_killed_around_its_commit_loses_and_duplicates_nothing(kit, point):
    """The Lance dataset is written in one commit (``assemble.write`` fires right after it): a kill
    before it leaves no dataset, one after it must not make the rerun add the rows a second time."""
    folder = kit["root"] / "lance" / f"kill-{point}"
    rc, _, _ = _run(kit, "lance", folder, faults=f"{point}=kill")
    assert rc != 0
    assert (folder / kit["jobs"]["lance"].output_name).exists() == (point != "publish.before")
    rc, out, err = _run(kit, "lance", folder)
    assert rc == 0, err
    _check_final(kit, "lance", folder)


def test_kill_after_publish_leaves_nothing_behind(kit):
    """Killed between publishing and removing the work folder: the rerun finishes the job again."""
    folder = kit["root"] / "h5" / "publish-after"
    rc, _, _ = _run(kit, "h5", folder, faults="publish.after=kill")
    assert rc == -signal.SIGKILL
    rc, out, err = _run(kit, "h5", folder)
    assert rc == 0, err
    _check_final(kit, "h5", folder)


def test_resume_redoes_only_unfinished_shards(kit):
    """A kill after 2 of 3 shards are committed: the rerun encodes exactly the third shard' items."""
    folder = kit["root"] / "parquet" / "resume"
    rc, _, _ = _run(kit, "parquet", folder, faults="marker.written@2=kill")
    assert rc == -signal.SIGKILL and _done_markers(folder) == 2
    rc, out, err = _run(kit, "parquet", folder)
    assert rc == 0, err
    assert fk.summary_counts(out) == (TOTAL - 2 * SHARD, 2)
    assert "resuming: 2 of 3 shards already committed" in err
    _check_final(kit, "parquet", folder)


# -- a full disk ---------------------------------------------------------------------------------
@pytest.mark.parametrize("point,fmt", [("part.write@2", "h5"), ("assemble.write", "parquet")])
def test_full_disk_is_a_clear_error_and_rerun_completes(kit, point, fmt):
    folder = kit["root"] / fmt / f"enospc-{point}"
    dest = folder / kit["jobs"][fmt].output_name
    rc, out, err = _run(kit, fmt, folder, faults=f"{point}=enospc")
    assert rc == 2, err
    assert "nenya: error: no space left on the device while writing" in err and "Traceback" not in err
    assert f"{dest} was not touched" in err
    named = (
        str(folder / fk.WORK / dest.name / "valid-000000.arrow")
        if point.startswith("part")
        else str(folder / fk.WORK / dest.name)
    )
    assert f"writing {named}" in err
    assert not dest.exists() and not Path(str(dest) + ".status.csv").exists()
    rc, out, err = _run(kit, fmt, folder)  # "space freed": the same command again
    assert rc == 0, err
    _check_final(kit, fmt, folder)


# -- Ctrl-C and SIGTERM ------------------------------------------------------------------------
def test_interrupt_exits_130_and_resumes(kit):
    folder = kit["root"] / "h5" / "interrupt"
    rc, _, err = _run(kit, "h5", folder, faults="encode.batch@5=interrupt")
    assert rc == 130 and fk.RESUME_HINT in err and "Traceback" not in err
    assert _done_markers(folder) == 2  # batches 1-4 are two whole shards, committed
    assert not [p for p in (folder / fk.WORK).rglob("*") if ".tmp-" in p.name or p.suffix == ".lock"]
    rc, out, err = _run(kit, "h5", folder)
    assert rc == 0 and fk.summary_counts(out) == (TOTAL - 2 * SHARD, 2)
    _check_final(kit, "h5", folder)


def test_sigterm_stops_cleanly_after_the_current_batch(kit):
    folder = kit["root"] / "parquet" / "sigterm"
    job = kit["jobs"]["parquet"]
    p = fk._popen(job.args(folder), fk.env(), folder.parent / "sigterm.err", kit["zygote"])
    end = time.monotonic() + 120
    while _done_markers(folder) == 0 and p.proc.poll() is None and time.monotonic() < end:
        time.sleep(0.01)
    assert p.proc.poll() is None, "the run ended before a shard was committed"
    os.kill(p.proc.pid, signal.SIGTERM)
    rc = p.proc.wait(timeout=120)
    err = p.stderr()
    assert rc == 130 and fk.RESUME_HINT in err and "Traceback" not in err, err
    done = _done_markers(folder)
    assert done >= 1 and not [q for q in (folder / fk.WORK).rglob("*") if ".tmp-" in q.name]
    rc, out, err = _run(kit, "parquet", folder)
    assert rc == 0 and fk.summary_counts(out) == (TOTAL - SHARD * done, done)
    _check_final(kit, "parquet", folder)


# -- two runs, one output -------------------------------------------------------------------------
def test_second_concurrent_run_is_refused_by_the_lock(kit):
    folder = kit["root"] / "h5" / "lock"
    job = kit["jobs"]["h5"]
    first = fk._popen(job.args(folder), fk.env(), folder.parent / "lock-first.err", kit["zygote"])
    lock = folder / fk.WORK / (job.output_name + ".lock")
    end = time.monotonic() + 120
    while not (lock.exists() and LockHolder.parse(lock.read_text())) and time.monotonic() < end:
        time.sleep(0.005)
    os.kill(first.proc.pid, signal.SIGSTOP)  # held while it holds the lock
    try:
        assert first.proc.poll() is None, "the first run ended before the second could start"
        rc, _, err = _run(kit, "h5", folder)
        assert rc == 2, err
        assert "another nenya run (pid" in err and f"lock {lock}" in err and "two runs never write one output" in err
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)
    assert first.proc.wait(timeout=300) == 0, first.stderr()
    _check_final(kit, "h5", folder)


# -- a reader process that dies -------------------------------------------------------------------
def test_dead_reader_process_is_reported_with_input_and_position(kit):
    folder = kit["root"] / "h5" / "reader"
    preproc = kit["jobs"]["h5"].preproc
    rc, _, err = _run(kit, "h5", folder, faults="read.batch@2=kill", workers=1)
    assert rc == 2, err  # the reader died, not the main process: it explains
    assert "reader process 0" in err and "signal 9" in err
    # The point fires as the reader makes its 2nd batch (items 16-31); the 1st may still have been in
    # the reader's queue buffer when it died, so the position is a lower bound: 0 or 16.
    m = re.search(
        rf"died while reading {re.escape(str(preproc))} partition 'train', at or after item (\d+) "
        r"\(shard train-000000, items 0-31\)",
        err,
    )
    assert m and int(m.group(1)) in (0, 16), err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    rc, _, err = _run(kit, "h5", folder, workers=1)
    assert rc == 0, err
    _check_final(kit, "h5", folder)
