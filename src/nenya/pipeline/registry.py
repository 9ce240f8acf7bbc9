"""One small registry class for sources, encoders, sinks and engines (fsspec's registry is the model).

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
        self._plugins()
        return self._entries[name].help

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy implementation clean up with this)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        self._plugins()
        return name in self._entries

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
