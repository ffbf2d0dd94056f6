"""`ssal bench GRID.yaml`: run a grid of active-learning experiments (resumable,
optionally in parallel worker processes) and summarise it over seeds.

A grid file (YAML)::

    name: cpu-baselines                  # default: the file name
    preset: cpu-fashionmnist             # optional base preset or config YAML
    set: [data_root=../shared/data/fashion-mnist]   # overrides for every run
    out: runs/grids/cpu-baselines        # default runs/grids/<name>
    grid:                                # config key -> list of values; the product is taken
      strategy: [random, coreset, isal]
      seed: [0, 1, 2]
    variants:                            # optional named override sets: one more axis
      default: []
      ll: [strategy_options.mode=last_layer]
    run_name: "{strategy}-seed{seed}"    # optional folder-name template
    compare:                             # optional: more paired comparisons, group vs group
      - [coreset, isal]                  # group names: run names without the seed

Each run is one :func:`ssal.loop.run_experiment` in ``<out>/<run name>``; the
default run name is ``<dataset>-<mode>-<strategy>[-<variant>][-<other axis
values>]-seed<k>``. A *group* is the set of runs that differ only in the seed;
the summary (``<out>/summary.md``, ``<out>/summary.json``, ``<out>/curves.png``)
has one row per group, and compares every group with the ``random`` group
whose config differs only in the strategy, seed by seed (:mod:`ssal.stats`), and
each ``compare`` pair the same way (e.g. a joint-training group against a
supervised one, which no random baseline covers).

Everything is validated before anything runs; a bad grid raises
:class:`~ssal.errors.SsalError` naming the file and the field.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import string
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from .config import Config, resolve_config, to_yaml
from .errors import SsalError
from .stats import aubc, labels_to_reach, mean_std_ci, paired_difference
from .utils import atomic_write_json, atomic_write_text, resolve_device

GRID_KEYS = ("name", "preset", "set", "out", "grid", "variants", "run_name", "compare")
GRID_FILE = "grid.yaml"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
CURVES_FILE = "curves.png"
RUN_LOG = "bench.log"
LOCK_FILE = ".bench.lock"
EXIT_BUSY = 75  # a worker's exit code when another process holds the run's lock
BASELINE = "random"
CONFIDENCE = 0.95
# keys a grid may not set: the bench decides each run's folder
_RESERVED = ("out",)
# keys that say how or where a run executes, not what it is: a finished run
# whose saved config differs only here is still the same run (the thread count
# does move the numbers, float sums running in another order; the summary
# flags comparisons between runs on different thread counts)
_RUNTIME_ONLY = ("threads", "plot", "out")


@dataclass
class GridRun:
    """One run of a grid: its folder name, resolved config, and where it sits in
    the grid (axis values, variant, group)."""

    name: str
    cfg: DictConfig
    axes: dict[str, Any]
    variant: str | None
    group: str
    overrides: list[str]

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


@dataclass
class Grid:
    """A validated, expanded grid file."""

    path: Path
    name: str
    out: Path
    preset: str | None
    overrides: list[str]
    axes: dict[str, list]
    variants: dict[str, list[str]] | None
    run_name: str | None
    runs: list[GridRun] = field(default_factory=list)
    compare: list[tuple[str, str]] = field(default_factory=list)

    @property
    def sets_threads(self) -> bool:
        """Whether the grid itself sets the runs' torch threads."""
        keys = [o.split("=", 1)[0].strip() for o in self.overrides]
        keys += list(self.axes)
        keys += [o.split("=", 1)[0].strip() for ov in (self.variants or {}).values() for o in ov]
        return "threads" in keys


@dataclass
class RunStatus:
    """Where a run stands on disk: ``done``, ``partial`` (some cycles saved) or ``new``."""

    run: GridRun
    state: str
    cycles_done: int


# -- loading and validation ---------------------------------------------------


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("._-")


def _dataset_label(dataset: str) -> str:
    """Short folder-name form of a dataset: ``imagefolder:/tmp/cifar10-jpeg`` -> ``cifar10-jpeg``."""
    if dataset[:12].lower() == "imagefolder:":
        return _sanitise(Path(dataset[12:].rstrip("/")).name) or "imagefolder"
    return _sanitise(dataset)


def _value_text(value: Any) -> str:
    """A grid value as the right-hand side of a ``key=value`` override."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _value_label(key: str, value: Any) -> str:
    """A grid value as a part of a run's folder name: strings as they are,
    numbers after the key's last part (``train.epochs: 5`` -> ``epochs5``)."""
    last = key.rsplit(".", 1)[-1]
    if isinstance(value, str):
        return _sanitise(value)
    if isinstance(value, dict):
        return _sanitise("_".join(f"{k}_{_plain(v)}" for k, v in value.items())) or f"{last}_none"
    if isinstance(value, list):
        return f"{last}_" + (_sanitise("_".join(_plain(v) for v in value)) or "none")
    if isinstance(value, bool) or value is None:
        return f"{last}_{json.dumps(value)}"
    return f"{last}{_sanitise(json.dumps(value))}"


def _field_name(key: str) -> str:
    return key.replace(".", "_")


