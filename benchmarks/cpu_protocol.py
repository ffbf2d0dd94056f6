"""The CPU active-learning protocol of BENCHMARKS.md (superseded by
`ssal bench benchmarks/grids/cpu-protocol-*.yaml`, which runs the same runs into
the same folders and adds CIs, AUBC and paired comparisons): for one dataset, run
each strategy with each seed (supervised training, small CNN, 1,000 initial
labels, +1,000 per cycle, 5 cycles), then summarise mean +- std per cycle.

Runs are resumable: rerunning the same command skips finished runs and resumes
an interrupted one, so the grid can be spread over several sessions.

    python benchmarks/cpu_protocol.py --preset cpu-fashionmnist --out runs/bench/fm
    python benchmarks/cpu_protocol.py --preset cpu-cifar10 \
        --set dataset=imagefolder:/tmp/cifar10-jpeg --out runs/bench/c10
    python benchmarks/cpu_protocol.py --out runs/bench/fm --summary-only

Named variants compare training modes (each NAME gets its own row):

    python benchmarks/cpu_protocol.py --preset cpu-cifar10 --out runs/bench/c10-modes \
        --variant "supervised-random:strategy=random train.epochs=60" \
        --variant "joint-coreset:strategy=coreset train.mode=joint train.epochs=12"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ssal.config import resolve_config
from ssal.loop import run_experiment
from ssal.plots import plot_grid
from ssal.stats import labels_to_reach


def variants(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(row name, overrides): one per --variant, else one per strategy."""
    if args.variant:
        out = []
        for v in args.variant:
            name, _, rest = v.partition(":")
            out.append((name, rest.split()))
        return out
    return [(s, [f"strategy={s}"]) for s in args.strategies]


def run_grid(args: argparse.Namespace) -> None:
    for seed in args.seeds:
        for name, overrides in variants(args):
            out = Path(args.out) / f"{name}-seed{seed}"
            cfg = resolve_config(args.preset, [*args.set, *overrides, f"seed={seed}", f"out={out}"])
            state_path = out / "state.json"
            if state_path.exists() and json.loads(state_path.read_text())["next_cycle"] >= cfg.cycles:
                print(f"[skip] {out} is complete", flush=True)
                continue
            t0 = time.perf_counter()
            print(f"[run] {out}", flush=True)
            run_experiment(cfg, resume=True, progress=False)
            (out / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")


def load_runs(root: Path) -> dict[str, list[list[dict]]]:
    runs: dict[str, list[list[dict]]] = {}
    for res in sorted(root.glob("*-seed*/results.jsonl")):
        strategy = res.parent.name.rsplit("-seed", 1)[0]
        runs.setdefault(strategy, []).append([json.loads(x) for x in res.read_text().splitlines()])
    return runs


def summarise(root: Path, baseline: str = "random") -> str:
    runs = load_runs(root)
    if not runs:
        return f"no results under {root}"
    lines = []
    ncyc = max(len(r) for rs in runs.values() for r in rs)
    longest = max((r for rs in runs.values() for r in rs), key=len)
    labelled = [rec["n_labelled"] for rec in longest]
    target = None
    if baseline in runs and all(len(r) == ncyc for r in runs[baseline]):
        target = statistics.mean(100 * r[-1]["test_acc"] for r in runs[baseline])
    saving_col = f" labels to {baseline}'s final {target:.2f}% (saving) |" if target is not None else ""
    header = "| variant | seeds | " + " | ".join(f"cycle {c}" for c in range(ncyc)) + " | train s per cycle | min/run |" + saving_col
    lines += [header, "|" + "---|" * (ncyc + 4 + bool(saving_col))]
    for strategy, rs in runs.items():
        cells = []
        for c in range(ncyc):
            accs = [100 * r[c]["test_acc"] for r in rs if len(r) > c]
            if not accs:
                cells.append("-")
            elif len(accs) == 1:
                cells.append(f"{accs[0]:.2f}")
            else:
                cells.append(f"{statistics.mean(accs):.2f} +- {statistics.stdev(accs):.2f}")
        walls = []
        for r in rs:
            walls.append(sum(x["seconds_train"] + x["seconds_eval"] + x["seconds_select"] for x in r) / 60)
        train_s = [statistics.mean(r[c]["seconds_train"] for r in rs if len(r) > c) for c in range(ncyc) if any(len(r) > c for r in rs)]
        per_cycle = "/".join(f"{t:.0f}" for t in train_s)
        row = f"| {strategy} | {len(rs)} | " + " | ".join(cells) + f" | {per_cycle} | {statistics.mean(walls):.1f} |"
        if saving_col:
            complete = [r for r in rs if len(r) == ncyc]
            mean_curve = [statistics.mean(100 * r[c]["test_acc"] for r in complete) for c in range(ncyc)] if complete else []
            need = labels_to_reach(labelled, mean_curve, target) if mean_curve else None
            row += " - |" if need is None else f" {need:.0f} ({100 * (1 - need / labelled[-1]):.0f}%) |"
        lines.append(row)
    lines.insert(0, "labelled per cycle: " + ", ".join(map(str, labelled)) + "\n")
    plot_grid(runs, root / "curves.png", title=root.name)
    text = "\n".join(lines)
    (root / "summary.md").write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-fashionmnist")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides")
    p.add_argument("--strategies", nargs="*", default=["random", "entropy", "coreset"])
    p.add_argument("--variant", action="append", default=[], metavar="NAME:k=v k=v", help="a named set of overrides (repeatable)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--out", required=True)
    p.add_argument("--summary-only", action="store_true")
    args = p.parse_args(argv)
    if not args.summary_only:
        run_grid(args)
    print(summarise(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
