"""timm models as encoders: the pooled pre-logits vector, or an inner layer pooled or as tiles.

``timm:efficientnet_b0`` gives what ``model.forward_head(model.forward_features(x),
pre_logits=True)`` gives (timm's ``num_classes=0`` model); ``--pool`` changes the pooling of the
last feature map; ``--layer K`` takes feature level K (timm's ``features_only`` index) instead,
pooled by ``--pool`` (default ``avg``) or, with ``--pool none``, one vector per feature-map cell.
Preprocessing is the model's own data config (``timm.data.resolve_data_config``).
"""

from __future__ import annotations

import functools
import logging
from types import ModuleType
from typing import Any

import torch
from torch import nn

from nenya._errors import CheckpointError, NenyaError, WeightsNotFoundError
from nenya.compat import import_torchvision
from nenya.encoders._image import (
    PooledMap,
    check_pool,
    encoder_fingerprint,
    image_preprocess,
    probe,
    read_state,
    seeded,
    timm_defaults,
    weights_tag,
)
from nenya.encoders.base import Encoder, EncoderOptions, Preprocess
from nenya.encoders.weights import fit_state

log = logging.getLogger(__name__)


def import_timm() -> ModuleType:
    """Import timm (which imports torchvision: see :func:`import_torchvision`)."""
    try:
        import_torchvision(warn=False)
    except NenyaError as e:
        log.debug("timm without torchvision: %s", e)
    try:
        import timm
    except ModuleNotFoundError:
        raise NenyaError("timm is not installed; install it with: pip install timm") from None
    return timm


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _check_name(timm: ModuleType, name: str) -> None:
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(name):
        return
    import difflib

    arch = name.split(".", 1)[0]
    close = timm.list_models(f"*{arch}*")[:8] or difflib.get_close_matches(arch, timm.list_models(), n=5)
    raise NenyaError(
        f"unknown timm model {name!r}"
        + (f"; did you mean {', '.join(close)}?" if close else "; list them with timm.list_models('*pattern*')")
    )


class TimmEncoder(Encoder):
    """A timm model: the pooled pre-logits vector, or one feature level pooled or as tiles."""

    @classmethod
    def from_spec(
        cls, name: str, opt=None, *, options: EncoderOptions, trust_checkpoint: bool = False, remove_module: bool = True
    ) -> TimmEncoder:
        """Build ``timm:<name>``.

        Example:
            >>> enc = TimmEncoder.from_spec("resnet18", options=EncoderOptions(layer=3, pool="none", size=128))
            >>> enc.dim, enc.grid                                        # (256, (8, 8))

        Args:
            name: a timm model name, with or without a pretrained tag (``convnext_tiny.fb_in1k``).
            opt: not used (Nenya options are for ``supcon:`` models).
            options: ``weights`` (a timm state dict or safetensors file, loaded safely and strictly
                except for the classifier), ``pretrained`` (the hub's weights; needs the network
                or a filled cache), ``layer``, ``pool``, preprocessing overrides. With neither
                ``weights`` nor ``pretrained`` the model has random weights (seed 0).
            trust_checkpoint: unpickle anything in ``weights`` (only for files you trust).
            remove_module: strip DataParallel ``module.`` prefixes from ``weights``.

        Raises:
            NenyaError: an unknown model, layer or pool.
            WeightsNotFoundError: pretrained weights cannot be fetched.
            CheckpointError: ``weights`` do not fit the model or cannot be loaded safely.
        """
        if opt is not None:
            raise NenyaError("timm: models take no --opts (those are for supcon: checkpoints)")
        if options.weights and options.pretrained:
            raise NenyaError("give either --weights FILE or --pretrained, not both")
        pool = check_pool(options.pool)
        timm = import_timm()
        _check_name(timm, name)
        state = (
            read_state(options.weights, trust=trust_checkpoint, remove_module=remove_module)
            if options.weights
            else None
        )
        tag = (
            weights_tag(options.weights)
            if options.weights
            else ("pretrained" if options.pretrained else "random-seed-0")
        )

        model, net = _build(timm, name, options, state, pool)
        model.eval()
        pre = image_preprocess(timm_defaults(timm.data.resolve_data_config({}, model=model)), options)
        out = _probe(net, pre, name)
        grid = None
        if out.dim() == 3:
            h, w = _map_size(net, pre)
            grid = (h, w)
            dim = int(out.shape[2])
        elif out.dim() == 2:
            dim = int(out.shape[1])
        else:
            raise NenyaError(f"timm:{name} gives shape {tuple(out.shape)}; expected (B, dim) (use --pool to pool it)")
        if pool == "none" and options.layer is None and grid is None:
            raise NenyaError(f"timm:{name} has no feature map to tile; use --layer K --pool none")
        fp = encoder_fingerprint("timm", name, options.layer, pool, pre, tag)
        enc = cls(net, name=f"timm:{name}", dim=dim, preprocess=pre, fingerprint=fp)
        enc.grid = grid
        log.info(
            "timm:%s: %d-d%s, input %s, weights %s",
            name,
            dim,
            f", {grid[0]}x{grid[1]} tiles" if grid else "",
            pre.image,
            tag,
        )
        return enc


