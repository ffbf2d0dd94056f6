"""The training modes of the AL loop (``train.mode``), behind one interface.

Each cycle the loop asks the mode for a :class:`Trained` model built on the
labelled set and then only talks to that object: ``evaluate(split)`` for the
final test evaluation, ``embed(idx)`` for selection (logits and features of
un-augmented pool images), ``ssl_loss(idx)`` for ``ssl_loss_high``.

- ``supervised``: cross-entropy on L only.
- ``joint``: MoBYv2AL (Caramalau et al., BMVC 2022): classifier + SSL branch on
  one encoder, labelled and unlabelled batches alternating (:func:`train_joint`).
- ``pretrain``: the multi-stage baseline: SSL once on the training images
  (cached, :mod:`ssal.pretrain`), then fine-tune the whole network each cycle.
- ``frozen``: SSL once, features of every image computed once, then only a
  linear or MLP head is trained per cycle.

``train.init_backbone`` starts the supervised or joint network of every cycle
from a saved SSL backbone instead of from random weights.

Labels enter only through ``labels`` of the labelled set, read by the loop from
the oracle; unlabelled pool images reach the trainers as images alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from .augment import StrongView, TestView, WeakView, channel_stats
from .errors import SsalError
from .lossnet import LossPredictionModule
from .models import build_model
from .ssl import SSLMethod, build_ssl
from .strategies.base import NetworkAccess, Strategy
from .train import (
    TrainStats,
    accuracy_report,
    amp_enabled,
    evaluate,
    predict,
    predict_losses,
    ssl_sample_losses,
    train_head,
    train_joint,
    train_supervised,
)
from .utils import derive_seed, generator


@dataclass
class ModeData:
    """What a mode needs besides the config: the splits, device, normalisation,
    and, for pretrain / frozen, the SSL encoder and its cached features."""

    cfg: DictConfig
    pool_images: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    progress: bool = True
    ssl_backbone: dict[str, torch.Tensor] | None = None
    ssl_folder: str | None = None  # the SSL cache folder the backbone came from
    ssl_prototypes: list[dict[str, torch.Tensor]] | None = None  # its saved prototypes (PCL), rows of ssl_images
    frozen_features: dict[str, torch.Tensor] = field(default_factory=dict)
    classifier_dropout: float = 0.0  # asked for by the strategy (BALD's MC dropout)
    loss_prediction: dict | None = None  # asked for by the strategy (Learning Loss options)
    on_epoch: Callable[[int, dict[str, float]], None] | None = None  # per-epoch scalars (TensorBoard), set by the loop

    @property
    def prepare(self) -> TestView:
        return TestView(self.mean, self.std)

    def images(self, split: str) -> torch.Tensor:
        return {"pool": self.pool_images, "test": self.test[0], "val": self.val[0] if self.val else torch.empty(0)}[split]

    def eval_kwargs(self) -> dict:
        t = self.cfg.train
        return dict(device=self.device, batch_size=t.eval_batch_size, amp=amp_enabled(t, self.device), channels_last=t.channels_last)


def model_kwargs(cfg: DictConfig) -> dict:
    return {"width": cfg.model_width} if cfg.model_width else {}


def build_classifier(cfg: DictConfig, num_classes: int, in_channels: int, dropout: float = 0.0) -> nn.Module:
    return build_model(cfg.model, num_classes, in_channels, dropout=dropout, **model_kwargs(cfg))


def joint_views(cfg: DictConfig, mean, std, size: int = 0) -> tuple:
    """The two SSL views of joint training: (weak, strong), the classifier
    reading the first, or (strong, strong), the classifier on a weak view of its own;
    ``size`` px a side (``ssl.joint_image_size``), 0 = native."""
    out = int(size) or None
    first = WeakView(mean, std, out_size=out) if cfg.ssl.views == "weak_strong" else StrongView(mean, std, out_size=out)
    return first, StrongView(mean, std, out_size=out)


def build_ssl_branch(cfg: DictConfig, model: nn.Module) -> SSLMethod:
    return build_ssl(str(cfg.ssl.method), model.backbone, int(model.feat_dim), **dict(cfg.ssl.options))


#: keys of a joint model's SSL branch in a warm-start state (a run folder's warm_start_cycle<k>.pt)
SSL_BRANCH_PREFIX = "ssl_branch."


def ssl_branch_state(method: SSLMethod) -> dict[str, torch.Tensor]:
    """The SSL branch's state without its online encoder (the classifier's
    backbone, saved with the classifier)."""
    return {k: v for k, v in method.state_dict().items() if not k.startswith("encoder.")}


def split_branch_state(state: dict) -> tuple[dict, dict]:
    """A warm-start state -> (classifier state, SSL branch state without its prefix)."""
    n = len(SSL_BRANCH_PREFIX)
    branch = {k[n:]: v for k, v in state.items() if k.startswith(SSL_BRANCH_PREFIX)}
    return {k: v for k, v in state.items() if not k.startswith(SSL_BRANCH_PREFIX)}, branch


def load_ssl_branch(method: SSLMethod, branch: dict[str, torch.Tensor]) -> None:
    """Load :func:`ssl_branch_state` into a branch built around the (already
    loaded) classifier backbone; any other mismatch is an error."""
    missing, unexpected = method.load_state_dict(branch, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise SsalError(f"the saved SSL branch does not fit ssl.method={method.name} (missing {missing[:3]}, unexpected {unexpected[:3]})")


class Trained(ABC):
    """A model trained in one cycle, in whatever mode."""

    stats: TrainStats | None

    @abstractmethod
    def embed(self, split: str, idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features of un-augmented images of ``split`` (``idx`` of them, or all)."""

    @abstractmethod
    def evaluate(self, split: str, labels: torch.Tensor) -> dict:
        """Accuracy report of the whole ``split`` against ``labels``."""

    def ssl_loss(self, idx: torch.Tensor) -> torch.Tensor | None:
        return None

    #: pool indices -> losses predicted by a Learning Loss module, when one was trained
    predicted_loss: Callable[[torch.Tensor], torch.Tensor] | None = None

    def network_access(self, labelled: torch.Tensor, labels: torch.Tensor) -> NetworkAccess | None:
        """The network and labelled data for gradient / MC-dropout strategies;
        None where there is no end-to-end network (frozen mode)."""
        return None

    def state_dict(self) -> dict:
        return {}


