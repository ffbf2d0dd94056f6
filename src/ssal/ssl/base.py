"""What every self-supervised method shares: heads, the momentum (EMA) target,
the key queue, and the :class:`SSLMethod` interface the trainer drives.

The interface, in one place:

- ``method(views, update=True)`` takes a list of normalised float batches (the
  views of one batch of images, ``views[0]`` first) and returns an
  :class:`SSLOutput`: the scalar loss, the per-sample loss, and the online
  encoder's features of ``views[0]`` (so MoBYv2AL's classifier can read them
  without a second forward pass). With ``update=True`` (training) the method may
  change its own state - enqueue keys - and nothing else; with ``update=False``
  it changes nothing, which scoring and evaluation rely on.
  ``index`` (optional) gives the images' positions in the training set, for
  methods that keep per-image state (PCL's cluster assignments).
- ``method.after_step(step, total_steps)`` runs after each optimizer step and
  updates the momentum target (EMA) on the schedule of the method.
- Methods with ``supports_multicrop`` also take ``local_views=[...]``: small
  crops whose online outputs are scored against the two global views' targets
  (multi-crop pretraining, ``ssl.multicrop``); no crop is ever a target or
  enters a queue.

No method ever receives a label: SSL code is label-free by construction.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SSLOutput",
    "SSLMethod",
    "MomentumMixin",
    "KeyQueue",
    "cosine_momentum",
    "projection_head",
    "ema_update",
    "multicrop_mean",
]


@dataclass
class SSLOutput:
    """loss: scalar to minimise; per_sample: (B,) loss of each image (the
    MoBYv2AL "contrastive loss" used by ``ssl_loss_high`` and the low-loss filter);
    features: (B, feat_dim) online encoder features of ``views[0]``, or None when
    the method never encodes ``views[0]`` as given (rotation)."""

    loss: Tensor
    per_sample: Tensor
    features: Tensor | None


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """EMA coefficient at ``step``: ``m_k = final - (final - base) (cos(pi k / K) + 1) / 2``.

    BYOL (Grill et al., 2020, Sec. 3.2) with ``final = 1``; MoBYv2AL ramps 0.99 -> 1
    the same way (METHODS.md sec. 2). ``m_0 = base``, ``m_K = final``.
    """
    if total_steps <= 0:
        return base
    k = min(max(step, 0), total_steps)
    return final - (final - base) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, kind: str = "mlp") -> nn.Module:
    """A projector or predictor.

    kind ``"mlp"``: Linear -> BN -> ReLU -> Linear (BYOL, SimSiam, MoCo v2, SimCLR;
    BYOL sec. 3.3). ``"paper"``: MoBYv2AL's "one layer with BN and ReLU" followed by
    the output Linear, i.e. the same shape. ``"linear"``: one bare Linear, as in the
    released MoBYv2AL code (512 -> 128). ``"bn_mlp"``: SimSiam/VICReg-style
    Linear-BN-ReLU-Linear-BN-ReLU-Linear.
    """
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind in ("mlp", "paper"):
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)
        )
    if kind == "bn_mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
    raise ValueError(f"unknown head kind {kind!r}; choose mlp, paper, linear or bn_mlp")


def multicrop_mean(global_term: Tensor, local_terms: list[Tensor]) -> Tensor:
    """Multi-crop (SwAV, Caron et al., NeurIPS 2020, sec. 3.2; EMP-SSL, Tong et al.
    2023): the loss averaged over view pairs. ``global_term`` is the usual
    two-view loss; each local term is one small crop's prediction scored against
    the targets of both global views, on the same scale. With no local crop this
    is ``global_term`` exactly."""
    if not local_terms:
        return global_term
    return torch.stack([global_term, *local_terms]).mean(0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, m: float) -> None:
    """``target <- m * target + (1 - m) * online`` for parameters; buffers (BN running
    statistics) are copied from the online module."""
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params):
        raise ValueError("target and online modules have different parameters")
    if t_params:
        torch._foreach_mul_(t_params, m)
        torch._foreach_add_(t_params, o_params, alpha=1.0 - m)
    for tb, ob in zip(target.buffers(), online.buffers()):
        tb.copy_(ob)


class KeyQueue(nn.Module):
    """First-in first-out queue of L2-normalised keys (MoCo, He et al., CVPR 2020,
    sec. 3.2). Starts as random unit vectors; :meth:`enqueue` overwrites the oldest
    keys. Saved with the module's state (it is a buffer)."""

    def __init__(self, size: int, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be positive, got {size}, {dim}")
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return int(self.keys.shape[0])

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write ``keys`` (B, dim) over the oldest entries (wrapping around)."""
        keys = keys.detach().to(self.keys.dtype)
        b = keys.shape[0]
        if b > self.size:
            keys, b = keys[-self.size :], self.size
        idx = (self.ptr + torch.arange(b, device=self.keys.device)) % self.size
        self.keys[idx] = keys
        self.ptr.fill_(int((self.ptr + b) % self.size))

    def ordered(self) -> Tensor:
        """Keys from oldest to newest (for tests and inspection)."""
        return torch.roll(self.keys, -int(self.ptr), dims=0)


class SSLMethod(nn.Module, ABC):
    """Base of every self-supervised method. Subclasses set ``name`` and
    ``num_views`` and implement :meth:`forward`.

    ``encoder`` is the online backbone (image -> (B, feat_dim)); in MoBYv2AL's
    joint mode it is the classifier's own backbone, shared, so the task loss and
    the SSL loss train one encoder.
    """

    name: str = ""
    num_views: int = 2
    #: forward takes ``local_views``: small extra crops matched against the two
    #: global views only (multi-crop, :func:`multicrop_mean`)
    supports_multicrop: bool = False

    def __init__(self, encoder: nn.Module, feat_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.feat_dim = int(feat_dim)

    @abstractmethod
    def forward(self, views: list[Tensor], update: bool = True, index: Tensor | None = None) -> SSLOutput:
        """The loss of one batch of views (see the module docstring)."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step ``step`` (0-based) of ``total_steps``."""

    def epoch_start(self, epoch: int, batches: Callable[[], Iterable[Tensor]]) -> None:
        """Called before each epoch. ``batches()`` yields the normalised,
        un-augmented training images in index order (the ``index`` passed to
        :meth:`forward` refers to this order); PCL's E-step clusters them."""

    def final_prototypes(self, batches: Callable[[], Iterable[Tensor]]) -> list[dict[str, Tensor]] | None:
        """Prototypes of the trained model for prototype selection, saved with an
        SSL pretraining (PCL: see :meth:`ssal.ssl.pcl.PCL.final_prototypes`);
        None for methods that learn none."""
        return None

    def check_images(self, n: int) -> None:
        """Called once before training on ``n`` images per epoch; raises a
        one-line :class:`SsalError` if the per-epoch step cannot handle them
        (PCL: fewer images than clusters), so a run fails before its first step."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates (never the momentum target's)."""
        return [p for p in self.parameters() if p.requires_grad]

    def _check_views(self, views: list[Tensor]) -> None:
        if len(views) < self.num_views:
            raise ValueError(f"{self.name} needs {self.num_views} views, got {len(views)}")


class MomentumMixin:
    """A momentum (EMA) copy of the online encoder and projector, never trained by
    gradients (MoCo / BYOL / MoBY). Call :meth:`_init_target` after the online
    projector exists; :meth:`after_step` follows :func:`cosine_momentum`."""

    momentum_base: float
    momentum_final: float

    def _init_target(self) -> None:
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in list(self.target_encoder.parameters()) + list(self.target_projector.parameters()):
            p.requires_grad_(False)

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(step, total_steps, self.momentum_base, self.momentum_final)

    def after_step(self, step: int, total_steps: int) -> None:
        m = self.momentum_at(step, total_steps)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)

    @torch.no_grad()
    def target_keys(self, x: Tensor) -> Tensor:
        """L2-normalised momentum projections of ``x``."""
        return F.normalize(self.target_projector(self.target_encoder(x)), dim=1)
