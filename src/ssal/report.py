"""``ssal report``: one self-contained HTML page (and a Markdown twin) about a
run folder or a grid of runs.

A *run* folder is what :class:`ssal.loop.Experiment` writes (``results.jsonl``,
``config.yaml``, ``state.json``, ``model.pt``); a *grid* folder holds run
folders (one level or two deep) and perhaps a ``summary.md`` /
``summary.json`` written by the benchmark tools. Runs of a grid are grouped by
their folder name without its ``-seed<k>`` suffix (``entropy-seed2`` belongs
to group ``entropy``).

The HTML file needs nothing else: plots are inlined as base64 PNG, the CSS is
inline, and it links to no other file or site, so it opens offline and can be
mailed around. The Markdown twin holds the same text and references the plots
as PNG files (SVG copies beside them) in a ``<name>_plots/`` folder next to it.

``results.jsonl`` is the source of truth; everything is recomputed from it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import SsalError

RESULTS_FILE = "results.jsonl"
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
SKIP_DIRS = {"tensorboard", "__pycache__"}
DEFAULT_EMBEDDING_POINTS = 2000


# -- loading ------------------------------------------------------------------
@dataclass
class RunInfo:
    """One run folder, as read from disk."""

    name: str  # path relative to the report's folder ("." for a single run)
    path: Path
    records: list[dict]
    config_text: str | None = None
    config: dict | None = None  # config.yaml as plain containers
    state: dict | None = None  # state.json
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Compute time of the run: seconds_train + seconds_eval + seconds_select of every cycle."""
        return sum(_seconds(r) for r in self.records)

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A value of the saved config by dotted key, or ``default``."""
        node: Any = self.config or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _seconds(rec: dict) -> float:
    return sum(float(rec.get(k) or 0.0) for k in ("seconds_train", "seconds_eval", "seconds_select"))


def read_results(path: Path) -> list[dict]:
    """The records of a ``results.jsonl``; SsalError naming the file and line
    when it is unreadable, empty, or a line is not a cycle record."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SsalError(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise SsalError(f"{path}: line {i} is not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict) or not all(k in rec for k in ("cycle", "n_labelled", "test_acc")):
            raise SsalError(f"{path}: line {i} is not a cycle record (needs cycle, n_labelled and test_acc)")
        if not isinstance(rec["test_acc"], (int, float)) or not isinstance(rec["n_labelled"], int):
            raise SsalError(f"{path}: line {i} has a non-numeric test_acc or n_labelled")
        records.append(rec)
    if not records:
        raise SsalError(f"{path} holds no cycle record")
    return records


def load_run(path: Path, name: str) -> RunInfo:
    """Read a run folder. A corrupt ``results.jsonl`` is an error; an unreadable
    ``config.yaml`` or ``state.json`` is only noted (the report shows less)."""
    run = RunInfo(name=name, path=path, records=read_results(path / RESULTS_FILE))
    cfg_file = path / CONFIG_FILE
    if cfg_file.is_file():
        try:
            from omegaconf import DictConfig, OmegaConf

            run.config_text = cfg_file.read_text()
            loaded = OmegaConf.create(run.config_text)
            if isinstance(loaded, DictConfig):
                run.config = OmegaConf.to_container(loaded)  # type: ignore[assignment]
            else:
                run.notes.append(f"{cfg_file} is not a mapping")
        except Exception as err:  # yaml errors and friends: the report still shows the results
            run.notes.append(f"{cfg_file} is unreadable ({type(err).__name__})")
    else:
        run.notes.append(f"{cfg_file} is missing")
    state_file = path / STATE_FILE
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            run.state = state if isinstance(state, dict) else None
        except (OSError, ValueError) as err:
            run.notes.append(f"{state_file} is unreadable ({type(err).__name__})")
    return run


