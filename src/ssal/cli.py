"""The ``ssal`` command line."""

from __future__ import annotations

import argparse
import pickle
import sys

from .errors import SsalError, first_line

DESCRIPTION = """\
ssal: self-supervised active learning for image classification.

Active learning trains a model on a few labels, scores the unlabelled pool,
asks for the labels of the most useful images and repeats. `ssal run` runs such
an experiment on a benchmark dataset or your own image folder, revealing stored
labels as the 'oracle', and writes per-cycle results, the resolved config and a
learning curve into the run folder. `ssal pretrain` runs the cached
self-supervised pretraining ahead of the experiments, and `ssal eval-features`
measures the representation of an SSL cache, a run's model or a random
initialisation (kNN and linear-probe accuracy). `ssal bench` runs a grid of
experiments described in a YAML file (resumable, optionally in parallel) and
summarises it over seeds: confidence intervals, area under the budget curve and
paired comparisons with random. `ssal report` turns a run or a
grid of runs into one self-contained HTML page (plus a Markdown twin)."""

RUN_HELP = """\
Run an active-learning experiment.

Config = built-in defaults, then --config (a preset name or a YAML file), then
key=value overrides, e.g.

  ssal run                                   # embedded Fashion-MNIST sample, CPU
  ssal run --config cpu-cifar10 data_root=/data/cifar10-jpeg strategy=entropy
  ssal run dataset=imagefolder:/data/my-images initial=200 budget=100 cycles=4
  ssal run dataset=fashionmnist train.epochs=20 seed=1 out=runs/fm-s1

Keys (see `ssal list keys` for all of them and their defaults):
  dataset      sample | cifar10 | cifar100 | svhn | fashionmnist | imagefolder:<path>
  data_root    folder holding the dataset's standard files (offline loading)
  model        smallcnn | resnet18 | vgg16
  strategy     random | entropy | margin | least_confidence | coreset |
               typiclust | probcover | prototypes | ssl_loss_high | isal |
               learning_loss | badge | bald | vaal   (`ssal list strategies`)
  strategy_options.<name>  options of the strategy, e.g.
               strategy_options.mode=last_layer for isal, .passes=30 for bald
  initial      size of the initial labelled set
  initial_strategy  random | typiclust | probcover | prototypes | coreset: how
               the initial set is chosen (cold start), with its options in
               initial_strategy_options.<name>
  budget       images labelled per cycle
  cycles       number of train/evaluate rounds (|L| = initial + budget * cycle)
  subset       candidates scored per cycle (random subset of the pool), or all
  seed         drives the run's random choices (validation split, initial set,
               training, selection); SSL pretraining (ssl.seed) and the
               class_caps draw (caps_seed) have their own, so seeds share them
  out          run folder (default runs/<dataset>-<strategy>-seed<seed>)
  train.mode, train.epochs, train.batch_size, train.lr, train.schedule, ...

Writes <out>/config.yaml, <out>/results.jsonl (one record per cycle),
<out>/curve.png and <out>/state.json. Interrupted? Rerun the same command with
--resume: the result equals that of an uninterrupted run."""


PRETRAIN_HELP = """\
Self-supervised pretraining for train.mode=pretrain and train.mode=frozen, run
ahead of the experiments (it may take hours on a CPU). It reads the dataset's
training images only, never a label, and is cached under <cache_dir>/ssl/
keyed by the images, the model and every ssl.* setting, so every run, strategy
and seed with the same settings reuses it. Interrupted? Run the same command
again: it resumes from its last checkpoint (every ssl.checkpoint_minutes).

  ssal pretrain --config cpu-cifar10 dataset=imagefolder:/data/cifar10-jpeg ssl.method=byol ssl.epochs=60"""


EVAL_HELP = """\
Representation-quality evaluation of a frozen encoder: kNN accuracy (k = 20,
cosine similarity, votes weighted by exp(sim / 0.07); Wu et al., CVPR 2018) and
linear-probe accuracy (multinomial logistic regression on standardised
features, fixed hyper-parameters, nothing tuned on the test split).

This is the standard SSL protocol, outside active learning: train features come
from the whole train split of the dataset (or a class-balanced random subset
of N images per class with --per-class N, seed 0), test features from the whole
test split; images are only normalised, never augmented.

PATH is one of:
  an SSL cache folder or its backbone.pt (from `ssal pretrain`): the cache does
      not record the dataset, so --dataset is required
  a run folder (config.yaml + model.pt from `ssal run`): the backbone of the last
      cycle's model (frozen runs: the SSL backbone the run used); the dataset
      comes from the run's config unless --dataset is given
or leave PATH out and give --random-init MODEL: a randomly initialised backbone
(torch.manual_seed(0)), the baseline any SSL result must beat.

key=value are config overrides (see `ssal list keys`): model_width for
--random-init, device, threads, cache_dir, data_root, train.eval_batch_size.

  ssal eval-features ~/.cache/ssal/ssl/byol-0123abcd --dataset cifar10 --data-root /data/cifar10
  ssal eval-features runs/sample-coreset-seed0 --per-class 100
  ssal eval-features --random-init smallcnn --dataset sample model_width=32 --json random.json"""


