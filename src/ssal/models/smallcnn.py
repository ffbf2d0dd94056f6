"""A small, fast CNN for CPU work, after cifar10-airbench (Jordan, 2024,
``airbench94.py``): three conv groups, each ``conv -> max-pool -> BN -> GELU ->
conv -> BN -> GELU``, channel widths ``(w, 2w, 4w)``, then a global max-pool.

Differences from airbench: a learned 3x3 stem (conv-BN-GELU, padding 1) replaces
the frozen 2x2 patch-whitening layer, so the network takes 1- or 3-channel input
of any size >= 8 px and needs no data-dependent initialisation; the head lives in
:class:`~ssal.models.base.Classifier` (no logit scaling). Pooling after the first
conv of each group keeps the expensive convolutions at reduced resolution.

Measured on this project's 2-core CPU (CPU_SSL.md): widths 64/128/256 (1.19M
parameters) train at about 163 img/s at 32 px, widths 32/64/128 at about 612 img/s.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvGroup(nn.Module):
    """conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's ConvGroup)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        # ceil_mode so odd sizes (28 -> 14 -> 7 -> 4) never drop a border row
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class SmallCNN(nn.Module):
    """Stem + three :class:`ConvGroup` s + global max-pool; ``feat_dim = widths[2]``."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, int, int] = (64, 128, 256), stem_width: int = 32) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1 or stem_width < 1:
            raise ValueError(f"widths must be three positive ints and stem_width positive, got {widths}, {stem_width}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.GELU(),
        )
        self.groups = nn.Sequential(
            ConvGroup(stem_width, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2])
        )
        # airbench pools the final 3x3 (or 4x4) map with a max-pool
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.feat_dim = widths[2]
        #: channels of the :meth:`stages` maps (one per ConvGroup)
        self.stage_channels: tuple[int, ...] = tuple(int(w) for w in widths)

    def _trunk(self, x: Tensor, stages: list[Tensor] | None = None) -> Tensor:
        """Stem and ConvGroups; the last map, each group's output appended to ``stages``."""
        x = self.stem(x)
        for group in self.groups:
            x = group(x)
            if stages is not None:
                stages.append(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self._trunk(x)), 1)

    def forward_with_stages(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(B, feat_dim) features and the :meth:`stages` maps from one pass."""
        stages: list[Tensor] = []
        return torch.flatten(self.pool(self._trunk(x, stages)), 1), stages

    def stages(self, x: Tensor) -> list[Tensor]:
        """The output map of each ConvGroup (channels :attr:`stage_channels`), the
        intermediate features a Learning Loss module reads (Yoo & Kweon, CVPR 2019, Fig. 3)."""
        return self.forward_with_stages(x)[1]


def smallcnn(in_channels: int = 3, width: int | tuple[int, int, int] = 64) -> SmallCNN:
    """Small CNN with group widths ``(width, 2 width, 4 width)`` (or an explicit
    triple). ``width=64`` gives 1.16M backbone parameters; 32 gives 0.29M and
    trains about 3-4x faster on a CPU."""
    widths = (width, 2 * width, 4 * width) if isinstance(width, int) else tuple(width)
    if len(widths) != 3:
        raise ValueError(f"width must be an int or three ints, got {width!r}")
    stem = max(8, min(32, widths[0] // 2))
    return SmallCNN(in_channels, (int(widths[0]), int(widths[1]), int(widths[2])), stem_width=stem)
