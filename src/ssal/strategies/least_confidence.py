"""Least-confidence sampling (Lewis & Gale 1994): lowest top-class probability."""

from __future__ import annotations

from .base import ScoreStrategy
from .uncertainty import least_confidence


class LeastConfidenceStrategy(ScoreStrategy):
    """Pick the candidates whose most probable class is least probable."""

    name = "least_confidence"
    summary = "lowest probability of the predicted class"
    score = staticmethod(least_confidence)
