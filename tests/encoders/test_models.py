"""SupConResNet (names and shapes Nenya checkpoints need), the SupCon loss, set_model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nenya.models.resnet_big import SupConResNet
from nenya.params import Params
from nenya.train.losses import SupConLoss
from nenya.train_util import set_model


def test_parameter_names_match_nenya_checkpoints():
    keys = set(SupConResNet("resnet50", feat_dim=256).state_dict())
    for k in [
        "encoder.conv1.weight",
        "encoder.bn1.running_mean",
        "encoder.layer1.0.conv1.weight",
        "encoder.layer1.0.shortcut.0.weight",
        "encoder.layer4.2.conv3.weight",
        "head.0.weight",
        "head.0.bias",
        "head.2.weight",
        "head.2.bias",
    ]:
        assert k in keys, k
    assert not any("maxpool" in k or "fc." in k for k in keys)


@pytest.mark.parametrize(
    "name,dim,blocks",
    [
        ("resnet18", 512, [2, 2, 2, 2]),
        ("resnet34", 512, [3, 4, 6, 3]),
        ("resnet50", 2048, [3, 4, 6, 3]),
        ("resnet101", 2048, [3, 4, 23, 3]),
    ],
)
def test_architectures(name, dim, blocks):
    m = SupConResNet(name, feat_dim=32).eval()
    assert [len(getattr(m.encoder, f"layer{i}")) for i in range(1, 5)] == blocks
    assert m.encoder.conv1.kernel_size == (3, 3) and m.encoder.conv1.stride == (1, 1)
    with torch.no_grad():
        feats = m.encoder(torch.randn(2, 3, 16, 16))
        out = m(torch.randn(2, 3, 16, 16))
    assert feats.shape == (2, dim)
    assert out.shape == (2, 32)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-6)


def test_cifar_stem_keeps_resolution():
    m = SupConResNet("resnet18", feat_dim=8).eval()
    x = torch.randn(1, 3, 64, 64)
    stem = F.relu(m.encoder.bn1(m.encoder.conv1(x)))
    assert m.encoder.layer1(stem).shape[-2:] == (64, 64)  # no max-pool, stride 1
    assert m.encoder.layer4(m.encoder.layer3(m.encoder.layer2(m.encoder.layer1(stem)))).shape[-2:] == (8, 8)


def test_one_channel_and_linear_head():
    m = SupConResNet("resnet18", head="linear", feat_dim=10, in_channel=1)
    sd = m.state_dict()
    assert sd["encoder.conv1.weight"].shape == (64, 1, 3, 3)
    assert sd["head.weight"].shape == (10, 512)
    with pytest.raises(ValueError, match="head"):
        SupConResNet("resnet18", head="conv")
    with pytest.raises(ValueError, match="resnet18"):
        SupConResNet("resnet9")


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Independent SimCLR NT-Xent over 2B views with cross-entropy."""
    z = torch.cat([z1, z2])
    n = len(z1)
    sim = z @ z.T / t
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(sim, target)


def test_supcon_loss_without_labels_is_nt_xent():
    z1 = F.normalize(torch.randn(6, 8), dim=1)
    z2 = F.normalize(torch.randn(6, 8), dim=1)
    loss = SupConLoss(temperature=0.07)(torch.stack([z1, z2], dim=1))
    assert torch.allclose(loss, _nt_xent(z1, z2, 0.07), atol=1e-5)


def test_supcon_loss_with_labels_pulls_same_class_together():
    z = F.normalize(torch.randn(4, 2, 8), dim=2)
    labels = torch.tensor([0, 0, 1, 1])
    crit = SupConLoss(temperature=0.5)
    assert crit(z, labels=labels) != crit(z)
    with pytest.raises(ValueError):
        crit(z, labels=labels, mask=torch.eye(4))


def test_set_model_returns_model_and_criterion():
    opt = Params(None, ssl_model="resnet18", feat_dim=24, temp=0.1, nchannels=3)
    model, crit = set_model(opt, cuda_use=False)
    assert isinstance(model, SupConResNet) and isinstance(crit, SupConLoss)
    assert crit.temperature == 0.1
    assert model.head[2].out_features == 24
    assert not any("module." in k for k in model.state_dict())
