"""CIFAR ResNet-18 (He et al., CVPR 2016), the variant used on 32x32 images.

Changes from the ImageNet network, as in the CIFAR code the active-learning papers
share (kuangliu/pytorch-cifar, used by Learning Loss, Sequential-GCN, MoBYv2AL and
ISAL): a 3x3 stride-1 stem and no max-pool, so a 32x32 input keeps 32x32 maps in
the first stage (4x4 before pooling); a 28x28 input ends at 4x4 the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet trunk returning globally average-pooled features."""

    def __init__(self, blocks: tuple[int, int, int, int], in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        widths = (width, 2 * width, 4 * width, 8 * width)
        self.feat_dim = widths[3]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        in_planes = width
        stage_ends: list[int] = []
        for i, (planes, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stage_ends.append(len(layers))
        # one flat Sequential (state_dict keys layers.0 ... layers.7); stage k
        # (layer1 ... layer4 of torchvision) ends after block stage_ends[k] - 1
        self.layers = nn.Sequential(*layers)
        self._stage_ends = frozenset(stage_ends)
        #: channels of the :meth:`stages` maps (layer1 ... layer4)
        self.stage_channels: tuple[int, ...] = tuple(w for w, n in zip(widths, blocks) if n > 0)
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _trunk(self, x: Tensor, stages: list[Tensor] | None = None) -> Tensor:
        """Stem and blocks; the last map, each stage's output appended to ``stages``."""
        x = self.stem(x)
        for i, block in enumerate(self.layers):
            x = block(x)
            if stages is not None and i + 1 in self._stage_ends:
                stages.append(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self._trunk(x)), 1)

    def forward_with_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, feat_dim) features and the :meth:`stages` maps from one pass."""
        stages: list[Tensor] = []
        return torch.flatten(self.pool(self._trunk(x, stages)), 1), stages

    def stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of layer1 ... layer4 (channels :attr:`stage_channels`): the
        four feature maps the Learning Loss module reads in Yoo & Kweon (CVPR 2019),
        Fig. 3 and their ResNet-18 experiments."""
        return self.forward_with_stages(x)[1]


def resnet18(in_channels: int = 3, width: int = 64) -> ResNet:
    """CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2], 512-d features at ``width=64``
    (11.2M parameters with a 10-class head)."""
    return ResNet((2, 2, 2, 2), in_channels=in_channels, width=width)
