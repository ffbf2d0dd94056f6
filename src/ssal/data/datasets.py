"""``load_dataset``: every dataset ssal knows, decoded once into :class:`ImageData`.

Names
-----
``sample`` (default)
    600 train + 100 test images per class of Fashion-MNIST (7,000 images,
    28x28x1), embedded in the package (``ssal/data/sample/``). No data_root, no
    network.
``cifar10``, ``cifar100``, ``svhn``
    torchvision's standard files under ``data_root`` (``cifar-10-batches-py/``,
    ``cifar-100-python/``, ``{train,test}_32x32.mat``). Missing files are
    downloaded there by torchvision when online; offline, a missing file is an
    SsalError naming data_root and the expected files. torchvision's archive
    (e.g. ``cifar-10-python.tar.gz``) in data_root is extracted offline.
    Default data_root: ``<cache_dir>/datasets``.
``fashionmnist``
    The four idx files (``train-images-idx3-ubyte`` etc., raw or ``.gz``) read
    with numpy from the first of: ``data_root`` itself,
    ``data_root/FashionMNIST/raw`` (torchvision's layout) or
    ``data_root/fashion-mnist``. Without data_root: Debian's
    ``dataset-fashion-mnist`` location ``/usr/share/datasets/fashion-mnist``,
    then ``<cache_dir>/datasets``. ``.gz`` files are decompressed in memory, so
    a read-only source is never written to. Downloads as above.
``imagefolder:<path>``
    Your own class folders; see :mod:`ssal.data.imagefolder`.

Everything except ``sample`` is cached after the first decode (see
:mod:`ssal.data.cache`).
"""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ssal.data.cache import cached, fingerprint_files, resolve_cache_dir
from ssal.data.imagefolder import load_imagefolder
from ssal.data.types import ImageData
from ssal.errors import SsalError

DATASET_NAMES: tuple[str, ...] = ("sample", "cifar10", "cifar100", "svhn", "fashionmnist")
"""Names accepted by :func:`load_dataset`, besides ``imagefolder:<path>``."""

FASHION_MNIST_CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLE_FILE = Path(__file__).resolve().parent / "sample" / "fashion_mnist_sample.npz"

# torchvision class name, sub-folder, files inside it.
_TORCHVISION: dict[str, tuple[str, str, list[str]]] = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"]),
    "svhn": ("SVHN", "", ["train_32x32.mat", "test_32x32.mat"]),
}
_DOWNLOAD_TIMEOUT_S = 60.0


def _unknown(name: str) -> SsalError:
    return SsalError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASET_NAMES)} or imagefolder:<path>")


