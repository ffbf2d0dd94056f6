"""Prototype selection: one representative per PCL prototype (Li, Zhou, Xiong &
Hoi, ICLR 2021, "Prototypical Contrastive Learning of Unsupervised
Representations"; METHODS.md sec. 5, "Use in AL: pick per-prototype
representatives").

Prototypes are the centroids of a spherical k-means (PCL's E-step: L2-normalised
features and centroids, cosine similarity) over candidates and labelled images,
K = ``num_prototypes`` (default min(|L| + budget, 500), TypiClust's rule).
Points belong to the prototype of highest cosine similarity. Picks go one at a
time to the prototype with the fewest labelled-or-picked points (ties: more
points, then lower prototype id), which takes its unpicked candidate nearest to
the prototype (cosine; ties: lower candidate position). So prototypes holding no
labelled image are served first, larger ones first, then the rotation goes on
over all prototypes. A prototype whose candidates are all picked leaves the
rotation; every candidate belongs to some prototype, so ``budget`` picks are
always reached.

With ``source="pcl"`` the prototypes are those of the run's PCL pretraining
instead (``ctx.ssl_prototypes``: the final E-step's clustering of the momentum
encoder's projections, saved beside the cached backbone), at the granularity
whose K is closest to |L| + budget (``max_prototypes`` does not apply: there
is nothing to cluster) or at ``level``; the rule is the same, with
PCL's assignments and cosine similarities. ``source="auto"`` (the default) uses
them when the run has them (``train.mode=pretrain`` or ``frozen`` with
``ssl.method=pcl``, or a PCL ``train.init_backbone`` pretrained on this run's
images) and k-means otherwise.

:func:`select_by_prototypes` is the pure selection rule for any centroids;
:func:`select_by_assignment` the same for a given clustering.
"""

from __future__ import annotations

import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, normalised_features
from ..clustering import draw_seed, kmeans, l2_normalise, round_robin

__all__ = ["PrototypeStrategy", "select_by_assignment", "select_by_prototypes"]


def select_by_prototypes(
    features: torch.Tensor, centroids: torch.Tensor, labelled_mask: torch.Tensor, budget: int
) -> torch.Tensor:
    """Per-prototype representatives (see the module docstring).

    Args:
        features: (N, D) float tensor of candidates and labelled points.
        centroids: (K, D) prototypes; both are L2-normalised here, so only
            directions matter (cosine similarity).
        labelled_mask: (N,) bool, True for labelled rows (never picked).
        budget: picks wanted, at most the number of unlabelled rows.

    Returns:
        LongTensor of ``budget`` distinct unlabelled row indices in pick order.
    """
    x = l2_normalise(features)
    c = l2_normalise(centroids).to(x.dtype)
    mask = labelled_mask.detach().cpu().to(torch.bool).view(-1)
    n = x.shape[0]
    if c.ndim != 2 or c.shape[1] != x.shape[1] or c.shape[0] < 1:
        raise SsalError(f"centroids must be (K >= 1, {x.shape[1]}), got {tuple(c.shape)}")
    if mask.numel() != n:
        raise SsalError(f"labelled_mask has {mask.numel()} entries for {n} feature rows")
    sim = x @ c.T  # (N, K); fine in memory for K <= a few thousand
    best, assign = sim.max(1)  # first maximum: lowest prototype id
    return select_by_assignment(assign, best, mask, budget, c.shape[0])


