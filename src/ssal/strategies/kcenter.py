"""Exact k-center greedy (Sener & Savarese, ICLR 2018, "Active Learning for
Convolutional Neural Networks: A Core-Set Approach", Algorithm 1).

The textbook algorithm keeps ``mind[i]`` = distance of point i to its nearest
centre and, ``budget`` times, picks ``argmax(mind)`` and lowers ``mind`` with the
distances to the new centre: one pass over all N x D features per pick.
:func:`kcenter_greedy` returns the same picks while touching far fewer points:

* Lazy greedy with stale upper bounds. ``ub[i]`` bounds the distance of i to the
  centres ``centres[:stamp[i]]`` from above, so it also bounds the distance to all
  centres (more centres only lower a minimum). If the argmax of ``ub`` is up to
  date and exact it is the textbook pick; otherwise a block of the highest stale
  bounds is refreshed against the centres they miss (a small matrix product).
  Initial centres are fed in geometrically growing slices (128, 256, 512, ...),
  so most points never meet most of them: one close centre is enough to show
  that a point cannot win. The per-pick bookkeeping runs on a frontier of the
  ~4096 highest bounds, not on all N points.
* Exact comparisons. Bounds come from float32 matrix products with a rigorous
  rounding-error bound (rows are mean-centred first when that shrinks their
  norms, which the bound scales with); a value is only trusted as exact after
  it is recomputed in float64 by direct differences (only for the centres whose
  interval reaches the minimum, usually one). The picks are therefore those of a
  float64 brute-force implementation computing ``((x_i - x_c) ** 2).sum()`` per
  pair, ties going to the lowest index. (A float32 implementation of the
  textbook loop is not exact: on clustered 512-d data it departs from these
  picks after ~100 picks; see benchmarks/bench_kcenter.py.)

Memory is O(N * D): at most one working copy of the features plus O(N) state;
no N x N (or N x budget) matrix is formed. Work: one (N x 128) product, then
refreshes of the few points that come near the top; in 2-16 dimensions the plain
per-pick pass is as fast or faster.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import SsalError

__all__ = ["kcenter_greedy"]

_FIRST_SLICE = 128  # initial centres every point is checked against before lazy refresh
_BLOCK = 256  # stale points refreshed together (at most)
_BLOCK_MIN = 16
_BLOCK_PAIRS = 1 << 15  # (points x centres) of one refresh, unless that leaves < _BLOCK_MIN points
_EXACT_BLOCK = 32  # top points given exact distances together (one pass over the centres)
_FRONTIER = 4096  # highest bounds kept apart so a pick costs O(frontier), not O(N)
_CHUNK = 1 << 22  # entries of one (rows x centres) product in the first pass


def kcenter_greedy(features: torch.Tensor, initial: torch.Tensor, budget: int) -> torch.Tensor:
    """Pick ``budget`` new centres by k-center greedy (Sener & Savarese 2018, Alg. 1).

    Args:
        features: (N, D) float tensor; Euclidean distances between rows.
        initial: LongTensor of row indices that are centres already (may be
            empty; repeats are ignored).
        budget: number of new centres, ``0 <= budget <= N - len(set(initial))``.

    Returns:
        LongTensor (budget,) of distinct row indices, none in ``initial``, in pick
        order. Each pick is the point farthest from its nearest centre so far,
        ties to the lowest index. With no initial centres every point is
        infinitely far from the empty centre set, so the first pick is index 0
        (the paper's code draws it at random: pass a random index as
        ``initial`` for that).

    Runs on the CPU (the loop is latency-bound); the result is a CPU tensor.
    """
    x = features.detach().cpu()
    if x.ndim != 2 or not x.is_floating_point():
        raise SsalError(f"features must be a float (N, D) tensor, got {x.dtype} {tuple(x.shape)}")
    n = x.shape[0]
    init = torch.as_tensor(initial, dtype=torch.long).cpu().reshape(-1)
    if init.numel() and (int(init.min()) < 0 or int(init.max()) >= n):
        raise SsalError(f"initial centre indices must lie in [0, {n})")
    init = torch.unique(init)
    if not 0 <= budget <= n - init.numel():
        raise SsalError(
            f"budget {budget} must lie in [0, {n - init.numel()}] (N={n} points, {init.numel()} initial centres)"
        )
    if budget == 0:
        return torch.empty(0, dtype=torch.long)
    threads = torch.get_num_threads()
    # A long chain of small ops: worker threads mostly add barrier latency
    # (milliseconds per op when the cores are shared), so run on one.
    torch.set_num_threads(1)
    try:
        return _LazyKCenter(x, init, budget).run()
    finally:
        torch.set_num_threads(threads)


def _ieee_fp32_matmul() -> bool:
    """False when float32 products may run in bf16 / tf32 (a user setting): the error bound would not hold."""
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
    except RuntimeError:  # legacy and new precision APIs mixed
        return False
    settings = [getattr(torch.backends, "fp32_precision", "none")]
    settings.append(getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none"))
    return all(s in ("none", "ieee") for s in settings)


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.bmm(x.unsqueeze(1), x.unsqueeze(2)).view(x.shape[0])


class _LazyKCenter:
    """State of one k-center greedy run (see the module docstring).

    Invariants: ``ub[i]`` >= the exact squared distance of i to
    ``centres[:stamp[i]]`` (hence to all centres), with equality where
    ``exact[i]``; centres have ``ub = -inf``. The loop works on a frontier, the
    points with the highest bounds, held in small arrays (``f_*``, numpy: the
    per-pick work is many tiny operations); every point outside it has
    ``ub <= tau``, so while ``max(f_ub) > tau`` the global argmax is inside.
    """

    def __init__(self, x: torch.Tensor, initial: torch.Tensor, budget: int) -> None:
        n, d = x.shape
        self.x = x  # original values: exact distances are taken from these
        # float32 products unless they could be inexact beyond the bound below.
        fast = x.dtype != torch.float64 and _ieee_fp32_matmul()
        for work in (torch.float32, torch.float64) if fast else (torch.float64,):
            self.xw = x.to(work).contiguous()
            self.sq = _sq_norms(self.xw)
            # Distances do not depend on a shift, and the error bound scales with the
            # norms: centre the rows when that shrinks them (a copy), else use them as is.
            mean = self.xw.mean(0)
            if float(mean.square().sum()) > 0.25 * float(self.sq.mean()):
                self.xw = self.xw - mean  # one rounding per entry, covered by the bound
                self.sq = _sq_norms(self.xw)
            if work == torch.float64 or float(self.sq.max()) < 1e30:  # else float32 squares may overflow
                break
        if not bool(torch.isfinite(self.sq).all()):
            raise SsalError("features contain NaN or infinite values (or squares too large for float64)")
        u = 2.0**-24 if work == torch.float32 else 2.0**-53
        gamma = d * u / (1 - d * u)
        # |computed - exact| <= tol * (|x_i| + |x_c|)^2 <= 2 tol (|x_i|^2 + |x_c|^2) for the
        # squared distance of centred rows: gamma_D for each dot product and squared
        # norm (any summation order, FMA or not), a few unit roundings for the sums
        # and the centring shift, float64 rounding of the reference; factor 2 margin.
        self.tol = 2.0 * (d + 6) * u
        self.abs_tol = 8.0 * d * torch.finfo(work).tiny  # flushed subnormal products
        sq64 = self.sq.double()
        self.norm = (sq64 * (1 + 2 * gamma + 4 * u)).sqrt()  # >= |x_i - mean|
        spread = 2 * self.tol * self.norm.square()
        # Per-point offsets: min_c(|c|^2 - 2 x.c) + offset +- slack brackets the distance.
        self.lo_off, self.hi_off = (sq64 - spread).numpy(), (sq64 + spread).numpy()
        self.ub = np.full(n, np.inf)
        self.exact = np.ones(n, dtype=bool)
        self.stamp = np.zeros(n, dtype=np.int64)
        # Centres in order, with contiguous copies of their rows for slicing.
        cap = initial.numel() + budget
        self.centres = torch.empty(cap, dtype=torch.long)
        self.cw = torch.empty(cap, d, dtype=work)
        self.csq = torch.empty(cap, dtype=work)
        self.cnorm = torch.empty(cap, dtype=torch.float64)
        self.slack = self.abs_tol  # 2 tol max|c|^2 + abs_tol, grows with the centres
        self.n_centres = 0
        self.budget = budget
        self._add_centres(initial)
        # The frontier (filled by _rebuild_front): global indices, and their state.
        self.f_idx = np.empty(0, dtype=np.int64)
        self.f_ub, self.f_exact, self.f_stamp = self.ub[:0], self.exact[:0], self.stamp[:0]
        self.f_lo, self.f_hi = self.lo_off[:0], self.hi_off[:0]
        self.f_x = self.xw[:0]
        self.tau = -math.inf

    def _add_centres(self, idx: torch.Tensor) -> None:
        a, b = self.n_centres, self.n_centres + idx.numel()
        self.centres[a:b], self.cw[a:b] = idx, self.xw.index_select(0, idx)
        self.csq[a:b], self.cnorm[a:b] = self.sq.index_select(0, idx), self.norm.index_select(0, idx)
        if b > a:
            self.slack = max(self.slack, 2 * self.tol * float(self.cnorm[a:b].max()) ** 2 + self.abs_tol)
        self.ub[idx.numpy()] = -np.inf  # a centre is never picked again
        self.n_centres = b

    # -- distances -------------------------------------------------------------
    def _exact(self, i: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Reference squared distances in float64, one per (i, c) pair, by direct
        differences; the same rounding whichever code path asks."""
        return (self.x.index_select(0, i).double() - self.x.index_select(0, c).double()).square().sum(1)

    def _nearest(self, xw: torch.Tensor, lo_c: int, hi_c: int) -> np.ndarray:
        """min over centres[lo_c:hi_c] of (|c|^2 - 2 x.c), one BLAS call; add the
        row's offset +- slack to bracket its exact squared distance."""
        part = torch.addmm(self.csq[lo_c:hi_c].unsqueeze(0), xw, self.cw[lo_c:hi_c].T, alpha=-2.0)
        return part.amin(1).numpy().astype(np.float64)

    def _update(
        self,
        ub: np.ndarray,
        exact: np.ndarray,
        stamp: np.ndarray,
        lo_off: np.ndarray,
        hi_off: np.ndarray,
        at: np.ndarray | slice,
        nearest: np.ndarray,
        hi_c: int,
    ) -> None:
        """Lower the bounds at ``at`` (numpy index or slice into the given arrays)
        with their nearest new centre; they then cover centres[:hi_c]."""
        old = ub[at]
        # Still exact only if no new centre can be closer than the old exact minimum.
        exact[at] &= old <= nearest + lo_off[at] - self.slack
        ub[at] = np.minimum(old, nearest + hi_off[at] + self.slack)
        stamp[at] = hi_c

    def _first_pass(self) -> None:
        """Bound every point with the first slice of centres, in row chunks (centres stay at -inf)."""
        hi_c = min(self.n_centres, _FIRST_SLICE)
        step = max(1, _CHUNK // hi_c)
        for s in range(0, self.ub.size, step):
            at = slice(s, s + step)
            nearest = self._nearest(self.xw[at], 0, hi_c)
            self._update(self.ub, self.exact, self.stamp, self.lo_off, self.hi_off, at, nearest, hi_c)

    # -- frontier ----------------------------------------------------------------
    def _rebuild_front(self) -> None:
        """Write the frontier back; the new one holds every point with ub >= the
        _FRONTIER-th largest (all ties); tau = the largest ub outside it."""
        self.ub[self.f_idx], self.exact[self.f_idx], self.stamp[self.f_idx] = self.f_ub, self.f_exact, self.f_stamp
        k = min(_FRONTIER, self.ub.size)
        inside = self.ub >= np.partition(self.ub, self.ub.size - k)[self.ub.size - k]
        self.f_idx = np.flatnonzero(inside)  # sorted: argmax ties go to the lowest index
        self.tau = float(self.ub[~inside].max()) if self.f_idx.size < self.ub.size else -np.inf
        self.f_ub, self.f_exact, self.f_stamp = self.ub[inside], self.exact[inside], self.stamp[inside]
        self.f_lo, self.f_hi = self.lo_off[inside], self.hi_off[inside]
        self.f_x = self.xw.index_select(0, torch.from_numpy(self.f_idx))

    def _top(self, mask: np.ndarray, k: int) -> np.ndarray:
        """Frontier positions of the (up to) k highest bounds where ``mask``."""
        score = torch.from_numpy(np.where(mask, self.f_ub, -np.inf))
        vals, pos = torch.topk(score, min(k, score.numel()))
        return pos[vals > -math.inf].numpy()

    def _refresh_block(self, lo_c: int) -> None:
        """Refresh the highest stale bounds that start at stamp lo_c (the argmax's)
        or later, against the centres they miss (up to a geometric slice)."""
        # Geometric slices: a point far from everything meets all centres in
        # O(log) refreshes; one close centre usually retires it early.
        hi_c = min(self.n_centres, max(2 * lo_c, lo_c + _FIRST_SLICE))
        # Fewer speculative rows when each costs many centres.
        rows = min(_BLOCK, max(_BLOCK_MIN, _BLOCK_PAIRS // (hi_c - lo_c)))
        top = self._top((self.f_stamp >= lo_c) & (self.f_stamp < hi_c), rows)
        nearest = self._nearest(self.f_x.index_select(0, torch.from_numpy(top)), lo_c, hi_c)
        self._update(self.f_ub, self.f_exact, self.f_stamp, self.f_lo, self.f_hi, top, nearest, hi_c)

    def _exact_block(self) -> None:
        """Exact float64 minimum over all centres for the highest up-to-date inexact
        bounds: recompute the few centres whose bound interval reaches the smallest
        upper bound (usually one per point)."""
        top = self._top((self.f_stamp == self.n_centres) & ~self.f_exact, _EXACT_BLOCK)
        rows = torch.from_numpy(self.f_idx[top])
        k = self.n_centres
        part = torch.addmm(self.csq[:k].unsqueeze(0), self.f_x.index_select(0, torch.from_numpy(top)), self.cw[:k].T, alpha=-2.0)
        approx = part.double() + self.sq.index_select(0, rows).double().unsqueeze(1)
        # Per-entry error bound here (tighter than the per-row one of _update).
        err = self.tol * (self.norm.index_select(0, rows).unsqueeze(1) + self.cnorm[:k]).square() + self.abs_tol
        r, c = torch.nonzero(approx - err <= (approx + err).amin(1, keepdim=True), as_tuple=True)
        best = torch.full((top.size,), math.inf, dtype=torch.float64)
        best.scatter_reduce_(0, r, self._exact(rows[r], self.centres[c]), reduce="amin")
        self.f_ub[top], self.f_exact[top], self.f_stamp[top] = best.numpy(), True, self.n_centres

    # -- greedy loop -----------------------------------------------------------
    def run(self) -> torch.Tensor:
        picks: list[int] = []
        if self.n_centres == 0:
            # Every point is at +inf from the empty set: the lowest index wins.
            picks.append(0)
            self._add_centres(torch.zeros(1, dtype=torch.long))
        if len(picks) < self.budget:
            self._first_pass()
            self._loop(picks)
        return torch.tensor(picks, dtype=torch.long)

    def _loop(self, picks: list[int]) -> None:
        self._rebuild_front()
        while len(picks) < self.budget:
            pos = int(self.f_ub.argmax())  # first (= lowest index) among equal maxima
            if self.f_ub[pos] <= self.tau:  # a point outside may now be the argmax
                self._rebuild_front()
            elif self.f_stamp[pos] < self.n_centres:
                self._refresh_block(int(self.f_stamp[pos]))
            elif not self.f_exact[pos]:
                self._exact_block()
            else:
                # Every other point's distance <= its ub <= ub[j] (strictly below for
                # lower indices), so j is the textbook pick, tie-break included.
                j = int(self.f_idx[pos])
                picks.append(j)
                self.f_ub[pos] = -np.inf
                self._add_centres(torch.tensor([j]))
