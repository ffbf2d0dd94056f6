"""Max-entropy sampling (Shannon entropy of the softmax; one of MoBYv2AL's variants)."""

from __future__ import annotations

from .base import ScoreStrategy
from .uncertainty import entropy


class EntropyStrategy(ScoreStrategy):
    """Pick the candidates whose predicted class distribution has the highest entropy."""

    name = "entropy"
    summary = "highest entropy of the predicted class distribution"
    score = staticmethod(entropy)
