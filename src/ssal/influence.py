"""Influence functions for active learning: the maths of ISAL (Liu et al.,
"Influence Selection for Active Learning", ICCV 2021; METHODS.md section 6).

The influence of an unlabelled image z on the loss of a labelled reference set R
is (ISAL eq. 5, after Koh & Liang, ICML 2017, eq. 2)

    I(z) = - grad L(R)^T  H^-1  G_z,

where H is the Hessian of the training loss and G_z the *expected* gradient of z
(ISAL eq. 7): the gradient of ``sum_{k in topK(p)} p_k CE(f(z), k)`` with p the
detached posterior, since z's label is unknown. ISAL labels the images with the
most negative I(z): those whose addition should lower the reference loss most.

Two ways to compute it:

- **faithful** (all conv and linear weights, no BatchNorm parameters, no biases):
  per-sample gradients with ``torch.func`` (vmap over grad, or one forward-mode
  pass for their products with s_test), and ``s_test =
  H^-1 v`` by LiSSA (Agarwal et al., JMLR 2017) with Hessian-vector products by
  forward-over-reverse differentiation, the repeats batched with vmap.
- **last layer**: the same score for the linear head alone, in closed form. For
  logits ``W h + b`` and softmax p, ``dCE(k)/dW = (p - e_k) h^T``, and the Hessian
  of the mean CE is ``mean_n (diag(p_n) - p_n p_n^T) kron h_n h_n^T``, small
  enough to build and solve exactly.

Everything here is a pure function of a model, parameters and tensors; the
network is evaluated in eval mode (BatchNorm running statistics), which makes
per-sample losses independent of the batch they are computed in.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

Params = dict[str, Tensor]

__all__ = [
    "influence_parameters",
    "expected_loss",
    "per_sample_grads",
    "loop_grads",
    "flat",
    "reference_gradient",
    "hvp",
    "lissa",
    "influence_scores",
    "head_expected_gradient_factors",
    "head_gradient",
    "head_hessian",
    "head_s_test",
    "head_influence_scores",
    "spearman",
]


# -- parameters and losses --------------------------------------------------------------------------------
def influence_parameters(model: nn.Module) -> Params:
    """The weights ISAL differentiates: every ``nn.Conv*`` and ``nn.Linear``
    weight, no BatchNorm parameter and no bias (METHODS.md section 6), by name."""
    names = []
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            names.append(f"{mod_name}.weight" if mod_name else "weight")
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


def expected_loss(logits: Tensor, top_k: int = 1) -> Tensor:
    """Per-sample ``sum_{k in topK(p)} p_k CE(logits, k)`` with p the detached
    softmax (ISAL eq. 7; K=1, the released code's default, is the pseudo-label
    loss weighted by its confidence). Works on (C,) or (n, C) logits."""
    logp = F.log_softmax(logits, dim=-1)
    p = logp.detach().exp()
    k = min(top_k, logits.shape[-1])
    top_p, top_i = p.topk(k, dim=-1)
    return -(top_p * logp.gather(-1, top_i)).sum(-1)


def flat(grads: Params, batched: bool = True) -> Tensor:
    """Concatenate a dict of (per-sample) gradients into (n, P) (or (P,))."""
    if batched:
        return torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
    return torch.cat([g.reshape(-1) for g in grads.values()])


def _split(vec: Tensor, like: Params) -> Params:
    out, start = {}, 0
    for name, p in like.items():
        out[name] = vec[start : start + p.numel()].view_as(p)
        start += p.numel()
    return out


def _loss_fn(model: nn.Module, frozen: Params, kind: str, top_k: int) -> Callable:
    """loss(params, x, y) on one image: CE with label y, or the expected loss."""

    def loss(params: Params, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, {**frozen, **params}, (x.unsqueeze(0),))[0]
        if kind == "expected":
            return expected_loss(logits, top_k)
        return F.cross_entropy(logits.unsqueeze(0), y.unsqueeze(0))

    return loss


def _frozen(model: nn.Module, params: Params) -> Params:
    """Every parameter and buffer of ``model`` not in ``params``, detached."""
    state = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    state.update(dict(model.named_buffers()))
    return state


# -- per-sample gradients -----------------------------------------------------------------------------------
def per_sample_grads(model: nn.Module, params: Params, x: Tensor, y: Tensor | None = None, top_k: int = 1) -> Tensor:
    """(n, P) per-sample gradients w.r.t. ``params``, by ``vmap(grad)`` in one
    batched call: of CE(f(x_i), y_i) when ``y`` is given, else of the expected
    loss (:func:`expected_loss`). ``model`` must be in eval mode."""
    detached = {k: v.detach() for k, v in params.items()}
    fn = _loss_fn(model, _frozen(model, params), "expected" if y is None else "ce", top_k)
    yy = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if y is None else y
    return flat(vmap(grad(fn), in_dims=(None, 0, 0))(detached, x, yy))


def loop_grads(model: nn.Module, params: Params, x: Tensor, y: Tensor | None = None, top_k: int = 1) -> Tensor:
    """The same as :func:`per_sample_grads` with one backward pass per image, the
    released ISAL code's way: the reference for tests and benchmarks."""
    rows = []
    plist = list(params.values())
    for i in range(x.shape[0]):
        logits = model(x[i : i + 1])
        loss = expected_loss(logits, top_k)[0] if y is None else F.cross_entropy(logits, y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, plist)]))
    return torch.stack(rows) if rows else torch.empty(0, sum(p.numel() for p in plist))


