"""The one exception family nenya raises for problems a user can fix."""

from __future__ import annotations


class NenyaError(Exception):
    """Base of nenya's errors; the message names the file, key or value at fault and the fix."""


class InputError(NenyaError, ValueError):
    """An input file or array is missing, unreadable or of the wrong shape or type."""


class CheckpointError(NenyaError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """The weights of a named model are not where nenya looks for them."""


class OutputError(NenyaError):
    """An output location cannot be written, or holds a run of another configuration."""