class NetworkTrained(Trained):
    """supervised / joint / pretrain: a whole network, run on un-augmented images."""

    def __init__(self, md: ModeData, model: nn.Module, stats: TrainStats | None, method: SSLMethod | None = None, seed_keys=()) -> None:
        self.md, self.model, self.stats, self.method = md, model, stats, method
        self.seed_keys = seed_keys

    def embed(self, split: str, idx: torch.Tensor | None = None):
        images = self.md.images(split)
        return predict(self.model, images if idx is None else images[idx], self.md.prepare, **self.md.eval_kwargs())

    def evaluate(self, split: str, labels: torch.Tensor) -> dict:
        return evaluate(self.model, self.md.images(split), labels, self.md.num_classes, self.md.prepare, **self.md.eval_kwargs())

    def network_access(self, labelled: torch.Tensor, labels: torch.Tensor) -> NetworkAccess:
        md = self.md
        pool = md.pool_images
        return NetworkAccess(
            model=self.model,
            prepare=md.prepare,
            pool_images=lambda idx: pool[idx],
            labelled_images=pool[labelled],
            labelled_labels=labels,
            reference=md.val if md.val is not None and len(md.val[1]) else None,
            num_classes=md.num_classes,
            device=md.device,
            batch_size=int(md.cfg.train.eval_batch_size),
            amp=amp_enabled(md.cfg.train, md.device),
            channels_last=bool(md.cfg.train.channels_last),
        )

    def ssl_loss(self, idx: torch.Tensor) -> torch.Tensor | None:
        if self.method is None:
            return None
        # the views an unlabelled batch trains on (ssl.joint_image_size px when set)
        views = joint_views(self.md.cfg, self.md.mean, self.md.std, self.md.cfg.ssl.joint_image_size)
        g = generator(self.md.cfg.seed, *self.seed_keys, "ssl-score")
        t = self.md.cfg.train
        return ssl_sample_losses(self.method, self.md.pool_images[idx], views, g, self.md.device, t.eval_batch_size, t.channels_last)

    def state_dict(self) -> dict:
        """The classifier's weights; in joint mode with ``train.warm_start``
        also the SSL branch's own state (projector, predictor, momentum
        encoder, queues) under :data:`SSL_BRANCH_PREFIX`, so the next cycle
        continues the whole joint system, not a classifier with a fresh head
        of random SSL layers."""
        state = self.model.state_dict()
        if self.method is not None and self.md.cfg.train.warm_start:
            state.update({SSL_BRANCH_PREFIX + k: v for k, v in ssl_branch_state(self.method).items()})
        return state


