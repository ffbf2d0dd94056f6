"""What every selection strategy sees and returns.

A strategy gets a :class:`SelectionContext` (candidate and labelled pool indices,
an ``embed`` function giving the current model's logits and features, a seeded
generator and, for the strategies that need the network itself, a
:class:`NetworkAccess`) and returns ``budget`` distinct candidates in pick order.
The context holds no label of an unlabelled image, so no strategy can read one:
the only labels in it are those of the labelled set and of the validation split.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import SsalError

__all__ = ["NetworkAccess", "SelectionContext", "Strategy", "ScoreStrategy", "check_request", "normalised_features", "require_network", "top_scores"]


@dataclass
class NetworkAccess:
    """This cycle's trained network, for strategies that need more than logits and
    features: gradients (ISAL, BADGE), MC dropout (BALD), images (VAAL).

    model: the trained :class:`~ssal.models.Classifier` (``backbone`` then the
        linear ``head``). Strategies may switch it between train and eval mode
        but must leave its weights unchanged.
    prepare: uint8 image batch (on ``device``) -> normalised float batch, no
        randomness (the evaluation view).
    pool_images: pool indices -> uint8 images (N, C, H, W); images only.
    labelled_images, labelled_labels: the labelled set L, in ``ctx.labelled`` order.
    reference: images and labels of the validation split (ISAL's reference set),
        or None when the run has none. Never the test split.
    """

    model: nn.Module
    prepare: Callable[[torch.Tensor], torch.Tensor]
    pool_images: Callable[[torch.Tensor], torch.Tensor]
    labelled_images: torch.Tensor
    labelled_labels: torch.Tensor
    reference: tuple[torch.Tensor, torch.Tensor] | None
    num_classes: int
    device: torch.device
    batch_size: int = 512
    amp: bool = False  # autocast in forward passes (the run's train.amp / train.amp_cpu for this device)
    channels_last: bool = True


@dataclass
class SelectionContext:
    """Inputs of one selection round.

    candidates: LongTensor of pool indices that may be picked (unlabelled, maybe a random subset).
    labelled: LongTensor of pool indices already labelled.
    embed: pool indices -> (logits (n, C), features (n, D)) of the un-augmented
        images, from the current model in eval mode.
    generator: seeded CPU generator for any randomness.
    ssl_loss: pool indices -> (n,) per-image self-supervised loss of the current
        model (joint mode only; None otherwise), computed without changing the
        SSL state.
    network: the trained network and the labelled data, given to strategies
        that set ``needs_network`` (network training modes only: supervised,
        joint, pretrain; None in frozen mode and at cold start).
    predicted_loss: pool indices -> (n,) losses predicted by the Learning Loss
        module trained this cycle (None when none was trained).
    ssl_prototypes: pool indices -> one ``(K, prototype id (n,), cosine
        similarity to that prototype (n,))`` per granularity, from the prototypes
        saved by the run's SSL pretraining (PCL's final E-step on its momentum
        encoder, which saw no label); None when the run has none.
    """

    candidates: torch.Tensor
    labelled: torch.Tensor
    embed: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    generator: torch.Generator
    ssl_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    network: NetworkAccess | None = None
    predicted_loss: Callable[[torch.Tensor], torch.Tensor] | None = None
    ssl_prototypes: Callable[[torch.Tensor], list[tuple[int, torch.Tensor, torch.Tensor]]] | None = None


def require_network(ctx: SelectionContext, name: str) -> NetworkAccess:
    """``ctx.network``, or a clear error for a strategy ``name`` that needs it."""
    if ctx.network is None:
        raise SsalError(
            f"strategy {name!r} needs the trained network: use train.mode=supervised, joint or pretrain "
            "(not frozen) and initial_strategy=random"
        )
    return ctx.network


class Strategy(ABC):
    """Picks images to label. Subclasses set ``name`` and implement :meth:`select`.

    A strategy may also ask for something of the cycle's training:
    ``classifier_dropout`` > 0 trains the classifier with dropout before its head
    (MC dropout for BALD); ``loss_prediction`` (a dict of options) trains a
    Learning Loss module alongside it (Yoo & Kweon, CVPR 2019)."""

    name: str
    summary: str = ""  # one line for `ssal list strategies`
    needs_network: bool = False  # reads ctx.network (the trained classifier): not in frozen mode
    needs_ssl_branch: bool = False  # reads ctx.ssl_loss (the joint model's SSL branch): train.mode=joint only
    needs_reference: bool = False  # reads the labelled validation split: val_size > 0
    classifier_dropout: float = 0.0
    loss_prediction: dict | None = None

    @abstractmethod
    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        """LongTensor of ``budget`` distinct pool indices from ``ctx.candidates``, in pick order."""


def check_request(ctx: SelectionContext, budget: int) -> None:
    """Raise SsalError unless ``0 <= budget <= len(candidates)`` and the candidates
    are distinct pool indices, none of them labelled."""
    n = ctx.candidates.numel()
    if not 0 <= budget <= n:
        raise SsalError(f"budget {budget} must lie in [0, {n}] (the number of candidates)")
    if ctx.candidates.ndim != 1 or ctx.candidates.dtype != torch.long:
        raise SsalError(f"candidates must be a 1-D LongTensor, got {ctx.candidates.dtype} {tuple(ctx.candidates.shape)}")
    if ctx.candidates.unique().numel() != n:
        raise SsalError("candidates contain repeated pool indices")
    if bool(torch.isin(ctx.candidates, ctx.labelled).any()):
        raise SsalError("candidates include labelled pool indices")


def normalised_features(ctx: SelectionContext) -> torch.Tensor:
    """L2-normalised features of ``candidates`` then ``labelled`` (one embed call),
    the input of the representation strategies (TypiClust, ProbCover, prototypes)."""
    n = ctx.candidates.numel() + ctx.labelled.numel()
    _, features = ctx.embed(torch.cat([ctx.candidates, ctx.labelled]))
    if features.ndim != 2 or features.shape[0] != n:
        raise SsalError(f"embed returned {features.shape[0]} feature rows for {n} images")
    from ..clustering import l2_normalise

    return l2_normalise(features)


def top_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores, highest first; ties keep the lower position first."""
    return torch.sort(scores, descending=True, stable=True).indices[:k]


class ScoreStrategy(Strategy):
    """Top-``budget`` candidates by an uncertainty score of the softmax output
    (Settles 2009, "Active Learning Literature Survey", sec. 3.1). Subclasses only
    define :meth:`score` (higher = pick first)."""

    @staticmethod
    @abstractmethod
    def score(probs: torch.Tensor) -> torch.Tensor:
        """(n, C) class probabilities -> (n,) scores."""

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        logits, _ = ctx.embed(ctx.candidates)
        if logits.ndim != 2 or logits.shape[0] != ctx.candidates.numel():
            raise SsalError(f"embed returned logits of shape {tuple(logits.shape)} for {ctx.candidates.numel()} candidates")
        probs = torch.softmax(logits.detach().cpu().double(), dim=1)
        if not bool(torch.isfinite(probs).all()):
            raise SsalError("the model produced NaN or infinite logits; cannot score candidates")
        return ctx.candidates[top_scores(self.score(probs), budget)]
