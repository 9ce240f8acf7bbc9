"""SupConResNet: the CIFAR-stem ResNet with a projection head that Nenya trains.

Parameter names match Nenya's own checkpoints exactly (``encoder.conv1.weight``,
``encoder.layer1.0.conv1.weight``, ..., ``head.0.weight``, ``head.2.weight``), so a
``last.pth`` written by Nenya loads with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1, 3x3, 1x1 convolutions with a shortcut, 4x wider out (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with a CIFAR stem: 3x3 stride-1 conv, BN, ReLU and no max-pool."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], in_channel: int = 3) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channel, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.avgpool(out), 1)


def resnet18(in_channel: int = 3) -> ResNet:
    """The CIFAR-stem ResNet-18 encoder (no head)."""
    return ResNet(BasicBlock, [2, 2, 2, 2], in_channel)


def resnet34(in_channel: int = 3) -> ResNet:
    """The CIFAR-stem ResNet-34 encoder (no head)."""
    return ResNet(BasicBlock, [3, 4, 6, 3], in_channel)


def resnet50(in_channel: int = 3) -> ResNet:
    """The CIFAR-stem ResNet-50 encoder (no head)."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channel)


def resnet101(in_channel: int = 3) -> ResNet:
    """The CIFAR-stem ResNet-101 encoder (no head)."""
    return ResNet(Bottleneck, [3, 4, 23, 3], in_channel)


#: name -> (constructor, backbone feature dimension)
model_dict = {
    "resnet18": (resnet18, 512),
    "resnet34": (resnet34, 512),
    "resnet50": (resnet50, 2048),
    "resnet101": (resnet101, 2048),
}


class SupConResNet(nn.Module):
    """Backbone + projection head; ``forward`` returns L2-normalised latents.

    Example:
        >>> m = SupConResNet("resnet18", feat_dim=128, in_channel=3).eval()
        >>> m(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 128])
    """

    def __init__(self, name: str = "resnet50", head: str = "mlp", feat_dim: int = 128, in_channel: int = 3) -> None:
        super().__init__()
        if name not in model_dict:
            raise ValueError(f"unknown ssl_model {name!r}; expected one of {', '.join(model_dict)}")
        model_fun, dim_in = model_dict[name]
        self.encoder = model_fun(in_channel=in_channel)
        self.dim_in = dim_in
        if head == "linear":
            self.head: nn.Module = nn.Linear(dim_in, feat_dim)
        elif head == "mlp":
            self.head = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True), nn.Linear(dim_in, feat_dim))
        else:
            raise ValueError(f"unknown head {head!r}; expected 'mlp' or 'linear'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.encoder(x)), dim=1)
