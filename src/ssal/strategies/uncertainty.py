"""Uncertainty scores of class probabilities (Settles 2009, "Active Learning
Literature Survey", sec. 3.1). Pure functions: (n, C) probabilities -> (n,)
scores, higher = more uncertain."""

from __future__ import annotations

import torch

from ..errors import SsalError

__all__ = ["entropy", "margin", "least_confidence"]


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy ``-sum_c p_c log p_c`` (natural log), with ``0 log 0 = 0``."""
    return torch.special.entr(probs).sum(dim=1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """Negated gap between the two most probable classes, ``-(p_top1 - p_top2)``
    (Scheffer et al. 2001): 0 for a tie, -1 for a certain prediction."""
    if probs.shape[1] < 2:
        raise SsalError(f"margin needs at least 2 classes, got {probs.shape[1]}")
    top2 = torch.topk(probs, 2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """``1 - max_c p_c`` (Lewis & Gale 1994)."""
    return 1 - probs.max(dim=1).values
