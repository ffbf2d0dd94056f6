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

import functools
import itertools
import math
import time
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import SSLConfig, TrainConfig

if TYPE_CHECKING:
    from .ssl import SSLMethod

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


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (x86 AVX512-BF16 or AMX).
    Measured (BENCHMARKS.md, "bfloat16 on the CPU"): 1.6-1.9x faster than float32
    on an AVX512-BF16 CPU, 8-12x slower on an AVX2-only one, where oneDNN
    emulates it. AMX CPUs are assumed to be like the first (not measured)."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: assume no
        return False


def amp_cpu_on(value: bool | str | None) -> bool:
    """``train.amp_cpu`` / ``ssl.amp_cpu`` resolved: ``true`` and ``false`` as
    given, ``auto`` on exactly where :func:`cpu_has_native_bfloat16`."""
    if value == "auto":
        return cpu_has_native_bfloat16()
    return bool(value)


def amp_cpu_warning(key: str, value: bool | str | None, device: torch.device) -> str | None:
    """A one-line warning when ``key=true`` asks for bfloat16 on a CPU that only
    emulates it (``auto`` would have chosen float32 there); else None."""
    if device.type != "cpu" or value is not True or cpu_has_native_bfloat16():
        return None
    return (
        f"warning: {key}=true, but this CPU has no native bfloat16 (AVX512-BF16 or AMX): autocast is emulated and "
        f"about 8-12x slower than float32 here; set {key}=auto (or false)"
    )


def amp_enabled(cfg: TrainConfig | SSLConfig, device: torch.device) -> bool:
    """Whether a training or SSL config runs under autocast on ``device``:
    ``amp`` on CUDA (bfloat16, or float16 with loss scaling), ``amp_cpu`` on the
    CPU (bfloat16; off by default so CPU results stay float32; ``auto``: see
    :func:`amp_cpu_on`)."""
    if device.type == "cuda":
        return bool(cfg.amp)
    return device.type == "cpu" and amp_cpu_on(cfg.amp_cpu)


def _autocast(device: torch.device, enabled: bool):
    """Mixed precision on ``device`` when ``enabled`` (see :func:`amp_enabled`)."""
    if not enabled:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
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


EpochCallback = Callable[[int, dict[str, float]], None]


class _EpochMeans:
    """Per-epoch means of losses for an ``on_epoch`` callback. Does nothing
    without a callback; with one it only adds detached values, so training is
    unchanged (one device sync per epoch, when reporting)."""

    def __init__(self, on_epoch: EpochCallback | None) -> None:
        self.on_epoch = on_epoch
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        if self.on_epoch is None:
            return
        v = value.detach().float()
        self.sums[name] = self.sums[name] + v if name in self.sums else v
        self.counts[name] = self.counts.get(name, 0) + 1

    def report(self, epoch: int, lr: float | None) -> None:
        """Call the callback with this epoch's means, then start a new epoch."""
        if self.on_epoch is None:
            return
        scalars = {k: float(self.sums[k]) / self.counts[k] for k in self.sums}
        if lr is not None:
            scalars["lr"] = float(lr)
        self.on_epoch(epoch, scalars)
        self.sums, self.counts = {}, {}


