"""What the commands share: the latents argument, partitions, tables and images; the help format."""

from __future__ import annotations

import argparse
import copy
import re

LATENTS_HELP = (
    "latents file: X_latents.h5 (Nenya), X.parquet (with a vector column) or X.npy (+ X.parquet); path or URL"
)

JOIN_HELP = (
    "a table with id and more columns to colour and filter by, matched by id (e.g. nenya outliers' "
    "outliers.parquet: its score, rank and outlier flag); repeatable"
)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default once: ``(default: X)`` is added unless the help already
    says its default, there is none (None, an empty list) or the option is a flag; a list default is
    shown as it is typed (``2,3,4``)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            default is None
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
            or action.nargs == 0  # flags: off unless given
            or re.search(r"\bdefault\b", text, re.IGNORECASE)
        ):
            return text
        return super()._get_help_string(action) or ""

    def _expand_help(self, action: argparse.Action) -> str:
        if isinstance(action.default, (list, tuple)):
            sep = " " if action.nargs not in (None, argparse.OPTIONAL) else ","  # nargs="+": space-separated
            action = copy.copy(action)
            action.default = sep.join(str(v) for v in action.default)
        return super()._expand_help(action)


#: Help that shows each option's default (once).
HELP_FORMAT = DefaultsHelpFormatter


def add_latents_args(p: argparse.ArgumentParser, *, output_help: str) -> None:
    """The latents file, ``--output`` and ``--partitions``, as every command over one latents file takes them."""
    p.add_argument("latents", help=LATENTS_HELP)
    p.add_argument("--output", "-o", help=output_help)
    p.add_argument("--partitions", default=None, help="HDF5 partitions to read, comma-separated (default: valid,train)")


def partitions(args: argparse.Namespace) -> list[str] | None:
    """``--partitions`` as a list (None: the reader's default)."""
    return [p for p in args.partitions.split(",") if p] if getattr(args, "partitions", None) else None


def add_image_args(p: argparse.ArgumentParser) -> None:
    """Where the images of the points are: a preproc file, or the root of relative paths."""
    p.add_argument("--images", help="preproc HDF5 file of the cutouts (rows matched by partition/row)")
    p.add_argument("--image-root", help="folder that relative paths in the 'path' column are relative to")