def find_runs(root: Path) -> tuple[str, list[RunInfo], list[str]]:
    """(kind, runs, notes) of a folder: kind ``run`` when it holds a
    ``results.jsonl`` itself, else ``grid`` with the run folders found one or
    two levels below it (sorted by name). SsalError when the folder is missing
    or holds no run; notes name sub-folders that hold a config but no finished cycle."""
    if not root.exists():
        raise SsalError(f"no such folder: {root}")
    if not root.is_dir():
        raise SsalError(f"{root} is not a folder (give a run folder or a folder of runs)")
    if (root / RESULTS_FILE).is_file():
        return "run", [load_run(root, root.name or ".")], []
    runs: list[RunInfo] = []
    notes: list[str] = []

    def visit(folder: Path, depth: int) -> None:
        try:
            subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS)
        except OSError as err:
            raise SsalError(f"cannot list {folder} ({err.strerror or err})") from None
        for sub in subs:
            rel = sub.relative_to(root).as_posix()
            if (sub / RESULTS_FILE).is_file():
                runs.append(load_run(sub, rel))
            elif (sub / CONFIG_FILE).is_file() or (sub / STATE_FILE).is_file():
                notes.append(f"{rel}: no {RESULTS_FILE} yet (no finished cycle); left out")
            elif depth < 2:
                visit(sub, depth + 1)

    visit(root, 1)
    if not runs:
        raise SsalError(f"{root} holds no runs (no {RESULTS_FILE} in it or in its sub-folders)")
    return "grid", runs, notes


_SEED_SUFFIX = re.compile(r"[-_.]?seed[-_]?\d+$", re.IGNORECASE)


def group_runs(runs: list[RunInfo], summary: Any = None) -> dict[str, list[RunInfo]]:
    """Runs grouped as ``summary`` (a ``summary.json`` of ``ssal bench``: a
    ``groups`` list of ``{"group": name, "runs": [folder names]}``) says, else by
    folder name without a ``-seed<k>`` suffix (falling back to the strategy name
    when nothing else is left), in order of first appearance."""
    named: dict[str, str] = {}
    if isinstance(summary, dict) and isinstance(summary.get("groups"), list):
        for g in summary["groups"]:
            if isinstance(g, dict) and isinstance(g.get("runs"), list):
                named.update({str(r): str(g.get("group")) for r in g["runs"]})
    groups: dict[str, list[RunInfo]] = {}
    for run in runs:
        if run.name in named:
            groups.setdefault(named[run.name], []).append(run)
            continue
        name = _SEED_SUFFIX.sub("", run.name)
        if not name or name.endswith("/"):
            name = name + str(run.records[0].get("strategy", "run"))
        groups.setdefault(name, []).append(run)
    return groups


# -- tables -------------------------------------------------------------------
@dataclass
class Table:
    """A table rendered to both HTML and Markdown."""

    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    keyvalue: bool = False  # two columns, name and value: no header row in HTML, values left-aligned


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{100 * float(v):.2f}"


def _mean_std_pct(values: list[float], of: int | None = None) -> str:
    """``mean ± std`` in % of ``values`` (fractions), with ``(n=k)`` appended
    when only k of the ``of`` runs of a group have a value."""
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "-"
    text = f"{vals[0]:.2f}" if len(vals) == 1 else f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"
    return text + (f" (n={len(vals)})" if of is not None and len(vals) < of else "")


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{seconds:.1f} s")


def cycle_table(run: RunInfo) -> Table:
    """Per-cycle results of one run."""
    rows = []
    for r in run.records:
        rows.append(
            [
                str(r["cycle"]),
                str(r["n_labelled"]),
                _pct(r.get("test_acc")),
                _pct(r.get("val_acc")),
                str(r.get("n_picked", "-")),
                str(r.get("train_steps", "-")),
                "-" if r.get("final_train_loss") is None else f"{float(r['final_train_loss']):.4f}",
                f"{float(r.get('seconds_train') or 0):.1f}",
                f"{float(r.get('seconds_eval') or 0):.1f}",
                f"{float(r.get('seconds_select') or 0):.1f}",
            ]
        )
    return Table(
        ["cycle", "labelled", "test acc (%)", "val acc (%)", "picked", "train steps", "final train loss", "train s", "eval s", "select s"],
        rows,
        f"{run.name}: one row per cycle (accuracy after training on the labelled set; picks made after it)",
    )


def group_table(groups: dict[str, list[RunInfo]], metric: str = "test_acc") -> Table:
    """Mean ± std over the runs of each group of ``metric`` per cycle."""
    ncyc = max(len(r.records) for rs in groups.values() for r in rs)
    labelled = []
    for c in range(ncyc):
        ns = sorted({r.records[c]["n_labelled"] for rs in groups.values() for r in rs if len(r.records) > c})
        labelled.append("/".join(map(str, ns)))
    rows = []
    for name, rs in groups.items():
        cells = [_mean_std_pct([r.records[c].get(metric) for r in rs if len(r.records) > c], len(rs)) for c in range(ncyc)]
        rows.append([name, str(len(rs)), *cells])
    what = "test" if metric == "test_acc" else "validation"
    return Table(
        ["group", "runs", *[f"cycle {c} ({labelled[c]})" for c in range(ncyc)]],
        rows,
        f"{what} accuracy (%) per cycle, mean ± sample std over the runs of a group (labelled images in brackets; "
        "n=k: only k runs of the group reached the cycle)",
    )


