"""Learning Loss (Yoo & Kweon, CVPR 2019): the ranking loss of Eq. 2-3, the
backbones' stage features, the detach schedule, and ``strategy=learning_loss``
end to end (METHODS.md sec. 7)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import ssal.modes as modes
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.errors import SsalError
from ssal.loop import run_experiment
from ssal.lossnet import LossPredictionModule, loss_ranking_loss
from ssal.models import build_model
from ssal.strategies import build_strategy
from ssal.strategies.base import SelectionContext
from ssal.train import detach_step, loss_prediction_losses, train_supervised

FAST = ["initial=40", "budget=30", "cycles=2", "train.epochs=2", "train.min_steps=0", "train.batch_size=32", "model_width=16", "plot=false"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On a busy 2-core machine torch's second thread mostly spins: one is ~50x faster here."""
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def sample():
    return load_dataset("sample")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (no ties in continuous losses)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


# -- the loss-prediction loss (paper Eq. 2-3) ---------------------------------


def test_ranking_loss_hand_computed():
    # B = 6 -> pairs (0, 5), (1, 4), (2, 3)
    pred = torch.tensor([4.0, 1.25, 2.5, 1.5, 2.0, 0.0], requires_grad=True)
    target = torch.tensor([3.0, 0.2, 0.1, 0.9, 1.0, 0.5], requires_grad=True)
    # (0,5): l0 > l5 -> +1, lhat diff 4.0    -> max(0, -4.0 + 1)  = 0    (right order, beyond the margin)
    # (1,4): l1 < l4 -> -1, lhat diff -0.75  -> max(0, -0.75 + 1) = 0.25 (right order, inside the margin)
    # (2,3): l2 < l3 -> -1, lhat diff 1.0    -> max(0, 1.0 + 1)   = 2.0  (wrong order)
    loss = loss_ranking_loss(pred, target, margin=1.0)
    assert loss.item() == pytest.approx((0 + 0.25 + 2.0) / 3)
    loss.backward()
    # active pairs (1,4) and (2,3): d/d lhat_i = -sign / 3, d/d lhat_j = +sign / 3
    assert pred.grad.tolist() == pytest.approx([0, 1 / 3, 1 / 3, -1 / 3, -1 / 3, 0])
    assert target.grad is None  # the true losses are a detached target
    # margin 0.5: (0,5) 0, (1,4) max(0, -0.75 + 0.5) = 0, (2,3) 1.0 + 0.5
    assert loss_ranking_loss(pred, target, margin=0.5).item() == pytest.approx(1.5 / 3)
    # swapping the true losses of every pair flips each sign: 4 + 1, 0.75 + 1, max(0, -1 + 1)
    assert loss_ranking_loss(pred, target[[5, 4, 3, 2, 1, 0]]).item() == pytest.approx((5.0 + 1.75 + 0.0) / 3)


def test_ranking_loss_odd_batch_ties_and_tiny_batches():
    pred = torch.tensor([4.0, 1.25, 2.5, 1.5, 2.0, 0.0])
    target = torch.tensor([3.0, 0.2, 0.1, 0.9, 1.0, 0.5])
    # an odd batch leaves its last sample out
    extra = loss_ranking_loss(torch.cat([pred, torch.tensor([-9.0])]), torch.cat([target, torch.tensor([9.0])]))
    assert extra.item() == pytest.approx(2.25 / 3)
    # tie l_i == l_j counts as -1 (Eq. 2: "+1 if l_i > l_j, -1 otherwise")
    assert loss_ranking_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.7, 0.7])).item() == pytest.approx(2.0)
    assert loss_ranking_loss(torch.tensor([0.0, 1.0]), torch.tensor([0.7, 0.7])).item() == pytest.approx(0.0)
    # B = 2: one pair (0, 1); B = 1: no pair, zero
    assert loss_ranking_loss(torch.tensor([0.3, 0.1]), torch.tensor([2.0, 1.0])).item() == pytest.approx(0.8)
    one = torch.tensor([5.0], requires_grad=True)
    z = loss_ranking_loss(one, torch.tensor([1.0]))
    assert z.item() == 0.0
    z.backward()
    assert one.grad.tolist() == [0.0]
    with pytest.raises(ValueError):
        loss_ranking_loss(torch.zeros(4), torch.zeros(3))


def test_loss_prediction_module_shape_and_paper_layout():
    m = LossPredictionModule((8, 16, 32))
    # one Linear(C_k, 128) per stage, then Linear(128 * 3, 1)
    assert [tuple(fc.weight.shape) for fc in m.fcs] == [(128, 8), (128, 16), (128, 32)]
    assert tuple(m.out.weight.shape) == (1, 384)
    stages = [torch.randn(5, 8, 7, 7), torch.randn(5, 16, 4, 4), torch.randn(5, 32, 2, 2)]
    out = m(stages)
    assert out.shape == (5,)
    # global average pooling -> fc -> ReLU, concatenated -> fc
    h = [F.relu(fc(s.mean(dim=(2, 3)))) for fc, s in zip(m.fcs, stages)]
    assert torch.allclose(out, m.out(torch.cat(h, 1)).squeeze(1), atol=1e-6)
    with pytest.raises(ValueError, match="expected 3 stage maps"):
        m(stages[:2])


