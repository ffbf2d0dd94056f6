"""VICReg (Bardes, Ponce & LeCun, ICLR 2022, Eq. 1-6): invariance (MSE between the
two embeddings) + variance (hinge on the per-dimension std, target 1) +
covariance (squared off-diagonal covariance / d), coefficients 25 / 25 / 1.
Not in the MoBYv2AL seeds; offered because covariance-style losses learn fastest
in the first epochs (CPU_SSL.md: 40.6% linear after 1 epoch vs BYOL's 24.9%).
The paper trains with LARS; with ssal's plain SGD, ``ssl.lr=0.12`` (the shared
default) diverged within the first warm-up epoch on CIFAR-10 and ``ssl.lr=0.03``
trained well (BENCHMARKS.md, kNN at equal CPU time)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SSLMethod, SSLOutput, multicrop_mean, projection_head


def _variance(z: Tensor, eps: float = 1e-4) -> Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance(z: Tensor) -> Tensor:
    n, d = z.shape
    z = z - z.mean(0)
    cov = (z.t() @ z) / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


def vicreg_loss(
    z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """VICReg loss. ``reduction="none"`` returns the per-sample invariance term
    ``sim_coeff * mean_d (z1 - z2)^2`` (the batch-level variance and covariance
    terms have no per-sample share)."""
    inv = F.mse_loss(z1, z2, reduction="none").mean(1)
    if reduction == "none":
        return sim_coeff * inv
    return sim_coeff * inv.mean() + std_coeff * (_variance(z1) + _variance(z2)) + cov_coeff * (_covariance(z1) + _covariance(z2))


class VICReg(SSLMethod):
    name = "vicreg"
    supports_multicrop = True

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        proj_dim: int = 1024,
        hidden_dim: int = 1024,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        head: str = "bn_mlp",
    ) -> None:
        super().__init__(encoder, feat_dim)
        self.coeffs = (sim_coeff, std_coeff, cov_coeff)
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        self._check_views(views)
        f1, f2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        zl = [self.projector(self.encoder(v)) for v in local_views]
        c = self.coeffs
        # each small crop against both global embeddings, the mean of the two pair losses
        loss = multicrop_mean(vicreg_loss(z1, z2, *c), [(vicreg_loss(z, z1, *c) + vicreg_loss(z, z2, *c)) / 2 for z in zl])
        per = multicrop_mean(
            vicreg_loss(z1, z2, *c, reduction="none"),
            [(vicreg_loss(z, z1, *c, reduction="none") + vicreg_loss(z, z2, *c, reduction="none")) / 2 for z in zl],
        )
        return SSLOutput(loss, per.detach(), f1)
