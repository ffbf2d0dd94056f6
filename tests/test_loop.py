"""End-to-end runs on the embedded sample: files written, determinism, resume."""

import json

import pytest
import torch

import ssal.loop as loop
import ssal.modes as modes
from ssal.config import resolve_config
from ssal.loop import run_experiment

FAST = ["initial=40", "budget=30", "cycles=2", "train.epochs=2", "train.min_steps=0", "train.batch_size=32", "model_width=16", "plot=true"]


def run(tmp_path, name, extra=(), resume=False):
    cfg = resolve_config(None, [*FAST, f"out={tmp_path / name}", *extra])
    return run_experiment(cfg, resume=resume, progress=False, log=lambda s: None)


def killed_on_call(fn, n: int):
    """``fn``, except that its ``n``-th call raises KeyboardInterrupt instead
    of running: a kill at a chosen point of a run."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapper


def strip_times(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def test_two_cycles_write_all_files(tmp_path):
    records = run(tmp_path, "a")
    out = tmp_path / "a"
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines == records
    for key in ["cycle", "n_labelled", "test_acc", "per_class_acc", "picked_per_class", "seconds_train", "seconds_select"]:
        assert key in lines[0]
    assert [r["n_labelled"] for r in lines] == [40, 70]
    assert sum(lines[0]["picked_per_class"]) == 30 and sum(lines[1]["picked_per_class"]) == 0
    assert len(lines[0]["per_class_acc"]) == 10
    assert 0.0 <= lines[0]["test_acc"] <= 1.0
    # where it ran: a run's numbers depend on the CPU thread count
    assert lines[0]["device"] == "cpu" and lines[0]["cpu_threads"] == torch.get_num_threads()
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = (out / "config.yaml").read_text()
    assert "budget: 30" in saved and "epochs: 2" in saved
    state = json.loads((out / "state.json").read_text())
    assert len(state["pool"]["order"]) == 70 and len(set(state["pool"]["order"])) == 70


def test_same_seed_same_picks_and_metrics(tmp_path):
    a = run(tmp_path, "a")
    b = run(tmp_path, "b")
    assert strip_times(a) == strip_times(b)
    sa = json.loads((tmp_path / "a" / "state.json").read_text())["pool"]["order"]
    sb = json.loads((tmp_path / "b" / "state.json").read_text())["pool"]["order"]
    assert sa == sb
    c = run(tmp_path, "c", ["seed=1"])
    sc = json.loads((tmp_path / "c" / "state.json").read_text())["pool"]["order"]
    assert sc != sa


def test_resume_after_crash_mid_cycle_equals_uninterrupted(tmp_path, monkeypatch):
    extra = ["cycles=3", "strategy=entropy"]
    full = run(tmp_path, "full", extra)

    real_train = modes.train_supervised
    monkeypatch.setattr(modes, "train_supervised", killed_on_call(real_train, 2))  # die in the middle of cycle 1
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", extra)
    done = [json.loads(x) for x in (tmp_path / "resumed" / "results.jsonl").read_text().splitlines()]
    assert len(done) == 1
    monkeypatch.setattr(modes, "train_supervised", real_train)
    with pytest.raises(Exception, match="already holds a run"):
        run(tmp_path, "resumed", extra)
    resumed = run(tmp_path, "resumed", extra, resume=True)
    assert strip_times(resumed) == strip_times(full)
    order_full = json.loads((tmp_path / "full" / "state.json").read_text())["pool"]["order"]
    order_res = json.loads((tmp_path / "resumed" / "state.json").read_text())["pool"]["order"]
    assert order_full == order_res


def test_resume_refuses_changed_config(tmp_path):
    run(tmp_path, "a")
    with pytest.raises(Exception, match="budget"):
        run(tmp_path, "a", ["budget=31"], resume=True)


def test_resume_refuses_a_pool_that_changed_under_the_same_config(tmp_path, monkeypatch):
    """The same config can name other images (an image folder edited between
    the crash and the resume, a dataset file replaced): the resume must stop,
    not label indices that now point at other images."""
    run(tmp_path, "a")
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert len(state["pool_images"]) == 16
    real = loop.prepare_splits

    def other_images(cfg, progress=True):
        s = real(cfg, progress)
        s.pool.images[0] = 255 - s.pool.images[0]
        return s

    monkeypatch.setattr(loop, "prepare_splits", other_images)
    with pytest.raises(Exception, match="pool's images differ"):
        run(tmp_path, "a", resume=True)
    monkeypatch.undo()
    run(tmp_path, "a", resume=True)  # the same images: resumes


def test_a_run_saved_before_caps_seed_resumes_only_on_its_own_cap_draw(tmp_path):
    """Runs saved before ``caps_seed`` existed drew their class_caps with the
    run seed. Their saved config lacks the key (and their state the pool
    fingerprint), so today's default (caps_seed 0) would pass the config check
    and resume on other images. The saved config is read as caps_seed = its
    seed: the default is refused with the value to use, which resumes."""
    caps = ["class_caps={0: 50, 3: 20}", "seed=1"]
    run(tmp_path, "old", [*caps, "caps_seed=1"])  # the draw such a run made
    out = tmp_path / "old"
    saved = (out / "config.yaml").read_text()
    assert "caps_seed: 1\n" in saved
    (out / "config.yaml").write_text(saved.replace("caps_seed: 1\n", ""))
    state = json.loads((out / "state.json").read_text())
    del state["pool_images"]
    (out / "state.json").write_text(json.dumps(state))
    with pytest.raises(Exception, match=r"differs from the saved one at caps_seed \(saved before caps_seed existed.*caps_seed=1\)"):
        run(tmp_path, "old", caps, resume=True)
    run(tmp_path, "old", [*caps, "caps_seed=1"], resume=True)
    run(tmp_path, "seed0", ["class_caps={0: 50, 3: 20}"])  # seed 0: its old draw is today's default
    (tmp_path / "seed0" / "config.yaml").write_text((tmp_path / "seed0" / "config.yaml").read_text().replace("caps_seed: 0\n", ""))
    run(tmp_path, "seed0", ["class_caps={0: 50, 3: 20}"], resume=True)


def spy_label_reads(monkeypatch) -> list[bool]:
    """Record, for every ActivePool.targets call, whether all indices read were labelled."""
    from ssal.data.oracle import ActivePool

    real = ActivePool.targets
    reads: list[bool] = []

    def spy(self, idx):
        idx = torch.as_tensor(idx)
        reads.append(bool(self._is_labelled[idx].all()))
        return real(self, idx)

    monkeypatch.setattr(ActivePool, "targets", spy)
    return reads


def test_training_and_selection_never_read_pool_labels(tmp_path, monkeypatch):
    """Every label read during a run goes through ActivePool.targets, and only
    for labelled indices: spy on it and check."""
    reads = spy_label_reads(monkeypatch)
    run(tmp_path, "spy", ["strategy=margin"])
    assert reads and all(reads)


def test_warm_start_runs_and_differs_from_scratch(tmp_path):
    a = run(tmp_path, "scratch")
    b = run(tmp_path, "warm", ["train.warm_start=true"])
    assert a[0]["test_acc"] == b[0]["test_acc"]  # cycle 0 is identical
    assert (tmp_path / "warm" / "model.pt").exists()


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    """A real process killed with SIGKILL (no cleanup at all), then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # the child process must use this process's thread count: CPU kernels are
    # bit-identical only at equal thread counts, and earlier tests may change it
    extra = ["cycles=3", "train.epochs=4", "strategy=coreset", f"threads={torch.get_num_threads()}"]
    full = run(tmp_path, "full", extra)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "ssal", "run", "-q", *FAST, *extra, f"out={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        res = out / "results.jsonl"
        if res.exists() and res.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = (out / "results.jsonl").read_text().count("\n")
    assert 1 <= done <= 3
    resumed = run(tmp_path, "killed", extra, resume=True)
    assert strip_times(resumed) == strip_times(full)


