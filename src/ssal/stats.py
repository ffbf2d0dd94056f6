"""Statistics of experiment grids: the numbers `ssal bench` reports.

Every function here is pure and unit-agnostic: accuracies may be fractions or
percentages, and the results come back in the same unit.

Seeds are the unit of replication. Two strategies run with the same seed share
the initial labelled set, the validation split and every other seed-driven
choice, so their results are *paired* and compared seed by seed
(:func:`paired_difference`), which removes the large seed-to-seed variation of
the initial set from the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Hashable, NamedTuple

from scipy import stats as _scipy_stats


class MeanStdCI(NamedTuple):
    """Mean, sample standard deviation and confidence-interval half-width of a
    sample. ``std`` and ``ci`` are None for a single value."""

    mean: float
    std: float | None
    ci: float | None


class PairedDifference(NamedTuple):
    """Mean of the per-seed differences ``a - b`` over the seeds both have, its
    CI half-width (paired t), and whether the CI excludes 0."""

    mean: float
    ci: float | None
    n: int
    resolved: bool
    seeds: tuple


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student t critical value t_{(1 + confidence) / 2, dof},
    e.g. t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) = 4.30265272975."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return float(_scipy_stats.t.ppf((1 + confidence) / 2, dof))


def mean_std_ci(values: Sequence[float], confidence: float = 0.95) -> MeanStdCI:
    """Mean, sample standard deviation and CI half-width of ``values``.

    For n values x_1..x_n:

        mean = sum(x_i) / n
        std  = sqrt(sum((x_i - mean)^2) / (n - 1))         (sample std, Bessel)
        ci   = t_{(1 + confidence) / 2, n - 1} * std / sqrt(n)

    so the interval ``mean +- ci`` is the Student t confidence interval of the
    mean (the seeds as a sample of the seed distribution). With a single value
    the spread is unknown: ``std`` and ``ci`` are None (not 0, which would
    claim certainty, and not nan, which is not valid JSON). An empty sequence
    raises ValueError.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_std_ci of no values")
    mean = math.fsum(xs) / n
    if n == 1:
        return MeanStdCI(mean, None, None)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return MeanStdCI(mean, std, t_quantile(confidence, n - 1) * std / math.sqrt(n))


def aubc(labelled: Sequence[float], accs: Sequence[float]) -> float:
    """Area under the budget curve, normalised by the width of the label range.

    With points (n_0, a_0) .. (n_k, a_k), n increasing (labelled images, accuracy):

        AUBC = sum_{i=1..k} (n_i - n_{i-1}) * (a_i + a_{i-1}) / 2  /  (n_k - n_0)

    i.e. the trapezoid-rule area divided by the label range, which makes it the
    mean accuracy over the budget range, in the unit of ``accs`` (a curve that
    is flat at 80% has AUBC 80%). It depends on the label schedule, so compare
    AUBCs of curves with the same ``labelled`` only. A single point has no
    range: its AUBC is its accuracy.
    """
    if len(labelled) != len(accs):
        raise ValueError(f"aubc: {len(labelled)} label counts but {len(accs)} accuracies")
    if not accs:
        raise ValueError("aubc of an empty curve")
    xs = [float(n) for n in labelled]
    ys = [float(a) for a in accs]
    if len(xs) == 1:
        return ys[0]
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"aubc: label counts must increase, got {xs}")
    area = math.fsum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]))
    return area / (xs[-1] - xs[0])


def labels_to_reach(labelled: Sequence[float], accs: Sequence[float], target: float) -> float | None:
    """Labels at which a (mean) learning curve first reaches ``target``,
    linearly interpolated between the two cycles around the crossing; None if it
    never does.

    If a_k >= target is the first such point and k > 0:

        labels = n_{k-1} + (n_k - n_{k-1}) * (target - a_{k-1}) / (a_k - a_{k-1})

    and n_0 when the first point already reaches it. The ISAL paper's
    annotation saving at matched accuracy is ``1 - labels / labels the
    baseline needs``.
    """
    for k, (n, a) in enumerate(zip(labelled, accs)):
        if a >= target:
            if k == 0:
                return float(n)
            n0, a0 = labelled[k - 1], accs[k - 1]
            return float(n0 + (n - n0) * (target - a0) / (a - a0))
    return None


def paired_difference(
    a_by_seed: Mapping[Hashable, float], b_by_seed: Mapping[Hashable, float], confidence: float = 0.95
) -> PairedDifference:
    """Paired comparison of two strategies run with the same seeds.

    Over the seeds s_1..s_n present in both mappings, d_i = a(s_i) - b(s_i):

        mean = sum(d_i) / n
        ci   = t_{(1 + confidence) / 2, n - 1} * sd(d) / sqrt(n)      (paired t)
        resolved = the interval [mean - ci, mean + ci] excludes 0, i.e. |mean| > ci

    With n = 1 there is no CI (None) and the difference is never resolved. A
    difference that is exactly constant over the seeds (sd = 0) has ci = 0 and is
    resolved unless it is 0 (cycle 0, where both strategies train on the same
    initial set, gives exactly 0: not resolved). Seeds in only one mapping are
    ignored; no common seed raises ValueError.
    """
    seeds = tuple(s for s in a_by_seed if s in b_by_seed)
    if not seeds:
        raise ValueError("paired_difference: no seed in common")
    diffs = [float(a_by_seed[s]) - float(b_by_seed[s]) for s in seeds]
    est = mean_std_ci(diffs, confidence)
    resolved = est.ci is not None and abs(est.mean) > est.ci
    return PairedDifference(est.mean, est.ci, len(seeds), resolved, seeds)


__all__ = ["MeanStdCI", "PairedDifference", "aubc", "labels_to_reach", "mean_std_ci", "paired_difference", "t_quantile"]
