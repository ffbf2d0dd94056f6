"""ssal: self-supervised active learning for image classification."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["kcenter_greedy", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `ssal --help` does not pay for importing torch.
    if name == "kcenter_greedy":
        from .strategies.kcenter import kcenter_greedy

        return kcenter_greedy
    raise AttributeError(f"module 'ssal' has no attribute {name!r}")