def test_splits_caps_and_validation_are_disjoint_from_the_pool():
    from ssal.data import load_dataset
    from ssal.loop import prepare_splits

    cfg = resolve_config(None, ["class_caps={0: 50, 3: 20}", "val_size=0.1"])
    s = prepare_splits(cfg, progress=False)
    train, _ = load_dataset("sample")
    # every pool image maps to a distinct train image; class caps hold on pool + val
    src = s.pool_source_index
    assert src.unique().numel() == src.numel() == len(s.pool)
    assert torch.equal(s.pool.images, train.images[src])
    counts = torch.bincount(train.labels[src], minlength=10) + torch.bincount(s.val.labels, minlength=10)
    assert counts[0] == 50 and counts[3] == 20 and counts[1] == 600
    assert len(s.pool) + len(s.val) == 6000 - 550 - 580
    # validation images are not pool images
    val_keys = {bytes(x.numpy().tobytes()) for x in s.val.images}
    assert not any(bytes(x.numpy().tobytes()) in val_keys for x in s.pool.images[:500])


def test_test_split_only_in_one_final_evaluation_per_cycle(tmp_path, monkeypatch):
    """Defect 4 of the official MoBYv2AL code: the test split must be used once
    per cycle, after training, and never by selection (predict/embed)."""
    from ssal.data import load_dataset

    _, test = load_dataset("sample")
    test_keys = {bytes(x.numpy().tobytes()) for x in test.images[:200]}


    real_eval, real_predict = modes.evaluate, modes.predict
    events = []

    def spy_eval(model, images, labels, *a, **k):
        events.append(("eval", images.shape[0]))
        return real_eval(model, images, labels, *a, **k)

    def spy_predict(model, images, *a, **k):
        events.append(("predict", any(bytes(x.numpy().tobytes()) in test_keys for x in images)))
        return real_predict(model, images, *a, **k)

    def spy_train(*a, **k):
        events.append(("train", None))
        return real_train(*a, **k)

    real_train = modes.train_supervised
    monkeypatch.setattr(modes, "evaluate", spy_eval)
    monkeypatch.setattr(modes, "predict", spy_predict)
    monkeypatch.setattr(modes, "train_supervised", spy_train)
    run(tmp_path, "t", ["val_size=0"])
    kinds = [e[0] for e in events]
    assert kinds.count("eval") == 2  # one test evaluation per cycle, no validation split here
    assert all(e[1] == len(test) for e in events if e[0] == "eval")
    assert kinds.index("eval") > kinds.index("train")  # after training
    assert not any(e[1] for e in events if e[0] == "predict")  # selection never sees test images


