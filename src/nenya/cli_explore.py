"""``nenya umap|pca|cluster|index|search|plot|explore``: sub-commands over latents files."""

from __future__ import annotations


def register(sub) -> None:
    """Add the exploration sub-commands to the ``nenya`` parser."""
