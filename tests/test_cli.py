"""Bad input: one line on stderr naming the problem, exit 2, nothing written."""

import subprocess
import sys

import pytest
from PIL import Image

from ssal.cli import main


def call(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def make_folder(root, corrupt=False):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (8, 8), (i * 20, 50, 100)).save(d / f"{i}.png")
    if corrupt:
        (root / "train" / "cat" / "broken.png").write_bytes(b"not an image at all")


@pytest.mark.parametrize(
    "args, needle",
    [
        (["dataset=nope"], "nope"),
        (["strategy=nope"], "nope"),
        (["model=nope"], "nope"),
        (["model=vgg16", "model_width=8"], "width"),
        (["--config", "no-such-preset"], "no-such-preset"),
        (["dataset=imagefolder:/no/such/folder"], "/no/such/folder"),
        (["budget=100000"], "budget"),
        (["budget=-3"], "budget"),
    ],
)
def test_bad_input_one_line_no_output(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code, _, err = call(["run", "-q", f"out={out}", *args], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssal: error:") and needle in lines[0]
    assert not out.exists()


def test_corrupt_image_named(tmp_path, capsys):
    make_folder(tmp_path / "imgs", corrupt=True)
    out = tmp_path / "run"
    code, _, err = call(["run", "-q", f"out={out}", f"dataset=imagefolder:{tmp_path / 'imgs'}", f"cache_dir={tmp_path / 'c'}"], capsys)
    assert code == 2 and "broken.png" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_help_explains(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for word in ["--resume", "key=value", "strategy", "results.jsonl", "curve.png"]:
        assert word in text


def test_console_entry_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ssal.cli", "run", "-q", "strategy=bogus", f"out={tmp_path / 'x'}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "bogus" in proc.stderr


def test_print_config_and_list(capsys):
    code, out, _ = call(["run", "--print-config", "budget=9"], capsys)
    assert code == 0 and "budget: 9" in out
    code, out, _ = call(["list", "strategies"], capsys)
    assert code == 0 and "coreset" in out and "entropy" in out
    code, out, _ = call(["list", "presets"], capsys)
    assert "mobyv2al-cifar10" in out


