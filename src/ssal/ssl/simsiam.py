"""SimSiam (Chen & He, CVPR 2021, Eq. 1-2 and Alg. 1): negative cosine between
the predictor output of one view and the stop-gradient projection of the other,
symmetrised, ``L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2``. No momentum encoder. The
projector is 3 layers with BN (2 on CIFAR in the paper's appendix; here the
``bn_mlp`` head), the predictor a bottleneck MLP (out/4 hidden). MoBYv2AL's
multi-stage baseline pretrains SimSiam (METHODS.md sec. 4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .base import SSLMethod, SSLOutput, multicrop_mean, projection_head


def simsiam_loss(p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor, reduction: str = "mean") -> Tensor:
    """``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2`` per sample; in [-1, 1]."""
    per = -(F.cosine_similarity(p1, z2.detach(), dim=1) + F.cosine_similarity(p2, z1.detach(), dim=1)) / 2
    return per if reduction == "none" else per.mean()


class SimSiam(SSLMethod):
    name = "simsiam"
    supports_multicrop = True

    def __init__(self, encoder: nn.Module, feat_dim: int, proj_dim: int = 512, hidden_dim: int = 512, head: str = "bn_mlp") -> None:
        super().__init__(encoder, feat_dim)
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)
        self.predictor = projection_head(proj_dim, max(proj_dim // 4, 1), proj_dim, "mlp")

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        self._check_views(views)
        f1, f2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        per = simsiam_loss(self.predictor(z1), self.predictor(z2), z1, z2, "none")
        local = [simsiam_loss(p, p, z1, z2, "none") for p in (self.predictor(self.projector(self.encoder(v))) for v in local_views)]
        per = multicrop_mean(per, local)
        return SSLOutput(per.mean(), per.detach(), f1)
