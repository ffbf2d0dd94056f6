"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, "Active Learning on a
Budget: Opposite Strategies Suit High and Low Budgets", Alg. 1, variant TPC_RP:
clustering of self-supervised representations, most typical point per cluster).

1. Features of candidates and labelled images, L2-normalised.
2. k-means with K = min(|L| + budget, max_clusters) clusters (max_clusters = 500
   as in the paper); clusters of <= min_cluster_size (5) points are dropped.
3. ``budget`` times: the remaining cluster holding the fewest labelled or
   already picked points (ties: larger cluster, then lower cluster id) gives its
   most typical unpicked candidate, typicality being
   ``1 / mean Euclidean distance to the k = 20 nearest neighbours`` (paper eq. 4)
   with neighbours taken inside the cluster (as in the paper's code) and k capped
   at cluster size - 1.

Works with no labelled image (cold start). Differences from the released code,
on purpose: distances are Euclidean as in the paper (the code uses faiss'
squared distances and adds 1e-5 to the mean); a cluster's typicality is
computed once over all its points, labelled ones included (the code recomputes
it over its not-yet-labelled points after every pick, with k capped at half the
cluster); the cluster order is updated after every pick (paper's Alg. 1), not
fixed once. When every kept cluster has run out of candidates, the remaining
candidates follow in order of typicality over all points.
"""

from __future__ import annotations

import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, normalised_features
from ..clustering import draw_seed, kmeans, round_robin

__all__ = ["TypiClustStrategy", "typicality", "knn_distances"]

_CHUNK = 1 << 24  # entries of one (rows x N) distance block


def knn_distances(features: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(R, k) Euclidean distances of each row in ``rows`` (default: all N) to its
    k nearest other rows of ``features``, ascending (the row itself excluded by
    index; duplicates count at distance 0). Computed in row chunks, never as a
    full N x N matrix."""
    x = features.detach()
    if x.ndim != 2 or not x.is_floating_point():
        raise SsalError(f"features must be a float (N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n - 1:
        raise SsalError(f"k-nearest neighbours need 1 <= k <= N - 1, got k={k} for N={n} points")
    rows = torch.arange(n, device=x.device) if rows is None else rows.to(device=x.device, dtype=torch.long)
    step = max(1, _CHUNK // n)
    out = [torch.empty(0, k, dtype=x.dtype, device=x.device)]
    for s in range(0, rows.numel(), step):
        r = rows[s : s + step]
        d = torch.cdist(x[r], x)
        d[torch.arange(r.numel(), device=d.device), r] = float("inf")
        out.append(torch.topk(d, k, dim=1, largest=False).values)
    return torch.cat(out)


def typicality(features: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Typicality (paper eq. 4) of each row in ``rows`` (default: all):
    ``1 / mean`` of the Euclidean distances to its k nearest other rows;
    float64, ``inf`` where those neighbours coincide with the row."""
    return 1.0 / knn_distances(features, k, rows).double().mean(1)


class TypiClustStrategy(Strategy):
    """TypiClust (TPC_RP) on the features of ``ctx.embed``; see the module docstring."""

    name = "typiclust"
    summary = "the most typical image of each uncovered k-means cluster (cold start)"

    def __init__(self, max_clusters: int = 500, min_cluster_size: int = 5, knn: int = 20, niter: int = 20) -> None:
        if max_clusters < 1 or min_cluster_size < 0 or knn < 1 or niter < 1:
            raise SsalError(
                f"typiclust needs max_clusters >= 1, min_cluster_size >= 0, knn >= 1, niter >= 1; "
                f"got {max_clusters}, {min_cluster_size}, {knn}, {niter}"
            )
        self.max_clusters = max_clusters
        self.min_cluster_size = min_cluster_size
        self.knn = knn
        self.niter = niter

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        n = ctx.candidates.numel()
        x = normalised_features(ctx)
        total = x.shape[0]
        k = min(ctx.labelled.numel() + budget, self.max_clusters, total)
        _, assign = kmeans(x, k, draw_seed(ctx.generator), niter=self.niter)
        sizes = torch.bincount(assign, minlength=k)
        labelled_counts = torch.bincount(assign[n:], minlength=k)
        order = torch.sort(assign, stable=True).indices  # positions grouped by cluster, ascending inside
        starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])

        def ranked(c: int) -> list[int]:
            members = order[starts[c] : starts[c + 1]]
            if members.numel() < 2:  # only with min_cluster_size=0: no neighbours to measure
                return members[members < n].tolist()
            inside = (members < n).nonzero().view(-1)  # candidates, by position in the cluster
            t = typicality(x[members], min(self.knn, members.numel() - 1), rows=inside)
            return members[inside[torch.sort(t, descending=True, stable=True).indices]].tolist()

        kept = [c for c in range(k) if int(sizes[c]) > self.min_cluster_size]
        picks = round_robin(kept, sizes.tolist(), labelled_counts.tolist(), ranked, budget)
        if len(picks) < budget:  # every kept cluster is out of candidates
            left = torch.ones(n, dtype=torch.bool)
            left[torch.tensor(picks, dtype=torch.long)] = False
            rest = left.nonzero().view(-1)
            if total > 1:
                t = typicality(x, min(self.knn, total - 1), rows=rest)
                rest = rest[torch.sort(t, descending=True, stable=True).indices]
            picks += rest[: budget - len(picks)].tolist()
        return ctx.candidates[torch.tensor(picks, dtype=torch.long)]