# -- backbone stages ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, channels",
    [("smallcnn", {"width": 8}, (8, 16, 32)), ("resnet18", {"width": 8}, (8, 16, 32, 64)), ("vgg16", {}, (128, 256, 512, 512))],
)
def test_backbone_stages_and_unchanged_forward(name, kwargs, channels):
    torch.manual_seed(0)
    model = build_model(name, 10, 3, **kwargs).eval()
    bb = model.backbone
    assert bb.stage_channels == channels
    # the state_dict keys are those of the original modules (no new parameters or buffers)
    prefixes = {"smallcnn": ("stem.", "groups."), "resnet18": ("stem.", "layers."), "vgg16": ("features.",)}[name]
    assert all(k.startswith(prefixes) for k in bb.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        # the forward as written before stages existed
        if name == "smallcnn":
            before = torch.flatten(bb.pool(bb.groups(bb.stem(x))), 1)
        elif name == "resnet18":
            before = torch.flatten(bb.pool(bb.layers(bb.stem(x))), 1)
        else:
            before = torch.flatten(bb.pool(bb.features(x)), 1)
        feats = bb(x)
        stages = bb.stages(x)
        logits, feats2, stages2 = model.forward_with_stages(x)
    assert torch.equal(feats, before)
    assert torch.equal(feats2, before) and torch.equal(logits, model(x))
    assert [s.shape[1] for s in stages] == list(channels)
    assert all(torch.equal(a, b) for a, b in zip(stages, stages2))
    # the last stage is the map the features pool; resolution halves from stage to stage
    assert torch.equal(torch.flatten(bb.pool(stages[-1]), 1), before)
    sizes = [s.shape[-1] for s in stages]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)


# -- training: the detach schedule ------------------------------------------------


def test_detach_step():
    assert detach_step(0.6, 200) == 120  # the paper: epoch 120 of 200
    assert detach_step(0.6, 10) == 6
    assert detach_step(0.6, 7) == 5  # ceil(4.2)
    assert detach_step(0.0, 10) == 0 and detach_step(1.0, 10) == 10


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("smallcnn", 10, 1, width=8)
    module = LossPredictionModule(model.backbone.stage_channels)
    return model, module


def test_ranking_loss_reaches_backbone_only_before_detach():
    model, module = _tiny()
    model.train()
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8)
    backbone = list(model.backbone.parameters())
    for detach in (False, True):
        model.zero_grad(set_to_none=True)
        module.zero_grad(set_to_none=True)
        ce, rank = loss_prediction_losses(model, module, x, y, margin=1.0, detach=detach)
        assert rank.item() > 0
        rank.backward()  # the ranking loss alone (CE weight 0)
        reached = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in backbone]
        # the module always learns (its output bias cancels in lhat_i - lhat_j: zero gradient)
        assert all(bool(p.grad.abs().sum() > 0) for n, p in module.named_parameters() if n != "out.bias")
        assert module.out.bias.grad.abs().item() == 0.0
        if detach:
            assert not any(reached)
        else:
            assert all(reached)  # every backbone parameter feeds some stage
    # the CE is the mean of the per-sample cross-entropies
    with torch.no_grad():
        model.eval()
        ce, _ = loss_prediction_losses(model, module, x, y)
        assert ce.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_training_detaches_the_module_inputs_from_step_ceil_fraction_total(sample, monkeypatch):
    """Spy on the module inside the real training loop: its stage inputs carry
    the backbone's graph on steps 0..5 of 10 and are detached on steps 6..9."""
    train, _ = sample
    model, module = _tiny()
    seen: list[bool] = []
    real = LossPredictionModule.forward

    def spy(self, stages):
        seen.append(all(s.requires_grad for s in stages))
        return real(self, stages)

    monkeypatch.setattr(LossPredictionModule, "forward", spy)
    cfg = resolve_config(None, ["train.epochs=5", "train.min_steps=0", "train.batch_size=16", "train.augment=none"]).train
    from ssal.augment import TestView

    view = TestView((0.5,), (0.25,))
    before = [p.detach().clone() for p in module.parameters()]
    stats = train_supervised(
        model, train.images[:32], train.labels[:32], cfg, view, torch.Generator().manual_seed(0), torch.device("cpu"),
        progress=False, loss_module=module, detach_fraction=0.6,
    )
    assert stats.steps == 10
    assert seen == [True] * 6 + [False] * 4
    # the module's parameters are in the optimizer
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# -- the strategy, end to end ---------------------------------------------------------


