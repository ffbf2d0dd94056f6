"""BALD with MC dropout (Houlsby, Huszar, Ghahramani & Lengyel 2011, "Bayesian
Active Learning for Classification and Preference Learning"; Gal, Islam &
Ghahramani, ICML 2017, "Deep Bayesian Active Learning with Image Data", sec. 3,
the BALD acquisition function):

    I[y; w | x] ~= H[(1/T) sum_t p_t] - (1/T) sum_t H[p_t],

the mutual information between the prediction and the weights, estimated from T
stochastic forward passes ``p_t`` with dropout on (MC dropout, Gal &
Ghahramani, ICML 2016). Highest first.

The strategy sets ``classifier_dropout`` so the loop trains the classifier with
dropout (rate ``dropout``) between the backbone features and the linear head.
At selection time the backbone runs once per batch in eval mode (BatchNorm with
its running statistics, no statistic updated) and only that dropout is sampled,
T times, on the features before the head: exactly MC dropout for the network's
only dropout layer, at the cost of one backbone pass. The masks are drawn from a
generator seeded from ``ctx.generator`` (on the model's device), never from the
global RNG: a seed gives the same scores on a given device. A mask zeroes each
feature with probability ``p`` and scales the others by ``1 / (1 - p)``, as
``nn.Dropout`` does in train mode, with ``p`` the rate the model was trained
with. The model's weights and train/eval flags are left as they were found.
"""

from __future__ import annotations

import torch
from torch import nn

from ..clustering import draw_seed
from ..errors import SsalError
from .base import NetworkAccess, SelectionContext, Strategy, check_request, require_network, top_scores

__all__ = ["BaldStrategy", "bald_scores", "mc_dropout_probs"]


def bald_scores(probs: torch.Tensor) -> torch.Tensor:
    """(n,) BALD mutual information ``H[mean_t p_t] - mean_t H[p_t]`` (Gal et al.
    2017, sec. 3; natural log, ``0 log 0 = 0``) of (T, n, C) class probabilities
    from T stochastic passes. Non-negative (Jensen); rounding below 0 is clamped,
    so T identical passes give 0 up to rounding."""
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise SsalError(f"bald needs (T, n, C) probabilities with T >= 1, got shape {tuple(probs.shape)}")
    mean_entropy = torch.special.entr(probs).sum(2).mean(0)
    entropy_of_mean = torch.special.entr(probs.mean(0)).sum(1)
    return (entropy_of_mean - mean_entropy).clamp_(min=0.0)


@torch.no_grad()
def mc_dropout_probs(
    features: torch.Tensor, head: nn.Module, p: float, passes: int, generator: torch.Generator, batch_size: int = 512
) -> torch.Tensor:
    """(passes, n, C) float64 softmax outputs of ``head`` on ``features`` (the
    eval-mode backbone's, computed once) under ``passes`` dropout masks of rate
    ``p`` with the 1/(1-p) scaling of ``nn.Dropout``, drawn from ``generator``
    (which must live on the head's device). MC dropout on the head input is
    exactly MC dropout of a classifier whose only dropout sits there."""
    device = next(head.parameters()).device
    out = []
    for h in features.split(batch_size):
        h = h.to(device).float()
        keep = torch.rand((passes, *h.shape), generator=generator, device=device) >= p
        out.append(torch.softmax(head(h.unsqueeze(0) * keep / (1.0 - p)).double(), dim=2).cpu())
    if not out:
        return torch.empty(passes, 0, int(head.out_features), dtype=torch.float64)
    return torch.cat(out, dim=1)


class BaldStrategy(Strategy):
    """Top-``budget`` candidates by BALD over ``passes`` MC-dropout passes; trains
    the classifier with dropout ``dropout`` before its head (see the module docstring)."""

    name = "bald"
    summary = "highest mutual information over MC-dropout passes"
    needs_network = True  # the loop refuses train.mode=frozen before any work

    def __init__(self, passes: int = 20, dropout: float = 0.3) -> None:
        if int(passes) != passes or passes < 2:
            raise SsalError(f"bald needs an integer passes >= 2, got {passes}")
        if not 0.0 < float(dropout) < 1.0:
            raise SsalError(f"bald needs dropout in (0, 1), got {dropout}")
        self.passes = int(passes)
        self.classifier_dropout = float(dropout)

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        net = require_network(ctx, self.name)
        drop = getattr(net.model, "dropout", None)
        if not isinstance(drop, nn.Dropout) or not 0.0 < drop.p < 1.0:
            raise SsalError("bald needs a classifier trained with dropout before its head (strategy_options.dropout in (0, 1))")
        _, features = ctx.embed(ctx.candidates)  # eval mode, un-augmented, like every other strategy's
        gen = torch.Generator(device=torch.device(net.device)).manual_seed(draw_seed(ctx.generator))
        probs = mc_dropout_probs(features, net.model.head, float(drop.p), self.passes, gen, net.batch_size)
        if not bool(torch.isfinite(probs).all()):
            raise SsalError("the model produced NaN or infinite logits; cannot score candidates")
        return ctx.candidates[top_scores(bald_scores(probs), budget)]
