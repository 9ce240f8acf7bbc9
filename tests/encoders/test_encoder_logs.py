"""What the image encoders say while they load: the torchvision-build warning only for torchvision
models, and the weights (random ones included) for every library."""

from __future__ import annotations

import logging
import subprocess
import sys

from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions

_LOAD_IN_ORDER = """
import logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
from nenya import compat
from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions
load_encoder("timm:resnet18", options=EncoderOptions(size=32))
print("--- timm loaded; patched:", bool(compat._SCHEMA_LIBRARY), file=sys.stderr, flush=True)
load_encoder("torchvision:resnet18", options=EncoderOptions(size=32))
load_encoder("torchvision:resnet18", options=EncoderOptions(size=32))
"""


def test_torchvision_build_warning_only_for_torchvision_models():
    """A timm model imports torchvision (timm's transforms need it) without a word about its detection
    ops; the first torchvision model says it, once."""
    run = subprocess.run([sys.executable, "-c", _LOAD_IN_ORDER], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    timm_part, marker, tv_part = run.stderr.partition("--- timm loaded; patched:")
    assert marker, run.stderr
    assert "compiled ops" not in timm_part
    if tv_part.split("\n", 1)[0].strip() == "True":  # this torchvision build does not match torch: say it once
        assert tv_part.count("torchvision's compiled ops do not match this torch build") == 1
    else:
        assert "compiled ops" not in tv_part


def test_torchvision_models_say_their_weights_are_random_as_timm_models_do(caplog):
    with caplog.at_level(logging.INFO, logger="nenya.encoders"):
        load_encoder("timm:resnet18", options=EncoderOptions(size=32))
        load_encoder("torchvision:resnet18", options=EncoderOptions(size=32))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("timm:", "torchvision:"))]
    assert len(lines) == 2 and all(line.endswith("weights random-seed-0") for line in lines), lines
