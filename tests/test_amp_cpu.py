"""bfloat16 autocast on the CPU (``train.amp_cpu``, ``ssl.amp_cpu``): off by
default, on it runs the convolutions in bfloat16 with float32 weights and
float32 outputs, and it is part of the SSL cache key only when on."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from ssal.augment import TestView, WeakView, channel_stats
from ssal.config import resolve_config
from ssal.data import load_dataset
from ssal.loop import run_experiment
from ssal.models import build_model
from ssal.pretrain import images_fingerprint, pretrain_key
from ssal.train import amp_enabled, predict, train_supervised
from ssal.utils import generator

TINY = ["model_width=8", "train.epochs=1", "train.min_steps=0", "train.batch_size=32", "plot=false", "val_size=100"]
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_amp_cpu_is_off_by_default_and_separate_from_cuda_amp():
    default = resolve_config(None, []).train
    on = resolve_config(None, ["train.amp_cpu=true", "train.amp=false"]).train
    assert default.amp and not default.amp_cpu
    assert not amp_enabled(default, CPU) and amp_enabled(default, CUDA)
    assert amp_enabled(on, CPU) and not amp_enabled(on, CUDA)
    assert not amp_enabled(on, torch.device("meta"))
    assert amp_enabled(resolve_config(None, ["ssl.amp_cpu=true"]).ssl, CPU)


def _conv_dtypes(model):
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


def test_training_under_amp_cpu_runs_convs_in_bfloat16_with_float32_weights():
    train, _ = load_dataset("sample")
    images, labels = train.images[:64], train.labels[:64]
    mean, std = channel_stats(images)
    for flag, want in [("false", torch.float32), ("true", torch.bfloat16)]:
        cfg = resolve_config(None, [*TINY, f"train.amp_cpu={flag}"]).train
        torch.manual_seed(0)
        model = build_model("smallcnn", 10, 1, width=8)
        before = [p.detach().clone() for p in model.parameters()]
        seen = _conv_dtypes(model)
        stats = train_supervised(model, images, labels, cfg, WeakView(mean, std), generator(0, "t"), CPU, progress=False)
        assert stats.steps == 2 and set(seen) == {want}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        assert torch.isfinite(torch.tensor(stats.final_loss))


def test_inference_under_amp_cpu_is_float32_and_close_to_float32_inference():
    train, _ = load_dataset("sample")
    images = train.images[:200]
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=8)
    prepare = TestView(*channel_stats(images))
    lo32, fe32 = predict(model, images, prepare, CPU, 64)  # default: float32
    lo16, fe16 = predict(model, images, prepare, CPU, 64, amp=True)
    assert lo16.dtype == fe16.dtype == torch.float32
    assert not torch.equal(fe16, fe32)  # really ran in bfloat16
    rel = (fe16 - fe32).norm(dim=1) / fe32.norm(dim=1)
    assert float(rel.max()) < 0.05
    assert float((lo16.argmax(1) == lo32.argmax(1)).float().mean()) > 0.9


def test_amp_cpu_enters_the_ssl_cache_key_only_when_on():
    fp = images_fingerprint(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    off = resolve_config(None, []).ssl
    on = resolve_config(None, ["ssl.amp_cpu=true"]).ssl
    old = {k: v for k, v in OmegaConf.to_container(off).items() if k != "amp_cpu"}  # a config written before the option existed
    key = lambda s: pretrain_key(fp, "smallcnn", {"width": 8}, 1, s)  # noqa: E731
    assert key(off) == key(old) != key(on)


def test_a_run_under_amp_cpu_is_reproducible(tmp_path):
    def run(name):
        cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=2", f"out={tmp_path / name}", *TINY, "train.amp_cpu=true", "strategy=isal", "strategy_options.mode=last_layer"])
        return run_experiment(cfg, progress=False, log=lambda s: None)

    a, b = run("a"), run("b")
    assert [r["n_labelled"] for r in a] == [40, 70]
    assert [r["test_acc"] for r in a] == [r["test_acc"] for r in b]
    order = lambda name: json.loads((tmp_path / name / "state.json").read_text())["pool"]["order"]  # noqa: E731
    assert len(order("a")) == 70 and order("a") == order("b")  # the same picks
