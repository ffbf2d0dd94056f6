"""`ssal report` and the plots behind it, on tiny real runs of the embedded sample.

The main checks parse the HTML: every plot is an inlined PNG, nothing refers to
another file or site, every internal link resolves, and the Markdown twin's
images exist. A Chromium screenshot check runs only where a chromium binary is.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ssal.cli import main
from ssal.config import resolve_config
from ssal.errors import SsalError
from ssal.loop import run_experiment
from ssal.plots import (
    EMBED_LABELLED,
    EMBED_PICKED,
    EMBED_POOL,
    embedding_figure,
    grid_figure,
    heatmap_figure,
    mean_picks,
    picks_figure,
    plot_grid,
    plot_heatmap,
    plot_picks,
)
from ssal.report import find_runs, group_runs, read_results, write_report

TINY = [
    "initial=40",
    "budget=30",
    "cycles=2",
    "train.epochs=1",
    "train.min_steps=0",
    "train.batch_size=32",
    "model_width=8",
    "plot=false",
    "threads=1",
]
POINTS = 300  # embedding points: t-SNE of 300 points takes about a second


def _run(out: Path, *extra: str) -> list[dict]:
    return run_experiment(resolve_config(None, [*TINY, f"out={out}", *extra]), progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    """A grid folder of three tiny runs in two groups: random (seeds 0 and 1) and entropy (seed 0)."""
    root = tmp_path_factory.mktemp("grid")
    _run(root / "random-seed0", "strategy=random", "seed=0")
    _run(root / "random-seed1", "strategy=random", "seed=1")
    _run(root / "entropy-seed0", "strategy=entropy", "seed=0")
    return root


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


class _Doc(HTMLParser):
    """Tags, ids, links and resource references of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.tags: list[str] = []
        self.figures: dict[str, list[str]] = {}  # figure id -> srcs of the imgs inside it
        self.inline_svgs = 0
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])
        if tag == "figure":
            self._figure = a.get("id")
            self.figures[self._figure] = []
        if tag == "img" and self._figure is not None:
            self.figures[self._figure].append(a.get("src", ""))
        if tag == "svg":
            self.inline_svgs += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None


def check_html(path: Path, expected_plots: list[str]) -> _Doc:
    """Every expected plot is a figure with an inlined, decodable PNG; no
    external or relative resource; every #anchor resolves."""
    text = path.read_text()
    doc = _Doc()
    doc.feed(text)
    for pid in expected_plots:
        assert pid in doc.figures, f"plot {pid} missing"
        srcs = doc.figures[pid]
        assert len(srcs) == 1 and srcs[0].startswith("data:image/png;base64,")
        assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for src in doc.srcs:
        assert src.startswith("data:"), f"resource not inlined: {src[:60]}"
    for href in doc.hrefs:
        assert href.startswith("#"), f"link out of the page: {href}"
        assert href[1:] in doc.ids, f"broken anchor {href}"
    assert "script" not in doc.tags and "link" not in doc.tags and "iframe" not in doc.tags
    assert not re.search(r"url\(|@import|https?://", text.split("<body", 1)[0]), "external reference in the head"
    return doc


