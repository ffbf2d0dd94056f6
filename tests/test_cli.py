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
        # a strategy the mode cannot serve is refused before cycle 0 trains
        (["strategy=ssl_loss_high", "cycles=2"], "use train.mode=joint, not supervised"),
        (["strategy=isal", "train.mode=frozen"], "needs the trained network"),
        # wrong option types name the key and the value
        (["train.mode=joint", "ssl.options.queue_size=abc"], "invalid value ssl.options.queue_size=abc: must be an integer"),
        (["train.mode=joint", "ssl.options.symmetric=maybe"], "ssl.options.symmetric=maybe: must be true or false"),
        (["strategy=typiclust", "strategy_options.knn=1.5"], "strategy_options.knn=1.5: must be an integer"),
        # joint PCL: 20 labelled + 20 unlabelled images cannot make 200 clusters; caught before training
        (["train.mode=joint", "ssl.method=pcl", "initial=20", "budget=10", "cycles=2"], "set it to auto"),
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


def test_unavailable_device_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """device=cuda on a machine without CUDA (or cuda:N past the last GPU) fails
    before anything is written, not with a driver traceback mid-run."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "run"
    code, _, err = call(["run", "-q", f"out={out}", "device=cuda"], capsys)
    assert code == 2 and err.strip() == "ssal: error: invalid value device=cuda: CUDA is not available on this machine; use device=cpu or device=auto"
    assert not out.exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code, _, err = call(["run", "-q", f"out={out}", "device=cuda:2"], capsys)
    assert code == 2 and "device=cuda:2: this machine has 2 CUDA device(s), cuda:0 to cuda:1" in err
    assert not out.exists()