def select_by_assignment(
    assign: torch.Tensor, similarity: torch.Tensor, labelled_mask: torch.Tensor, budget: int, k: int
) -> torch.Tensor:
    """The rule of :func:`select_by_prototypes` on a given clustering: row ``i``
    belongs to prototype ``assign[i]`` (in ``[0, k)``) with cosine
    ``similarity[i]``; the same tie-breaks. Returns ``budget`` distinct
    unlabelled row indices in pick order."""
    assign = assign.detach().cpu().long().view(-1)
    best = similarity.detach().cpu().view(-1)
    mask = labelled_mask.detach().cpu().to(torch.bool).view(-1)
    n = assign.numel()
    if best.numel() != n or mask.numel() != n:
        raise SsalError(f"assignments, similarities and labelled_mask differ in length: {n}, {best.numel()}, {mask.numel()}")
    if n and not 0 <= int(assign.min()) <= int(assign.max()) < k:
        raise SsalError(f"prototype ids must lie in [0, {k})")
    free = (~mask).nonzero().view(-1)
    if not 0 <= budget <= free.numel():
        raise SsalError(f"budget {budget} must lie in [0, {free.numel()}] (the number of unlabelled rows)")
    if budget == 0:
        return torch.empty(0, dtype=torch.long)
    sizes = torch.bincount(assign, minlength=k)
    labelled_counts = torch.bincount(assign[mask], minlength=k)
    # Unlabelled rows grouped by prototype, most similar first, lower row on ties.
    by_sim = free[torch.sort(best[free], descending=True, stable=True).indices]
    grouped = by_sim[torch.sort(assign[by_sim], stable=True).indices]
    counts = torch.bincount(assign[grouped], minlength=k)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]).tolist()
    rows = grouped.tolist()
    picks = round_robin(
        [p for p in range(k) if counts[p] > 0],
        sizes.tolist(),
        labelled_counts.tolist(),
        lambda p: rows[starts[p] : starts[p + 1]],
        budget,
    )
    return torch.tensor(picks, dtype=torch.long)


class PrototypeStrategy(Strategy):
    """Per-prototype representatives of the run's PCL prototypes or of a
    spherical k-means on the features of ``ctx.embed``; see the module docstring."""

    name = "prototypes"
    summary = "representatives of prototypes that hold no label: a PCL pretraining's own, else spherical k-means"

    def __init__(
        self,
        num_prototypes: int | None = None,
        max_prototypes: int = 500,
        niter: int = 20,
        source: str = "auto",
        level: int | None = None,
    ) -> None:
        if (num_prototypes is not None and num_prototypes < 1) or max_prototypes < 1 or niter < 1:
            raise SsalError(
                f"prototypes needs num_prototypes >= 1 (or None), max_prototypes >= 1, niter >= 1; "
                f"got {num_prototypes}, {max_prototypes}, {niter}"
            )
        if source not in ("auto", "kmeans", "pcl"):
            raise SsalError(f"invalid value strategy_options.source={source}: choose one of: auto, kmeans, pcl")
        if level is not None and (isinstance(level, bool) or not isinstance(level, int) or level < 0):
            raise SsalError(f"invalid value strategy_options.level={level}: a granularity index >= 0, or null for the K closest to |L| + budget")
        self.num_prototypes = num_prototypes
        self.max_prototypes = max_prototypes
        self.niter = niter
        self.source = source
        self.level = level

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if self.source == "pcl" and ctx.ssl_prototypes is None:
            raise SsalError(
                "strategy prototypes with source=pcl needs the prototypes of a PCL pretraining on this run's images: "
                "train.mode=pretrain or frozen with ssl.method=pcl (caches pretrained before this option have none: pretrain again)"
            )
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        n = ctx.candidates.numel()
        rows = torch.cat([ctx.candidates, ctx.labelled])
        labelled = torch.zeros(rows.numel(), dtype=torch.bool)
        labelled[n:] = True
        if self.source != "kmeans" and ctx.ssl_prototypes is not None:
            levels = ctx.ssl_prototypes(rows)
            if self.level is not None and self.level >= len(levels):
                raise SsalError(f"invalid value strategy_options.level={self.level}: the PCL pretraining has {len(levels)} granularities")
            want = self.num_prototypes or ctx.labelled.numel() + budget  # no max_prototypes: nothing to cluster here
            m = self.level if self.level is not None else pick_level([k for k, _, _ in levels], want)
            k, assign, sim = levels[m]
            return ctx.candidates[select_by_assignment(assign, sim, labelled, budget, k)]
        x = normalised_features(ctx)
        want = self.num_prototypes or min(ctx.labelled.numel() + budget, self.max_prototypes)
        centroids, _ = kmeans(x, min(want, x.shape[0]), draw_seed(ctx.generator), niter=self.niter, spherical=True)
        return ctx.candidates[select_by_prototypes(x, centroids, labelled, budget)]


def pick_level(ks: list[int], want: int) -> int:
    """Index of the granularity whose K is closest to ``want`` (ties: the finer)."""
    return min(range(len(ks)), key=lambda m: (abs(ks[m] - want), -ks[m]))
