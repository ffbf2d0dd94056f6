"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018): a 4-way
classifier on the encoder's features predicts which of 0/90/180/270 degrees an
image was rotated by. Single view and cheap; the self-supervised task of earlier
hybrid AL work (METHODS.md sec. 4).

Training rotates image i of a batch by ``(i + offset) mod 4`` quarter turns (the
batches are shuffled, so every image sees every rotation across epochs at a
quarter of the cost of all four); scoring (``update=False``) averages the loss
over all four rotations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SSLMethod, SSLOutput


def rotate_batch(x: Tensor, quarter_turns: Tensor) -> Tensor:
    """Rotate each image ``x[i]`` by ``quarter_turns[i]`` x 90 degrees
    counter-clockwise (``torch.rot90`` on the last two dims). Needs square images."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(x.shape[-2:])}")
    out = x.clone()
    for k in range(1, 4):
        m = quarter_turns == k
        if bool(m.any()):
            out[m] = torch.rot90(x[m], k, dims=(-2, -1))
    return out


def rotation_loss(logits: Tensor, quarter_turns: Tensor, reduction: str = "mean") -> Tensor:
    """4-way cross-entropy of the predicted rotation."""
    return F.cross_entropy(logits, quarter_turns, reduction=reduction)


class Rotation(SSLMethod):
    name = "rotation"
    num_views = 1

    def __init__(self, encoder: nn.Module, feat_dim: int) -> None:
        super().__init__(encoder, feat_dim)
        self.rot_head = nn.Linear(feat_dim, 4)
        self.register_buffer("offset", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[Tensor], update: bool = True, index: Tensor | None = None) -> SSLOutput:
        self._check_views(views)
        x = views[0]
        b = x.shape[0]
        if not update:
            turns = torch.arange(4, device=x.device).repeat_interleave(b)
            logits = self.rot_head(self.encoder(rotate_batch(x.repeat(4, 1, 1, 1), turns)))
            per = rotation_loss(logits, turns, "none").view(4, b).mean(0)
            return SSLOutput(per.mean(), per.detach(), None)
        turns = (torch.arange(b, device=x.device) + self.offset) % 4
        per = rotation_loss(self.rot_head(self.encoder(rotate_batch(x, turns))), turns, "none")
        self.offset.add_(1).remainder_(4)
        return SSLOutput(per.mean(), per.detach(), None)
