"""The manifest of an output's work folder (``manifest.json``): a digest of the run's fingerprint
(inputs, model weights, preprocessing, output schema), so a rerun continues the parts there only
when it would produce the same output; and the check that an existing output holds this run's vectors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import TYPE_CHECKING

from nenya._errors import OutputError
from nenya.pipeline import storage

if TYPE_CHECKING:
    from nenya.sinks import WriteContext

MANIFEST = "manifest.json"


def vectors_digest(fingerprint: str) -> str:
    """A short digest of what determines a run's vectors (model, weights, preprocessing, precision)."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def describe_model(about: dict) -> str:
    """A model record (:meth:`nenya.encoders.base.Encoder.about`) as the user names it: spec, options,
    precision and dimension."""
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (about.get("options") or {}).items())
    what = " ".join(x for x in (str(about.get("model", "unknown model")), options, about.get("precision", "")) if x)
    return what + (f", {about['dim']}-d" if about.get("dim") else "")


def check_same_vectors(where: str, recorded: dict | None, context: WriteContext) -> None:
    """Refuse the existing output ``where`` when its model record (``recorded``) says that another model,
    weights, preprocessing or precision made its vectors than this run's (``context``): rows added to it
    would not be comparable, and a run with nothing new to encode would pass another model's vectors off
    as its own. Outputs without a record (other tools, older versions) are not refused."""
    ours = vectors_digest(context.fingerprint)
    if not recorded or not recorded.get("vectors") or recorded["vectors"] == ours:
        return
    theirs, this = describe_model(recorded), describe_model(context.about)
    if theirs == this:  # the same spec with other weights (a checkpoint rewritten in place)
        theirs, this = f"{theirs}, vectors {recorded['vectors']}", f"{this}, vectors {ours}"
    raise OutputError(
        f"{where} holds vectors of another model or preprocessing ({theirs}; this run: {this}): this run's "
        "vectors would not be comparable with them. Rerun with --clobber (or --overwrite; in Python: overwrite=True, "
        "or clobber=True for preproc files) to replace it, or write to another output"
    )


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
                    f"{gdir} holds an unfinished run with a different model, preprocessing, input or output format; "
                    "rerun with --overwrite (in Python: overwrite=True, or clobber=True for preproc files) to discard "
                    "it, or choose another output"
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
