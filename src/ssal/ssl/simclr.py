"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020, Eq. 1): NT-Xent over
the 2B projections of a batch; each view's positive is its twin, the other
2B - 2 are negatives. Temperature 0.5 (their CIFAR-10 setting; METHODS.md sec. 4
allows 0.1-0.5)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import SSLMethod, SSLOutput, multicrop_mean, projection_head


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, reduction: str = "mean") -> Tensor:
    """NT-Xent. Per sample i: the mean of the losses of anchor z1_i and anchor z2_i."""
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    per = F.cross_entropy(sim, target, reduction="none")
    per = (per[:b] + per[b:]) / 2
    return per if reduction == "none" else per.mean()


class SimCLR(SSLMethod):
    name = "simclr"
    supports_multicrop = True

    def __init__(
        self, encoder: nn.Module, feat_dim: int, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.5, head: str = "mlp"
    ) -> None:
        super().__init__(encoder, feat_dim)
        self.temperature = temperature
        self.projector = projection_head(feat_dim, hidden_dim, proj_dim, head)

    def forward(
        self, views: list[Tensor], update: bool = True, index: Tensor | None = None, local_views: Sequence[Tensor] = ()
    ) -> SSLOutput:
        self._check_views(views)
        f1, f2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(f1), self.projector(f2)
        per = nt_xent_loss(z1, z2, self.temperature, "none")
        # each small crop as the twin of either global view, in a batch of its own pair
        zl = [self.projector(self.encoder(v)) for v in local_views]
        t = self.temperature
        per = multicrop_mean(per, [(nt_xent_loss(z, z1, t, "none") + nt_xent_loss(z, z2, t, "none")) / 2 for z in zl])
        return SSLOutput(per.mean(), per.detach(), f1)