def runs_table(groups: dict[str, list[RunInfo]]) -> Table:
    """One row per run: its group, seed, progress, final accuracies and compute time."""
    rows = []
    for name, rs in groups.items():
        for r in rs:
            last = r.records[-1]
            rows.append(
                [
                    r.name,
                    name,
                    str(last.get("seed", r.cfg("seed", "-"))),
                    str(len(r.records)),
                    str(last["n_labelled"]),
                    _pct(last.get("test_acc")),
                    _pct(last.get("val_acc")),
                    f"{r.seconds:.1f}",
                ]
            )
    return Table(["run", "group", "seed", "cycles", "labelled", "final test acc (%)", "final val acc (%)", "compute s"], rows, "every run")


def compute_table(groups: dict[str, list[RunInfo]]) -> Table:
    """Seconds of training, evaluation and selection per group, and the total."""
    rows = []
    tot = [0.0, 0.0, 0.0]
    for name, rs in groups.items():
        sums = [sum(float(rec.get(k) or 0.0) for r in rs for rec in r.records) for k in ("seconds_train", "seconds_eval", "seconds_select")]
        tot = [a + b for a, b in zip(tot, sums)]
        rows.append([name, str(len(rs)), *(f"{s:.1f}" for s in sums), f"{sum(sums):.1f}", _duration(sum(sums))])
    rows.append(["total", str(sum(len(rs) for rs in groups.values())), *(f"{s:.1f}" for s in tot), f"{sum(tot):.1f}", _duration(sum(tot))])
    return Table(
        ["group", "runs", "train s", "eval s", "select s", "total s", "total"],
        rows,
        "compute time: the sum of seconds_train, seconds_eval and seconds_select over every cycle of every run "
        "(data loading and SSL pretraining are not included)",
    )


def environment_table(runs: list[RunInfo]) -> Table:
    """The software and settings the runs recorded, one row per distinct combination."""
    combos: dict[tuple, list[str]] = {}
    for r in runs:
        st = r.state or {}
        key = (
            str(st.get("ssal_version", "-")),
            str(st.get("git_commit") or "-"),
            str(st.get("torch", "-")),
            str(st.get("python", "-")),
            str(r.cfg("device", "-")),
            str(r.cfg("threads", "-")),
        )
        combos.setdefault(key, []).append(r.name)
    rows = [[*k, _shorten(names)] for k, names in combos.items()]
    return Table(
        ["ssal", "git commit", "torch", "python", "device (config)", "threads (config, 0 = torch default)", "runs"],
        rows,
        "recorded by the runs (state.json and config.yaml)",
    )


def _shorten(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)} runs)"


def machine_table() -> Table:
    """The machine and software generating the report."""
    import torch

    from . import __version__

    cuda = torch.cuda.is_available()
    rows = [
        ["generated", datetime.now(timezone.utc).isoformat(timespec="seconds")],
        ["ssal", __version__],
        ["torch", torch.__version__],
        ["python", platform.python_version()],
        ["platform", platform.platform()],
        ["CPU cores", str(os.cpu_count())],
        ["torch threads", str(torch.get_num_threads())],
        ["CUDA", torch.cuda.get_device_name(0) if cuda else "not available"],
    ]
    return Table(["item", "value"], rows, "the machine that generated this report", keyvalue=True)


def overview_table(kind: str, root: Path, runs: list[RunInfo], groups: dict[str, list[RunInfo]]) -> Table:
    """What the report covers, in a few lines."""

    def distinct(key: str, cfg_key: str | None = None) -> str:
        """The values of a record field over the runs; the run's config fills
        in for records written before the field existed."""
        vals = sorted({str(r.records[0].get(key, r.cfg(cfg_key or key, "-"))) for r in runs})
        return ", ".join(vals)

    total = sum(r.seconds for r in runs)
    rows = [
        ["folder", str(root)],
        ["kind", "single run" if kind == "run" else f"grid of {len(runs)} runs in {len(groups)} groups"],
        ["dataset", distinct("dataset")],
        ["model", distinct("model")],
        ["train mode", distinct("mode", "train.mode")],
        ["strategy", distinct("strategy")],
        ["cycles", ", ".join(sorted({str(len(r.records)) for r in runs}))],
        ["total compute time", f"{_duration(total)} ({total:.1f} s over {sum(len(r.records) for r in runs)} cycles)"],
    ]
    return Table(["item", "value"], rows, keyvalue=True)


