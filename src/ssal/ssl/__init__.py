"""Self-supervised methods, picked by name from :data:`SSL_METHODS`.

One file per method, each with a pure loss function (paper defaults as keyword
arguments) and an :class:`~ssal.ssl.base.SSLMethod` module. Adding one is one
file plus one line here.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import SsalError
from ..utils import check_option_types
from .base import SSLMethod, SSLOutput, cosine_momentum
from .byol import BYOL
from .moby import MoBY
from .mocov2 import MoCoV2
from .pcl import PCL
from .rotation import Rotation
from .simclr import SimCLR
from .simsiam import SimSiam
from .vicreg import VICReg

SSL_METHODS: dict[str, type[SSLMethod]] = {
    "moby": MoBY,
    "byol": BYOL,
    "mocov2": MoCoV2,
    "pcl": PCL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "vicreg": VICReg,
    "rotation": Rotation,
}


def method_options(name: str) -> list[str]:
    """The keyword options method ``name`` accepts."""
    return sorted(set(inspect.signature(SSL_METHODS[name]).parameters) - {"encoder", "feat_dim"})


def build_ssl(name: str, encoder: nn.Module, feat_dim: int, **options: Any) -> SSLMethod:
    """The SSL method ``name`` around the online ``encoder``; unknown names or
    options raise :class:`~ssal.errors.SsalError` naming them."""
    if name not in SSL_METHODS:
        raise SsalError(f"unknown ssl.method {name!r}; choose one of: {', '.join(SSL_METHODS)}")
    unknown = sorted(set(options) - set(method_options(name)))
    if unknown:
        raise SsalError(f"ssl method {name!r} has no option {unknown[0]!r}; it takes: {', '.join(method_options(name))}")
    check_option_types(SSL_METHODS[name], options, "ssl.options")
    try:
        return SSL_METHODS[name](encoder, feat_dim, **options)
    except (ValueError, TypeError) as err:
        raise SsalError(f"bad ssl.options for {name!r}: {err}") from None


__all__ = ["SSL_METHODS", "SSLMethod", "SSLOutput", "build_ssl", "cosine_momentum", "method_options"]
