"""BYOL (Grill et al., NeurIPS 2020, Eq. 2): ``2 - 2 cos(p_online(v1), z_target(v2))``
symmetrised over the two views, target = EMA of the online encoder and projector
with the cosine schedule ``tau_k = 1 - (1 - tau_base)(cos(pi k/K) + 1)/2``
(sec. 3.2); tau_base 0.99 for short runs (METHODS.md sec. 3). Projector and
predictor are Linear -> BN -> ReLU -> Linear, scaled down for small backbones.

``symmetric=False`` keeps one direction, ``2 - 2 cos(p1, z2)``: one online and
one target pass per step instead of two each (about half the SSL cost).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import MomentumMixin, SSLMethod, SSLOutput, multicrop_mean, projection_head


def byol_direction(p: Tensor, z: Tensor) -> Tensor:
    """``2 - 2 cos(p, z)`` per sample, target ``z`` detached (BYOL Eq. 2)."""
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)


def byol_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, reduction: str = "mean") -> Tensor:
    """``(2 - 2 cos(p1, z2)) + (2 - 2 cos(p2, z1))`` per sample (targets detached)."""
    per = byol_direction(p1, z2) + byol_direction(p2, z1)
    return per if reduction == "none" else per.mean()


class BYOL(MomentumMixin, SSLMethod):
    name = "byol"
    supports_multicrop = True

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        proj_dim: int = 128,
        hidden_dim: int = 1024,
        momentum: float = 0.99,
        momentum_final: float = 1.0,
        head: str = "mlp",
        symmetric: bool = True,
    ) -> None:
        super().__init__(encoder, feat_dim)
        self.symmetric = symmetric
        self.momentum_base = momentum
        self.momentum_final = momentum_final
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)
        self.predictor = projection_head(proj_dim, hidden_dim, proj_dim, head)
        self._init_target()

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        self._check_views(views)
        if self.symmetric:
            f1, f2 = self.encoder(views[0]), self.encoder(views[1])
            p1 = self.predictor(self.projector(f1))
            p2 = self.predictor(self.projector(f2))
            z1, z2 = self.target_keys(views[0]), self.target_keys(views[1])
            per = byol_loss(p1, p2, z1, z2, "none")
        else:
            f1 = self.encoder(views[0])
            z2 = self.target_keys(views[1])
            per = byol_direction(self.predictor(self.projector(f1)), z2)
        # a small crop's prediction against the global targets: byol_loss(p, p, z1, z2) when symmetric
        pl = [self.predictor(self.projector(self.encoder(v))) for v in local_views]
        local = [byol_loss(p, p, z1, z2, "none") if self.symmetric else byol_direction(p, z2) for p in pl]
        per = multicrop_mean(per, local)
        return SSLOutput(per.mean(), per.detach(), f1)
