"""Training modes: MoBYv2AL joint training, SSL pretraining (cache, resume) and
frozen heads; one regression test per applicable defect of the official
MoBYv2AL code (METHODS.md sec. 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ssal.modes as modes
import ssal.train as train_mod
from ssal.augment import StrongView, TestView, WeakView, channel_stats
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.data.oracle import ActivePool
from ssal.errors import SsalError
from ssal.loop import run_experiment
from ssal.models import build_model
from ssal.ssl import build_ssl
from ssal.strategies.prototypes import select_by_assignment
from test_loop import killed_on_call, strip_times

TINY = ["model_width=8", "train.epochs=1", "train.min_steps=0", "train.batch_size=32", "plot=false", "val_size=100"]
JOINT = [*TINY, "train.mode=joint", "ssl.options.queue_size=64", "ssl.options.hidden_dim=32", "ssl.options.proj_dim=16"]


def run(tmp_path, name, extra=(), resume=False):
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / name}", *extra])
    return run_experiment(cfg, resume=resume, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def sample():
    train, _ = load_dataset("sample")
    return train


def tiny_joint(sample, n_l=48, width=8, queue=64):
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=width)
    method = build_ssl("moby", model.backbone, model.feat_dim, queue_size=queue, hidden_dim=32, proj_dim=16)
    mean, std = channel_stats(sample.images[:500])
    return model, method, (WeakView(mean, std), StrongView(mean, std)), (mean, std)


def joint_cfg(epochs=2):
    return resolve_config(None, [*TINY, f"train.epochs={epochs}"]).train


# -- joint mode (MoBYv2AL) -----------------------------------------------------


def test_a_warm_started_joint_cycle_continues_the_ssl_branch(tmp_path, monkeypatch):
    """train.warm_start in joint mode keeps the whole joint system: the next
    cycle starts from the last cycle's projector, predictor, momentum encoder
    and queues, not from random SSL layers around a trained backbone. model.pt
    stays the classifier alone (what eval-features and reports load); a resume
    restores the branch from the cycle's warm-start file to the uninterrupted
    result."""
    real, ends, starts = modes.train_joint, [], []

    def spy(model, method, *a, **k):
        starts.append({k2: v.clone() for k2, v in modes.ssl_branch_state(method).items()})
        out = real(model, method, *a, **k)
        ends.append({k2: v.clone() for k2, v in modes.ssl_branch_state(method).items()})
        return out

    monkeypatch.setattr(modes, "train_joint", spy)
    extra = [*JOINT, "cycles=3", "strategy=random", "train.warm_start=true"]
    full = run(tmp_path, "warm", extra)
    assert len(starts) == 3
    keys = set(ends[0])
    assert {"queue1.keys", "queue2.ptr", "projector.0.weight", "predictor.0.weight", "target_projector.0.weight"} <= keys
    assert any(k.startswith("target_encoder.") for k in keys) and not any(k.startswith("encoder.") for k in keys)
    for c in (1, 2):
        assert starts[c].keys() == ends[c - 1].keys()
        assert all(torch.equal(starts[c][k], ends[c - 1][k]) for k in keys)
    assert not all(torch.equal(starts[0][k], ends[0][k]) for k in keys)  # training moved the branch
    saved = torch.load(tmp_path / "warm" / "model.pt")
    assert "head.weight" in saved and not any(k.startswith(modes.SSL_BRANCH_PREFIX) for k in saved)
    warm = torch.load(tmp_path / "warm" / "warm_start_cycle2.pt")
    branch = {k[len(modes.SSL_BRANCH_PREFIX) :]: v for k, v in warm.items() if k.startswith(modes.SSL_BRANCH_PREFIX)}
    assert branch.keys() == keys and all(torch.equal(branch[k], ends[2][k]) for k in keys)
    assert sorted(p.name for p in (tmp_path / "warm").glob("warm_start_cycle*.pt")) == ["warm_start_cycle2.pt"]

    starts.clear()
    monkeypatch.setattr(modes, "train_joint", killed_on_call(spy, 3))  # die in cycle 2, after cycle 1's model and branch are saved
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "res", extra)
    monkeypatch.setattr(modes, "train_joint", spy)
    starts.clear()
    resumed = run(tmp_path, "res", extra, resume=True)
    assert all(torch.equal(starts[0][k], ends[1][k]) for k in keys)  # cycle 2 resumed from cycle 1's branch (the full run's: deterministic)
    assert strip_times(resumed) == strip_times(full)

    starts.clear()
    run(tmp_path, "cold", [*JOINT, "cycles=2", "strategy=random"])
    assert [int(st["queue1.ptr"]) for st in starts] == [0, 0]  # without warm_start each cycle starts afresh
    assert not list((tmp_path / "cold").glob("warm_start_cycle*.pt"))


def test_joint_runs_on_one_channel_fashion_mnist_end_to_end(tmp_path):
    """Defect 9: the official MoBYv2AL crashed on 1-channel input."""
    records = run(tmp_path, "j", JOINT)
    assert [r["n_labelled"] for r in records] == [40, 70]
    assert records[0]["mode"] == "joint" and 0 <= records[0]["test_acc"] <= 1
    # labelled and unlabelled batches alternate: 2 x ceil(40 / 32) steps per epoch
    assert records[0]["train_steps"] == 4


@pytest.fixture(scope="module")
def svhn_like(tmp_path_factory):
    """An image folder shaped like SVHN: 32 x 32 RGB, 10 classes."""
    root = tmp_path_factory.mktemp("svhnlike")
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 6)):
        for c in range(10):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                base = np.full((32, 32, 3), 20 * c, dtype=np.uint8)
                img = np.clip(base + rng.integers(0, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_joint_runs_on_svhn_shaped_input(tmp_path, svhn_like):
    """Defect 9, the other half: 3-channel 32 x 32 input with both views."""
    records = run(tmp_path, "s", [*JOINT, f"dataset=imagefolder:{svhn_like}", f"cache_dir={tmp_path / 'c'}", "val_size=20"])
    assert [r["n_labelled"] for r in records] == [40, 70]


def test_no_pool_label_reaches_the_joint_trainer(tmp_path, monkeypatch):
    """Defect 1: the official code trained unlabelled batches with their true
    labels. Every label read goes through ActivePool.targets for labelled
    indices only, and the trainer gets exactly |L| labels."""
    real = ActivePool.targets
    reads, seen = [], []

    def spy(self, idx):
        idx = torch.as_tensor(idx)
        reads.append(bool(self._is_labelled[idx].all()))
        return real(self, idx)

    real_joint = modes.train_joint

    def spy_joint(model, method, images, labels, unlabelled_images, num_unlabelled, *a, **k):
        seen.append((images.shape[0], labels.shape[0], unlabelled_images(torch.arange(3)).dtype))
        return real_joint(model, method, images, labels, unlabelled_images, num_unlabelled, *a, **k)

    monkeypatch.setattr(ActivePool, "targets", spy)
    monkeypatch.setattr(modes, "train_joint", spy_joint)
    run(tmp_path, "spy", [*JOINT, "strategy=ssl_loss_high"])
    assert reads and all(reads)
    assert seen == [(40, 40, torch.uint8), (70, 70, torch.uint8)]  # the unlabelled side yields images only


def test_joint_trains_the_head_and_follows_the_lr_schedule(sample, monkeypatch):
    """Defects 2 and 3: the official classifier head never trained (zero_grad
    before step) and its LR scheduler never fired."""
    model, method, views, _ = tiny_joint(sample)
    head_before = model.head.weight.detach().clone()
    lrs = []
    real_step = train_mod._Stepper.step

    def spy(self, k, loss):
        real_step(self, k, loss)
        lrs.append(self.opt.param_groups[0]["lr"])

    monkeypatch.setattr(train_mod._Stepper, "step", spy)
    cfg = joint_cfg(epochs=3)
    images, labels = sample.images[:48], sample.labels[:48]
    pool = sample.images[48:400]
    stats = train_mod.train_joint(
        model, method, images, labels, lambda p: pool[p], len(pool), cfg, views, torch.Generator().manual_seed(0), torch.device("cpu"), progress=False
    )
    assert not torch.equal(model.head.weight, head_before)
    assert stats.steps == len(lrs) == 3 * (2 + 2)
    expected = train_mod.lr_schedule(cfg, 4, stats.steps)
    assert lrs == pytest.approx(expected)
    assert lrs[0] == pytest.approx(cfg.lr) and lrs[-1] < 0.1 * cfg.lr  # cosine decays to near 0


def test_joint_updates_queues_and_ema_on_every_batch_over_the_whole_run(sample, monkeypatch):
    """Labelled and unlabelled batches both enqueue keys and step the momentum
    encoder, and its cosine ramp spans all of the run's steps, not one epoch's."""
    model, method, views, _ = tiny_joint(sample, queue=64)
    kinds, calls, moved = [], [], []
    real_forward, real_after = type(method).forward, type(method).after_step

    def spy_forward(self, vs, update=True, index=None):
        kinds.append(update)
        return real_forward(self, vs, update, index)

    def spy_after(self, step, total):
        before = [p.clone() for p in self.target_encoder.parameters()]
        real_after(self, step, total)
        calls.append((step, total))
        moved.append(any(not torch.equal(a, b) for a, b in zip(before, self.target_encoder.parameters())))

    monkeypatch.setattr(type(method), "forward", spy_forward)
    monkeypatch.setattr(type(method), "after_step", spy_after)
    ptr0 = int(method.queue1.ptr)
    images, labels = sample.images[:16], sample.labels[:16]
    pool = sample.images[16:200]
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=3"]).train
    stats = train_mod.train_joint(model, method, images, labels, lambda p: pool[p], len(pool), cfg, views, torch.Generator().manual_seed(0), torch.device("cpu"), progress=False)
    assert stats.steps == 6  # 3 epochs of one labelled and one unlabelled batch
    assert kinds == [True] * 6  # every batch updates
    assert int(method.queue1.ptr) == (ptr0 + 6 * 16) % 64  # 16 keys per batch
    assert calls == [(k, 6) for k in range(6)]
    assert all(moved[:-1])  # the last step's momentum is exactly 1: nothing moves


def test_evaluation_and_scoring_change_neither_queues_nor_momentum_encoder(sample):
    """Defect 5: the official evaluation ran the momentum update and pushed test
    images into the queue."""
    model, method, views, (mean, std) = tiny_joint(sample)
    cfg = resolve_config(None, [*TINY, "train.mode=joint", "train.epochs=1"])
    images, labels = sample.images[:48], sample.labels[:48]
    pool = sample.images[48:300]
    train_mod.train_joint(model, method, images, labels, lambda p: pool[p], len(pool), cfg.train, views, torch.Generator().manual_seed(0), torch.device("cpu"), progress=False)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    md = modes.ModeData(cfg, sample.images[:300], None, (sample.images[300:400], sample.labels[300:400]), 10, torch.device("cpu"), mean, std, False)
    trained = modes.NetworkTrained(md, model, None, method, seed_keys=(0,))
    trained.evaluate("test", sample.labels[300:400])
    trained.embed("pool", torch.arange(50))
    losses = trained.ssl_loss(torch.arange(50))
    assert losses.shape == (50,) and bool(torch.isfinite(losses).all())
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]


def test_selection_features_come_from_unaugmented_images(sample):
    """Defect 8: the official code computed selection features on randomly
    augmented images. embed() is deterministic and equals the eval-mode
    features of the normalised, un-augmented images."""
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=8)
    mean, std = channel_stats(sample.images[:500])
    cfg = resolve_config(None, TINY)
    md = modes.ModeData(cfg, sample.images[:200], None, (sample.images[:10], sample.labels[:10]), 10, torch.device("cpu"), mean, std, False)
    trained = modes.NetworkTrained(md, model, None)
    idx = torch.arange(20, 60)
    _, f1 = trained.embed("pool", idx)
    _, f2 = trained.embed("pool", idx)
    model.eval()
    with torch.no_grad():
        ref = model.features(TestView(mean, std)(sample.images[20:60]))
    assert torch.equal(f1, f2)
    assert torch.allclose(f1, ref, atol=1e-5)


def test_low_loss_filter_trains_on_the_lowest_ssl_loss_unlabelled_images(sample):
    """MoBYv2AL's distribution-shift remedy: score |L| / fraction unlabelled
    images and train on the |L| with the lowest SSL loss."""
    model, method, views, _ = tiny_joint(sample)
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=1"]).train
    images, labels = sample.images[:16], sample.labels[:16]
    pool = sample.images[16:400]
    calls = []

    def unlabelled(pos):
        calls.append(pos.clone())
        return pool[pos]

    train_mod.train_joint(
        model, method, images, labels, unlabelled, len(pool), cfg, views, torch.Generator().manual_seed(0), torch.device("cpu"),
        low_loss_fraction=0.5, progress=False,
    )
    scored, used = calls[0], calls[1]
    assert scored.numel() == 32 and used.numel() == 16
    assert set(used.tolist()) <= set(scored.tolist())


def test_low_loss_filter_keeps_the_lowest_scores_not_the_highest(sample, monkeypatch):
    """With known scores (decreasing along the candidate order) the images kept
    are exactly the candidates with the lowest scores, the last half."""
    model, method, views, _ = tiny_joint(sample)
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=1"]).train
    pool = sample.images[16:400]
    calls = []

    def unlabelled(pos):
        calls.append(pos.clone())
        return pool[pos]

    def scores(method, images, *args):
        return torch.arange(int(images.shape[0]), 0, -1, dtype=torch.float32)

    monkeypatch.setattr(train_mod, "ssl_sample_losses", scores)
    train_mod.train_joint(
        model, method, sample.images[:16], sample.labels[:16], unlabelled, len(pool), cfg, views,
        torch.Generator().manual_seed(0), torch.device("cpu"), low_loss_fraction=0.5, progress=False,
    )
    scored, used = calls[0], calls[1]
    assert set(used.tolist()) == set(scored[16:].tolist())


# -- pretraining: cache, resume, frozen ------------------------------------------

PRE = [*TINY, "ssl.method=byol", "ssl.epochs=2", "ssl.batch_size=64", "ssl.options.hidden_dim=32", "ssl.options.proj_dim=16"]


def test_pretraining_resumes_bit_identically_and_is_cached(tmp_path, sample):
    from ssal.pretrain import pretrain

    images = sample.images[:256]
    mean, std = channel_stats(images)
    cfg = resolve_config(None, PRE)
    kw = dict(model="smallcnn", model_kwargs={"width": 8}, mean=mean, std=std, device=torch.device("cpu"), progress=False, log=lambda s: None)
    full, meta, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "a"), **kw)
    assert meta["steps"] == 2 * 4 and meta["kind"] == "ssl-backbone"
    with pytest.raises(KeyboardInterrupt):
        pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), stop_after_steps=5, **kw)
    (folder,) = (tmp_path / "b" / "ssl").iterdir()
    assert (folder / "checkpoint.pt").exists() and not (folder / "backbone.pt").exists()
    resumed, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), **kw)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not (folder / "checkpoint.pt").exists()
    logs = []
    again, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), **{**kw, "log": logs.append})
    assert "loaded" in logs[0] and all(torch.equal(full[k], again[k]) for k in full)


def test_pretraining_key_follows_images_model_and_ssl_settings_only(sample):
    """A new cache for other images, another backbone or any SSL setting that
    changes the result; the same cache whatever the AL run around it, and
    wherever and however often it saves."""
    from ssal.pretrain import images_fingerprint, pretrain_key

    fp = images_fingerprint(sample.images[:100])

    def key(over=(), fp=fp, model="smallcnn", kw={"width": 8}, ch=1, cuda=True):  # noqa: B006
        return pretrain_key(fp, model, kw, ch, resolve_config(None, [*PRE, *over]).ssl, cuda=cuda)

    base = key()
    assert key(fp=images_fingerprint(sample.images[1:101])) != base
    assert key(model="resnet18", kw={}) != base and key(kw={"width": 16}) != base and key(ch=3) != base
    for over in (["ssl.lr=0.5"], ["ssl.epochs=3"], ["ssl.seed=1"], ["ssl.batch_size=32"], ["ssl.options.proj_dim=32"],
                 ["ssl.method=simclr"], ["ssl.weight_decay=1e-4"], ["ssl.image_size=16"]):
        assert key(over) != base, over
    for over in (["ssl.checkpoint_minutes=1", "ssl.cache_dir=/elsewhere"], ["seed=5"], ["strategy=random", "cycles=9", "budget=7", "initial=50"],
                 ["train.lr=0.5", "train.epochs=3"], ["ssl.low_loss_fraction=0.5", "ssl.views=strong_strong", "ssl.lambda_c=2"]):
        assert key(over) == base, over
    # ssl.amp acts on CUDA only: off CUDA it shares the default's cache
    assert key(["ssl.amp=false"]) != base
    assert key(["ssl.amp=false"], cuda=False) == key(["ssl.amp=true"], cuda=False) == base


def test_byol_pretrains_on_its_asymmetric_view_pair_and_the_key_says_so(sample):
    """METHODS.md sec. 3: BYOL's views differ - blur p 1.0 / 0.1, solarize p
    0 / 0.2 - and crop down to 8% of the image (0.2 for the other methods). On by
    default for byol only; the symmetric pair and the other methods' crop scale
    keep the cache keys written before the options existed."""
    from omegaconf import OmegaConf

    from ssal.pretrain import images_fingerprint, pretrain_key, pretrain_views

    def pair(*over):
        v = pretrain_views(resolve_config(None, list(over)).ssl, (0.5,), (0.25,), 2)
        return [(x.blur_p, x.solarize_p, x.scale) for x in v]

    assert pair("ssl.method=byol") == [(1.0, 0.0, (0.08, 1.0)), (0.1, 0.2, (0.08, 1.0))]  # crops down to 8% (METHODS.md sec. 3)
    assert pair("ssl.method=byol", "ssl.asymmetric_views=false", "ssl.crop_scale=0.2") == [(0.2, 0.2, (0.2, 1.0))] * 2
    assert pair("ssl.method=vicreg") == [(0.2, 0.2, (0.2, 1.0))] * 2
    assert pair("ssl.method=vicreg", "ssl.asymmetric_views=true")[0][:2] == (1.0, 0.0)
    # the views differ in what they do to the same images
    x = sample.images[:64]
    v1, v2 = pretrain_views(resolve_config(None, ["ssl.method=byol"]).ssl, (0.5,), (0.25,), 2)
    a, b = v1(x, torch.Generator().manual_seed(0)), v2(x, torch.Generator().manual_seed(0))
    assert not torch.equal(a, b)

    fp = images_fingerprint(sample.images[:100])
    key = lambda s: pretrain_key(fp, "smallcnn", {"width": 8}, 1, s)  # noqa: E731
    byol = resolve_config(None, ["ssl.method=byol"]).ssl
    sym = resolve_config(None, ["ssl.method=byol", "ssl.asymmetric_views=false"]).ssl
    assert key(sym) != key(byol)
    assert key(byol) == key(resolve_config(None, ["ssl.method=byol", "ssl.asymmetric_views=true"]).ssl)
    vic = resolve_config(None, ["ssl.method=vicreg"]).ssl
    assert key(vic) == key({k: v for k, v in OmegaConf.to_container(vic).items() if k != "asymmetric_views"})
    # the crop scale: null resolves to the method's value, and shares the cache of that value written out
    assert key(vic) == key(resolve_config(None, ["ssl.method=vicreg", "ssl.crop_scale=0.2"]).ssl)
    assert key(vic) == key(OmegaConf.to_container(vic) | {"crop_scale": 0.2})  # caches written before the null default
    assert key(byol) == key(resolve_config(None, ["ssl.method=byol", "ssl.crop_scale=0.08"]).ssl)
    assert key(byol) != key(resolve_config(None, ["ssl.method=byol", "ssl.crop_scale=0.2"]).ssl)
    assert pair("ssl.method=vicreg", "ssl.crop_scale=0.5")[0][2] == (0.5, 1.0)


def test_pretrain_and_frozen_modes_share_one_cached_pretraining(tmp_path):
    cache = f"cache_dir={tmp_path / 'cache'}"
    logs = []
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / 'p'}", *PRE, cache, "train.mode=pretrain", "class_caps={0: 60, 1: 60, 2: 60, 3: 60, 4: 60, 5: 60, 6: 60, 7: 60, 8: 60, 9: 60}"])
    rp = run_experiment(cfg, progress=False, log=logs.append)
    assert any("pretraining byol" in s for s in logs)
    logs.clear()
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / 'f'}", *PRE, cache, "train.mode=frozen", "strategy=typiclust", "initial_strategy=typiclust", "train.epochs=30", "class_caps={0: 60, 1: 60, 2: 60, 3: 60, 4: 60, 5: 60, 6: 60, 7: 60, 8: 60, 9: 60}"])
    rf = run_experiment(cfg, progress=False, log=logs.append)
    assert any("loaded byol pretraining" in s for s in logs)  # reused, not retrained
    assert [r["n_labelled"] for r in rp] == [r["n_labelled"] for r in rf] == [40, 70]
    state = json.loads((tmp_path / "f" / "state.json").read_text())
    assert state["ssl_backbone"] and (tmp_path / "f" / "model.pt").exists()
    assert rf[0]["train_steps"] == 30 * 2  # the head alone: 30 epochs of ceil(40 / 32) steps


def test_prototype_selection_reuses_the_prototypes_of_the_pcl_pretraining(tmp_path):
    """A PCL pretraining saves its final prototypes beside the backbone; the
    prototypes strategy (cold start and later cycles) then serves PCL's own
    prototypes, at the granularity whose K is closest to |L| + budget."""
    from ssal.loop import pool_prototypes, prepare_splits
    from ssal.pretrain import PROTOTYPES_FILE, load_prototypes

    caps = "class_caps={0: 60, 1: 60, 2: 60, 3: 60, 4: 60, 5: 60, 6: 60, 7: 60, 8: 60, 9: 60}"
    pcl = ["ssl.method=pcl", "ssl.epochs=2", "ssl.batch_size=64", "ssl.options.num_clusters=[10,40,70]", "ssl.options.warmup_epochs=1",
           "ssl.options.queue_size=64", "ssl.options.hidden_dim=32", "ssl.options.proj_dim=16"]
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / 'f'}", *TINY, *pcl, f"cache_dir={tmp_path / 'cache'}",
                                caps, "train.mode=frozen", "strategy=prototypes", "strategy_options.source=pcl", "initial_strategy=prototypes"])
    records = run_experiment(cfg, progress=False, log=lambda s: None)
    assert [r["n_labelled"] for r in records] == [40, 70]
    state = json.loads((tmp_path / "f" / "state.json").read_text())
    folder = Path(state["ssl_backbone"])
    assert (folder / PROTOTYPES_FILE).is_file() and (folder / "backbone.pt").is_file()
    splits = prepare_splits(cfg, progress=False)
    levels = load_prototypes(folder)
    assert [lv["centroids"].shape[0] for lv in levels] == [10, 40, 70]
    assert all(lv["assignments"].shape == (len(splits.ssl_images),) for lv in levels)
    # a supervised run starting from that backbone serves them too, unless they belong to other images
    init = resolve_config(None, [*TINY, f"train.init_backbone={folder}", caps])
    args = (splits.pool.images, None, (splits.test.images, splits.test.labels))
    md = modes.setup_mode(init, *args, splits.ssl_images, 10, torch.device("cpu"), False, lambda s: None)
    assert all(torch.equal(a["assignments"], b["assignments"]) for a, b in zip(md.ssl_prototypes, levels))
    assert modes.setup_mode(init, *args, splits.ssl_images[1:], 10, torch.device("cpu"), False, lambda s: None).ssl_prototypes is None
    lookup = pool_prototypes(levels, splits.pool_ssl_index)
    order = state["pool"]["order"]
    pool = torch.arange(len(splits.pool))
    _, assign, sim = lookup(pool)[1]  # cold start: |L| + budget = 0 + 40 -> K = 40
    first = torch.tensor(order[:40])
    assert torch.equal(first, select_by_assignment(assign, sim, torch.zeros(len(pool), dtype=torch.bool), 40, 40))
    held = assign.unique().numel()  # prototypes holding pool images (2 epochs of a tiny network: many stay empty)
    assert held >= 2 and assign[first[:held]].unique().numel() == held  # one representative per prototype first
    for p in first[:held].tolist():  # each the pool image most similar to its prototype
        members = (assign == assign[p]).nonzero().view(-1)
        assert float(sim[p]) == float(sim[members].max())
    _, assign, sim = lookup(pool)[2]  # cycle 0 picks: |L| + budget = 70 -> K = 70
    labelled = torch.zeros(len(pool), dtype=torch.bool)
    labelled[first] = True
    want = select_by_assignment(assign, sim, labelled, 30, 70)
    assert order[40:70] == want.tolist()


@pytest.mark.parametrize("mode", ["supervised", "joint"])
def test_init_backbone_starts_every_cycle_from_the_saved_ssl_encoder(tmp_path, sample, monkeypatch, mode):
    """train.init_backbone: each cycle's network (and, in joint mode, the MoBY
    momentum encoder copied from it) starts from the saved SSL weights."""
    from ssal.pretrain import pretrain

    images = sample.images[:256]
    mean, std = channel_stats(images)
    ssl = resolve_config(None, PRE).ssl
    saved, meta, folder = pretrain(images, "smallcnn", {"width": 8}, ssl, mean, std, torch.device("cpu"), str(tmp_path / "c"), progress=False, log=lambda s: None)
    seen = []

    def spy(real):
        def wrapped(model, *args, **kwargs):
            start = {k: v.clone() for k, v in model.backbone.state_dict().items()}
            momentum = {k: v.clone() for k, v in args[0].target_encoder.state_dict().items()} if mode == "joint" else None
            seen.append((start, momentum))
            return real(model, *args, **kwargs)

        return wrapped

    name = "train_joint" if mode == "joint" else "train_supervised"
    monkeypatch.setattr(modes, name, spy(getattr(modes, name)))
    extra = JOINT if mode == "joint" else TINY
    logs = []
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / 'r'}", *extra, f"train.init_backbone={folder}"])
    records = run_experiment(cfg, progress=False, log=logs.append)
    assert [r["n_labelled"] for r in records] == [40, 70] and len(seen) == 2
    assert any("backbone from" in s and "byol" in s for s in logs)
    for start, momentum in seen:  # both cycles start from the SSL weights, not from the previous cycle
        assert all(torch.equal(start[k], saved[k]) for k in saved)
        if momentum is not None:
            assert all(torch.equal(momentum[k], saved[k]) for k in saved)
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["ssl_backbone"] == str(folder.resolve())


def test_init_backbone_errors_name_the_field(tmp_path, sample, capsys):
    from ssal.cli import main
    from ssal.pretrain import pretrain

    images = sample.images[:256]
    mean, std = channel_stats(images)
    _, _, folder = pretrain(images, "smallcnn", {"width": 8}, resolve_config(None, PRE).ssl, mean, std, torch.device("cpu"), str(tmp_path / "c"), progress=False, log=lambda s: None)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad, msg in [
        ([f"train.init_backbone={tmp_path / 'nowhere'}"], "train.init_backbone: no SSL backbone at"),
        ([f"train.init_backbone={tmp_path / 'junk.pt'}"], "is not an SSL backbone written by `ssal pretrain`"),
        ([f"train.init_backbone={folder}", "model_width=16"], "but this run builds smallcnn {'width': 16}"),
        ([f"train.init_backbone={folder}", "train.mode=frozen"], "train.init_backbone"),
    ]:
        out = tmp_path / "x"
        assert main(["run", "-q", f"out={out}", *TINY, *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_cold_start_initial_set_is_chosen_by_the_strategy(tmp_path):
    a = run(tmp_path, "a", [*TINY, "initial_strategy=typiclust", "cycles=1"])
    b = run(tmp_path, "b", [*TINY, "cycles=1"])
    sa = json.loads((tmp_path / "a" / "state.json").read_text())["pool"]["order"]
    sb = json.loads((tmp_path / "b" / "state.json").read_text())["pool"]["order"]
    assert len(sa) == len(set(sa)) == 40 and sa != sb
    assert a[0]["n_labelled"] == b[0]["n_labelled"] == 40


def test_bad_ssl_settings_are_one_line_errors_that_write_nothing(tmp_path):
    from ssal.cli import main

    for bad, msg in [
        (["train.mode=joint", "ssl.method=nope"], "ssl.method=nope: choose one of"),
        (["train.mode=joint", "ssl.options.queue=5"], "has no option 'queue'"),
        (["train.mode=sometimes"], "train.mode"),
        (["ssl.low_loss_fraction=0"], "ssl.low_loss_fraction"),
    ]:
        out = tmp_path / "x"
        assert main(["run", "-q", f"out={out}", *bad]) == 2
        assert not out.exists()


def test_pcl_pretraining_resumes_mid_epoch_bit_identically(tmp_path, sample):
    """PCL's E-step state (prototypes, concentrations, negative draws) travels
    in the checkpoint, so a resume in the middle of an epoch changes nothing."""
    from ssal.pretrain import pretrain

    images = sample.images[:192]
    mean, std = channel_stats(images)
    opts = ["ssl.method=pcl", "ssl.epochs=2", "ssl.batch_size=32", "ssl.options.num_clusters=[3,6]", "ssl.options.warmup_epochs=0",
            "ssl.options.queue_size=64", "ssl.options.hidden_dim=32", "ssl.options.proj_dim=16"]
    cfg = resolve_config(None, [*TINY, *opts])
    kw = dict(model="smallcnn", model_kwargs={"width": 8}, mean=mean, std=std, device=torch.device("cpu"), progress=False, log=lambda s: None)
    full, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "a"), **kw)
    with pytest.raises(KeyboardInterrupt):
        pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), stop_after_steps=9, **kw)  # epoch 1, batch 3 of 6
    resumed, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), **kw)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_fixed_steps_per_cycle_in_every_trainer(sample):
    """train.steps fixes the optimizer steps per cycle (equal compute whatever |L|)."""
    cfg = resolve_config(None, [*TINY, "train.steps=7", "train.batch_size=16"]).train
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    model, method, views, (mean, std) = tiny_joint(sample)
    images, labels, pool = sample.images[:40], sample.labels[:40], sample.images[40:300]
    cpu = torch.device("cpu")
    s = train_mod.train_supervised(model, images, labels, cfg, WeakView(mean, std), g(), cpu, progress=False)
    j = train_mod.train_joint(model, method, images, labels, lambda p: pool[p], len(pool), cfg, views, g(), cpu, progress=False)
    h = train_mod.train_head(torch.nn.Linear(4, 10), torch.randn(40, 4), labels, cfg, g(), cpu)
    assert s.steps == j.steps == h.steps == 7
    assert (s.epochs, j.epochs, h.epochs) == (3, 2, 3)  # ceil(7 / 3), ceil(7 / 6), ceil(7 / 3)


def test_joint_pcl_runs_its_e_step_on_each_epochs_images(sample):
    """PCL in joint mode: before every epoch the E-step clusters that epoch's
    images (the labelled ones, then the unlabelled draw) un-augmented, and every
    batch passes its positions in that order as ``index``, so the prototype
    term (after the warm-up epoch) uses the right image's cluster."""
    from ssal.ssl.pcl import PCL

    cfg = resolve_config(None, [*TINY, "train.epochs=2", "train.batch_size=16"]).train
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=8)
    mean, std = channel_stats(sample.images[:500])
    images, labels, pool = sample.images[:40], sample.labels[:40], sample.images[40:300]
    prepare = TestView(mean, std)
    drawn: list[torch.Tensor] = []  # every unlabelled fetch, in order
    seen: dict[str, list] = {k: [] for k in ("epoch_images", "estep_positions", "starts", "marks", "index", "proto")}

    class Spy(PCL):
        def epoch_start(self, epoch, batches):
            seen["starts"].append(len(drawn))
            seen["epoch_images"].append(torch.cat(list(batches())))
            seen["estep_positions"].append(torch.cat(drawn[seen["starts"][-1] :]))
            super().epoch_start(epoch, batches)
            seen["index"].append([])
            seen["marks"].append(len(drawn))  # the epoch's batch fetches start here

        def forward(self, views, update=True, index=None):
            seen["index"][-1].append(index.clone())
            seen["proto"].append(self.has_prototypes)
            return super().forward(views, update, index)

    method = Spy(model.backbone, model.feat_dim, hidden_dim=16, proj_dim=8, queue_size=64, warmup_epochs=1, num_clusters=[3])

    def unlabelled(pos):
        drawn.append(pos.clone())
        return pool[pos]

    views = (WeakView(mean, std), StrongView(mean, std))
    plain = lambda **kw: PCL(model.backbone, model.feat_dim, hidden_dim=16, proj_dim=8, queue_size=64, warmup_epochs=0, **kw)  # noqa: E731
    with pytest.raises(SsalError, match="cannot cluster 80 images into 100 clusters"):  # before any step, not after the warm-up
        train_mod.train_joint(model, plain(num_clusters=[100]), images, labels, lambda p: pool[p], len(pool), cfg, views, torch.Generator().manual_seed(0), torch.device("cpu"), prepare=prepare, progress=False)
    with pytest.raises(ValueError, match="pass prepare="):
        train_mod.train_joint(model, plain(num_clusters=[3]), images, labels, lambda p: pool[p], len(pool), cfg, views, torch.Generator().manual_seed(0), torch.device("cpu"), progress=False)
    stats = train_mod.train_joint(
        model, method, images, labels, unlabelled, len(pool), cfg, views,
        torch.Generator().manual_seed(0), torch.device("cpu"), prepare=prepare, progress=False,
    )
    assert stats.epochs == 2 and len(seen["epoch_images"]) == 2
    # epoch 0 is warm-up (InfoNCE only); epoch 1 has prototypes of the epoch's 80 images
    assert seen["proto"] == [False] * 6 + [True] * 6
    assert [int(a.numel()) for a in method.assignments] == [80]
    for e in range(2):
        idx = torch.sort(torch.cat(seen["index"][e])).values
        assert torch.equal(idx, torch.arange(80)), "each epoch image is trained once, at its position"
        # the E-step read un-augmented images: the labelled ones, then the epoch's unlabelled draw ...
        upos = seen["estep_positions"][e]
        assert upos.numel() == 40 and torch.equal(seen["epoch_images"][e][:40], prepare(images))
        assert torch.equal(seen["epoch_images"][e][40:], prepare(pool[upos]))
        # ... which the epoch's unlabelled batches then train on, in that order
        end = seen["starts"][e + 1] if e == 0 else len(drawn)
        assert torch.equal(torch.cat(drawn[seen["marks"][e] : end]), upos)
    assert not torch.equal(seen["estep_positions"][0], seen["estep_positions"][1])


