"""Helpers shared by the representation-based strategies: seeded faiss
k-means, L2 normalisation, a faiss seed drawn from a selection generator, and
the round-robin over clusters of TypiClust and the prototype selector.

:func:`kmeans` is Lloyd's algorithm as implemented by faiss (``faiss.Kmeans``)
from a k-means++ initialisation drawn from ``seed``. TypiClust, ProbCover's
automatic delta, the prototype selector and PCL's E-step all use it, so it takes any
(N, D) float tensor, runs on the CPU and is deterministic for a given seed (and
a given faiss thread count, which is left at its default).

Three faiss defaults are changed on purpose:

* faiss starts from k random rows; k-means++ seeding is used instead (faiss >=
  1.7 has no k-means++ of its own), because random starts often merge well
  separated clusters, which defeats cluster-based selection.
* faiss trains on a random subsample of ``256 * k`` points when N is larger;
  here every point is used unless ``max_points_per_centroid`` is given (PCL's
  official code passes 1000).
* faiss prints a warning to stderr when N < 39 * k; cold start clusters few
  points into many clusters by design, so the warning is silenced.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable, Iterable, Sequence


import numpy as np
import torch

from .errors import SsalError

__all__ = ["kmeans", "kmeans_plus_plus", "l2_normalise", "draw_seed", "round_robin"]


def l2_normalise(features: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero), on the CPU."""
    x = features.detach().cpu()
    if x.ndim != 2 or not x.is_floating_point():
        raise SsalError(f"features must be a float (N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise SsalError("features contain NaN or infinite values")
    return torch.nn.functional.normalize(x, dim=1)


def draw_seed(generator: torch.Generator) -> int:
    """A seed in [0, 2**31 - 1) for faiss, drawn from ``generator``."""
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def kmeans_plus_plus(features: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, SODA 2007): the first centre
    uniform, each next one drawn with probability proportional to the squared
    distance to its nearest chosen centre (uniform among unchosen rows once all
    distances are 0). Returns the k chosen row indices; seeded torch generator."""
    x = features.detach().cpu().float()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise SsalError(f"k-means++ needs 1 <= k <= N, got k={k} for N={n} points")
    gen = torch.Generator().manual_seed(int(seed))
    sq = (x * x).sum(1)
    chosen = torch.empty(k, dtype=torch.long)
    mind = torch.full((n,), float("inf"))
    free = torch.ones(n, dtype=torch.bool)
    nxt = int(torch.randint(n, (1,), generator=gen))
    for i in range(k):
        chosen[i] = nxt
        free[nxt] = False
        d2 = (sq - 2.0 * (x @ x[nxt]) + sq[nxt]).clamp_(min=0.0)
        torch.minimum(mind, d2, out=mind)
        if i + 1 < k:
            w = mind.masked_fill(~free, 0.0)
            if not float(w.sum()) > 0:
                w = free.float()
            nxt = int(torch.multinomial(w, 1, generator=gen))
    return chosen


def kmeans(
    features: torch.Tensor,
    k: int,
    seed: int,
    niter: int = 20,
    spherical: bool = False,
    nredo: int = 1,
    init: str = "k-means++",
    max_points_per_centroid: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of the rows of ``features``: Lloyd iterations by faiss.

    Args:
        features: (N, D) float tensor (any device; copied to CPU float32).
        k: number of clusters, ``1 <= k <= N``.
        seed: seed of the initialisation (and of faiss' subsampling); the same
            seed gives the same result.
        niter: Lloyd iterations.
        spherical: cosine k-means: the rows are L2-normalised first and the
            centroids are renormalised after every iteration (faiss
            ``spherical=True``), so the assignment is the centroid of highest
            cosine similarity.
        nredo: runs (seeds ``seed, seed + 1, ...``); the lowest objective wins.
        init: "k-means++" (:func:`kmeans_plus_plus`, here in torch, so it does
            not depend on the faiss version) or "random" (faiss' own: k
            distinct rows uniformly at random, which often merges well
            separated clusters and splits others).
        max_points_per_centroid: train on a random subsample of at most
            ``k * max_points_per_centroid`` points (None: all points).

    Returns:
        centroids (k, D) float32 and assignments (N,) LongTensor: the index of
        each row's nearest final centroid (squared Euclidean distance, ties to
        the lowest centroid index). A cluster may end up empty only when there
        are fewer than k distinct rows.
    """
    x = l2_normalise(features) if spherical else features.detach().cpu()
    if x.ndim != 2 or not x.is_floating_point():
        raise SsalError(f"features must be a float (N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    n, d = x.shape
    if not 1 <= k <= n:
        raise SsalError(f"k-means needs 1 <= k <= N, got k={k} for N={n} points")
    if niter < 1 or nredo < 1:
        raise SsalError(f"k-means needs niter >= 1 and nredo >= 1, got niter={niter}, nredo={nredo}")
    if init not in ("k-means++", "random"):
        raise SsalError(f"k-means init must be 'k-means++' or 'random', got {init!r}")
    import faiss  # noqa: PLC0415 - heavy, only needed here

    xn = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    if not np.isfinite(xn).all():
        raise SsalError("features contain NaN or infinite values (or values too large for float32)")
    threads = faiss.omp_get_max_threads()
    if n * k < _SMALL_KMEANS:  # OpenMP start-up costs far more than tiny problems need
        faiss.omp_set_num_threads(1)
    try:
        return _kmeans_runs(xn, k, seed, niter, spherical, nredo, init, max_points_per_centroid)
    finally:
        faiss.omp_set_num_threads(threads)


_SMALL_KMEANS = 1_000_000  # point-centroid pairs below which faiss runs on one thread


def _kmeans_runs(xn, k, seed, niter, spherical, nredo, init, max_points_per_centroid):
    import faiss

    n, d = xn.shape
    best_obj, centroids = math.inf, None
    for r in range(nredo):
        s = (int(seed) + r) % (2**31 - 1)
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            seed=s,
            spherical=spherical,
            verbose=False,
            min_points_per_centroid=1,  # silences faiss' "please provide more points" warning
            max_points_per_centroid=n if max_points_per_centroid is None else int(max_points_per_centroid),
        )
        start = xn[kmeans_plus_plus(torch.from_numpy(xn), k, s).numpy()] if init == "k-means++" else None
        obj = float(km.train(xn, init_centroids=start))
        if centroids is None or obj < best_obj:
            best_obj, centroids = obj, np.ascontiguousarray(km.centroids, dtype=np.float32).copy()
    index = faiss.IndexFlatL2(d)
    index.add(centroids)
    _, assign = index.search(xn, 1)
    return torch.from_numpy(centroids), torch.from_numpy(assign.reshape(n).astype(np.int64))


def round_robin(
    clusters: Iterable[int],
    sizes: Sequence[int],
    labelled_counts: Sequence[int],
    ranked: Callable[[int], Sequence[int]],
    budget: int,
) -> list[int]:
    """Picks one at a time from the cluster with the fewest labelled-or-picked
    points; ties go to the larger cluster, then to the lower cluster id.

    Args:
        clusters: ids of the clusters that may be picked from.
        sizes, labelled_counts: per cluster id, its number of points and of
            labelled points.
        ranked: cluster id -> its candidates, best first (called at most once
            per cluster, when it is first visited, so it may be expensive).
        budget: picks wanted.

    Returns:
        Up to ``budget`` picks (items of the ``ranked`` lists) in pick order;
        fewer when every cluster has run out of candidates. A cluster's next
        pick is the next item of its ranked list; an exhausted cluster leaves
        the rotation.
    """
    heap = [(int(labelled_counts[c]), -int(sizes[c]), int(c)) for c in clusters]
    heapq.heapify(heap)
    cache: dict[int, Sequence[int]] = {}
    used: dict[int, int] = {}
    picks: list[int] = []
    while heap and len(picks) < budget:
        count, neg_size, c = heapq.heappop(heap)
        if c not in cache:
            cache[c] = ranked(c)
        at = used.get(c, 0)
        if at >= len(cache[c]):
            continue  # exhausted: leaves the rotation
        picks.append(int(cache[c][at]))
        used[c] = at + 1
        heapq.heappush(heap, (count + 1, neg_size, c))
    return picks