def test_strategy_options_and_errors():
    assert build_strategy("learning_loss").loss_prediction == {"margin": 1.0, "weight": 1.0, "detach_fraction": 0.6}
    s = build_strategy("learning_loss", margin=0.5, weight=2, detach_fraction=1.0)
    assert s.loss_prediction == {"margin": 0.5, "weight": 2.0, "detach_fraction": 1.0}
    for bad, match in [({"margin": -1}, "margin"), ({"weight": 0}, "weight"), ({"detach_fraction": 1.5}, "detach_fraction"), ({"margin": "x"}, "strategy_options.margin=x: must be a number")]:
        with pytest.raises(SsalError, match=match):
            build_strategy("learning_loss", **bad)
    with pytest.raises(SsalError, match="bad options"):
        build_strategy("learning_loss", passes=3)
    ctx = SelectionContext(candidates=torch.arange(5), labelled=torch.arange(5, 8), embed=None, generator=torch.Generator())
    with pytest.raises(SsalError, match="train.mode=supervised or pretrain"):
        s.select(ctx, 2)


def test_joint_and_frozen_modes_are_refused(tmp_path, sample):
    with pytest.raises(SsalError, match=r"use train.mode=supervised or pretrain, not joint"):
        cfg = resolve_config(None, [*FAST, "strategy=learning_loss", "train.mode=joint", "threads=1", f"out={tmp_path / 'j'}"])
        run_experiment(cfg, progress=False, log=lambda s: None)
    # frozen: refused before any head is trained or frozen feature read
    train, test = sample
    cfg = resolve_config(None, [*FAST, "train.mode=frozen"])
    md = modes.ModeData(cfg, train.images, None, (test.images, test.labels), 10, torch.device("cpu"), (0.5,), (0.25,), False)
    md.loss_prediction = build_strategy("learning_loss").loss_prediction
    with pytest.raises(SsalError, match=r"^strategy learning_loss .*use train.mode=supervised or pretrain, not frozen$"):
        modes.train_cycle(md, 0, torch.arange(10), train.labels[:10], torch.arange(10, 20), None)


def run(tmp_path, name, extra=()):
    cfg = resolve_config(None, [*FAST, "strategy=learning_loss", "threads=1", "subset=300", "val_size=100", f"out={tmp_path / name}", *extra])
    return run_experiment(cfg, progress=False, log=lambda s: None)


def test_end_to_end_picks_are_the_highest_predicted_losses_and_deterministic(tmp_path, monkeypatch):
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = modes.LossPredictionTrained.predicted_loss

    def spy(self, idx):
        out = real(self, idx)
        calls.append((idx.clone(), out.clone()))
        return out

    monkeypatch.setattr(modes.LossPredictionTrained, "predicted_loss", spy)
    a = run(tmp_path, "a")
    assert [r["n_labelled"] for r in a] == [40, 70] and a[0]["n_picked"] == 30
    assert len(calls) == 1  # one selection round, scored by the trained module
    cand, scores = calls[0]
    assert cand.numel() == 300 and scores.dtype == torch.float32 and scores.shape == (300,)
    order = json.loads((tmp_path / "a" / "state.json").read_text())["pool"]["order"]
    top = cand[torch.sort(scores, descending=True, stable=True).indices[:30]]
    assert order[40:] == top.tolist()
    b = run(tmp_path, "b")
    assert [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in a] == [
        {k: v for k, v in r.items() if not k.startswith("seconds")} for r in b
    ]
    assert json.loads((tmp_path / "b" / "state.json").read_text())["pool"]["order"] == order
    assert torch.equal(calls[1][1], scores)


def test_predicted_losses_rank_true_losses_after_training(sample):
    """128 labelled images, 60 steps of a width-8 SmallCNN: the module's predicted
    losses correlate with the network's true per-image losses. Measured over 30
    seeds: Spearman on the labelled set 0.31 to 0.84 (median 0.68), on 300
    held-out pool images 0.33 to 0.71; seed 0 gives 0.64 and 0.59."""
    train, test = sample
    cfg = resolve_config(None, ["model_width=8", "train.epochs=15", "train.min_steps=0", "train.batch_size=32", "plot=false", "seed=0"])
    md = modes.setup_mode(cfg, train.images, None, (test.images, test.labels), train.images, 10, torch.device("cpu"), progress=False)
    md.loss_prediction = build_strategy("learning_loss").loss_prediction
    perm = torch.randperm(len(train.images), generator=torch.Generator().manual_seed(0))
    lab, held = perm[:128], perm[128:428]
    trained = modes.train_cycle(md, 0, lab, train.labels[lab], perm[128:], None)
    assert isinstance(trained, modes.LossPredictionTrained) and trained.stats.steps == 60
    for idx, floor in ((lab, 0.25), (held, 0.25)):
        logits, _ = trained.embed("pool", idx)
        true = F.cross_entropy(logits, train.labels[idx], reduction="none")
        pred = trained.predicted_loss(idx)
        assert pred.dtype == torch.float32 and pred.shape == idx.shape
        assert spearman(pred, true) > floor
    # the module is not saved with the classifier, so a warm start still loads
    state = trained.state_dict()
    assert not any(k.startswith("loss_module") for k in state)
    build_model("smallcnn", 10, 1, width=8).load_state_dict(state)
    assert math.isfinite(trained.stats.final_loss)
