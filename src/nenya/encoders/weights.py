"""Safe checkpoint loading: tensors and Nenya's options class, nothing else.

``torch.load(weights_only=True)`` refuses any pickled global that is not allow-listed, so a
checkpoint carrying an arbitrary object is refused *before* anything in it runs. Nenya's own
checkpoints pickle their options object; only that class (under the module paths Nenya and its
parent package used) is allowed, and it is rebuilt as :class:`nenya.params.Params`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nenya._errors import CheckpointError
from nenya.params import Params
from nenya.pipeline import storage

log = logging.getLogger(__name__)

#: Pickle paths of options classes that may appear in Nenya checkpoints; all load as Params.
OPTION_CLASS_PATHS = (
    "nenya.params.Params",
    "nenya.io.Params",
    "ulmo.nenya.params.Params",
    "ulmo.utils.Params",
    "ulmo.ssl.util.Params",
    "ulmo.ssl.train_util.Params",
    "argparse.Namespace",
)

_MODULE = re.compile(r"(^|\.)module\.")


def strip_module(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove every ``module.`` left in parameter names by DataParallel/DDP wrapping."""
    return {_MODULE.sub(r"\1", k): v for k, v in state_dict.items()}


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint safely and return a dict with at least ``model`` (a state dict).

    Accepts Nenya's ``torch.save({'opt', 'model', 'optimizer', 'epoch'})`` files, bare state
    dicts and ``.safetensors`` files (options, if any, in the ``opt`` metadata entry as JSON).
    Remote URLs are fetched to the cache first.

    Args:
        path: local path or URL.
        trust: unpickle anything in the file. Only for files you vouch for: it can run code.

    Raises:
        CheckpointError: the file holds other pickled objects (and ``trust`` is False), or is
            not a checkpoint at all.
    """
    local = storage.fetch(str(path))
    if not os.path.exists(local):
        raise CheckpointError(f"checkpoint not found: {path}")
    if local.endswith(".safetensors"):
        return _load_safetensors(local)
    aliases: list[Any] = [(Params, p) for p in OPTION_CLASS_PATHS]
    try:
        with torch.serialization.safe_globals(aliases):
            ckpt = torch.load(local, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if trust:
            log.warning("loading %s with full unpickling because trust=True was given", path)
            ckpt = torch.load(local, map_location="cpu", weights_only=False)
        else:
            reason = str(e).strip().splitlines()
            detail = next(
                (line for line in reason if "GLOBAL" in line or "global" in line), reason[0] if reason else ""
            )
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled objects other than tensors and the options "
                f"class ({detail.strip()}). Unpickling them could run arbitrary code, so nenya does not. "
                "If you trust this file, pass --trust-checkpoint (trust_checkpoint=True in Python); "
                "better, re-save its state dict as .safetensors."
            ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({type(e).__name__}: {e}); "
            "check the file is complete (not truncated) and was written by torch.save"
        ) from None
    if isinstance(ckpt, dict) and "model" in ckpt:
        return ckpt
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return {"model": ckpt, "opt": None}
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        return {"model": ckpt["state_dict"], "opt": ckpt.get("opt")}
    raise CheckpointError(f"{path} holds no state dict: expected a dict with a 'model' entry or a dict of tensors")


def _load_safetensors(local: str) -> dict[str, Any]:
    from safetensors import safe_open

    state: dict[str, torch.Tensor] = {}
    with safe_open(local, framework="pt") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            state[k] = f.get_tensor(k)
    opt = Params(**json.loads(meta["opt"])) if "opt" in meta else None
    return {"model": state, "opt": opt}


def save_safetensors(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], opt: Params | None = None) -> None:
    """Write a state dict (and options) as ``.safetensors``, which loads without unpickling."""
    from safetensors.torch import save_file

    meta = {"opt": json.dumps(opt.dict, default=str)} if opt is not None else None
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path), metadata=meta)


def file_digest(path: str | os.PathLike, *, limit: int | None = None) -> str:
    """sha256 of a file's bytes (the first ``limit`` bytes when given)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        remaining = limit
        while chunk := f.read(1 << 20 if remaining is None else min(1 << 20, remaining)):
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
                if remaining <= 0:
                    break
    return h.hexdigest()


def fit_state(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    source: str,
    what: str = "the model",
    remove_module: bool = True,
    ignore_prefixes: Sequence[str] = (),
    advice: str = "Check that the weights were saved from this architecture",
) -> None:
    """Load a state dict into ``model`` strictly: the one way every encoder and trainer fits weights.

    ``remove_module`` strips DataParallel's ``module.``; keys under ``ignore_prefixes`` (a removed
    classifier) may be missing or present. Anything else missing or unexpected, or a tensor of
    another shape, is a :class:`CheckpointError` naming ``source``, ``what`` it should fit,
    examples of the keys, and ``advice``.
    """
    state = strip_module(dict(state)) if remove_module else dict(state)
    state = {k: v for k, v in state.items() if not _under(k, ignore_prefixes)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            f"{source} does not fit {what}: {lines[0] if lines else str(e).splitlines()[-1]}"
            f"{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}. {advice}"
        ) from None
    missing = [k for k in result.missing_keys if not _under(k, ignore_prefixes)]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        hint = ""
        if any(".module." in k or k.startswith("module.") for k in unexpected):
            hint = " The names carry 'module.' (DataParallel): load with remove_module=True."
        raise CheckpointError(
            f"{source} does not fit {what}: missing {_examples(missing)}, unexpected "
            f"{_examples(unexpected)}.{hint} {advice}"
        )


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes if p)


def _examples(keys: list[str]) -> str:
    return f"{keys[:3]}{'...' if len(keys) > 3 else ''} ({len(keys)})" if keys else "[]"