class _Stepper:
    """SGD with momentum, the per-step LR schedule, and AMP loss scaling: one
    optimizer step of any training mode."""

    def __init__(self, params, cfg: TrainConfig, lrs: list[float], device: torch.device) -> None:
        self.opt = torch.optim.SGD(
            params, lr=lrs[0], momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
        self.lrs = lrs
        self.use_amp = amp_enabled(cfg, device)
        # float16 autocast (GPUs without bfloat16) needs loss scaling; bfloat16 does not.
        cuda_fp16 = self.use_amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda") if cuda_fp16 else None
        self.device = device

    def autocast(self):
        return _autocast(self.device, self.use_amp)

    def step(self, k: int, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lrs[k]
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()


def plan_steps(cfg: TrainConfig, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, total steps) of one cycle. ``cfg.steps > 0`` fixes the number of
    optimizer steps whatever |L| is (equal compute per cycle; the last epoch may
    be partial); else ``cfg.epochs``, raised so at least ``cfg.min_steps`` run."""
    if getattr(cfg, "steps", 0):
        return math.ceil(cfg.steps / steps_per_epoch), int(cfg.steps)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    return epochs, epochs * steps_per_epoch


def _bar(total: int, desc: str, progress: bool):
    # disable=None: off when stderr is not a terminal
    return tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, unit="step")


def loss_prediction_losses(
    model: torch.nn.Module,
    loss_module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    margin: float = 1.0,
    detach: bool = False,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, loss-prediction loss) of one batch for Learning Loss
    (Yoo & Kweon, CVPR 2019, Sec. 3.3): the per-sample cross-entropies are both
    the task loss (their mean) and the ranking target of
    :func:`~ssal.lossnet.loss_ranking_loss` (Eq. 2-3) for ``loss_module``'s
    predictions on the backbone's stage maps. ``detach`` cuts the stage maps
    from the backbone, so the ranking loss trains the module alone (the
    released code does this after epoch 120 of 200)."""
    from .lossnet import loss_ranking_loss

    logits, _, stages = model.forward_with_stages(x)
    per_sample = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    if detach:
        stages = [s.detach() for s in stages]
    pred = loss_module(stages).float()
    return per_sample.mean(), loss_ranking_loss(pred, per_sample.float(), margin)


def detach_step(detach_fraction: float, total_steps: int) -> int:
    """First optimizer step whose Learning Loss module inputs are detached:
    ``ceil(detach_fraction * total_steps)`` (0.6 x 200 epochs = epoch 120 in
    Yoo & Kweon, CVPR 2019, Sec. 4.1)."""
    return math.ceil(detach_fraction * total_steps)


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
    loss_module: torch.nn.Module | None = None,
    loss_weight: float = 1.0,
    loss_margin: float = 1.0,
    detach_fraction: float = 0.6,
    on_epoch: EpochCallback | None = None,
) -> TrainStats:
    """Train ``model`` on labelled ``images`` (uint8, N x C x H x W) and ``labels``.

    Each epoch is a fresh permutation drawn from ``generator`` (without
    replacement); the last partial batch is kept. The number of epochs is raised
    so that at least ``cfg.min_steps`` steps run (tiny labelled sets).

    ``loss_module`` (a :class:`~ssal.lossnet.LossPredictionModule` on the
    backbone's stages) turns on Learning Loss (Yoo & Kweon, CVPR 2019, Sec. 3.3):
    each step minimises ``mean CE + loss_weight * L_loss`` (:func:`loss_prediction_losses`),
    the module's parameters in the same SGD optimizer and schedule, and from step
    :func:`detach_step` on the module's inputs are detached from the backbone.
    Without it the loop is plain cross-entropy training.

    ``on_epoch(epoch, {"loss": mean loss of the epoch's steps, "lr": last lr})``
    is called after each epoch when given (TensorBoard logging); it changes no result.
    """
    start = time.perf_counter()
    n = int(images.shape[0])
    bs = min(cfg.batch_size, n)
    spe = math.ceil(n / bs)
    epochs, total = plan_steps(cfg, spe)
    images = images.to(device)
    labels = labels.to(device)
    model.to(device=device, memory_format=_memory_format(cfg))
    model.train()
    params = list(model.parameters())
    detach_from = total
    if loss_module is not None:
        loss_module.to(device)
        loss_module.train()
        params += list(loss_module.parameters())
        detach_from = detach_step(detach_fraction, total)
    stepper = _Stepper(params, cfg, lr_schedule(cfg, spe, total), device)
    step = 0
    loss_val = float("nan")
    bar = _bar(total, desc, progress)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator).to(device)
        epoch_loss = _EpochMeans(on_epoch)
        for b in range(min(spe, total - step)):
            idx = perm[b * bs : (b + 1) * bs]
            x = view(images[idx], generator).contiguous(memory_format=_memory_format(cfg))
            with stepper.autocast():
                if loss_module is None:
                    loss = F.cross_entropy(model(x), labels[idx], label_smoothing=cfg.label_smoothing)
                else:
                    ce, rank = loss_prediction_losses(
                        model, loss_module, x, labels[idx], loss_margin, step >= detach_from, cfg.label_smoothing
                    )
                    loss = ce + loss_weight * rank
            stepper.step(step, loss)
            epoch_loss.add("loss", loss)
            step += 1
            if step % 10 == 0 or step == total:
                loss_val = float(loss.detach())
                bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
            bar.update(1)
        epoch_loss.report(epoch, stepper.lrs[step - 1] if step else None)
    bar.close()
    return TrainStats(steps=step, epochs=epochs, final_loss=loss_val, seconds=time.perf_counter() - start)


