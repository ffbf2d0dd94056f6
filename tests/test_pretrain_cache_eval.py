"""The SSL pretraining cache (key, sharing, checkpoints, atomic writes, resume),
the encoder the pretrain and frozen modes read, the low-loss filter's wiring, and
`ssal eval-features`' kNN and linear probe. Each test guards an invariant that a
hand-made mutant of the code broke without any other test failing. The helpers
are those of test_modes.py and test_eval_features.py."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch

import ssal.evaluation as evaluation
import ssal.modes as modes
import ssal.pretrain as pretrain_mod
import ssal.train as train_mod
from ssal.augment import channel_stats
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.evaluation import extract_features, knn_accuracy, linear_probe_accuracy
from ssal.pretrain import load_backbone, pretrain

from test_modes import JOINT, PRE, run, sample  # noqa: F401  (sample: a fixture)
from test_eval_features import call
from test_loop import spy_label_reads

CPU = torch.device("cpu")


def pretrain_args(sample, **over):
    """256 sample images and the keyword arguments of ``pretrain`` for them (tiny smallcnn, CPU, quiet)."""
    images = sample.images[:256]
    mean, std = channel_stats(images)
    return images, {"model": "smallcnn", "model_kwargs": {"width": 8}, "mean": mean, "std": std, "device": CPU, "progress": False, "log": lambda s: None, **over}


# -- the pretraining cache, the pretrain and frozen modes, the low-loss filter ----------
def test_run_pretraining_is_shared_across_al_seeds_and_strategies(tmp_path, sample):
    images = sample.images[:256]
    logs = []
    base = [*PRE, f"cache_dir={tmp_path}", "train.mode=pretrain"]
    _, _, f0 = modes.run_pretraining(resolve_config(None, base), images, CPU, False, logs.append)
    for extra in (["seed=3"], ["strategy=random", "cycles=9", "budget=7", "initial=50"]):
        _, _, f = modes.run_pretraining(resolve_config(None, [*base, *extra]), images, CPU, False, logs.append)
        assert f == f0, extra
    assert sum("loaded" in s for s in logs) == 2
    _, _, f1 = modes.run_pretraining(resolve_config(None, [*base, "ssl.seed=1"]), images, CPU, False, logs.append)
    assert f1 != f0


def test_ssl_images_are_the_whole_train_split_whatever_the_seed():
    """SSL pretraining reads every train image (pool + validation) in dataset
    order: no label and no run seed decides which images or in what order."""
    from ssal.loop import prepare_splits

    train, _ = load_dataset("sample")
    a = prepare_splits(resolve_config(None, ["seed=0"]), progress=False)
    b = prepare_splits(resolve_config(None, ["seed=1"]), progress=False)
    assert torch.equal(a.ssl_images, train.images) and torch.equal(b.ssl_images, train.images)
    assert torch.equal(a.ssl_images[a.pool_ssl_index], a.pool.images)


def test_class_caps_keep_the_same_images_whatever_the_run_seed():
    """The imbalanced protocol: which images survive the caps follows
    ``caps_seed``, not the run seed, so every seed pretrains on the same
    images and shares one SSL cache; another ``caps_seed`` keeps others."""
    from ssal.loop import prepare_splits

    caps = ["class_caps={0: 50, 3: 20}"]
    a, b = (prepare_splits(resolve_config(None, [*caps, f"seed={s}"]), progress=False) for s in (0, 1))
    assert len(a.ssl_images) == 6000 - 550 - 580
    assert torch.equal(a.ssl_images, b.ssl_images)
    assert not torch.equal(a.pool_source_index.sort().values, b.pool_source_index.sort().values)  # the validation split still follows the seed
    c = prepare_splits(resolve_config(None, [*caps, "caps_seed=1"]), progress=False)
    assert len(c.ssl_images) == len(a.ssl_images) and not torch.equal(c.ssl_images, a.ssl_images)


def test_pretraining_checkpoints_every_checkpoint_minutes(tmp_path, sample, monkeypatch):
    images, kw = pretrain_args(sample)
    saves = []
    real = pretrain_mod.atomic_torch_save
    monkeypatch.setattr(pretrain_mod, "atomic_torch_save", lambda obj, path: (saves.append(Path(path).name), real(obj, path))[1])
    pretrain(images, ssl_cfg=resolve_config(None, [*PRE, "ssl.checkpoint_minutes=0"]).ssl, cache_dir=str(tmp_path / "a"), **kw)
    assert saves.count("checkpoint.pt") >= 8  # 2 epochs x 4 steps: a checkpoint after every step
    saves.clear()
    pretrain(images, ssl_cfg=resolve_config(None, [*PRE, "ssl.checkpoint_minutes=1000"]).ssl, cache_dir=str(tmp_path / "b"), **kw)
    assert saves.count("checkpoint.pt") == 2  # at each epoch's end only


def test_a_killed_pretraining_resumes_from_its_checkpoint_not_from_scratch(tmp_path, sample, monkeypatch):
    images, kw = pretrain_args(sample)
    cfg = resolve_config(None, PRE)
    with pytest.raises(KeyboardInterrupt):
        pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path), stop_after_steps=5, **kw)
    steps, logs = [], []
    real = train_mod._Stepper.step
    monkeypatch.setattr(train_mod._Stepper, "step", lambda self, step, loss: (steps.append(step), real(self, step, loss))[1])
    _, meta, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path), **{**kw, "log": logs.append})
    assert steps == [5, 6, 7] and meta["steps"] == 8  # only the 3 steps left of 2 epochs x 4
    assert any("resuming" in s for s in logs)


@pytest.mark.parametrize("target", ["backbone.pt", "checkpoint.pt"])
def test_a_crash_while_writing_leaves_no_partial_file_and_resumes_identically(tmp_path, sample, monkeypatch, target):
    images, kw = pretrain_args(sample)
    cfg = resolve_config(None, PRE)
    full, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "a"), **kw)
    real, seen = torch.save, []

    def failing(obj, f, *a, **k):  # the disk fills up half-way through the target's 2nd write (1st for backbone.pt)
        if target in Path(f).name:
            seen.append(f)
            if target == "backbone.pt" or len(seen) == 2:
                Path(f).write_bytes(b"partial")
                raise OSError("No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(OSError):
        pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), **kw)
    monkeypatch.undo()
    (folder,) = (tmp_path / "b" / "ssl").iterdir()
    assert not (folder / "backbone.pt").exists()
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)  # the previous, whole checkpoint
    resumed, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path / "b"), **kw)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_backbone_pt_is_the_trained_online_encoder(tmp_path, sample):
    images, kw = pretrain_args(sample)
    cfg = resolve_config(None, PRE)
    with pytest.raises(KeyboardInterrupt):
        pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path), stop_after_steps=8, **kw)  # the last step of 2 x 4
    (folder,) = (tmp_path / "ssl").iterdir()
    ck = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)["method"]
    trained = {k[len("encoder."):]: v for k, v in ck.items() if k.startswith("encoder.")}
    saved, _, _ = pretrain(images, ssl_cfg=cfg.ssl, cache_dir=str(tmp_path), **kw)
    assert trained.keys() == saved.keys() and all(torch.equal(trained[k], saved[k]) for k in saved)


def test_pretrain_mode_fine_tunes_from_the_cached_encoder_every_cycle(tmp_path, monkeypatch):
    caps = "class_caps={0: 60, 1: 60, 2: 60, 3: 60, 4: 60, 5: 60, 6: 60, 7: 60, 8: 60, 9: 60}"
    seen = []
    real = modes.train_supervised

    def spy(model, *a, **k):
        seen.append({n: v.clone() for n, v in model.backbone.state_dict().items()})
        return real(model, *a, **k)

    monkeypatch.setattr(modes, "train_supervised", spy)
    run(tmp_path, "p", [*PRE, f"cache_dir={tmp_path / 'cache'}", "train.mode=pretrain", caps])
    state = json.loads((tmp_path / "p" / "state.json").read_text())
    saved = torch.load(Path(state["ssl_backbone"]) / "backbone.pt", map_location="cpu")["backbone"]
    assert len(seen) == 2
    for start in seen:
        assert all(torch.equal(start[k], saved[k]) for k in saved)


def test_frozen_features_are_the_cached_encoders_on_unaugmented_images(tmp_path, sample):
    """setup_mode in frozen mode: the features of every split are the cached
    encoder's, in eval mode, of the images normalised as in the pretraining."""
    cfg = resolve_config(None, [*PRE, f"cache_dir={tmp_path}", "train.mode=frozen"])
    ssl_images, test = sample.images[:256], (sample.images[256:300], sample.labels[256:300])
    md = modes.setup_mode(cfg, sample.images[:200], None, test, ssl_images, 10, CPU, False, lambda s: None)
    encoder, meta = load_backbone(md.ssl_folder)
    assert md.mean == tuple(meta["mean"]) and md.std == tuple(meta["std"])
    for split, images in (("pool", sample.images[:200]), ("test", test[0])):
        ref = extract_features(encoder, images, meta["mean"], meta["std"])
        assert torch.allclose(md.frozen_features[split], ref, atol=1e-4), split