class LossPredictionTrained(NetworkTrained):
    """supervised / pretrain with a Learning Loss module (Yoo & Kweon, CVPR 2019)
    trained alongside the network; :meth:`predicted_loss` scores pool images.
    The module is not part of :meth:`state_dict` (a warm start loads the
    classifier alone; the module starts afresh each cycle)."""

    def __init__(self, md: ModeData, model: nn.Module, loss_module: nn.Module, stats: TrainStats | None) -> None:
        super().__init__(md, model, stats)
        self.loss_module = loss_module

    def predicted_loss(self, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """(n,) predicted losses of un-augmented pool images ``idx`` (float32, CPU)."""
        return predict_losses(self.model, self.loss_module, self.md.pool_images[idx], self.md.prepare, **self.md.eval_kwargs())


def check_loss_prediction_mode(mode: str, loss_prediction: dict | None) -> None:
    """SsalError unless a strategy asking for a Learning Loss module runs in a
    mode that trains the network with plain cross-entropy (supervised, pretrain)."""
    if loss_prediction is not None and mode not in ("supervised", "pretrain"):
        raise SsalError(
            f"strategy learning_loss trains its loss-prediction module with the classifier: "
            f"use train.mode=supervised or pretrain, not {mode}"
        )


def check_strategy_fits(cfg: DictConfig, strategy: Strategy) -> None:
    """SsalError unless the run can give ``strategy`` what it reads: the checks
    ``ssal run`` and ``ssal bench --dry-run`` make before any data is loaded,
    so a mismatch never fails after a cycle of training."""
    mode = cfg.train.mode
    check_loss_prediction_mode(mode, strategy.loss_prediction)
    if strategy.needs_network and mode == "frozen":
        raise SsalError(f"strategy {cfg.strategy!r} needs the trained network: use train.mode=supervised, joint or pretrain, not frozen")
    if strategy.needs_ssl_branch and mode != "joint":
        raise SsalError(f"strategy {cfg.strategy!r} scores with this cycle's self-supervised branch: use train.mode=joint, not {mode}")
    if strategy.needs_reference and not cfg.val_size:
        raise SsalError(f"strategy {cfg.strategy!r} needs a labelled reference set: set val_size > 0 (the test split is never used)")


class FrozenTrained(Trained):
    """frozen: a head on cached features of the SSL encoder."""

    def __init__(self, md: ModeData, head: nn.Module, stats: TrainStats) -> None:
        self.md, self.head, self.stats = md, head, stats

    @torch.no_grad()
    def embed(self, split: str, idx: torch.Tensor | None = None):
        feats = self.md.frozen_features[split]
        feats = feats if idx is None else feats[idx]
        self.head.eval()
        return self.head(feats.to(self.md.device)).float().cpu(), feats

    def evaluate(self, split: str, labels: torch.Tensor) -> dict:
        logits, _ = self.embed(split)
        return accuracy_report(logits, labels, self.md.num_classes)

    def state_dict(self) -> dict:
        return self.head.state_dict()


def make_head(cfg: DictConfig, feat_dim: int, num_classes: int) -> nn.Module:
    """The frozen mode's head. Both start with a BatchNorm without affine
    parameters, which standardises the frozen features (MAE's linear probe, He et
    al., CVPR 2022, sec. A.2), so one learning rate suits any encoder."""
    norm = nn.BatchNorm1d(feat_dim, affine=False)
    if cfg.train.head == "mlp":
        h = int(cfg.train.head_hidden)
        return nn.Sequential(norm, nn.Linear(feat_dim, h), nn.BatchNorm1d(h), nn.ReLU(inplace=True), nn.Linear(h, num_classes))
    return nn.Sequential(norm, nn.Linear(feat_dim, num_classes))


def train_cycle(
    md: ModeData,
    cycle: int,
    labelled: torch.Tensor,
    labels: torch.Tensor,
    unlabelled: torch.Tensor,
    model_state: dict | None,
) -> Trained:
    """Train this cycle's model on the labelled pool indices ``labelled`` with
    ``labels``; ``unlabelled`` (pool indices, no labels) feeds the SSL branch."""
    cfg = md.cfg
    mode = cfg.train.mode
    check_loss_prediction_mode(mode, md.loss_prediction)
    seed = cfg.seed
    torch.manual_seed(derive_seed(seed, cycle, "init"))
    g = generator(seed, cycle, "train")
    desc = f"cycle {cycle} train"
    if mode == "frozen":
        feats = md.frozen_features["pool"]
        head = make_head(cfg, int(feats.shape[1]), md.num_classes)
        if model_state is not None and cfg.train.warm_start:
            head.load_state_dict(model_state)
        stats = train_head(head, feats[labelled], labels, cfg.train, g, md.device, on_epoch=md.on_epoch)
        return FrozenTrained(md, head, stats)
    in_ch = int(md.pool_images.shape[1])
    model = build_classifier(cfg, md.num_classes, in_ch, md.classifier_dropout)
    if md.ssl_backbone is not None:  # pretrain mode, or train.init_backbone
        model.backbone.load_state_dict(md.ssl_backbone)
    branch: dict = {}
    if model_state is not None and cfg.train.warm_start:
        model_state, branch = split_branch_state(model_state)
        model.load_state_dict(model_state)
    if mode == "joint":
        method = build_ssl_branch(cfg, model)
        if branch:  # a warm start continues the SSL branch too
            load_ssl_branch(method, branch)
        pool_images = md.pool_images

        def unlabelled_images(pos: torch.Tensor) -> torch.Tensor:
            return pool_images[unlabelled[pos]]

        stats = train_joint(
            model,
            method,
            md.pool_images[labelled],
            labels,
            unlabelled_images,
            int(unlabelled.numel()),
            cfg.train,
            joint_views(cfg, md.mean, md.std),
            g,
            md.device,
            lambda_c=float(cfg.ssl.lambda_c),
            low_loss_fraction=float(cfg.ssl.low_loss_fraction),
            classifier_view=WeakView(md.mean, md.std) if cfg.ssl.views == "strong_strong" else None,
            ssl_only_views=joint_views(cfg, md.mean, md.std, cfg.ssl.joint_image_size) if cfg.ssl.joint_image_size else None,
            prepare=md.prepare,
            progress=md.progress,
            desc=desc,
            on_epoch=md.on_epoch,
        )
        return NetworkTrained(md, model, stats, method, seed_keys=(cycle,))
    view = {"weak": WeakView, "strong": StrongView, "none": TestView}[cfg.train.augment](md.mean, md.std)
    if md.loss_prediction is not None:
        # Learning Loss (Yoo & Kweon, CVPR 2019): the module trains with the network
        channels = getattr(model.backbone, "stage_channels", None)
        if channels is None:
            raise SsalError(f"model {cfg.model!r} exposes no stage features for strategy learning_loss")
        lp = md.loss_prediction
        loss_module = LossPredictionModule(channels)
        stats = train_supervised(
            model,
            md.pool_images[labelled],
            labels,
            cfg.train,
            view,
            g,
            md.device,
            progress=md.progress,
            desc=desc,
            loss_module=loss_module,
            loss_weight=float(lp["weight"]),
            loss_margin=float(lp["margin"]),
            detach_fraction=float(lp["detach_fraction"]),
            on_epoch=md.on_epoch,
        )
        return LossPredictionTrained(md, model, loss_module, stats)
    stats = train_supervised(
        model, md.pool_images[labelled], labels, cfg.train, view, g, md.device, progress=md.progress, desc=desc, on_epoch=md.on_epoch
    )
    return NetworkTrained(md, model, stats)


def setup_mode(
    cfg: DictConfig,
    pool_images: torch.Tensor,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    test: tuple[torch.Tensor, torch.Tensor],
    ssl_images: torch.Tensor,
    num_classes: int,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
    init: tuple[dict[str, torch.Tensor], dict, Path] | None = None,
) -> ModeData:
    """Normalisation statistics and, for pretrain / frozen, the cached SSL
    pretraining on ``ssl_images`` (train-split images, no labels) and frozen
    features; ``init``: :func:`init_backbone` of ``cfg`` if already loaded."""
    from .pretrain import images_fingerprint, load_prototypes

    mode = cfg.train.mode
    if mode in ("pretrain", "frozen"):
        backbone, meta, folder = run_pretraining(cfg, ssl_images, device, progress, log)
        md = ModeData(
            cfg, pool_images, val, test, num_classes, device, tuple(meta["mean"]), tuple(meta["std"]), progress, backbone, str(folder.resolve())
        )
        md.ssl_prototypes = load_prototypes(folder)  # the cache is keyed by these images: its rows are ssl_images
        if mode == "frozen":
            md.frozen_features = frozen_features(md)
        return md
    if cfg.train.init_backbone:
        backbone, meta, file = init or init_backbone(cfg, int(pool_images.shape[1]))
        log(f"init: {cfg.model} backbone from {file} ({meta.get('method', '?')} pretraining)")
        md = ModeData(
            cfg, pool_images, val, test, num_classes, device, tuple(meta["mean"]), tuple(meta["std"]), progress, backbone, str(file.parent.resolve())
        )
        protos = load_prototypes(file.parent)
        if protos is not None and meta.get("images") == images_fingerprint(ssl_images):  # not those of another dataset's pretraining
            md.ssl_prototypes = protos
        return md
    mean, std = channel_stats(pool_images)
    return ModeData(cfg, pool_images, val, test, num_classes, device, mean, std, progress)


def init_backbone(cfg: DictConfig, in_channels: int) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """``train.init_backbone``: the weights, meta and file of an SSL backbone that
    starts every cycle's network (supervised or joint mode), checked against the
    run's model; the network then sees images normalised as in that pretraining."""
    from .pretrain import read_backbone

    encoder, meta, file = read_backbone(cfg.train.init_backbone, "train.init_backbone")
    want = (cfg.model, model_kwargs(cfg), in_channels)
    have = (meta.get("model"), meta.get("model_kwargs"), meta.get("in_channels"))
    if have != want:
        raise SsalError(
            f"train.init_backbone: {file} holds {have[0]} {have[1]} with {have[2]} input channels, "
            f"but this run builds {want[0]} {want[1]} with {want[2]}; pretrain with the run's model and model_width"
        )
    return encoder.state_dict(), meta, file


def run_pretraining(cfg: DictConfig, ssl_images: torch.Tensor, device: torch.device, progress: bool = True, log: Callable[[str], None] = print):
    """SSL pretraining of ``cfg.model`` with ``cfg.ssl`` on ``ssl_images`` (cached;
    see :func:`ssal.pretrain.pretrain`). Returns ``(backbone_state, meta, folder)``."""
    from .pretrain import pretrain

    mean, std = channel_stats(ssl_images)
    return pretrain(ssl_images, cfg.model, model_kwargs(cfg), cfg.ssl, mean, std, device, cfg.cache_dir, progress, log)


def frozen_features(md: ModeData) -> dict[str, torch.Tensor]:
    """Encoder features of every pool, validation and test image, computed once."""
    model = build_classifier(md.cfg, md.num_classes, int(md.pool_images.shape[1]))
    model.backbone.load_state_dict(md.ssl_backbone)
    out = {}
    for split in ("pool", "val", "test"):
        images = md.images(split)
        out[split] = predict(model, images, md.prepare, **md.eval_kwargs())[1] if images.numel() else torch.empty(0, model.feat_dim)
    return out
