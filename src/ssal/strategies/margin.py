"""Margin sampling (Scheffer et al. 2001): smallest gap between the top two classes."""

from __future__ import annotations

from .base import ScoreStrategy
from .uncertainty import margin


class MarginStrategy(ScoreStrategy):
    """Pick the candidates whose two most probable classes are closest."""

    name = "margin"
    summary = "smallest gap between the two most probable classes"
    score = staticmethod(margin)
