"""Plots people would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .utils import atomic_file  # noqa: E402


def plot_curve(records: list[dict], path: str | Path, title: str = "") -> None:
    """Learning curve: test accuracy (and validation accuracy when present)
    against the number of labelled images, one point per cycle. Written
    atomically."""
    path = Path(path)
    xs = [r["n_labelled"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, [100 * r["test_acc"] for r in records], "o-", label="test")
    if any(r.get("val_acc") is not None for r in records):
        ax.plot(
            xs, [100 * r["val_acc"] if r.get("val_acc") is not None else float("nan") for r in records], "s--", alpha=0.6, label="validation"
        )
    ax.set_xlabel("labelled images")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_atomic(fig, path)


def plot_grid(runs: dict[str, list[list[dict]]], path: str | Path, title: str = "") -> None:
    """Mean +- std learning curves of several strategies over seeds."""
    import statistics

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for strategy, rs in runs.items():
        n = min(len(r) for r in rs)
        xs = [rs[0][c]["n_labelled"] for c in range(n)]
        accs = [[100 * r[c]["test_acc"] for r in rs] for c in range(n)]
        mean = [statistics.mean(a) for a in accs]
        std = [statistics.stdev(a) if len(a) > 1 else 0.0 for a in accs]
        ax.plot(xs, mean, "o-", label=f"{strategy} (n={len(rs)})")
        ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_atomic(fig, path)


def _save_atomic(fig: plt.Figure, path: Path) -> None:
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