def test_frozen_heads_linear_and_mlp():
    lin = modes.make_head(resolve_config(None, ["train.mode=frozen"]), 32, 10)
    mlp = modes.make_head(resolve_config(None, ["train.mode=frozen", "train.head=mlp", "train.head_hidden=64"]), 32, 10)
    shape = lambda h: [tuple(m.weight.shape) for m in h.modules() if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert shape(lin) == [(10, 32)] and shape(mlp) == [(64, 32), (10, 64)]


def test_frozen_embed_is_per_image_and_changes_no_statistic():
    cfg = resolve_config(None, ["train.mode=frozen", "train.head=mlp", "train.head_hidden=16"])
    feats = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1
    md = modes.ModeData(cfg, torch.zeros(50, 1, 4, 4, dtype=torch.uint8), None, (torch.zeros(0, 1, 4, 4, dtype=torch.uint8), torch.zeros(0)), 10, CPU, (0.5,), (0.25,), False)
    md.frozen_features = {"pool": feats}
    head = modes.make_head(cfg, 8, 10)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    trained = modes.FrozenTrained(md, head, None)
    all_logits, _ = trained.embed("pool")
    some, _ = trained.embed("pool", torch.tensor([3, 7, 11]))
    assert torch.allclose(some, all_logits[[3, 7, 11]], atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())


def test_train_cycle_passes_the_low_loss_fraction_to_joint_training(sample, monkeypatch):
    cfg = resolve_config(None, [*JOINT, "ssl.low_loss_fraction=0.5"])
    mean, std = channel_stats(sample.images[:500])
    md = modes.ModeData(cfg, sample.images[:300], None, (sample.images[300:400], sample.labels[300:400]), 10, CPU, mean, std, False)
    seen = {}
    monkeypatch.setattr(modes, "train_joint", lambda *a, **k: seen.update(k))
    modes.train_cycle(md, 0, torch.arange(40), sample.labels[:40], torch.arange(40, 300), None)
    assert seen["low_loss_fraction"] == 0.5


def test_no_pool_label_reaches_joint_training_with_the_low_loss_filter(tmp_path, monkeypatch):
    """The low-loss filter scores unlabelled images by SSL loss alone: every label
    read is of a labelled index, the unlabelled side yields uint8 images only."""
    reads = spy_label_reads(monkeypatch)
    scored = []
    real_losses = train_mod.ssl_sample_losses

    def spy_losses(method, images, *a, **k):
        scored.append(images.dtype)
        return real_losses(method, images, *a, **k)

    monkeypatch.setattr(train_mod, "ssl_sample_losses", spy_losses)
    run(tmp_path, "spy", [*JOINT, "ssl.low_loss_fraction=0.5"])
    assert reads and all(reads)
    assert scored and set(scored) == {torch.uint8}


# -- ssal eval-features ------------------------------------------------------------------
def _reference_knn_predictions(xtr, ytr, xte, k=20, t=0.07, weighted=True):
    """Independent kNN: float64, loops, cosine similarity, exp(s / t) votes (or
    1), ties between classes to the lowest class."""
    xtr, xte = xtr.double(), xte.double()
    xtr = xtr / xtr.norm(dim=1, keepdim=True)
    xte = xte / xte.norm(dim=1, keepdim=True)
    preds = []
    for row in (xte @ xtr.T).tolist():
        sims = [(s, i) for i, s in enumerate(row)]
        sims.sort(key=lambda s: (-s[0], s[1]))
        votes = {}
        for s, i in sims[: min(k, len(sims))]:
            c = int(ytr[i])
            votes[c] = votes.get(c, 0.0) + (math.exp(s / t) if weighted else 1.0)
        best = max(votes.values())
        preds.append(min(c for c, v in votes.items() if v == best))
    return torch.tensor(preds)


def test_knn_matches_an_independent_reference_on_tiny_inputs():
    g = torch.Generator().manual_seed(5)
    for trial in range(40):
        ntr, d, nc = 5 + trial, 2 + trial % 4, 2 + trial % 3
        xtr, xte = torch.randn(ntr, d, generator=g), torch.randn(6, d, generator=g)
        ytr = torch.randint(0, nc, (ntr,), generator=g)
        for k in (1, 2, 4, 20, 100):
            for t, w in ((0.07, True), (1.0, True), (0.07, False)):
                pred = _reference_knn_predictions(xtr, ytr, xte, k, t, w)
                for chunk in (3, 1024):
                    assert knn_accuracy(xtr, ytr, xte, pred, k=k, temperature=t, weighted=w, chunk=chunk) == 1.0, (trial, k, t, w)


def test_cli_knn_is_k20_cosine_weighted_t007(tmp_path, capsys, monkeypatch):
    calls = []
    real = evaluation.knn_accuracy

    def spy(*a, **k):
        bound = inspect.signature(real).bind(*a, **k)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        return real(*a, **k)

    monkeypatch.setattr(evaluation, "knn_accuracy", spy)
    out = tmp_path / "r.json"
    code, _, err = call(["eval-features", "--random-init", "smallcnn", "--dataset", "sample", "model_width=8", "--per-class", "20", "--no-linear", "--json", str(out)], capsys)
    assert code == 0, err
    ((args),) = calls
    assert (args["k"], args["temperature"], args["weighted"]) == (20, 0.07, True)
    pred = _reference_knn_predictions(args["train_feats"], args["train_labels"], args["test_feats"])
    assert json.loads(out.read_text())["knn_acc"] == pytest.approx(float((pred == args["test_labels"]).double().mean()), abs=2e-3)


def test_linear_probe_tunes_nothing_on_the_test_split():
    """Fixed hyper-parameters (C = 1, lbfgs, 1000 iterations), scaler fitted on
    train: equal to that sklearn pipeline, and each test image's prediction
    independent of the other test images (the accuracy on a split is the
    size-weighted mean of the accuracies on its parts). The data are chosen so
    that another C would score higher on the test split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, 4, generator=g)
    xtr, xte = torch.randn(40, 40, generator=g), torch.randn(300, 40, generator=g)
    ytr = (xtr @ w + 6.0 * torch.randn(40, 4, generator=g)).argmax(1)
    yte = (xte @ w).argmax(1)
    scaler = StandardScaler().fit(xtr.double().numpy())
    clf = LogisticRegression(C=1.0, max_iter=1000, solver="lbfgs").fit(scaler.transform(xtr.double().numpy()), ytr.numpy())
    expected = float((clf.predict(scaler.transform(xte.double().numpy())) == yte.numpy()).mean())
    acc = linear_probe_accuracy(xtr, ytr, xte, yte, threads=1)
    assert acc == pytest.approx(expected, abs=1e-9)
    parts = [linear_probe_accuracy(xtr, ytr, xte[i : i + 30], yte[i : i + 30], threads=1) for i in range(0, 300, 30)]
    assert acc == pytest.approx(sum(parts) / len(parts), abs=1e-9)
