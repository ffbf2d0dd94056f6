"""Representation evaluation: kNN / linear-probe accuracy and `ssal eval-features`."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ssal.cli import main
from ssal.config import resolve_config, to_yaml
from ssal.evaluation import extract_features, knn_accuracy, labels_per_class_subset, linear_probe_accuracy
from ssal.models import build_backbone
from ssal.modes import build_classifier


def call(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# --------------------------------------------------------------------------- kNN
def test_knn_separable_is_perfect():
    g = torch.Generator().manual_seed(0)
    centers = torch.eye(4) * 5
    ytr = torch.arange(4).repeat(25)
    yte = torch.arange(4).repeat(10)
    xtr = centers[ytr] + 0.1 * torch.randn(100, 4, generator=g)
    xte = centers[yte] + 0.1 * torch.randn(40, 4, generator=g)
    assert knn_accuracy(xtr, ytr, xte, yte, k=20) == 1.0
    assert knn_accuracy(xtr, ytr, xte, yte, k=20, weighted=False) == 1.0


def test_knn_hand_computed_k3():
    # unit vectors at 0, 36.87, 53.13, 90 and 180 degrees; the query is at 0 degrees
    xtr = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    ytr = torch.tensor([0, 1, 1, 0, 2])
    q = torch.tensor([[3.0, 0.0]])  # norm does not matter: cosine similarity
    # top 3 by cosine: train 0 (sim 1.0, class 0), 1 (0.8, class 1), 2 (0.6, class 1)
    for t in (0.07, 0.5, 1.0):
        score0 = math.exp(1.0 / t)
        score1 = math.exp(0.8 / t) + math.exp(0.6 / t)
        expected = 0 if score0 > score1 else 1
        assert knn_accuracy(xtr, ytr, q, torch.tensor([expected]), k=3, temperature=t) == 1.0
        assert knn_accuracy(xtr, ytr, q, torch.tensor([1 - expected]), k=3, temperature=t) == 0.0
    # 0.07: exp(14.29) > exp(11.43) + exp(8.57) -> class 0; 1.0: 2.72 < 2.23 + 1.82 -> class 1
    assert knn_accuracy(xtr, ytr, q, torch.tensor([0]), k=3, temperature=0.07) == 1.0
    assert knn_accuracy(xtr, ytr, q, torch.tensor([1]), k=3, temperature=1.0) == 1.0
    # majority vote: two of class 1 beat one of class 0
    assert knn_accuracy(xtr, ytr, q, torch.tensor([1]), k=3, weighted=False) == 1.0
    # a tie in a majority vote goes to the lowest class: the 2 nearest neighbours of
    # (-0.1, 1) are train 3 (class 0) and train 2 (class 1) -> class 0
    q2 = torch.tensor([[-0.1, 1.0]])
    assert knn_accuracy(xtr, ytr, q2, torch.tensor([0]), k=2, weighted=False) == 1.0
    # k larger than the train set is clamped: all five vote, 2 x class 0, 2 x class 1, 1 x class 2
    assert knn_accuracy(xtr, ytr, q2, torch.tensor([0]), k=50, weighted=False) == 1.0


def _dense_knn_predictions(xtr, ytr, xte, k, t, num_classes):
    sim = F.normalize(xte, dim=1) @ F.normalize(xtr, dim=1).T
    top, idx = sim.topk(k, dim=1)
    votes = torch.zeros(xte.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, ytr[idx], (top.double() / t).exp())
    return votes.argmax(1)


def test_knn_chunked_equals_unchunked_and_dense_reference():
    g = torch.Generator().manual_seed(1)
    xtr, xte = torch.randn(300, 16, generator=g), torch.randn(101, 16, generator=g)
    ytr, yte = torch.randint(0, 7, (300,), generator=g), torch.randint(0, 7, (101,), generator=g)
    ref = knn_accuracy(xtr, ytr, xte, yte, k=20, chunk=100000)
    for chunk in (1, 7, 64, 300):
        assert knn_accuracy(xtr, ytr, xte, yte, k=20, chunk=chunk) == ref
    pred = _dense_knn_predictions(xtr, ytr, xte, 20, 0.07, 7)
    assert ref == pytest.approx(float((pred == yte).float().mean()))
    # a train set smaller than k with chunks smaller than k
    assert knn_accuracy(xtr[:15], ytr[:15], xte, yte, k=20, chunk=4) == knn_accuracy(xtr[:15], ytr[:15], xte, yte, k=15)


# ---------------------------------------------------------------- linear probe
def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(2)
    centers = 4 * torch.randn(5, 20, generator=g)
    ytr, yte = torch.arange(5).repeat(40), torch.arange(5).repeat(20)
    xtr = centers[ytr] + 0.3 * torch.randn(200, 20, generator=g)
    xte = centers[yte] + 0.3 * torch.randn(100, 20, generator=g)
    assert linear_probe_accuracy(xtr, ytr, xte, yte, threads=1) == 1.0
    # random labels: nothing to learn, accuracy near 1/10
    xtr, xte = torch.randn(500, 20, generator=g), torch.randn(2000, 20, generator=g)
    ytr, yte = torch.randint(0, 10, (500,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    acc = linear_probe_accuracy(xtr, ytr, xte, yte, threads=1)
    assert 0.05 < acc < 0.16


def test_labels_per_class_subset():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 3 + [3] * 20)[torch.randperm(103, generator=torch.Generator().manual_seed(0))]
    idx = labels_per_class_subset(labels, 10, seed=0)
    assert idx.dtype == torch.long
    assert torch.bincount(labels[idx]).tolist() == [10, 10, 3, 10]  # a class with fewer gives all it has
    assert idx.unique().numel() == idx.numel()
    assert torch.equal(idx, labels_per_class_subset(labels, 10, seed=0))
    assert not torch.equal(idx, labels_per_class_subset(labels, 10, seed=1))
    assert torch.equal(labels_per_class_subset(labels, 1000, seed=3), torch.arange(103))


def test_extract_features_eval_mode_and_batching():
    torch.manual_seed(0)
    enc = build_backbone("smallcnn", 1, width=4)
    enc.train()
    images = torch.randint(0, 256, (10, 1, 12, 12), dtype=torch.uint8)
    a = extract_features(enc, images, (0.5,), (0.25,), "cpu", batch_size=3)
    b = extract_features(enc, images, (0.5,), (0.25,), "cpu", batch_size=512)
    assert a.shape == (10, enc.feat_dim) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5)  # eval mode: no batch statistics
    assert enc.training  # the flag is restored


# ------------------------------------------------------------------------- CLI
def test_cli_random_init_on_sample(tmp_path, capsys):
    out = tmp_path / "r.json"
    code, text, err = call(
        ["eval-features", "--random-init", "smallcnn", "dataset=sample", "model_width=8", "--per-class", "20", "--json", str(out)],
        capsys,
    )
    assert code == 0, err
    assert "kNN acc (k=20)" in text and "linear acc" in text and "%" in text
    res = json.loads(out.read_text())
    assert res["kind"] == "random-init" and res["dataset"] == "sample"
    assert res["n_train"] == 200 and res["n_test"] == 1000 and res["feat_dim"] == 32
    assert res["knn_acc"] > 0.15 and res["linear_acc"] > 0.15
    assert f"{100 * res['knn_acc']:.2f}%" in text
    # options after key=value work too, and the seeded init gives the same number
    code, _, _ = call(
        ["eval-features", "--random-init", "smallcnn", "--per-class", "20", "model_width=8", "--dataset", "sample", "--no-linear"]
        + ["--json", str(out)],
        capsys,
    )
    res2 = json.loads(out.read_text())
    assert code == 0 and res2["linear_acc"] is None and res2["knn_acc"] == res["knn_acc"]


def _write_cache(folder, in_channels=1, num_images=6000, seed=0):
    torch.manual_seed(seed)
    enc = build_backbone("smallcnn", in_channels, width=8)
    meta = {
        "kind": "ssl-backbone",
        "method": "byol",
        "model": "smallcnn",
        "model_kwargs": {"width": 8},
        "in_channels": in_channels,
        "feat_dim": 32,
        "num_images": num_images,
        "mean": [0.286] * in_channels,
        "std": [0.353] * in_channels,
    }
    folder.mkdir(parents=True)
    torch.save({"backbone": enc.state_dict(), "meta": meta}, folder / "backbone.pt")
    return folder


def test_cli_ssl_cache(tmp_path, capsys):
    cache = _write_cache(tmp_path / "ssl" / "byol-0123")
    out = tmp_path / "c.json"
    code, text, err = call(["eval-features", str(cache), "--dataset", "sample", "--per-class", "20", "--json", str(out)], capsys)
    assert code == 0, err
    assert err == ""  # 6000 pretraining images = the sample's train split: no warning
    res = json.loads(out.read_text())
    assert res["kind"] == "ssl-cache" and res["method"] == "byol" and res["feat_dim"] == 32
    assert 0.15 < res["knn_acc"] <= 1.0 and str(cache) in text
    # the backbone.pt file itself works the same
    args = ["eval-features", str(cache / "backbone.pt"), "--dataset", "sample", "--per-class", "20", "--no-linear", "--json", str(out)]
    code, _, _ = call(args, capsys)
    assert code == 0 and json.loads(out.read_text())["knn_acc"] == res["knn_acc"]
    # the cache does not record its dataset
    code, _, err = call(["eval-features", str(cache)], capsys)
    assert code == 2 and err.startswith("ssal: error:") and "--dataset" in err
    # fewer pretraining images than the train split (class caps): only a warning
    small = _write_cache(tmp_path / "ssl" / "byol-small", num_images=5400)
    code, _, err = call(["eval-features", str(small), "--dataset", "sample", "--per-class", "5", "--no-linear"], capsys)
    assert code == 0 and "warning" in err and "5400" in err
    # a 3-channel backbone on 1-channel images: an error
    rgb = _write_cache(tmp_path / "ssl" / "byol-rgb", in_channels=3)
    code, _, err = call(["eval-features", str(rgb), "--dataset", "sample"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "channel" in err


def _write_run(folder, mode="supervised", ssl_folder=None):
    cfg = resolve_config(None, ["model_width=8", f"train.mode={mode}", f"out={folder}"])
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(to_yaml(cfg))
    torch.manual_seed(0)
    model = build_classifier(cfg, 10, 1)  # the backbone equals build_backbone under manual_seed(0)
    state = model.head.state_dict() if mode == "frozen" else model.state_dict()
    torch.save(state, folder / "model.pt")
    (folder / "state.json").write_text(json.dumps({"next_cycle": 1, "ssl_backbone": None if ssl_folder is None else str(ssl_folder)}))
    return folder


def test_cli_run_folder(tmp_path, capsys):
    run = _write_run(tmp_path / "run")
    out = tmp_path / "run.json"
    code, _, err = call(["eval-features", str(run), "--per-class", "20", "--no-linear", "--json", str(out)], capsys)
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["kind"] == "run" and res["dataset"] == "sample" and res["feat_dim"] == 32
    # same weights as the seeded random init, same normalisation: same kNN accuracy
    rnd = tmp_path / "rnd.json"
    args = ["eval-features", "--random-init", "smallcnn", "--dataset", "sample", "model_width=8", "--per-class", "20", "--no-linear"]
    call([*args, "--json", str(rnd)], capsys)
    assert res["knn_acc"] == json.loads(rnd.read_text())["knn_acc"]
    # frozen run: the SSL backbone recorded in state.json, not model.pt (the head alone)
    cache = _write_cache(tmp_path / "ssl" / "byol-f", seed=1)
    frozen = _write_run(tmp_path / "frozen", mode="frozen", ssl_folder=cache)
    code, _, err = call(["eval-features", str(frozen), "--per-class", "20", "--no-linear", "--json", str(out)], capsys)
    assert code == 0, err
    direct = tmp_path / "direct.json"
    call(["eval-features", str(cache), "--dataset", "sample", "--per-class", "20", "--no-linear", "--json", str(direct)], capsys)
    assert json.loads(out.read_text())["knn_acc"] == json.loads(direct.read_text())["knn_acc"]
    # a run without model.pt
    (run / "model.pt").unlink()
    code, _, err = call(["eval-features", str(run)], capsys)
    assert code == 2 and "model.pt" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, needle",
    [
        (["/no/such/checkpoint"], "/no/such/checkpoint"),
        ([], "--random-init"),
        (["--random-init", "nope", "--dataset", "sample"], "nope"),
        (["--random-init", "smallcnn", "--dataset", "nope"], "nope"),
        (["--random-init", "smallcnn"], "--dataset"),
    ],
)
def test_cli_bad_input_one_line(args, needle, capsys):
    code, text, err = call(["eval-features", *args], capsys)
    assert code == 2 and text == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error:") and needle in lines[0]


def test_cli_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "junk.pt", tmp_path / "empty"):
        code, _, err = call(["eval-features", str(path), "--dataset", "sample"], capsys)
        assert code == 2 and err.startswith("ssal: error:") and len(err.strip().splitlines()) == 1 and str(path) in err


def test_help_mentions_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["eval-features", "--help"])
    text = capsys.readouterr().out
    for word in ["--random-init", "--per-class", "kNN", "linear", "outside active learning", "backbone.pt", "config.yaml"]:
        assert word in text
