"""The encoder half of an autoencoder trained by ``nenya train autoencoder``, as an extraction model.

Spec ``ae:path/to/last.pth``. The vector is the dense embedding (``num_dense`` numbers). The
preprocessing is the one training used, read from the checkpoint: the crop box, then uint8 -> [0, 1],
optional per-image demean, and the per-channel mean/std of the training set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch

from nenya._errors import CheckpointError, InputError
from nenya.encoders.base import Encoder, EncoderOptions, Preprocess
from nenya.encoders.weights import file_digest, fit_state, load_checkpoint
from nenya.models.autoencoder import ConvAutoencoder, EmbeddingHead
from nenya.params import Params
from nenya.pipeline import storage

log = logging.getLogger(__name__)


def build_autoencoder(opt: Params) -> ConvAutoencoder:
    """The :class:`ConvAutoencoder` described by a checkpoint's options."""
    for key in ("input_shape", "nlayers", "poolsize", "numfilters", "num_dense"):
        if getattr(opt, key, None) is None:
            raise CheckpointError(
                f"the options lack {key!r}: this is not a checkpoint written by `nenya train autoencoder`"
            )
    return ConvAutoencoder(
        list(opt.input_shape),
        nlayers=int(opt.nlayers),
        poolsize=int(opt.poolsize),
        numfilters=int(opt.numfilters),
        num_dense=int(opt.num_dense),
    )


def preprocess_of(opt: Params) -> Preprocess:
    """The :class:`Preprocess` (demean, mean/std, channels) recorded in the options."""
    mean = getattr(opt, "mean", None)
    std = getattr(opt, "std", None)
    return Preprocess(
        in_channels=int(opt.input_shape[0]),
        demean=bool(getattr(opt, "demean", False)),
        mean=tuple(float(v) for v in mean) if mean else None,
        std=tuple(float(v) for v in std) if std else None,
    )


def crop_batch(x: torch.Tensor, box: list[int] | None, raw_hw: list[int] | None = None) -> torch.Tensor:
    """Cut the crop box ``[row0, row1, col0, col1]`` out of a (B, H, W) or (B, C, H, W) batch.

    A batch already of the cropped size passes unchanged; a batch smaller than the box is an error.
    """
    if box is None:
        return x
    r0, r1, c0, c1 = (int(v) for v in box)
    h, w = x.shape[-2], x.shape[-1]
    if (h, w) == (r1 - r0, c1 - c0):
        return x
    if h < r1 or w < c1:
        raise InputError(
            f"images of {h}x{w} are smaller than the crop this autoencoder was trained with "
            f"(rows {r0}:{r1}, columns {c0}:{c1} of {raw_hw[0]}x{raw_hw[1]} images)"
            if raw_hw
            else f"images of {h}x{w} are smaller than the crop rows {r0}:{r1}, columns {c0}:{c1}"
        )
    return x[..., r0:r1, c0:c1]


class AutoencoderEncoder(Encoder):
    """``ae:`` encoder: crop, normalise as in training, then the autoencoder's embedding."""

    def __init__(self, autoencoder: ConvAutoencoder, opt: Params, *, fingerprint: str, name: str) -> None:
        super().__init__(
            EmbeddingHead(autoencoder),
            name=name,
            dim=int(opt.num_dense),
            preprocess=preprocess_of(opt),
            fingerprint=fingerprint,
        )
        self.autoencoder = autoencoder
        self.opt = opt
        self.crop_box = list(opt.crop_box) if getattr(opt, "crop_box", None) else None
        self.raw_hw = list(opt.raw_shape[1:]) if getattr(opt, "raw_shape", None) else None

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Crop to the training box, then Encoder's uint8 scaling, demean, mean/std and channel repeat."""
        return super().prepare(crop_batch(x, self.crop_box, self.raw_hw))

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, trust_checkpoint: bool = False, remove_module: bool = True
    ) -> AutoencoderEncoder:
        ckpt = load_checkpoint(path, trust=trust_checkpoint)
        opt = ckpt.get("opt")
        if isinstance(opt, dict):
            opt = Params(**opt)
        if opt is None or getattr(opt, "model_type", None) != "autoencoder":
            raise CheckpointError(
                f"{path} is not an autoencoder checkpoint (written by `nenya train autoencoder`); "
                "for a SupCon model use supcon:PATH"
            )
        model = build_autoencoder(opt)
        fit_state(
            model,
            ckpt["model"],
            remove_module=remove_module,
            source=str(path),
            what="the architecture in its options",
            advice="Was it written by `nenya train autoencoder`?",
        )
        local = storage.fetch(str(path))
        fp = hashlib.sha256(f"ae|{file_digest(local)}".encode()).hexdigest()[:16]
        return cls(model, opt, fingerprint=fp, name=f"ae:{storage.basename(path)}")

    @classmethod
    def from_spec(
        cls,
        name: str,
        opt: Any = None,
        *,
        options: EncoderOptions | None = None,
        trust_checkpoint: bool = False,
        remove_module: bool = True,
    ) -> AutoencoderEncoder:
        """``ae:PATH`` -> the encoder; the preprocessing comes from the checkpoint, so no options are taken."""
        if options is not None and options != EncoderOptions():
            raise ValueError(
                "ae: models take no --weights/--layer/--pool/preprocessing options; their crop and "
                "normalisation are the ones recorded at training time"
            )
        if not name:
            raise ValueError("name the checkpoint: ae:path/to/last.pth")
        return cls.from_checkpoint(name, trust_checkpoint=trust_checkpoint, remove_module=remove_module)
