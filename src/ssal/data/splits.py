"""Seeded index selections over a label vector: class caps and validation splits.

Every function here returns sorted int64 index tensors into ``labels`` and is
deterministic for a given seed (a private ``torch.Generator``; global RNG state
is neither read nor changed).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

from ssal.errors import SsalError


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    return labels.detach().cpu().long()


def _class_indices(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    """Map each present class to the (ascending) indices of its images."""
    y = labels.numpy()
    order = np.argsort(y, kind="stable")
    classes, starts = np.unique(y[order], return_index=True)
    bounds = list(starts[1:]) + [len(y)]
    return {int(c): torch.from_numpy(order[a:b].astype(np.int64)) for c, a, b in zip(classes, starts, bounds)}


def apply_class_caps(labels: torch.Tensor, caps: dict[int, int] | None, seed: int) -> torch.Tensor:
    """Return the sorted indices kept after cutting each capped class to at most ``cap`` images.

    ``caps`` maps class index -> maximum count; classes not in ``caps`` keep all
    their images, and ``None`` or ``{}`` keeps everything. Which images survive a
    cut is a seeded random choice without replacement.
    """
    labels = _check_labels(labels)
    if not caps:
        return torch.arange(labels.numel(), dtype=torch.long)
    for cls, cap in caps.items():
        if isinstance(cls, bool) or not isinstance(cls, Integral):
            raise SsalError(f"class_caps: class key {cls!r} is not an integer class index")
        if isinstance(cap, bool) or not isinstance(cap, Integral) or cap < 0:
            raise SsalError(f"class_caps[{cls}] must be an integer >= 0, got {cap!r}")
    gen = torch.Generator().manual_seed(int(seed))
    keep: list[torch.Tensor] = []
    for cls, idx in _class_indices(labels).items():
        cap = caps.get(cls)
        if cap is not None and idx.numel() > cap:
            perm = torch.randperm(idx.numel(), generator=gen)
            idx = idx[perm[: int(cap)]]
        keep.append(idx)
    return torch.sort(torch.cat(keep)).values if keep else torch.empty(0, dtype=torch.long)


def imbalanced_caps(num_classes: int, classes_cut: list[int], cap: int) -> dict[int, int]:
    """Caps for an imbalanced setting: each class in ``classes_cut`` limited to ``cap`` images.

    MoBYv2AL's imbalanced CIFAR-10 cuts 5 classes to 500 images (pool 27,500),
    e.g. ``imbalanced_caps(10, [0, 1, 2, 3, 4], 500)``.
    """
    if isinstance(cap, bool) or not isinstance(cap, Integral) or cap < 0:
        raise SsalError(f"imbalance cap must be an integer >= 0, got {cap!r}")
    out: dict[int, int] = {}
    for cls in classes_cut:
        if isinstance(cls, bool) or not isinstance(cls, Integral) or not 0 <= cls < num_classes:
            raise SsalError(f"classes_cut: class {cls!r} is not in 0..{num_classes - 1}")
        out[int(cls)] = int(cap)
    return out


def _validation_count(val_size: int | float, n: int) -> int:
    """Turn ``val_size`` (fraction or count) into a total count, or raise SsalError."""
    if isinstance(val_size, bool):
        raise SsalError(f"val_size must be a fraction in [0, 1) or a count in [0, {n}), got {val_size!r}")
    if isinstance(val_size, Integral):
        if 0 <= val_size < max(n, 1):
            return int(val_size)
    elif isinstance(val_size, Real) and math.isfinite(val_size) and 0.0 <= val_size < 1.0:
        return int(round(float(val_size) * n))
    raise SsalError(f"val_size must be a fraction in [0, 1) or a count in [0, {n}), got {val_size!r}")


def split_validation(labels: torch.Tensor, val_size: int | float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split train indices into ``(pool_idx, val_idx)``, stratified by class and seeded.

    ``val_size`` is a fraction in [0, 1) or an image count in [0, N); 0 gives an
    empty validation set. Per-class validation counts follow the class shares
    (largest-remainder rounding, so the total is exact). Both outputs are sorted,
    disjoint, and together cover ``range(N)``.
    """
    labels = _check_labels(labels)
    n = labels.numel()
    total = _validation_count(val_size, n)
    all_idx = torch.arange(n, dtype=torch.long)
    if total == 0:
        return all_idx, torch.empty(0, dtype=torch.long)

    groups = _class_indices(labels)
    classes = sorted(groups)
    quotas = [total * groups[c].numel() / n for c in classes]
    counts = [math.floor(q) for q in quotas]
    remainder = total - sum(counts)
    # Largest fractional part first; ties go to the lower class index.
    order = sorted(range(len(classes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1

    gen = torch.Generator().manual_seed(int(seed))
    val_parts: list[torch.Tensor] = []
    for c, k in zip(classes, counts):
        idx = groups[c]
        perm = torch.randperm(idx.numel(), generator=gen)
        val_parts.append(idx[perm[:k]])
    val_idx = torch.sort(torch.cat(val_parts)).values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return all_idx[mask], val_idx