def test_initial_set_is_without_replacement_and_depends_on_the_seed():
    draw = lambda seed, n: loop.Experiment(resolve_config(None, [*FAST, f"seed={seed}", f"initial={n}"]))._initial_set(None, None, n)  # noqa: E731
    assert draw(0, 1000).unique().numel() == 1000  # the whole pool: any repeat would show
    assert draw(0, 40).tolist() == draw(0, 40).tolist() != draw(1, 40).tolist()


def test_each_cycle_selects_with_its_own_generator(tmp_path, monkeypatch):
    from ssal.strategies.random import RandomStrategy

    seen, real = [], RandomStrategy.select
    monkeypatch.setattr(RandomStrategy, "select", lambda self, ctx, b: seen.append(ctx.generator.initial_seed()) or real(self, ctx, b))
    run(tmp_path, "g", ["cycles=3", "strategy=random"])
    assert len(seen) == 2 and seen[0] != seen[1]


def test_validation_accuracy_is_measured_on_the_validation_split(tmp_path, monkeypatch):
    from ssal.data import load_dataset

    sizes, real = [], modes.evaluate
    monkeypatch.setattr(modes, "evaluate", lambda model, images, labels, *a, **k: sizes.append(images.shape[0]) or real(model, images, labels, *a, **k))
    run(tmp_path, "v", ["val_size=100"])
    _, test = load_dataset("sample")
    assert sorted(sizes) == sorted([len(test), 100] * 2)  # per cycle: the test split once, the 100 validation images once


def test_a_warm_start_run_resumes_from_the_cycle_before_wherever_it_was_killed(tmp_path, monkeypatch):
    """With train.warm_start a resumed cycle must start from the weights the
    cycle before saved (warm_start_cycle<k>.pt), wherever the kill fell:
    - in cycle 2's training, after cycle 1 was saved;
    - between cycle 1's writes: its model files are on disk but state.json
      still points at cycle 1, so the resume redoes it from cycle 0's weights,
      not from the ones just written;
    - a folder from before the per-cycle file (only model.pt): model.pt."""
    extra = ["cycles=3", "strategy=entropy", "train.warm_start=true"]
    full = strip_times(run(tmp_path, "full", extra))
    kills = {
        "train": (modes, "train_supervised", 3),
        "writes": (loop, "atomic_write_json", 2),  # the second state.json write, after cycle 1
        "old-folder": (modes, "train_supervised", 3),
    }
    for name, (module, attr, n) in kills.items():
        monkeypatch.setattr(module, attr, killed_on_call(getattr(module, attr), n))
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path, name, extra)
        monkeypatch.undo()
        out = tmp_path / name
        warm = sorted(p.name for p in out.glob("warm_start_cycle*.pt"))
        if name == "writes":
            assert json.loads((out / "state.json").read_text())["next_cycle"] == 1
            assert warm == ["warm_start_cycle0.pt", "warm_start_cycle1.pt"]
        else:
            assert warm == ["warm_start_cycle1.pt"]
        if name == "old-folder":  # model.pt is cycle 1's classifier: the whole state of a supervised run
            (out / warm[0]).unlink()
        assert strip_times(run(tmp_path, name, extra, resume=True)) == full, name


def test_picks_outside_the_candidates_are_refused():
    with pytest.raises(RuntimeError):
        loop._check_picks(torch.tensor([5, 1]), torch.tensor([1, 2, 3]), 2)
    loop._check_picks(torch.tensor([3, 1]), torch.tensor([1, 2, 3]), 2)


def test_atomic_file_never_exposes_a_partial_file(tmp_path):
    from ssal.utils import atomic_file

    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(p) as tmp:
            assert tmp != p and tmp.parent == p.parent
            tmp.write_text("half")
            assert p.read_text() == "old"
            raise RuntimeError
    assert p.read_text() == "old" and sorted(tmp_path.iterdir()) == [p]
    with atomic_file(p) as tmp:
        tmp.write_text("new")
    assert p.read_text() == "new" and sorted(tmp_path.iterdir()) == [p]
