"""Highest self-supervised loss first: the MoBYv2AL ablation "high contrastive
loss" (Caramalau et al., BMVC 2022, Sec. 4.3; METHODS.md sec. 2). The paper
reports that it keeps picking the same animal classes, which is why CoreSet is
MoBYv2AL's default. Needs ``train.mode=joint`` (the SSL branch of this cycle's
model scores the candidates, without touching its queues or momentum encoder)."""

from __future__ import annotations

import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, top_scores


class SSLLossHighStrategy(Strategy):
    name = "ssl_loss_high"
    summary = "highest self-supervised loss (MoBYv2AL ablation; train.mode=joint)"
    needs_ssl_branch = True  # the loop refuses other modes before any work

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if ctx.ssl_loss is None:
            raise SsalError("strategy ssl_loss_high needs a self-supervised branch: use train.mode=joint")
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        scores = ctx.ssl_loss(ctx.candidates).double()
        if scores.shape != ctx.candidates.shape or not bool(torch.isfinite(scores).all()):
            raise SsalError("the SSL branch produced invalid per-image losses; cannot score candidates")
        return ctx.candidates[top_scores(scores, budget)]
