"""Cost of selection, measured side by side in one process per table.

``isal``: ISAL's faithful-mode scores of a pool by (a) one backward pass per image
(the released ISAL code's way), (b) vmap over grad and (c) one forward-mode pass
(jvp), checked identical; LiSSA's s_test; and last-layer mode on 50,000 images.

``last-layer``: last-layer ISAL on 50,000 images with float32 and with bfloat16
forward passes (``train.amp_cpu``), alternating, and how many picks agree.

``cost``: seconds and peak memory of one selection of every strategy at each pool
size, each (strategy, size) in its own subprocess so peak RSS is its own.

The network is a trained run's ``model.pt`` (CIFAR-10 CPU protocol, smallcnn
width 32); the pool is CIFAR-10 train + test images (images only), with 5,000
labelled images and a 1,000-image reference set.

    python benchmarks/bench_selection.py isal --data /tmp/cifar10-jpeg \
        --run runs/bench/cifar10-ssl/supervised-random-seed0 --json benchmarks/results/selection/isal_speed.json
    python benchmarks/bench_selection.py last-layer --data /tmp/cifar10-jpeg \
        --run runs/bench/cifar10-ssl/supervised-random-seed0 --json benchmarks/results/selection/last_layer_amp.json
    python benchmarks/bench_selection.py cost --data /tmp/cifar10-jpeg \
        --run runs/bench/cifar10-ssl/supervised-random-seed0 --json benchmarks/results/selection/cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ssal import influence as inf
from ssal.augment import TestView, channel_stats
from ssal.data import load_dataset
from ssal.lossnet import LossPredictionModule
from ssal.models import build_model
from ssal.strategies import build_strategy
from ssal.strategies.base import NetworkAccess, SelectionContext
from ssal.train import predict

COST_STRATEGIES = [
    ("random", {}),
    ("entropy", {}),
    ("coreset", {}),
    ("badge", {}),
    ("bald", {}),
    ("learning_loss", {}),
    ("isal-last_layer", {"mode": "last_layer"}),
    ("isal-faithful", {"mode": "faithful"}),
    ("vaal", {}),
    ("typiclust", {}),
    ("probcover", {}),
]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def setup(data: str, run: str, n_candidates: int, seed: int = 0, amp: bool = False):
    """(model, context) for a pool of ``n_candidates`` CIFAR-10 images; ``amp``:
    forward passes under bfloat16 autocast (``train.amp_cpu``)."""
    cfg = OmegaConf.load(Path(run) / "config.yaml")
    train, test = load_dataset(f"imagefolder:{data}", None, None, progress=False)
    images = torch.cat([train.images, test.images])
    labels = torch.cat([train.labels, test.labels])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=g)
    lab, ref = perm[:5000], perm[5000:6000]
    rest = perm[6000:]
    if n_candidates > len(rest):  # 50,000 candidates: every image not labelled or in R (54,000) is enough
        raise SystemExit(f"at most {len(rest)} candidates")
    cand = rest[:n_candidates].sort().values
    model = build_model(cfg.model, 10, 3, width=cfg.model_width)
    model.load_state_dict(torch.load(Path(run) / "model.pt", map_location="cpu"))
    model.eval()
    mean, std = channel_stats(train.images)
    prepare = TestView(mean, std)
    dev = torch.device("cpu")
    net = NetworkAccess(
        model=model, prepare=prepare, pool_images=lambda idx: images[idx], labelled_images=images[lab], labelled_labels=labels[lab],
        reference=(images[ref], labels[ref]), num_classes=10, device=dev, batch_size=512, amp=amp,
    )  # fmt: skip

    def embed(idx):
        return predict(model, images[idx], prepare, dev, 512, amp)

    loss_module = LossPredictionModule(model.backbone.stage_channels).eval()

    def predicted_loss(idx):
        from ssal.train import predict_losses

        return predict_losses(model, loss_module, images[idx], prepare, dev, 512)

    # pool indices here are dataset indices: candidates, and the labelled set as `labelled`
    ctx = SelectionContext(cand, lab, embed, torch.Generator().manual_seed(seed), network=net, predicted_loss=predicted_loss)
    return model, ctx, images, prepare


def bench_isal(args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, ctx, images, prepare = setup(args.data, args.run, args.pool)
    net = ctx.network
    params = inf.influence_parameters(model)
    n_params = sum(p.numel() for p in params.values())
    out = {"model": "smallcnn w32", "influence_parameters": n_params, "pool": args.pool, "threads": torch.get_num_threads()}
    # s_test by LiSSA with the paper defaults
    t = time.perf_counter()
    ref_x, ref_y = net.reference
    v = inf.reference_gradient(model, params, [(prepare(ref_x[s : s + 512]), ref_y[s : s + 512]) for s in range(0, len(ref_y), 512)])
    lab_x = net.labelled_images
    lab_y = net.labelled_labels
    s_test = inf.lissa(
        lambda idx, vec: inf.hvp(model, params, prepare(lab_x[idx]), lab_y[idx], vec), v, len(lab_y), 250, 4, 0.01, 1e4,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    out["lissa_seconds"] = round(time.perf_counter() - t, 2)
    x_all = images[ctx.candidates]
    scores = {}
    for method in ["jvp", "vmap", "loop"]:
        t = time.perf_counter()
        if method == "loop":
            parts = []
            for s in range(0, len(x_all), 256):
                parts.append(-(inf.loop_grads(model, params, prepare(x_all[s : s + 256])) @ s_test))
            scores[method] = torch.cat(parts)
        else:
            chunk = 512 if method == "jvp" else inf.auto_chunk(n_params)
            parts = [inf.influence_scores(model, params, prepare(x_all[s : s + chunk]), s_test, 1, chunk, method) for s in range(0, len(x_all), chunk)]
            scores[method] = torch.cat(parts)
        out[f"{method}_seconds"] = round(time.perf_counter() - t, 2)
        print(method, out[f"{method}_seconds"], flush=True)
    ref = scores["loop"]
    atol = 1e-4 * float(ref.abs().max())
    for method in ["jvp", "vmap"]:
        out[f"{method}_speedup_vs_loop"] = round(out["loop_seconds"] / out[f"{method}_seconds"], 2)
        out[f"{method}_max_rel_diff"] = float(((scores[method] - ref).abs() / ref.abs().clamp_min(atol)).max())
        out[f"{method}_identical_rtol_1e-4"] = bool(torch.allclose(scores[method], ref, rtol=1e-4, atol=atol))
        out[f"{method}_same_top1000"] = int(len(set(scores[method].argsort()[:1000].tolist()) & set(ref.argsort()[:1000].tolist())))
    # the same three computations in float64 on the first 1,000 images: equal up
    # to rounding (float32 sums over 292k parameters differ in their last digits)
    model64 = model.double()
    params64 = inf.influence_parameters(model64)
    s64 = s_test.double()
    x64 = prepare(x_all[:1000]).double()
    loop64 = -(inf.loop_grads(model64, params64, x64) @ s64)
    for method in ["jvp", "vmap"]:
        got = inf.influence_scores(model64, params64, x64, s64, 1, 100, method)
        out[f"{method}_float64_identical_rtol_1e-4"] = bool(torch.allclose(got, loop64, rtol=1e-4, atol=0.0))
        out[f"{method}_float64_max_rel_diff"] = float(((got - loop64).abs() / loop64.abs()).max())
    model.float()
    # last-layer mode on 50,000 candidates: the whole selection (forward passes of
    # pool, labelled and reference images included), then the closed form alone
    _, ctx50, _, _ = setup(args.data, args.run, 50000)
    t = time.perf_counter()
    picks = build_strategy("isal", mode="last_layer").select(ctx50, 1000)
    out["last_layer_50k_total_seconds"] = round(time.perf_counter() - t, 2)
    assert picks.numel() == 1000
    pool = ctx50.embed(ctx50.candidates)
    lab = ctx50.embed(ctx50.labelled)
    ref = predict(model, ctx50.network.reference[0], prepare, torch.device("cpu"), 512)
    t = time.perf_counter()
    inf.head_influence_scores(pool[0].double().softmax(1), pool[1], lab[0].double().softmax(1), lab[1],
                              ref[0].double().softmax(1), ref[1], ctx50.network.reference[1])  # fmt: skip
    out["last_layer_50k_closed_form_seconds"] = round(time.perf_counter() - t, 2)
    return out


def bench_last_layer(args) -> dict:
    """Last-layer ISAL on 50,000 candidates, float32 against bfloat16 forward
    passes (``train.amp_cpu=true``), alternating, best of ``--repeats`` each."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = {"model": "smallcnn w32", "candidates": 50000, "threads": torch.get_num_threads(), "repeats": args.repeats}
    picks, best = {}, {}
    for _ in range(args.repeats):
        for name, amp in [("float32", False), ("bfloat16", True)]:
            _, ctx, _, _ = setup(args.data, args.run, 50000, amp=amp)
            t = time.perf_counter()
            picks[name] = build_strategy("isal", mode="last_layer").select(ctx, 1000)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
            print(name, round(best[name], 2), flush=True)
    for name in best:
        out[f"{name}_seconds"] = round(best[name], 2)
    out["speedup"] = round(best["float32"] / best["bfloat16"], 2)
    out["same_picks_of_1000"] = len(set(picks["float32"].tolist()) & set(picks["bfloat16"].tolist()))
    return out


