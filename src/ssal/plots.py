"""Plots people would rather look at than read.

Each ``*_figure`` function builds a matplotlib figure from run records (the
lines of ``results.jsonl``) and returns it without saving, so tests can inspect
its artists; each ``plot_*`` function builds the figure and writes it
atomically, as PNG and (except the per-cycle curve of a run) as SVG beside it.

The figures of ``ssal report``:

- :func:`grid_figure`: learning curves, mean +- std over seeds, one line and
  band per group of runs;
- :func:`picks_figure`: the classes of the images picked in each cycle, stacked
  bars (the distribution-shift figure of MoBYv2AL, Caramalau et al., BMVC 2022);
- :func:`heatmap_figure`: per-class test accuracy over cycles;
- :func:`embedding_figure`: a 2-D embedding (t-SNE or UMAP) of a model's
  features with the labelled, last-picked and unlabelled pool images marked.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .utils import atomic_file  # noqa: E402

#: marker kinds of :func:`embedding_figure`, drawn in this order
EMBED_POOL, EMBED_LABELLED, EMBED_PICKED = 0, 1, 2


def curve_figure(records: list[dict], title: str = "") -> plt.Figure:
    """Learning curve of one run: test accuracy (and validation accuracy when
    present) against the number of labelled images, one point per cycle."""
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
    return fig


def plot_curve(records: list[dict], path: str | Path, title: str = "", svg: bool = False) -> list[Path]:
    """Write :func:`curve_figure` to ``path`` (PNG) atomically, and to
    ``path`` with suffix ``.svg`` when ``svg``. Returns the files written."""
    return _save_atomic(curve_figure(records, title), Path(path), svg)


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def grid_figure(runs: dict[str, list[list[dict]]], title: str = "", metric: str = "test_acc") -> plt.Figure:
    """Mean +- std learning curves of groups of runs (one group per strategy or
    variant, one run per seed): one line per group, with a band of one standard
    deviation over its runs. Cycles missing from some runs (an unfinished run)
    are averaged over the runs that have them; x is the mean number of labelled
    images of a cycle."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rs in runs.items():
        rs = [r for r in rs if r]
        if not rs:
            continue
        n = max(len(r) for r in rs)
        xs, mean, std = [], [], []
        for c in range(n):
            have = [r[c] for r in rs if len(r) > c]
            xs.append(statistics.mean(rec["n_labelled"] for rec in have))
            m, s = _mean_std([100 * rec[metric] if rec.get(metric) is not None else float("nan") for rec in have])
            mean.append(m)
            std.append(s)
        (line,) = ax.plot(xs, mean, "o-", label=f"{name} (n={len(rs)})")
        ax.fill_between(
            xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2, color=line.get_color(), linewidth=0
        )
    ax.set_xlabel("labelled images")
    ax.set_ylabel(("test" if metric == "test_acc" else metric.replace("_acc", "")) + " accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    return fig


def plot_grid(runs: dict[str, list[list[dict]]], path: str | Path, title: str = "", svg: bool = True) -> list[Path]:
    """Write :func:`grid_figure` (mean +- std learning curves of several groups
    of runs over seeds) to ``path`` (PNG) and, when ``svg``, beside it as SVG."""
    return _save_atomic(grid_figure(runs, title), Path(path), svg)


def _panels(n: int, width: float = 5.0, height: float = 3.6, max_cols: int = 3):
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), dpi=100, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None and len(class_names) == num_classes:
        return [str(c) for c in class_names]
    return [f"class {c}" for c in range(num_classes)]


def mean_picks(runs: list[list[dict]]) -> tuple[list[int], np.ndarray]:
    """(cycles, picks) of a group of runs: the cycles in which any run picked
    images, and a (cycles x classes) array of the number picked per class,
    averaged over the runs that reached that cycle."""
    by_cycle: dict[int, list[list[int]]] = {}
    for records in runs:
        for r in records:
            if r.get("n_picked", sum(r.get("picked_per_class", []))) and r.get("picked_per_class"):
                by_cycle.setdefault(int(r["cycle"]), []).append(list(r["picked_per_class"]))
    cycles = sorted(by_cycle)
    if not cycles:
        return [], np.zeros((0, 0))
    k = max(len(p) for ps in by_cycle.values() for p in ps)
    picks = np.array([np.mean([p + [0] * (k - len(p)) for p in by_cycle[c]], axis=0) for c in cycles], dtype=float)
    return cycles, picks


