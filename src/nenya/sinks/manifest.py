"""The manifest of an output's work folder (``manifest.json``): a digest of the run's fingerprint
(inputs, model weights, preprocessing, output schema), so a rerun continues the parts there only
when it would produce the same output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

from nenya._errors import OutputError
from nenya.pipeline import storage

MANIFEST = "manifest.json"


def vectors_digest(fingerprint: str) -> str:
    """A short digest of what determines a run's vectors (model, weights, preprocessing, precision)."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def digest(fp: str) -> str:
    """What the manifest records of the fingerprint ``fp``."""
    return hashlib.sha256(fp.encode()).hexdigest()


def check_manifest(gdir: str, fp: str, *, overwrite: bool, rank: int) -> None:
    """Refuse the unfinished run of another fingerprint in ``gdir``, or discard it with ``overwrite``
    (rank 0 does; another rank waits until rank 0 has written the new manifest)."""
    manifest = os.path.join(gdir, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as f:
            old = json.load(f).get("fingerprint")
        if old != digest(fp):
            if not overwrite:
                raise OutputError(
                    f"{gdir} holds an unfinished run with a different model, preprocessing, input or "
                    "output format; rerun with --overwrite (clobber=True) to discard it, or choose another output"
                )
            if rank == 0:
                shutil.rmtree(gdir)
            else:  # rank 0 discards the old work; never delete parts another rank may be writing
                await_manifest(manifest, digest(fp), rank)


def write_manifest(gdir: str, fp: str, output: str, input: str) -> None:
    """Write ``gdir``'s manifest for the fingerprint ``fp`` unless there is one."""
    manifest = os.path.join(gdir, MANIFEST)
    if not os.path.exists(manifest):
        with storage.atomic_local(manifest) as tmp, open(tmp, "w") as f:
            json.dump(
                {
                    "fingerprint": digest(fp),
                    "output": storage.redact(output),
                    "input": storage.redact(input),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
                f,
                indent=1,
            )


def await_manifest(manifest: str, want: str, rank: int, timeout: float = 600.0) -> None:
    """Rank r > 0 with --overwrite: wait until rank 0 has replaced an old run's manifest."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        try:
            with open(manifest) as f:
                if json.load(f).get("fingerprint") == want:
                    return
        except (OSError, ValueError):
            continue
    raise OutputError(
        f"rank {rank}: rank 0 did not replace the unfinished run in {os.path.dirname(manifest)} "
        f"within {timeout:.0f} s; is rank 0 running? Rerun the job"
    )