BENCH_HELP = """\
Run a grid of active-learning experiments and summarise it over seeds.

GRID.yaml names a base config and the axes to vary; the runs are the product
of the axes (and of the named variants, when given):

  name: cpu-baselines                  # default: the file name
  preset: cpu-fashionmnist             # optional preset or config YAML
  set: [data_root=../shared/data/fashion-mnist]   # overrides for every run
  out: runs/grids/cpu-baselines        # default runs/grids/<name>
  grid:                                # any config key -> list of values
    strategy: [random, coreset, isal]
    seed: [0, 1, 2]
  variants:                            # optional named override sets, one more axis
    default: []
    ll: [strategy_options.mode=last_layer]
  run_name: "{strategy}-{variant}-seed{seed}"   # optional folder-name template
  compare:                             # optional: more seed-paired comparisons
    - [coreset-default, isal-ll]       #   group - group (a group = runs differing in seed)

Every run's config is resolved and checked before anything runs. Each run goes
to <out>/<run name> (default <dataset>-<mode>-<strategy>[-<variant>]-seed<k>);
finished runs are skipped and interrupted ones resumed, so rerun the same
command after a crash. --workers N runs N runs at a time in separate processes
with max(1, cores // N) torch threads each (unless the grid sets threads).

Writes <out>/grid.yaml (the expanded grid), <out>/summary.md and
<out>/summary.json (per group of seeds: test accuracy per cycle as mean +- std
with a 95% Student t CI, AUBC, labels needed to reach a target accuracy, train /
eval / select seconds; every strategy against random of the same dataset and
mode, and every compare pair, paired by seed, flagged 'not resolved by the seeds' when the CI contains
0) and <out>/curves.png.

  ssal bench benchmarks/grids/cpu-protocol-fashionmnist.yaml --dry-run
  ssal bench benchmarks/grids/cpu-protocol-fashionmnist.yaml --workers 2
  ssal bench benchmarks/grids/cpu-protocol-fashionmnist.yaml --summary-only --target 85"""