@pytest.mark.parametrize("views_mode", ["weak_strong", "strong_strong"])
def test_joint_classifier_reads_the_online_encoders_weak_view(sample, views_mode):
    """MoBYv2AL: the classifier head reads the online encoder's features of the
    weak view - the SSL branch's first view (weak_strong) or a weak view of its
    own (strong_strong) - never a strong view."""
    model, method, _, (mean, std) = tiny_joint(sample)
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=1", "train.channels_last=false"]).train
    made: dict[str, list] = {"weak": [], "strong": []}

    def recorder(view, kind):
        def call(x, g):
            y = view(x, g)
            made[kind].append(y)
            return y

        return call

    weak, strong = recorder(WeakView(mean, std), "weak"), recorder(StrongView(mean, std), "strong")
    views = (weak, strong) if views_mode == "weak_strong" else (recorder(StrongView(mean, std), "strong"), strong)
    encoded, head_in = [], []
    model.backbone.register_forward_hook(lambda m, i, o: encoded.append((i[0], o)))
    model.head.register_forward_pre_hook(lambda m, i: head_in.append(i[0]))
    train_mod.train_joint(
        model, method, sample.images[:32], sample.labels[:32], lambda p: sample.images[100:300][p], 200, cfg, views,
        torch.Generator().manual_seed(0), torch.device("cpu"), progress=False,
        classifier_view=weak if views_mode == "strong_strong" else None,
    )
    assert len(head_in) == 2  # two labelled batches
    for h in head_in:
        source = [x for x, out in encoded if out is h]
        assert len(source) == 1, "the head reads an online encoder output directly"
        assert any(source[0] is w for w in made["weak"])
        assert not any(source[0] is t for t in made["strong"])


