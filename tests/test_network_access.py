"""What the loop hands to strategies that need the network (ISAL, BADGE, BALD,
VAAL): the labels of L and of the validation split only, never a pool label."""

import torch

import ssal.strategies as strategies
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.loop import _config_diff, prepare_splits, run_experiment
from ssal.strategies.base import Strategy, check_request

FAST = ["initial=40", "budget=30", "cycles=2", "train.epochs=1", "train.min_steps=0", "train.batch_size=32", "model_width=8", "plot=false"]


class Spy(Strategy):
    name = "spy"
    needs_network = True
    seen: list = []

    def select(self, ctx, budget):
        check_request(ctx, budget)
        net = ctx.network
        before = {k: v.clone() for k, v in net.model.state_dict().items()}
        Spy.seen.append((ctx.labelled.clone(), net.labelled_labels.clone(), net.labelled_images.clone(), net.reference, ctx.candidates.clone(),
                         net.pool_images(ctx.candidates[:5]).clone(), before, net.model))
        return ctx.candidates[:budget]


def test_network_access_holds_labels_of_L_and_validation_only(tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, "spy", Spy)
    Spy.seen = []
    cfg = resolve_config(None, [*FAST, "strategy=spy", f"out={tmp_path / 'r'}"])
    run_experiment(cfg, progress=False, log=lambda s: None)
    splits = prepare_splits(cfg, progress=False)
    train, _ = load_dataset(cfg.dataset, cfg.data_root, cfg.cache_dir, progress=False)
    (labelled, labels, images, reference, cand, cand_images, before, model), = Spy.seen
    assert labels.numel() == labelled.numel() == 40
    assert torch.equal(images, splits.pool.images[labelled])
    assert torch.equal(cand_images, splits.pool.images[cand[:5]])
    # they are the true labels of L
    assert torch.equal(labels, train.labels[splits.pool_source_index[labelled]])
    # the network is this cycle's trained model, in the state the strategy found it
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref_images, ref_labels = reference
    assert torch.equal(ref_images, splits.val.images) and torch.equal(ref_labels, splits.val.labels)
    assert not torch.equal(ref_images, splits.test.images[: len(ref_images)])


def test_resume_accepts_configs_saved_before_a_key_existed():
    defaults = {"a": 1, "strategy_options": {}, "train": {"x": 1, "new": 5}}
    saved = {"a": 1, "train": {"x": 1}}
    assert _config_diff(saved, {"a": 1, "strategy_options": {}, "train": {"x": 1, "new": 5}}, defaults) == []
    assert _config_diff(saved, {"a": 1, "strategy_options": {"k": 2}, "train": {"x": 1, "new": 5}}, defaults) == ["strategy_options"]
    assert _config_diff(saved, {"a": 1, "strategy_options": {}, "train": {"x": 1, "new": 6}}, defaults) == ["train.new"]
    assert _config_diff(saved, {"a": 2, "strategy_options": {}, "train": {"x": 1, "new": 5}}, defaults) == ["a"]


def test_resume_compares_the_crop_scale_resolved():
    """Runs saved when ``ssl.crop_scale`` defaulted to 0.2 equal the same run with
    the ``null`` default for methods whose value is 0.2, not for byol (0.08)."""
    saved = {"a": 1, "ssl": {"method": "moby", "crop_scale": 0.2}}
    assert _config_diff(saved, {"a": 1, "ssl": {"method": "moby", "crop_scale": None}}) == []
    assert _config_diff(saved, {"a": 1, "ssl": {"method": "moby", "crop_scale": 0.3}}) == ["ssl.crop_scale"]
    byol = {"a": 1, "ssl": {"method": "byol", "crop_scale": 0.2}}
    assert _config_diff(byol, {"a": 1, "ssl": {"method": "byol", "crop_scale": None}}) == ["ssl.crop_scale"]
    assert _config_diff({"ssl": {"method": "byol", "crop_scale": 0.08}}, {"ssl": {"method": "byol", "crop_scale": None}}) == []


def test_network_strategies_refuse_frozen_mode_before_any_work(tmp_path, monkeypatch):
    import pytest

    import ssal.loop as loop
    from ssal.errors import SsalError

    monkeypatch.setattr(loop, "setup_mode", lambda *a, **k: pytest.fail("set-up (pretraining) must not start"))
    for name in ("isal", "bald", "vaal"):
        cfg = resolve_config(None, [*FAST, f"strategy={name}", "train.mode=frozen", f"out={tmp_path / name}"])
        with pytest.raises(SsalError, match="not frozen"):
            run_experiment(cfg, progress=False, log=lambda s: None)
        assert not (tmp_path / name).exists()


def test_strategies_that_do_not_read_the_network_do_not_get_it(tmp_path, monkeypatch):
    seen = []

    class Plain(Strategy):
        name = "plain"

        def select(self, ctx, budget):
            seen.append(ctx.network)
            return ctx.candidates[:budget]

    monkeypatch.setitem(strategies.STRATEGIES, "plain", Plain)
    cfg = resolve_config(None, [*FAST, "strategy=plain", f"out={tmp_path / 'r'}"])
    run_experiment(cfg, progress=False, log=lambda s: None)
    assert seen == [None]
