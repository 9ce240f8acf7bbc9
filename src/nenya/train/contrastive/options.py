"""The options of a contrastive run: defaults, resolving an opts file, the model folder, the demo's options."""

from __future__ import annotations

import os
from typing import Any

from nenya._errors import NenyaError
from nenya.encoders.named import resolve_opts
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage

#: Option defaults filled in when an opts file leaves a key out (None values count as missing).
DEFAULTS: dict[str, Any] = {
    "ssl_method": "SimCLR",
    "ssl_model": "resnet18",
    "feat_dim": 128,
    "temp": 0.07,
    "learning_rate": 0.05,
    "lr_decay_rate": 0.1,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "epochs": 1,
    "batch_size_train": 64,
    "trial": 0,
    "cosine": False,
    "warm": False,
    "train_key": "train",
    "valid_key": "valid",
    "print_freq": 10,
    "save_freq": 1,
    "valid_freq": 1,
    "num_workers": 0,
    "flip": True,
    "rotate": True,
    "demean": True,
    "gauss_noise": 0.0,
    "seed": 0,
}

#: Batches per epoch (train, valid) and epochs of a ``debug`` run.
DEBUG_LIMITS = (5, 2, 2)


def prepare_opt(opt: Params | str | os.PathLike | dict[str, Any]) -> Params:
    """Options from a Params, a dict or an opts JSON, with defaults filled in and Nenya's derived
    names (``model_name``, ``model_folder``, warm-up values) computed by ``option_preprocess``.

    The options are read by :func:`nenya.encoders.named.resolve_opts` (the one resolver), with
    :data:`DEFAULTS` for the keys left out; the caller's object is never changed.

    Raises:
        NenyaError: an unknown ``ssl_method``, or SupCon without ``label_column``.
    """
    p = resolve_opts(opt, defaults=DEFAULTS)
    if getattr(p, "batch_size_valid", None) is None:
        p.batch_size_valid = p.batch_size_train
    if getattr(p, "random_cropjitter", None) is None and getattr(p, "random_jitter", None) is not None:
        p.random_cropjitter = p.random_jitter
    p.model_name = None  # recomputed from the (possibly overridden) hyper-parameters
    option_preprocess(p)
    if p.ssl_method not in ("SimCLR", "SupCon"):
        raise NenyaError(f"unknown ssl_method {p.ssl_method!r}; expected SimCLR or SupCon")
    if p.ssl_method == "SupCon" and not getattr(p, "label_column", None):
        raise NenyaError(
            "ssl_method SupCon needs labels: set label_column to a column of <partition>_metadata "
            "(or an integer dataset in the file), or use SimCLR"
        )
    return p


def output_folder(opt: Params, output: str | os.PathLike | None = None) -> str:
    """The model folder: ``output`` when given, else ``<s3_outdir or .>/<model_folder>``."""
    if output is not None:
        return str(output)
    if not opt.model_folder:
        raise NenyaError("cannot name the model folder: the opts lack model hyper-parameters; give --output")
    return storage.join(getattr(opt, "s3_outdir", None) or ".", opt.model_folder)


def demo_opts(
    images_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    ssl_model: str = "resnet18",
    feat_dim: int = 128,
    nchannels: int = 3,
    batch_size: int = 64,
    epochs: int = 1,
    **extra: Any,
) -> Params:
    """Small, quick options for a short CPU run on a preproc file (the demo's settings).

    The model folder is ``<out_dir>/models/demo/<model_name>``. The jitter crop [40, 5] suits
    64x64 cutouts; pass ``random_cropjitter=[c, j]`` for other sizes. ``extra`` overrides any key.
    """
    values = {
        "ssl_method": "SimCLR",
        "ssl_model": ssl_model,
        "feat_dim": feat_dim,
        "nchannels": nchannels,
        "batch_size_train": batch_size,
        "batch_size_valid": batch_size,
        "num_workers": 0,
        "epochs": epochs,
        "learning_rate": 0.05,
        "lr_decay_rate": 0.1,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "temp": 0.07,
        "cosine": False,
        "warm": False,
        "trial": 0,
        "random_cropjitter": [40, 5],
        "flip": True,
        "rotate": True,
        "demean": True,
        "save_freq": 1,
        "valid_freq": 1,
        "print_freq": 10,
        "train_key": "train",
        "valid_key": "valid",
        "model_root": "demo",
        "s3_outdir": str(out_dir),
        "images_file": str(images_file),
    }
    values.update(extra)
    return prepare_opt(values)