@torch.no_grad()
def ssl_sample_losses(
    method: "SSLMethod",
    images: torch.Tensor,
    views: tuple[View, View],
    generator: torch.Generator,
    device: torch.device,
    batch_size: int = 512,
    channels_last: bool = True,
) -> torch.Tensor:
    """Per-image SSL loss of ``images`` (uint8) in eval mode, changing no state of
    ``method`` (``update=False``: no enqueue, no EMA). Used by ``ssl_loss_high``
    and by the low-loss filter of joint training (MoBYv2AL, Sec. 4.3)."""
    was = method.training
    method.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for s in range(0, int(images.shape[0]), batch_size):
        x = images[s : s + batch_size].to(device)
        vs = [views[0](x, generator).contiguous(memory_format=fmt), views[1](x, generator).contiguous(memory_format=fmt)]
        out.append(method(vs, update=False).per_sample.float().cpu())
    method.train(was)
    return torch.cat(out) if out else torch.empty(0)


def prepared_batches(images: torch.Tensor, prepare: View, device: torch.device, batch_size: int, fmt: torch.memory_format) -> Callable[[], Iterator[torch.Tensor]]:
    """``batches()`` for :meth:`SSLMethod.epoch_start`: ``images`` un-augmented
    through ``prepare``, in index order, ``batch_size`` at a time."""

    def it() -> Iterator[torch.Tensor]:
        for s in range(0, int(images.shape[0]), batch_size):
            yield prepare(images[s : s + batch_size].to(device)).contiguous(memory_format=fmt)

    return it


def _epoch_images(
    images: torch.Tensor,
    unlabelled_images: Callable[[torch.Tensor], torch.Tensor],
    upos: torch.Tensor,
    prepare: View | None,
    device: torch.device,
    batch_size: int,
    fmt: torch.memory_format,
) -> Callable[[], Iterator[torch.Tensor]]:
    """``batches()`` for a per-epoch SSL step in joint training: the labelled
    ``images`` then the unlabelled ones at ``upos``, un-augmented, in chunks of
    ``batch_size`` (the unlabelled ones fetched chunk by chunk). Nothing runs
    until a method iterates it (most never do)."""

    def it() -> Iterator[torch.Tensor]:
        if prepare is None:
            raise ValueError("this SSL method's per-epoch step reads un-augmented images: pass prepare= to train_joint")
        yield from prepared_batches(images, prepare, device, batch_size, fmt)()
        for s in range(0, int(upos.numel()), batch_size):
            yield prepare(unlabelled_images(upos[s : s + batch_size]).to(device)).contiguous(memory_format=fmt)

    return it


def joint_unlabelled_per_epoch(n_labelled: int, n_unlabelled: int) -> int:
    """Unlabelled images drawn per joint epoch: |L| (MoBYv2AL, METHODS.md sec. 2),
    or the whole unlabelled pool when it is smaller."""
    return min(n_labelled, n_unlabelled)


