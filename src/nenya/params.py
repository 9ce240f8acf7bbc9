"""Nenya option files: ``Params`` and the derived names of ``option_preprocess``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

#: Keys that read as None when an opts file does not set them (as in Nenya).
DEFAULT_NONE_KEYS = (
    "nenya_data",
    "data_folder",
    "lr_decay_epochs",
    "model_name",
    "cosine",
    "warmup_from",
    "warmup_to",
    "warmup_epochs",
    "model_folder",
    "latents_folder",
    "cuda_use",
    "valid_freq",
    "save_freq",
)


def read_json(path: str | os.PathLike) -> Any:
    """An opts JSON file, with errors that name it."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"opts file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"opts file {path} is not valid JSON: {e}") from None


class Params:
    """An options object whose attributes are the keys of a JSON file.

    Example:
        >>> opt = Params("opts.json")          # doctest: +SKIP
        >>> opt.ssl_model, opt.feat_dim         # doctest: +SKIP
        ('resnet50', 256)
    """

    def __init__(self, json_path: str | os.PathLike | None = None, **values: Any) -> None:
        for key in DEFAULT_NONE_KEYS:
            setattr(self, key, None)
        if json_path is not None:
            self.update(json_path)
        self.__dict__.update(values)

    if TYPE_CHECKING:  # options are read from JSON, so every attribute name is allowed

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def save(self, json_path: str | os.PathLike) -> None:
        """Write the options as JSON."""
        with open(json_path, "w") as f:
            json.dump(self.__dict__, f, indent=4, default=str)

    def update(self, json_path: str | os.PathLike) -> None:
        """Load options from a JSON file on top of the current ones."""
        path = Path(json_path)
        params = read_json(path)
        if not isinstance(params, dict):
            raise ValueError(f"opts file {path} must hold a JSON object, got {type(params).__name__}")
        self.__dict__.update(params)

    @property
    def dict(self) -> dict[str, Any]:
        """The options as a dict (the object's own ``__dict__``)."""
        return self.__dict__

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing or None."""
        value = self.__dict__.get(key)
        return default if value is None else value

    def __repr__(self) -> str:
        return f"Params({self.__dict__!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and other.__dict__ == self.__dict__


def parse_decay_epochs(value: Any) -> list[int]:
    """``"700,800,900"`` or ``[700, 800, 900]`` -> ``[700, 800, 900]``; None -> []."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [int(value)]
    return [int(v) for v in value]


def model_name(opt: Params) -> str:
    """Nenya's derived model name (pure: changes nothing)."""
    name = (
        f"{opt.ssl_method}_{opt.ssl_model}_lr_{opt.learning_rate}_decay_{opt.weight_decay}"
        f"_bsz_{opt.batch_size_train}_temp_{opt.temp}_trial_{opt.trial}"
    )
    if opt.get("cosine"):
        name += "_cosine"
    if _warm(opt):
        name += "_warm"
    return name


def _warm(opt: Params) -> bool:
    bsz = opt.get("batch_size_train", 0)
    return bool(opt.get("warm")) or (bsz is not None and bsz > 256)


def option_preprocess(opt: Params) -> Params:
    """Fill Nenya's derived options in place and return ``opt``.

    Sets ``lr_decay_epochs`` (as a list), ``model_name``, ``warm`` and its warm-up values,
    ``model_folder = models/<model_root>/<model_name>`` and
    ``latents_folder = latents/<model_root>/<model_name>``. Unlike the original it creates
    no directory; defaults ``nchannels`` to 3 as the production opts assume.
    """
    opt.lr_decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
    if getattr(opt, "nchannels", None) is None:
        opt.nchannels = 3
    if getattr(opt, "random_jitter", None) is None and getattr(opt, "random_cropjitter", None) is not None:
        opt.random_jitter = opt.random_cropjitter
    needed = ("ssl_method", "ssl_model", "learning_rate", "weight_decay", "batch_size_train", "temp", "trial")
    if all(getattr(opt, k, None) is not None for k in needed):
        opt.model_name = model_name(opt)
    if _warm(opt):
        opt.warm = True
        opt.warmup_from = 0.01
        opt.warm_epochs = 10
        if opt.get("cosine") and getattr(opt, "epochs", None):
            eta_min = opt.learning_rate * (opt.lr_decay_rate**3)
            opt.warmup_to = (
                eta_min + (opt.learning_rate - eta_min) * (1 + math.cos(math.pi * opt.warm_epochs / opt.epochs)) / 2
            )
        elif getattr(opt, "learning_rate", None) is not None:
            opt.warmup_to = opt.learning_rate
    if opt.model_name is not None:
        root = getattr(opt, "model_root", None) or ""
        opt.model_folder = os.path.join("models", root, opt.model_name)
        opt.latents_folder = os.path.join("latents", root, opt.model_name)
    return opt