def reference_gradient(model: nn.Module, params: Params, batches) -> Tensor:
    """``v = sum over R of per-sample gradients of CE`` (ISAL: grad L(R)), as one
    backward pass per batch of ``(x, y)`` (the sum of per-sample gradients is the
    gradient of the summed loss). Flat (P,)."""
    total = None
    plist = list(params.values())
    for x, y in batches:
        loss = F.cross_entropy(model(x), y, reduction="sum")
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, plist)])
        total = g if total is None else total + g
    if total is None:
        raise ValueError("the reference set is empty")
    return total.detach()


# -- inverse Hessian-vector product --------------------------------------------------------------------------------
def hvp(model: nn.Module, params: Params, x: Tensor, y: Tensor, vec: Tensor) -> Tensor:
    """Hessian-vector products of CE(f(x_r), y_r) w.r.t. ``params``, one per row
    of ``x`` (r images, each its own vector ``vec[r]``, shape (r, P)), by
    forward-over-reverse differentiation batched with vmap. Returns (r, P)."""
    detached = {k: v.detach() for k, v in params.items()}
    fn = _loss_fn(model, _frozen(model, params), "ce", 1)

    def one(xi: Tensor, yi: Tensor, vi: Tensor) -> Tensor:
        tangent = _split(vi, detached)
        _, out = jvp(lambda p: grad(fn)(p, xi, yi), (detached,), (tangent,))
        return flat(out, batched=False)

    return vmap(one)(x, y, vec)


def lissa(
    hvp_fn: Callable[[Tensor, Tensor], Tensor],
    v: Tensor,
    num_samples: int,
    depth: int = 250,
    repeats: int = 4,
    damping: float = 0.01,
    scale: float = 1e4,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
) -> Tensor:
    """``s_test ~ H^-1 v`` by LiSSA (Agarwal et al., JMLR 2017; as in Koh & Liang
    2017 and the released ISAL code): ``repeats`` independent recursions

        h_0 = v,   h_j = v + (1 - damping) h_{j-1} - Hess_j h_{j-1} / scale,

    each Hess_j the Hessian of one training image drawn uniformly (the r-th
    recursion's image for step j comes from ``generator``), and the estimate is
    the mean of ``h_depth / scale``. The fixed point is ``(H + damping * scale
    * I)^-1 v``: ``damping * scale`` is the effective damping, and depth must be
    well above ``1 / damping`` to reach it.

    ``hvp_fn(image_indices (r,), vectors (r, P)) -> (r, P)`` runs the r
    recursions' Hessian-vector products in one batched call.
    """
    if depth < 1 or repeats < 1:
        raise ValueError(f"LiSSA needs depth >= 1 and repeats >= 1, got {depth} and {repeats}")
    h = v.unsqueeze(0).repeat(repeats, 1)
    vr = h.clone()
    for j in range(depth):
        idx = torch.randint(num_samples, (repeats,), generator=generator)
        h = vr + (1 - damping) * h - hvp_fn(idx, h) / scale
        if not bool(torch.isfinite(h).all()):
            raise FloatingPointError(f"LiSSA diverged at step {j + 1}: raise scale (Hessian eigenvalues must stay below scale)")
        if progress is not None:
            progress(1)
    return (h / scale).mean(0)


def influence_scores(
    model: nn.Module,
    params: Params,
    images: Tensor,
    s_test: Tensor,
    top_k: int = 1,
    chunk: int = 64,
    method: str = "jvp",
) -> Tensor:
    """``I(z) = -s_test^T G_z`` for every row of ``images`` (already prepared, on
    the model's device), ``chunk`` images per call.

    method ``vmap``: per-sample expected gradients (n, P) by ``vmap(grad)``, then
    a product with s_test. method ``jvp``: the same numbers without
    materialising any gradient: ``s_test^T G_z`` is the directional derivative
    of z's expected loss along s_test, and one forward-mode pass
    (``torch.func.jvp``) gives it for the whole chunk (the posterior weights stay
    detached, as in G_z). Both equal :func:`loop_grads` times s_test.
    """
    if method not in ("jvp", "vmap"):
        raise ValueError(f"method must be jvp or vmap, got {method!r}")
    out = []
    if method == "vmap":
        for s in range(0, images.shape[0], chunk):
            g = per_sample_grads(model, params, images[s : s + chunk], None, top_k)
            out.append(-(g @ s_test))
        return torch.cat(out) if out else torch.empty(0)
    detached = {k: v.detach() for k, v in params.items()}
    frozen = _frozen(model, params)
    tangent = _split(s_test.to(next(iter(detached.values())).dtype), detached)
    for s in range(0, images.shape[0], chunk):
        x = images[s : s + chunk]

        def losses(p: Params, x: Tensor = x) -> Tensor:
            return expected_loss(functional_call(model, {**frozen, **p}, (x,)), top_k)

        _, directional = jvp(losses, (detached,), (tangent,))
        out.append(-directional.detach())
    return torch.cat(out) if out else torch.empty(0)


