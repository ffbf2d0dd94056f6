"""`ssal bench`: grid files, skipping and resuming runs, worker processes, the
summary tables, and one-line errors for bad grid files."""

import json
import math
from pathlib import Path

import pytest
import yaml

import ssal.loop as loop
from ssal.bench import load_grid, run_status, summarise, summary_markdown, write_grid_file
from ssal.cli import main
from ssal.config import resolve_config
from ssal.errors import SsalError
from ssal.loop import run_experiment

TINY = ["initial=40", "budget=30", "cycles=2", "train.epochs=1", "train.min_steps=0", "train.batch_size=32", "model_width=8", "plot=false"]
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)  # t_{0.975, 2} = 4.30265272975


def write_grid(tmp_path: Path, name: str = "g", **doc) -> Path:
    doc.setdefault("set", [*TINY, "threads=1"])
    doc.setdefault("out", str(tmp_path / "out"))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def strip_times(records):
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def records_of(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]


def test_grid_runs_summarises_and_skips_finished_runs(tmp_path, capsys, monkeypatch):
    grid = write_grid(tmp_path, grid={"strategy": ["random", "entropy"], "seed": [0, 1]})
    out = tmp_path / "out"
    assert main(["bench", str(grid)]) == 0
    names = {"sample-supervised-random-seed0", "sample-supervised-random-seed1", "sample-supervised-entropy-seed0", "sample-supervised-entropy-seed1"}
    for n in names:
        assert run_status(next(r for r in load_grid(grid).runs if r.name == n)).state == "done"
        assert len(records_of(out / n)) == 2
    assert {p.name for p in out.iterdir() if p.is_dir()} == names
    for f in ("grid.yaml", "summary.md", "summary.json", "curves.png"):
        assert (out / f).is_file(), f
    written = yaml.safe_load((out / "grid.yaml").read_text())
    assert len(written["runs"]) == 4 and written["grid"]["seed"] == [0, 1]

    summary = json.loads((out / "summary.json").read_text())
    groups = {g["group"]: g for g in summary["groups"]}
    assert set(groups) == {"sample-supervised-random", "sample-supervised-entropy"}
    assert summary["runs_finished"] == 4
    for label, g in groups.items():
        assert g["seeds"] == [0, 1] and g["seeds_finished"] == [0, 1]
        assert [c["n"] for c in g["cycles"]] == [2, 2] and g["labelled"] == [40, 70]
        accs = [[100 * r["test_acc"] for r in records_of(out / f"{label}-seed{s}")] for s in (0, 1)]
        assert g["cycles"][1]["mean"] == pytest.approx((accs[0][1] + accs[1][1]) / 2)
        assert g["aubc"]["mean"] == pytest.approx(sum((a[0] + a[1]) / 2 for a in accs) / 2)
    vs = groups["sample-supervised-entropy"]["vs_baseline"]
    assert vs["baseline"] == "sample-supervised-random"
    assert vs["cycles"][0]["mean_diff"] == 0.0 and not vs["cycles"][0]["resolved"]  # same seeds: same initial sets
    assert groups["sample-supervised-random"]["vs_baseline"] is None
    md = (out / "summary.md").read_text()
    assert "| sample-supervised-entropy |" in md and "| sample-supervised-random |" in md

    # a second invocation runs nothing
    calls = []
    monkeypatch.setattr(loop, "run_experiment", lambda *a, **k: calls.append(a))
    capsys.readouterr()
    assert main(["bench", str(grid)]) == 0
    assert calls == [] and "[skip] 4 finished run(s)" in capsys.readouterr().out
    assert main(["bench", str(grid), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("done 2/2") == 4
    assert main(["bench", str(grid), "--summary-only", "--target", "5"]) == 0
    assert json.loads((out / "summary.json").read_text())["target"] == 5.0

    # the same out with another config: refused up front, naming the run and the key
    changed = write_grid(tmp_path, "changed", grid={"strategy": ["random", "entropy"], "seed": [0, 1]}, set=[*TINY, "threads=1", "train.epochs=2"])
    with pytest.raises(SsalError, match=r"changed\.yaml: run sample-supervised-random-seed0: .*train\.epochs"):
        load_grid(changed)


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, capsys, monkeypatch):
    tiny3 = [o for o in TINY if not o.startswith("cycles=")] + ["cycles=3"]
    grid = write_grid(tmp_path, set=tiny3, grid={"strategy": ["entropy"], "seed": [1]})
    run = tmp_path / "out" / "sample-supervised-entropy-seed1"

    real_train = loop.train_cycle
    calls = {"n": 0}

    def dying_train(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the worker dies in the middle of cycle 1
            raise RuntimeError("worker died")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop, "train_cycle", dying_train)
    assert main(["bench", str(grid)]) == 1
    assert "1 run(s) failed" in capsys.readouterr().err
    assert len(records_of(run)) == 1
    g = load_grid(grid)
    assert run_status(g.runs[0]).state == "partial" and run_status(g.runs[0]).cycles_done == 1
    # a partial run keeps its saved thread count whatever the number of workers
    assert int(load_grid(grid, workers=2).runs[0].cfg.threads) == 0

    monkeypatch.setattr(loop, "train_cycle", real_train)
    assert main(["bench", str(grid)]) == 0
    assert "resuming at cycle 1" in capsys.readouterr().out
    resumed = records_of(run)
    assert len(resumed) == 3

    cfg = resolve_config(None, [*tiny3, "strategy=entropy", "seed=1", f"out={tmp_path / 'straight'}"])
    straight = run_experiment(cfg, progress=False, log=lambda s: None)
    assert strip_times(resumed) == strip_times(straight)
    order = lambda d: json.loads((d / "state.json").read_text())["pool"]["order"]  # noqa: E731
    assert order(run) == order(tmp_path / "straight")


def test_two_workers_run_two_runs(tmp_path, capsys):
    grid = write_grid(tmp_path, set=[*TINY, "threads=1"], grid={"strategy": ["random"], "seed": [0, 1]})
    assert main(["bench", str(grid), "--workers", "2"]) == 0
    out = tmp_path / "out"
    for s in (0, 1):
        assert len(records_of(out / f"sample-supervised-random-seed{s}")) == 2
    assert json.loads((out / "summary.json").read_text())["runs_finished"] == 2
    # a worker process gives what this process gives
    cfg = resolve_config(None, [*TINY, "threads=1", "strategy=random", "seed=0", f"out={tmp_path / 'here'}"])
    here = run_experiment(cfg, progress=False, log=lambda s: None)
    assert strip_times(records_of(out / "sample-supervised-random-seed0")) == strip_times(here)


def test_workers_set_threads_unless_the_grid_does(tmp_path):
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    free = write_grid(tmp_path, "free", set=TINY, grid={"seed": [0]})
    assert int(load_grid(free, workers=2).runs[0].cfg.threads) == max(1, cores // 2)
    assert int(load_grid(free, workers=1).runs[0].cfg.threads) == 0
    pinned = write_grid(tmp_path, "pinned", set=[*TINY, "threads=3"], grid={"seed": [0]})
    assert int(load_grid(pinned, workers=2).runs[0].cfg.threads) == 3


def test_variants_and_run_name_template(tmp_path):
    grid = write_grid(
        tmp_path,
        grid={"seed": [0, 1], "train.epochs": [1, 2]},
        variants={"random": ["strategy=random"], "isal-ll": ["strategy=isal", "strategy_options.mode=last_layer"]},
    )
    runs = load_grid(grid).runs
    assert len(runs) == 8
    assert runs[0].name == "sample-supervised-random-random-epochs1-seed0"  # seed outermost
    assert {r.group for r in runs} == {f"sample-supervised-{s}-{v}-epochs{e}" for s, v in (("random", "random"), ("isal", "isal-ll")) for e in (1, 2)}
    templ = write_grid(tmp_path, "templ", grid={"seed": [0]}, variants={"a": ["strategy=random"], "b": ["strategy=coreset"]}, run_name="{variant}-seed{seed}")
    assert [(r.name, r.group) for r in load_grid(templ).runs] == [("a-seed0", "a"), ("b-seed0", "b")]


def fake_run(folder: Path, accs: list[float], n_labelled=(40, 70), **extra) -> None:
    folder.mkdir(parents=True)
    recs = [
        {"cycle": c, "n_labelled": n, "test_acc": a, "seconds_train": 1.0, "seconds_eval": 0.5, "seconds_select": 0.25, **extra}
        for c, (n, a) in enumerate(zip(n_labelled, accs))
    ]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_summary_statistics_on_hand_made_results(tmp_path):
    grid_file = write_grid(tmp_path, grid={"strategy": ["random", "entropy", "coreset"], "seed": [0, 1, 2]}, run_name="{strategy}-seed{seed}")
    curves = {
        "random": [[0.50, 0.60], [0.52, 0.62], [0.54, 0.64]],
        "entropy": [[0.50, 0.63], [0.52, 0.66], [0.54, 0.66]],
        "coreset": [[0.50, 0.57], [0.52, 0.63], [0.54, 0.63]],
    }
    for s, seeds in curves.items():
        for k, accs in enumerate(seeds):
            fake_run(tmp_path / "out" / f"{s}-seed{k}", accs)
    grid = load_grid(grid_file)
    summary = summarise(grid)
    g = {x["group"]: x for x in summary["groups"]}

    r = g["random"]
    assert r["cycles"][1]["mean"] == pytest.approx(62.0)
    assert r["cycles"][1]["std"] == pytest.approx(2.0)
    assert r["cycles"][1]["ci95"] == pytest.approx(T_975_2 * 2 / math.sqrt(3))
    # AUBC of two points = their mean: 55, 57, 59
    assert r["aubc"]["mean"] == pytest.approx(57.0) and r["aubc"]["std"] == pytest.approx(2.0)
    assert r["seconds_per_run"] == {"train": 2.0, "eval": 1.0, "select": 0.5}
    assert r["target"]["acc"] == pytest.approx(62.0) and r["target"]["labels"] == pytest.approx(70.0)

    e = g["entropy"]
    # mean curve 52, 65 reaches random's final 62 at 40 + 30 * 10 / 13 labels
    assert e["target"]["labels"] == pytest.approx(40 + 300 / 13)
    assert e["target"]["saving"] == pytest.approx(1 - (40 + 300 / 13) / 70)
    c1 = e["vs_baseline"]["cycles"][1]  # diffs 3, 4, 2: mean 3, sd 1
    assert c1["mean_diff"] == pytest.approx(3.0) and c1["ci95"] == pytest.approx(T_975_2 / math.sqrt(3)) and c1["resolved"]
    au = e["vs_baseline"]["aubc"]  # AUBC diffs 1.5, 2, 1: mean 1.5, sd 0.5
    assert au["mean_diff"] == pytest.approx(1.5) and au["ci95"] == pytest.approx(T_975_2 * 0.5 / math.sqrt(3)) and au["resolved"]

    c = g["coreset"]
    c1 = c["vs_baseline"]["cycles"][1]  # diffs -3, 1, -1: mean -1, sd 2
    assert c1["mean_diff"] == pytest.approx(-1.0) and c1["ci95"] == pytest.approx(T_975_2 * 2 / math.sqrt(3)) and not c1["resolved"]
    assert c["target"]["labels"] is None  # ends at 61% < 62%

    md = summary_markdown(summary)
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("| ")}
    assert "62.00 +- 2.00 (4.97)" in rows["random"]
    diff_rows = [line for line in md.splitlines() if line.startswith("| coreset | random |") or line.startswith("| entropy | random |")]
    assert len(diff_rows) == 2
    assert diff_rows[0].startswith("| entropy") and diff_rows[0].endswith("| better than random |")
    assert "-1.00 +- 4.97 n.r." in diff_rows[1] and diff_rows[1].endswith("| not resolved by the seeds |")

    # --target, and a partial run: its cycles count, its AUBC does not
    assert summarise(grid, target=60.0)["groups"][0]["target"]["labels"] == pytest.approx(40 + 30 * 8 / 10)
    (tmp_path / "out" / "coreset-seed2" / "results.jsonl").write_text(json.dumps({"n_labelled": 40, "test_acc": 0.54, "seconds_train": 1.0, "seconds_eval": 0.5, "seconds_select": 0.25}) + "\n")
    c = {x["group"]: x for x in summarise(grid)["groups"]}["coreset"]
    assert c["seeds_finished"] == [0, 1] and [x["n"] for x in c["cycles"]] == [3, 2] and c["aubc"]["n"] == 2
    assert c["vs_baseline"]["aubc"]["seeds"] == [0, 1]


def test_random_baseline_must_share_every_setting_but_the_strategy(tmp_path):
    """A variant's random baseline is the random group whose config differs
    only in the strategy: a random row fine-tuned longer (other variant
    settings, not a grid axis) is no baseline for a CoreSet row trained less."""
    grid_file = write_grid(
        tmp_path,
        grid={"seed": [0, 1]},
        variants={
            "coreset-short": ["strategy=coreset", "train.epochs=1"],
            "coreset-long": ["strategy=coreset", "train.epochs=2"],
            "random-long": ["strategy=random", "train.epochs=2"],
            "bald-long": ["strategy=bald", "strategy_options.passes=3", "train.epochs=2"],
        },
        run_name="{variant}-seed{seed}",
    )
    for v in ("coreset-short", "coreset-long", "random-long", "bald-long"):
        for k in (0, 1):
            fake_run(tmp_path / "out" / f"{v}-seed{k}", [0.5, 0.6 + 0.01 * k])
    g = {x["group"]: x for x in summarise(load_grid(grid_file))["groups"]}
    assert g["coreset-long"]["baseline"] == "random-long"
    assert g["bald-long"]["baseline"] == "random-long"  # strategy options do not matter
    assert g["coreset-short"]["baseline"] is None and g["coreset-short"]["vs_baseline"] is None
    assert g["coreset-short"]["target"] is None


def test_compare_pairs_any_two_groups_seed_by_seed(tmp_path):
    """``compare:`` pairs groups no random baseline covers (e.g. joint against
    supervised): hand-computed paired differences, cycles paired only while the
    label counts agree, AUBC only for equal schedules."""
    grid_file = write_grid(
        tmp_path,
        grid={"seed": [0, 1, 2]},
        variants={"entropy": ["strategy=entropy"], "coreset": ["strategy=coreset"], "small": ["strategy=coreset", "budget=20"]},
        run_name="{variant}-seed{seed}",
        compare=[["entropy", "coreset"], ["small", "entropy"]],
    )
    curves = {"entropy": [[0.50, 0.63], [0.52, 0.66], [0.54, 0.66]], "coreset": [[0.50, 0.60], [0.52, 0.62], [0.54, 0.63]]}
    for v, seeds in curves.items():
        for k, accs in enumerate(seeds):
            fake_run(tmp_path / "out" / f"{v}-seed{k}", accs)
    for k, accs in enumerate([[0.51, 0.58], [0.52, 0.60], [0.56, 0.61]]):
        fake_run(tmp_path / "out" / f"small-seed{k}", accs, n_labelled=(40, 60))
    grid = load_grid(grid_file)
    assert grid.compare == [("entropy", "coreset"), ("small", "entropy")]
    write_grid_file(grid)
    assert yaml.safe_load((tmp_path / "out" / "grid.yaml").read_text())["compare"] == [["entropy", "coreset"], ["small", "entropy"]]
    summary = summarise(grid)
    first, second = summary["comparisons"]
    assert (first["group"], first["vs"]) == ("entropy", "coreset")
    c0, c1 = first["cycles"]
    assert c0["mean_diff"] == pytest.approx(0.0) and c0["n"] == 3
    # cycle 1: 63-60, 66-62, 66-63 = 3, 4, 3: mean 10/3, sd sqrt(1/3)
    assert c1["mean_diff"] == pytest.approx(10 / 3) and c1["ci95"] == pytest.approx(T_975_2 * math.sqrt(1 / 3) / math.sqrt(3)) and c1["resolved"]
    # AUBC 56.5 / 59 / 60 against 55 / 57 / 58.5: diffs 1.5, 2, 1.5
    au = first["aubc"]
    assert au["mean_diff"] == pytest.approx(5 / 3) and au["ci95"] == pytest.approx(T_975_2 * math.sqrt(1 / 12) / math.sqrt(3)) and au["resolved"]
    # 40 / 60 labels against 40 / 70: only cycle 0 is paired, no AUBC difference
    assert len(second["cycles"]) == 1 and second["cycles"][0]["mean_diff"] == pytest.approx((1 + 0 + 2) / 3)
    assert second["aubc"] is None

    md = summary_markdown(summary)
    rows = [line for line in md.splitlines() if line.startswith("| entropy | coreset |") or line.startswith("| small | entropy |")]
    assert len(rows) == 2
    assert "+3.33 +- 1.43" in rows[0] and rows[0].endswith("| better than coreset |")
    assert "+1.00 +- " in rows[1] and rows[1].endswith("| schedules differ: no AUBC difference |")


THREAD_NOTE = (
    "Float sums in another order change a run's numbers (by 2.34 points on one CIFAR-10 seed in ssal's BENCHMARKS.md), "
    "so this difference holds that too; set `threads=` in the grid's `set` to compare like with like."
)


def test_comparisons_across_cpu_thread_counts_are_flagged(tmp_path):
    """A paired difference between runs that trained on different CPU thread
    counts holds the thread count's own effect (float sums in another order):
    the summary names such pairs, seed by seed, and only those. Runs on a GPU,
    and runs whose thread count is unknown, are not flagged; a run whose records
    predate the field counts with the threads of its own saved config, not the
    grid's."""
    grid_file = write_grid(
        tmp_path,
        set=[*TINY, "threads=1"],  # the records (or a run's saved config) say what each run had
        grid={"seed": [0, 1, 2]},
        variants={
            "random": ["strategy=random"],
            "coreset": ["strategy=coreset"],
            "entropy": ["strategy=entropy"],
            "margin": ["strategy=margin"],
            "old": ["strategy=least_confidence"],
        },
        run_name="{variant}-seed{seed}",
        compare=[["coreset", "entropy"], ["margin", "entropy"], ["old", "entropy"]],
    )
    for k in range(3):
        fake_run(tmp_path / "out" / f"random-seed{k}", [0.5, 0.6], device="cpu", cpu_threads=1)
        fake_run(tmp_path / "out" / f"entropy-seed{k}", [0.5, 0.62], device="cpu", cpu_threads=1)
        fake_run(tmp_path / "out" / f"coreset-seed{k}", [0.5, 0.61], device="cpu", cpu_threads=2 if k == 0 else 1)
        if k == 0:  # written before the record had the field, default threads: unknown
            fake_run(tmp_path / "out" / f"margin-seed{k}", [0.5, 0.61])
        else:
            fake_run(tmp_path / "out" / f"margin-seed{k}", [0.5, 0.61], device="cuda:0", cpu_threads=16)
        fake_run(tmp_path / "out" / f"old-seed{k}", [0.5, 0.61])  # records from before the field
    (tmp_path / "out" / "old-seed0" / "config.yaml").write_text("threads: 2\n")
    summary = summarise(load_grid(grid_file))
    g = {x["group"]: x for x in summary["groups"]}
    assert g["coreset"]["vs_baseline"]["threads_differ"] == {"seeds": [0], "group": [2], "vs": [1]}
    assert g["entropy"]["vs_baseline"]["threads_differ"] is None
    assert g["margin"]["vs_baseline"]["threads_differ"] is None
    assert g["old"]["vs_baseline"]["threads_differ"] == {"seeds": [0], "group": [2], "vs": [1]}
    first, second, third = summary["comparisons"]
    assert first["threads_differ"] == {"seeds": [0], "group": [2], "vs": [1]} and second["threads_differ"] is None
    assert third["threads_differ"] == {"seeds": [0], "group": [2], "vs": [1]}
    notes = [line for line in summary_markdown(summary).splitlines() if "different CPU thread counts" in line]
    assert notes == [
        "- **coreset vs random: different CPU thread counts** (2 against 1, seeds 0). " + THREAD_NOTE,
        "- **old vs random: different CPU thread counts** (2 against 1, seeds 0). " + THREAD_NOTE,
        "- **coreset vs entropy: different CPU thread counts** (2 against 1, seeds 0). " + THREAD_NOTE,
        "- **old vs entropy: different CPU thread counts** (2 against 1, seeds 0). " + THREAD_NOTE,
    ]


@pytest.mark.parametrize(
    "compare, needle",
    [
        ("a-b", "compare: expected a list of [group, other group] pairs"),
        ([["a"]], "compare[0]: expected [group, other group]"),
        ([["a", "zz"]], "compare[0]: unknown group 'zz' (groups: a, b, late)"),
        ([["a", "a"]], "compare[0]: compares 'a' with itself"),
        ([["a", "b"], ["a", "b"]], "compare[1]: [a, b] appears twice"),
        ([["a", "late"]], "compare[0]: 'a' and 'late' start at different label counts (40 vs 50)"),
    ],
)
def test_bad_compare_is_a_one_line_error(tmp_path, capsys, compare, needle):
    path = write_grid(
        tmp_path, "bad", variants={"a": ["strategy=random"], "b": ["strategy=coreset"], "late": ["initial=50"]}, run_name="{variant}-seed{seed}", compare=compare
    )
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssal: error: {path}: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"grid": {"seed": [0]}, "sedd": 1}, "unknown top-level key 'sedd'"),
        ({"grid": {"strategy": "random"}}, "grid.strategy: expected a list"),
        ({"grid": {"strategegy": ["random"]}}, "grid.strategegy: unknown config key 'strategegy'"),
        ({"grid": {"strategy": ["random", "nope"]}}, "grid.strategy: unknown strategy 'nope'"),
        ({"grid": {"budget": [30, -3]}}, "grid.budget: invalid value budget=-3"),
        ({"grid": {"seed": []}}, "grid.seed: empty list"),
        ({"grid": {"out": ["x"]}}, "grid.out"),
        ({"set": ["train.epoch=3"]}, "set: unknown config key 'train.epoch'"),
        ({"set": "budget=3"}, "set: expected a list"),
        ({"preset": "no-such-preset"}, "preset: unknown preset 'no-such-preset'"),
        ({"variants": {"ll": ["strategy_options.mode=last_layer", "bogus=1"]}}, "variants.ll: unknown config key 'bogus'"),
        ({"grid": {"seed": [0, 1]}, "run_name": "{strategy}"}, "run_name: two runs get the folder name 'random'"),
        ({"run_name": "{stratgy}-{seed}"}, "run_name: unknown field '{stratgy}'"),
        ({"grid": {"strategy": ["learning_loss"], "train.mode": ["joint"]}}, "run (strategy=learning_loss, train.mode=joint)"),
        ({"grid": {"strategy": ["ssl_loss_high"]}}, "use train.mode=joint, not supervised"),
        ({"grid": {"strategy": ["isal"], "train.mode": ["frozen"]}}, "needs the trained network"),
        ({"set": [*TINY, "strategy=typiclust", "strategy_options.knn=abc"]}, "invalid value strategy_options.knn=abc: must be an integer"),
    ],
)
def test_bad_grid_one_line_error_naming_file_and_field(tmp_path, capsys, doc, needle):
    doc = {"set": [*TINY, "strategy=random"], **doc}
    path = write_grid(tmp_path, "bad", **doc)
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ssal: error: {path}: ") and needle in err[0], err
    assert not (tmp_path / "out").exists()


