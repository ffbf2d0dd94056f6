"""Representation-quality evaluation: kNN and linear-probe accuracy of frozen features.

The standard self-supervised-learning protocol, outside active learning: the
encoder is frozen, features of the whole train split (or a class-balanced subset
of it) and of the whole test split are extracted once from un-augmented images,
and two classifiers that have no trainable part in the encoder are scored on the
test split:

- :func:`knn_accuracy`: the weighted k-nearest-neighbour classifier of Wu et al.
  (CVPR 2018), as used by solo-learn and DINO (k = 20, cosine, temperature 0.07);
- :func:`linear_probe_accuracy`: multinomial logistic regression on standardised
  features, fixed hyper-parameters.

``ssal eval-features`` (:mod:`ssal.cli`) wires these to SSL caches, run folders
and randomly initialised backbones. Every function here is pure: tensors in,
tensors or floats out, no file access.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import TestView
from .utils import generator

__all__ = ["extract_features", "knn_accuracy", "linear_probe_accuracy", "labels_per_class_subset"]


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> Tensor:
    """Features ``(N, D)`` (float32, on the CPU) of uint8 ``images`` ``(N, C, H, W)``.

    The encoder (an image -> feature-vector backbone, e.g. ``Classifier.backbone``
    or the module :func:`ssal.pretrain.load_backbone` returns) runs in eval mode
    (BatchNorm uses its running statistics and none are updated), without
    gradients, in float32 and channels_last, on images only converted and
    normalised with ``mean`` / ``std`` (:class:`~ssal.augment.TestView`, no
    augmentation). The encoder is moved to ``device``; its train/eval flag is
    restored afterwards.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = torch.device(device)
    was_training = encoder.training
    encoder.to(device=device, memory_format=torch.channels_last).eval()
    prepare = TestView(mean, std, memory_format=torch.channels_last)
    out = []
    try:
        for s in range(0, int(images.shape[0]), batch_size):
            x = prepare(images[s : s + batch_size].to(device))
            out.append(encoder(x).float().flatten(1).cpu())
    finally:
        encoder.train(was_training)
    if not out:
        dim = getattr(encoder, "feat_dim", 0)
        return torch.empty(0, int(dim), dtype=torch.float32)
    return torch.cat(out)


def _check_pair(feats: Tensor, labels: Tensor, name: str) -> None:
    if feats.ndim != 2 or labels.ndim != 1 or feats.shape[0] != labels.shape[0]:
        raise ValueError(f"{name}: features must be (N, D) and labels (N,), got {tuple(feats.shape)} and {tuple(labels.shape)}")
    if feats.shape[0] == 0:
        raise ValueError(f"{name}: no samples")


