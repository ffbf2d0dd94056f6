"""One config system: a typed schema with defaults, YAML presets and
``key=value`` overrides (OmegaConf), resolved once and written into the run
folder as ``config.yaml``.

Resolution order: schema defaults < preset or YAML file < ``key=value`` overrides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import SsalError


@dataclass
class TrainConfig:
    """How the task model is trained in each cycle."""

    mode: str = "supervised"  # supervised | joint (MoBYv2AL) | pretrain (SSL once, fine-tune) | frozen (SSL once, head only)
    epochs: int = 15
    min_steps: int = 60  # at least this many optimizer steps per cycle (tiny labelled sets)
    steps: int = 0  # >0: exactly this many optimizer steps per cycle, whatever |L| (equal compute per cycle)
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"  # cosine | step | constant
    milestones: list[int] = field(default_factory=list)  # epochs where step divides lr by 1/gamma
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "weak"  # weak | strong | none
    warm_start: bool = False  # keep the previous cycle's weights instead of re-initialising (joint mode: the SSL branch's too)
    amp: bool = True  # mixed precision on CUDA (bfloat16, or float16 with loss scaling)
    amp_cpu: Any = False  # true | false | auto: bfloat16 autocast on the CPU too, training and inference. 1.6-1.9x faster per step on an AVX512-BF16 CPU, 8-12x slower on an AVX2-only one (emulated); auto = on only with AVX512-BF16 or AMX (AMX not measured; BENCHMARKS.md)
    channels_last: bool = True
    eval_batch_size: int = 512
    head: str = "linear"  # frozen mode: linear | mlp head on the cached SSL features
    head_hidden: int = 512  # frozen mode: hidden width of the mlp head
    init_backbone: Optional[str] = None  # supervised / joint: start each cycle's backbone from this SSL backbone (ssal pretrain's backbone.pt or its folder)


@dataclass
class SSLConfig:
    """The self-supervised branch: the method, its weight in joint training, and
    the once-per-dataset pretraining of the pretrain / frozen modes."""

    method: str = "moby"  # moby | byol | mocov2 | simclr | simsiam | vicreg | rotation | pcl
    options: dict[str, Any] = field(default_factory=dict)  # method-specific, e.g. {queue_size: 4096, head: linear}
    # joint mode (MoBYv2AL)
    lambda_c: float = 0.5  # weight of the SSL loss
    views: str = "weak_strong"  # SSL views: weak_strong (classifier shares view 1) | strong_strong
    low_loss_fraction: float = 1.0  # <1: train on the unlabelled images with the lowest SSL loss (MoBYv2AL remedy)
    # joint training: side in px of the views only the SSL loss reads (both views of an unlabelled batch, view 2 of a
    # labelled one); 0 = native. Smaller is cheaper on a CPU; BatchNorm statistics are then re-estimated on the
    # classifier's view of the labelled images after training
    joint_image_size: int = 0
    # pretraining (pretrain / frozen modes); depends on no label and is cached on disk
    epochs: int = 30
    batch_size: int = 256
    lr: float = 0.12  # SGD; 0.06 per 128 images of batch (lightly's CIFAR-10 benchmarks)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    crop_scale: Optional[float] = None  # smallest RandomResizedCrop area of the pretraining views; null = the method's paper value (0.08 byol, 0.2 the rest)
    asymmetric_views: Optional[bool] = None  # BYOL's view pair (blur 1.0 / 0.1, solarize 0 / 0.2); null = on for byol only
    image_size: int = 0  # pretraining view size in px; 0 = native (smaller is faster on a CPU)
    multicrop: int = 0  # extra small crops per image in pretraining (SwAV's multi-crop); 0 = two views only
    multicrop_size: int = 16  # side of the small crops in px
    multicrop_scale: list[float] = field(default_factory=lambda: [0.05, 0.3])  # their RandomResizedCrop area range
    seed: int = 0  # pretraining seed (independent of the run seed, so the cache is shared across seeds)
    amp: bool = True  # mixed precision on CUDA
    amp_cpu: Any = False  # true | false | auto: bfloat16 autocast on the CPU (see train.amp_cpu); part of the cache key when on
    channels_last: bool = True
    checkpoint_minutes: float = 5.0
    cache_dir: Optional[str] = None  # default <cache_dir>/ssl


@dataclass
class LogConfig:
    """Optional extra logging of a run; results.jsonl stays the source of truth."""

    tensorboard: bool = False  # also write per-epoch and per-cycle scalars to <out>/tensorboard/ (needs `pip install tensorboard`)


@dataclass
class Config:
    """A whole active-learning experiment."""

    dataset: str = "sample"
    data_root: Optional[str] = None
    cache_dir: Optional[str] = None
    model: str = "smallcnn"
    model_width: int = 0  # 0 = the model's default width (smallcnn only)
    strategy: str = "coreset"
    strategy_options: dict[str, Any] = field(default_factory=dict)  # e.g. {mode: last_layer} for isal, {passes: 20} for bald
    initial: int = 100
    budget: int = 100
    cycles: int = 5
    subset: Optional[int] = None  # candidates scored per cycle; null/all = the whole pool
    val_size: float = 0.1  # validation split carved from train: fraction (<1) or count (>=1)
    class_caps: dict[int, int] = field(default_factory=dict)  # class index -> max train images
    caps_seed: int = 0  # seed of the class_caps draw, independent of the run seed: every seed shares one capped dataset (and one SSL cache)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch CPU threads, 0 = torch default
    out: Optional[str] = None  # run folder; default runs/<dataset>-<strategy>-seed<seed>
    plot: bool = True
    initial_strategy: str = "random"  # how the initial set is chosen: random, or a strategy on the SSL features (cold start)
    initial_strategy_options: dict[str, Any] = field(default_factory=dict)  # options of initial_strategy, e.g. {source: kmeans} for prototypes
    train: TrainConfig = field(default_factory=TrainConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    log: LogConfig = field(default_factory=LogConfig)


INITIAL_STRATEGIES = ("random", "typiclust", "probcover", "prototypes", "coreset")
TRAIN_MODES = ("supervised", "joint", "pretrain", "frozen")
PRESET_DIR = "presets"


def preset_names() -> list[str]:
    """Names of the presets shipped with ssal."""
    root = resources.files("ssal") / PRESET_DIR
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _load_yaml(source: str) -> DictConfig:
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise SsalError(f"config file not found: {source}")
        text = path.read_text()
        where = str(path)
    else:
        res = resources.files("ssal") / PRESET_DIR / f"{source}.yaml"
        if not res.is_file():
            raise SsalError(f"unknown preset '{source}'; choose one of: {', '.join(preset_names())} or a .yaml file")
        text = res.read_text()
        where = f"preset {source}"
    try:
        loaded = OmegaConf.create(text)
    except Exception as err:  # yaml.YAMLError and friends
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SsalError(f"{where}: not valid YAML ({first})") from None
    if not isinstance(loaded, DictConfig):
        raise SsalError(f"{where}: expected a mapping of config keys")
    return loaded


_CAP = re.compile(r"^class_caps\.(\d+)=(\d+)$")
_ALL = re.compile(r"^(subset)=(all|none|null)$", re.IGNORECASE)


def resolve_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Merge schema defaults, a preset or YAML file and ``key=value`` overrides;
    validate, and return the resolved config.

    Raises :class:`SsalError` with a one-line message naming the bad key or value.
    """
    cfg = OmegaConf.structured(Config)
    layers = []
    if config:
        layers.append(_load_yaml(config))
    dotlist = []
    caps: dict[int, int] = {}
    for item in overrides:
        if "=" not in item:
            raise SsalError(f"override '{item}' is not of the form key=value")
        item = _ALL.sub(r"\1=null", item)
        cap = _CAP.match(item)
        if cap:  # class_caps.3=500: OmegaConf's dotlist would make the key the string '3'
            caps[int(cap.group(1))] = int(cap.group(2))
            continue
        dotlist.append(item)
    try:
        if dotlist:
            layers.append(OmegaConf.from_dotlist(dotlist))
        if caps:
            layers.append(OmegaConf.create({"class_caps": caps}))
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
    except OmegaConfBaseException as err:
        raise SsalError(_omegaconf_message(err)) from None
    if cfg.out is None:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(cfg.dataset).replace("imagefolder:", "folder-")).strip("_")
        cfg.out = f"runs/{name}-{cfg.strategy}-seed{cfg.seed}"
    validate(cfg)
    return cfg


