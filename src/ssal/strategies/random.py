"""Uniform random sampling without replacement (the baseline every paper reports).

MoBYv2AL's released code drew with replacement, so duplicates counted as new
labels (METHODS.md, defect 6); ``randperm`` cannot repeat an index.
"""

from __future__ import annotations

import torch

from .base import SelectionContext, Strategy, check_request


class RandomStrategy(Strategy):
    """``budget`` distinct candidates, uniformly at random from ``ctx.generator``."""

    name = "random"
    summary = "uniformly random candidates (without replacement)"

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        return ctx.candidates[torch.randperm(ctx.candidates.numel(), generator=ctx.generator)[:budget]]
