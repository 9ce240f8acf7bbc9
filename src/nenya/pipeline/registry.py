"""One small registry class for sources, encoders and sinks (fsspec's registry is the model).

Built-ins are registered lazily by dotted path, with an install hint for optional extras;
third parties register through the entry-point group ``nenya.<kind>``; duplicates are refused.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from nenya._errors import NenyaError


@dataclass(frozen=True)
class _Entry:
    target: Any  # an object or "package.module:attr"
    help: str
    install_hint: str | None


class Registry:
    """A name -> implementation table.

    Example:
        >>> r = Registry("encoder")
        >>> r.register("supcon", "nenya.encoders.supcon:SupConEncoder", help="Nenya checkpoints")
        >>> r.names()
        ['supcon']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry] = {}
        self._loaded_plugins = False

    def register(self, name: str, target: Any, *, help: str = "", install_hint: str | None = None) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = _Entry(target, help, install_hint)

    def _plugins(self) -> None:
        if self._loaded_plugins:
            return
        self._loaded_plugins = True
        for ep in entry_points(group=f"nenya.{self.kind}s"):
            if ep.name not in self._entries:
                self._entries[ep.name] = _Entry(ep.value, f"plugin from {ep.value}", None)

    def names(self) -> list[str]:
        self._plugins()
        return sorted(self._entries)

    def help(self, name: str) -> str:
        return self._entries[name].help

    def get(self, name: str) -> Any:
        self._plugins()
        if name not in self._entries:
            raise NenyaError(f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}")
        entry = self._entries[name]
        if not isinstance(entry.target, str):
            return entry.target
        module, _, attr = entry.target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
        except ImportError as e:
            hint = f"; install it with: {entry.install_hint}" if entry.install_hint else ""
            raise NenyaError(f"{self.kind} {name!r} needs a package that is not installed ({e}){hint}") from None
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


def split_spec(spec: str) -> tuple[str, str]:
    """``"timm:efficientnet_b0"`` -> ``("timm", "efficientnet_b0")``; a bare name has prefix ""."""
    prefix, sep, rest = spec.partition(":")
    if not sep or "/" in prefix or "\\" in prefix or len(prefix) == 1:  # a path, or a Windows drive
        return "", spec
    return prefix, rest


encoders = Registry("encoder")
encoders.register("supcon", "nenya.encoders.supcon:SupConEncoder.from_checkpoint",
                  help="a Nenya SupCon/SimCLR checkpoint: supcon:path/to/last.pth (options from the file or --opts)")
encoders.register("nenya", "nenya.encoders.supcon:SupConEncoder.from_named",
                  help="a named Nenya model whose weights you provide: nenya:v4, nenya:v5, nenya:viirs_v1")
encoders.register("timm", "nenya.encoders.timm:TimmEncoder.from_spec",
                  help="any timm model: timm:efficientnet_b0 (pooled pre-logits vector; --layer K --pool none for tiles)",
                  install_hint="pip install timm")
encoders.register("torchvision", "nenya.encoders.torchvision:TorchvisionEncoder.from_spec",
                  help="a torchvision classification model with its classifier removed: torchvision:resnet50 (2048-d)",
                  install_hint="pip install torchvision")
encoders.register("torchscript", "nenya.encoders.torchscript:TorchScriptEncoder.from_spec",
                  help="a TorchScript file whose forward maps (B, C, H, W) to (B, dim): torchscript:model.pt")
encoders.register("ae", "nenya.encoders.autoencoder:AutoencoderEncoder.from_spec",
                  help="the encoder half of an autoencoder trained by `nenya train autoencoder`: ae:path/to/last.pth")

sinks = Registry("sink")
sinks.register("h5", "nenya.sinks.hdf5:NenyaLatentsSink", help="Nenya _latents.h5 files (one per input file)")
sinks.register("parquet", "nenya.sinks.parquet:ParquetSink",
               help="Parquet: id, partition, row, metadata columns, vector (fixed-size list of float32)")
sinks.register("npy", "nenya.sinks.npy:NpySink",
               help=".npy vectors (N, dim) plus a Parquet file of ids and metadata in the same row order (for FAISS)")

sources = Registry("source")
sources.register("h5", "nenya.sources.hdf5:HDF5PreprocSource", help="Nenya preprocessed HDF5 files of cutouts")
sources.register("images", "nenya.sources.images:ImageFolderSource",
                 help="a folder of images (recursive; ids are relative paths): images:photos/")
sources.register("table", "nenya.sources.table:PathTableSource",
                 help="a CSV or Parquet table with a path column, an id column and metadata columns: table:images.csv")
sources.register("arrays", "nenya.sources.arrays:ArraySource", help="in-memory arrays (Python API only)")
