"""The ``ssal`` command line."""

from __future__ import annotations

import argparse
import sys

from .errors import SsalError

DESCRIPTION = """\
ssal: self-supervised active learning for image classification.

Active learning trains a model on a few labels, scores the unlabelled pool,
asks for the labels of the most useful images and repeats. `ssal run` runs such
an experiment on a benchmark dataset or your own image folder, revealing stored
labels as the 'oracle', and writes per-cycle results, the resolved config and a
learning curve into the run folder."""

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
               typiclust | probcover | prototypes
  initial      size of the random initial labelled set
  budget       images labelled per cycle
  cycles       number of train/evaluate rounds (|L| = initial + budget * cycle)
  subset       candidates scored per cycle (random subset of the pool), or all
  seed         one seed drives every random choice of the run
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
        from .strategies import STRATEGIES

        print("\n".join(STRATEGIES))
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        if args.command == "list":
            _list(args.what)
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
