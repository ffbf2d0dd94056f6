"""Backbones and the classifier wrapper, picked by name from :data:`MODELS`.

Adding a backbone is one builder function ``(in_channels=..., **kwargs) -> nn.Module``
whose module has an integer ``feat_dim`` and maps (B, C, H, W) to (B, feat_dim),
plus one line in :data:`MODELS`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import SsalError
from .base import Classifier
from .resnet import resnet18
from .smallcnn import smallcnn
from .vgg import vgg16

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "vgg16": vgg16,
    "smallcnn": smallcnn,
}


def build_backbone(name: str, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Backbone ``name`` from :data:`MODELS` (image -> ``feat_dim`` features).

    ``kwargs`` go to the backbone builder (e.g. ``width`` for ``smallcnn``).
    Raises :class:`~ssal.errors.SsalError` for an unknown name or option.
    """
    if name not in MODELS:
        raise SsalError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))}")
    if in_channels not in (1, 3):
        raise SsalError(f"in_channels must be 1 or 3, got {in_channels}")
    builder = MODELS[name]
    accepted = set(inspect.signature(builder).parameters) - {"in_channels"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise SsalError(
            f"model {name!r} has no option {unknown[0]!r}; it takes: {', '.join(sorted(accepted)) or 'none'}"
        )
    return builder(in_channels=in_channels, **kwargs)


def build_model(name: str, num_classes: int, in_channels: int = 3, dropout: float = 0.0, **kwargs: Any) -> Classifier:
    """Backbone ``name`` (:func:`build_backbone`) with a linear ``num_classes`` head
    (``dropout`` before it, for MC-dropout strategies)."""
    if num_classes < 2:
        raise SsalError(f"num_classes must be at least 2, got {num_classes}")
    backbone = build_backbone(name, in_channels, **kwargs)
    return Classifier(backbone, int(getattr(backbone, "feat_dim")), num_classes, dropout)


__all__ = ["MODELS", "Classifier", "build_backbone", "build_model"]
