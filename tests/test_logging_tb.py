"""log.tensorboard: event files with the expected scalars, and the same results."""

from __future__ import annotations

import json
import sys

import pytest

import ssal.modes as modes
from ssal.config import resolve_config
from ssal.errors import SsalError
from ssal.loop import run_experiment

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = [
    "initial=40",
    "budget=30",
    "cycles=2",
    "train.epochs=2",
    "train.min_steps=0",
    "train.batch_size=32",
    "model_width=8",
    "plot=false",
    "threads=1",
    "strategy=entropy",
]


def _run(out, *extra, resume=False):
    cfg = resolve_config(None, [*TINY, f"out={out}", *extra])
    return run_experiment(cfg, resume=resume, progress=False, log=lambda s: None)


def _without_times(path):
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("seconds")} for x in path.read_text().splitlines()]


def test_tensorboard_scalars_and_unchanged_results(tmp_path, monkeypatch):
    records = _run(tmp_path / "tb", "log.tensorboard=true")
    _run(tmp_path / "plain")
    assert _without_times(tmp_path / "tb" / "results.jsonl") == _without_times(tmp_path / "plain" / "results.jsonl")
    assert not (tmp_path / "plain" / "tensorboard").exists()

    ea = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "cycle/test_acc", "cycle/val_acc", "cycle/n_labelled", "cycle/seconds_train"} <= tags
    # one point per epoch over both cycles, on one continuing axis
    epochs = sum(r["train_epochs"] for r in records)
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(epochs))
    # one point per cycle, equal to results.jsonl
    assert [(e.step, round(e.value, 5)) for e in ea.Scalars("cycle/test_acc")] == [(r["cycle"], round(r["test_acc"], 5)) for r in records]
    assert [e.value for e in ea.Scalars("cycle/n_labelled")] == [r["n_labelled"] for r in records]

    # a run killed in cycle 1 after its epochs were logged, then resumed, shows the same
    # curves: the replayed cycle's earlier points are purged (purge_step)
    real = modes.train_supervised

    def killed_in_cycle_1(*args, **kwargs):
        stats = real(*args, **kwargs)
        if kwargs["desc"] == "cycle 1 train":
            raise KeyboardInterrupt
        return stats

    monkeypatch.setattr(modes, "train_supervised", killed_in_cycle_1)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", "log.tensorboard=true")
    monkeypatch.setattr(modes, "train_supervised", real)
    _run(tmp_path / "killed", "log.tensorboard=true", resume=True)
    eb = EventAccumulator(str(tmp_path / "killed" / "tensorboard"))
    eb.Reload()
    for tag in ("train/loss", "cycle/test_acc"):
        assert [(e.step, e.value) for e in eb.Scalars(tag)] == [(e.step, e.value) for e in ea.Scalars(tag)]

    # logging options change no result: turning it on for a finished run's resume is allowed
    again = _run(tmp_path / "plain", "log.tensorboard=true", resume=True)
    assert [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in again] == _without_times(tmp_path / "plain" / "results.jsonl")


def test_missing_tensorboard_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    with pytest.raises(SsalError, match="pip install tensorboard"):
        _run(tmp_path / "x", "log.tensorboard=true")
    assert not (tmp_path / "x").exists()
