"""What the commands over latents files share: the latents argument, partitions, tables and images."""

from __future__ import annotations

import argparse

LATENTS_HELP = (
    "latents file: X_latents.h5 (Nenya), X.parquet (with a vector column) or X.npy (+ X.parquet); path or URL"
)

#: Help that shows each option's default.
HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter


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
