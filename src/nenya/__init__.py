"""nenya: latent vectors from large image collections, and tools to explore them."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from nenya._errors import CheckpointError, InputError, NenyaError, OutputError, WeightsNotFoundError

__all__ = [
    "__version__", "NenyaError", "InputError", "CheckpointError", "OutputError", "WeightsNotFoundError", "explore",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``nenya.explore`` (the explorer in a notebook), imported when first used: ``import nenya`` stays light."""
    if name == "explore":
        from nenya.analysis.explorer.notebook import explore

        return explore
    raise AttributeError(f"module 'nenya' has no attribute {name!r}")
