"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022, "Active Learning
Through a Covering Lens", Alg. 1): greedy maximum coverage of delta-balls on
self-supervised features.

1. Features of candidates and labelled images, L2-normalised; the delta-ball
   graph has an edge i -> j when ``||x_i - x_j|| < delta`` (each point is in its
   own ball). It is kept as sparse edge lists (CSR), built in row chunks, so no
   N x N matrix is ever held.
2. Every point within delta of a labelled image is covered.
3. ``budget`` times: pick the candidate whose ball holds the most uncovered
   points (ties: lowest candidate position) and mark its ball covered.
4. Once everything is covered the remaining picks are uniform at random
   (``ctx.generator``, without replacement) among the unpicked candidates.

Choosing delta: the paper takes the largest delta whose ball purity is at least
alpha = 0.95, purity being the fraction of points whose whole ball carries one
k-means pseudo-label (k-means with K = number of classes on the same features);
it reports delta = 0.75 for CIFAR-10 (SimCLR features). ``delta="auto"`` does
exactly that on the grid 0.30, 0.35, ..., 1.20 with K = ``auto_clusters``
(default 10: the number of classes is not known to a strategy); when no delta of
the grid reaches alpha, the smallest one is used. The chosen value is kept in
``ProbCoverStrategy.last_delta``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import SsalError
from .base import SelectionContext, Strategy, check_request, normalised_features
from ..clustering import draw_seed, kmeans

__all__ = ["ProbCoverStrategy", "DELTA_GRID", "delta_ball_graph", "greedy_cover", "ball_purity", "choose_delta"]

DELTA_GRID: tuple[float, ...] = tuple(round(0.3 + 0.05 * i, 2) for i in range(19))  # 0.30 .. 1.20
_CHUNK = 1 << 24  # entries of one (rows x N) distance block
MAX_EDGES = 50_000_000  # unordered pairs of a ball graph; building one costs about 100 bytes per pair at peak


