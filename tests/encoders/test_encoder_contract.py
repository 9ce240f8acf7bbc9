"""The Encoder contract, run for every registered model kind (``nenya.encoders.encoders``).

``SPECS`` holds one tiny spec per kind (random seeded weights, small inputs, no network); a test
asserts that every registered kind has one, naming the kind and this file. Each spec is loaded
through the one public loader, :func:`nenya.encoders.load_encoder`, and must give:

- vectors of shape (B, dim), float32 and finite, each item's independent of its batch-mates;
- the same vectors for the same input, twice, and from a second load (whatever torch's global RNG
  holds), with the same ``fingerprint``;
- an ``about()`` that is plain JSON and names the spec;
- through the runner (an in-memory source and sink), exactly what ``encode`` gives directly.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_opts, save_checkpoint
from nenya.encoders import encoders, load_encoder
from nenya.encoders.base import Encoder, EncoderOptions
from nenya.engines.runner import RunOptions, run
from nenya.params import Params, option_preprocess
from nenya.preprocess.cpu import decode_image
from nenya.sample_data import make_cutouts
from nenya.sinks.memory import ArraySink
from nenya.sources.arrays import ArraySource
from photokit import picture

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

HERE = "tests/encoders/test_encoder_contract.py"
B = 3  # items per test batch


# -- tiny models, made once per module ----------------------------------------------------------
class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def make_supcon(folder: Path) -> str:
    folder.mkdir(parents=True)
    opt = option_preprocess(Params(make_opts(folder, feat_dim=8)))
    path = folder / "supcon" / "last.pth"
    save_checkpoint(opt, path, seed=1)
    return str(path)


def make_named_v4(folder: Path) -> str:
    """Random weights where ``nenya:v4`` looks for them: <model dir>/<model_root>/<model_name>/last.pth."""
    from nenya.encoders.named import load_opt

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NENYA_MODEL_DIR", str(folder / "models"))
        opt, path = load_opt("v4")
    assert path.startswith(str(folder / "models")), path
    save_checkpoint(opt, Path(path), seed=2)
    return str(folder / "models")


def make_torchscript(folder: Path) -> str:
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    path = folder / "tiny.pt"
    torch.jit.script(TinyConv().eval()).save(str(path))
    return str(path)


def make_ae(folder: Path) -> str:
    from nenya.train.autoencoder import AutoencoderConfig, train_autoencoder

    folder.mkdir(parents=True)
    data = folder / "ae_images.npy"
    np.save(data, make_cutouts(16, size=16, seed=4)[0][:, None])
    cfg = AutoencoderConfig(
        data=str(data),
        nlayers=1,
        poolsize=4,
        numfilters=1,
        num_dense=3,
        batch_size=8,
        num_steps=2,
        num_checkpoints=1,
        output=str(folder / "ae"),
    )
    return str(train_autoencoder(cfg, progress=False).last)


@dataclass(frozen=True)
class Spec:
    """One encoder kind: how to make its files, its spec and options, and what it encodes."""

    kind: str
    spec: Callable[[str], str]  # made file (or "") -> spec
    inputs: str  # "cutouts" (float (B, 1, 16, 16)) or "photos" (uint8, decoded with the model's transform)
    make: Callable[[Path], str] | None = None  # builds the model's files; returns what ``spec`` needs
    options: EncoderOptions = field(default_factory=EncoderOptions)
    model_dir: bool = False  # the made path is NENYA_MODEL_DIR


SPECS = [
    Spec("supcon", lambda p: f"supcon:{p}", "cutouts", make_supcon),
    Spec("nenya", lambda p: "nenya:v4", "cutouts", make_named_v4, model_dir=True),
    Spec("timm", lambda p: "timm:test_resnet", "photos", options=EncoderOptions(size=32)),
    Spec("torchvision", lambda p: "torchvision:mobilenet_v3_small", "photos", options=EncoderOptions(size=32)),
    Spec("torchscript", lambda p: f"torchscript:{p}", "photos", make_torchscript, options=EncoderOptions(size=32)),
    Spec("ae", lambda p: f"ae:{p}", "cutouts", make_ae),
]


def test_every_registered_encoder_kind_has_a_spec():
    covered = {s.kind for s in SPECS}
    missing = sorted(set(encoders.names()) - covered)
    assert not missing, f"add a tiny spec for new encoder kind(s) {missing} to SPECS in {HERE}"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Callable[[Spec], str]:
    """Each kind's files, made on first use and kept for the module."""
    root = tmp_path_factory.mktemp("encoder-models")
    cache: dict[str, str] = {}

    def get(s: Spec) -> str:
        if s.kind not in cache:
            cache[s.kind] = s.make(root / s.kind) if s.make else ""
        return cache[s.kind]

    return get


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread (OpenMP spin-waits make 2 threads far slower on a busy 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Loaded:
    """A kind's spec, a loader (a fresh encoder on the CPU per call) and one encoder shared by the module."""

    spec: str
    load: Callable[[], Encoder]
    shared_cache: dict[str, Encoder]

    def shared(self) -> Encoder:
        if self.spec not in self.shared_cache:
            self.shared_cache[self.spec] = self.load()
        return self.shared_cache[self.spec]


@pytest.fixture(scope="module")
def shared_cache() -> dict[str, Encoder]:
    return {}


@pytest.fixture(params=[s.kind for s in SPECS] + sorted(set(encoders.names()) - {s.kind for s in SPECS}))
def kind(request, made, shared_cache, monkeypatch) -> Loaded:
    """A registered kind's spec and its loaders."""
    s = next((s for s in SPECS if s.kind == request.param), None)
    if s is None:
        pytest.fail(f"add a tiny spec for new encoder kind {request.param!r} to SPECS in {HERE}")
    path = made(s)
    if s.model_dir:
        monkeypatch.setenv("NENYA_MODEL_DIR", path)
    spec = s.spec(path)
    return Loaded(spec, lambda: load_encoder(spec, options=s.options).to("cpu", "fp32"), shared_cache)


def inputs_for(enc: Encoder) -> torch.Tensor:
    """B raw items as a source yields them for this encoder: photos decoded with its transform, else cutouts."""
    if enc.preprocess.image is not None:
        blobs = []
        for i in range(B):
            buf = io.BytesIO()
            picture(i, size=(40 + 3 * i, 52)).save(buf, "PNG")
            blobs.append(buf.getvalue())
        return torch.from_numpy(np.stack([decode_image(b, transform=enc.preprocess.image) for b in blobs]))
    return torch.from_numpy(make_cutouts(B, size=16, seed=6)[0][:, None])


# -- the contract -------------------------------------------------------------------------------
def test_vectors_shape_type_and_determinism(kind):
    enc = kind.shared()
    x = inputs_for(enc)
    assert isinstance(enc.dim, int) and enc.dim > 0 and enc.grid is None
    out = enc.encode(x)
    assert tuple(out.shape) == (B, enc.dim) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())
    assert torch.equal(enc.encode(x), out), "the same input gave other vectors"
    # relative to the vectors' scale: random-weight models (mobilenet's untrained batch norms) give ~1e-10
    scale = float(out.abs().max())
    assert scale > 0, "all vectors are zero"
    alone = torch.cat([enc.encode(x[i : i + 1]) for i in range(B)])  # one at a time: no batch-mates
    assert float((alone - out).abs().max()) <= 1e-5 * scale, "an item's vector depends on its batch-mates"
    assert float((out[0] - out[1]).abs().max()) > 1e-3 * scale, "different inputs gave the same vector"


