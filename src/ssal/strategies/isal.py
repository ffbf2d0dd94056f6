"""ISAL: influence selection (Liu et al., "Influence Selection for Active
Learning", ICCV 2021; METHODS.md section 6). Picks the candidates with the most
negative influence ``I(z) = -grad L(R)^T H^-1 G_z`` on the loss of a labelled
reference set R: the validation split (the released code used the test split;
ssal never does). No diversity term, as in the paper.

``mode=faithful`` differentiates every conv and linear weight (per-sample
gradients by torch.func, s_test by LiSSA); ``mode=last_layer`` scores the linear head
alone in closed form, orders of magnitude cheaper. The maths lives in
:mod:`ssal.influence`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .. import influence as inf
from ..errors import SsalError
from .base import NetworkAccess, SelectionContext, Strategy, check_request, require_network, top_scores

MODES = ("faithful", "last_layer")


class ISALStrategy(Strategy):
    """Options (``strategy_options.*``): ``mode`` faithful | last_layer; ``top_k``
    classes of the expected gradient (1, as in the released code); LiSSA
    ``depth`` 250, ``repeats`` 4, ``damping`` 0.01, ``scale`` 1e4 (faithful; its
    effective damping is damping * scale); ``head_damping`` 0.01 (last_layer:
    added to the mean-CE Hessian of the head before the exact solve);
    ``gradients`` jvp | vmap: how the faithful mode gets ``s_test^T G_z`` for the
    candidates (same scores; jvp never materialises per-sample gradients and is
    the faster on a CPU, see BENCHMARKS.md)."""

    name = "isal"
    summary = "most negative influence on the validation loss (ISAL; faithful or last_layer)"
    needs_network = True  # the loop refuses train.mode=frozen before any work
    needs_reference = True  # the loop refuses val_size=0 before training

    def __init__(
        self,
        mode: str = "faithful",
        top_k: int = 1,
        depth: int = 250,
        repeats: int = 4,
        damping: float = 0.01,
        scale: float = 1e4,
        head_damping: float = 0.01,
        gradients: str = "jvp",
        progress: bool = True,
    ) -> None:
        if mode not in MODES:
            raise SsalError(f"strategy_options.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if top_k < 1:
            raise SsalError(f"strategy_options.top_k must be >= 1, got {top_k}")
        if depth < 1 or repeats < 1:
            raise SsalError(f"strategy_options.depth and repeats must be >= 1, got {depth} and {repeats}")
        if not 0 <= damping < 1 or scale <= 0 or head_damping < 0:
            raise SsalError(f"need 0 <= damping < 1, scale > 0, head_damping >= 0; got {damping}, {scale}, {head_damping}")
        if gradients not in ("jvp", "vmap"):
            raise SsalError(f"strategy_options.gradients must be jvp or vmap, got {gradients!r}")
        self.gradients = gradients
        self.mode, self.top_k, self.depth, self.repeats = mode, int(top_k), int(depth), int(repeats)
        self.damping, self.scale, self.head_damping = float(damping), float(scale), float(head_damping)
        self.progress = progress

    def select(self, ctx: SelectionContext, budget: int) -> torch.Tensor:
        check_request(ctx, budget)
        net = require_network(ctx, self.name)
        if net.reference is None or not len(net.reference[1]):
            raise SsalError("strategy 'isal' needs a labelled reference set: set val_size > 0 (the test split is never used)")
        if budget == 0:
            return torch.empty(0, dtype=torch.long)
        if not ctx.labelled.numel():
            raise SsalError("strategy 'isal' needs labelled images (its Hessian is that of the training loss on them); it cannot pick the initial set")
        scores = self.scores(ctx, net)
        if scores.shape != ctx.candidates.shape or not bool(torch.isfinite(scores).all()):
            raise SsalError("ISAL produced invalid influence scores (NaN or infinite); try a larger strategy_options.scale")
        return ctx.candidates[top_scores(-scores.double().cpu(), budget)]  # most negative influence first

    def scores(self, ctx: SelectionContext, net: NetworkAccess) -> torch.Tensor:
        """Influence ``I(z)`` of every candidate (lower = more helpful)."""
        if self.mode == "last_layer":
            return self._last_layer(ctx, net)
        return self._faithful(ctx, net)

    # -- last layer ------------------------------------------------------------
    def _last_layer(self, ctx: SelectionContext, net: NetworkAccess) -> torch.Tensor:
        pool_logits, pool_feats = ctx.embed(ctx.candidates)
        train_logits, train_feats = ctx.embed(ctx.labelled)
        ref_logits, ref_feats = _forward(net, net.reference[0])
        return inf.head_influence_scores(
            pool_logits.double().softmax(1), pool_feats,
            train_logits.double().softmax(1), train_feats,
            ref_logits.double().softmax(1), ref_feats, net.reference[1],
            damping=self.head_damping, top_k=self.top_k,
        )  # fmt: skip

    # -- faithful --------------------------------------------------------------
    def _faithful(self, ctx: SelectionContext, net: NetworkAccess) -> torch.Tensor:
        model, dev = net.model, net.device
        was_training = model.training
        model.eval()
        try:
            params = inf.influence_parameters(model)
            ref_x, ref_y = net.reference
            v = inf.reference_gradient(model, params, _batches(net, ref_x, ref_y))
            lab_x, lab_y = net.labelled_images, net.labelled_labels.to(dev)

            def hvp_fn(idx: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
                return inf.hvp(model, params, net.prepare(lab_x[idx].to(dev)), lab_y[idx.to(dev)], vec)

            n = int(ctx.candidates.numel())
            chunk = inf.auto_chunk(int(v.numel())) if self.gradients == "vmap" else net.batch_size
            bar = tqdm(total=self.depth + n, desc="isal", unit="step", disable=None if self.progress else True, leave=False)
            try:
                s_test = inf.lissa(hvp_fn, v, len(lab_y), self.depth, self.repeats, self.damping, self.scale, ctx.generator, bar.update)
            except FloatingPointError as err:
                raise SsalError(f"isal: {err} (strategy_options.scale, now {self.scale:g})") from None
            out = []
            for s in range(0, n, chunk):
                x = net.prepare(net.pool_images(ctx.candidates[s : s + chunk]).to(dev))
                out.append(inf.influence_scores(model, params, x, s_test, self.top_k, chunk, self.gradients).cpu())
                bar.update(x.shape[0])
            bar.close()
            return torch.cat(out)
        finally:
            model.train(was_training)


def _batches(net: NetworkAccess, images: torch.Tensor, labels: torch.Tensor):
    for s in range(0, images.shape[0], net.batch_size):
        yield net.prepare(images[s : s + net.batch_size].to(net.device)), labels[s : s + net.batch_size].to(net.device)


def _forward(net: NetworkAccess, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of un-augmented ``images`` in eval mode (float32, CPU)."""
    from ..train import predict

    was = net.model.training
    try:
        return predict(net.model, images, net.prepare, net.device, net.batch_size, net.amp, net.channels_last)
    finally:
        net.model.train(was)
