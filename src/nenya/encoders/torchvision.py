"""torchvision classification models as encoders: the classifier's last Linear replaced by Identity.

``torchvision:resnet50`` gives the 2048-d average-pooled features; preprocessing comes from the
model's default weights entry (resize, crop, mean, std, interpolation), which torchvision knows
without downloading anything.
"""

from __future__ import annotations

import logging
from types import ModuleType

from torch import nn

from nenya._errors import CheckpointError, NenyaError, WeightsNotFoundError
from nenya.compat import import_torchvision
from nenya.encoders._image import Defaults, encoder_fingerprint, image_preprocess, load_weights, probe, seeded
from nenya.encoders.base import Encoder, EncoderOptions, Preprocess

log = logging.getLogger(__name__)

#: Attributes holding the classification head, in the order they are tried.
_HEAD_ATTRS = ("fc", "classifier", "heads", "head")


def remove_classifier(model: nn.Module, name: str) -> str:
    """Replace the last ``nn.Linear`` of the model's head by ``nn.Identity`` and return its path.

    The head is the first of ``fc``, ``classifier``, ``heads``, ``head`` the model has; within it
    the last Linear is the one mapping features to class logits (``resnet50.fc``,
    ``efficientnet_b0.classifier.1``, ``vit_b_16.heads.head``).

    Raises:
        NenyaError: the model has no Linear classifier (e.g. squeezenet's convolutional head).
    """
    for attr in _HEAD_ATTRS:
        head = getattr(model, attr, None)
        if not isinstance(head, nn.Module):
            continue
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
            return attr
        linears = [n for n, m in head.named_modules() if isinstance(m, nn.Linear)]
        if linears:
            path = linears[-1]
            parent = head.get_submodule(path.rsplit(".", 1)[0]) if "." in path else head
            setattr(parent, path.rsplit(".", 1)[-1], nn.Identity())
            return f"{attr}.{path}"
    raise NenyaError(
        f"torchvision:{name} has no Linear classifier in {'/'.join(_HEAD_ATTRS)} to remove; "
        f"use timm:{name} if timm has it, or a torchscript: export of the part you want"
    )


def _defaults(tv: ModuleType, name: str) -> tuple[Defaults, object | None]:
    """Preprocessing of the model's DEFAULT weights entry (ImageNet defaults when it has none)."""
    try:
        weights = tv.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return Defaults(), None
    t = weights.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0])
    interp = getattr(t.interpolation, "value", str(t.interpolation))
    return Defaults(
        size=(crop, crop),
        resize=resize,
        crop=True,
        interpolation=str(interp),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
    ), weights


class TorchvisionEncoder(Encoder):
    """A torchvision classification model without its classifier (the pre-logits features)."""

    @classmethod
    def from_spec(
        cls, name: str, opt=None, *, options: EncoderOptions, trust_checkpoint: bool = False, remove_module: bool = True
    ) -> TorchvisionEncoder:
        """Build ``torchvision:<name>``.

        Args:
            name: a torchvision model name (``resnet50``, ``efficientnet_b0``, ``vit_b_16``, ...).
            opt: not used (Nenya options are for ``supcon:`` models).
            options: ``weights`` (a state dict or safetensors file), ``pretrained`` (the DEFAULT
                weights, downloaded by torchvision), preprocessing overrides. ``layer`` and ``pool``
                are not supported here: timm offers them for the same architectures.
            trust_checkpoint: unpickle anything in ``weights`` (only for files you trust).
            remove_module: strip DataParallel ``module.`` prefixes from ``weights``.

        Raises:
            NenyaError: an unknown model, or ``layer``/``pool`` given.
            WeightsNotFoundError: pretrained weights cannot be downloaded.
            CheckpointError: ``weights`` do not fit the model or cannot be loaded safely.
        """
        if opt is not None:
            raise NenyaError("torchvision: models take no --opts (those are for supcon: checkpoints)")
        if options.layer is not None or options.pool is not None:
            raise NenyaError(
                f"torchvision:{name} takes no --layer/--pool (it gives the pre-logits vector); "
                f"use timm:{name} with --layer K --pool avg|max|gem|none for inner layers and tiles"
            )
        if options.weights and options.pretrained:
            raise NenyaError("give either --weights FILE or --pretrained, not both")
        tv = import_torchvision()
        available = tv.models.list_models(module=tv.models)
        if name not in available:
            close = [m for m in available if name.lower() in m or m in name.lower()][:5]
            raise NenyaError(
                f"unknown torchvision model {name!r}"
                + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()")
            )
        defaults, weights_entry = _defaults(tv, name)
        if options.pretrained:
            if weights_entry is None:
                raise WeightsNotFoundError(f"torchvision:{name} has no pretrained weights; use --weights FILE")
            try:
                model = tv.models.get_model(name, weights=weights_entry)
            except Exception as e:
                raise WeightsNotFoundError(
                    f"could not fetch the pretrained weights of torchvision:{name} ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); check network access, or download "
                    f"{getattr(weights_entry, 'url', 'them')} and pass --weights FILE"
                ) from None
            tag = f"pretrained:{weights_entry}"
        else:
            with seeded(0):
                model = tv.models.get_model(name, weights=None)
            tag = "random-seed-0"
        head = remove_classifier(model, name)
        if options.weights:
            tag = load_weights(
                model,
                options.weights,
                trust=trust_checkpoint,
                remove_module=remove_module,
                ignore_prefixes=(head,),
                what=f"torchvision:{name}",
            )
        model.eval()
        pre = image_preprocess(defaults, options)
        dim = _dim(model, pre, name)
        fp = encoder_fingerprint("torchvision", name, None, None, pre, tag)
        log.info("torchvision:%s: %d-d (classifier %s removed), input %s, weights %s", name, dim, head, pre.image, tag)
        return cls(model, name=f"torchvision:{name}", dim=dim, preprocess=pre, fingerprint=fp)


def _dim(model: nn.Module, pre: Preprocess, name: str) -> int:
    try:
        out = probe(model, pre)
    except Exception as e:
        raise NenyaError(
            f"torchvision:{name} does not run at input size {pre.image.size if pre.image else '?'} "
            f"({type(e).__name__}: {e}); choose a size it accepts with --size"
        ) from None
    if out.dim() != 2:
        raise CheckpointError(
            f"torchvision:{name} without its classifier gives shape {tuple(out.shape)}, not (B, dim); use timm:{name}"
        )
    return int(out.shape[1])
