"""``nenya train ...`` and ``nenya reconstruct``: sub-commands of the training issue (filled in by train/)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the training sub-commands to the ``nenya`` parser."""