def _omegaconf_message(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).strip().splitlines()[0]
    if "Key '" in msg and "not in" in msg:
        return f"unknown config key '{key}'" if key else msg
    return f"invalid value for '{key}': {msg}" if key else f"invalid config: {msg}"


def validate(cfg: DictConfig) -> None:
    """Range checks that do not need the data. Pool-size checks happen once the
    data is loaded (:func:`validate_against_pool`)."""

    def need(cond: bool, key: str, value: Any, why: str) -> None:
        if not cond:
            raise SsalError(f"invalid value {key}={value}: {why}")

    need(cfg.initial >= 1, "initial", cfg.initial, "must be at least 1")
    need(cfg.budget >= 1, "budget", cfg.budget, "must be at least 1")
    need(cfg.cycles >= 1, "cycles", cfg.cycles, "must be at least 1")
    need(cfg.subset is None or cfg.subset >= 1, "subset", cfg.subset, "must be positive or 'all'")
    need(cfg.val_size >= 0, "val_size", cfg.val_size, "must be >= 0")
    need(cfg.threads >= 0, "threads", cfg.threads, "must be >= 0")
    t = cfg.train
    need(
        cfg.initial_strategy in INITIAL_STRATEGIES,
        "initial_strategy",
        cfg.initial_strategy,
        f"choose one of: {', '.join(INITIAL_STRATEGIES)} (strategies that need no trained classifier)",
    )
    need(
        not cfg.initial_strategy_options or cfg.initial_strategy != "random",
        "initial_strategy_options",
        dict(cfg.initial_strategy_options),
        "initial_strategy=random takes no options",
    )
    need(t.mode in TRAIN_MODES, "train.mode", t.mode, f"choose one of: {', '.join(TRAIN_MODES)}")
    need(t.head in ("linear", "mlp"), "train.head", t.head, "choose one of: linear, mlp")
    need(
        not t.init_backbone or t.mode in ("supervised", "joint"),
        "train.init_backbone",
        t.init_backbone,
        f"is for train.mode=supervised or joint; train.mode={t.mode} takes its encoder from the ssl pretraining",
    )
    s = cfg.ssl
    from .ssl import SSL_METHODS  # here: the methods import torch models, the schema does not

    need(s.method in SSL_METHODS, "ssl.method", s.method, f"choose one of: {', '.join(SSL_METHODS)}")  # in every mode: a typo must not pass unused
    for key, value in (("train.amp_cpu", t.amp_cpu), ("ssl.amp_cpu", s.amp_cpu)):
        need(isinstance(value, bool) or value == "auto", key, value, "choose true, false or auto (bfloat16 only where the CPU has it natively)")
    need(s.lambda_c >= 0, "ssl.lambda_c", s.lambda_c, "must be >= 0")
    need(s.views in ("weak_strong", "strong_strong"), "ssl.views", s.views, "choose one of: weak_strong, strong_strong")
    need(0 < s.low_loss_fraction <= 1, "ssl.low_loss_fraction", s.low_loss_fraction, "must be in (0, 1]")
    need(s.epochs >= 1, "ssl.epochs", s.epochs, "must be at least 1")
    need(s.batch_size >= 2, "ssl.batch_size", s.batch_size, "must be at least 2")
    need(s.lr > 0, "ssl.lr", s.lr, "must be > 0")
    need(s.crop_scale is None or 0 < s.crop_scale <= 1, "ssl.crop_scale", s.crop_scale, "must be in (0, 1], or null for the method's default")
    need(s.image_size == 0 or s.image_size >= 8, "ssl.image_size", s.image_size, "must be 0 (native) or >= 8")
    need(s.joint_image_size == 0 or s.joint_image_size >= 8, "ssl.joint_image_size", s.joint_image_size, "must be 0 (native) or >= 8")
    need(s.joint_image_size == 0 or t.mode == "joint", "ssl.joint_image_size", s.joint_image_size, f"only joint training reads it (train.mode={t.mode}); set it to 0")
    need(s.multicrop >= 0, "ssl.multicrop", s.multicrop, "must be >= 0")
    need(s.multicrop == 0 or t.mode != "joint", "ssl.multicrop", s.multicrop, "small crops are for SSL pretraining (pretrain / frozen modes, ssal pretrain), not joint training")
    need(s.multicrop_size >= 8, "ssl.multicrop_size", s.multicrop_size, "must be >= 8")
    sc = list(s.multicrop_scale)
    need(len(sc) == 2 and 0 < sc[0] <= sc[1] <= 1, "ssl.multicrop_scale", sc, "must be [low, high] with 0 < low <= high <= 1")
    need(s.schedule in ("cosine", "step", "constant"), "ssl.schedule", s.schedule, "choose one of: cosine, step, constant")
    need(t.epochs >= 1, "train.epochs", t.epochs, "must be at least 1")
    need(t.min_steps >= 0, "train.min_steps", t.min_steps, "must be >= 0")
    need(t.steps >= 0, "train.steps", t.steps, "must be >= 0")
    need(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be at least 1")
    need(t.lr > 0, "train.lr", t.lr, "must be > 0")
    need(0 <= t.momentum < 1, "train.momentum", t.momentum, "must be in [0, 1)")
    need(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
    need(t.schedule in ("cosine", "step", "constant"), "train.schedule", t.schedule, "choose one of: cosine, step, constant")
    need(0 < t.gamma <= 1, "train.gamma", t.gamma, "must be in (0, 1]")
    need(all(0 < m for m in t.milestones), "train.milestones", list(t.milestones), "epochs must be positive")
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing, "must be in [0, 1)")
    need(t.augment in ("weak", "strong", "none"), "train.augment", t.augment, "choose one of: weak, strong, none")
    need(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "must be at least 1")
    need(
        cfg.device == "auto" or re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(cfg.device)) is not None,
        "device",
        cfg.device,
        "choose auto, cpu, cuda, cuda:N or mps",
    )
    for k, v in cfg.class_caps.items():
        need(int(v) >= 0, f"class_caps.{k}", v, "must be >= 0")


def validate_against_pool(cfg: DictConfig, pool_size: int) -> None:
    """Checks that need the pool size: the whole labelling plan must fit."""
    total = cfg.initial + cfg.budget * (cfg.cycles - 1)
    if cfg.initial > pool_size:
        raise SsalError(f"invalid value initial={cfg.initial}: larger than the pool ({pool_size} images)")
    if total > pool_size:
        raise SsalError(
            f"invalid value budget={cfg.budget}: initial + budget x (cycles - 1) = {total} "
            f"is larger than the pool ({pool_size} images)"
        )
    if cfg.subset is not None and cfg.subset < cfg.budget:
        raise SsalError(f"invalid value subset={cfg.subset}: smaller than budget={cfg.budget}")


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