def picks_figure(groups: dict[str, list[list[dict]]], class_names: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """Classes of the images picked in each cycle: one panel per group (the mean
    over its runs), one stacked bar per selecting cycle, one segment per class.
    A strategy that drifts towards a few classes shows as bars dominated by a
    few colours (MoBYv2AL, Caramalau et al., BMVC 2022, Sec. 4.3)."""
    fig, axes = _panels(max(len(groups), 1))
    panels = {name: mean_picks(runs) for name, runs in groups.items()}
    cmap = plt.get_cmap("tab10" if max((p.shape[1] for _, p in panels.values()), default=0) <= 10 else "tab20")
    handles = None
    for ax, (name, (cycles, picks)) in zip(axes, panels.items()):
        ax.set_title(name)
        ax.set_xlabel("cycle (selection made after training)")
        ax.set_ylabel("images picked")
        if not cycles:
            ax.text(0.5, 0.5, "no selection yet", ha="center", va="center", transform=ax.transAxes)
            continue
        names = _class_names(picks.shape[1], class_names)
        bottom = np.zeros(len(cycles))
        for c in range(picks.shape[1]):
            ax.bar([str(x) for x in cycles], picks[:, c], bottom=bottom, color=cmap(c % cmap.N), label=names[c], width=0.7)
            bottom += picks[:, c]
        handles = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))
    if handles is not None:  # outside the panels, on the right: saving with a tight bounding box keeps it
        fig.legend(*handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def plot_picks(groups: dict[str, list[list[dict]]], path: str | Path, class_names: Sequence[str] | None = None, title: str = "") -> list[Path]:
    """Write :func:`picks_figure` to ``path`` (PNG) and beside it as SVG."""
    return _save_atomic(picks_figure(groups, class_names, title), Path(path), True)


def mean_per_class_acc(runs: list[list[dict]]) -> tuple[list[float], np.ndarray]:
    """(labelled, acc) of a group of runs: the mean number of labelled images of
    each cycle and a (classes x cycles) array of per-class test accuracy in %,
    averaged over the runs that reached the cycle (NaN: a class absent from the
    test split)."""
    n = max((len(r) for r in runs), default=0)
    xs: list[float] = []
    cols = []
    for c in range(n):
        have = [r[c] for r in runs if len(r) > c and r[c].get("per_class_acc")]
        if not have:
            continue
        xs.append(statistics.mean(rec["n_labelled"] for rec in have))
        k = max(len(rec["per_class_acc"]) for rec in have)
        mat = np.array([[_nan(v) for v in rec["per_class_acc"]] + [np.nan] * (k - len(rec["per_class_acc"])) for rec in have], dtype=float)
        cols.append(100 * _nanmean_cols(mat))
    if not cols:
        return [], np.zeros((0, 0))
    k = max(len(c) for c in cols)
    return xs, np.array([list(c) + [np.nan] * (k - len(c)) for c in cols], dtype=float).T


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _nanmean_cols(mat: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN for a column with none."""
    out = np.full(mat.shape[1], np.nan)
    for j in range(mat.shape[1]):
        col = mat[:, j][np.isfinite(mat[:, j])]
        if col.size:
            out[j] = col.mean()
    return out


def heatmap_figure(groups: dict[str, list[list[dict]]], class_names: Sequence[str] | None = None, title: str = "") -> plt.Figure:
    """Per-class test accuracy (%) over cycles: one panel per group (mean over
    its runs), rows = classes, columns = cycles labelled by the number of
    labelled images; the value is written in each cell when there are few."""
    fig, axes = _panels(max(len(groups), 1), width=5.5, height=3.8)
    image = None
    for ax, (name, runs) in zip(axes, groups.items()):
        xs, acc = mean_per_class_acc(runs)
        ax.set_title(name)
        if acc.size == 0:
            ax.text(0.5, 0.5, "no per-class accuracy", ha="center", va="center", transform=ax.transAxes)
            continue
        image = ax.imshow(acc, aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
        ax.set_xticks(range(len(xs)), [f"{x:.0f}" for x in xs], rotation=45 if len(xs) > 6 else 0, fontsize=8)
        ax.set_yticks(range(acc.shape[0]), _class_names(acc.shape[0], class_names), fontsize=8)
        ax.set_xlabel("labelled images")
        if acc.size <= 120:
            for (i, j), v in np.ndenumerate(acc):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
    fig.tight_layout(rect=(0, 0, 1, 0.95 if title else 1))
    if image is not None:
        fig.colorbar(image, ax=axes, label="test accuracy (%)", shrink=0.9)
    if title:
        fig.suptitle(title)
    return fig


def plot_heatmap(groups: dict[str, list[list[dict]]], path: str | Path, class_names: Sequence[str] | None = None, title: str = "") -> list[Path]:
    """Write :func:`heatmap_figure` to ``path`` (PNG) and beside it as SVG."""
    return _save_atomic(heatmap_figure(groups, class_names, title), Path(path), True)


def embedding_figure(
    coords: np.ndarray,
    kind: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str = "",
    method: str = "t-SNE",
) -> plt.Figure:
    """A 2-D embedding of pool images: ``coords`` (N x 2), ``kind`` (N,) one of
    :data:`EMBED_POOL` (unlabelled: small grey dots), :data:`EMBED_LABELLED`
    (circles coloured by their label) or :data:`EMBED_PICKED` (the last
    selection: stars coloured by their label, outlined in black); ``labels`` (N,)
    the class of labelled and picked images (ignored for the pool). One
    scatter collection per kind present, in that order."""
    coords, kind, labels = np.asarray(coords, dtype=float), np.asarray(kind), np.asarray(labels)
    k = int(labels[kind != EMBED_POOL].max()) + 1 if bool((kind != EMBED_POOL).any()) else 0
    k = max(k, len(class_names) if class_names is not None else 0)
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    m = kind == EMBED_POOL
    if m.any():
        ax.scatter(coords[m, 0], coords[m, 1], s=4, c="#b0b0b0", alpha=0.5, linewidths=0, label=f"unlabelled pool ({int(m.sum())})")
    m = kind == EMBED_LABELLED
    if m.any():
        ax.scatter(coords[m, 0], coords[m, 1], s=16, c=[cmap(int(c) % cmap.N) for c in labels[m]], alpha=0.9, linewidths=0, label=f"labelled ({int(m.sum())})")
    m = kind == EMBED_PICKED
    if m.any():
        ax.scatter(
            coords[m, 0], coords[m, 1], s=70, marker="*", c=[cmap(int(c) % cmap.N) for c in labels[m]], edgecolors="black",
            linewidths=0.6, label=f"last picked ({int(m.sum())})",
        )
    from matplotlib.lines import Line2D

    handles, names = [], []
    proxies = {  # legend entries in neutral colours: the scatter colours are the classes
        "unlabelled pool": Line2D([], [], marker="o", linestyle="", color="#b0b0b0", markersize=3),
        "labelled": Line2D([], [], marker="o", linestyle="", color="#555555", markersize=5),
        "last picked": Line2D([], [], marker="*", linestyle="", markerfacecolor="white", markeredgecolor="black", markersize=10),
    }
    for coll in ax.collections:
        label = str(coll.get_label())
        handles.append(proxies[label.rsplit(" (", 1)[0]])
        names.append(label)
    for c, name in enumerate(_class_names(k, class_names)):
        handles.append(Line2D([], [], marker="o", linestyle="", color=cmap(c % cmap.N), markersize=5))
        names.append(name)
    ax.legend(handles, names, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{method} 1")
    ax.set_ylabel(f"{method} 2")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_embedding(
    coords: np.ndarray,
    kind: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
    method: str = "t-SNE",
) -> list[Path]:
    """Write :func:`embedding_figure` to ``path`` (PNG) and beside it as SVG."""
    return _save_atomic(embedding_figure(coords, kind, labels, class_names, title, method), Path(path), True)


def embed_2d(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N x 2 coordinates, method name) of ``features`` (N x D): UMAP when the
    ``umap`` package is importable, else t-SNE (scikit-learn, PCA
    initialisation, after a PCA to 50 dimensions). Deterministic for a seed."""
    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0]
    if n < 3:
        return np.zeros((n, 2)) if x.shape[1] < 2 else x[:, :2].astype(float), "features"
    try:
        import umap  # type: ignore[import-not-found]

        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, n - 1))
        return np.asarray(reducer.fit_transform(x), dtype=float), "UMAP"
    except ImportError:
        pass
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed)
    return np.asarray(tsne.fit_transform(x), dtype=float), "t-SNE"


def _save_atomic(fig: plt.Figure, path: Path, svg: bool = False) -> list[Path]:
    """Save ``fig`` to ``path`` as PNG and, when ``svg``, to ``path`` with suffix
    ``.svg``, each atomically; close the figure. Returns the files written."""
    written = []
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.1)
        written.append(path)
        if svg:
            svg_path = path.with_suffix(".svg")
            with atomic_file(svg_path) as tmp:
                fig.savefig(tmp, format="svg", bbox_inches="tight", pad_inches=0.1)
            written.append(svg_path)
    finally:
        plt.close(fig)
    return written