@torch.no_grad()
def knn_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    weighted: bool = True,
    chunk: int = 1024,
) -> float:
    """Test accuracy of the weighted k-nearest-neighbour classifier on frozen features.

    The non-parametric classifier of Wu et al., "Unsupervised feature learning via
    non-parametric instance discrimination", CVPR 2018, section 3.4, in the form
    solo-learn and DINO report it: features are L2-normalised, the ``k`` train
    samples of highest cosine similarity ``s_i`` to a test sample vote for their
    labels with weight ``exp(s_i / temperature)``, and the class with the largest
    summed weight is the prediction. ``weighted=False`` gives a plain majority vote.
    Ties between classes go to the lowest class index. ``k`` larger than the train
    set is clamped to its size.

    Memory: similarities are computed in blocks of ``chunk`` test x ``chunk``
    train samples while a running top-k is kept per test sample, so 50,000 train x
    10,000 test features never form a dense 10,000 x 50,000 matrix. The result
    does not depend on ``chunk`` (up to exactly tied similarities).
    """
    _check_pair(train_feats, train_labels, "train")
    _check_pair(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"train and test features differ in dimension: {train_feats.shape[1]} vs {test_feats.shape[1]}")
    if k < 1 or temperature <= 0 or chunk < 1:
        raise ValueError(f"need k >= 1, temperature > 0 and chunk >= 1, got {k}, {temperature}, {chunk}")
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    train_labels = train_labels.long().to(train.device)
    test_labels = test_labels.long().to(train.device)
    test = test.to(train.device)
    n_train = int(train.shape[0])
    k = min(int(k), n_train)
    num_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    correct = 0
    for t0 in range(0, int(test.shape[0]), chunk):
        q = test[t0 : t0 + chunk]
        best_sim = torch.full((q.shape[0], 0), float("-inf"), device=q.device)
        best_idx = torch.empty((q.shape[0], 0), dtype=torch.long, device=q.device)
        for s0 in range(0, n_train, chunk):
            sim = q @ train[s0 : s0 + chunk].T  # (chunk, chunk) block
            kk = min(k, int(sim.shape[1]))
            top_sim, top_idx = sim.topk(kk, dim=1)
            # merge with the running top-k (earlier train indices first)
            cand_sim = torch.cat([best_sim, top_sim], dim=1)
            cand_idx = torch.cat([best_idx, top_idx + s0], dim=1)
            kk = min(k, int(cand_sim.shape[1]))
            best_sim, pos = cand_sim.topk(kk, dim=1)
            best_idx = cand_idx.gather(1, pos)
        if weighted:
            # exp((s - s_max) / T) = exp(s / T) times a per-row constant: the same
            # argmax, without overflow for small temperatures
            w = ((best_sim - best_sim[:, :1]) / temperature).exp()
        else:
            w = torch.ones_like(best_sim)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=w.dtype)
        votes.scatter_add_(1, train_labels[best_idx], w)
        pred = votes.argmax(dim=1)  # first maximum: ties go to the lowest class
        correct += int((pred == test_labels[t0 : t0 + chunk]).sum())
    return correct / int(test.shape[0])


def linear_probe_accuracy(
    train_feats: Tensor,
    train_labels: Tensor,
    test_feats: Tensor,
    test_labels: Tensor,
    max_iter: int = 1000,
    C: float = 1.0,
    threads: int | None = None,
) -> float:
    """Test accuracy of a linear classifier trained on frozen train features.

    Features are standardised with the mean and standard deviation of the train
    features only (``sklearn.preprocessing.StandardScaler`` fitted on train), then
    a multinomial logistic regression (L2 penalty of inverse strength ``C``, lbfgs,
    at most ``max_iter`` iterations) is fitted on the train features and scored
    once on the test features. The hyper-parameters are fixed: nothing is tuned
    on the test split (nor on any split), so the number is a plain, comparable
    probe rather than the best linear accuracy attainable. A
    ``ConvergenceWarning`` from scikit-learn is passed through to the caller.

    ``threads``: cap on the BLAS / OpenMP threads of the fit (threadpoolctl);
    ``None`` keeps the libraries' defaults. On a busy CPU one thread can be
    many times faster than oversubscribed threads.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    _check_pair(train_feats, train_labels, "train")
    _check_pair(test_feats, test_labels, "test")
    y_train = train_labels.cpu().numpy().astype(np.int64)
    if np.unique(y_train).size < 2:
        raise ValueError("linear probe needs train samples of at least two classes")
    scaler = StandardScaler().fit(train_feats.float().cpu().numpy().astype(np.float64))
    x_train = scaler.transform(train_feats.float().cpu().numpy().astype(np.float64))
    x_test = scaler.transform(test_feats.float().cpu().numpy().astype(np.float64))
    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")  # lbfgs: multinomial for > 2 classes
    limit = threadpool_limits(threads) if threads else nullcontext()
    with limit:
        clf.fit(x_train, y_train)
        pred = clf.predict(x_test)
    return float((pred == test_labels.cpu().numpy()).mean())


def labels_per_class_subset(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Sorted indices (LongTensor) of a random class-balanced subset of ``labels``:
    ``per_class`` samples of every class present (all of a class that has fewer),
    drawn without replacement. The same ``labels``, ``per_class`` and ``seed``
    always give the same subset; used for "kNN / linear probe with only N labels
    per class"."""
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    labels = labels.long().cpu()
    g = generator(seed, "per-class-subset")
    picks = []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    if not picks:
        return torch.empty(0, dtype=torch.long)
    return torch.cat(picks).sort().values