def train_joint(
    model: torch.nn.Module,
    method: "SSLMethod",
    images: torch.Tensor,
    labels: torch.Tensor,
    unlabelled_images: Callable[[torch.Tensor], torch.Tensor],
    num_unlabelled: int,
    cfg: TrainConfig,
    views: tuple[View, View],
    generator: torch.Generator,
    device: torch.device,
    lambda_c: float = 0.5,
    low_loss_fraction: float = 1.0,
    classifier_view: View | None = None,
    ssl_only_views: tuple[View, View] | None = None,
    prepare: View | None = None,
    progress: bool = True,
    desc: str = "train",
    on_epoch: EpochCallback | None = None,
) -> TrainStats:
    """MoBYv2AL joint training (Caramalau et al., BMVC 2022, Sec. 3, Eq. 3-4).

    Batches alternate labelled / unlabelled. A labelled batch costs
    ``CE(head(f_q(weak)), y) + lambda_c * L_ssl``, an unlabelled batch
    ``lambda_c * L_ssl``; the classifier reads the online encoder's features of
    the weak view (``views[0]``, also the SSL loss's first view, so one forward
    pass serves both) unless ``classifier_view`` is given (``ssl.views =
    strong_strong``: both SSL views strong, the classifier on its own weak view),
    or the method does not encode ``views[0]`` as given (rotation). Each epoch draws ``len(images)`` unlabelled images without
    replacement through ``unlabelled_images(positions)`` (positions in
    ``range(num_unlabelled)``): this function returns images only, so no pool
    label can reach the trainer. The SSL state (queues, momentum target) is
    updated after both kinds of batch.

    Before every epoch :meth:`SSLMethod.epoch_start` gets that epoch's images:
    the labelled images (positions ``0..n-1``) then the epoch's unlabelled draw
    (positions ``n..``), un-augmented through ``prepare`` (needed by methods
    with a per-epoch step: PCL's E-step), and every batch passes its positions
    as ``index``. So PCL clusters exactly the images it trains on in the epoch,
    at the cost of one momentum-encoder pass over them.

    ``low_loss_fraction`` < 1 is the paper's remedy for distribution shift: each
    epoch scores ``len(images) / low_loss_fraction`` random unlabelled images by
    their SSL loss (no state change) and trains on the ``len(images)`` lowest.

    ``ssl_only_views`` (``ssl.joint_image_size``) replaces the views that only the
    SSL loss reads: both views of an unlabelled batch and view 2 of a labelled one
    (view 1 of a labelled batch stays ``views[0]``: the classifier reads it). With
    views at a reduced size they cost a fraction of a full-size pass, as the small
    crops of multi-crop (Caron et al., NeurIPS 2020, Sec. 3.2). BatchNorm's running
    statistics then mix both sizes, so they are re-estimated at the end on the
    classifier's view of the labelled images (:func:`recalibrate_batchnorm`).

    ``on_epoch(epoch, scalars)`` is called after each epoch when given, with the
    mean ``loss``, ``ssl_loss`` (unweighted) and ``ce_loss`` (labelled batches)
    of the epoch's steps and the last ``lr``; it changes no result.
    """
    if method.encoder is not getattr(model, "backbone", None):
        raise ValueError("joint training needs the SSL method built on the classifier's backbone")
    start = time.perf_counter()
    n = int(images.shape[0])
    n_u = joint_unlabelled_per_epoch(n, num_unlabelled)
    bs = min(cfg.batch_size, n)
    spe = math.ceil(n / bs)
    spe_u = math.ceil(n_u / bs) if n_u else 0
    method.check_images(n + n_u)  # each epoch's per-epoch step sees n + n_u images: fail now, not epochs later
    epochs, total = plan_steps(cfg, spe + spe_u)
    fmt = _memory_format(cfg)
    images = images.to(device)
    labels = labels.to(device)
    model.to(device=device, memory_format=fmt)
    method.to(device=device, memory_format=fmt)
    model.train()
    method.train()
    params = {id(p): p for p in list(model.parameters()) + method.trainable_parameters()}
    stepper = _Stepper(list(params.values()), cfg, lr_schedule(cfg, spe + spe_u, total), device)
    step = 0
    loss_val = float("nan")
    bar = _bar(total, desc, progress)
    means = _EpochMeans(on_epoch)

    def ssl_views(x: torch.Tensor, labelled: bool) -> list[torch.Tensor]:
        use = views
        if ssl_only_views is not None:
            use = (views[0], ssl_only_views[1]) if labelled else ssl_only_views
        return [v(x, generator).contiguous(memory_format=fmt) for v in use[: max(method.num_views, 1)]]

    def one_step(x: torch.Tensor, y: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor:
        nonlocal step
        vs = ssl_views(x, y is not None)
        with stepper.autocast():
            out = method(vs, update=True, index=index)
            loss = lambda_c * out.loss
            if y is not None:
                if out.features is not None and classifier_view is None:
                    feats = out.features
                else:
                    feats = model.features((classifier_view or views[0])(x, generator).contiguous(memory_format=fmt))
                ce = F.cross_entropy(model.head(model.dropout(feats)), y, label_smoothing=cfg.label_smoothing)  # dropout: Identity unless a strategy asked for it
                loss = loss + ce
                means.add("ce_loss", ce)
        stepper.step(step, loss)
        means.add("loss", loss)
        means.add("ssl_loss", out.loss)
        method.after_step(step, total)
        step += 1
        bar.update(1)
        return loss

    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator).to(device)
        upos = torch.empty(0, dtype=torch.long)
        if n_u:
            if low_loss_fraction < 1.0:
                m = min(num_unlabelled, math.ceil(n_u / low_loss_fraction))
                cand = torch.randperm(num_unlabelled, generator=generator)[:m]
                # scored through the views an unlabelled batch trains on
                scores = ssl_sample_losses(method, unlabelled_images(cand), ssl_only_views or views, generator, device, cfg.eval_batch_size, cfg.channels_last)
                upos = cand[torch.sort(scores, stable=True).indices[:n_u]]
                upos = upos[torch.randperm(n_u, generator=generator)]
            else:
                upos = torch.randperm(num_unlabelled, generator=generator)[:n_u]
        method.epoch_start(epoch, _epoch_images(images, unlabelled_images, upos, prepare, device, cfg.eval_batch_size, fmt))
        for b in range(max(spe, spe_u)):
            if step >= total:
                break
            if b < spe:
                idx = perm[b * bs : (b + 1) * bs]
                loss = one_step(images[idx], labels[idx], idx)
            if b < spe_u and step < total:
                upos_b = torch.arange(b * bs, min((b + 1) * bs, n_u))
                loss = one_step(unlabelled_images(upos[upos_b]).to(device), None, (n + upos_b).to(device))
            if b % 5 == 0:
                loss_val = float(loss.detach())
                bar.set_postfix(loss=f"{loss_val:.3f}", refresh=False)
        means.report(epoch, stepper.lrs[step - 1] if step else None)
    loss_val = float(loss.detach())
    bar.close()
    if ssl_only_views is not None:
        view = classifier_view or views[0]
        with stepper.autocast():
            recalibrate_batchnorm(model.backbone, (view(images[i : i + bs], generator).contiguous(memory_format=fmt) for i in range(0, n, bs)))
    return TrainStats(steps=step, epochs=epochs, final_loss=loss_val, seconds=time.perf_counter() - start)


