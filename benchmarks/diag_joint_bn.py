"""Does a joint model lose accuracy to its BatchNorm statistics?

In ``train.mode=joint`` the online encoder runs on the classifier's weak views
and on the SSL branch's strong views (colour jitter, grayscale, blur,
solarize), so BatchNorm's running statistics, used at evaluation, average over
both, while the classifier was trained on weak-view batch statistics. This
script loads a finished joint run (cycle 0: its initial labelled set), and
prints its **validation** accuracy as trained and after re-estimating the
statistics (PreciseBN, :func:`ssal.train.recalibrate_batchnorm`) on three sets
of images. The test split is not read: this is a diagnostic, and nothing may be
picked on the test split.

    ssal run --config cpu-mobyv2al-cifar10 dataset=imagefolder:/tmp/cifar10-jpeg strategy=random cycles=1 seed=0 out=/tmp/diag/j0
    python benchmarks/diag_joint_bn.py /tmp/diag/j0 --json benchmarks/results/joint_bn/seed0.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ssal.augment import TestView, WeakView, channel_stats
from ssal.loop import prepare_splits
from ssal.modes import build_classifier
from ssal.train import evaluate, recalibrate_batchnorm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder of train.mode=joint with cycles=1")
    ap.add_argument("--json", type=Path, help="write the accuracies here")
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    cfg = OmegaConf.load(args.run / "config.yaml")
    if cfg.train.mode != "joint" or cfg.cycles != 1:
        raise SystemExit(f"{args.run}: expected a train.mode=joint run with cycles=1")
    splits = prepare_splits(cfg, progress=False)
    state = json.loads((args.run / "state.json").read_text())
    labelled = torch.tensor(state["pool"]["order"], dtype=torch.long)[: cfg.initial]
    mean, std = channel_stats(splits.pool.images)  # as the run's ModeData
    model = build_classifier(cfg, len(splits.classes), int(splits.pool.images.shape[1]))
    saved = torch.load(args.run / "model.pt")
    device = torch.device("cpu")
    clean = TestView(mean, std)
    g = torch.Generator().manual_seed(0)
    weak = WeakView(mean, std)

    def val_acc() -> float:
        return 100 * evaluate(model, splits.val.images, splits.val.labels, len(splits.classes), clean, device)["acc"]

    model.load_state_dict(saved)
    out = {"run": str(args.run), "val_images": len(splits.val.labels), "as trained": val_acc()}
    pool_sample = splits.pool.images[torch.randperm(len(splits.pool), generator=g)[:10000]]
    for name, view, images in (
        ("weak views of the labelled set", lambda b: weak(b, g), splits.pool.images[labelled]),
        ("un-augmented labelled set", clean, splits.pool.images[labelled]),
        ("10,000 un-augmented pool images", clean, pool_sample),
    ):
        model.load_state_dict(saved)
        batches = (view(images[i : i + args.batch]).contiguous(memory_format=torch.channels_last) for i in range(0, len(images), args.batch))
        recalibrate_batchnorm(model.backbone, batches)
        out[f"recalibrated on {name}"] = val_acc()
    for k, v in out.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
