"""float32 against bfloat16 autocast on the CPU (``train.amp_cpu`` /
``ssl.amp_cpu``), side by side in one process: CPU seconds per step of
supervised training, of inference, and of a pretraining step of each SSL
method, on CIFAR-10- and Fashion-MNIST-shaped batches (random pixels: speed
only). The two precisions alternate and each keeps its best of ``--repeats``.
CPU time (``time.process_time``), so other work on the machine does not change
the numbers much; one torch thread unless ``--threads``.

    python benchmarks/bench_amp.py --json benchmarks/results/amp/steps.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ssal.models import build_backbone, build_model
from ssal.ssl import build_ssl
from ssal.train import _autocast

CPU = torch.device("cpu")
CL = torch.channels_last


def _best(step, repeats: int, steps: int) -> dict[str, float]:
    """Best CPU seconds per call of ``step(amp)`` for each precision, alternating."""
    best = {"float32": float("inf"), "bfloat16": float("inf")}
    for amp in (False, True):  # warm-up: first-call allocations and oneDNN kernel choice
        step(amp)
    for _ in range(repeats):
        for name, amp in (("float32", False), ("bfloat16", True)):
            t = time.process_time()
            for _ in range(steps):
                step(amp)
            best[name] = min(best[name], (time.process_time() - t) / steps)
    return best


def supervised(ch: int, hw: int, batch: int):
    model = build_model("smallcnn", 10, ch, width=32).to(memory_format=CL).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, ch, hw, hw).contiguous(memory_format=CL)
    y = torch.randint(0, 10, (batch,))

    def step(amp: bool) -> None:
        with _autocast(CPU, amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def inference(ch: int, hw: int, batch: int):
    model = build_model("smallcnn", 10, ch, width=32).to(memory_format=CL).eval()
    x = torch.randn(batch, ch, hw, hw).contiguous(memory_format=CL)

    @torch.no_grad()
    def step(amp: bool) -> None:
        with _autocast(CPU, amp):
            model.forward_with_features(x)

    return step


def ssl_step(method: str, ch: int, hw: int, batch: int):
    encoder = build_backbone("smallcnn", ch, width=32)
    m = build_ssl(method, encoder, encoder.feat_dim).to(memory_format=CL)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.01, momentum=0.9)
    views = [torch.randn(batch, ch, hw, hw).contiguous(memory_format=CL) for _ in range(m.num_views)]

    def step(amp: bool) -> None:
        with _autocast(CPU, amp):
            loss = m(views).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    p.add_argument("--methods", nargs="*", default=["byol", "moby", "simclr", "vicreg", "rotation"])
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for data, ch, hw in (("cifar10", 3, 32), ("fashionmnist", 1, 28)):
        cases = [("supervised train, batch 128", supervised(ch, hw, 128), 128), ("inference, batch 512", inference(ch, hw, 512), 512)]
        cases += [(f"{m} pretraining, batch 256", ssl_step(m, ch, hw, 256), 256) for m in args.methods]
        for what, step, batch in cases:
            best = _best(step, args.repeats, args.steps)
            row = {
                "data": data,
                "what": what,
                "float32_s_per_step": round(best["float32"], 4),
                "bfloat16_s_per_step": round(best["bfloat16"], 4),
                "float32_images_per_cpu_s": round(batch / best["float32"], 1),
                "bfloat16_images_per_cpu_s": round(batch / best["bfloat16"], 1),
                "speedup": round(best["float32"] / best["bfloat16"], 2),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    text = json.dumps(
        {
            "command": " ".join(sys.argv),
            "machine": f"{os.cpu_count()} CPU cores ({cpu}; avx512_bf16: {'avx512_bf16' in flags}, amx: {'amx_bf16' in flags}), "
            f"torch {torch.__version__}, {args.threads} thread(s)",
            "rows": rows,
        },
        indent=1,
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