def load_dataset(
    name: str,
    data_root: str | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> tuple[ImageData, ImageData]:
    """Load ``(train, test)`` for a dataset name (see the module doc for names and sources).

    ``data_root``: folder of the standard files (ignored by ``sample`` and
    ``imagefolder:``); ``cache_dir``: decoded-tensor cache (default
    ``$SSAL_CACHE`` or ``~/.cache/ssal``); ``progress``: show a progress bar
    while decoding image folders.
    """
    if not isinstance(name, str):
        raise _unknown(str(name))
    stripped = name.strip()
    if stripped[:12].lower() == "imagefolder:":
        return load_imagefolder(stripped[12:], cache_dir=cache_dir, progress=progress)
    key = stripped.lower()
    if key == "sample":
        return load_sample()
    if key == "fashionmnist":
        return _load_fashionmnist(data_root, cache_dir)
    if key in _TORCHVISION:
        return _load_torchvision(key, data_root, cache_dir)
    raise _unknown(name)


# --------------------------------------------------------------------- sample
def load_sample(path: str | os.PathLike[str] | None = None) -> tuple[ImageData, ImageData]:
    """The embedded Fashion-MNIST sample (or an ``.npz`` of the same form at ``path``)."""
    file = Path(path) if path is not None else SAMPLE_FILE
    if not file.is_file():
        raise SsalError(f"embedded sample '{file}' is missing; reinstall ssal")
    try:
        with np.load(file, allow_pickle=False) as z:
            classes = [str(c) for c in z["classes"]]
            train = ImageData(
                torch.from_numpy(z["x_train"]).unsqueeze(1), torch.from_numpy(z["y_train"]).long(), classes
            )
            test = ImageData(
                torch.from_numpy(z["x_test"]).unsqueeze(1), torch.from_numpy(z["y_test"]).long(), list(classes)
            )
    except (OSError, KeyError, ValueError) as err:
        raise SsalError(f"embedded sample '{file}' is unreadable ({err}); reinstall ssal") from err
    return train, test


# ------------------------------------------------------------------------ idx
def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (raw or ``.gz``) of unsigned bytes into a numpy array."""
    p = Path(path)
    try:
        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise SsalError(f"cannot read idx file '{p}': {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SsalError(f"'{p}' is not an idx file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SsalError(f"idx file '{p}' is truncated")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise SsalError(f"idx file '{p}' holds {len(raw) - header} bytes of data, header says {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_fashion_mnist_files(root: str | os.PathLike[str]) -> dict[str, Path] | None:
    """The four Fashion-MNIST idx files (raw preferred over ``.gz``) in one folder near ``root``."""
    base = Path(root).expanduser()
    for folder in (base, base / "FashionMNIST" / "raw", base / "fashion-mnist"):
        found: dict[str, Path] = {}
        for key, stem in FASHION_MNIST_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


def _expected_fashion() -> str:
    return ", ".join(f"{stem}[.gz]" for stem in FASHION_MNIST_FILES.values())


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(name: str, root: Path, where: str, expected: str) -> None:
    """Let torchvision download ``name`` into ``root``; failure -> SsalError naming the files."""
    import torchvision.datasets as tvd

    cls_name = "FashionMNIST" if name == "fashionmnist" else _TORCHVISION[name][0]
    cls = getattr(tvd, cls_name)
    try:
        with _socket_timeout(_DOWNLOAD_TIMEOUT_S):
            root.mkdir(parents=True, exist_ok=True)
            if name == "svhn":
                for split in ("train", "test"):
                    cls(str(root), split=split, download=True)
            else:
                cls(str(root), train=True, download=True)
                cls(str(root), train=False, download=True)
    except Exception as err:  # no network, unwritable root, bad archive...
        raise SsalError(
            f"{name}: no dataset files in {where} (expected {expected}) and the download failed "
            f"({type(err).__name__}: {err}); put the files there or go online"
        ) from err


# --------------------------------------------------------------- fashionmnist
def _load_fashionmnist(data_root: str | None, cache_dir: str | None) -> tuple[ImageData, ImageData]:
    if data_root:
        root = Path(data_root).expanduser()
        files = find_fashion_mnist_files(root)
        where = f"'{root}'"
    else:
        root = resolve_cache_dir(cache_dir) / "datasets"
        files = find_fashion_mnist_files(DEBIAN_FASHION_MNIST_DIR) or find_fashion_mnist_files(root)
        where = f"'{DEBIAN_FASHION_MNIST_DIR}' (Debian package dataset-fashion-mnist) or '{root}'"
    if files is None:
        _download("fashionmnist", root, where, _expected_fashion())
        files = find_fashion_mnist_files(root)
        if files is None:
            raise SsalError(f"fashionmnist: download into '{root}' left no files {_expected_fashion()}")
    found = files
    source = str(found["train_images"].resolve().parent)

    def build() -> tuple[ImageData, ImageData]:
        arrays = {key: read_idx(p) for key, p in found.items()}
        splits = []
        for split in ("train", "test"):
            x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                raise SsalError(
                    f"fashionmnist: '{found[f'{split}_images']}' {x.shape} and "
                    f"'{found[f'{split}_labels']}' {y.shape} do not match"
                )
            if y.size and int(y.max()) >= len(FASHION_MNIST_CLASSES):
                raise SsalError(f"fashionmnist: '{found[f'{split}_labels']}' has label {int(y.max())} > 9")
            splits.append(
                ImageData(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long(), list(FASHION_MNIST_CLASSES))
            )
        return splits[0], splits[1]

    return cached(cache_dir, "fashionmnist", source, fingerprint_files(found.values()), build)


# ------------------------------------------------------- cifar10/cifar100/svhn
def _load_torchvision(name: str, data_root: str | None, cache_dir: str | None) -> tuple[ImageData, ImageData]:
    cls_name, sub, names = _TORCHVISION[name]
    root = Path(data_root).expanduser() if data_root else resolve_cache_dir(cache_dir) / "datasets"
    if sub and root.name == sub and not (root / sub).is_dir():
        root = root.parent  # data_root named the dataset's own folder
    expected = [root / sub / f if sub else root / f for f in names]
    listing = ", ".join(str(p.relative_to(root)) for p in expected)
    if not all(p.is_file() for p in expected):
        _download(name, root, f"'{root}'", listing)
        if not all(p.is_file() for p in expected):
            raise SsalError(f"{name}: download into '{root}' left no files {listing}")
    source = str(root.resolve())

    def build() -> tuple[ImageData, ImageData]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        out = []
        try:
            for train in (True, False):
                if name == "svhn":
                    ds = cls(str(root), split="train" if train else "test", download=False)
                    images = torch.from_numpy(np.ascontiguousarray(ds.data))  # (N, 3, 32, 32)
                    labels = torch.from_numpy(np.asarray(ds.labels)).long()
                    classes = [str(d) for d in range(10)]
                else:
                    ds = cls(str(root), train=train, download=False)
                    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
                    labels = torch.tensor(ds.targets, dtype=torch.long)
                    classes = list(ds.classes)
                out.append(ImageData(images, labels, classes))
        except (RuntimeError, OSError, ValueError) as err:
            raise SsalError(f"{name}: the files in '{root}' are corrupt or incomplete ({err})") from err
        return out[0], out[1]

    return cached(cache_dir, name, source, fingerprint_files(expected), build)
