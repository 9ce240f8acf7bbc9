"""Plain ``nn.Module`` definitions (no I/O)."""

from __future__ import annotations