@torch.no_grad()
def recalibrate_batchnorm(module: torch.nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate the running mean and variance of every BatchNorm layer of
    ``module`` as the plain average over ``batches`` (PreciseBN: Wu & Johnson,
    "Rethinking 'Batch' in BatchNorm", 2021, Sec. 3), the batches passed in
    training mode without gradients; weights and every other state are unchanged,
    and the module's training flag and the layers' momentum are restored.
    Returns the number of batches; with none, nothing changes."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    it = iter(batches)
    first = next(it, None)
    if first is None or not norms:
        return 0
    was_training = module.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    module.train()
    count = 0
    try:
        for x in itertools.chain([first], it):
            module(x)
            count += 1
    finally:
        for m, mom in zip(norms, momenta):
            m.momentum = mom
        module.train(was_training)
    return count


def train_head(
    head: torch.nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
) -> TrainStats:
    """Frozen mode: train only a linear or MLP head on cached backbone features
    (the linear-evaluation protocol of SimCLR / BYOL, here once per AL cycle).
    Same optimizer, schedule and epochs as the other modes; no augmentation.
    ``on_epoch`` as in :func:`train_supervised`."""
    start = time.perf_counter()
    n = int(features.shape[0])
    bs = min(cfg.batch_size, n)
    spe = math.ceil(n / bs)
    epochs, total = plan_steps(cfg, spe)
    features, labels = features.to(device), labels.to(device)
    head.to(device)
    head.train()
    stepper = _Stepper(head.parameters(), cfg, lr_schedule(cfg, spe, total), device)
    step = 0
    loss = torch.tensor(float("nan"))
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=generator).to(device)
        epoch_loss = _EpochMeans(on_epoch)
        for b in range(min(spe, total - step)):
            idx = perm[b * bs : (b + 1) * bs]
            loss = F.cross_entropy(head(features[idx]), labels[idx], label_smoothing=cfg.label_smoothing)
            stepper.step(step, loss)
            epoch_loss.add("loss", loss)
            step += 1
        epoch_loss.report(epoch, stepper.lrs[step - 1] if step else None)
    return TrainStats(steps=step, epochs=epochs, final_loss=float(loss.detach()), seconds=time.perf_counter() - start)


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], object],
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
    channels_last: bool = True,
) -> list:
    """``fn`` of each batch of un-augmented ``images`` (uint8), prepared on
    ``device`` in the training memory format, no grad; under autocast when
    ``amp`` (pass :func:`amp_enabled` of the run's config)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = []
    for s in range(0, int(images.shape[0]), batch_size):
        x = prepare(images[s : s + batch_size].to(device)).contiguous(memory_format=fmt)
        with _autocast(device, amp):
            out.append(fn(x))
    return out


def predict(
    model: torch.nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
    channels_last: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of un-augmented ``images`` in eval mode (no BN
    statistics updated), returned on the CPU in float32."""
    model.eval()

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, fe = model.forward_with_features(x)
        return lo.float().cpu(), fe.float().cpu()

    out = map_batches(fn, images, prepare, device, batch_size, amp, channels_last)
    if not out:
        return torch.empty(0), torch.empty(0)
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def predict_losses(
    model: torch.nn.Module,
    loss_module: torch.nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
    channels_last: bool = True,
) -> torch.Tensor:
    """(N,) losses that ``loss_module`` predicts for un-augmented ``images`` (uint8)
    from ``model``'s stage maps, both in eval mode, on the CPU in float32: the
    Learning Loss selection score (Yoo & Kweon, CVPR 2019, Sec. 3.1)."""
    model.eval()
    loss_module.eval()
    out = map_batches(lambda x: loss_module(model.forward_with_stages(x)[2]).float().cpu(), images, prepare, device, batch_size, amp, channels_last)
    return torch.cat(out) if out else torch.empty(0)


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Accuracy and per-class accuracy of ``logits`` against ``labels``."""
    pred = logits.argmax(1)
    labels = labels.cpu()
    correct = pred == labels
    per_class = []
    for c in range(num_classes):
        m = labels == c
        per_class.append(float(correct[m].float().mean()) if bool(m.any()) else float("nan"))
    return {"acc": float(correct.float().mean()), "per_class_acc": per_class, "n": int(labels.numel())}


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    batch_size: int = 512,
    amp: bool = False,
    channels_last: bool = True,
) -> dict:
    """Accuracy and per-class accuracy over every image of a split."""
    logits, _ = predict(model, images, prepare, device, batch_size, amp, channels_last)
    return accuracy_report(logits, labels, num_classes)
