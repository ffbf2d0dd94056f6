"""kNN accuracy of each self-supervised method after equal CPU time
(BENCHMARKS.md, second table of the SSL section).

For each method: measure its training throughput (images / s of CPU time, so
other processes on the machine do not change the budget) on a few steps, set
the number of pretraining epochs over the first ``--images`` training images so
that the whole pretraining takes about ``--minutes`` of CPU time, pretrain with
ssal's own pretraining code (cached under ``--out``/cache; a rerun skips
finished methods), then report kNN (k = 20, cosine) accuracy of the frozen
encoder on the test split, the whole train split being the kNN memory, next to
a randomly initialised encoder. Run it with one torch thread
(OMP_NUM_THREADS=1) so that CPU time is compute time.

A method entry is a registered SSL method name, or ``label:method:key=value,...``
for a variant with extra config overrides (``byol-mc4:byol:ssl.multicrop=4``).

    OMP_NUM_THREADS=1 python benchmarks/bench_ssl_knn.py --dataset imagefolder:/tmp/cifar10-jpeg \\
        --minutes 8 --images 10000 --out runs/bench/ssl-knn
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
from ssal.pretrain import local_views, pretrain, pretrain_views
from ssal.ssl import build_ssl
from ssal.train import _Stepper, lr_schedule


def throughput(cfg, images: torch.Tensor, mean, std, steps: int = 4) -> float:
    """Training images / CPU-second of one SSL step at cfg.ssl.batch_size (after one warm-up step)."""
    torch.manual_seed(0)
    enc = build_backbone(cfg.model, int(images.shape[1]), **({"width": cfg.model_width} if cfg.model_width else {}))
    method = build_ssl(cfg.ssl.method, enc, enc.feat_dim, **dict(cfg.ssl.options))
    fmt = torch.channels_last
    method.to(memory_format=fmt)
    stepper = _Stepper(method.trainable_parameters(), cfg.ssl, lr_schedule(cfg.ssl, 10, 10), torch.device("cpu"))
    views = pretrain_views(cfg.ssl, mean, std, method.num_views)
    small = local_views(cfg.ssl, mean, std)
    g = torch.Generator().manual_seed(0)
    bs = int(cfg.ssl.batch_size)
    t = 0.0
    for k in range(steps + 1):
        x = images[k * bs : (k + 1) * bs]
        t0 = time.process_time()
        extra = {"local_views": [v(x, g).contiguous(memory_format=fmt) for v in small]} if small else {}
        out = method([v(x, g).contiguous(memory_format=fmt) for v in views], update=True, index=torch.arange(bs), **extra)
        stepper.step(0, out.loss)
        method.after_step(k, 10)
        if k:
            t += time.process_time() - t0
    return steps * bs / t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--methods", nargs="*", default=["byol", "moby", "mocov2", "simclr", "simsiam", "vicreg", "rotation", "pcl"])
    p.add_argument("--minutes", type=float, default=10.0, help="CPU minutes of pretraining per method")
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
        results["random-init"] = {"knn": knn_accuracy(tr, train.labels, te, test.labels), "cpu_minutes": 0.0, "epochs": 0}
    for entry in args.methods:
        label, method, extra = (entry.split(":", 2) + [""])[:3] if ":" in entry else (entry, entry, "")
        if label in results:
            print(f"[skip] {label}: {results[label]}", flush=True)
            continue
        overrides = [f"dataset={args.dataset}", "model=smallcnn", "model_width=32", *args.set, f"ssl.method={method}"]
        overrides += [x for x in extra.split(",") if x]
        if method == "pcl":
            overrides.append("ssl.options.warmup_epochs=1")
        cfg = resolve_config(None, overrides)
        rate = throughput(cfg, images, mean, std)
        epochs = max(1, math.floor(args.minutes * 60 * rate / images.shape[0]))
        cfg = resolve_config(None, [*overrides, f"ssl.epochs={epochs}", f"ssl.cache_dir={out / 'cache'}"])
        print(f"[run] {label}: {rate:.0f} img/s -> {epochs} epochs", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            state, meta, _ = pretrain(images, cfg.model, {"width": cfg.model_width}, cfg.ssl, mean, std, torch.device("cpu"), progress=False)
        except FloatingPointError as err:  # recorded, so the table says which setting diverged
            results[label] = {"knn": float("nan"), "diverged": str(err), "epochs": epochs, "images": int(images.shape[0]), "overrides": overrides[1:]}
            results_path.write_text(json.dumps(results, indent=1) + "\n")
            print(f"[diverged] {label}: {err}", flush=True)
            continue
        wall, cpu = (time.perf_counter() - t0) / 60, (time.process_time() - c0) / 60
        enc = build_backbone(cfg.model, int(images.shape[1]), width=cfg.model_width)
        enc.load_state_dict(state)
        tr = extract_features(enc, train.images, mean, std)
        te = extract_features(enc, test.images, mean, std)
        acc = knn_accuracy(tr, train.labels, te, test.labels)
        results[label] = {
            "knn": acc, "cpu_minutes": round(cpu, 2), "wall_minutes": round(wall, 2), "epochs": epochs,
            "images": int(images.shape[0]), "img_per_cpu_s": round(rate), "overrides": overrides[1:],
        }
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[done] {label}: kNN {100 * acc:.2f}% after {cpu:.1f} CPU min", flush=True)
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    lines = ["| method | images / CPU-s | epochs of the subset | CPU minutes | kNN acc (k=20) |", "|---|---:|---:|---:|---:|"]
    for m, r in results.items():
        knn = "diverged" if r.get("diverged") else f"{100 * r['knn']:.2f}"
        lines.append(f"| {m} | {r.get('img_per_cpu_s', '-')} | {r['epochs']} | {r.get('cpu_minutes', 0.0)} | {knn} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