def auto_chunk(num_params: int, memory_bytes: float = 1.5e9, upper: int = 256) -> int:
    """Images per vmap chunk so the (chunk, P) gradients and their
    intermediates (~4 copies) fit in ``memory_bytes``."""
    return max(1, min(upper, int(memory_bytes // (16 * max(num_params, 1)))))


# -- last layer, closed form -----------------------------------------------------------------------------------------
def head_gradient(probs: Tensor, feats: Tensor, labels: Tensor) -> Tensor:
    """Per-sample gradient of CE w.r.t. the head weight W (C, D), flattened
    row-major: ``(p - e_y) h^T`` (n, C*D)."""
    a = probs.clone()
    a[torch.arange(len(labels)), labels] -= 1
    return (a.unsqueeze(2) * feats.unsqueeze(1)).reshape(len(labels), -1)


def head_expected_gradient_factors(probs: Tensor, top_k: int = 1) -> Tensor:
    """``a`` with ``G_z = a kron h``: the expected gradient of ISAL eq. 7 for the
    head is ``sum_{k in topK} p_k (p - e_k) h^T``, so ``a = (sum_k p_k) p -
    sum_k p_k e_k``. (n, C)."""
    k = min(top_k, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    a = top_p.sum(1, keepdim=True) * probs
    return a.scatter_add(1, top_i, -top_p)


def head_hessian(probs: Tensor, feats: Tensor) -> Tensor:
    """Hessian of the mean CE over n images w.r.t. the head weight W (C, D),
    row-major (C*D, C*D): ``mean_n (diag(p_n) - p_n p_n^T) kron h_n h_n^T``,
    built in O(n C D^2 + n (C D)^2) without a per-sample loop."""
    n, c = probs.shape
    d = feats.shape[1]
    block = torch.einsum("nc,nd,ne->cde", probs, feats, feats)  # diag(p) kron h h^T, block by block
    hess = torch.zeros(c * d, c * d, dtype=feats.dtype, device=feats.device)
    for k in range(c):
        hess[k * d : (k + 1) * d, k * d : (k + 1) * d] = block[k]
    u = (probs.unsqueeze(2) * feats.unsqueeze(1)).reshape(n, c * d)
    return (hess - u.T @ u) / n


def head_s_test(
    train_probs: Tensor,
    train_feats: Tensor,
    ref_probs: Tensor,
    ref_feats: Tensor,
    ref_labels: Tensor,
    damping: float = 0.01,
) -> Tensor:
    """``s = (H + damping I)^-1 v`` for the head weight, solved exactly: v the
    summed CE gradient over the reference set, H the mean-CE Hessian over the
    labelled (training) set. Float64, shape (C, D)."""
    dt = torch.float64
    c, d = train_probs.shape[1], train_feats.shape[1]
    v = head_gradient(ref_probs.to(dt), ref_feats.to(dt), ref_labels).sum(0)
    hess = head_hessian(train_probs.to(dt), train_feats.to(dt))
    hess.diagonal().add_(damping)
    return torch.linalg.solve(hess, v).reshape(c, d)


def head_influence_scores(
    pool_probs: Tensor,
    pool_feats: Tensor,
    train_probs: Tensor,
    train_feats: Tensor,
    ref_probs: Tensor,
    ref_feats: Tensor,
    ref_labels: Tensor,
    damping: float = 0.01,
    top_k: int = 1,
) -> Tensor:
    """ISAL's ``I(z) = -v^T (H + damping I)^-1 G_z`` for the linear head alone, in
    closed form (:func:`head_s_test`; G_z = a kron h from
    :func:`head_expected_gradient_factors`, so the score is ``-a^T S h``, O(C D)
    per image). Inputs are probabilities and head inputs (features). (n_pool,)."""
    s = head_s_test(train_probs, train_feats, ref_probs, ref_feats, ref_labels, damping)
    a = head_expected_gradient_factors(pool_probs.to(torch.float64), top_k)
    return -torch.einsum("nc,cd,nd->n", a, s, pool_feats.to(torch.float64))


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (no ties expected)."""
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / math.sqrt(float((ra @ ra) * (rb @ rb))))