def json_tables(obj: Any, title: str = "summary.json") -> list[Table] | None:
    """Tables for a JSON aggregate of any shape: a list of flat objects is one
    table; an object holding such lists gives one table each plus one of its
    scalar entries. None when the shape does not fit (shown as JSON text)."""

    def flat(v: Any) -> bool:
        return isinstance(v, dict) and all(not isinstance(x, (dict, list)) or _short_list(x) for x in v.values())

    def rows_table(items: list[dict], caption: str) -> Table:
        keys: list[str] = []
        for it in items:
            keys += [k for k in it if k not in keys]
        return Table(keys, [[_cell(it.get(k)) for k in keys] for it in items], caption)

    if isinstance(obj, list) and obj and all(flat(x) for x in obj):
        return [rows_table(obj, title)]
    if isinstance(obj, dict):
        tables, scalars = [], []
        for k, v in obj.items():
            if isinstance(v, list) and v and all(flat(x) for x in v):
                tables.append(rows_table(v, f"{title}: {k}"))
            elif isinstance(v, dict) and v and all(flat(x) for x in v.values()):
                tables.append(rows_table([{"name": name, **x} for name, x in v.items()], f"{title}: {k}"))
            elif not isinstance(v, (dict, list)) or _short_list(v):
                scalars.append([str(k), _cell(v)])
            else:
                return None
        if scalars:
            tables.insert(0, Table(["key", "value"], scalars, title, keyvalue=True))
        return tables or None
    return None


def _short_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 20 and all(not isinstance(x, (dict, list)) for x in v)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return str(v)


# -- the embedding plot -----------------------------------------------------------
@dataclass
class Embedding:
    """Coordinates and marks of the embedding plot of one run."""

    coords: Any
    kind: Any
    labels: Any
    method: str
    class_names: list[str]
    caption: str


