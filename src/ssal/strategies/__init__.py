"""Selection strategies, picked by name from :data:`STRATEGIES`.

Adding one is one file with a :class:`Strategy` subclass plus one line here.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import SsalError
from ..utils import check_option_types
from .base import ScoreStrategy, SelectionContext, Strategy
from .badge import BadgeStrategy
from .bald import BaldStrategy
from .coreset import CoresetStrategy
from .entropy import EntropyStrategy
from .kcenter import kcenter_greedy
from .isal import ISALStrategy
from .learning_loss import LearningLossStrategy
from .least_confidence import LeastConfidenceStrategy
from .margin import MarginStrategy
from .probcover import ProbCoverStrategy
from .prototypes import PrototypeStrategy
from .random import RandomStrategy
from .typiclust import TypiClustStrategy
from .vaal import VaalStrategy
from .ssl_loss_high import SSLLossHighStrategy

__all__ = ["STRATEGIES", "describe", "strategy_options", "SelectionContext", "Strategy", "ScoreStrategy", "build_strategy", "kcenter_greedy"]

STRATEGIES: dict[str, type[Strategy]] = {
    "random": RandomStrategy,
    "entropy": EntropyStrategy,
    "margin": MarginStrategy,
    "least_confidence": LeastConfidenceStrategy,
    "coreset": CoresetStrategy,
    "typiclust": TypiClustStrategy,
    "probcover": ProbCoverStrategy,
    "prototypes": PrototypeStrategy,
    "ssl_loss_high": SSLLossHighStrategy,
    "learning_loss": LearningLossStrategy,
    "isal": ISALStrategy,
    "badge": BadgeStrategy,
    "bald": BaldStrategy,
    "vaal": VaalStrategy,
}


def strategy_options(name: str) -> dict[str, Any]:
    """The options of strategy ``name`` (``strategy_options.*``) with their defaults."""
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def describe(name: str) -> str:
    """One line about strategy ``name``: its summary and its options with defaults."""
    opts = ", ".join(f"{k}={v}" for k, v in strategy_options(name).items() if k != "progress")
    return STRATEGIES[name].summary + (f"  [{opts}]" if opts else "")


def build_strategy(name: str, _key: str = "strategy_options", **kwargs: Any) -> Strategy:
    """The strategy registered as ``name``; unknown names and options raise
    SsalError (naming the options as ``_key``, the config key they came from)."""
    if name not in STRATEGIES:
        raise SsalError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    known = strategy_options(name)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        takes = ", ".join(known) or "none"
        raise SsalError(f"bad options for strategy {name!r}: no option {unknown[0]!r} ({_key}.{unknown[0]}); it takes: {takes}")
    check_option_types(STRATEGIES[name], kwargs, _key)
    try:
        return STRATEGIES[name](**kwargs)
    except TypeError as err:
        raise SsalError(f"bad options for strategy {name!r}: {err}") from None
