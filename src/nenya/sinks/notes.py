"""Notes the ranks of one job leave each other next to an output's parts (``<group>.<name>.json``):
a rank that finished tells rank 0 so, and rank 0 assembles once every rank has."""

from __future__ import annotations

import contextlib
import json
import os

from nenya.pipeline import storage


def note_path(gdir: str, name: str) -> str:
    """The note ``name`` on the output whose parts are in ``gdir``."""
    return gdir + f".{name}.json"


def post(path: str, body: dict) -> None:
    """Write the note ``path`` (atomically: a reader sees all of it or nothing)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with storage.atomic_local(path) as tmp, open(tmp, "w") as f:
        json.dump(body, f)


def read(path: str) -> dict | None:
    """The note ``path`` (None: not there, or not readable)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def remove(path: str) -> None:
    """Remove the note ``path`` (no error when it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