def run_embedding(run: RunInfo, n_points: int = DEFAULT_EMBEDDING_POINTS, seed: int = 0) -> Embedding | str:
    """2-D embedding of the features of ``run``'s last model (model.pt) on a
    random subset of its pool, rebuilt the way the loop does
    (:func:`ssal.loop.prepare_splits` from the saved config, the same
    normalisation, un-augmented images). The subset holds the last selection
    (at most a quarter of ``n_points``), labelled images (at most a quarter)
    and unlabelled pool images for the rest. Returns a one-line reason instead
    when it cannot be drawn (frozen mode, no model.pt, the data missing, ...)."""
    import numpy as np
    import torch

    from .augment import TestView, channel_stats
    from .config import resolve_config
    from .loop import prepare_splits
    from .modes import build_classifier
    from .plots import EMBED_LABELLED, EMBED_PICKED, EMBED_POOL, embed_2d
    from .train import predict

    model_file = run.path / "model.pt"
    if run.config is None:
        return f"no readable {CONFIG_FILE}"
    if run.cfg("train.mode") == "frozen":
        return "frozen mode: model.pt holds the head alone (the features are the SSL encoder's, the same every cycle)"
    if not model_file.is_file():
        return "no model.pt"
    pool_state = (run.state or {}).get("pool")
    if not isinstance(pool_state, dict) or not pool_state.get("order"):
        return f"no labelled pool in {STATE_FILE}"
    try:
        cfg = resolve_config(str(run.path / CONFIG_FILE), ["device=cpu"])
        splits = prepare_splits(cfg, progress=False)
    except SsalError as err:
        return f"cannot rebuild its data ({err})"
    pool = splits.pool
    order = torch.tensor(pool_state["order"], dtype=torch.long)
    if int(order.max()) >= len(pool) or order.unique().numel() != order.numel():
        return "the rebuilt pool does not match the run's (different dataset or data_root?)"
    revealed = pool.label(order)  # the labels the run itself obtained
    if not torch.equal(revealed, torch.tensor(pool_state.get("labels", []), dtype=torch.long)):
        return "the rebuilt pool's labels do not match the run's (different dataset or data_root?)"

    # which images the last model was trained on, and the last selection
    recs = run.records
    last = recs[-1]
    pick_rec = last if last.get("n_picked") else next((r for r in reversed(recs[:-1]) if r.get("n_picked")), None)
    n_lab = int(last["n_labelled"])
    if pick_rec is None:
        picked = order[:0]
        labelled = order[:n_lab]
        caption = "no selection has been made yet"
    else:
        start = int(pick_rec["n_labelled"])
        picked = order[start : start + int(pick_rec["n_picked"])]
        labelled = order[:n_lab] if pick_rec is last else torch.cat([order[:start], order[start + picked.numel() : n_lab]])
        who = "this model" if pick_rec is last else f"the cycle-{pick_rec['cycle']} model; labelled for the last cycle"
        caption = f"stars: images picked after cycle {pick_rec['cycle']} (by {who}), {picked.numel()} in all"

    g = torch.Generator().manual_seed(seed)
    quarter = max(n_points // 4, 1)
    picked = picked[torch.randperm(picked.numel(), generator=g)[:quarter]]
    labelled = labelled[torch.randperm(labelled.numel(), generator=g)[:quarter]]
    taken = torch.zeros(len(pool), dtype=torch.bool)
    taken[order] = True
    unl = torch.nonzero(~taken).flatten()
    unl = unl[torch.randperm(unl.numel(), generator=g)[: max(n_points - picked.numel() - labelled.numel(), 0)]]
    idx = torch.cat([unl, labelled, picked])
    kind = np.array([EMBED_POOL] * unl.numel() + [EMBED_LABELLED] * labelled.numel() + [EMBED_PICKED] * picked.numel())
    labels = np.full(idx.numel(), -1)
    known = dict(zip(order.tolist(), revealed.tolist()))
    for i, j in enumerate(idx.tolist()):
        labels[i] = known.get(j, -1)

    if cfg.train.mode == "pretrain":
        meta = None
        folder = (run.state or {}).get("ssl_backbone")
        if folder and (Path(folder) / "meta.json").is_file():
            try:
                meta = json.loads((Path(folder) / "meta.json").read_text())
            except (OSError, ValueError):
                meta = None
        if meta is None:
            return "pretrain mode: the SSL cache's meta.json (its normalisation) is gone"
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
    else:
        mean, std = channel_stats(pool.images)
    model = build_classifier(cfg, len(splits.classes), int(pool.images.shape[1]))
    try:
        model.load_state_dict(torch.load(model_file, map_location="cpu"))
    except Exception as err:  # unpickling or shape errors: a model.pt that does not fit the config
        return f"{model_file} does not fit its config ({type(err).__name__})"
    _, feats = predict(
        model, pool.images[idx], TestView(mean, std), torch.device("cpu"), int(cfg.train.eval_batch_size), False, bool(cfg.train.channels_last)
    )
    coords, method = embed_2d(feats.numpy(), seed)
    caption = (
        f"{method} of the features of the last model (cycle {last['cycle']}, {n_lab} labels) on {idx.numel()} pool images: "
        f"{unl.numel()} unlabelled (grey), {labelled.numel()} labelled (coloured by class) and {picked.numel()} of the last picks; {caption}"
    )
    return Embedding(coords, kind, labels, method, list(splits.classes), caption)


# -- rendering ---------------------------------------------------------------------
@dataclass
class Plot:
    """A plot of the report: its PNG file, an anchor id and a caption."""

    id: str
    title: str
    png: Path
    caption: str = ""


@dataclass
class Report:
    """Everything the HTML page and the Markdown twin show."""

    title: str
    overview: Table
    result_tables: list[Table]
    run_tables: list[Table]
    aggregate_tables: list[Table]
    aggregate_texts: list[tuple[str, str]]  # (file name, text) of summary.md / summary.json shown as-is
    plots: list[Plot]
    plot_notes: list[str]
    configs: list[tuple[str, str]]
    environment: list[Table]
    compute: Table
    notes: list[str]


SECTIONS = [
    ("overview", "Overview"),
    ("results", "Results"),
    ("plots", "Plots"),
    ("compute", "Compute time"),
    ("environment", "Environment"),
    ("configs", "Configs"),
    ("notes", "Notes"),
]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower() or "x"


def build_report(
    root: str | Path,
    plots_dir: Path,
    embedding: bool = True,
    embedding_points: int = DEFAULT_EMBEDDING_POINTS,
    log: Callable[[str], None] = lambda s: None,
) -> Report:
    """Read ``root`` (a run or grid folder), write the plots into ``plots_dir``
    and gather the tables and texts of the report."""
    from .plots import plot_curve, plot_embedding, plot_grid, plot_heatmap, plot_picks

    root = Path(root)
    kind, runs, notes = find_runs(root)
    summary_json: Any = None
    if kind == "grid" and (root / "summary.json").is_file():
        try:
            summary_json = json.loads((root / "summary.json").read_text())
        except (OSError, ValueError) as err:
            notes.append(f"summary.json is unreadable ({type(err).__name__}); left out")
    groups = {runs[0].name: runs} if kind == "run" else group_runs(runs, summary_json)
    records = {name: [r.records for r in rs] for name, rs in groups.items()}
    for r in runs:
        notes += [f"{r.name}: {n}" for n in r.notes]

    # embeddings first: they load the dataset, which names the classes
    embeds: list[tuple[str, RunInfo, Embedding | str]] = []
    if embedding:
        for name, rs in groups.items():
            run = rs[0]
            log(f"embedding of {run.name} ...")
            embeds.append((name, run, run_embedding(run, embedding_points)))
    one_dataset = len({str(r.records[0].get("dataset")) for r in runs}) == 1
    class_names = next((e.class_names for _, _, e in embeds if isinstance(e, Embedding)), None) if one_dataset else None

    plots_dir.mkdir(parents=True, exist_ok=True)
    plots: list[Plot] = []
    plot_notes: list[str] = []
    title = root.resolve().name
    if kind == "run":
        run = runs[0]
        ttl = f"{run.records[0].get('dataset', '')} / {run.records[0].get('model', '')} / {run.records[0].get('strategy', '')}"
        plot_curve(run.records, plots_dir / "curves.png", ttl, svg=True)
        plots.append(Plot("plot-curves", "Learning curve", plots_dir / "curves.png", "test (and validation) accuracy after each cycle"))
    else:
        plot_grid(records, plots_dir / "curves.png", title)
        plots.append(
            Plot("plot-curves", "Learning curves", plots_dir / "curves.png", "test accuracy, mean ± one sample std over the runs (seeds) of each group")
        )
    plot_picks(records, plots_dir / "picks.png", class_names)
    plots.append(
        Plot(
            "plot-picks",
            "Classes of the picked images",
            plots_dir / "picks.png",
            "images picked per class after each cycle (mean over the runs of a group): the class distribution the strategy drifts towards",
        )
    )
    plot_heatmap(records, plots_dir / "per_class_acc.png", class_names)
    plots.append(
        Plot("plot-per-class", "Per-class test accuracy", plots_dir / "per_class_acc.png", "test accuracy (%) of each class after each cycle (mean over runs)")
    )
    if not embedding:
        plot_notes.append("embedding plots skipped (--no-embedding)")
    slugs: set[str] = set()
    for name, run, emb in embeds:
        if isinstance(emb, str):
            plot_notes.append(f"embedding of {run.name} skipped: {emb}")
            continue
        slug = _slug(name)
        slug = next(f"{slug}-{i}" for i in range(1, len(slugs) + 2) if f"{slug}-{i}" not in slugs) if slug in slugs else slug
        slugs.add(slug)
        png = plots_dir / f"embedding-{slug}.png"
        plot_embedding(emb.coords, emb.kind, emb.labels, png, emb.class_names, f"{run.name}", emb.method)
        plots.append(Plot(f"plot-embedding-{slug}", f"Feature embedding: {run.name}", png, emb.caption))

    result_tables: list[Table] = []
    run_tables: list[Table] = []
    if kind == "run":
        result_tables.append(cycle_table(runs[0]))
    else:
        result_tables.append(group_table(groups))
        if any(rec.get("val_acc") is not None for r in runs for rec in r.records):
            result_tables.append(group_table(groups, "val_acc"))
        result_tables.append(runs_table(groups))
        run_tables = [cycle_table(r) for r in runs]

    aggregate_tables: list[Table] = []
    aggregate_texts: list[tuple[str, str]] = []
    if kind == "grid":
        if summary_json is not None:
            tables = json_tables(summary_json)
            if tables is None:
                aggregate_texts.append(("summary.json", json.dumps(summary_json, indent=1)))
            else:
                aggregate_tables += tables
        sm = root / "summary.md"
        if sm.is_file():
            try:
                aggregate_texts.append(("summary.md", sm.read_text()))
            except (OSError, UnicodeDecodeError):
                notes.append("summary.md is unreadable; left out")

    configs = [(r.name, r.config_text if r.config_text is not None else "(no config.yaml)") for r in runs]
    return Report(
        title=f"ssal report: {title}",
        overview=overview_table(kind, root.resolve(), runs, groups),
        result_tables=result_tables,
        run_tables=run_tables,
        aggregate_tables=aggregate_tables,
        aggregate_texts=aggregate_texts,
        plots=plots,
        plot_notes=plot_notes,
        configs=configs,
        environment=[environment_table(runs), machine_table()],
        compute=compute_table(groups),
        notes=notes,
    )


CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ddd;padding-bottom:.3em}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #eee}
h3{font-size:1.05em}
nav ul{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.4em 1.2em}
a{color:#0b5cad}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
caption{caption-side:top;text-align:left;color:#555;font-size:.95em;padding-bottom:.3em}
th,td{border:1px solid #d4d4d4;padding:.25em .6em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
table.kv td,td.t{text-align:left;white-space:normal}
.scroll{overflow-x:auto}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0 2em}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.82em}
details{margin:.3em 0}
summary{cursor:pointer}
.note{color:#8a5a00}
"""


_NUMERIC = re.compile(r"^(-|[-+]?\d[\d.,/:]*( ± [\d.]+)?( \(n=\d+\))?( [\d.]+%?)?)$")


def _table_html(t: Table) -> str:
    out = ['<div class="scroll">', '<table class="kv">' if t.keyvalue else "<table>"]
    if t.caption:
        out.append(f"<caption>{html.escape(t.caption)}</caption>")
    if not t.keyvalue:
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in t.rows:
        if t.keyvalue:
            cells = [f"<th>{html.escape(row[0])}</th>", *(f"<td>{html.escape(c)}</td>" for c in row[1:])]
        else:
            cells = [f"<td>{html.escape(c)}</td>" if _NUMERIC.match(c) else f'<td class="t">{html.escape(c)}</td>' for c in row]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_md(t: Table) -> str:
    out = []
    if t.caption:
        out += [f"*{_md_escape(t.caption)}*", ""]
    out.append("| " + " | ".join(_md_escape(h) or " " for h in t.headers) + " |")
    out.append("|" + "---|" * len(t.headers))
    out += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in t.rows]
    return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escaped text with Markdown `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def markdown_to_html(text: str) -> str:
    """A small Markdown subset (``#`` headings, pipe tables, paragraphs, fenced
    code) as HTML, for the ``summary.md`` of a grid; everything is escaped."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
            if rows:
                out.append(_table_html(Table(rows[0], rows[1:])))
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(len(m.group(1)) + 2, 6)
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].lstrip().startswith(("|", "#", "```")):
                para.append(lines[i])
                i += 1
            out.append("<p>" + _inline(" ".join(para)) + "</p>")
        else:
            i += 1
    return "\n".join(out)


def render_html(rep: Report) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(rep.title)}</title><style>{CSS}</style></head><body>",
        f'<h1 id="top">{e(rep.title)}</h1>',
        "<nav><ul>" + "".join(f'<li><a href="#{sid}">{e(name)}</a></li>' for sid, name in SECTIONS) + "</ul></nav>",
        f'<h2 id="overview">Overview</h2>{_table_html(rep.overview)}',
        '<h2 id="results">Results</h2>',
    ]
    parts += [_table_html(t) for t in rep.result_tables]
    if rep.run_tables:
        parts.append("<h3>Per-cycle results of each run</h3>")
        parts += [f"<details><summary>{e(t.caption.split(':')[0])}</summary>{_table_html(t)}</details>" for t in rep.run_tables]
    if rep.aggregate_tables or rep.aggregate_texts:
        parts.append('<h3 id="aggregate">Aggregate written by the benchmark</h3>')
        parts += [_table_html(t) for t in rep.aggregate_tables]
        for name, text in rep.aggregate_texts:
            if name.endswith(".md"):
                parts.append(f"<details open><summary>{e(name)}</summary>{markdown_to_html(text)}</details>")
            else:
                parts.append(f"<details><summary>{e(name)}</summary><pre>{e(text)}</pre></details>")
    parts.append('<h2 id="plots">Plots</h2>')
    parts.append("<ul>" + "".join(f'<li><a href="#{p.id}">{e(p.title)}</a></li>' for p in rep.plots) + "</ul>")
    for p in rep.plots:
        data = base64.b64encode(p.png.read_bytes()).decode("ascii")
        parts.append(
            f'<figure id="{p.id}"><h3>{e(p.title)}</h3><img alt="{e(p.title)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(p.caption)}</figcaption></figure>"
        )
    parts += [f'<p class="note">{e(n)}</p>' for n in rep.plot_notes]
    parts.append(f'<h2 id="compute">Compute time</h2>{_table_html(rep.compute)}')
    parts.append('<h2 id="environment">Environment</h2>')
    parts += [_table_html(t) for t in rep.environment]
    parts.append('<h2 id="configs">Configs</h2><p>The resolved config of each run (its config.yaml).</p>')
    parts += [f"<details><summary>{e(name)}</summary><pre>{e(text)}</pre></details>" for name, text in rep.configs]
    parts.append('<h2 id="notes">Notes</h2>')
    notes = rep.notes or ["none"]
    parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append('<p><a href="#top">back to the top</a></p></body></html>')
    return "\n".join(parts) + "\n"


