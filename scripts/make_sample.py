#!/usr/bin/env python3
"""Build the embedded ``sample`` dataset: a stratified Fashion-MNIST subset.

Takes ``--train-per-class`` (600) train and ``--test-per-class`` (100) test
images of every class by a seeded random choice (``--seed`` 0), keeps them in
their original order, and writes ``src/ssal/data/sample/fashion_mnist_sample.npz``
with uint8 arrays ``x_train`` (N, 28, 28), ``y_train`` (N,), ``x_test``,
``y_test`` and the string array ``classes``. The zip is written with fixed
timestamps, so the same inputs give a byte-identical file.

    python scripts/make_sample.py --source /work/shared/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from ssal.data.datasets import FASHION_MNIST_CLASSES, find_fashion_mnist_files, read_idx  # noqa: E402

DEFAULT_OUT = REPO / "src" / "ssal" / "data" / "sample" / "fashion_mnist_sample.npz"


def stratified_pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``per_class`` random images of every class (without replacement)."""
    picks = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images, need {per_class}")
        picks.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` equivalent with fixed zip timestamps (reproducible bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="/work/shared/data/fashion-mnist", help="folder with the idx(.gz) files")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    files = find_fashion_mnist_files(args.source)
    if files is None:
        raise SystemExit(f"no Fashion-MNIST idx files in '{args.source}'")
    x_tr, y_tr = read_idx(files["train_images"]), read_idx(files["train_labels"])
    x_te, y_te = read_idx(files["test_images"]), read_idx(files["test_labels"])
    rng = np.random.default_rng(args.seed)
    tr = stratified_pick(y_tr, args.train_per_class, rng)
    te = stratified_pick(y_te, args.test_per_class, rng)
    write_npz(
        args.out,
        {
            "x_train": x_tr[tr],
            "y_train": y_tr[tr],
            "x_test": x_te[te],
            "y_test": y_te[te],
            "classes": np.array(FASHION_MNIST_CLASSES),
        },
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {len(tr)} train + {len(te)} test images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
