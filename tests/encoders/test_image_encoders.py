"""timm, torchvision and TorchScript encoders: equivalence with the libraries' own computation,
tiles, safe weights, preprocessing. Small models at small sizes, random weights, no network."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nenya._errors import CheckpointError, NenyaError, WeightsNotFoundError
from nenya.encoders import load_encoder
from nenya.encoders.base import EncoderOptions
from nenya.encoders.timm import import_timm
from nenya.encoders.torchvision import import_torchvision
from nenya.preprocess.cpu import decode_image

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

timm = import_timm()
tv = import_torchvision()


def photos(n: int = 3, size=(50, 70), seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def batch_for(enc, blobs: list[bytes]) -> torch.Tensor:
    """Raw uint8 batch as an image source yields it for this encoder."""
    return torch.from_numpy(np.stack([decode_image(b, transform=enc.preprocess.image) for b in blobs]))


def model_input(enc, raw: torch.Tensor) -> torch.Tensor:
    return enc.prepare(raw.clone())


# -- timm ----------------------------------------------------------------------------------------
def test_timm_pooled_vector_equals_forward_head_pre_logits():
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=64)).to("cpu", "fp32", channels_last=False)
    assert enc.dim == 512 and enc.grid is None and enc.name == "timm:resnet18"
    ref = timm.create_model("resnet18", num_classes=10).eval()
    result = ref.load_state_dict(enc.model.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"} and not result.unexpected_keys
    raw = batch_for(enc, photos())
    got = enc.encode(raw).numpy()
    with torch.no_grad():
        want = ref.forward_head(ref.forward_features(model_input(enc, raw)), pre_logits=True).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # channels_last (the default placement) changes fp32 results only by reassociation: ~1e-6
    enc.to("cpu", "fp32", channels_last=True)
    np.testing.assert_allclose(enc.encode(raw).numpy(), want, rtol=0, atol=1e-4)


def test_timm_preprocessing_equals_timm_eval_transform():
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=64))
    ref = timm.create_model("resnet18", num_classes=0)
    cfg = timm.data.resolve_data_config({"input_size": (3, 64, 64)}, model=ref)
    transform = timm.data.create_transform(**cfg)
    blobs = photos(2, size=(81, 57))
    want = torch.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    got = model_input(enc, batch_for(enc, blobs))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_timm_tiles_equal_features_only_map():
    enc = load_encoder("timm:efficientnet_b0", options=EncoderOptions(size=64, layer=3, pool="none"))
    enc.to("cpu", "fp32", channels_last=False)
    ref = timm.create_model("efficientnet_b0", features_only=True, out_indices=(3,)).eval()
    ref.load_state_dict(enc.model.inner.state_dict())
    raw = batch_for(enc, photos(2))
    got = enc.encode(raw)
    with torch.no_grad():
        (fmap,) = ref(model_input(enc, raw))
    b, c, h, w = fmap.shape
    assert enc.grid == (h, w) == (4, 4) and enc.dim == c == 112
    assert got.shape == (b, h * w, c)
    for t in range(h * w):
        x, y = t % w, t // w
        torch.testing.assert_close(got[:, t], fmap[:, :, y, x], rtol=0, atol=1e-5)


def test_timm_layer_pooled_and_gem():
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=64, layer=2))
    enc.to("cpu", "fp32", channels_last=False)
    assert enc.grid is None and enc.dim == 128
    raw = batch_for(enc, photos(2))
    ref = timm.create_model("resnet18", features_only=True, out_indices=(2,)).eval()
    ref.load_state_dict(enc.model.inner.state_dict())
    with torch.no_grad():
        (fmap,) = ref(model_input(enc, raw))
    torch.testing.assert_close(enc.encode(raw), fmap.mean(dim=(2, 3)), rtol=0, atol=1e-5)
    gem = load_encoder("timm:resnet18", options=EncoderOptions(size=64, pool="gem")).to(
        "cpu", "fp32", channels_last=False
    )
    full = timm.create_model("resnet18", num_classes=0).eval()
    full.load_state_dict(gem.model.inner.state_dict())
    with torch.no_grad():
        f = full.forward_features(model_input(gem, raw))
    torch.testing.assert_close(gem.encode(raw), f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3), rtol=0, atol=1e-5)


def test_timm_global_pool_max():
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=64, pool="max")).to(
        "cpu", "fp32", channels_last=False
    )
    raw = batch_for(enc, photos(1))
    with torch.no_grad():
        f = enc.model.forward_features(model_input(enc, raw))
    torch.testing.assert_close(enc.encode(raw), f.amax(dim=(2, 3)), rtol=0, atol=1e-6)


def test_timm_errors():
    with pytest.raises(NenyaError, match="unknown timm model 'resnet18x'.*resnet18"):
        load_encoder("timm:resnet18x")
    with pytest.raises(NenyaError, match="unknown pool"):
        load_encoder("timm:resnet18", options=EncoderOptions(pool="median"))
    with pytest.raises(NenyaError, match="feature levels 0..4"):
        load_encoder("timm:resnet18", options=EncoderOptions(size=64, layer=9))


def test_timm_pretrained_without_network_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError, match="pretrained weights of timm:resnet18.*--weights FILE"):
        load_encoder("timm:resnet18", options=EncoderOptions(pretrained=True, size=64))


def test_timm_fingerprint_tracks_options():
    fp = {
        o: load_encoder("timm:resnet18", options=o).fingerprint
        for o in (EncoderOptions(size=64), EncoderOptions(size=64, pool="max"), EncoderOptions(size=96))
    }
    assert len(set(fp.values())) == 3
    assert load_encoder("timm:resnet18", options=EncoderOptions(size=64)).fingerprint == fp[EncoderOptions(size=64)]


# -- weights -------------------------------------------------------------------------------------
@pytest.fixture
def resnet18_weights(tmp_path):
    """A timm resnet18 with its 1000-class head (as users save them), other weights than seed 0."""
    torch.manual_seed(123)
    model = timm.create_model("resnet18").eval()
    state = model.state_dict()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")
    return model


@pytest.mark.parametrize("fname", ["r18.safetensors", "r18.pth"])
def test_timm_weights_file(tmp_path, resnet18_weights, fname):
    enc = load_encoder("timm:resnet18", options=EncoderOptions(size=64, weights=str(tmp_path / fname)))
    enc.to("cpu", "fp32", channels_last=False)
    raw = batch_for(enc, photos(2))
    with torch.no_grad():
        m = resnet18_weights
        want = m.forward_head(m.forward_features(model_input(enc, raw)), pre_logits=True)
    torch.testing.assert_close(enc.encode(raw), want, rtol=0, atol=1e-5)
    random = load_encoder("timm:resnet18", options=EncoderOptions(size=64))
    assert enc.fingerprint != random.fingerprint


def test_timm_weights_for_an_inner_layer(tmp_path, resnet18_weights):
    enc = load_encoder(
        "timm:resnet18",
        options=EncoderOptions(size=64, layer=3, pool="none", weights=str(tmp_path / "r18.safetensors")),
    )
    enc.to("cpu", "fp32", channels_last=False)
    raw = batch_for(enc, photos(1))
    with torch.no_grad():
        m = resnet18_weights
        x = m.act1(m.bn1(m.conv1(model_input(enc, raw))))
        fmap = m.layer3(m.layer2(m.layer1(m.maxpool(x))))
    assert enc.grid == (4, 4)
    torch.testing.assert_close(enc.encode(raw), fmap.flatten(2).transpose(1, 2), rtol=0, atol=1e-5)


def test_weights_that_do_not_fit_are_refused(tmp_path, resnet18_weights):
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    for layer in (None, 2):
        with pytest.raises(CheckpointError, match="does not fit timm:resnet18"):
            load_encoder(
                "timm:resnet18", options=EncoderOptions(size=64, layer=layer, weights=str(tmp_path / "wrong.pth"))
            )
    with pytest.raises(CheckpointError, match="does not fit timm:resnet34"):
        load_encoder("timm:resnet34", options=EncoderOptions(size=64, weights=str(tmp_path / "r18.pth")))


class Payload:
    """Any pickled object: loading it could run code, so nenya refuses it."""


def test_pickled_object_checkpoint_is_refused(tmp_path, resnet18_weights):
    torch.save({"model": resnet18_weights.state_dict(), "extra": Payload()}, tmp_path / "evil.pth")
    for spec in ("timm:resnet18", "torchvision:resnet18"):
        with pytest.raises(CheckpointError, match="refusing to load"):
            load_encoder(spec, options=EncoderOptions(size=64, weights=str(tmp_path / "evil.pth")))


# -- torchvision ---------------------------------------------------------------------------------
def test_import_torchvision_gives_working_models():
    assert import_torchvision() is tv
    assert hasattr(tv.models, "resnet18")


def test_torchvision_resnet_gives_avgpool_features(tmp_path):
    enc = load_encoder("torchvision:resnet18", options=EncoderOptions(size=64)).to("cpu", "fp32", channels_last=False)
    assert enc.dim == 512 and enc.name == "torchvision:resnet18"
    torch.manual_seed(5)
    ref = tv.models.resnet18().eval()
    result = ref.load_state_dict(enc.model.state_dict(), strict=False)
    assert set(result.missing_keys) == {"fc.weight", "fc.bias"}
    raw = batch_for(enc, photos(2))
    with torch.no_grad():
        x = model_input(enc, raw)
        x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        x = ref.layer4(ref.layer3(ref.layer2(ref.layer1(x))))
        want = torch.flatten(ref.avgpool(x), 1)
    torch.testing.assert_close(enc.encode(raw), want, rtol=0, atol=1e-5)
    # weights given as a state dict with the classifier, as torchvision saves them
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    again = load_encoder("torchvision:resnet18", options=EncoderOptions(size=64, weights=str(tmp_path / "tv.pth")))
    torch.testing.assert_close(again.to("cpu", "fp32", channels_last=False).encode(raw), want, rtol=0, atol=1e-5)


def test_torchvision_preprocessing_equals_its_weights_transforms():
    enc = load_encoder("torchvision:resnet18", options=EncoderOptions())
    pre = enc.preprocess
    assert pre.image.size == (224, 224) and pre.image.resize == 256 and pre.image.interpolation == "bilinear"
    ref = tv.models.get_model_weights("resnet18").DEFAULT.transforms()
    blobs = photos(2, size=(300, 260))
    want = torch.stack([ref(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])
    torch.testing.assert_close(model_input(enc, batch_for(enc, blobs)), want, rtol=0, atol=1e-6)


def test_torchvision_classifier_removal_is_generic():
    enc = load_encoder("torchvision:mobilenet_v3_small", options=EncoderOptions(size=64))
    assert enc.dim == 1024  # the last Linear of the classifier removed; the hidden Linear kept


def test_torchvision_errors():
    with pytest.raises(NenyaError, match="use timm:resnet18"):
        load_encoder("torchvision:resnet18", options=EncoderOptions(layer=3))
    with pytest.raises(NenyaError, match="unknown torchvision model"):
        load_encoder("torchvision:resnet_nope")


# -- TorchScript ---------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self, pool: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x))
        return f.mean(dim=(2, 3)) if self.pool else f


def test_torchscript_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Tiny().eval()
    torch.jit.script(model).save(str(tmp_path / "tiny.pt"))
    enc = load_encoder(f"torchscript:{tmp_path / 'tiny.pt'}", options=EncoderOptions(size=32, mean=(0.5,), std=(0.25,)))
    enc.to("cpu", "fp32", channels_last=False)
    assert enc.dim == 8 and enc.grid is None and enc.preprocess.image.size == (32, 32)
    raw = batch_for(enc, photos(2))
    x = raw.float() / 255
    with torch.no_grad():
        want = model((x - 0.5) / 0.25)
    torch.testing.assert_close(enc.encode(raw), want, rtol=0, atol=1e-6)


def test_torchscript_feature_map_as_tiles(tmp_path):
    torch.manual_seed(0)
    model = Tiny(pool=False).eval()
    torch.jit.script(model).save(str(tmp_path / "map.pt"))
    enc = load_encoder(f"torchscript:{tmp_path / 'map.pt'}", options=EncoderOptions(size=32, pool="none"))
    enc.to("cpu", "fp32", channels_last=False)
    assert enc.grid == (16, 16) and enc.dim == 8
    raw = batch_for(enc, photos(1))
    with torch.no_grad():
        f = model(raw.float() / 255)
    torch.testing.assert_close(enc.encode(raw), f.flatten(2).transpose(1, 2), rtol=0, atol=1e-6)
    pooled = load_encoder(f"torchscript:{tmp_path / 'map.pt'}", options=EncoderOptions(size=32))
    torch.testing.assert_close(
        pooled.to("cpu", "fp32", channels_last=False).encode(raw), f.mean(dim=(2, 3)), rtol=0, atol=1e-6
    )


def test_torchscript_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a TorchScript file"):
        load_encoder(f"torchscript:{tmp_path / 'junk.pt'}")
    with pytest.raises(NenyaError, match="takes no --weights"):
        load_encoder(f"torchscript:{tmp_path / 'junk.pt'}", options=EncoderOptions(weights="x.pth"))
