"""kcenter_greedy against the straightforward k-center greedy, same features, same process.

The straightforward version (Sener & Savarese's code, reused by Sequential-GCN and
MoBYv2AL) keeps min distances to the centres and, per pick, recomputes the
distance of every point to the newest centre. Three variants are timed:

* ``torch-f64``: torch matrix-vector products in float64 (exact enough to be the
  reference: its picks must equal kcenter_greedy's);
* ``sklearn-f64``: ``sklearn.metrics.pairwise_distances`` per pick, float64
  (``--sklearn``; slow; picks must be equal too);
* ``torch-f32``: the same in float32, as usually written (``--no-f32`` skips it);
  timed for reference, its picks are compared but may differ where two
  candidates are closer than float32 rounding.

    PYTHONPATH=src python benchmarks/bench_kcenter.py --data gaussian --sklearn
    PYTHONPATH=src python benchmarks/bench_kcenter.py --data clustered --out bench.json
    PYTHONPATH=src python benchmarks/bench_kcenter.py --n 20000 --d 128 --initial 0 --budget 500
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from typing import Callable

import numpy as np
import torch

from ssal.strategies.kcenter import kcenter_greedy


def make_features(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    """Seeded float32 (n, d) features: ``gaussian`` (iid N(0,1)), ``clustered``
    (100 Gaussian clusters, centres N(0,1), spread 0.5, like class-structured
    network features), ``relu`` (the clustered features through a ReLU: non-negative
    with a large common mean, like a CNN's pooled features) or ``lowrank`` (rank-16
    signal plus 0.1 noise)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, d, generator=g)
    if kind in ("clustered", "relu"):
        means = torch.randn(100, d, generator=g)
        x = means[torch.randint(0, 100, (n,), generator=g)] + 0.5 * torch.randn(n, d, generator=g)
        return x.relu() if kind == "relu" else x
    if kind == "lowrank":
        return torch.randn(n, 16, generator=g) @ torch.randn(16, d, generator=g) + 0.1 * torch.randn(n, d, generator=g)
    raise SystemExit(f"unknown --data {kind!r}; choose gaussian, clustered, relu or lowrank")


def straightforward_torch(features: torch.Tensor, initial: torch.Tensor, budget: int, dtype: torch.dtype) -> torch.Tensor:
    """Textbook k-center greedy: one pass over all points per pick (squared distances)."""
    x = features.to(dtype)
    sq = x.square().sum(1)
    mind = torch.full((x.shape[0],), math.inf, dtype=dtype)
    for s in range(0, initial.numel(), 256):  # distances to the initial centres, 256 at a time
        c = initial[s : s + 256]
        mind = torch.minimum(mind, (sq.unsqueeze(1) + sq[c] - 2 * x @ x[c].T).min(1).values)
    mind[initial] = -math.inf
    picks = []
    for _ in range(budget):
        j = int(torch.argmax(mind))
        picks.append(j)
        mind = torch.minimum(mind, sq + sq[j] - 2 * (x @ x[j]))
        mind[j] = -math.inf
    return torch.tensor(picks, dtype=torch.long)


def straightforward_sklearn(features: torch.Tensor, initial: torch.Tensor, budget: int) -> torch.Tensor:
    """The same with sklearn ``pairwise_distances`` per pick, as in Sener & Savarese's code."""
    from sklearn.metrics import pairwise_distances

    x = features.double().numpy()
    init = initial.numpy()
    mind = np.full(x.shape[0], np.inf)
    for s in range(0, init.size, 256):
        mind = np.minimum(mind, pairwise_distances(x, x[init[s : s + 256]]).min(1))
    mind[init] = -np.inf
    picks = []
    for _ in range(budget):
        j = int(np.argmax(mind))
        picks.append(j)
        mind = np.minimum(mind, pairwise_distances(x, x[j : j + 1]).ravel())
        mind[j] = -np.inf
    return torch.tensor(picks, dtype=torch.long)


def timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--initial", type=int, default=1000)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--data", default="gaussian", help="gaussian | clustered | relu | lowrank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn", action="store_true", help="also time the sklearn per-pick version (slow)")
    ap.add_argument("--no-f32", action="store_true", help="skip the float32 straightforward version")
    ap.add_argument("--threads", type=int, help="torch threads for the straightforward versions (default: torch's)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # kcenter_greedy runs on one thread whatever this is

    x = make_features(args.data, args.n, args.d, args.seed)
    initial = torch.randperm(args.n, generator=torch.Generator().manual_seed(args.seed + 1))[: args.initial]
    picks, t_fast = timed(lambda: kcenter_greedy(x, initial, args.budget))
    rows = [{"method": "kcenter_greedy", "seconds": t_fast, "same_picks": True, "first_difference": None}]
    runs: list[tuple[str, Callable[[], torch.Tensor], bool]] = [
        ("torch-f64 straightforward", lambda: straightforward_torch(x, initial, args.budget, torch.float64), True)
    ]
    if args.sklearn:
        runs.append(("sklearn-f64 straightforward", lambda: straightforward_sklearn(x, initial, args.budget), True))
    if not args.no_f32:
        runs.append(("torch-f32 straightforward", lambda: straightforward_torch(x, initial, args.budget, torch.float32), False))
    for name, fn, must_match in runs:
        ref, secs = timed(fn)
        diff = torch.nonzero(ref != picks)
        first = int(diff[0]) if diff.numel() else None
        if must_match and first is not None:
            raise SystemExit(f"{name} differs from kcenter_greedy at pick {first}: {int(ref[first])} vs {int(picks[first])}")
        rows.append({"method": name, "seconds": secs, "same_picks": first is None, "first_difference": first})

    print(
        f"\nk-center greedy, {args.data} features {args.n} x {args.d} float32, {args.initial} initial centres, "
        f"budget {args.budget}, seed {args.seed}, torch {torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print("| method | seconds | x slower than kcenter_greedy | same picks |")
    print("|---|---:|---:|---|")
    for r in rows:
        same = "yes" if r["same_picks"] else f"no (first at pick {r['first_difference']})"
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['seconds'] / t_fast:.1f} | {same} |")
    if args.out:
        meta = {**vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
        with open(args.out, "w") as f:
            json.dump({"config": meta, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