def _sq_dist_blocks(x: torch.Tensor, lower: bool):
    """Yield (row start, (rows x cols) squared distances) over row chunks;
    with ``lower`` only the columns from the chunk's first row onwards."""
    n = x.shape[0]
    sq = (x * x).sum(1)
    step = max(1, _CHUNK // max(n, 1))
    for a in range(0, n, step):
        b = min(n, a + step)
        c0 = a if lower else 0
        d2 = torch.addmm(sq[c0:].unsqueeze(0), x[a:b], x[c0:].T, alpha=-2.0).add_(sq[a:b].unsqueeze(1))
        yield a, c0, d2


def delta_ball_graph(features: torch.Tensor, delta: float, max_edges: int = MAX_EDGES) -> tuple[torch.Tensor, torch.Tensor]:
    """The delta-ball graph of the rows of ``features`` in CSR form.

    Row i lists, in ascending order, every j with ``||x_i - x_j|| < delta``,
    i itself included. The squared distance of each unordered pair is computed
    once (``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` in the features' dtype, on their
    device), so the graph is exactly symmetric.

    A first pass counts the pairs; more than ``max_edges`` raises SsalError
    instead of exhausting memory (a delta that puts most pairs in each other's
    balls also makes the coverage meaningless).

    Returns:
        indptr (N + 1,) LongTensor and indices (E,) IntTensor (int32 to halve
        the memory of large graphs); row i is ``indices[indptr[i]:indptr[i+1]]``.
    """
    x = features.detach()
    if x.ndim != 2 or not x.is_floating_point():
        raise SsalError(f"features must be a float (N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    if not delta > 0:
        raise SsalError(f"delta must be positive, got {delta}")
    n = x.shape[0]
    if n >= 2**31:
        raise SsalError(f"too many points for an int32 graph: {n}")
    pairs = 0
    for a, c0, d2 in _sq_dist_blocks(x, lower=True):
        pairs += int((d2 < delta * delta).triu_(diagonal=a - c0 + 1).sum())
    if pairs > max_edges:
        raise SsalError(
            f"probcover delta {delta} joins {pairs:,} of the {n * (n - 1) // 2:,} pairs of {n} points "
            f"(limit {max_edges:,}): use a smaller strategy_options.delta, or delta=auto, on features that separate the images"
        )
    src, dst = [], []
    for a, c0, d2 in _sq_dist_blocks(x, lower=True):
        hit = d2 < delta * delta
        hit.triu_(diagonal=a - c0 + 1)  # only pairs j > i: each unordered pair once
        i, j = hit.nonzero(as_tuple=True)
        src.append((i + a).cpu())
        dst.append((j + c0).cpu())
    i = torch.cat(src) if src else torch.empty(0, dtype=torch.long)
    j = torch.cat(dst) if dst else torch.empty(0, dtype=torch.long)
    self_loops = torch.arange(n)
    rows = torch.cat([i, j, self_loops])
    cols = torch.cat([j, i, self_loops])
    key = torch.sort(rows * max(n, 1) + cols).values
    indptr = torch.zeros(n + 1, dtype=torch.long)
    indptr[1:] = torch.bincount(rows, minlength=n).cumsum(0)
    return indptr, (key % max(n, 1)).to(torch.int32)


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated neighbour lists of ``rows``."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lens = ends - starts
    if lens.sum() == 0:
        return indices[:0]
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return indices[offsets + np.arange(int(lens.sum()))]


def greedy_cover(indptr: torch.Tensor, indices: torch.Tensor, num_candidates: int, budget: int) -> list[int]:
    """ProbCover's greedy max coverage on a symmetric graph (paper Alg. 1).

    Rows ``0 .. num_candidates - 1`` are candidates, the remaining rows labelled
    points, whose balls start covered. Each step picks the candidate whose ball
    holds the most uncovered points (ties: lowest row) and covers its ball.

    Returns:
        Up to ``budget`` distinct candidate rows in pick order; fewer when every
        point is covered (no candidate would cover anything new).
    """
    ptr = indptr.cpu().numpy().astype(np.int64)
    idx = indices.cpu().numpy().astype(np.int64)
    n_all = ptr.size - 1
    covered = np.zeros(n_all, dtype=bool)
    covered[_gather(ptr, idx, np.arange(num_candidates, n_all))] = True
    edge_rows = np.repeat(np.arange(n_all), np.diff(ptr))
    degree = np.bincount(edge_rows[~covered[idx]], minlength=n_all)[:num_candidates].astype(np.int64)
    picks: list[int] = []
    while len(picks) < budget and num_candidates:
        c = int(degree.argmax())  # first maximum: lowest row
        if degree[c] <= 0:
            break
        picks.append(c)
        ball = idx[ptr[c] : ptr[c + 1]]
        new = ball[~covered[ball]]
        covered[new] = True
        # The graph is symmetric: the points whose balls hold a newly covered j are j's ball.
        touched = _gather(ptr, idx, new)
        np.subtract.at(degree, touched[touched < num_candidates], 1)
    return picks


def nearest_other_label(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance of each row to the nearest row with another
    label (float64 (N,), ``inf`` when there is none); row chunks, as the graph."""
    x = features.detach()
    lab = labels.to(x.device)
    out = []
    for a, _, d2 in _sq_dist_blocks(x, lower=False):
        d2.masked_fill_(lab[a : a + d2.shape[0]].unsqueeze(1) == lab.unsqueeze(0), float("inf"))
        out.append(d2.amin(1).cpu().double())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def ball_purity(features: torch.Tensor, labels: torch.Tensor, deltas: list[float] | tuple[float, ...]) -> torch.Tensor:
    """For each delta, the fraction of rows whose delta-ball (``||x_i - x_j|| <
    delta``, as :func:`delta_ball_graph`) holds only rows of their own label."""
    other = nearest_other_label(features, labels)
    return torch.tensor([float((other >= d * d).double().mean()) for d in deltas], dtype=torch.float64)


def choose_delta(
    features: torch.Tensor,
    num_clusters: int,
    seed: int,
    alpha: float = 0.95,
    grid: tuple[float, ...] = DELTA_GRID,
    niter: int = 20,
) -> float:
    """The paper's delta: the largest grid value with ball purity >= ``alpha``
    against k-means pseudo-labels (K = ``num_clusters``, capped at N); the
    smallest grid value when none reaches alpha."""
    k = min(num_clusters, features.shape[0])
    _, labels = kmeans(features, k, seed, niter=niter)
    purity = ball_purity(features, labels, grid)
    good = [d for d, p in zip(grid, purity.tolist()) if p >= alpha]
    return max(good) if good else min(grid)


class ProbCoverStrategy(Strategy):
    """ProbCover greedy coverage on the features of ``ctx.embed``; see the module docstring."""

    name = "probcover"
    summary = "greedy coverage of delta-balls on the features (cold start)"

    def __init__(self, delta: float | str = 0.75, auto_clusters: int = 10, alpha: float = 0.95) -> None:
        if not (delta == "auto" or (isinstance(delta, (int, float)) and not isinstance(delta, bool) and delta > 0)):
            raise SsalError(f"probcover delta must be a positive number or 'auto', got {delta!r}")
        if auto_clusters < 1 or not 0 < alpha <= 1:
            raise SsalError(f"probcover needs auto_clusters >= 1 and 0 < alpha <= 1, got {auto_clusters}, {alpha}")
        self.delta = delta
        self.auto_clusters = auto_clusters
        self.alpha = alpha
        self.last_delta: float | None = None

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        n = ctx.candidates.numel()
        x = normalised_features(ctx)
        if self.delta == "auto":
            delta = choose_delta(x, self.auto_clusters, draw_seed(ctx.generator), self.alpha)
        else:
            delta = float(self.delta)
        self.last_delta = delta
        indptr, indices = delta_ball_graph(x, delta)
        picks = greedy_cover(indptr, indices, n, budget)
        if len(picks) < budget:  # everything covered: uniform among the rest
            left = torch.ones(n, dtype=torch.bool)
            left[torch.tensor(picks, dtype=torch.long)] = False
            rest = left.nonzero().view(-1)
            perm = torch.randperm(rest.numel(), generator=ctx.generator)[: budget - len(picks)]
            picks += rest[perm].tolist()
        return ctx.candidates[torch.tensor(picks, dtype=torch.long)]
