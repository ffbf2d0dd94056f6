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


def _regulariser(z: Tensor, std_coeff: float, cov_coeff: float) -> Tensor:
    """The variance and covariance terms of one embedding (VICReg Eq. 2-4)."""
    return std_coeff * _variance(z) + cov_coeff * _covariance(z)


def vicreg_loss(
    z1: Tensor, z2: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0, reduction: str = "mean"
) -> Tensor:
    """VICReg loss. ``reduction="none"`` returns the per-sample invariance term
    ``sim_coeff * mean_d (z1 - z2)^2`` (the batch-level variance and covariance
    terms have no per-sample share)."""
    inv = sim_coeff * F.mse_loss(z1, z2, reduction="none").mean(1)
    if reduction == "none":
        return inv
    return inv.mean() + _regulariser(z1, std_coeff, cov_coeff) + _regulariser(z2, std_coeff, cov_coeff)


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
        sim, std, cov = self.coeffs
        embs = [z1, z2, *(self.projector(self.encoder(v)) for v in local_views)]
        reg = [_regulariser(z, std, cov) for z in embs]  # once per embedding, however many pairs use it

        def pair(i: int, j: int) -> tuple[Tensor, Tensor]:  # vicreg_loss(embs[i], embs[j]): per-sample and batch loss
            per = vicreg_loss(embs[i], embs[j], sim, reduction="none")
            return per, per.mean() + reg[i] + reg[j]

        per, loss = pair(0, 1)
        # each small crop against both global embeddings, the mean of the two pair losses
        local = [(pair(k, 0), pair(k, 1)) for k in range(2, len(embs))]
        per = multicrop_mean(per, [(a[0] + b[0]) / 2 for a, b in local])
        loss = multicrop_mean(loss, [(a[1] + b[1]) / 2 for a, b in local])
        return SSLOutput(loss, per.detach(), f1)
