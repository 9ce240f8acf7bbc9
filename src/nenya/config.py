"""Settings from the environment or the JSON config file, and where named models' weights live."""

from __future__ import annotations

import json
import os
from pathlib import Path

from nenya.pipeline import storage


def config_file() -> Path:
    return Path(os.environ.get("NENYA_CONFIG") or Path.home() / ".config" / "nenya" / "config.json")


def config_value(key: str, env: str | None = None) -> str | None:
    """A setting: the environment variable ``env`` if set, else ``key`` in the JSON file
    ``$NENYA_CONFIG`` (default ``~/.config/nenya/config.json``), else None. ``~`` is expanded."""
    if env and os.environ.get(env):
        return os.path.expanduser(os.environ[env])
    cfg = config_file()
    if cfg.exists():
        try:
            value = json.loads(cfg.read_text()).get(key)
        except json.JSONDecodeError as e:
            raise ValueError(f"config file {cfg} is not valid JSON: {e}") from None
        if value:
            return os.path.expanduser(str(value))
    return None


def model_dir() -> str:
    """The folder (or URL) holding the weights of named models."""
    value = config_value("model_dir", "NENYA_MODEL_DIR")
    if value:
        return value
    return str(storage.cache_dir() / "models")