def test_bad_yaml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("grid:\n  seed: [0, 1\n")
    assert main(["bench", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: not valid YAML" in err[0] and "line" in err[0]
    assert main(["bench", str(tmp_path / "nope.yaml")]) == 2
    assert "grid file not found" in capsys.readouterr().err
    path.write_text("- a\n- b\n")
    assert main(["bench", str(path)]) == 2
    assert "expected a mapping" in capsys.readouterr().err
    assert main(["bench", str(path), "--workers", "0"]) == 2


def test_bench_help_explains_the_schema(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    for word in ("grid:", "variants:", "seed: [0, 1, 2]", "--workers", "--summary-only", "--dry-run", "summary.md", "not resolved by the seeds"):
        assert word in text


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_grid_file_loads_and_expands(path: Path) -> None:
    """The example grids of BENCHMARKS.md stay valid as the config grows."""
    grid = load_grid(path)
    names = [r.name for r in grid.runs]
    assert names and len(names) == len(set(names))
    seeds = {0} if path.stem in SEED0_SCREENS else {0, 1, 2}
    assert {int(r.cfg.seed) for r in grid.runs} == seeds


#: grids that screen variants on one seed; a 3-seed grid follows up the best,
#: where one beats the baseline on validation accuracy
SEED0_SCREENS = {"cpu-joint-methods-cifar10", "cpu-joint-asym-cifar10", "cpu-joint-small-cifar10", "cpu-joint-small-methods-cifar10"}


def _flock_holder(path: Path) -> int | None:
    """The pid holding a flock on ``path``, from /proc/locks (Linux)."""
    import os

    ino = os.stat(path).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts:
            continue
        i = parts.index("FLOCK")
        if parts[i + 4].split(":")[-1] == str(ino):
            return int(parts[i + 3])
    return None


def _start_bench_until_both_workers_run(tmp_path) -> tuple:
    """A real `ssal bench --workers 2` of two 3-cycle runs, returned once each
    run's lock is held by a worker: (process, run0 folder, sets, grid file, lock files)."""
    import signal
    import subprocess
    import sys
    import time

    from ssal.bench import LOCK_FILE

    sets = [o for o in TINY if not o.startswith(("cycles=", "train.epochs="))] + ["cycles=3", "train.epochs=4", "threads=1"]
    grid = write_grid(tmp_path, set=sets, grid={"strategy": ["coreset"], "seed": [0, 1]})
    runs = [tmp_path / "out" / f"sample-supervised-coreset-seed{k}" for k in (0, 1)]
    locks = [r / LOCK_FILE for r in runs]
    cmd = [sys.executable, "-m", "ssal", "bench", str(grid), "--workers", "2"]
    # SIGINT at its default in the bench: a shell without job control starts
    # background jobs (a CI script's `... &`) with SIGINT ignored, and children inherit that
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if all(lk.exists() and _flock_holder(lk) not in (None, proc.pid) for lk in locks):
            break
        time.sleep(0.02)
    return proc, runs[0], sets, grid, locks


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to find the workers")
@pytest.mark.parametrize("sig, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_to_the_bench_alone_stops_its_workers(tmp_path, sig, code):
    """`kill <bench pid>` (SIGTERM, as a job scheduler sends) or SIGINT to the
    bench process alone must not leave orphaned workers training on: the bench
    stops them and exits 143 or 130 (Ctrl-C in a terminal also reaches the workers)."""
    import os
    import signal
    import time

    proc, _, _, _, locks = _start_bench_until_both_workers_run(tmp_path)
    deadline = time.time() + 120  # both runs past cycle 0: their training made tqdm's multiprocessing lock
    while time.time() < deadline and not all((lk.parent / "results.jsonl").exists() for lk in locks):
        time.sleep(0.05)
    workers = [_flock_holder(lk) for lk in locks]
    assert proc.poll() is None and None not in workers and proc.pid not in workers
    os.kill(proc.pid, getattr(signal, sig))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "leaked" not in out  # the stopped workers unwound (multiprocessing's resource tracker found nothing left)
    deadline = time.time() + 30
    while time.time() < deadline and any(_flock_holder(lk) is not None for lk in locks):
        time.sleep(0.05)
    assert [_flock_holder(lk) for lk in locks] == [None, None]  # no worker holds its run any more


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to find the worker")
def test_sigkilled_worker_is_reported_and_a_rerun_resumes_its_run(tmp_path, capsys):
    """A real worker process killed with SIGKILL mid-run (no clean-up at all):
    the bench reports it, and the next `ssal bench` resumes the run to the
    result of an uninterrupted one."""
    import os
    import signal
    import time

    proc, run0, sets, grid, locks = _start_bench_until_both_workers_run(tmp_path)
    victim, deadline = None, time.time() + 180
    while victim is None and time.time() < deadline and proc.poll() is None:
        res = run0 / "results.jsonl"
        if res.exists() and res.read_text().count("\n") >= 1:
            victim = _flock_holder(locks[0])
        time.sleep(0.02)
    assert victim is not None and victim != proc.pid
    os.kill(victim, signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "[fail] sample-supervised-coreset-seed0: worker killed by signal 9" in log
    assert 1 <= len(records_of(run0)) < 3

    assert main(["bench", str(grid)]) == 0
    assert "sample-supervised-coreset-seed0, resuming at cycle" in capsys.readouterr().out
    cfg = resolve_config(None, [*sets, "strategy=coreset", "seed=0", f"out={tmp_path / 'straight'}"])
    straight = run_experiment(cfg, progress=False, log=lambda s: None)
    assert strip_times(records_of(run0)) == strip_times(straight)