REPORT_HELP = """\
Write one self-contained HTML report of a run folder or a folder of runs (a
grid written by `ssal bench`), and a Markdown twin beside it: the per-cycle
accuracy tables (for a grid: mean +- std over seeds per group, plus the grid's
summary.md / summary.json), learning curves with std bands, the classes picked
per cycle, per-class accuracy over cycles, a t-SNE (or UMAP, when installed) of
the last model's features with the labelled and last-picked images marked, the
resolved configs, the environment and the total compute time.

The HTML file inlines its plots and style and links to nothing else: it opens
offline. The Markdown twin references the plots as PNG files (SVG copies
beside them) in <name>_plots/ next to it. The embedding plot recomputes
features from model.pt and the run's dataset (skipped with a note when either
is missing, or for frozen runs); --no-embedding skips it.

  ssal report runs/sample-coreset-seed0
  ssal report runs/grids/cpu-baselines --out /tmp/cpu-baselines.html --no-embedding"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ssal", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"ssal {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run an active-learning experiment", description=RUN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    run.add_argument("--config", "-c", metavar="FILE_OR_PRESET", help="a preset name (see `ssal list presets`) or a YAML file")
    run.add_argument("--resume", action="store_true", help="continue the run in <out> where it stopped")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    run.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    pre = sub.add_parser(
        "pretrain",
        help="run (or resume) the cached self-supervised pretraining of a config",
        description=PRETRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pre.add_argument("--config", "-c", metavar="FILE_OR_PRESET", help="a preset name or a YAML file")
    pre.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    pre.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (ssl.method, ssl.epochs, ...)")
    ev = sub.add_parser(
        "eval-features",
        help="kNN and linear-probe accuracy of an SSL cache, a run's model or a random init",
        description=EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("path", nargs="?", metavar="PATH", help="SSL cache folder, backbone.pt, or run folder")
    ev.add_argument("--dataset", metavar="NAME", help="dataset to evaluate on (required for an SSL cache or --random-init)")
    ev.add_argument("--data-root", metavar="DIR", help="folder holding the dataset's standard files")
    ev.add_argument("--per-class", type=int, metavar="N", help="train features of only N random images per class (seed 0)")
    ev.add_argument("--k", type=int, default=20, metavar="K", help="neighbours of the kNN classifier (default 20)")
    ev.add_argument("--no-linear", action="store_true", help="skip the linear probe (kNN only)")
    ev.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    ev.add_argument("--random-init", metavar="MODEL", help="evaluate a randomly initialised MODEL backbone instead of PATH")
    ev.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (model_width, device, threads, ...)")
    bench = sub.add_parser(
        "bench",
        help="run (or resume) a grid of experiments from a YAML file and summarise it over seeds",
        description=BENCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("grid", metavar="GRID.yaml", help="the grid file")
    bench.add_argument("--workers", "-j", type=int, default=1, metavar="N", help="runs at a time, each in its own process (default 1)")
    bench.add_argument("--summary-only", action="store_true", help="run nothing; summarise the runs on disk")
    bench.add_argument("--dry-run", action="store_true", help="list the runs and which are done; run and write nothing")
    bench.add_argument(
        "--target", type=float, metavar="ACC", help="test accuracy in %% for 'labels to target' (default: final mean accuracy of random)"
    )
    rep = sub.add_parser(
        "report",
        help="write a self-contained HTML report (and a Markdown twin) of a run or a grid of runs",
        description=REPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rep.add_argument("folder", metavar="RUN_OR_GRID_DIR", help="a run folder, or a folder of run folders")
    rep.add_argument("--out", "-o", metavar="FILE", help="the HTML file (default <dir>/report.html; the .md twin goes beside it)")
    rep.add_argument("--no-embedding", action="store_true", help="skip the feature-embedding plots (no dataset loading, faster)")
    rep.add_argument(
        "--embedding-points", type=int, default=2000, metavar="N", help="pool images in each embedding plot (default 2000)"
    )
    rep.add_argument("--quiet", "-q", action="store_true", help="print only the paths written")
    lst = sub.add_parser("list", help="list datasets, models, strategies, presets or config keys")
    lst.add_argument("what", choices=["datasets", "models", "strategies", "presets", "keys"])
    return p


def _list(what: str) -> None:
    if what == "presets":
        from importlib import resources

        from .config import PRESET_DIR, preset_names

        for name in preset_names():
            text = (resources.files("ssal") / PRESET_DIR / f"{name}.yaml").read_text()
            first = next((ln[1:].strip() for ln in text.splitlines() if ln.startswith("#")), "")
            print(f"{name:32s} {first}")
    elif what == "datasets":
        from .data import DATASET_NAMES

        print("\n".join([*DATASET_NAMES, "imagefolder:<path>"]))
    elif what == "models":
        from .models import MODELS

        print("\n".join(MODELS))
    elif what == "strategies":
        from .strategies import STRATEGIES, describe

        width = max(map(len, STRATEGIES))
        print("\n".join(f"{name:<{width}}  {describe(name)}" for name in STRATEGIES))
    else:
        from omegaconf import OmegaConf

        from .config import Config

        print(OmegaConf.to_yaml(OmegaConf.structured(Config)), end="")


def _pretrain(cfg, progress: bool) -> int:
    import torch

    from .loop import prepare_splits
    from .modes import run_pretraining
    from .utils import resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    splits = prepare_splits(cfg, progress)
    _, meta, folder = run_pretraining(cfg, splits.ssl_images, resolve_device(cfg.device), progress)
    print(f"done: {meta['method']} pretraining of {meta['model']} on {meta['num_images']} images; backbone in {folder}/backbone.pt")
    return 0

def _given(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def _load_ssl_cache(path) -> tuple:
    """(encoder, meta) of an SSL cache folder or its backbone.pt, or SsalError."""
    from .pretrain import read_backbone

    encoder, meta, _ = read_backbone(path)
    return encoder, meta


def _run_encoder(folder, cfg, in_channels: int) -> tuple:
    """(encoder, meta or None) of a run folder: the backbone of the last cycle's
    model.pt, or for a frozen run the SSL backbone recorded in state.json."""
    import json
    from pathlib import Path

    import torch

    from .modes import build_classifier

    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    except (OSError, ValueError) as err:
        raise SsalError(f"{state_file} is unreadable ({first_line(err)})") from None
    ssl_folder = state.get("ssl_backbone")
    if cfg.train.mode == "frozen":
        if not ssl_folder:
            raise SsalError(f"frozen run {folder}: state.json records no ssl_backbone; give the run's SSL cache folder instead")
        if not Path(ssl_folder).exists():
            raise SsalError(f"frozen run {folder}: its SSL backbone folder {ssl_folder} no longer exists")
        return _load_ssl_cache(ssl_folder)
    model_file = folder / "model.pt"
    if not model_file.is_file():
        raise SsalError(f"run folder {folder} has no model.pt (no finished cycle yet, or written by an older ssal)")
    try:
        state_dict = torch.load(model_file, map_location="cpu")
    except pickle.UnpicklingError:
        raise SsalError(f"{model_file} is not a PyTorch checkpoint file") from None
    except Exception as err:
        raise SsalError(f"{model_file} is unreadable ({first_line(err)})") from None
    if not isinstance(state_dict, dict) or "head.weight" not in state_dict:  # a frozen run's model.pt is the head alone
        raise SsalError(f"{model_file} is not a classifier state_dict (no head.weight)")
    model = build_classifier(cfg, int(state_dict["head.weight"].shape[0]), in_channels)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise SsalError(
            f"{model_file} does not fit model={cfg.model} model_width={cfg.model_width} with {in_channels} input channels "
            f"({first_line(err)})"
        ) from None
    meta = None
    if ssl_folder and (Path(ssl_folder) / "meta.json").is_file():  # pretrain mode: the SSL normalisation
        try:
            meta = json.loads((Path(ssl_folder) / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
    return model.backbone, meta


def _table(row: dict) -> str:
    widths = {k: max(len(k), len(v)) for k, v in row.items()}
    head = "  ".join(k.ljust(widths[k]) for k in row)
    body = "  ".join(v.ljust(widths[k]) for k, v in row.items())
    return f"{head.rstrip()}\n{body.rstrip()}"


def _eval_features(args) -> int:
    """`ssal eval-features`: kNN and linear-probe accuracy of a frozen encoder."""
    import time
    import warnings
    from pathlib import Path

    import torch

    from . import __version__
    from .augment import channel_stats
    from .config import resolve_config
    from .data import load_dataset
    from .evaluation import extract_features, knn_accuracy, labels_per_class_subset, linear_probe_accuracy
    from .models import build_backbone
    from .modes import model_kwargs
    from .utils import atomic_write_json, resolve_device

    t_start = time.perf_counter()
    overrides = list(args.overrides)
    path = args.path
    if path is not None and "=" in path and not Path(path).exists():  # `--random-init smallcnn model_width=8`
        overrides.insert(0, path)
        path = None
    if path is None and args.random_init is None:
        raise SsalError("eval-features needs a PATH (SSL cache folder, backbone.pt or run folder) or --random-init MODEL")
    if path is not None and args.random_init is not None:
        raise SsalError("give either PATH or --random-init MODEL, not both")
    if args.k < 1:
        raise SsalError(f"invalid value --k {args.k}: must be at least 1")
    if args.per_class is not None and args.per_class < 1:
        raise SsalError(f"invalid value --per-class {args.per_class}: must be at least 1")

    # -- what to evaluate, and the config it comes with
    if args.random_init is not None:
        kind = "random-init"
        cfg = resolve_config(None, [*overrides, f"model={args.random_init}"])
    else:
        p = Path(path)
        if not p.exists():
            raise SsalError(f"no such file or folder: {path}")
        if p.is_file() and p.name == "model.pt" and (p.parent / "config.yaml").is_file():
            p = p.parent
        if p.is_dir() and (p / "config.yaml").is_file():
            kind = "run"
            cfg = resolve_config(str(p / "config.yaml"), overrides)
        elif p.is_file() or (p / "backbone.pt").exists() or (p / "checkpoint.pt").exists():
            kind = "ssl-cache"
            cfg = resolve_config(None, overrides)
        else:
            raise SsalError(f"{path} is neither an SSL cache folder (backbone.pt) nor a run folder (config.yaml + model.pt)")
    if args.dataset is not None:
        cfg.dataset = args.dataset
    if args.data_root is not None:
        cfg.data_root = args.data_root
    if kind != "run" and args.dataset is None and not _given(overrides, "dataset"):
        what = "an SSL cache does not record its dataset" if kind == "ssl-cache" else "--random-init"
        raise SsalError(f"{what}: give the dataset to evaluate on with --dataset NAME")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    meta = None
    if kind == "ssl-cache":
        encoder, meta = _load_ssl_cache(p)  # before loading the data: a bad file fails fast
    train, test = load_dataset(cfg.dataset, cfg.data_root, cfg.cache_dir, progress=not args.quiet)
    if kind == "ssl-cache":
        source, model_name, method = str(path), meta["model"], meta.get("method", "ssl")
        if int(meta["in_channels"]) != train.channels:
            raise SsalError(
                f"{path} was pretrained on {meta['in_channels']}-channel images; dataset {cfg.dataset} has {train.channels} channels"
            )
        if "num_images" in meta and int(meta["num_images"]) != len(train):
            print(
                f"ssal: warning: {path} was pretrained on {meta['num_images']} images; the train split of {cfg.dataset} "
                f"has {len(train)} (expected after class_caps, else check --dataset)",
                file=sys.stderr,
            )
    elif kind == "run":
        source, model_name, method = str(path), str(cfg.model), f"run ({cfg.train.mode})"
        encoder, meta = _run_encoder(p, cfg, train.channels)
    else:
        kw = model_kwargs(cfg)
        source = f"random-init {cfg.model}" + (f" model_width={cfg.model_width}" if cfg.model_width else "")
        model_name, method = str(cfg.model), "random-init"
        torch.manual_seed(0)
        encoder = build_backbone(cfg.model, train.channels, **kw)
    if meta is not None and "mean" in meta and "std" in meta:
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
    else:
        mean, std = channel_stats(train.images)

    # -- features, then the two probes
    idx = labels_per_class_subset(train.labels, args.per_class, seed=0) if args.per_class else torch.arange(len(train))
    bs = int(cfg.train.eval_batch_size)
    train_feats = extract_features(encoder, train.images[idx], mean, std, device, bs)
    test_feats = extract_features(encoder, test.images, mean, std, device, bs)
    train_labels = train.labels[idx]
    knn = knn_accuracy(train_feats, train_labels, test_feats, test.labels, k=args.k)
    linear, converged = None, None
    if not args.no_linear:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            linear = linear_probe_accuracy(train_feats, train_labels, test_feats, test.labels, threads=cfg.threads or None)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:
            print("ssal: warning: the linear probe did not converge in 1000 lbfgs iterations", file=sys.stderr)
    seconds = time.perf_counter() - t_start

    result = {
        "source": source,
        "kind": kind,
        "method": method,
        "model": model_name,
        "dataset": str(cfg.dataset),
        "feat_dim": int(train_feats.shape[1]),
        "knn_acc": knn,
        "knn_k": int(args.k),
        "knn_temperature": 0.07,
        "linear_acc": linear,
        "linear_converged": converged,
        "n_train": int(idx.numel()),
        "n_test": len(test),
        "per_class": args.per_class,
        "seconds": round(seconds, 2),
        "ssal_version": __version__,
    }
    row = {
        "source": source,
        "dataset": str(cfg.dataset),
        "dim": str(result["feat_dim"]),
        f"kNN acc (k={args.k})": f"{100 * knn:.2f}%",
        "linear acc": "-" if linear is None else f"{100 * linear:.2f}%",
        "n_train": str(result["n_train"]),
        "seconds": f"{seconds:.1f}",
    }
    print(_table(row))
    if args.json:
        atomic_write_json(args.json, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may come after options (`PATH --per-class 20 model_width=8`),
    # which plain parse_args rejects for a positional list
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "list":
            _list(args.what)
            return 0
        if args.command == "bench":
            from .bench import bench_main

            return bench_main(args.grid, workers=args.workers, summary_only=args.summary_only, dry_run=args.dry_run, target=args.target)
        if args.command == "eval-features":
            return _eval_features(args)
        if args.command == "report":
            from .report import write_report

            log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
            html_path, md_path = write_report(
                args.folder, args.out, embedding=not args.no_embedding, embedding_points=args.embedding_points, log=log
            )
            print(f"wrote {html_path} and {md_path}")
            return 0
        from .config import resolve_config, to_yaml

        cfg = resolve_config(args.config, args.overrides)
        if args.command == "pretrain":
            return _pretrain(cfg, progress=not args.quiet)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        from .loop import run_experiment

        records = run_experiment(cfg, resume=args.resume, progress=not args.quiet)
        last = records[-1]
        print(
            f"done: {len(records)} cycles, {last['n_labelled']} labels, test accuracy {100 * last['test_acc']:.2f}%; "
            f"results in {cfg.out}/"
        )
        return 0
    except SsalError as err:
        print(f"ssal: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nssal: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["main"]