def _load_grid_yaml(path: Path) -> dict:
    if not path.is_file():
        raise SsalError(f"grid file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).strip().splitlines()[0]
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SsalError(f"{path}: not valid YAML ({problem}{where})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SsalError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise SsalError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}")
    return data


def _check_names(cfg: DictConfig) -> None:
    """Name checks of a resolved config that need no data: dataset, model, strategy."""
    from .data import DATASET_NAMES
    from .models import MODELS
    from .strategies import STRATEGIES

    ds = str(cfg.dataset)
    if ds not in DATASET_NAMES and ds[:12].lower() != "imagefolder:":
        raise SsalError(f"unknown dataset '{ds}'; choose one of: {', '.join(DATASET_NAMES)} or imagefolder:<path>")
    if cfg.model not in MODELS:
        raise SsalError(f"unknown model {cfg.model!r}; choose one of: {', '.join(sorted(MODELS))}")
    if cfg.strategy not in STRATEGIES:
        raise SsalError(f"unknown strategy {cfg.strategy!r}; choose one of: {', '.join(STRATEGIES)}")


def _check_run(cfg: DictConfig) -> None:
    """The checks :class:`ssal.loop.Experiment` makes before loading data."""
    from .modes import check_strategy_fits
    from .strategies import build_strategy

    _check_names(cfg)
    strategy = build_strategy(cfg.strategy, **dict(cfg.strategy_options))
    if cfg.initial_strategy != "random":
        build_strategy(cfg.initial_strategy, "initial_strategy_options", **dict(cfg.initial_strategy_options))
    check_strategy_fits(cfg, strategy)
    resolve_device(cfg.device)  # device=cuda on a machine without one fails here, not in a worker


def _override_list(path: Path, where: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SsalError(f"{path}: {where}: expected a list of key=value strings, got {value!r}")
    for item in value:
        if "=" not in item:
            raise SsalError(f"{path}: {where}: '{item}' is not of the form key=value")
        if item.split("=", 1)[0].strip() in _RESERVED:
            raise SsalError(f"{path}: {where}: '{item}': the bench sets each run's out; set the grid's top-level out instead")
    return list(value)


def _resolve(path: Path, where: str, preset: str | None, overrides: list[str], names: bool = True) -> DictConfig:
    try:
        cfg = resolve_config(preset, overrides)
        if names:
            _check_names(cfg)
        return cfg
    except SsalError as err:
        raise SsalError(f"{path}: {where}: {err}") from None


def _resolve_preset(path: Path, preset: str | None) -> str | None:
    """A preset name, or a config YAML path (as given, else relative to the grid file)."""
    if preset is None:
        return None
    if preset.endswith((".yaml", ".yml")) and not Path(preset).exists() and (path.parent / preset).exists():
        return str(path.parent / preset)
    return preset


def load_grid(path: str | Path, workers: int = 1) -> Grid:
    """Read, validate and expand a grid file: every run's config is resolved and
    checked, run names must be unique, and run folders already on disk must
    hold the same config. Raises :class:`SsalError` naming the file and field.

    ``workers`` > 1 sets each run's ``threads`` to max(1, cpu cores // workers)
    unless the grid sets ``threads`` itself (a run being resumed keeps the
    thread count it started with, so its resume check passes).
    """
    path = Path(path)
    data = _load_grid_yaml(path)
    unknown = [k for k in data if k not in GRID_KEYS]
    if unknown:
        raise SsalError(f"{path}: unknown top-level key '{unknown[0]}' (allowed: {', '.join(GRID_KEYS)})")

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _sanitise(name):
        raise SsalError(f"{path}: name: expected a non-empty string, got {name!r}")
    preset = data.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise SsalError(f"{path}: preset: expected a preset name or a YAML file, got {preset!r}")
    preset = _resolve_preset(path, preset)
    _resolve(path, "preset", preset, [], names=False)
    overrides = _override_list(path, "set", data.get("set"))
    _resolve(path, "set", preset, overrides)
    out = data.get("out", f"runs/grids/{_sanitise(name)}")
    if not isinstance(out, str) or not out.strip():
        raise SsalError(f"{path}: out: expected a folder path, got {out!r}")

    axes_raw = data.get("grid") or {}
    if not isinstance(axes_raw, dict):
        raise SsalError(f"{path}: grid: expected a mapping of config key -> list of values, got {axes_raw!r}")
    axes: dict[str, list] = {}
    for key, values in axes_raw.items():
        if not isinstance(key, str) or not key:
            raise SsalError(f"{path}: grid: config keys must be strings, got {key!r}")
        where = f"grid.{key}"
        if key in _RESERVED:
            raise SsalError(f"{path}: {where}: the bench sets each run's out; set the grid's top-level out instead")
        if not isinstance(values, list):
            raise SsalError(f"{path}: {where}: expected a list of values, got {values!r} (write [{values}] for one value)")
        if not values:
            raise SsalError(f"{path}: {where}: empty list: give at least one value")
        for v in values:
            if values.count(v) > 1:
                raise SsalError(f"{path}: {where}: value {v!r} appears twice")
            _resolve(path, where, preset, [*overrides, f"{key}={_value_text(v)}"])
        axes[key] = values

    variants_raw = data.get("variants")
    variants: dict[str, list[str]] | None = None
    if variants_raw is not None:
        if not isinstance(variants_raw, dict) or not variants_raw:
            raise SsalError(f"{path}: variants: expected a mapping of name -> list of key=value overrides, got {variants_raw!r}")
        variants = {}
        for vname, vover in variants_raw.items():
            if not isinstance(vname, str) or not _sanitise(vname):
                raise SsalError(f"{path}: variants: names must be non-empty strings, got {vname!r}")
            where = f"variants.{vname}"
            ov = _override_list(path, where, vover)
            _resolve(path, where, preset, [*overrides, *ov])
            variants[vname] = ov

    run_name = data.get("run_name")
    fields = ["dataset", "mode", "strategy", "variant", "seed", *(_field_name(k) for k in axes)]
    if run_name is not None:
        if not isinstance(run_name, str) or not run_name.strip():
            raise SsalError(f"{path}: run_name: expected a template string such as '{{strategy}}-seed{{seed}}', got {run_name!r}")
        try:
            used = [f for _, f, _, _ in string.Formatter().parse(run_name) if f is not None]
        except ValueError as err:
            raise SsalError(f"{path}: run_name: bad template ({err})") from None
        for f in used:
            if f not in fields:
                raise SsalError(f"{path}: run_name: unknown field '{{{f}}}' (available: {', '.join(sorted(set(fields)))})")

    grid = Grid(path, _sanitise(name), Path(out), preset, overrides, axes, variants, run_name)
    grid.runs = _expand(grid)
    grid.compare = _check_compare(path, data.get("compare"), grid.runs)
    _apply_threads(grid, workers)
    for run in grid.runs:
        _check_existing(grid, run)
    return grid


def _check_compare(path: Path, raw: Any, runs: list[GridRun]) -> list[tuple[str, str]]:
    """The grid's ``compare`` pairs: [group, other group] lists naming groups of
    this grid on the same dataset whose label schedules start alike."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SsalError(f"{path}: compare: expected a list of [group, other group] pairs, got {raw!r}")
    first = {}
    for run in runs:
        first.setdefault(run.group, run)
    pairs: list[tuple[str, str]] = []
    for i, pair in enumerate(raw):
        where = f"compare[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise SsalError(f"{path}: {where}: expected [group, other group], got {pair!r}")
        a, b = pair
        for g in (a, b):
            if g not in first:
                raise SsalError(f"{path}: {where}: unknown group '{g}' (groups: {', '.join(first)})")
        if a == b:
            raise SsalError(f"{path}: {where}: compares '{a}' with itself")
        ra, rb = first[a], first[b]
        if str(ra.cfg.dataset) != str(rb.cfg.dataset):
            raise SsalError(f"{path}: {where}: '{a}' and '{b}' use different datasets ({ra.cfg.dataset} vs {rb.cfg.dataset})")
        if int(ra.cfg.initial) != int(rb.cfg.initial):
            raise SsalError(
                f"{path}: {where}: '{a}' and '{b}' start at different label counts ({ra.cfg.initial} vs {rb.cfg.initial}); "
                "paired cycles need the same schedule"
            )
        if (a, b) in pairs:
            raise SsalError(f"{path}: {where}: [{a}, {b}] appears twice")
        pairs.append((a, b))
    return pairs


def _expand(grid: Grid) -> list[GridRun]:
    """The product of the axes (seed outermost, so a partly run grid has whole
    seeds), then the variants; every run's config resolved and checked."""
    keys = list(grid.axes)
    if "seed" in keys:
        keys.remove("seed")
        keys.insert(0, "seed")
    variant_items: list[tuple[str | None, list[str]]] = list(grid.variants.items()) if grid.variants else [(None, [])]
    runs: list[GridRun] = []
    seen: dict[str, str] = {}
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        axes = dict(zip(keys, combo))
        for variant, vover in variant_items:
            ov = [*grid.overrides, *(f"{k}={_value_text(axes[k])}" for k in grid.axes), *vover]
            desc = ", ".join([*(f"{k}={_value_text(axes[k])}" for k in grid.axes), *([f"variant {variant}"] if variant else [])])
            where = f"run ({desc})" if desc else "run"
            try:
                cfg = resolve_config(grid.preset, ov)
                _check_run(cfg)
            except SsalError as err:
                raise SsalError(f"{grid.path}: {where}: {err}") from None
            name, group = _run_name(grid, cfg, axes, variant)
            if not name:
                raise SsalError(f"{grid.path}: run_name: gives an empty folder name for {where}")
            if name in seen:
                raise SsalError(
                    f"{grid.path}: run_name: two runs get the folder name '{name}' ({seen[name]} and {desc}); "
                    "add the differing axis to run_name"
                )
            seen[name] = desc
            cfg.out = str(grid.out / name)
            runs.append(GridRun(name, cfg, axes, variant, group, ov))
    return runs


_SEED_MARK = "\x00"


def _run_name(grid: Grid, cfg: DictConfig, axes: dict[str, Any], variant: str | None) -> tuple[str, str]:
    """(run folder name, group label): the name with its seed part left out."""
    if grid.run_name is None:
        parts = [_dataset_label(str(cfg.dataset)), str(cfg.train.mode), str(cfg.strategy)]
        if variant:
            parts.append(_sanitise(variant))
        parts += [_value_label(k, v) for k, v in axes.items() if k not in ("dataset", "train.mode", "strategy", "seed")]
        group = "-".join(p for p in parts if p)
        return f"{group}-seed{cfg.seed}", group
    values: dict[str, Any] = {_field_name(k): v for k, v in axes.items()}
    values.update(dataset=_dataset_label(str(cfg.dataset)), mode=cfg.train.mode, strategy=cfg.strategy, variant=variant or "")
    name = _sanitise(grid.run_name.format(**{**values, "seed": cfg.seed}))
    marked = grid.run_name.format(**{**values, "seed": _SEED_MARK})
    group = _sanitise(re.sub(rf"[-_.]*(seed)?{_SEED_MARK}", "", marked)) or name
    return name, group


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _apply_threads(grid: Grid, workers: int) -> None:
    """threads = max(1, cores // workers) for every run when workers > 1 and the
    grid does not set threads; a partly done run keeps its saved thread count."""
    if grid.sets_threads:
        return
    threads = max(1, _cpu_count() // workers) if workers > 1 else None
    for run in grid.runs:
        saved = _saved_config(run)
        if saved is not None and (run.out / "state.json").exists():
            run.cfg.threads = int(saved.get("threads", 0) or 0)
        elif threads is not None:
            run.cfg.threads = threads


def _saved_config(run: GridRun) -> dict | None:
    path = run.out / "config.yaml"
    if not path.is_file():
        return None
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # yaml / omegaconf errors
        raise SsalError(f"run {run.name}: {path} is unreadable ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    return loaded if isinstance(loaded, dict) else None


def run_status(run: GridRun) -> RunStatus:
    """``done`` (state.json says every cycle is saved), ``partial`` (some are) or ``new``."""
    state_path = run.out / "state.json"
    if not state_path.exists():
        return RunStatus(run, "new", 0)
    try:
        next_cycle = int(json.loads(state_path.read_text())["next_cycle"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SsalError(f"run {run.name}: {state_path} is unreadable ({err}); delete the run folder to start it afresh") from None
    return RunStatus(run, "done" if next_cycle >= run.cfg.cycles else "partial", next_cycle)


def _check_existing(grid: Grid, run: GridRun) -> None:
    """A run folder already on disk must hold this run's config (a finished run:
    up to runtime-only keys; a partial one: exactly, as its resume requires)."""
    from .loop import _config_diff

    status = run_status(run)
    if status.state == "new":
        return
    saved = _saved_config(run)
    if saved is None:
        return
    defaults = OmegaConf.to_container(OmegaConf.structured(Config))
    diff = _config_diff(saved, OmegaConf.to_container(run.cfg), defaults)
    if status.state == "done":
        diff = [k for k in diff if k not in _RUNTIME_ONLY]
    if diff:
        raise SsalError(
            f"{grid.path}: run {run.name}: {run.out} holds a run with a different config (differs at {', '.join(diff[:5])}); "
            "delete that folder or give the grid another out"
        )


# -- running -------------------------------------------------------------------


def write_grid_file(grid: Grid) -> None:
    """``<out>/grid.yaml``: the grid as read, plus every run's full override list."""
    doc = {
        "name": grid.name,
        "source": str(grid.path),
        "preset": grid.preset,
        "set": grid.overrides,
        "out": str(grid.out),
        "grid": grid.axes,
        "variants": grid.variants,
        "run_name": grid.run_name,
        "compare": [list(pair) for pair in grid.compare],
        "runs": [
            {"name": r.name, "group": r.group, "seed": r.seed, "variant": r.variant, "overrides": r.overrides, "threads": int(r.cfg.threads)}
            for r in grid.runs
        ],
    }
    atomic_write_text(grid.out / GRID_FILE, yaml.safe_dump(doc, sort_keys=False))


def _run_logger(run_name: str, log_path: Path, echo: Callable[[str], None] | None) -> Callable[[str], None]:
    def log(line: str) -> None:
        with open(log_path, "a") as f:
            f.write(line + "\n")
        if echo is not None:
            echo(f"[{run_name}] {line}")

    return log


class RunBusy(Exception):
    """Another process holds the run's lock (it is running that run now)."""


@contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<run>/.bench.lock`` for as long as this
    process runs the run, so two `ssal bench` invocations never run the same
    run at once. The OS drops it when the process dies, however it dies."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            raise RunBusy(str(out)) from None
        yield


def _worker_main(cfg_yaml: str, name: str) -> None:
    """Entry point of a worker process: run (or resume) one whole run. Exit code
    0 when it finished, 2 on a user error (one line on stderr), 143 when the
    bench stops it (SIGTERM), 130 on Ctrl-C, 1 otherwise."""
    from .loop import run_experiment

    # the bench stops a worker with SIGTERM: unwind (SystemExit 143) so that its
    # multiprocessing locks are released, not reported as leaked at shutdown
    signal.signal(signal.SIGTERM, _exit_on_signal)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(cfg_yaml))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _run_logger(name, out / RUN_LOG, lambda s: print(s, flush=True))
    try:
        with _run_lock(out):
            run_experiment(cfg, resume=True, progress=False, log=log)
    except SsalError as err:
        print(f"ssal: error: [{name}] {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except RunBusy:
        sys.exit(EXIT_BUSY)
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: exit quietly, the run resumes next time
        sys.exit(130)


@dataclass
class BenchOutcome:
    """What :func:`run_grid` did."""

    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    busy: list[str] = field(default_factory=list)


def run_grid(grid: Grid, workers: int = 1, log: Callable[[str], None] = print) -> BenchOutcome:
    """Run every unfinished run of ``grid`` (resuming partial ones), one after
    another in this process (``workers=1``) or in ``workers`` spawned worker
    processes, each running whole runs. A run that fails or whose worker dies
    is reported and left as it is on disk (its saved cycles are intact: the loop
    writes atomically), and the next invocation resumes it."""
    if workers < 1:
        raise SsalError(f"invalid value --workers {workers}: must be at least 1")
    grid.out.mkdir(parents=True, exist_ok=True)
    write_grid_file(grid)
    outcome = BenchOutcome()
    todo: list[RunStatus] = []
    for run in grid.runs:
        st = run_status(run)
        if st.state == "done":
            outcome.skipped.append(run.name)
        else:
            todo.append(st)
    if outcome.skipped:
        log(f"[skip] {len(outcome.skipped)} finished run(s)")
    if workers == 1 or len(todo) <= 1:
        _run_sequential(todo, outcome, log)
    else:
        _run_parallel(todo, workers, outcome, log)
    return outcome


def _start_line(st: RunStatus, i: int, n: int) -> str:
    resume = f", resuming at cycle {st.cycles_done}" if st.state == "partial" else ""
    threads = f", {st.run.cfg.threads} threads" if st.run.cfg.threads else ""
    return f"[run {i}/{n}] {st.run.name}{resume}{threads}"


def _run_sequential(todo: list[RunStatus], outcome: BenchOutcome, log: Callable[[str], None]) -> None:
    from .loop import run_experiment

    for i, st in enumerate(todo, 1):
        run = st.run
        log(_start_line(st, i, len(todo)))
        t0 = time.perf_counter()
        run.out.mkdir(parents=True, exist_ok=True)
        try:
            with _run_lock(run.out):
                records = run_experiment(run.cfg, resume=True, progress=False, log=_run_logger(run.name, run.out / RUN_LOG, log))
        except RunBusy:
            outcome.busy.append(run.name)
            log(f"[busy] {run.name}: another process is running it; left alone")
            continue
        except SsalError as err:
            outcome.failed[run.name] = str(err)
            log(f"[fail] {run.name}: {err}")
            continue
        except Exception as err:  # a bug in one run must not stop the grid
            outcome.failed[run.name] = f"{type(err).__name__}: {err}"
            with open(run.out / RUN_LOG, "a") as f:
                f.write(traceback.format_exc())
            log(f"[fail] {run.name}: {type(err).__name__}: {err} (traceback in {run.out / RUN_LOG})")
            continue
        outcome.finished.append(run.name)
        log(f"[done] {run.name}: test accuracy {100 * records[-1]['test_acc']:.2f}% ({(time.perf_counter() - t0) / 60:.1f} min)")


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _termination_unwinds() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit in the main thread while inside, so
    ``finally`` blocks run (a plain ``kill`` of the bench would otherwise leave
    its worker processes running on); the old handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run_parallel(todo: list[RunStatus], workers: int, outcome: BenchOutcome, log: Callable[[str], None]) -> None:
    with _termination_unwinds():
        _run_workers(todo, workers, outcome, log)


def _run_workers(todo: list[RunStatus], workers: int, outcome: BenchOutcome, log: Callable[[str], None]) -> None:
    ctx = multiprocessing.get_context("spawn")
    pending = deque(enumerate(todo, 1))
    active: dict[int, tuple[Any, RunStatus, float]] = {}
    try:
        while pending or active:
            while pending and len(active) < workers:
                i, st = pending.popleft()
                log(_start_line(st, i, len(todo)))
                proc = ctx.Process(target=_worker_main, args=(to_yaml(st.run.cfg), st.run.name), name=f"ssal-bench-{st.run.name}")
                proc.start()
                active[proc.sentinel] = (proc, st, time.perf_counter())
            for sentinel in multiprocessing.connection.wait(list(active)):
                proc, st, t0 = active.pop(sentinel)
                proc.join()
                name = st.run.name
                if proc.exitcode == EXIT_BUSY:
                    outcome.busy.append(name)
                    log(f"[busy] {name}: another process is running it; left alone")
                elif proc.exitcode == 0:
                    outcome.finished.append(name)
                    final = _final_acc(st.run)
                    acc = f"test accuracy {100 * final:.2f}% " if final is not None else ""
                    log(f"[done] {name}: {acc}({(time.perf_counter() - t0) / 60:.1f} min)")
                else:
                    why = f"killed by signal {-proc.exitcode}" if proc.exitcode < 0 else f"exit code {proc.exitcode}"
                    outcome.failed[name] = f"worker {why}"
                    log(f"[fail] {name}: worker {why}; its saved cycles are intact, rerun to resume")
    finally:
        for proc, _, _ in active.values():  # interrupted (Ctrl-C, SIGTERM, SIGHUP): stop the workers; their runs resume next time
            proc.terminate()
        for proc, _, _ in active.values():
            proc.join()


def _final_acc(run: GridRun) -> float | None:
    records = load_records(run)
    return records[-1]["test_acc"] if records else None


# -- summary -------------------------------------------------------------------


def load_records(run: GridRun) -> list[dict]:
    """The per-cycle records of a run folder (empty when it has none)."""
    path = run.out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _estimate(values: list[float]) -> dict | None:
    if not values:
        return None
    m = mean_std_ci(values, CONFIDENCE)
    return {"n": len(values), "mean": m.mean, "std": m.std, "ci95": m.ci}


def _paired(a: dict, b: dict) -> dict | None:
    if not set(a) & set(b):
        return None
    d = paired_difference(a, b, CONFIDENCE)
    return {"n": d.n, "seeds": list(d.seeds), "mean_diff": d.mean, "ci95": d.ci, "resolved": d.resolved}


def _cpu_threads(run: GridRun, records: list[dict]) -> int | None:
    """The CPU thread count a run trained with: from its first record
    (``cpu_threads``; None for a run on a GPU), else the ``threads`` its folder's
    saved config set (not the grid's: a finished run is reused whatever
    ``threads`` the grid now has); None when unknown (no record of it, default
    threads)."""
    if records and "cpu_threads" in records[0]:
        return None if not str(records[0].get("device", "cpu")).startswith("cpu") else int(records[0]["cpu_threads"])
    saved = _saved_config(run) if records else None
    return int((saved or {}).get("threads") or 0) or None


def _schedule(cfg: DictConfig) -> list[int]:
    return [int(cfg.initial) + int(cfg.budget) * c for c in range(int(cfg.cycles))]


# Settings that say which strategy picks, or how and where a run executes; a
# group and its random baseline must agree on everything else.
_NOT_CONTEXT = _RUNTIME_ONLY + ("device", "log", "seed", "strategy", "strategy_options")


def _context(run: GridRun) -> str:
    """What a group and its random baseline must share: the whole resolved
    config except the seed, the strategy and its options, and where and how
    the run executes (so the training mode, SSL encoder, steps, schedule and
    dataset all match)."""
    cfg = OmegaConf.to_container(run.cfg, resolve=True)
    for key in _NOT_CONTEXT:
        cfg.pop(key, None)
    return json.dumps(cfg, sort_keys=True)


def summarise(grid: Grid, target: float | None = None) -> dict:
    """The grid's summary as a JSON-ready dict (accuracies in percent).

    Per group (runs that differ only in the seed): per cycle the n, mean, sample
    std and 95% Student t CI of the test accuracy over the seeds that reached
    that cycle; over the finished runs the AUBC (:func:`ssal.stats.aubc`), the
    train / eval / select seconds per run, and the labels the mean curve needs
    to reach the target accuracy (``target``, else the final mean accuracy of
    the group's random baseline). Every non-random group is compared with its
    random baseline seed by seed (:func:`ssal.stats.paired_difference`).

    The baseline of a group is the ``random`` group whose resolved config
    differs only in the strategy, its options and the seed (:func:`_context`);
    of several, the one with the same variant, else the first in grid order.
    """
    groups: dict[str, list[GridRun]] = {}
    for run in grid.runs:
        groups.setdefault(run.group, []).append(run)
    records = {run.name: load_records(run) for run in grid.runs}

    out_groups: list[dict] = []
    per_group: dict[str, dict] = {}
    for label, runs in groups.items():
        cfg = runs[0].cfg
        labelled = _schedule(cfg)
        ncyc = len(labelled)
        complete = [r for r in runs if len(records[r.name]) >= ncyc]
        acc = {r.seed: [100 * rec["test_acc"] for rec in records[r.name][:ncyc]] for r in runs}
        cycles = []
        for c in range(ncyc):
            vals = [a[c] for a in acc.values() if len(a) > c]
            cycles.append({"cycle": c, "n_labelled": labelled[c], **(_estimate(vals) or {"n": 0, "mean": None, "std": None, "ci95": None})})
        aubcs = {r.seed: aubc(labelled, acc[r.seed]) for r in complete}
        seconds = {}
        for phase in ("train", "eval", "select"):
            per_run = [sum(rec[f"seconds_{phase}"] for rec in records[r.name][:ncyc]) for r in complete]
            seconds[phase] = sum(per_run) / len(per_run) if per_run else None
        mean_curve = [sum(acc[r.seed][c] for r in complete) / len(complete) for c in range(ncyc)] if complete else []
        g = {
            "group": label,
            "dataset": str(cfg.dataset),
            "mode": str(cfg.train.mode),
            "strategy": str(cfg.strategy),
            "variant": runs[0].variant,
            "axes": {k: v for k, v in runs[0].axes.items() if k != "seed"},
            "runs": [r.name for r in runs],
            "seeds": [r.seed for r in runs],
            "seeds_finished": [r.seed for r in complete],
            "labelled": labelled,
            "cycles": cycles,
            "aubc": _estimate(list(aubcs.values())),
            "seconds_per_run": seconds,
            "mean_curve": mean_curve,
            "baseline": None,
            "target": None,
            "vs_baseline": None,
        }
        threads = {r.seed: _cpu_threads(r, records[r.name]) for r in runs}
        per_group[label] = {"runs": runs, "acc": acc, "aubc": aubcs, "context": _context(runs[0]), "threads": threads}
        out_groups.append(g)

    by_label = {g["group"]: g for g in out_groups}
    for g in out_groups:
        if g["strategy"] == BASELINE:
            base_label = g["group"]
        else:
            ctx = per_group[g["group"]]["context"]
            cands = [b for b in out_groups if b["strategy"] == BASELINE and per_group[b["group"]]["context"] == ctx]
            same_variant = [b for b in cands if b["variant"] == g["variant"]]
            base_label = (same_variant or cands or [None])[0]
            base_label = base_label["group"] if base_label else None
        g["baseline"] = base_label
        base = by_label[base_label] if base_label else None

        # labels needed to reach the target accuracy
        tgt, source = (target, "--target") if target is not None else (None, None)
        if tgt is None and base is not None and base["mean_curve"]:
            tgt, source = base["mean_curve"][-1], f"final mean accuracy of {base_label}"
        if tgt is not None:
            need = labels_to_reach(g["labelled"], g["mean_curve"], tgt) if g["mean_curve"] else None
            base_need = labels_to_reach(base["labelled"], base["mean_curve"], tgt) if base is not None and base["mean_curve"] else None
            saving = 1 - need / base_need if need is not None and base_need else None
            g["target"] = {"acc": tgt, "source": source, "labels": need, "baseline_labels": base_need, "saving": saving}

        if base is not None and base_label != g["group"]:
            g["vs_baseline"] = {"baseline": base_label, **_compare_groups(g, base, per_group)}

    n_done = sum(1 for r in grid.runs if len(records[r.name]) >= r.cfg.cycles)
    return {
        "grid": grid.name,
        "grid_file": str(grid.path),
        "out": str(grid.out),
        "units": "test accuracy in percent; differences in percentage points; seconds per run",
        "confidence": CONFIDENCE,
        "runs_total": len(grid.runs),
        "runs_finished": n_done,
        "target": target,
        "groups": out_groups,
        "comparisons": [
            {"group": a, "vs": b, **_compare_groups(by_label[a], by_label[b], per_group)} for a, b in grid.compare
        ],
    }


def _compare_groups(g: dict, base: dict, per_group: dict) -> dict:
    """Seed-paired differences ``g - base``: per cycle while both schedules
    agree on the label count, and of the AUBC when the schedules are equal."""
    a, b = per_group[g["group"]], per_group[base["group"]]
    cyc = []
    for c in range(min(len(g["labelled"]), len(base["labelled"]))):
        if g["labelled"][c] != base["labelled"][c]:
            break
        ac = {s: v[c] for s, v in a["acc"].items() if len(v) > c}
        bc = {s: v[c] for s, v in b["acc"].items() if len(v) > c}
        p = _paired(ac, bc)
        cyc.append({"cycle": c, "n_labelled": g["labelled"][c], **(p or {"n": 0})})
    same = g["labelled"] == base["labelled"]
    # seeds whose two runs trained on different known CPU thread counts
    mixed = sorted(
        s for s in set(a["threads"]) & set(b["threads"])
        if a["threads"][s] is not None and b["threads"][s] is not None and a["threads"][s] != b["threads"][s]
    )
    threads = {"seeds": mixed, "group": sorted({a["threads"][s] for s in mixed}), "vs": sorted({b["threads"][s] for s in mixed})} if mixed else None
    return {"cycles": cyc, "same_schedule": same, "aubc": _paired(a["aubc"], b["aubc"]) if same else None, "threads_differ": threads}


def _pm(est: dict | None) -> str:
    """``mean +- std (CI half-width)``; the mean alone for one seed."""
    if not est or est.get("mean") is None:
        return "-"
    if est.get("std") is None:
        return f"{est['mean']:.2f}"
    return f"{est['mean']:.2f} +- {est['std']:.2f} ({est['ci95']:.2f})"


def _diff_cell(p: dict | None) -> tuple[str, bool]:
    """(cell text, resolved)."""
    if not p or not p.get("n"):
        return "-", False
    if p["ci95"] is None:
        return f"{p['mean_diff']:+.2f} (1 seed)", False
    text = f"{p['mean_diff']:+.2f} +- {p['ci95']:.2f}"
    return (text, True) if p["resolved"] else (f"{text} n.r.", False)


def _secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def summary_markdown(summary: dict) -> str:
    """``summary.md``: an accuracy table and a paired-comparison table per dataset."""
    lines = [
        f"# Grid {summary['grid']}",
        "",
        f"Grid file `{summary['grid_file']}`, runs in `{summary['out']}`: {summary['runs_finished']} of {summary['runs_total']} runs finished.",
        "",
        "Test accuracy (%) per cycle: mean +- sample std over seeds (95% CI half-width, Student t). "
        "AUBC: area under the accuracy-vs-labels curve divided by the label range (a mean accuracy, %), finished runs only. "
        "Labels to target: labels at which the mean curve of the finished runs first reaches the target accuracy "
        "(linear interpolation); saving = 1 - labels / labels the random baseline needs. Seconds: per run, mean over finished seeds.",
    ]
    datasets: dict[str, list[dict]] = {}
    for g in summary["groups"]:
        datasets.setdefault(g["dataset"], []).append(g)
    for ds, groups in datasets.items():
        ncyc = max(len(g["labelled"]) for g in groups)
        same = all(g["labelled"] == groups[0]["labelled"] for g in groups)
        heads = [f"cycle {c} ({groups[0]['labelled'][c]})" if same else f"cycle {c}" for c in range(ncyc)]
        lines += ["", f"## {ds}", ""]
        if same:
            lines += [f"labelled per cycle: {', '.join(map(str, groups[0]['labelled']))}", ""]
        lines.append("| group | mode | strategy | seeds | " + " | ".join(heads) + " | AUBC | target % | labels to target | saving | train s | eval s | select s |")
        lines.append("|---|---|---|---|" + "---:|" * (ncyc + 7))
        for g in groups:
            cells = [_pm(c) for c in g["cycles"]] + ["-"] * (ncyc - len(g["cycles"]))
            t = g["target"] or {}
            seeds = f"{len(g['seeds_finished'])}/{len(g['seeds'])}" if len(g["seeds_finished"]) != len(g["seeds"]) else str(len(g["seeds"]))
            need = "-" if t.get("labels") is None else f"{t['labels']:.0f}"
            saving = "-" if t.get("saving") is None else f"{100 * t['saving']:.0f}%"
            tacc = "-" if t.get("acc") is None else f"{t['acc']:.2f}"
            s = g["seconds_per_run"]
            lines.append(
                f"| {g['group']} | {g['mode']} | {g['strategy']} | {seeds} | " + " | ".join(cells)
                + f" | {_pm(g['aubc'])} | {tacc} | {need} | {saving} | {_secs(s['train'])} | {_secs(s['eval'])} | {_secs(s['select'])} |"
            )
        compared = [g for g in groups if g["vs_baseline"]]
        if compared:
            lines += _pair_table(
                "Paired differences against the random group whose config differs only in the strategy (percentage points, same seeds, so the same initial sets): "
                "mean difference +- 95% CI half-width (paired t); n.r. = not resolved by the seeds (the CI contains 0).",
                ncyc,
                [_pair_row(g["group"], g["vs_baseline"]["baseline"], g["vs_baseline"], ncyc, "random") for g in compared],
            )
            lines += _thread_notes([(g["group"], g["vs_baseline"]["baseline"], g["vs_baseline"]) for g in compared])
        names = {g["group"] for g in groups}
        asked = [c for c in summary.get("comparisons", []) if c["group"] in names]
        if asked:
            lines += _pair_table(
                "Paired differences asked for by the grid's `compare` (group - vs, percentage points, same seeds): "
                "mean difference +- 95% CI half-width (paired t); n.r. = not resolved by the seeds. "
                "Cycles are paired while both schedules have the same label count; AUBC only for equal schedules.",
                ncyc,
                [_pair_row(c["group"], c["vs"], c, ncyc, c["vs"]) for c in asked],
            )
            lines += _thread_notes([(c["group"], c["vs"], c) for c in asked])
    return "\n".join(lines) + "\n"


def _thread_notes(pairs: list[tuple[str, str, dict]]) -> list[str]:
    """A warning line per compared pair whose runs trained on different CPU
    thread counts, for the same seed."""
    notes = []
    for group, vs, comparison in pairs:
        t = comparison.get("threads_differ")
        if t:
            mine, theirs = ("/".join(map(str, t[side])) for side in ("group", "vs"))
            notes.append(
                f"- **{group} vs {vs}: different CPU thread counts** ({mine} against {theirs}, "
                f"seeds {', '.join(map(str, t['seeds']))}). Float sums in another order change a run's numbers (by 2.34 "
                "points on one CIFAR-10 seed in ssal's BENCHMARKS.md), so this difference holds that too; set `threads=` in the grid's `set` to compare like with like."
            )
    return ["", *notes] if notes else []


def _pair_table(intro: str, ncyc: int, rows: list[str]) -> list[str]:
    """The lines of a paired-difference table: its explanation, header and ``rows``."""
    header = "| group | vs | seeds | " + " | ".join(f"cycle {c}" for c in range(ncyc)) + " | AUBC | verdict (AUBC) |"
    return ["", intro, "", header, "|---|---|---|" + "---:|" * (ncyc + 1) + "---|", *rows]


def _pair_row(group: str, vs: str, comparison: dict, ncyc: int, than: str) -> str:
    """One row of a paired-difference table; ``than`` names the other side in the verdict."""
    cells = [_diff_cell(c)[0] for c in comparison["cycles"]] + ["-"] * (ncyc - len(comparison["cycles"]))
    aubc_diff = comparison["aubc"]
    text, resolved = _diff_cell(aubc_diff)
    if aubc_diff is None:
        verdict = "no finished pair" if comparison.get("same_schedule", True) else "schedules differ: no AUBC difference"
    elif resolved:
        verdict = f"{'better' if aubc_diff['mean_diff'] > 0 else 'worse'} than {than}"
    else:
        verdict = "not resolved by the seeds" + (" (1 seed)" if aubc_diff["ci95"] is None else "")
    n = aubc_diff["n"] if aubc_diff else max((c.get("n", 0) for c in comparison["cycles"]), default=0)
    return f"| {group} | {vs} | {n} | " + " | ".join(cells) + f" | {text} | {verdict} |"


def write_summary(grid: Grid, target: float | None = None) -> dict:
    """Write ``summary.json``, ``summary.md`` and the learning curves
    (``curves.png``; ``curves-<dataset>.png`` per dataset when there are several)
    under the grid's out folder; return the summary dict."""
    from .plots import plot_grid

    summary = summarise(grid, target)
    grid.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(grid.out / SUMMARY_JSON, summary)
    atomic_write_text(grid.out / SUMMARY_MD, summary_markdown(summary))
    by_ds: dict[str, dict[str, list[list[dict]]]] = {}
    for run in grid.runs:
        recs = load_records(run)
        if recs:
            by_ds.setdefault(str(run.cfg.dataset), {}).setdefault(run.group, []).append(recs)
    for ds, runs in by_ds.items():
        path = grid.out / (CURVES_FILE if len(by_ds) == 1 else f"curves-{_dataset_label(ds)}.png")
        plot_grid(runs, path, title=f"{grid.name}: {ds}" if len(by_ds) > 1 else grid.name)
    return summary


# -- command line ----------------------------------------------------------------


def dry_run_text(grid: Grid) -> str:
    """The runs of a grid, their folders and whether they are done."""
    rows = []
    counts = {"done": 0, "partial": 0, "new": 0}
    for run in grid.runs:
        st = run_status(run)
        counts[st.state] += 1
        cycles = int(run.cfg.cycles)
        state = {"done": f"done {cycles}/{cycles}", "partial": f"partial {st.cycles_done}/{cycles}", "new": "to run"}[st.state]
        threads = f"threads={run.cfg.threads}" if run.cfg.threads else ""
        rows.append((state, run.name, str(run.out), threads))
    w = [max(len(r[i]) for r in rows) for i in range(3)] if rows else [0, 0, 0]
    lines = [f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c.ljust(w[2])}  {d}".rstrip() for a, b, c, d in rows]
    lines.append(f"{len(grid.runs)} runs: {counts['done']} done, {counts['partial']} partial, {counts['new']} to run; out {grid.out}")
    return "\n".join(lines)


def bench_main(grid_file: str, workers: int = 1, summary_only: bool = False, dry_run: bool = False, target: float | None = None) -> int:
    """`ssal bench`: validate, then run (unless --summary-only / --dry-run), then summarise."""
    if workers < 1:
        raise SsalError(f"invalid value --workers {workers}: must be at least 1")
    if target is not None and not (1 < target <= 100):
        raise SsalError(f"invalid value --target {target}: a test accuracy in percent, e.g. 85 for 85%")
    grid = load_grid(grid_file, workers=workers)
    if dry_run:
        print(dry_run_text(grid))
        return 0
    outcome = BenchOutcome()
    if not summary_only:
        try:
            outcome = run_grid(grid, workers=workers, log=lambda s: print(s, flush=True))
        except KeyboardInterrupt:
            print("\nssal: interrupted; rerun the same command to resume the grid", file=sys.stderr)
            return 130
    else:
        write_grid_file(grid)
    write_summary(grid, target)
    print((grid.out / SUMMARY_MD).read_text(), end="")
    if outcome.busy:
        print(f"ssal: {len(outcome.busy)} run(s) left to the other process running them: {', '.join(outcome.busy)}", file=sys.stderr)
    if outcome.failed:
        print(f"ssal: {len(outcome.failed)} run(s) failed: {', '.join(outcome.failed)}; rerun to resume them", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "Grid",
    "GridRun",
    "RunStatus",
    "BenchOutcome",
    "load_grid",
    "run_grid",
    "run_status",
    "summarise",
    "summary_markdown",
    "write_summary",
    "bench_main",
]