def render_markdown(rep: Report, md_path: Path) -> str:
    """The report as Markdown, the plots referenced relative to ``md_path``."""
    out = [f"# {rep.title}", ""]
    out += ["## Overview", "", _table_md(rep.overview), "## Results", ""]
    out += [_table_md(t) for t in rep.result_tables]
    if rep.run_tables:
        out += ["### Per-cycle results of each run", ""]
        for t in rep.run_tables:
            out += [f"<details><summary>{html.escape(t.caption.split(':')[0])}</summary>", "", _table_md(t), "</details>", ""]
    if rep.aggregate_tables or rep.aggregate_texts:
        out += ["### Aggregate written by the benchmark", ""]
        out += [_table_md(t) for t in rep.aggregate_tables]
        for name, text in rep.aggregate_texts:
            out += [f"From `{name}`:", ""]
            out += [text.rstrip(), ""] if name.endswith(".md") else ["```json", text.rstrip(), "```", ""]
    out += ["## Plots", ""]
    for p in rep.plots:
        rel = os.path.relpath(p.png, md_path.parent).replace(os.sep, "/")
        svg = p.png.with_suffix(".svg")
        svg_link = f" ([SVG]({os.path.relpath(svg, md_path.parent).replace(os.sep, '/')}))" if svg.is_file() else ""
        out += [f"### {p.title}", "", f"![{p.title}]({rel})", "", f"{p.caption}{svg_link}", ""]
    out += [f"*{n}*\n" for n in rep.plot_notes]
    out += ["## Compute time", "", _table_md(rep.compute), "## Environment", ""]
    out += [_table_md(t) for t in rep.environment]
    out += ["## Configs", ""]
    for name, text in rep.configs:
        out += [f"<details><summary>{html.escape(name)}</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>", ""]
    out += ["## Notes", ""]
    out += [f"- {n}" for n in (rep.notes or ["none"])]
    return "\n".join(out) + "\n"


