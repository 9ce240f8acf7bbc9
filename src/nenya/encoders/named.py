"""Named Nenya models and Nenya options: one resolver for opts, one place that finds weights.

Named models (``v4``, ``v5``, ``viirs_v1``) ship their opts with the package. Their weights are
not public, so nenya looks for them under :func:`nenya.config.model_dir`, laid out as Nenya's
bucket was: ``<model dir>/<model_root>/<model_name>/last.pth``. The documented faces
(:mod:`nenya.io`, :mod:`nenya.latents_extraction`, :mod:`nenya.analyze_image`, the trainers) all
resolve options through :func:`resolve_opts`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from nenya._errors import WeightsNotFoundError
from nenya.config import model_dir
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage

log = logging.getLogger(__name__)

NAMED_MODELS = ("v4", "v5", "viirs_v1")


def named_opts_file(name: str) -> Path:
    if name not in NAMED_MODELS:
        raise ValueError(
            f"unknown Nenya model {name!r}; expected one of {', '.join(NAMED_MODELS)} or a path to an opts JSON"
        )
    return Path(str(resources.files("nenya") / "data" / "opts" / f"{name}.json"))


def named_weights_path(opt: Params) -> str:
    return storage.join(model_dir(), opt.model_root, opt.model_name, "last.pth")


def load_opt(nenya_model: str | os.PathLike) -> tuple[Params, str]:
    """Options and model path for a named model or an opts JSON.

    Args:
        nenya_model: ``"v4"``, ``"v5"``, ``"viirs_v1"`` or a path to an opts JSON.

    Returns:
        ``(opt, model_path)``: the preprocessed options, and where the weights are expected
        (for a named model: under :func:`model_dir`; for a JSON: ``<s3_outdir>/<model_folder>/last.pth``).
        The path is not checked here; :func:`resolve_weights` does, with a helpful error.

    Example:
        >>> opt, path = load_opt("v5")
        >>> opt.model_name
        'SimCLR_resnet50_lr_0.05_decay_0.0001_bsz_256_temp_0.07_trial_5_cosine_warm'
    """
    name = str(nenya_model)
    if name in NAMED_MODELS:
        opt = option_preprocess(Params(named_opts_file(name)))
        return opt, named_weights_path(opt)
    opt = option_preprocess(Params(name))
    outdir = getattr(opt, "s3_outdir", None) or "."
    return opt, storage.join(outdir, opt.model_folder or "", "last.pth")


def resolve_weights(opt: Params, *, name: str | None = None) -> str:
    """The weights file of a named model, or a :class:`WeightsNotFoundError` saying where to put it."""
    path = named_weights_path(opt)
    if storage.exists(path):
        return path
    raise WeightsNotFoundError(
        f"the weights of Nenya model {name or opt.model_name!r} are not at {path}. Put its last.pth there "
        f"(the file Nenya kept at {storage.join(opt.s3_outdir or '', opt.model_folder or '', 'last.pth')}), "
        "or set NENYA_MODEL_DIR (or model_dir in ~/.config/nenya/config.json) to the folder that holds "
        f"{opt.model_root}/{opt.model_name}/last.pth"
    )


def resolve_opts(
    opt: Params | str | os.PathLike | Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None
) -> Params:
    """Options from a :class:`Params`, a dict, an opts JSON path or a named model (``v5``).

    A Params is returned as it is when no ``defaults`` are given (the caller's object, as Nenya's
    functions took it); otherwise a copy is made, ``defaults`` fill the keys that are None or
    missing, and Nenya's derived names (``model_name``, ``model_folder``, warm-up values) are
    computed by :func:`nenya.params.option_preprocess`.
    """
    if isinstance(opt, Params) and defaults is None:
        return opt
    if isinstance(opt, Params):
        p = Params()
        p.__dict__.update(dict(opt.dict))
    elif isinstance(opt, Mapping):
        p = Params(**dict(opt))
    elif str(opt) in NAMED_MODELS:
        p = Params(named_opts_file(str(opt)))
    else:
        p = Params(opt)
    for key, value in (defaults or {}).items():
        if getattr(p, key, None) is None:
            setattr(p, key, value)
    return option_preprocess(p) if defaults is None else p


def find_weights(opt: Params) -> str:
    """A local copy of a model's ``last.pth``: in the working folder when present (as Nenya did),
    else a named model's weights, else ``<s3_outdir>/<model_folder>/last.pth`` (fetched to the
    cache when remote); a :class:`WeightsNotFoundError` listing where it looked otherwise."""
    candidates = ["last.pth"]
    if getattr(opt, "model_root", None) and opt.model_name:
        candidates.append(named_weights_path(opt))
    if opt.model_folder:
        candidates.append(storage.join(opt.s3_outdir or ".", opt.model_folder, "last.pth"))
    for c in candidates:
        try:
            if storage.exists(c):
                return storage.fetch(c)
        except Exception as e:  # unreachable or unauthorised remote: try the next place
            log.debug("cannot reach %s: %s", c, e)
    raise WeightsNotFoundError(
        f"no model weights found for {opt.model_name}; looked for {', '.join(candidates)}. "
        "Put the model's last.pth in one of these places (or set NENYA_MODEL_DIR, see nenya.io)"
    )


def latents_dir(opt: Params) -> str:
    """Where Nenya's options put latents: ``<s3_outdir>/<latents_folder>`` (default ``latents``)."""
    return storage.join(opt.s3_outdir or ".", opt.latents_folder or "latents")
