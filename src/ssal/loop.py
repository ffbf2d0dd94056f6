"""The active-learning cycle (METHODS.md section 1).

cycle = train on L -> evaluate on the test split once -> score candidates ->
select ``budget`` -> the oracle reveals their labels -> repeat.

Everything random in a cycle draws from a generator seeded by (run seed, cycle,
purpose), and the run's state is saved atomically after every cycle, so a run
killed at any point and restarted with ``resume=True`` reproduces the
uninterrupted run exactly (the interrupted cycle is replayed from its start).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from . import __version__
from .config import Config, to_yaml, validate_against_pool
from .data import ImageData, apply_class_caps, load_dataset, split_validation
from .data.oracle import ActivePool, GroundTruthOracle
from .errors import SsalError, first_line
from .modes import (
    ModeData,
    NetworkTrained,
    Trained,
    build_classifier,
    build_ssl_branch,
    check_strategy_fits,
    init_backbone,
    setup_mode,
    split_branch_state,
    train_cycle,
)
from .pretrain import crop_scale, images_fingerprint
from .train import amp_cpu_on, amp_cpu_warning, amp_enabled, joint_unlabelled_per_epoch
from .strategies import SelectionContext, build_strategy
from .utils import atomic_torch_save, atomic_write_json, atomic_write_text, derive_seed, generator, resolve_device

STATE_FILE = "state.json"
RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "config.yaml"
CURVE_FILE = "curve.png"
WARM_FILE = "warm_start_cycle{}.pt"  # train.warm_start: cycle k's whole state (joint: with its SSL branch), which cycle k + 1 starts from


@dataclass
class Splits:
    """The data of one experiment: the pool (labels behind the oracle), the
    validation split (labelled, never selectable) and the test split."""

    pool: ActivePool
    val: ImageData
    test: ImageData
    classes: list[str]
    pool_source_index: torch.Tensor  # pool index -> index in the dataset's train split
    ssl_images: torch.Tensor  # every train-split image kept (pool + validation), in dataset order, for SSL pretraining
    pool_ssl_index: torch.Tensor  # pool index -> row of ssl_images


def prepare_splits(cfg: DictConfig, progress: bool = True) -> Splits:
    """Load the dataset, apply class caps, carve the validation split, and hide
    the pool labels behind a :class:`GroundTruthOracle`."""
    train, test = load_dataset(cfg.dataset, cfg.data_root, cfg.cache_dir, progress=progress)
    caps = {int(k): int(v) for k, v in cfg.class_caps.items()}
    for k in caps:
        if not 0 <= k < train.num_classes:
            raise SsalError(f"invalid key class_caps.{k}: the dataset has classes 0..{train.num_classes - 1}")
    kept = apply_class_caps(train.labels, caps or None, derive_seed(cfg.caps_seed, "caps"))  # not the run seed: the SSL cache is shared across seeds
    val_size = cfg.val_size if cfg.val_size < 1 else int(cfg.val_size)
    pool_pos, val_pos = split_validation(train.labels[kept], val_size, derive_seed(cfg.seed, "val"))
    pool_idx, val_idx = kept[pool_pos], kept[val_pos]
    pool = ActivePool(train.images[pool_idx], GroundTruthOracle(train.labels[pool_idx]), train.num_classes)
    kept_sorted = kept.sort().values
    return Splits(
        pool, train.subset(val_idx), test, list(train.classes), pool_idx, train.images[kept_sorted], torch.searchsorted(kept_sorted, pool_idx)
    )


def pool_prototypes(
    levels: list[dict[str, torch.Tensor]] | None, pool_ssl_index: torch.Tensor
) -> Callable[[torch.Tensor], list[tuple[int, torch.Tensor, torch.Tensor]]] | None:
    """``SelectionContext.ssl_prototypes`` from the prototypes of an SSL cache
    (``ModeData.ssl_prototypes``, rows of ``ssl_images``): pool indices
    -> ``(K, prototype id, cosine similarity)`` per granularity; None without."""
    if not levels:
        return None

    def lookup(idx: torch.Tensor) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        rows = pool_ssl_index[idx]
        return [(int(lv["centroids"].shape[0]), lv["assignments"][rows], lv["similarity"][rows]) for lv in levels]

    return lookup


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Experiment:
    """One active-learning run, described by a resolved config."""

    def __init__(self, cfg: DictConfig, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.resume = resume
        self.progress = progress
        self.log = log
        self.out = Path(cfg.out)

    # -- set-up ---------------------------------------------------------------
    def _check_out_dir(self) -> dict | None:
        state_path = self.out / STATE_FILE
        if not self.resume:
            if state_path.exists() or (self.out / RESULTS_FILE).exists():
                raise SsalError(f"out folder {self.out} already holds a run; add --resume to continue it, or set out=")
            return None
        if not state_path.exists():
            return None  # nothing to resume: start afresh
        saved_cfg_path = self.out / CONFIG_FILE
        if saved_cfg_path.exists():
            saved, legacy_caps = _as_saved(OmegaConf.to_container(OmegaConf.load(saved_cfg_path)))
            defaults = OmegaConf.to_container(OmegaConf.structured(Config))
            diff = _config_diff(saved, OmegaConf.to_container(self.cfg), defaults)
            diff = [k for k in diff if k != "log" and not k.startswith("log.")]  # logging options change no result
            if diff:
                hint = ""
                if "caps_seed" in diff and legacy_caps:
                    hint = f" (saved before caps_seed existed, its class_caps draw used its seed: resume with caps_seed={saved['caps_seed']})"
                raise SsalError(f"cannot resume {self.out}: config differs from the saved one at {', '.join(diff[:5])}{hint}")
        try:
            return json.loads(state_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SsalError(f"cannot resume: {state_path} is unreadable ({err})") from None

    def run(self) -> list[dict]:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        device = resolve_device(cfg.device)
        warning = amp_cpu_warning("train.amp_cpu", cfg.train.amp_cpu, device)
        if warning:
            self.log(warning)
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        strategy = build_strategy(cfg.strategy, **dict(cfg.strategy_options))
        initial_strategy = None
        if cfg.initial_strategy != "random":
            initial_strategy = build_strategy(cfg.initial_strategy, "initial_strategy_options", **dict(cfg.initial_strategy_options))
        check_strategy_fits(cfg, strategy)  # before any training
        tensorboard = bool(OmegaConf.select(cfg, "log.tensorboard", default=False))
        if tensorboard:
            from .logging_tb import require_tensorboard

            require_tensorboard()
        state = self._check_out_dir()
        splits = prepare_splits(cfg, self.progress)
        pool = splits.pool
        validate_against_pool(cfg, len(pool))
        self._pool_fp = images_fingerprint(pool.images)  # saved with the state: a resume must find the same pool
        if state is not None and state.get("pool_images", self._pool_fp) != self._pool_fp:  # states written before it: not checked
            raise SsalError(
                f"cannot resume {self.out}: the pool's images differ from those the run was saved with "
                "(the dataset's files changed); start it afresh with another out="
            )
        init = self._check_model(splits)  # a bad model, SSL option or init backbone fails here, before anything is written
        # Validated: from here on the run folder may be written.
        self.out.mkdir(parents=True, exist_ok=True)
        if state is None:
            atomic_write_text(self.out / CONFIG_FILE, to_yaml(cfg))
        val = (splits.val.images, splits.val.labels) if len(splits.val) else None
        md = setup_mode(
            cfg, pool.images, val, (splits.test.images, splits.test.labels), splits.ssl_images, len(splits.classes), device, self.progress, self.log,
            init=init,
        )
        self._prototypes = pool_prototypes(md.ssl_prototypes, splits.pool_ssl_index)
        md.classifier_dropout = float(strategy.classifier_dropout)
        md.loss_prediction = strategy.loss_prediction

        records: list[dict] = []
        start_cycle = 0
        model_state = None
        if state is not None:
            records = state["records"]
            pool.load_state_dict(state["pool"])
            start_cycle = int(state["next_cycle"])
            if cfg.train.warm_start and start_cycle > 0:
                model_state = self._load_warm_state(start_cycle - 1)
            self.log(f"resuming {self.out} at cycle {start_cycle}")
        else:
            pool.label(self._initial_set(md, initial_strategy, len(pool)))
        self._print_header()
        for r in records:
            self._print_row(r)
        tb = None
        if tensorboard:
            from .logging_tb import TensorBoardLogger

            tb = TensorBoardLogger(self.out, records)
        try:
            for cycle in range(start_cycle, cfg.cycles):
                md.on_epoch = tb.epoch_logger() if tb is not None else None
                rec, model_state = self._cycle(cycle, splits, strategy, md, model_state)
                records.append(rec)
                self._save(records, pool, cycle + 1, model_state, md.ssl_folder)
                if tb is not None:
                    tb.log_cycle(rec)
                self._print_row(rec)  # _save has drawn the curve after every cycle
        finally:
            if tb is not None:
                tb.close()
        return records

    # -- one cycle ------------------------------------------------------------
    def _check_model(self, splits: Splits) -> tuple[dict[str, torch.Tensor], dict, Path] | None:
        """Build the network (and SSL branch) once to fail early on a bad
        config; returns the loaded ``train.init_backbone`` (or None) so it is
        read once."""
        in_channels = int(splits.pool.images.shape[1])
        model = build_classifier(self.cfg, len(splits.classes), in_channels)
        if self.cfg.train.mode != "supervised":
            ssl = build_ssl_branch(self.cfg, model)
            if self.cfg.train.mode == "joint":  # what cycle 0's epochs will cluster (PCL), checked before any training
                n = self.cfg.initial
                ssl.check_images(n + joint_unlabelled_per_epoch(n, len(splits.pool) - n))
        return init_backbone(self.cfg, in_channels) if self.cfg.train.init_backbone else None  # missing, unreadable or of another model

    def _initial_set(self, md: ModeData, initial_strategy, pool_size: int) -> torch.Tensor:
        """``initial`` images drawn at random, or picked by ``initial_strategy`` on
        the representation available before any label (cold start: the SSL
        encoder in pretrain / frozen mode, else the untrained network)."""
        cfg = self.cfg
        if initial_strategy is None:
            return torch.randperm(pool_size, generator=generator(cfg.seed, "initial"))[: cfg.initial]
        g = generator(cfg.seed, "initial")
        if md.frozen_features:
            embed = lambda idx: (torch.empty(idx.numel(), 0), md.frozen_features["pool"][idx])  # noqa: E731
        else:
            torch.manual_seed(derive_seed(cfg.seed, "initial-model"))
            model = build_classifier(cfg, md.num_classes, int(md.pool_images.shape[1]))
            if md.ssl_backbone is not None:
                model.backbone.load_state_dict(md.ssl_backbone)
            embed = lambda idx: NetworkTrained(md, model, None).embed("pool", idx)  # noqa: E731
        cand = torch.arange(pool_size)
        if cfg.subset is not None and cfg.subset < pool_size:
            cand = torch.randperm(pool_size, generator=g)[: max(cfg.subset, cfg.initial)].sort().values
        ctx = SelectionContext(
            candidates=cand, labelled=torch.empty(0, dtype=torch.long), embed=embed, generator=g, ssl_prototypes=self._prototypes
        )
        picks = initial_strategy.select(ctx, cfg.initial)
        _check_picks(picks, cand, cfg.initial)
        return picks

    def _cycle(self, cycle, splits: Splits, strategy, md: ModeData, model_state):
        cfg = self.cfg
        pool = splits.pool
        labelled = pool.labelled
        y = pool.targets(labelled)
        t0 = time.perf_counter()
        trained: Trained = train_cycle(md, cycle, labelled, y, pool.unlabelled, model_state)
        stats = trained.stats
        seconds_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = trained.evaluate("test", splits.test.labels)
        val = trained.evaluate("val", splits.val.labels) if len(splits.val) else None
        seconds_eval = time.perf_counter() - t0

        picks = torch.empty(0, dtype=torch.long)
        seconds_select = 0.0
        n_candidates = 0
        if cycle < cfg.cycles - 1:
            t0 = time.perf_counter()
            unl = pool.unlabelled
            size = len(unl) if cfg.subset is None else min(len(unl), max(cfg.subset, cfg.budget, pool.num_labelled))
            g = generator(cfg.seed, cycle, "select")
            cand = unl if size >= len(unl) else unl[torch.randperm(len(unl), generator=g)[:size]].sort().values
            n_candidates = int(cand.numel())
            ctx = SelectionContext(
                candidates=cand,
                labelled=pool.labelled,
                embed=lambda idx: trained.embed("pool", idx),
                generator=g,
                ssl_loss=trained.ssl_loss if cfg.train.mode == "joint" else None,
                # built only for strategies that read it: it copies L's images and reads their labels
                network=trained.network_access(pool.labelled, pool.targets(pool.labelled)) if strategy.needs_network else None,
                predicted_loss=trained.predicted_loss,
                ssl_prototypes=self._prototypes,
            )
            picks = strategy.select(ctx, cfg.budget)
            _check_picks(picks, cand, cfg.budget)
            seconds_select = time.perf_counter() - t0
            pool.label(picks)
        rec = {
            "cycle": cycle,
            "n_labelled": int(labelled.numel()),
            "test_acc": test["acc"],
            "val_acc": None if val is None else val["acc"],
            "per_class_acc": test["per_class_acc"],
            "labelled_per_class": torch.bincount(y, minlength=len(splits.classes)).tolist(),
            "picked_per_class": pool.class_histogram(picks) if picks.numel() else [0] * len(splits.classes),
            "n_picked": int(picks.numel()),
            "n_candidates": n_candidates,
            "train_steps": stats.steps,
            "train_epochs": stats.epochs,
            "final_train_loss": stats.final_loss,
            "seconds_train": round(seconds_train, 3),
            "seconds_eval": round(seconds_eval, 3),
            "seconds_select": round(seconds_select, 3),
            "seed": int(cfg.seed),
            "strategy": cfg.strategy,
            "mode": cfg.train.mode,
            "amp": amp_enabled(cfg.train, md.device),  # autocast in this cycle's training (bfloat16 on the CPU)
            "device": str(md.device),
            # float sums in another order give other numbers: ssal bench flags a comparison across thread counts
            "cpu_threads": torch.get_num_threads(),
            "model": cfg.model,
            "dataset": cfg.dataset,
        }
        return rec, trained.state_dict()

    def _save(self, records: list[dict], pool: ActivePool, next_cycle: int, model_state, ssl_folder: str | None) -> None:
        # model.pt: the last trained model (the head alone in frozen mode), for
        # `ssal eval-features` and reports. With warm_start, also the whole
        # state the next cycle starts from, in a file named by its cycle and
        # kept until state.json points past it: a kill between the writes
        # still resumes from the right cycle's weights.
        warm = bool(self.cfg.train.warm_start)
        if model_state:
            full = {k: v.detach().cpu() for k, v in model_state.items()}
            atomic_torch_save(split_branch_state(full)[0], self.out / "model.pt")
            if warm:
                atomic_torch_save(full, self.out / WARM_FILE.format(next_cycle - 1))
        atomic_write_text(self.out / RESULTS_FILE, "".join(json.dumps(r) + "\n" for r in records))
        atomic_write_json(
            self.out / STATE_FILE,
            {
                "next_cycle": next_cycle,
                "records": records,
                "pool": pool.state_dict(),
                "pool_images": self._pool_fp,
                "ssl_backbone": ssl_folder,
                "ssal_version": __version__,
                "git_commit": _git_commit(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        )
        if warm:
            for old in self.out.glob(WARM_FILE.format("*")):
                if old.name != WARM_FILE.format(next_cycle - 1):
                    old.unlink(missing_ok=True)
        if self.cfg.plot:
            from .plots import plot_curve

            plot_curve(records, self.out / CURVE_FILE, title=f"{self.cfg.dataset} / {self.cfg.model} / {self.cfg.strategy}")

    def _load_warm_state(self, cycle: int) -> dict | None:
        """The state cycle ``cycle`` saved for a warm start; run folders written
        before the per-cycle file fall back to model.pt (the classifier)."""
        for f in (self.out / WARM_FILE.format(cycle), self.out / "model.pt"):
            if f.exists():
                try:
                    return torch.load(f, map_location="cpu")
                except Exception as err:
                    raise SsalError(f"cannot resume {self.out}: {f.name} is unreadable ({first_line(err)})") from None
        return None

    # -- output ---------------------------------------------------------------
    def _print_header(self) -> None:
        self.log(f"{'cycle':>5} {'labelled':>8} {'test acc':>8} {'val acc':>8} {'train s':>8} {'select s':>8}  picked per class")

    def _print_row(self, r: dict) -> None:
        val = "-" if r.get("val_acc") is None else f"{100 * r['val_acc']:.2f}"
        picked = " ".join(map(str, r["picked_per_class"])) if r["n_picked"] else "-"
        self.log(
            f"{r['cycle']:>5} {r['n_labelled']:>8} {100 * r['test_acc']:>8.2f} {val:>8} "
            f"{r['seconds_train']:>8.1f} {r['seconds_select']:>8.1f}  {picked}"
        )


def _check_picks(picks: torch.Tensor, cand: torch.Tensor, budget: int) -> None:
    if picks.numel() != budget or picks.unique().numel() != budget or not bool(torch.isin(picks, cand).all()):
        raise RuntimeError("strategy returned picks that are not `budget` distinct candidates")


_MISSING = object()


def _resolved(cfg):
    """``cfg`` with ``ssl.crop_scale`` (:func:`ssal.pretrain.crop_scale`) and
    ``amp_cpu: auto`` (:func:`ssal.train.amp_cpu_on`, on this CPU) resolved."""
    if isinstance(cfg, dict) and isinstance(cfg.get("ssl"), dict):
        cfg = {**cfg, "ssl": {**cfg["ssl"], "crop_scale": crop_scale(cfg["ssl"])}}
    if isinstance(cfg, dict):
        for part in ("train", "ssl"):
            if isinstance(cfg.get(part), dict) and cfg[part].get("amp_cpu") == "auto":
                cfg = {**cfg, part: {**cfg[part], "amp_cpu": amp_cpu_on("auto")}}
    return cfg


def _as_saved(saved: dict) -> tuple[dict, bool]:
    """A saved config read the way its run was made, and whether that needed
    a rule for an older key. Runs saved before ``caps_seed`` existed drew their
    ``class_caps`` with the run seed, so for them ``caps_seed`` is that seed,
    not today's default: a resume must keep the images its labels point at."""
    if "caps_seed" not in saved and saved.get("class_caps"):
        return {**saved, "caps_seed": saved.get("seed", 0)}, True
    return saved, False


def _config_diff(saved, current, defaults=None, prefix: str = "") -> list[str]:
    """Dotted keys where two configs differ. A key missing from ``saved`` (a run
    folder written before that key existed) counts as equal when ``current``
    holds its schema default from ``defaults``. Settings whose ``null`` resolves to
    a value (``ssl.crop_scale``) are compared resolved, so a run saved with the
    value equals the same run asking for the default."""
    if not prefix:
        saved, current = _resolved(saved), _resolved(current)
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = []
        for k in sorted(set(saved) | set(current), key=str):
            d = defaults.get(k, _MISSING) if isinstance(defaults, dict) else _MISSING
            a = saved.get(k, _MISSING)
            b = current.get(k, _MISSING)
            if a is _MISSING and d is not _MISSING and b == d:
                continue
            keys += _config_diff(None if a is _MISSING else a, None if b is _MISSING else b, d if d is not _MISSING else None, f"{prefix}{k}.")
        return keys
    return [] if saved == current else [prefix.rstrip(".")]


def run_experiment(cfg: DictConfig, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Run (or resume) the experiment described by a resolved config."""
    return Experiment(cfg, resume=resume, progress=progress, log=log).run()


__all__ = ["Experiment", "run_experiment", "prepare_splits"]
