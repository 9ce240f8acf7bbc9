"""Encoders: models wrapped with their preprocessing, named by specs such as ``supcon:last.pth``."""

from __future__ import annotations

import os

from nenya.encoders.base import Encoder, EncoderOptions
from nenya.params import Params
from nenya.pipeline.registry import encoders, split_spec

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def load_encoder(spec: str, *, opt: Params | str | os.PathLike | None = None, trust_checkpoint: bool = False,
                 remove_module: bool = True, options: EncoderOptions | None = None) -> Encoder:
    """Build an encoder from a spec such as ``supcon:models/last.pth``, ``nenya:v5`` or ``timm:resnet50``.

    ``options`` (weights, pretrained, layer, pool, preprocessing overrides) go to the
    ``timm:``, ``torchvision:``, ``torchscript:`` and ``ae:`` encoders.

    A bare checkpoint path (``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``) means ``supcon:``.
    An unknown prefix is an error listing the valid ones.
    """
    prefix, rest = split_spec(str(spec))
    if not prefix:
        if str(spec).endswith(CHECKPOINT_SUFFIXES):
            prefix = "supcon"
        else:
            raise ValueError(f"cannot tell what model {spec!r} is; name it as <kind>:<name>, "
                             f"with kind one of {', '.join(encoders.names())} (see `nenya models`)")
    factory = encoders.get(prefix)
    kwargs = {"trust_checkpoint": trust_checkpoint, "remove_module": remove_module}
    if prefix in ("supcon", "nenya"):
        if options is not None and options != EncoderOptions():
            raise ValueError(f"{prefix}: models take no --weights/--layer/--pool/preprocessing options; "
                             "their preprocessing is Nenya's (demean, repeat channels)")
        enc = factory(rest, opt, **kwargs)
    else:
        enc = factory(rest, opt, options=options or EncoderOptions(), **kwargs)
    enc.spec = f"{prefix}:{_model_file(rest)}"
    enc.options = options or EncoderOptions()
    enc.opts_file = str(opt) if isinstance(opt, (str, os.PathLike)) else None
    return enc


def _model_file(rest: str) -> str:
    """A local model file as an absolute path; names (``resnet18``) and URLs as they are."""
    from nenya.pipeline import storage

    return storage.absolute(rest) if not storage.is_remote(rest) and os.path.isfile(storage.local_path(rest)) else rest