def rows(text: str) -> list[list[str]]:
    """The cell texts of every table row of an HTML page."""
    return [re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", text)]


def cells(text: str) -> set[str]:
    return {c for r in rows(text) for c in r}


def check_markdown(md: Path) -> list[Path]:
    """The Markdown twin's images and links point to files that exist; returns the images."""
    text = md.read_text()
    images = [md.parent / p for p in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]
    links = [md.parent / p for p in re.findall(r"(?<!!)\[[^\]]*\]\(([^)#][^)]*)\)", text)]
    assert images
    for p in images + links:
        assert p.is_file(), f"{md} references missing {p}"
    for p in images:
        assert p.suffix == ".png" and p.read_bytes()[:4] == b"\x89PNG"
    return images


# -- reports ------------------------------------------------------------------------------
def test_report_of_one_run(grid, tmp_path):
    run = grid / "random-seed0"
    html_path, md_path = write_report(run, tmp_path / "r" / "report.html", embedding_points=POINTS)
    plots = ["plot-curves", "plot-picks", "plot-per-class", "plot-embedding-random-seed0"]
    doc = check_html(html_path, plots)
    assert {"overview", "results", "plots", "compute", "environment", "configs", "notes"} <= doc.ids
    text = html_path.read_text()
    recs = _records(run)
    # the per-cycle table, the config, the environment and the compute time
    table = rows(text)
    for r in recs:
        assert [str(r["cycle"]), str(r["n_labelled"]), f"{100 * r['test_acc']:.2f}", f"{100 * r['val_acc']:.2f}"] in [x[:4] for x in table]
    assert "<details><summary>random-seed0</summary><pre>" in text and "budget: 30" in text
    state = json.loads((run / "state.json").read_text())
    assert state["torch"] in text and state["ssal_version"] in text
    total = sum(r["seconds_train"] + r["seconds_eval"] + r["seconds_select"] for r in recs)
    assert ["total", "1", *(f"{sum(r[k] for r in recs):.1f}" for k in ("seconds_train", "seconds_eval", "seconds_select"))] in [
        x[:5] for x in table
    ]
    assert f"{total:.1f}" in cells(text)
    images = check_markdown(md_path)
    assert {p.stem for p in images} == {"curves", "picks", "per_class_acc", "embedding-random-seed0"}
    assert all(p.with_suffix(".svg").is_file() for p in images)
    assert "budget: 30" in md_path.read_text()


def test_report_of_a_grid_and_its_summary(grid, tmp_path):
    html_path, md_path = write_report(grid, tmp_path / "g.html", embedding_points=POINTS)
    assert md_path == tmp_path / "g.md"
    check_html(html_path, ["plot-curves", "plot-picks", "plot-per-class", "plot-embedding-random", "plot-embedding-entropy"])
    check_markdown(md_path)
    text = html_path.read_text()
    # mean +- sample std over the two random seeds, per cycle
    a, b = _records(grid / "random-seed0"), _records(grid / "random-seed1")
    for c in range(2):
        x, y = 100 * a[c]["test_acc"], 100 * b[c]["test_acc"]
        std = abs(x - y) / math.sqrt(2)
        assert f"{(x + y) / 2:.2f} ± {std:.2f}" in cells(text)
    for name in ("random-seed0", "random-seed1", "entropy-seed0"):
        assert f"<summary>{name}</summary><pre>" in text  # its config
    # an aggregate written by the benchmark is shown, and its grouping used
    g2 = tmp_path / "grid2"
    shutil.copytree(grid, g2, ignore=shutil.ignore_patterns("model.pt"))
    (g2 / "summary.md").write_text("# Grid tiny\n\n| group | cycle 0 |\n|---|---:|\n| all | 12.34 |\n")
    summary = {"grid": "tiny", "groups": [{"group": "everything", "runs": ["entropy-seed0", "random-seed0", "random-seed1"]}]}
    (g2 / "summary.json").write_text(json.dumps(summary))
    # records written before they had a "mode" field: the saved config fills in
    old = g2 / "entropy-seed0"
    (old / "results.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "mode"}) + "\n" for r in _records(old)))
    html2, md2 = write_report(g2)
    assert html2 == g2 / "report.html" and md2 == g2 / "report.md"
    doc = check_html(html2, ["plot-curves", "plot-picks", "plot-per-class"])
    t2 = html2.read_text()
    assert ["all", "12.34"] in rows(t2)  # summary.md, its table rendered
    assert ["train mode", "supervised"] in rows(t2)
    assert "summary.json: groups" in t2 and ["everything", "entropy-seed0, random-seed0, random-seed1"] in rows(t2)  # summary.json
    assert ["everything", "3"] in [r[:2] for r in rows(t2)]  # the runs grouped as summary.json says
    assert not any(k.startswith("plot-embedding") for k in doc.figures)
    assert t2.count("embedding of ") == 1 and "skipped: no model.pt" in t2
    assert "| all | 12.34 |" in md2.read_text()
    check_markdown(md2)


def test_bad_input_is_one_line_naming_the_path(tmp_path, grid, capsys):
    with pytest.raises(SsalError, match=re.escape(str(tmp_path / "nope"))):
        write_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(SsalError, match="holds no runs"):
        write_report(empty)
    bad = tmp_path / "bad"
    shutil.copytree(grid / "random-seed0", bad / "random-seed0")
    with open(bad / "random-seed0" / "results.jsonl", "a") as f:
        f.write('{"cycle": 2, "n_labelled": 100, "test_acc"\n')
    with pytest.raises(SsalError, match=r"random-seed0/results\.jsonl: line 3 is not valid JSON"):
        write_report(bad)
    (bad / "random-seed0" / "results.jsonl").write_text("")
    with pytest.raises(SsalError, match="holds no cycle record"):
        read_results(bad / "random-seed0" / "results.jsonl")
    assert not (bad / "report.html").exists()
    # through the command line: exit 2, one line on stderr
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope" in err and "Traceback" not in err
    assert main(["report", str(grid / "entropy-seed0"), "--out", str(tmp_path / "cli.html"), "--no-embedding", "-q"]) == 0
    assert (tmp_path / "cli.html").is_file() and (tmp_path / "cli.md").is_file()
    assert "embedding plots skipped (--no-embedding)" in (tmp_path / "cli.html").read_text()


def test_grouping_by_seed_suffix(grid):
    kind, runs, _ = find_runs(grid)
    assert kind == "grid" and [r.name for r in runs] == ["entropy-seed0", "random-seed0", "random-seed1"]
    assert {k: [r.name for r in v] for k, v in group_runs(runs).items()} == {
        "entropy": ["entropy-seed0"],
        "random": ["random-seed0", "random-seed1"],
    }
    kind, runs, _ = find_runs(grid / "random-seed1")
    assert kind == "run" and len(runs) == 1


# -- plots --------------------------------------------------------------------------------
def test_plot_artists_match_the_records(grid, tmp_path):
    groups = {
        "random": [_records(grid / "random-seed0"), _records(grid / "random-seed1")],
        "entropy": [_records(grid / "entropy-seed0")],
    }
    # learning curves: one line and one std band per group; PNG and SVG written
    fig = grid_figure(groups)
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    mean = [100 * (a["test_acc"] + b["test_acc"]) / 2 for a, b in zip(*groups["random"])]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), mean)
    written = plot_grid(groups, tmp_path / "curves.png")
    assert [p.name for p in written] == ["curves.png", "curves.svg"]
    assert written[0].read_bytes()[:4] == b"\x89PNG" and "<svg" in written[1].read_text()[:500]

    # picks: one stacked bar per class and selecting cycle; the bars add up to the picks
    recs = groups["entropy"][0]
    cycles, picks = mean_picks([recs])
    assert cycles == [0] and picks.tolist() == [recs[0]["picked_per_class"]]
    fig = picks_figure({"entropy": [recs]})
    bars = fig.axes[0].patches
    assert len(bars) == len(recs[0]["picked_per_class"])
    assert sum(b.get_height() for b in bars) == recs[0]["n_picked"] == 30
    assert [p.suffix for p in plot_picks(groups, tmp_path / "picks.png")] == [".png", ".svg"]

    # per-class heatmap: the image is per_class_acc (classes x cycles, in %)
    fig = heatmap_figure({"entropy": [recs]})
    data = np.asarray(fig.axes[0].images[0].get_array(), dtype=float)
    np.testing.assert_allclose(data, 100 * np.array([r["per_class_acc"] for r in recs], dtype=float).T)
    fig = heatmap_figure(groups)
    expected = 100 * np.nanmean(np.array([[r["per_class_acc"] for r in rs] for rs in groups["random"]], dtype=float), axis=0).T
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array(), dtype=float), expected)
    assert [p.suffix for p in plot_heatmap(groups, tmp_path / "h.png")] == [".png", ".svg"]

    # embedding: one scatter per kind, sized by the kind's count
    kind = np.array([EMBED_POOL] * 5 + [EMBED_LABELLED] * 3 + [EMBED_PICKED] * 2)
    fig = embedding_figure(np.random.default_rng(0).normal(size=(10, 2)), kind, np.array([-1] * 5 + [0, 1, 2, 3, 4]))
    assert [c.get_offsets().shape[0] for c in fig.axes[0].collections] == [5, 3, 2]


# -- rendering in a real browser -------------------------------------------------------------
def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary")
def test_report_renders_in_headless_chromium(grid, tmp_path):
    from PIL import Image

    html_path, _ = write_report(grid / "random-seed1", tmp_path / "report.html", embedding=False)
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            html_path.resolve().as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.is_file()
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[:2] == (2400, 1280)
    ink = (im < 200).any(axis=2)
    assert ink.mean() > 0.02  # text, tables and plots, not a blank page
    assert ink[1200:].mean() > 0.01  # the plots further down rendered too
    assert len(np.unique(im.reshape(-1, 3)[::7], axis=0)) > 50  # colour plots, not an error page
