"""Nenya SupCon/SimCLR checkpoints as encoders (the L2-normalised projection-head output)."""

from __future__ import annotations

import hashlib
import logging
import os

from nenya._errors import CheckpointError
from nenya.encoders.base import Encoder, EncoderOptions, Preprocess
from nenya.encoders.weights import file_digest, fit_state, load_checkpoint
from nenya.models.resnet_big import SupConResNet
from nenya.params import Params, option_preprocess
from nenya.pipeline import storage

log = logging.getLogger(__name__)


def build_model(opt: Params) -> SupConResNet:
    """SupConResNet from options (``ssl_model``, ``feat_dim``, ``nchannels``, ``head``)."""
    for key in ("ssl_model", "feat_dim"):
        if getattr(opt, key, None) is None:
            raise CheckpointError(f"the options lack {key!r}; give an opts JSON with ssl_model and feat_dim")
    return SupConResNet(
        name=opt.ssl_model,
        head=getattr(opt, "head", None) or "mlp",
        feat_dim=int(opt.feat_dim),
        in_channel=int(getattr(opt, "nchannels", None) or 3),
    )


class SupConEncoder(Encoder):
    """A SupConResNet checkpoint: demeaned cutouts repeated to ``nchannels`` -> unit-norm latents."""

    def __init__(self, model: SupConResNet, opt: Params, *, fingerprint: str, name: str) -> None:
        super().__init__(
            model,
            name=name,
            dim=int(opt.feat_dim),
            preprocess=Preprocess(in_channels=int(getattr(opt, "nchannels", None) or 3), demean=True),
            fingerprint=fingerprint,
        )
        self.opt = opt

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        opt: Params | str | None = None,
        *,
        remove_module: bool = True,
        trust_checkpoint: bool = False,
    ) -> SupConEncoder:
        """Build from a ``last.pth``/``.safetensors``; options from ``opt`` or else from the file."""
        ckpt = load_checkpoint(path, trust=trust_checkpoint)
        if isinstance(opt, (str, os.PathLike)):
            opt = option_preprocess(Params(opt))
        opt = opt if opt is not None else ckpt.get("opt")
        if opt is None:
            raise CheckpointError(f"{path} carries no options; pass the opts JSON it was trained with (--opts)")
        if isinstance(opt, dict):
            opt = Params(**opt)
        model = build_model(opt)
        try:
            fit_state(
                model,
                ckpt["model"],
                remove_module=remove_module,
                source=str(path),
                what="the model built from the options",
                advice="Check ssl_model, feat_dim, nchannels and head in the opts.",
            )
        except RuntimeError as e:  # size mismatches
            raise CheckpointError(
                f"{path} does not fit the model from the options: {str(e).splitlines()[-1].strip()}. "
                "Check ssl_model, feat_dim and nchannels in the opts"
            ) from None
        local = storage.fetch(str(path))
        arch = f"{opt.ssl_model}|{opt.feat_dim}|{getattr(opt, 'nchannels', 3)}|{getattr(opt, 'head', 'mlp')}"
        fp = hashlib.sha256(f"supcon|{arch}|{file_digest(local)}|rm={remove_module}".encode()).hexdigest()[:16]
        enc = cls(model, opt, fingerprint=fp, name=f"supcon:{storage.basename(path)}")
        enc.spec = f"supcon:{storage.absolute(path)}"
        return enc

    @classmethod
    def from_spec(
        cls,
        name: str,
        opt: Params | str | None = None,
        *,
        options: EncoderOptions | None = None,
        trust_checkpoint: bool = False,
        remove_module: bool = True,
    ) -> SupConEncoder:
        """``supcon:PATH`` (the registry's factory signature); Nenya's preprocessing takes no options."""
        _no_options("supcon", options)
        return cls.from_checkpoint(name, opt, trust_checkpoint=trust_checkpoint, remove_module=remove_module)

    @classmethod
    def from_named_spec(
        cls,
        name: str,
        opt: Params | str | None = None,
        *,
        options: EncoderOptions | None = None,
        trust_checkpoint: bool = False,
        remove_module: bool = True,
    ) -> SupConEncoder:
        """``nenya:v5`` (the registry's factory signature): a named model whose weights you provide."""
        _no_options("nenya", options)
        return cls.from_named(name, opt, trust_checkpoint=trust_checkpoint, remove_module=remove_module)

    @classmethod
    def from_named(cls, name: str, opt: Params | str | None = None, **kwargs) -> SupConEncoder:
        """A named model (``v4``, ``v5``, ``viirs_v1``) whose weights the user has provided."""
        from nenya.encoders.named import load_opt, resolve_weights

        named_opt, _ = load_opt(name)
        return cls.from_checkpoint(resolve_weights(named_opt, name=name), opt or named_opt, **kwargs)


def _no_options(prefix: str, options: EncoderOptions | None) -> None:
    if options is not None and options != EncoderOptions():
        raise ValueError(
            f"{prefix}: models take no --weights/--layer/--pool/preprocessing options; "
            "their preprocessing is Nenya's (demean, repeat channels)"
        )
