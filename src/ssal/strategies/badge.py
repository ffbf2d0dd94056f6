"""BADGE (Ash, Zhang, Krishnamurthy, Langford & Agarwal, ICLR 2020, "Deep Batch
Active Learning by Diverse, Uncertain Gradient Lower Bounds", Alg. 1).

1. Gradient embedding (paper sec. 3): for a candidate with penultimate features
   ``h`` (the input of the last linear layer) and class probabilities ``p``,
   take the hypothetical label ``yhat = argmax p`` and
   ``g = d CE(W h + b, yhat) / d W = (p - e_yhat) h^T``, flattened to ``C * D``
   entries (row-major, like ``W.grad.flatten()`` for ``W`` of shape (C, D)). Its
   norm ``||p - e_yhat|| ||h||`` is a lower bound on the norm of the gradient
   for any label, so large embeddings are uncertain ones.
2. k-means++ seeding (Arthur & Vassilvitskii, SODA 2007) over the embeddings
   picks the batch: diverse and uncertain.

First pick: the embedding of largest norm (ties: lowest position), as in the
released code (``init_centers``: ``np.argmax`` of the norms). It is chosen
because it is the single most uncertain-and-informative point and makes the
first pick deterministic; every later pick is D^2 sampling (probability
proportional to the squared Euclidean distance to the nearest picked point)
from ``ctx.generator``, the only source of randomness. When every remaining
candidate is at distance 0 (e.g. all predictions certain) the next pick is
uniform among the remaining ones.

No (n, C*D) matrix is formed: with ``a = p - e_yhat``,
``||g_i - g_j||^2 = ||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 <a_i, a_j> <h_i, h_j>``,
so the distances to the newest centre cost O(n (C + D)) per pick
(:func:`badge_sq_distances`); memory is O(n (C + D)).

``a`` is computed in float64, ``<h_i, h_c>`` in the features' dtype (float32
from the model; float64 for an exact check), then float64. Needs only the
logits and features of ``ctx.embed``, so it runs in every training mode. In
frozen mode the features are the encoder's, before the head's BatchNorm
standardisation, so the embedding is that of a linear layer on the raw
features (with an MLP head, of a linear probe rather than the head's last layer).
"""

from __future__ import annotations

import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request

__all__ = ["BadgeStrategy", "badge_factors", "badge_kmeans_pp", "badge_sq_distances", "gradient_embedding"]


def badge_factors(logits: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the gradient embedding (paper sec. 3):
    ``a = softmax(logits) - e_yhat`` (n, C) in float64, ``yhat`` the argmax
    (ties: lowest class), and the features ``h`` (n, D) unchanged (detached, CPU)."""
    lg = logits.detach().cpu()
    h = features.detach().cpu()
    if lg.ndim != 2 or h.ndim != 2 or lg.shape[0] != h.shape[0]:
        raise SsalError(f"badge needs (n, C) logits and (n, D) features, got {tuple(lg.shape)} and {tuple(h.shape)}")
    if lg.shape[1] < 2:
        raise SsalError(f"badge needs class logits (at least 2 classes), got {lg.shape[1]} columns; not usable at a frozen cold start")
    if not h.is_floating_point() or not bool(torch.isfinite(lg).all()) or not bool(torch.isfinite(h).all()):
        raise SsalError("the model produced NaN or infinite logits or features; cannot compute gradient embeddings")
    a = torch.softmax(lg.double(), dim=1)
    a[torch.arange(a.shape[0]), a.argmax(1)] -= 1.0
    return a, h


def gradient_embedding(logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(n, C * D) float64 gradient embeddings ``(p - e_yhat) outer h`` (paper
    sec. 3): the gradient of the cross-entropy w.r.t. the last layer's weight
    ``W`` (C, D), flattened row-major. Materialised: for tests and small n only."""
    a, h = badge_factors(logits, features)
    return (a.unsqueeze(2) * h.double().unsqueeze(1)).reshape(a.shape[0], -1)


def badge_sq_distances(a: torch.Tensor, h: torch.Tensor, j: int, a_sq: torch.Tensor | None = None, h_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) squared Euclidean distances ``||g_i - g_j||^2`` between the gradient
    embeddings ``g = a outer h`` of all rows and row ``j``, without forming them:
    ``||a_i||^2 ||h_i||^2 + ||a_j||^2 ||h_j||^2 - 2 <a_i, a_j> <h_i, h_j>``
    (clamped at 0 against rounding). ``a_sq``, ``h_sq``: the precomputed squared
    row norms (float64), to save recomputing them each pick. Float64 result."""
    if a_sq is None:
        a_sq = a.double().square().sum(1)
    if h_sq is None:
        h_sq = h.double().square().sum(1)
    aa = a.double() @ a[j].double()
    hh = (h @ h[j]).double()
    return (a_sq * h_sq + a_sq[j] * h_sq[j] - 2.0 * aa * hh).clamp_(min=0.0)


def badge_kmeans_pp(a: torch.Tensor, h: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k row positions of the gradient embeddings ``a outer h`` by k-means++
    seeding: first the largest norm (ties: lowest position), then D^2 sampling
    from ``generator`` (uniform among the unpicked rows once all their distances
    are 0). Distinct positions in pick order; O(n (C + D)) work and memory per pick
    (50,000 x 512 features, 10 classes, k = 1000: 11 s on one busy CPU core)."""
    n = a.shape[0]
    if not 0 <= k <= n:
        raise SsalError(f"badge needs 0 <= k <= n, got k={k} for n={n} points")
    picks = torch.empty(k, dtype=torch.long)
    if k == 0:
        return picks
    threads = torch.get_num_threads()
    # A long chain of small ops (as in kcenter.py): worker threads mostly add
    # barrier latency when the cores are shared (10x slower measured), so run on one.
    torch.set_num_threads(1)
    try:
        return _kmeans_pp(a, h, k, generator)
    finally:
        torch.set_num_threads(threads)


def _kmeans_pp(a: torch.Tensor, h: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = a.shape[0]
    picks = torch.empty(k, dtype=torch.long)
    a_sq = a.double().square().sum(1)
    h_sq = h.double().square().sum(1)
    nxt = int(torch.argmax(a_sq * h_sq))  # first maximal value
    mind = torch.full((n,), float("inf"), dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    for i in range(k):
        picks[i] = nxt
        free[nxt] = False
        if i + 1 == k:
            break
        torch.minimum(mind, badge_sq_distances(a, h, nxt, a_sq, h_sq), out=mind)
        w = mind.masked_fill(~free, 0.0)
        if not float(w.sum()) > 0:
            w = free.double()
        nxt = int(torch.multinomial(w, 1, generator=generator))
    return picks


class BadgeStrategy(Strategy):
    """BADGE: k-means++ seeding on gradient embeddings of the candidates (see the
    module docstring). The labelled set plays no part, as in the paper."""

    name = "badge"
    summary = "k-means++ on gradient embeddings: uncertain and diverse"

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        logits, features = ctx.embed(ctx.candidates)
        if logits.shape[0] != ctx.candidates.numel():
            raise SsalError(f"embed returned {logits.shape[0]} rows for {ctx.candidates.numel()} candidates")
        a, h = badge_factors(logits, features)
        return ctx.candidates[badge_kmeans_pp(a, h, budget, ctx.generator)]