def test_fingerprint_and_vectors_stable_across_loads(kind):
    first = kind.load()
    torch.manual_seed(12345)  # another global RNG state: random weights must not depend on it
    torch.rand(100)
    second = kind.load()
    assert isinstance(first.fingerprint, str) and first.fingerprint
    assert first.fingerprint == second.fingerprint
    x = inputs_for(first)
    torch.testing.assert_close(second.encode(x), first.encode(x), rtol=0, atol=0)


def test_about_is_json_and_names_the_spec(kind):
    enc = kind.shared()
    about = enc.about()
    again = json.loads(json.dumps(about))
    assert again == about
    assert about["model"] == kind.spec  # the spec it was loaded from (a model file by its absolute path)
    assert about["dim"] == enc.dim and about["preprocess"] == repr(enc.preprocess)
    assert about["precision"] == "fp32"


def test_runner_into_memory_equals_encode(kind):
    enc = kind.shared()
    x = inputs_for(enc)
    sink = ArraySink()
    options = RunOptions(batch_size=B, shard_size=B, num_workers=0, device="cpu", progress=False)
    summary = run(ArraySource(x.numpy(), ids=[f"i{i}" for i in range(B)]), enc, sink, options)
    assert summary.items == B and summary.skipped == 0
    np.testing.assert_array_equal(sink.arrays["arrays"][""], enc.encode(x).numpy())