def output_paths(root: str | Path, out: str | Path | None = None) -> tuple[Path, Path, Path]:
    """(html, markdown, plots folder): ``<root>/report.html`` by default, else
    ``out`` (its ``.md`` twin beside it), the plots in ``<stem>_plots/``."""
    html_path = Path(root) / "report.html" if out is None else Path(out)
    if html_path.suffix.lower() == ".md":
        html_path = html_path.with_suffix(".html")
    md_path = html_path.with_suffix(".md")
    return html_path, md_path, html_path.parent / f"{html_path.stem}_plots"


def write_report(
    root: str | Path,
    out: str | Path | None = None,
    embedding: bool = True,
    embedding_points: int = DEFAULT_EMBEDDING_POINTS,
    log: Callable[[str], None] = lambda s: None,
) -> tuple[Path, Path]:
    """Write the HTML report of a run or grid folder and its Markdown twin;
    returns their paths. SsalError (one line, naming the path) on bad input."""
    from .utils import atomic_write_text

    if embedding_points < 3:
        raise SsalError(f"invalid value --embedding-points {embedding_points}: must be at least 3")
    html_path, md_path, plots_dir = output_paths(root, out)
    t0 = time.perf_counter()
    rep = build_report(root, plots_dir, embedding, embedding_points, log)
    atomic_write_text(html_path, render_html(rep))
    atomic_write_text(md_path, render_markdown(rep, md_path))
    log(f"report written in {time.perf_counter() - t0:.1f} s")
    return html_path, md_path


__all__ = ["write_report", "build_report", "find_runs", "group_runs", "read_results", "run_embedding", "markdown_to_html"]
