"""Encoders: models wrapped with their preprocessing, named by specs such as ``supcon:last.pth``.

To add a model kind, write a module in this package with an :class:`~nenya.encoders.base.Encoder`
subclass and a factory with the one signature every kind shares::

    factory(rest_of_spec, opt=None, *, options: EncoderOptions, trust_checkpoint=False, remove_module=True)

and register it below (or through the ``nenya.encoders`` entry-point group): ``--model KIND:...``,
``nenya models`` and the tests that run every encoder kind come from :data:`encoders`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nenya.encoders.options import EncoderOptions
from nenya.pipeline.registry import Registry, split_spec

if TYPE_CHECKING:
    from nenya.encoders.base import Encoder

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")

#: Model kinds by spec prefix (``--model KIND:NAME``).
encoders = Registry("encoder")
encoders.register(
    "supcon",
    "nenya.encoders.supcon:SupConEncoder.from_spec",
    help="a Nenya SupCon/SimCLR checkpoint: supcon:path/to/last.pth (options from the file or --opts)",
)
encoders.register(
    "nenya",
    "nenya.encoders.supcon:SupConEncoder.from_named_spec",
    help="a named Nenya model whose weights you provide: nenya:v4, nenya:v5, nenya:viirs_v1",
)
encoders.register(
    "timm",
    "nenya.encoders.timm:TimmEncoder.from_spec",
    help="any timm model: timm:efficientnet_b0 (pooled pre-logits vector; --layer K --pool none for tiles)",
    install_hint="pip install timm",
)
encoders.register(
    "torchvision",
    "nenya.encoders.torchvision:TorchvisionEncoder.from_spec",
    help="a torchvision classification model with its classifier removed: torchvision:resnet50 (2048-d)",
    install_hint="pip install torchvision",
)
encoders.register(
    "torchscript",
    "nenya.encoders.torchscript:TorchScriptEncoder.from_spec",
    help="a TorchScript file whose forward maps (B, C, H, W) to (B, dim): torchscript:model.pt",
)
encoders.register(
    "ae",
    "nenya.encoders.autoencoder:AutoencoderEncoder.from_spec",
    help="the encoder half of an autoencoder trained by `nenya train autoencoder`: ae:path/to/last.pth",
)


def load_encoder(
    spec: str,
    *,
    opt: Any = None,
    trust_checkpoint: bool = False,
    remove_module: bool = True,
    options: EncoderOptions | None = None,
) -> Encoder:
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
            raise ValueError(
                f"cannot tell what model {spec!r} is; name it as <kind>:<name>, "
                f"with kind one of {', '.join(encoders.names())} (see `nenya models`)"
            )
    factory = encoders.get(prefix)
    enc = factory(
        rest, opt, options=options or EncoderOptions(), trust_checkpoint=trust_checkpoint, remove_module=remove_module
    )
    enc.spec = f"{prefix}:{_model_file(rest)}"
    enc.options = options or EncoderOptions()
    enc.opts_file = str(opt) if isinstance(opt, (str, os.PathLike)) else None
    return enc


@dataclass(frozen=True)
class EncoderBuilder:
    """How to build an encoder in another process: :func:`nenya.encoders.load_encoder`'s arguments.

    Example:
        >>> EncoderBuilder("timm:resnet50", options=EncoderOptions(size=224)).build("cuda", "bf16")
    """

    spec: str
    opt: Any = None
    options: EncoderOptions = field(default_factory=EncoderOptions)
    trust_checkpoint: bool = False

    def build(self, device: str = "cpu", precision: str = "fp32") -> Encoder:
        enc = load_encoder(self.spec, opt=self.opt, trust_checkpoint=self.trust_checkpoint, options=self.options)
        return enc.to(device, precision)


def _model_file(rest: str) -> str:
    """A local model file as an absolute path; names (``resnet18``) and URLs as they are."""
    from nenya.pipeline import storage

    return storage.absolute(rest) if not storage.is_remote(rest) and os.path.isfile(storage.local_path(rest)) else rest


__all__ = ["CHECKPOINT_SUFFIXES", "Encoder", "EncoderBuilder", "EncoderOptions", "encoders", "load_encoder"]


def __getattr__(name: str):
    if name == "Encoder":  # the contract needs torch: imported on first use, not with the registry
        from nenya.encoders.base import Encoder

        return Encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
