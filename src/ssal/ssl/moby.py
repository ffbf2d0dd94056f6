"""MoBY as used by MoBYv2AL (Caramalau, Bhattarai, Stoyanov & Kim, BMVC 2022,
Sec. 3; MoBY: Xie et al., 2021, arXiv 2105.04553): MoCo's key queues and InfoNCE
with BYOL's asymmetric predictor and momentum target (METHODS.md sec. 2).

``L_c = CE([q1.k2, q1.Queue2] / t, 0) + CE([q2.k1, q2.Queue1] / t, 0)``

q = normalised predictor(projector(f_q(view))), k = normalised momentum
projection; one queue of 4096 keys per view, t = 0.2; momentum 0.99 -> 1 on a
cosine ramp over all training steps. The projector and predictor are the
paper's "one layer with BN and ReLU" (then the output Linear); ``head="linear"``
gives the released code's bare Linear 512 -> 128 and 128 -> 128.

``symmetric=False`` keeps one direction, ``CE([q1.k2, q1.Queue2] / t, 0)`` (as
MoCo v2 does): one online pass (view 1) and one momentum pass (view 2) per
step instead of two each, about half the SSL cost; in joint training view 1
is the classifier's weak view, so a labelled step costs one encoder
forward/backward plus one momentum forward. Its loss is one term, half the
symmetric loss's scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
import torch.nn.functional as F

from .base import KeyQueue, MomentumMixin, SSLMethod, SSLOutput, multicrop_mean, projection_head
from .mocov2 import info_nce


def moby_loss(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    queue1: Tensor,
    queue2: Tensor,
    temperature: float = 0.2,
    reduction: str = "mean",
) -> Tensor:
    """MoBYv2AL's symmetric contrastive loss (METHODS.md sec. 2).

    q1, q2: normalised online predictions of views 1 and 2; k1, k2: normalised
    momentum keys; queue1 / queue2: (K, D) past keys of view 1 / view 2. View 1's
    query is contrasted with view 2's key and queue, and vice versa.
    """
    return info_nce(q1, k2, queue2, temperature, reduction) + info_nce(q2, k1, queue1, temperature, reduction)


class MoBY(MomentumMixin, SSLMethod):
    name = "moby"
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
        momentum_final: float = 1.0,
        head: str = "paper",
        symmetric: bool = True,
    ) -> None:
        super().__init__(encoder, feat_dim)
        self.symmetric = symmetric
        self.temperature = temperature
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)
        self.predictor = projection_head(proj_dim, hidden_dim, proj_dim, head)
        self._init_target()
        self.queue1 = KeyQueue(queue_size, proj_dim)
        self.queue2 = KeyQueue(queue_size, proj_dim)

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        self._check_views(views)
        t = self.temperature
        queue1, queue2 = self.queue1.keys.clone(), self.queue2.keys.clone()
        if self.symmetric:
            f1, f2 = self.encoder(views[0]), self.encoder(views[1])
            q1 = F.normalize(self.predictor(self.projector(f1)), dim=1)
            q2 = F.normalize(self.predictor(self.projector(f2)), dim=1)
            k1, k2 = self.target_keys(views[0]), self.target_keys(views[1])
            per = moby_loss(q1, q2, k1, k2, queue1, queue2, t, "none")
        else:
            f1 = self.encoder(views[0])
            q1 = F.normalize(self.predictor(self.projector(f1)), dim=1)
            k2 = self.target_keys(views[1])
            per = info_nce(q1, k2, queue2, t, "none")
        # a small crop's query against the global keys (and their queues); no key of a small crop is queued
        ql = [F.normalize(self.predictor(self.projector(self.encoder(v))), dim=1) for v in local_views]
        if self.symmetric:
            per = multicrop_mean(per, [moby_loss(q, q, k1, k2, queue1, queue2, t, "none") for q in ql])
        else:
            per = multicrop_mean(per, [info_nce(q, k2, queue2, t, "none") for q in ql])
        if update:
            if self.symmetric:
                self.queue1.enqueue(k1)
            self.queue2.enqueue(k2)
        return SSLOutput(per.mean(), per.detach(), f1)
