"""VGG-16 with batch normalisation for small images (Simonyan & Zisserman, ICLR
2015; BN variant as in the CIFAR code MoBYv2AL and Sequential-GCN use for
CIFAR-10/100, Caramalau et al., BMVC 2022, Sec. 4).

The five max-pools use ``ceil_mode=True``: on 32x32 inputs this is the usual
32 -> 16 -> 8 -> 4 -> 2 -> 1, and on 28x28 Fashion-MNIST it gives
28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of shrinking a 1x1 map to nothing. A final
adaptive average pool makes the 512-d features independent of the input size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """Conv3x3-BN-ReLU stacks separated by 2x2 max-pools, then global average pool."""

    def __init__(self, cfg: tuple[int | str, ...] = VGG16_CFG, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        blocks: list[tuple[int, int]] = []  # (end position in layers, channels) of each conv block
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                blocks.append((len(layers), c))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        if not blocks or blocks[-1][0] != len(layers):
            blocks.append((len(layers), c))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = c
        # the stages are the last four blocks, each ending in its max-pool
        # (VGG-16: 128, 256, 512, 512 channels; 8, 4, 2, 1 px on 32 px input)
        self._stage_ends = frozenset(end for end, _ in blocks[-4:])
        #: channels of the :meth:`stages` maps
        self.stage_channels: tuple[int, ...] = tuple(ch for _, ch in blocks[-4:])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _trunk(self, x: Tensor, stages: list[Tensor] | None = None) -> Tensor:
        """All conv blocks; the last map, each stage's output appended to ``stages``."""
        for i, layer in enumerate(self.features):
            x = layer(x)
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
        """The outputs of the last four conv blocks, each after its max-pool
        (channels :attr:`stage_channels`), for a Learning Loss module (Yoo & Kweon,
        CVPR 2019, Fig. 3, which reads one map per block of its ResNet)."""
        return self.forward_with_stages(x)[1]


def vgg16(in_channels: int = 3) -> VGG:
    """BN VGG-16 for 28-32 px images: 13 conv layers, 512-d features (14.7M
    parameters)."""
    return VGG(VGG16_CFG, in_channels=in_channels)
