"""MoCo v2 (Chen, Fan, Girshick & He, 2020, arXiv 2003.04297; MoCo: He et al.,
CVPR 2020, Eq. 1): InfoNCE of a query against its momentum key and a queue of
past keys, temperature 0.2, momentum 0.99 -> 0.999 (METHODS.md sec. 4).

The loss is symmetrised over the two views (both views serve as query once, as
MoBY and MoCo v3 do); both views' keys enter the queue. ``symmetric=False`` is
MoCo v2's own one-direction form, ``InfoNCE(q1, k2, queue)`` with only k2
queued: one online and one momentum pass per step instead of two each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import KeyQueue, MomentumMixin, SSLMethod, SSLOutput, multicrop_mean, projection_head


def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2, reduction: str = "mean") -> Tensor:
    """``CE([q.k, q.queue^T] / t, 0)`` per row (MoCo Eq. 1).

    q, k: (B, D) L2-normalised query and positive key; queue: (K, D) negatives.
    reduction ``"none"`` gives the (B,) per-sample losses.
    """
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], 1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target, reduction=reduction)


class MoCoV2(MomentumMixin, SSLMethod):
    name = "mocov2"
    supports_multicrop = True

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        proj_dim: int = 128,
        hidden_dim: int = 512,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
        momentum_final: float = 0.999,
        head: str = "mlp",
        symmetric: bool = True,
    ) -> None:
        super().__init__(encoder, feat_dim)
        self.symmetric = symmetric
        self.temperature = temperature
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)
        self._init_target()
        self.queue = KeyQueue(queue_size, proj_dim)

    def _contrast(self, views: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Online features of view 1, both normalised queries and momentum keys, and
        the symmetric per-sample InfoNCE against a snapshot of the queue."""
        self._check_views(views)
        f1, f2 = self.encoder(views[0]), self.encoder(views[1])
        q1 = F.normalize(self.projector(f1), dim=1)
        q2 = F.normalize(self.projector(f2), dim=1)
        k1, k2 = self.target_keys(views[0]), self.target_keys(views[1])
        queue = self.queue.keys.clone().detach()
        per = info_nce(q1, k2, queue, self.temperature, "none") + info_nce(q2, k1, queue, self.temperature, "none")
        return f1, q1, q2, k1, k2, per

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        if not self.symmetric:
            return self._forward_one_direction(views, update, local_views)
        f1, _, _, k1, k2, per = self._contrast(views)
        if local_views:  # each small crop's query against both global keys; its key is not queued
            queue = self.queue.keys.clone().detach()
            t = self.temperature
            ql = [F.normalize(self.projector(self.encoder(v)), dim=1) for v in local_views]
            per = multicrop_mean(per, [info_nce(q, k2, queue, t, "none") + info_nce(q, k1, queue, t, "none") for q in ql])
        if update:
            self.queue.enqueue(torch.cat([k1, k2]))
        return SSLOutput(per.mean(), per.detach(), f1)

    def _forward_one_direction(self, views: list[Tensor], update: bool, local_views: Sequence[Tensor]) -> SSLOutput:
        """MoCo v2's form: view 1 (and each small crop) queries view 2's key."""
        self._check_views(views)
        f1 = self.encoder(views[0])
        q1 = F.normalize(self.projector(f1), dim=1)
        k2 = self.target_keys(views[1])
        queue = self.queue.keys.clone().detach()
        ql = [F.normalize(self.projector(self.encoder(v)), dim=1) for v in local_views]
        per = multicrop_mean(info_nce(q1, k2, queue, self.temperature, "none"), [info_nce(q, k2, queue, self.temperature, "none") for q in ql])
        if update:
            self.queue.enqueue(k2)
        return SSLOutput(per.mean(), per.detach(), f1)
