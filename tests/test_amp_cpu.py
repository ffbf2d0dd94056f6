"""bfloat16 autocast on the CPU (``train.amp_cpu``, ``ssl.amp_cpu``): off by
default, on it runs the convolutions in bfloat16 with float32 weights and
float32 outputs, it is part of the SSL cache key only when on, and ``auto``
turns it on only where the CPU has native bfloat16."""

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


def _native(monkeypatch, value: bool) -> None:
    import ssal.train

    monkeypatch.setattr(ssal.train, "cpu_has_native_bfloat16", lambda: value)


def test_amp_cpu_auto_is_on_only_where_the_cpu_has_native_bfloat16(monkeypatch):
    auto = resolve_config(None, ["train.amp_cpu=auto", "ssl.amp_cpu=auto"])
    for native in (True, False):
        _native(monkeypatch, native)
        assert amp_enabled(auto.train, CPU) is native and amp_enabled(auto.ssl, CPU) is native
        assert amp_enabled(resolve_config(None, ["train.amp_cpu=true"]).train, CPU)  # an explicit true is obeyed
        assert not amp_enabled(resolve_config(None, []).train, CPU)
    assert amp_enabled(auto.train, CUDA)  # CUDA follows train.amp, whatever the CPU


def test_amp_cpu_rejects_anything_but_true_false_auto():
    import pytest

    from ssal.errors import SsalError

    for bad in ("maybe", "1.5", "bf16"):
        with pytest.raises(SsalError, match=rf"train\.amp_cpu={bad}: choose true, false or auto"):
            resolve_config(None, [f"train.amp_cpu={bad}"])
    with pytest.raises(SsalError, match="ssl.amp_cpu"):
        resolve_config(None, ["ssl.amp_cpu=yes please"])


def test_amp_cpu_true_on_an_emulating_cpu_warns_in_one_line(monkeypatch, tmp_path):
    from ssal.train import amp_cpu_warning

    _native(monkeypatch, False)
    msg = amp_cpu_warning("train.amp_cpu", True, CPU)
    assert msg is not None and "\n" not in msg and "train.amp_cpu=auto" in msg and "8-12x slower" in msg
    assert amp_cpu_warning("train.amp_cpu", "auto", CPU) is None  # auto chose float32: nothing to warn about
    assert amp_cpu_warning("train.amp_cpu", False, CPU) is None
    assert amp_cpu_warning("train.amp_cpu", True, CUDA) is None
    _native(monkeypatch, True)
    assert amp_cpu_warning("train.amp_cpu", True, CPU) is None
    _native(monkeypatch, False)
    lines: list[str] = []
    cfg = resolve_config(None, ["initial=40", "budget=30", "cycles=1", f"out={tmp_path / 'r'}", *TINY, "train.amp_cpu=true", "strategy=random"])
    (rec,) = run_experiment(cfg, progress=False, log=lines.append)
    assert sum("train.amp_cpu=true" in line for line in lines) == 1
    assert rec["amp"] is True  # recorded: this cycle trained in bfloat16


def test_amp_cpu_auto_shares_the_cache_and_the_run_folder_of_what_it_chose(monkeypatch):
    from ssal.loop import _config_diff

    fp = images_fingerprint(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    key = lambda s: pretrain_key(fp, "smallcnn", {"width": 8}, 1, s)  # noqa: E731
    ssl = lambda v: resolve_config(None, [f"ssl.amp_cpu={v}"]).ssl  # noqa: E731
    train = lambda v: OmegaConf.to_container(resolve_config(None, [f"train.amp_cpu={v}"]))  # noqa: E731
    _native(monkeypatch, True)
    assert key(ssl("auto")) == key(ssl("true")) != key(ssl("false"))
    assert _config_diff(train("true"), train("auto")) == []
    assert _config_diff(train("false"), train("auto")) == ["train.amp_cpu"]
    _native(monkeypatch, False)
    assert key(ssl("auto")) == key(ssl("false")) != key(ssl("true"))
    assert _config_diff(train("false"), train("auto")) == []
    assert _config_diff(train("true"), train("auto")) == ["train.amp_cpu"]  # resuming would switch precision mid-run


def test_ssl_amp_cpu_true_on_an_emulating_cpu_warns_when_pretraining(monkeypatch, tmp_path):
    from ssal.pretrain import pretrain

    _native(monkeypatch, False)
    train, _ = load_dataset("sample")
    images = train.images[:64]
    mean, std = channel_stats(images)
    opts = ["ssl.method=rotation", "ssl.epochs=1", "ssl.batch_size=32", f"ssl.cache_dir={tmp_path}"]
    lines: list[str] = []
    for flag in ("true", "auto"):
        cfg = resolve_config(None, [*TINY, *opts, f"ssl.amp_cpu={flag}"]).ssl
        _, meta, _ = pretrain(images, "smallcnn", {"width": 8}, cfg, mean, std, CPU, progress=False, log=lines.append)
        assert meta["amp"] is (flag == "true")  # auto chose float32 on this (pretend) CPU
    assert sum("ssl.amp_cpu=true" in line for line in lines) == 1
