"""TorchScript files as encoders: any model exported with ``torch.jit.script``/``trace`` and ``save``.

The file carries its weights and code; nenya adds the photo preprocessing (``--size``, default
224, resize/crop, and ``--mean``/``--std`` when given: otherwise pixels go in as [0, 1]). A
model returning (B, dim) is used as is; one returning a feature map (B, C, h, w) is pooled by
``--pool`` (default ``avg``), or gives one vector per cell with ``--pool none``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings

import torch
from torch import nn

from nenya._errors import CheckpointError, NenyaError
from nenya.encoders._image import Defaults, PooledMap, check_pool, encoder_fingerprint, image_preprocess, probe
from nenya.encoders.base import Encoder, EncoderOptions
from nenya.encoders.weights import file_digest
from nenya.pipeline import storage

log = logging.getLogger(__name__)

DEFAULT_SIZE = 224


class TorchScriptEncoder(Encoder):
    """A TorchScript module mapping (B, C, H, W) images to vectors (or feature maps, pooled)."""

    @classmethod
    def from_spec(
        cls, name: str, opt=None, *, options: EncoderOptions, trust_checkpoint: bool = False, remove_module: bool = True
    ) -> TorchScriptEncoder:
        """Build ``torchscript:<path or URL>``.

        Example:
            >>> torch.jit.script(my_model.eval()).save("model.pt")
            >>> enc = TorchScriptEncoder.from_spec("model.pt", options=EncoderOptions(size=128, mean=(0.5,), std=(0.5,)))

        Args:
            name: the local path or URL of a file written by ``torch.jit.save``.
            opt: not used.
            options: ``size`` (square input, default 224), ``resize`` (shorter side before the
                center crop; default the size itself), ``crop``, ``mean``, ``std``,
                ``interpolation``, ``pool`` (for feature-map outputs). ``weights``,
                ``pretrained`` and ``layer`` do not apply (the file holds its weights).
            trust_checkpoint, remove_module: not used (TorchScript files are not unpickled).

        Raises:
            NenyaError: options that do not apply, or an output that is not (B, dim) or (B, C, h, w).
            CheckpointError: the file is missing or not a TorchScript archive.
        """
        _check_options(name, opt, options)
        pool = check_pool(options.pool)
        local = storage.fetch(name)
        model = _load(name, local)
        size = DEFAULT_SIZE
        defaults = Defaults(
            size=(size, size), resize=size, crop=True, interpolation="bilinear", mean=None, std=None, crop_pct=1.0
        )
        pre = image_preprocess(defaults, options)
        out, channels = _probe(model, pre, name)
        if channels != pre.in_channels:
            pre = image_preprocess(dataclasses.replace(defaults, in_channels=channels), options)
        net, dim, grid = _head(model, out, pool, name)
        digest = file_digest(local)
        fp = encoder_fingerprint(
            "torchscript",
            hashlib.sha256(storage.basename(name).encode()).hexdigest()[:8],
            None,
            pool,
            pre,
            f"weights:{digest}",
        )
        enc = cls(net, name=f"torchscript:{storage.basename(name)}", dim=dim, preprocess=pre, fingerprint=fp)
        enc.grid = grid
        log.info(
            "torchscript:%s: %d-d%s, input %s", name, dim, f", {grid[0]}x{grid[1]} tiles" if grid else "", pre.image
        )
        return enc


def _check_options(name: str, opt, options: EncoderOptions) -> None:
    """Refuse what does not apply to a file that holds its whole model."""
    if opt is not None:
        raise NenyaError("torchscript: models take no --opts (those are for supcon: checkpoints)")
    for flag, value in (
        ("--weights", options.weights),
        ("--pretrained", options.pretrained or None),
        ("--layer", options.layer),
    ):
        if value is not None:
            raise NenyaError(
                f"torchscript:{name} takes no {flag}: the file holds the whole model; "
                "export the part you want to a TorchScript file instead"
            )


def _load(name: str, local: str) -> nn.Module:
    """The TorchScript module in ``local`` (fetched from ``name``), in eval mode, on the CPU."""
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; its files still load
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(local, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"TorchScript file not found: {name}") from None
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{name} is not a TorchScript file ({_first_line(e)}); save one with "
            "torch.jit.script(model).save(path) (or torch.jit.trace)"
        ) from None
    model.eval()
    return model


def _head(
    model: nn.Module, out: torch.Tensor, pool: str | None, name: str
) -> tuple[nn.Module, int, tuple[int, int] | None]:
    """(module to run, vector length, tile grid) for a model whose output on a probe is ``out``."""
    if out.dim() == 2:
        if pool is not None:
            raise NenyaError(f"torchscript:{name} already gives vectors (B, {out.shape[1]}); drop --pool {pool}")
        return model, int(out.shape[1]), None
    if out.dim() == 4:
        grid = (int(out.shape[2]), int(out.shape[3])) if pool == "none" else None
        return PooledMap(model, pool or "avg"), int(out.shape[1]), grid
    raise NenyaError(
        f"torchscript:{name} gives shape {tuple(out.shape)}; expected vectors (B, dim) or a feature map (B, C, h, w)"
    )


def _probe(model: nn.Module, pre, name: str) -> tuple[torch.Tensor, int]:
    """Output of a zero image, trying 3 channels then 1; returns (output, channels)."""
    errors = []
    for channels in (pre.in_channels, 1):
        try:
            out = probe(model, pre, channels=channels)
        except Exception as e:  # TorchScript raises its own error types for shape mismatches
            errors.append(_first_line(e))
            continue
        if not isinstance(out, torch.Tensor):
            raise NenyaError(
                f"torchscript:{name} returns {type(out).__name__}, not a tensor; export a wrapper "
                "whose forward returns the vectors"
            )
        return out, channels
    raise NenyaError(
        f"torchscript:{name} does not run on a (1, 3 or 1, {pre.image.size[0]}, {pre.image.size[1]}) "
        f"input ({errors[0]}); choose its input size with --size"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
