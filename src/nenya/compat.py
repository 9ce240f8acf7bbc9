"""Imports of optional packages that need care: torchvision built for another torch."""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType

import torch

from nenya._errors import NenyaError

log = logging.getLogger(__name__)

#: Schemas of torchvision's compiled operators, defined from Python when its binary extension
#: does not load against this torch build (torchvision's ``_meta_registrations`` needs them to
#: exist). Only their *schemas*: the models never call them; detection ops fail when called.
_TV_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, int sampling_ratio, "
    "bool aligned) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor",
)
_MISSING_OP = "operator torchvision::"
_lock = threading.Lock()
#: The Library holding the schemas must stay alive for them to stay defined (module-level, set once).
_SCHEMA_LIBRARY: list[torch.library.Library] = []
#: Set once the warning about the schemas has been logged (it is said once per process).
_WARNED = threading.Event()
_WARNING = "torchvision's compiled ops do not match this torch build; its models work, detection ops will not"


def import_torchvision(*, warn: bool = True) -> ModuleType:
    """Import torchvision, working around a compiled extension that does not match this torch.

    torchvision wheels built for another torch (e.g. the CUDA wheel next to a CPU torch) fail
    to import with ``RuntimeError: operator torchvision::nms does not exist``. On exactly that
    failure, the half-imported modules are dropped, the operator schemas are defined from
    Python and torchvision is imported again: its models and transforms work; its detection
    operators (nms, roi_align, deform_conv2d) raise when called.

    Args:
        warn: log that warning (once per process) when the schemas were needed. Callers that
            use torchvision's models or operators warn; those that only need it importable
            (timm imports it for its transforms) pass ``warn=False``.

    Raises:
        NenyaError: torchvision is not installed, or fails to import for another reason.
    """
    tv = _import_torchvision()
    if warn and _SCHEMA_LIBRARY and not _WARNED.is_set():
        _WARNED.set()
        log.warning(_WARNING)
    return tv


def _import_torchvision() -> ModuleType:
    with _lock:
        if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
            return sys.modules["torchvision"]
        try:
            return importlib.import_module("torchvision")
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] == "torchvision":
                raise NenyaError("torchvision is not installed; install it with: pip install torchvision") from None
            raise
        except RuntimeError as e:
            if _MISSING_OP not in str(e) or _SCHEMA_LIBRARY:
                raise NenyaError(
                    f"torchvision fails to import ({e}); install the torchvision build that "
                    f"matches torch {torch.__version__}"
                ) from e
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - kept alive below
        for schema in _TV_SCHEMAS:
            op = schema.split("(", 1)[0]
            if not _op_exists(op):
                lib.define(schema)
        _SCHEMA_LIBRARY.append(lib)
        try:
            tv = importlib.import_module("torchvision")
        except Exception as e:
            raise NenyaError(
                f"torchvision fails to import even with its operator schemas defined ({e}); "
                f"install the torchvision build that matches torch {torch.__version__}"
            ) from e
        return tv


def _op_exists(op: str) -> bool:
    try:
        getattr(torch.ops.torchvision, op)
        return True
    except (AttributeError, RuntimeError):
        return False
