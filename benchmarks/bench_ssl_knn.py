"""kNN accuracy of each self-supervised method after equal CPU time
(BENCHMARKS.md, second table of the SSL section).

For each method: measure its training throughput (image pairs / s) on a few
steps, set the number of pretraining epochs so that the whole pretraining takes
about ``--minutes`` on this machine, pretrain with ssal's own pretraining code
(cached under ``--out``/cache, so a rerun skips finished methods), then report
kNN (k = 20, cosine) accuracy of the frozen encoder on the test split, the
train split being the kNN memory, next to a randomly initialised encoder.

    python benchmarks/bench_ssl_knn.py --dataset imagefolder:/tmp/cifar10-jpeg \\
        --minutes 10 --methods byol moby simclr vicreg --out runs/bench/ssl-knn
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ssal.augment import channel_stats
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.evaluation import extract_features, knn_accuracy
from ssal.models import build_backbone
from ssal.pretrain import pretrain, pretrain_views
from ssal.ssl import build_ssl
from ssal.train import _Stepper, lr_schedule


def throughput(cfg, images: torch.Tensor, mean, std, steps: int = 4) -> float:
    """Training images / s of one SSL step at cfg.ssl.batch_size (after one warm-up step)."""
    torch.manual_seed(0)
    enc = build_backbone(cfg.model, int(images.shape[1]), **({"width": cfg.model_width} if cfg.model_width else {}))
    method = build_ssl(cfg.ssl.method, enc, enc.feat_dim, **dict(cfg.ssl.options))
    fmt = torch.channels_last
    method.to(memory_format=fmt)
    stepper = _Stepper(method.trainable_parameters(), cfg.ssl, lr_schedule(cfg.ssl, 10, 10), torch.device("cpu"))
    views = pretrain_views(cfg.ssl, mean, std, method.num_views)
    g = torch.Generator().manual_seed(0)
    bs = int(cfg.ssl.batch_size)
    t = 0.0
    for k in range(steps + 1):
        x = images[k * bs : (k + 1) * bs]
        t0 = time.perf_counter()
        out = method([v(x, g).contiguous(memory_format=fmt) for v in views], update=True, index=torch.arange(bs))
        stepper.step(0, out.loss)
        method.after_step(k, 10)
        if k:
            t += time.perf_counter() - t0
    return steps * bs / t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--methods", nargs="*", default=["byol", "moby", "mocov2", "simclr", "simsiam", "vicreg", "rotation", "pcl"])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--images", type=int, default=0, help="pretrain on the first N train images (0 = all)")
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides (model_width=32, ssl.lr=...)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_dataset(args.dataset, progress=False)
    images = train.images[: args.images] if args.images else train.images
    mean, std = channel_stats(images)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    base = resolve_config(None, [f"dataset={args.dataset}", "model=smallcnn", "model_width=32", *args.set])
    if "random-init" not in results:
        torch.manual_seed(0)
        enc = build_backbone(base.model, int(images.shape[1]), **({"width": base.model_width} if base.model_width else {}))
        tr = extract_features(enc, train.images, mean, std)
        te = extract_features(enc, test.images, mean, std)
        results["random-init"] = {"knn": knn_accuracy(tr, train.labels, te, test.labels), "minutes": 0.0, "epochs": 0}
    for method in args.methods:
        if method in results:
            print(f"[skip] {method}: {results[method]}", flush=True)
            continue
        overrides = [f"dataset={args.dataset}", "model=smallcnn", "model_width=32", *args.set, f"ssl.method={method}"]
        if method == "pcl":
            overrides.append("ssl.options.warmup_epochs=1")
        cfg = resolve_config(None, overrides)
        rate = throughput(cfg, images, mean, std)
        epochs = max(1, math.floor(args.minutes * 60 * rate / images.shape[0]))
        cfg = resolve_config(None, [*overrides, f"ssl.epochs={epochs}", f"ssl.cache_dir={out / 'cache'}"])
        print(f"[run] {method}: {rate:.0f} img/s -> {epochs} epochs", flush=True)
        t0 = time.perf_counter()
        state, meta, _ = pretrain(images, cfg.model, {"width": cfg.model_width}, cfg.ssl, mean, std, torch.device("cpu"), progress=False)
        minutes = (time.perf_counter() - t0) / 60
        enc = build_backbone(cfg.model, int(images.shape[1]), width=cfg.model_width)
        enc.load_state_dict(state)
        tr = extract_features(enc, train.images, mean, std)
        te = extract_features(enc, test.images, mean, std)
        acc = knn_accuracy(tr, train.labels, te, test.labels)
        results[method] = {"knn": acc, "minutes": round(meta.get("seconds", minutes * 60) / 60, 2), "epochs": epochs, "img_per_s": round(rate)}
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[done] {method}: kNN {100 * acc:.2f}%", flush=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| method | img/s (2 views) | epochs | minutes | kNN acc (k=20) |", "|---|---|---|---|---|"]
    for m, r in results.items():
        lines.append(f"| {m} | {r.get('img_per_s', '-')} | {r['epochs']} | {r['minutes']} | {100 * r['knn']:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
