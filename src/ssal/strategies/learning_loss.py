"""Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019; METHODS.md sec. 7).

A loss-prediction module (:class:`ssal.lossnet.LossPredictionModule`) trains with
the classifier each cycle on the backbone's stage features, with the margin
ranking loss of the paper's Eq. 2-3 (margin 1.0, weight 1.0), its inputs detached
from the backbone after 60% of the training (epoch 120 of 200 in the paper).
Selection takes the candidates with the highest predicted loss (Sec. 3.1).
Needs ``train.mode=supervised`` or ``pretrain``.

Options (``strategy_options.<name>=...``): ``margin`` (xi of Eq. 2), ``weight``
(lambda of Eq. 1: total loss = CE + weight * L_loss), ``detach_fraction`` (the
share of the cycle's optimizer steps after which the module's inputs are detached).
"""

from __future__ import annotations

import math

import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, top_scores


class LearningLossStrategy(Strategy):
    """Top-``budget`` candidates by the loss the cycle's Learning Loss module predicts."""

    name = "learning_loss"
    summary = "highest loss predicted by a Learning Loss module trained with the classifier"

    def __init__(self, margin: float = 1.0, weight: float = 1.0, detach_fraction: float = 0.6) -> None:
        try:
            margin, weight, detach_fraction = float(margin), float(weight), float(detach_fraction)
        except (TypeError, ValueError):
            raise SsalError(
                f"strategy learning_loss: margin, weight and detach_fraction must be numbers, got {margin!r}, {weight!r}, {detach_fraction!r}"
            ) from None
        if not (math.isfinite(margin) and margin >= 0):
            raise SsalError(f"strategy learning_loss: margin must be a finite number >= 0, got {margin}")
        if not (math.isfinite(weight) and weight > 0):
            raise SsalError(f"strategy learning_loss: weight must be a finite number > 0, got {weight}")
        if not 0.0 <= detach_fraction <= 1.0:
            raise SsalError(f"strategy learning_loss: detach_fraction must lie in [0, 1], got {detach_fraction}")
        self.loss_prediction = {"margin": margin, "weight": weight, "detach_fraction": detach_fraction}

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if ctx.predicted_loss is None:
            raise SsalError(
                "strategy learning_loss needs the loss-prediction module trained with the classifier: "
                "use train.mode=supervised or pretrain (not joint or frozen)"
            )
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        scores = ctx.predicted_loss(ctx.candidates).double()
        if scores.shape != ctx.candidates.shape or not bool(torch.isfinite(scores).all()):
            raise SsalError("the loss-prediction module produced invalid predicted losses; cannot score candidates")
        return ctx.candidates[top_scores(scores, budget)]
