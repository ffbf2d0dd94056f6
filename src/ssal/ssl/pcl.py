"""PCL - Prototypical Contrastive Learning (Li, Zhou, Xiong & Hoi, ICLR 2021,
"Prototypical Contrastive Learning of Unsupervised Representations", Alg. 1,
Eq. 6-12; METHODS.md sec. 5).

A MoCo backbone (key queue, constant momentum 0.999, 128-d output, t = 0.2) plus
prototypes found by an EM loop:

- E-step (:meth:`PCL.epoch_start`, every epoch once the ``warmup_epochs``
  InfoNCE-only epochs are over): momentum features ``v'`` of every un-augmented
  training image, spherical k-means at each of the M granularities
  ``num_clusters`` (centroids L2-normalised), and the concentration ``phi`` of
  each cluster (:func:`concentration`, Eq. 12).
- M-step (:meth:`PCL.forward`): ProtoNCE (Eq. 11) =
  ``InfoNCE + (1/M) sum_m CE([v.c_pos / phi_pos, v.c_neg_1..r / phi_neg], 0)``
  with the r negative prototypes drawn uniformly without replacement from the
  clusters not assigned to any image of the batch, and (by default) the
  batch's other clusters as negatives too (see below).

As :class:`~ssal.ssl.mocov2.MoCoV2` in this repository the loss is symmetrised
over the two views (each view is the query once against the other view's key;
both keys enter one queue), and the prototype term is added for both queries
(with the same sampled negatives), so each query carries Eq. 11 exactly.

Differences from the released code (github.com/salesforce/PCL), all documented:
the released prototype logits hold the positive prototypes of *every* image of
the batch (label = row index) plus r negatives, so a cluster used by several
images appears several times; here (``batch_prototypes=True``, the default)
each row scores the batch's *distinct* clusters plus the r shared negatives,
its own cluster the target. ``batch_prototypes=False`` is the paper's Eq. 11
and METHODS.md's literal form: its own positive and the r negatives only,
which at CIFAR's 50 clusters and batches of 256 leaves almost no negative.
The released k-means is L2 k-means (5 restarts) whose centroids are normalised
afterwards; here it is spherical k-means (faiss, one run), so the concentration
is measured to the unit centroids the loss uses.

State: the cluster results (:attr:`PCL.centroids`, :attr:`PCL.phis`,
:attr:`PCL.assignments`) are plain attributes, not buffers: they are *not* in
``state_dict()`` and are recomputed by the next :meth:`PCL.epoch_start` (a
resumed run calls it again before training on). ``state_dict()`` therefore has
exactly MoCoV2's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SsalError
from .base import SSLOutput
from .mocov2 import MoCoV2, info_nce

__all__ = [
    "AUTO_CLUSTER_DIVISORS",
    "PCL",
    "auto_num_clusters",
    "concentration",
    "proto_loss",
    "proto_nce_loss",
    "sample_negatives",
    "spherical_kmeans",
]

#: ``num_clusters="auto"``: one granularity per divisor, ``k = round(N / d)``.
AUTO_CLUSTER_DIVISORS: tuple[int, ...] = (1000, 500, 250)


def auto_num_clusters(n: int, divisors: Sequence[int] = AUTO_CLUSTER_DIVISORS) -> tuple[int, ...]:
    """Granularities "scaled to the dataset" (METHODS.md sec. 5: ImageNet uses
    25k/50k/100k for 1.28M images; CIFAR 50/100/200 for 50k).

    ``k_m = min(n, max(2, floor(n / d_m + 0.5)))`` for ``d_m`` in (1000, 500, 250):
    n = 50,000 -> (50, 100, 200); n = 5,000 -> (5, 10, 20); n = 60 -> (2, 2, 2).
    """
    if n < 1:
        raise ValueError(f"need at least one image to cluster, got {n}")
    return tuple(min(n, max(2, int(n / d + 0.5))) for d in divisors)


#: below this many point-centroid pairs k-means runs on one thread.


def spherical_kmeans(features: Tensor, k: int, seed: int, niter: int = 20) -> tuple[Tensor, Tensor]:
    """Spherical k-means of the rows of ``features`` (n, d) on all n points
    (:func:`ssal.clustering.kmeans`, faiss). Returns ``(centroids (k, d),
    assignments (n,) long)`` on ``features``' device; the centroids are unit
    vectors and each row goes to its nearest centroid."""
    from ..clustering import kmeans

    n = int(features.shape[0])
    if not 1 <= k <= n:
        raise ValueError(f"cannot cluster {n} points into {k} clusters")
    centroids, assign = kmeans(features.detach().float(), int(k), int(seed), niter=int(niter), spherical=True)
    return F.normalize(centroids, dim=1).to(features.device), assign.to(features.device)


def concentration(
    features: Tensor,
    assignments: Tensor,
    centroids: Tensor,
    num_clusters: int,
    alpha: float = 10.0,
    temperature: float = 0.2,
) -> Tensor:
    """Concentration ``phi`` of each cluster (PCL Eq. 12 and the released recipe).

    ``phi_c = (1/Z) sum_z ||v'_z - c||_2 / log(Z + alpha)`` over the Z members of
    cluster c. Clusters with ``Z <= 1`` (singletons and empty clusters) get the
    largest phi of the others; then phi is clipped to its 10th-90th percentiles
    (linear interpolation, as ``numpy.percentile``) and rescaled so that
    ``mean(phi) == temperature``. If no cluster has two members (or every phi is
    zero) every cluster gets ``temperature``.

    features: (n, d) momentum features; assignments: (n,) cluster ids in
    ``[0, num_clusters)``; centroids: (num_clusters, d). Returns (num_clusters,)
    float32.
    """
    k = int(num_clusters)
    x = features.detach().double()
    c = centroids.detach().double().to(x.device)
    a = assignments.to(x.device).long()
    dist = (x - c[a]).norm(dim=1)
    count = torch.bincount(a, minlength=k)[:k].double()
    total = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, a, dist)
    many = count > 1
    phi = torch.zeros(k, dtype=torch.float64, device=x.device)
    phi[many] = total[many] / count[many] / torch.log(count[many] + alpha)
    if not bool(many.any()):
        return torch.full((k,), float(temperature), dtype=torch.float32, device=features.device)
    phi[~many] = phi[many].max()
    lo, hi = torch.quantile(phi, 0.1), torch.quantile(phi, 0.9)
    phi = phi.clamp(lo, hi)
    mean = phi.mean()
    if not bool(mean > 0):
        return torch.full((k,), float(temperature), dtype=torch.float32, device=features.device)
    return (temperature * phi / mean).float().to(features.device)


def sample_negatives(
    pos_assign: Tensor, num_clusters: int, num_negatives: int, generator: torch.Generator | None = None
) -> Tensor:
    """The ids of ``min(num_negatives, available)`` negative prototypes, drawn
    uniformly without replacement from the clusters that no image of the batch
    is assigned to (PCL Sec. 3.3: "r negative prototypes"; the paper needs
    r < available, here r is capped to what is available).

    ``generator`` (a CPU :class:`torch.Generator`) makes the draw reproducible;
    ``None`` uses the global RNG. Returns a (r,) long tensor on ``pos_assign``'s device.
    """
    mask = torch.ones(int(num_clusters), dtype=torch.bool, device=pos_assign.device)
    mask[pos_assign.long()] = False
    avail = mask.nonzero().squeeze(1)
    n = int(avail.numel())
    r = min(max(int(num_negatives), 0), n)
    perm = torch.randperm(n, generator=generator) if generator is not None else torch.randperm(n)
    return avail[perm[:r].to(avail.device)]


def proto_loss(
    q: Tensor,
    centroids: Tensor,
    phi: Tensor,
    pos_assign: Tensor,
    neg_ids: Tensor,
    reduction: str = "mean",
    batch_prototypes: bool = True,
) -> Tensor:
    """One granularity's prototype term of ProtoNCE (PCL Eq. 11, second sum):
    ``CE([q.c_pos / phi_pos, q.c_neg_1 / phi_neg_1, ..., q.c_neg_r / phi_neg_r], 0)``.

    q: (B, D) L2-normalised queries; centroids: (k, D) unit prototypes; phi: (k,)
    concentrations; pos_assign: (B,) each query's cluster; neg_ids: (r,) negative
    prototype ids shared by the batch (:func:`sample_negatives`). reduction
    ``"none"`` gives the (B,) per-sample losses.

    ``batch_prototypes`` (default) also scores each query against the *other*
    clusters the batch uses, each once: the candidates are the batch's distinct
    clusters plus the r sampled ones, as in the released code (which repeats a
    cluster once per image that uses it; here each appears once). With the
    paper's strict form (``False``) the negatives are only clusters unused by
    the batch, and at CIFAR's coarse granularities (50 clusters, batches of
    256) almost none are left, so the term is about zero.
    """
    c = centroids.to(device=q.device)
    p = phi.to(device=q.device)
    pos_assign = pos_assign.to(q.device).long()
    neg_ids = neg_ids.to(q.device).long()
    if batch_prototypes:
        used, target = torch.unique(pos_assign, return_inverse=True)
        cand = torch.cat([used, neg_ids])
        logits = (q @ c[cand].to(q.dtype).t()) / p[cand].to(q.dtype).unsqueeze(0)
        return F.cross_entropy(logits, target, reduction=reduction)
    pos = (q * c[pos_assign].to(q.dtype)).sum(1, keepdim=True) / p[pos_assign].unsqueeze(1)
    neg = (q @ c[neg_ids].to(q.dtype).t()) / p[neg_ids].unsqueeze(0)
    logits = torch.cat([pos, neg.to(pos.dtype)], 1)
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def proto_nce_loss(
    q: Tensor,
    k: Tensor,
    queue: Tensor,
    prototypes_list: Sequence[Tensor],
    phis_list: Sequence[Tensor],
    assignments_list: Sequence[Tensor],
    index: Tensor,
    temperature: float = 0.2,
    num_negatives: int = 16000,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    batch_prototypes: bool = True,
) -> Tensor:
    """ProtoNCE for one query direction (PCL Eq. 11):
    ``InfoNCE(q, k, queue) + (1/M) sum_m proto_loss(q, c_m, phi_m, assign_m[index], negatives_m)``.

    prototypes_list / phis_list / assignments_list: per granularity m, the (k_m, D)
    unit centroids, (k_m,) concentrations and (N,) cluster id of every training
    image; index: (B,) the batch's positions in the training set. Negatives are
    drawn per granularity with :func:`sample_negatives` from ``generator``;
    ``batch_prototypes`` as in :func:`proto_loss`.
    With no granularity this is plain InfoNCE (the warm-up loss).
    """
    per = info_nce(q, k, queue, temperature, "none")
    m_count = len(prototypes_list)
    for c, phi, assign in zip(prototypes_list, phis_list, assignments_list):
        pos = assign.to(index.device)[index].to(q.device)
        neg = sample_negatives(pos, int(c.shape[0]), num_negatives, generator)
        per = per + proto_loss(q, c, phi, pos, neg, "none", batch_prototypes) / m_count
    if reduction == "none":
        return per
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    raise ValueError(f"unknown reduction {reduction!r}")


def _num_clusters_option(value: object) -> tuple[int, ...] | str:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"num_clusters must be 'auto' or a list of integers >= 2, got {value!r}")
        return "auto"
    if isinstance(value, int):
        value = [value]
    try:
        ks = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"num_clusters must be 'auto' or a list of integers >= 2, got {value!r}") from None
    if not ks or any(k < 2 for k in ks):
        raise ValueError(f"num_clusters must be 'auto' or a list of integers >= 2, got {value!r}")
    return ks


class PCL(MoCoV2):
    """PCL with MoCo v2's symmetric InfoNCE (see the module docstring).

    Options: ``num_clusters`` a list of granularities or ``"auto"``
    (:func:`auto_num_clusters`: N/1000, N/500, N/250 rounded, 50/100/200 on
    CIFAR's 50k images); ``warmup_epochs`` InfoNCE-only epochs (no E-step before
    epoch ``warmup_epochs``, 0-based); ``num_negatives`` r, capped to the clusters
    available; ``batch_prototypes`` also scores the batch's other clusters
    (:func:`proto_loss`; ``False``: Eq. 11's unused clusters only); ``alpha`` of Eq. 12; ``kmeans_niter``; ``seed`` for k-means and
    the negative draws. The momentum is constant (``momentum_base ==
    momentum_final == momentum``), as in PCL.

    The trainer must pass ``index`` (positions in the order of ``batches()``) to
    :meth:`forward` and call :meth:`epoch_start` before every epoch; without
    them PCL is MoCo v2 with a constant momentum.
    """

    name = "pcl"
    supports_multicrop = False  # ProtoNCE prototypes are built from global views only

    def __init__(
        self,
        encoder: nn.Module,
        feat_dim: int,
        proj_dim: int = 128,
        hidden_dim: int = 512,
        queue_size: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.999,
        head: str = "mlp",
        num_clusters: Sequence[int] | str = (50, 100, 200),
        warmup_epochs: int = 20,
        num_negatives: int = 16000,
        alpha: float = 10.0,
        kmeans_niter: int = 20,
        seed: int = 0,
        batch_prototypes: bool = True,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if warmup_epochs < 0 or num_negatives < 0 or kmeans_niter < 1 or alpha <= -1.0:
            raise ValueError(
                f"need warmup_epochs >= 0, num_negatives >= 0, kmeans_niter >= 1, alpha > -1; "
                f"got {warmup_epochs}, {num_negatives}, {kmeans_niter}, {alpha}"
            )
        # MoCo v2 with a constant momentum (base == final)
        super().__init__(encoder, feat_dim, proj_dim, hidden_dim, queue_size, float(temperature), float(momentum), float(momentum), head)
        self.num_clusters = _num_clusters_option(num_clusters)
        self.warmup_epochs = int(warmup_epochs)
        self.num_negatives = int(num_negatives)
        self.alpha = float(alpha)
        self.kmeans_niter = int(kmeans_niter)
        self.seed = int(seed)
        self.batch_prototypes = bool(batch_prototypes)
        self.epoch = -1
        self.centroids: list[Tensor] = []
        self.phis: list[Tensor] = []
        self.assignments: list[Tensor] = []
        self._generator = torch.Generator().manual_seed(self.seed)

    # -- E-step ----------------------------------------------------------------

    def clusters_for(self, n: int) -> tuple[int, ...]:
        """The granularities used for ``n`` images."""
        ks = auto_num_clusters(n) if self.num_clusters == "auto" else tuple(self.num_clusters)
        if any(k > n for k in ks):
            raise SsalError(f"pcl: cannot cluster {n} images into {max(ks)} clusters; lower ssl.options.num_clusters, or set it to auto (scaled to the image count)")
        return ks

    def check_images(self, n: int) -> None:
        self.clusters_for(n)

    @torch.no_grad()
    def momentum_features(self, batches: Callable[[], Iterable[Tensor]]) -> Tensor:
        """L2-normalised momentum projections ``v'`` (N, proj_dim, float32) of all
        images ``batches()`` yields, with the target modules in eval mode (their
        previous modes are restored afterwards)."""
        modes = [(m, m.training) for m in list(self.target_encoder.modules()) + list(self.target_projector.modules())]
        self.target_encoder.eval()
        self.target_projector.eval()
        try:
            feats = [self.target_keys(x).float() for x in batches()]
        finally:
            for m, was in modes:
                m.training = was
        if not feats:
            raise SsalError("pcl: the E-step got no images")
        return torch.cat(feats)

    def epoch_start(self, epoch: int, batches: Callable[[], Iterable[Tensor]]) -> None:
        """Store ``epoch``; from epoch ``warmup_epochs`` on, run the E-step
        (PCL Alg. 1): momentum features of all images, spherical k-means per
        granularity (seed ``seed + 7919 epoch + 104729 m``), concentrations.
        Before that, any earlier prototypes are dropped. The negative-draw
        generator is reseeded with ``seed + epoch``."""
        self.epoch = int(epoch)
        self._generator.manual_seed(self.seed + self.epoch)
        if self.epoch < self.warmup_epochs:
            self.centroids, self.phis, self.assignments = [], [], []
            return
        feats = self.momentum_features(batches)
        self.centroids, self.phis, self.assignments = self._e_step(feats, self.epoch)

    def _e_step(self, feats: Tensor, epoch: int) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Spherical k-means of ``feats`` per granularity and the concentrations:
        ``(centroids, phis, assignments)``, one entry per granularity."""
        centroids, phis, assignments = [], [], []
        for m, k in enumerate(self.clusters_for(int(feats.shape[0]))):
            seed = (self.seed + 7919 * epoch + 104729 * m) % (2**31 - 1)
            c, a = spherical_kmeans(feats, k, seed, self.kmeans_niter)
            c = F.normalize(c.float(), dim=1)
            centroids.append(c)
            assignments.append(a.long())
            phis.append(concentration(feats, a, c, k, self.alpha, self.temperature))
        return centroids, phis, assignments

    def final_prototypes(self, batches: Callable[[], Iterable[Tensor]]) -> list[dict[str, Tensor]]:
        """The prototypes of the trained model, for prototype selection (METHODS.md
        sec. 5, "Use in AL: pick per-prototype representatives"): one more E-step
        on the final momentum encoder (seeded as epoch ``self.epoch + 1``), per
        granularity ``{"centroids" (k, d), "assignments" (N,), "similarity" (N,)}``,
        the last being each image's cosine similarity to its prototype. Leaves the
        training state unchanged."""
        feats = self.momentum_features(batches)
        centroids, _, assignments = self._e_step(feats, self.epoch + 1)
        return [
            {"centroids": c, "assignments": a, "similarity": (feats * c[a]).sum(1)}
            for c, a in zip(centroids, assignments)
        ]

    def get_extra_state(self) -> dict:
        """The E-step's result and the negative-draw generator, saved with
        ``state_dict()`` so a pretraining resumed mid-epoch continues exactly."""
        return {
            "epoch": self.epoch,
            "centroids": self.centroids,
            "phis": self.phis,
            "assignments": self.assignments,
            "generator": self._generator.get_state(),
        }

    def set_extra_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.centroids, self.phis, self.assignments = list(state["centroids"]), list(state["phis"]), list(state["assignments"])
        self._generator.set_state(state["generator"])

    def prototypes(self) -> list[tuple[Tensor, Tensor]]:
        """``(centroids (k_m, proj_dim), assignments (N,))`` per granularity, in
        the order of ``num_clusters`` (coarsest first for ``"auto"``); empty
        before the first E-step. Assignments index the images of ``batches()``."""
        return list(zip(self.centroids, self.assignments))

    @property
    def has_prototypes(self) -> bool:
        return bool(self.centroids) and self.epoch >= self.warmup_epochs

    # -- M-step ----------------------------------------------------------------

    def forward(self, views: list[Tensor], update: bool = True, index: Tensor | None = None) -> SSLOutput:
        f1, q1, q2, k1, k2, per = self._contrast(views)
        if index is not None and self.has_prototypes:
            if update:
                g = self._generator
            else:  # a copy: scoring must not advance the training draws
                g = torch.Generator()
                g.set_state(self._generator.get_state())
            m_count = len(self.centroids)
            for c, phi, assign in zip(self.centroids, self.phis, self.assignments):
                pos = assign[index.to(assign.device)].to(q1.device)
                neg = sample_negatives(pos, int(c.shape[0]), self.num_negatives, g)
                term = proto_loss(q1, c, phi, pos, neg, "none", self.batch_prototypes) + proto_loss(q2, c, phi, pos, neg, "none", self.batch_prototypes)
                per = per + term / m_count
        if update:
            self.queue.enqueue(torch.cat([k1, k2]))
        return SSLOutput(per.mean(), per.detach(), f1)
