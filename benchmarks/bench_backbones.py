"""Training throughput of each backbone on this machine's CPU.

One training step = forward + cross-entropy + backward + SGD step (lr 0.01,
momentum 0.9, weight decay 5e-4, the MoBYv2AL protocol) on random data, since
speed does not depend on pixel values. A few untimed warm-up steps, then timed
steps; images per second is the batch size over each step's wall time,
reported as the median and range over the timed steps.

    PYTHONPATH=src python benchmarks/bench_backbones.py
    PYTHONPATH=src python benchmarks/bench_backbones.py --channels-last both --models smallcnn

Prints a markdown table. Default runtime on a 2-core CPU is about 1.5 minutes
(3 minutes with ``--channels-last both``),
most of it resnet18 and vgg16, which get only four timed steps each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from ssal.models import MODELS, build_model

# timed steps per model: a resnet18 step at batch 128 takes several seconds on 2 cores
DEFAULT_STEPS = {"resnet18": 4, "vgg16": 4, "smallcnn": 10}
SHAPES = ((3, 32), (1, 28))  # CIFAR / SVHN, Fashion-MNIST


def time_training(
    name: str, channels: int, size: int, batch: int, channels_last: bool, warmup: int, steps: int, width: int | None
) -> tuple[int, list[float]]:
    """(parameter count, images per second of each timed step)."""
    torch.manual_seed(0)
    kwargs = {"width": width} if (width is not None and name == "smallcnn") else {}
    model = build_model(name, num_classes=10, in_channels=channels, **kwargs).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    rates = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= warmup:
            rates.append(batch / (time.perf_counter() - t0))
    return sum(p.numel() for p in model.parameters()), rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=128, help="batch size (default 128)")
    ap.add_argument("--channels-last", choices=("on", "off", "both"), default="on", help="memory format (default on)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per configuration (default 1)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per configuration (default: per model)")
    ap.add_argument("--width", type=int, default=None, help="smallcnn base width (default: the builder's)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    formats = {"on": [True], "off": [False], "both": [False, True]}[args.channels_last]

    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"warm-up {args.warmup} step(s)\n")
    print("train img/s as median (min-max) over the timed steps; a shared CPU makes single steps noisy\n")
    print("| model | params | input | memory format | train img/s | s/step | timed steps |")
    print("|---|---|---|---|---|---|---|")
    t_start = time.perf_counter()
    for name in args.models:
        steps = args.steps or DEFAULT_STEPS.get(name, 3)
        for channels, size in SHAPES:
            for cl in formats:
                n, rates = time_training(name, channels, size, args.batch, cl, args.warmup, steps, args.width)
                med = statistics.median(rates)
                print(f"| {name} | {n / 1e6:.2f}M | {size}x{size}x{channels} | "
                      f"{'channels_last' if cl else 'NCHW'} | {med:,.0f} ({min(rates):,.0f}-{max(rates):,.0f}) | "
                      f"{args.batch / med:.2f} | {steps} |",
                      flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