def _build(
    timm: ModuleType, name: str, options: EncoderOptions, state: dict | None, pool: str | None
) -> tuple[nn.Module, nn.Module]:
    """(the timm model, the module to run): pooled vectors, or the ``--layer`` feature map pooled."""
    create = functools.partial(_create, timm, name, options)
    if options.layer is None:
        return _pooled_model(name, create(num_classes=0), state, pool, options)
    if state is not None:
        _check_state(timm, name, state, str(options.weights))
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": (int(options.layer),)}
    if state is not None:  # timm wraps the model for features_only after loading weights into it
        kwargs["pretrained_cfg_overlay"] = {"state_dict": state}
        model = _create_features(timm, name, kwargs, options)
    else:
        model = _create_features(timm, name, kwargs, options, create=create)
    return model, PooledMap(model, pool or "avg")


def _create(timm: ModuleType, name: str, options: EncoderOptions, **kwargs) -> nn.Module:
    """``timm.create_model`` with the hub's weights (``--pretrained``) or seeded random ones."""
    try:
        if options.pretrained:
            return timm.create_model(name, pretrained=True, **kwargs)
        with seeded(0):
            return timm.create_model(name, pretrained=False, **kwargs)
    except Exception as e:  # hub/network errors come in many types (OSError, HF errors, ...)
        if options.pretrained and not isinstance(e, TypeError):
            raise WeightsNotFoundError(
                f"could not fetch the pretrained weights of timm:{name} ({type(e).__name__}: "
                f"{_first_line(e)}); check network access (HF_HUB_OFFLINE must be unset) or that "
                "the model has pretrained weights, or download them and pass --weights FILE"
            ) from None
        raise NenyaError(f"timm cannot build {name!r} with {kwargs} ({type(e).__name__}: {_first_line(e)})") from None


def _pooled_model(
    name: str, model: nn.Module, state, pool: str | None, options: EncoderOptions
) -> tuple[nn.Module, nn.Module]:
    """The whole model (weights fitted) and the module that gives its pooled vector or tiles."""
    if state is not None:
        fit_state(
            model,
            state,
            remove_module=False,
            ignore_prefixes=_classifier_prefixes(model),
            what=f"timm:{name}",
            source=str(options.weights),
            advice="Check that the weights were saved from this architecture (a plain state dict of "
            "the model, or safetensors)",
        )
    if pool in ("avg", "max"):
        try:
            model.reset_classifier(0, global_pool=pool)  # type: ignore[operator]  # a timm model method
        except (TypeError, ValueError, AssertionError, KeyError) as e:
            raise NenyaError(
                f"timm:{name} does not take global_pool={pool!r} ({_first_line(e)}); try "
                "--pool gem or --pool none, or --layer K"
            ) from None
        return model, model
    if pool in ("gem", "none"):
        return model, PooledMap(
            model, pool, method="forward_features", nhwc=getattr(model, "output_fmt", "NCHW") == "NHWC"
        )
    return model, model


def _create_features(timm: ModuleType, name: str, kwargs: dict, options: EncoderOptions, *, create=None) -> nn.Module:
    layer = kwargs["out_indices"][0]
    try:
        if create is not None:
            return create(**kwargs)
        with seeded(0):
            return timm.create_model(name, pretrained=True, **kwargs)
    except (IndexError, AssertionError, RuntimeError, ValueError, NenyaError) as e:
        if isinstance(e, WeightsNotFoundError):
            raise
        try:
            with seeded(0):
                levels = len(timm.create_model(name, pretrained=False, features_only=True).feature_info)
        except Exception:
            levels = None
        if levels is not None and not -levels <= layer < levels:
            raise NenyaError(
                f"timm:{name} has feature levels 0..{levels - 1}; --layer {layer} is out of range"
            ) from None
        raise NenyaError(
            f"timm:{name} cannot give feature level {layer} ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _check_state(timm: ModuleType, name: str, state: dict, source: str) -> None:
    """Check a state dict fits the architecture before timm loads it (timm's own load is lenient)."""
    try:
        with torch.device("meta"):
            ref = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # some models compute at init in ways the meta device cannot
        with seeded(0):
            ref = timm.create_model(name, pretrained=False, num_classes=0)
    expected = ref.state_dict()
    ignore = _classifier_prefixes(ref)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not any(k == p or k.startswith(p + ".") for p in ignore)]
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        if bad:
            k = bad[0]
            detail = (
                f"size mismatch for {k}: {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
            )
        else:
            detail = f"missing {missing[:3]} ({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})"
        raise CheckpointError(
            f"{source} does not fit timm:{name}: {detail}. Check that the weights were saved "
            "from this architecture (a timm state dict, or safetensors)"
        )


def _probe(net: nn.Module, pre: Preprocess, name: str) -> torch.Tensor:
    try:
        return probe(net, pre)
    except Exception as e:
        raise NenyaError(
            f"timm:{name} does not run at input size {pre.image.size if pre.image else '?'} "
            f"({type(e).__name__}: {_first_line(e)}); choose a size it accepts with --size "
            "(transformers take only their trained size)"
        ) from None


@torch.inference_mode()
def _map_size(net: nn.Module, pre: Preprocess) -> tuple[int, int]:
    """(rows, cols) of the feature map that a tile encoder flattens."""
    inner = net.inner if isinstance(net, PooledMap) else net
    assert pre.image is not None, "a tile encoder takes images"
    h, w = pre.image.size
    x = torch.zeros(1, pre.in_channels, h, w)
    f = getattr(inner, str(net.method))(x) if isinstance(net, PooledMap) and net.method else inner(x)
    if isinstance(f, (list, tuple)):
        f = f[0]
    if isinstance(net, PooledMap) and net.nhwc:
        return int(f.shape[1]), int(f.shape[2])
    return int(f.shape[-2]), int(f.shape[-1])


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
