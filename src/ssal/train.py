"""The single training loop, plus prediction and the final evaluation.

Supervised mode (this issue): SGD with momentum and weight decay, a per-step
learning-rate schedule computed up front (cosine or step), optional label
smoothing, batched on-device augmentation, channels_last, and AMP on CUDA.
The self-supervised modes (MoBYv2AL joint training and friends) plug in here.

Honesty rules enforced here: the test split is touched only by :func:`evaluate`,
which the loop calls once per cycle after the last epoch; every test image is
scored (no dropped partial batch).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import TrainConfig

View = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def lr_schedule(cfg: TrainConfig, steps_per_epoch: int, total_steps: int) -> list[float]:
    """Learning rate for every optimizer step.

    cosine: ``lr * (1 + cos(pi * k / K)) / 2``; step: ``lr * gamma ** (number of
    milestones passed)`` with milestones in epochs (the MoBYv2AL protocol divides
    by 10 at epochs 120 and 160, METHODS.md section 2); constant: ``lr``.
    A linear warm-up over ``warmup_epochs`` multiplies either.
    """
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    out = []
    for k in range(total_steps):
        if cfg.schedule == "cosine":
            lr = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * k / total_steps))
        elif cfg.schedule == "step":
            epoch = k / steps_per_epoch
            lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        else:
            lr = cfg.lr
        if warm and k < warm:
            lr *= (k + 1) / warm
        out.append(lr)
    return out


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def _memory_format(cfg: TrainConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


@dataclass
class TrainStats:
    steps: int
    epochs: int
    final_loss: float
    seconds: float

    def as_dict(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs, "final_loss": self.final_loss, "seconds": self.seconds}


def train_supervised(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    view: View,
    generator: torch.Generator,
    device: torch.device,
    progress: bool = True,
    desc: str = "train",
) -> TrainStats:
    """Train ``model`` on labelled ``images`` (uint8, N x C x H x W) and ``labels``.

    Each epoch is a fresh permutation drawn from ``generator`` (without
    replacement); the last partial batch is kept. The number of epochs is raised
    so that at least ``cfg.min_steps`` steps run (tiny labelled sets).
    """
    start = time.perf_counter()
    n = int(images.shape[0])
    bs = min(cfg.batch_size, n)
    spe = math.ceil(n / bs)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / spe))
    total = epochs * spe
    lrs = lr_schedule(cfg, spe, total)
    images = images.to(device)
    labels = labels.to(device)
    model.to(device=device, memory_format=_memory_format(cfg))
    model.train()
    opt = torch.optim.SGD(
        model.parameters(), lr=lrs[0], momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )
    use_amp = cfg.amp and device.type == "cuda"
    # float16 autocast (GPUs without bfloat16) needs loss scaling; bfloat16 does not.
    scaler = torch.amp.GradScaler("cuda") if use_amp and not torch.cuda.is_bf16_supported() else None
    step = 0
    loss_val = float("nan")
    bar = tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, unit="step")  # None: off when not a terminal
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(device)
        for b in range(spe):
            idx = perm[b * bs : (b + 1) * bs]
            x = view(images[idx], generator).contiguous(memory_format=_memory_format(cfg))
            y = labels[idx]
            for group in opt.param_groups:
                group["lr"] = lrs[step]
            with _autocast(device, use_amp):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            step += 1
            if step % 10 == 0 or step == total:
                loss_val = float(loss.detach())
                bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
            bar.update(1)
    bar.close()
    return TrainStats(steps=step, epochs=epochs, final_loss=loss_val, seconds=time.perf_counter() - start)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = True,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of un-augmented ``images`` in eval mode (no BN
    statistics updated), returned on the CPU in float32."""
    model.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    logits, feats = [], []
    for s in range(0, int(images.shape[0]), batch_size):
        x = prepare(images[s : s + batch_size].to(device)).contiguous(memory_format=fmt)
        with _autocast(device, amp):
            lo, fe = model.forward_with_features(x)
        logits.append(lo.float().cpu())
        feats.append(fe.float().cpu())
    if not logits:
        return torch.empty(0), torch.empty(0)
    return torch.cat(logits), torch.cat(feats)


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = True,
    channels_last: bool = True,
) -> dict:
    """Accuracy and per-class accuracy over every image of a split."""
    logits, _ = predict(model, images, prepare, device, batch_size, amp, channels_last)
    pred = logits.argmax(1)
    labels = labels.cpu()
    correct = pred == labels
    per_class = []
    for c in range(num_classes):
        m = labels == c
        per_class.append(float(correct[m].float().mean()) if bool(m.any()) else float("nan"))
    return {"acc": float(correct.float().mean()), "per_class_acc": per_class, "n": int(labels.numel())}
