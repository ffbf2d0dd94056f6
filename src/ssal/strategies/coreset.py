"""CoreSet selection (Sener & Savarese, ICLR 2018, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach", sec. 4.2 / Alg. 1): k-center
greedy on the model's features, the labelled images being the initial centres.
MoBYv2AL selects this way on the online encoder's features (METHODS.md sec. 2)."""

from __future__ import annotations

import torch

from .base import SelectionContext, Strategy, check_request
from .kcenter import kcenter_greedy


class CoresetStrategy(Strategy):
    """Repeatedly pick the candidate farthest (Euclidean) from its nearest labelled
    or already picked image. With nothing labelled, the first pick is a uniform
    random candidate, as in the paper's code."""

    name = "coreset"
    summary = "k-center greedy on the features (CoreSet; MoBYv2AL's default)"

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        n = ctx.candidates.numel()
        _, features = ctx.embed(torch.cat([ctx.candidates, ctx.labelled]))
        if ctx.labelled.numel():
            picks = kcenter_greedy(features, torch.arange(n, n + ctx.labelled.numel()), budget)
        else:
            first = torch.randint(n, (1,), generator=ctx.generator)
            picks = torch.cat([first, kcenter_greedy(features, first, budget - 1)])
        return ctx.candidates[picks]
