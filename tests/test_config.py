from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from ssal.bench import load_grid
from ssal.config import preset_names, resolve_config, validate_against_pool
from ssal.errors import SsalError


def test_defaults_and_overrides():
    cfg = resolve_config(None, ["budget=7", "train.epochs=3", "subset=all", "train.milestones=[2,4]"])
    assert cfg.budget == 7 and cfg.train.epochs == 3 and cfg.subset is None
    assert list(cfg.train.milestones) == [2, 4]
    assert cfg.dataset == "sample" and cfg.out == "runs/sample-coreset-seed0"
    for key in ["dataset", "data_root", "model", "strategy", "initial", "budget", "cycles", "subset", "seed", "out"]:
        assert key in cfg
    for key in ["mode", "epochs", "batch_size", "lr"]:
        assert key in cfg.train


def test_presets_resolve():
    names = preset_names()
    assert {"mobyv2al-cifar10", "isal-cifar10", "cpu-cifar10", "cpu-fashionmnist"} <= set(names)
    for name in names:
        cfg = resolve_config(name, [])
        assert cfg.cycles >= 1
    moby = resolve_config("mobyv2al-cifar10", ["seed=3"])
    assert (moby.initial, moby.budget, moby.cycles, moby.model) == (5000, 2500, 7, "vgg16")
    assert list(moby.train.milestones) == [120, 160] and moby.seed == 3


def _grid_row_and_preset(tmp_path, grid_name: str, run_name: str, preset: str) -> tuple[dict, dict]:
    """The resolved config of one run of a benchmark grid, and ``preset`` with
    that run's dataset, seed, out and threads (what a grid row sets per run)."""
    grid = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "grids" / f"{grid_name}.yaml").read_text())
    grid["out"] = str(tmp_path / "runs")  # not the checkout's run folders
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    row = next(r for r in load_grid(tmp_path / "grid.yaml").runs if r.name == run_name)
    cfg = resolve_config(preset, [f"dataset={row.cfg.dataset}", f"seed={row.cfg.seed}", f"out={row.cfg.out}", f"threads={row.cfg.threads}"])
    return OmegaConf.to_container(row.cfg), OmegaConf.to_container(cfg)


@pytest.mark.parametrize(
    "preset, grid, run_name",
    [
        ("cpu-mobyv2al-cifar10", "cpu-ssl-modes-cifar10", "joint-coreset-seed0"),
        ("cpu-mobyv2al-fashionmnist", "cpu-ssl-modes-fashionmnist", "joint-coreset-seed1"),
        ("cpu-mobyv2al-imbalanced-cifar10", "cpu-mobyv2al-imbalanced-cifar10", "joint-coreset-seed2"),
    ],
)
def test_cpu_mobyv2al_twins_are_the_benchmarked_rows(tmp_path, preset, grid, run_name):
    """The CPU twins' comments quote a grid row of BENCHMARKS.md: each twin
    resolves to exactly that row's config (data_root aside: where the data is)."""
    from ssal.loop import _config_diff

    want, got = _grid_row_and_preset(tmp_path, grid, run_name, preset)
    got["data_root"] = want["data_root"]
    assert _config_diff(want, got) == []


def test_cpu_vicreg_preset_is_the_benchmarked_row(tmp_path, monkeypatch):
    """The numbers quoted in the preset's comment belong to one grid row of
    BENCHMARKS.md; the preset must resolve to exactly that row's config on a CPU
    like the one it was measured on (native bfloat16, where amp_cpu=auto is on)."""
    import ssal.train
    from ssal.loop import _config_diff

    want, got = _grid_row_and_preset(tmp_path, "cpu-ssl-modes-cifar10", "pretrain-vicreg120-coreset-60ep-seed0", "cpu-vicreg-cifar10")
    assert (got["train"]["amp_cpu"], got["ssl"]["amp_cpu"], want["train"]["amp_cpu"], want["ssl"]["amp_cpu"]) == ("auto", "auto", True, True)
    monkeypatch.setattr(ssal.train, "cpu_has_native_bfloat16", lambda: True)
    assert _config_diff(want, got) == []
    monkeypatch.setattr(ssal.train, "cpu_has_native_bfloat16", lambda: False)
    assert _config_diff(want, got) == ["ssl.amp_cpu", "train.amp_cpu"]
    for part in ("train", "ssl"):
        got[part]["amp_cpu"] = True
    assert got == want


@pytest.mark.parametrize(
    "args, needle",
    [
        (["budget=0"], "budget"),
        (["budget=abc"], "budget"),
        (["nonsense=1"], "nonsense"),
        (["train.lr=-1"], "train.lr"),
        (["train.schedule=weird"], "train.schedule"),
        (["device=gpu0"], "device"),
        (["budget"], "budget"),
        (["ssl.method=byoll"], "ssl.method=byoll"),  # even in supervised mode, which does not use it
    ],
)
def test_bad_values_name_the_key(args, needle):
    with pytest.raises(SsalError, match=needle):
        resolve_config(None, args)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(SsalError, match="unknown preset 'nope'"):
        resolve_config("nope", [])
    with pytest.raises(SsalError, match="not found"):
        resolve_config(str(tmp_path / "missing.yaml"), [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget: [unclosed\n")
    with pytest.raises(SsalError, match="bad.yaml"):
        resolve_config(str(bad), [])


def test_budget_larger_than_pool():
    cfg = resolve_config(None, ["initial=10", "budget=50", "cycles=3"])
    with pytest.raises(SsalError, match="budget=50"):
        validate_against_pool(cfg, 100)
    validate_against_pool(cfg, 110)


def test_class_caps_from_the_command_line() -> None:
    cfg = resolve_config(None, ["class_caps.0=30", "class_caps.3=5"])
    assert dict(cfg.class_caps) == {0: 30, 3: 5}


def test_initial_strategy_must_not_need_a_classifier() -> None:
    assert resolve_config(None, ["initial_strategy=typiclust"]).initial_strategy == "typiclust"
    with pytest.raises(SsalError, match="initial_strategy=entropy"):
        resolve_config(None, ["initial_strategy=entropy"])