def test_strong_strong_views_still_train_the_classifier_on_a_weak_view(tmp_path):
    records = run(tmp_path, "ss", [*JOINT, "ssl.views=strong_strong", "cycles=1"])
    assert records[0]["train_steps"] == 4 and 0 <= records[0]["test_acc"] <= 1


def test_joint_mode_with_every_ssl_method(tmp_path):
    """Every registered method plugs into joint training (rotation: one view,
    the classifier on its own weak view; PCL: its E-step runs every epoch)."""
    from ssal.ssl import SSL_METHODS

    for name in sorted(SSL_METHODS):
        opts = ["ssl.options.hidden_dim=16"]
        if name in ("moby", "mocov2", "pcl"):
            opts.append("ssl.options.queue_size=64")
        if name == "pcl":
            opts += ["ssl.options.warmup_epochs=0", "ssl.options.num_clusters=[3]"]
        if name == "rotation":
            opts = []
        records = run(tmp_path, name, [*TINY, "train.mode=joint", f"ssl.method={name}", *opts, "cycles=1", "initial=20"])
        assert records[0]["mode"] == "joint" and records[0]["train_steps"] == 2, name


# -- ssl.joint_image_size: the SSL-only views at a reduced size ------------------


def test_weak_view_out_size_is_the_full_size_view_resized():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    full = WeakView(mean, std)(x, torch.Generator().manual_seed(3))
    small = WeakView(mean, std, out_size=16)(x, torch.Generator().manual_seed(3))
    assert small.shape == (6, 3, 16, 16)
    ref = torch.nn.functional.interpolate(full, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(small, ref, atol=1e-6)
    same = WeakView(mean, std, out_size=32)(x, torch.Generator().manual_seed(3))
    assert torch.equal(same, full)  # the native size is no resize


def test_recalibrate_batchnorm_is_the_plain_average_over_the_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
    net.eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 1, 10, 10) * s + s for s in (1.0, 2.0, 3.0)]
    assert train_mod.recalibrate_batchnorm(net, iter(batches)) == 3
    with torch.no_grad():
        h = [net[0](b) for b in batches]
    bn = net[1]
    assert torch.allclose(bn.running_mean, torch.stack([t.mean((0, 2, 3)) for t in h]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([t.var((0, 2, 3), unbiased=True) for t in h]).mean(0), atol=1e-4)
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3 and net[3].momentum == 0.1
    assert not net.training  # the mode is restored
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert train_mod.recalibrate_batchnorm(net, iter([])) == 0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # no batch: nothing changes


def record_view_sizes(monkeypatch, method) -> list[tuple[int, ...]]:
    """The side of each view the SSL method's forward gets, one tuple per call."""
    sizes: list[tuple[int, ...]] = []
    real_forward = type(method).forward

    def spy(self, vs, update=True, index=None):
        sizes.append(tuple(int(v.shape[-1]) for v in vs))
        return real_forward(self, vs, update, index)

    monkeypatch.setattr(type(method), "forward", spy)
    return sizes


def test_joint_image_size_shrinks_only_the_views_the_classifier_does_not_read(sample, monkeypatch):
    """Labelled batch: view 1 (the classifier's) native, view 2 small; unlabelled
    batch: both small. The classifier's head still reads a native-size view, and
    BatchNorm is re-estimated on exactly the labelled images' batches."""
    model, method, views, (mean, std) = tiny_joint(sample)
    small = modes.joint_views(resolve_config(None, JOINT), mean, std, 14)
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=2", "train.channels_last=false"]).train
    sizes = record_view_sizes(monkeypatch, method)
    head_in = []
    model.head.register_forward_pre_hook(lambda m, i: head_in.append(i[0].shape))
    stats = train_mod.train_joint(
        model, method, sample.images[:32], sample.labels[:32], lambda p: sample.images[100:300][p], 200, cfg, views,
        torch.Generator().manual_seed(0), torch.device("cpu"), ssl_only_views=small, progress=False,
    )
    assert stats.steps == 8
    assert sizes == [(28, 14), (14, 14)] * 4  # labelled, unlabelled, alternating
    assert len(head_in) == 4
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(int(m.num_batches_tracked) == 2 for m in norms)  # 32 labelled images / 16 per batch, after reset


def test_joint_image_size_end_to_end_and_its_validation(tmp_path):
    records = run(tmp_path, "small", [*JOINT, "ssl.joint_image_size=14", "ssl.options.symmetric=false", "cycles=1"])
    assert records[0]["train_steps"] == 4 and 0 <= records[0]["test_acc"] <= 1
    with pytest.raises(SsalError, match="ssl.joint_image_size"):
        resolve_config(None, ["train.mode=joint", "ssl.joint_image_size=4"])
    with pytest.raises(SsalError, match="only joint training reads it"):
        resolve_config(None, ["train.mode=supervised", "ssl.joint_image_size=16"])


def test_ssl_loss_scores_through_the_views_unlabelled_batches_train_on(sample, monkeypatch):
    """ssl_loss_high and the low-loss filter score an image by the loss it gets as
    an unlabelled image: with ssl.joint_image_size, through the small views."""
    model, method, views, (mean, std) = tiny_joint(sample)
    sizes = record_view_sizes(monkeypatch, method)
    for size, expected in ((0, (28, 28)), (14, (14, 14))):
        cfg = resolve_config(None, [*JOINT, f"ssl.joint_image_size={size}"])
        md = modes.ModeData(cfg, sample.images[:300], None, (sample.images[300:400], sample.labels[300:400]), 10, torch.device("cpu"), mean, std, False)
        sizes.clear()
        losses = modes.NetworkTrained(md, model, None, method, seed_keys=(0,)).ssl_loss(torch.arange(20))
        assert losses.shape == (20,) and sizes and set(sizes) == {expected}
    sizes.clear()
    cfg = resolve_config(None, [*TINY, "train.batch_size=16", "train.epochs=1", "train.channels_last=false"]).train
    small = modes.joint_views(resolve_config(None, JOINT), mean, std, 14)
    train_mod.train_joint(
        model, method, sample.images[:16], sample.labels[:16], lambda p: sample.images[100:300][p], 200, cfg, views,
        torch.Generator().manual_seed(0), torch.device("cpu"), low_loss_fraction=0.5, ssl_only_views=small, progress=False,
    )
    assert sizes[0] == (14, 14) and sizes[-2:] == [(28, 14), (14, 14)]  # scoring, then the two training batches


def test_test_accuracy_is_on_unaugmented_images(monkeypatch):
    train, test = load_dataset("sample")
    cfg = resolve_config(None, ["model_width=8"])
    model = build_model("smallcnn", 10, 1, width=8)
    mean, std = channel_stats(train.images[:500])
    md = modes.ModeData(cfg, train.images[:64], None, (test.images[:200], test.labels[:200]), 10, torch.device("cpu"), mean, std, False)
    seen = []
    monkeypatch.setattr(modes, "evaluate", lambda model, images, labels, nc, prepare, **k: seen.append((images, prepare)) or {})
    modes.NetworkTrained(md, model, None).evaluate("test", test.labels[:200])
    ((images, prepare),) = seen
    assert torch.equal(images, test.images[:200])
    assert torch.equal(prepare(images), TestView(mean, std)(images))
