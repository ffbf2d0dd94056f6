"""The benchmark summary of benchmarks/cpu_protocol.py on hand-made results."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("cpu_protocol", Path(__file__).parents[1] / "benchmarks" / "cpu_protocol.py")
cpu_protocol = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_protocol)


def test_labels_to_reach_interpolates_between_cycles():
    f = cpu_protocol.labels_to_reach
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 65.0) == 2500
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 45.0) == 1000
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 70.0) == 3000
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 70.5) is None


def test_summary_reports_mean_std_and_the_saving_against_random(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_protocol, "plot_grid", lambda *a, **k: None)
    curves = {"random": [[0.50, 0.60], [0.52, 0.62]], "better": [[0.50, 0.66], [0.52, 0.68]]}
    for name, seeds in curves.items():
        for s, accs in enumerate(seeds):
            d = tmp_path / f"{name}-seed{s}"
            d.mkdir()
            recs = [{"n_labelled": 1000 * (c + 1), "test_acc": a, "seconds_train": 1.0, "seconds_eval": 0.0, "seconds_select": 0.0} for c, a in enumerate(accs)]
            (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = cpu_protocol.summarise(tmp_path)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ") and "variant" not in line}
    assert "51.00 +- 1.41" in rows["random"] and "61.00 +- 1.41" in rows["random"]
    # random ends at 61%; "better" reaches 61% at 1000 + 1000 * (61 - 51) / (67 - 51) = 1625 labels: 19% fewer than 2000
    assert rows["better"].rstrip().endswith("1625 (19%) |")
    assert rows["random"].rstrip().endswith("2000 (0%) |")