def bench_one(args) -> dict:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    name, opts = dict((n, (n, o)) for n, o in COST_STRATEGIES)[args.strategy]
    model, ctx, _, _ = setup(args.data, args.run, args.pool)
    if name == "bald":
        model.dropout = torch.nn.Dropout(0.3)  # MC dropout at selection (the cost is what is measured here)
    strat = build_strategy(name.split("-")[0], **opts)
    if hasattr(strat, "progress"):
        strat.progress = False
    reset_peak_rss()
    before = _status_mb("VmRSS")
    t = time.perf_counter()
    picks = strat.select(ctx, args.budget)
    seconds = time.perf_counter() - t
    peak = _status_mb("VmHWM")  # the peak during the selection
    assert picks.numel() == args.budget and picks.unique().numel() == args.budget
    return {"strategy": name, "pool": args.pool, "budget": args.budget, "seconds": round(seconds, 2),
            "rss_before_mb": round(before), "peak_rss_mb": round(peak), "peak_extra_mb": round(max(peak - before, 0))}  # fmt: skip


def bench_cost(args) -> list[dict]:
    rows = []
    for size in args.pool_sizes:
        for name, _ in COST_STRATEGIES:
            if args.strategies and name not in args.strategies:
                continue
            cmd = [sys.executable, __file__, "one", "--strategy", name, "--pool", str(size), "--data", args.data, "--run", args.run,
                   "--budget", str(args.budget), "--threads", str(args.threads)]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                row = {"strategy": name, "pool": size, "error": res.stderr.strip().splitlines()[-1]}
            else:
                row = json.loads(res.stdout.strip().splitlines()[-1])
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["isal", "last-layer", "cost", "one"])
    p.add_argument("--data", default="/tmp/cifar10-jpeg")
    p.add_argument("--run", default="runs/bench/cifar10-ssl/supervised-random-seed0")
    p.add_argument("--pool", type=int, default=10000)
    p.add_argument("--pool-sizes", type=int, nargs="*", default=[10000, 50000])
    p.add_argument("--strategies", nargs="*", default=[])
    p.add_argument("--strategy")
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="last-layer: timed runs of each precision")
    p.add_argument("--json")
    args = p.parse_args()
    if args.what == "one":
        print(json.dumps(bench_one(args)))
        return
    result = {"isal": bench_isal, "last-layer": bench_last_layer, "cost": bench_cost}[args.what](args)
    text = json.dumps({"command": " ".join(sys.argv), "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}", "result": result}, indent=1)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
