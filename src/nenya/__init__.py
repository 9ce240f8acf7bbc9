"""nenya: latent vectors from large image collections, and tools to explore them."""

from __future__ import annotations

__version__ = "0.1.0"

from nenya._errors import CheckpointError, InputError, NenyaError, OutputError, WeightsNotFoundError

__all__ = ["__version__", "NenyaError", "InputError", "CheckpointError", "OutputError", "WeightsNotFoundError"]
