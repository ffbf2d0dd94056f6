"""Your own images: ``imagefolder:<path>`` with one sub-folder per class.

Layout and rules (also in the user docs):

* ``<path>/train/<class>/...`` and ``<path>/test/<class>/...``: those are the
  splits. Classes are the sorted names of the train class folders; a test
  class folder that is not a train class is an error; a class may be absent
  from test.
* ``<path>/<class>/...`` (no ``train``/``test``): a deterministic stratified
  80/20 train/test split, seeded by 0 (20% of every class, rounded so the total
  test count is ``round(0.2 * N)``).
* A ``train`` folder without ``test`` (or the reverse) is an error.
* Images are found recursively inside each class folder by file extension
  (every extension Pillow can open: .jpg, .png, .bmp, .gif, .tif, .webp, ...);
  hidden files and other files are ignored. Order: sorted paths.
* Size: every image is decoded to the size of the first image (first class,
  first file of train); others are resized to it (bilinear) and a warning
  says how many were resized.
* Channels: 1 if every image is grayscale, else 3 (RGB; grayscale images are
  replicated into 3 channels; alpha is dropped; palette, CMYK etc. become RGB;
  16-bit grayscale is scaled to 8 bits).
* A corrupt or unreadable image raises SsalError naming the file; a missing
  path raises SsalError naming it.

Decoding runs in a multiprocessing pool of up to ``os.cpu_count()`` processes
(fewer for small folders) and the result is cached (see :mod:`ssal.data.cache`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ssal.data.cache import cached, fingerprint_tree
from ssal.data.splits import split_validation
from ssal.data.types import ImageData
from ssal.errors import SsalError

TEST_FRACTION = 0.2
"""Share of each class put in test when a folder has no train/test split."""
SPLIT_SEED = 0
"""Seed of that split (fixed so the split never changes between runs)."""
_MIN_PER_WORKER = 1000
_CHUNK = 500
_STUB_FORMATS = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF", "PDF"}


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _STUB_FORMATS
    )


IMAGE_EXTENSIONS = _image_extensions()


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _to_array(im: Image.Image) -> tuple[bool, np.ndarray]:
    """Decode a PIL image to (is_gray, uint8 array HxW or HxWx3)."""
    mode = im.mode
    if mode == "RGB":
        return False, np.asarray(im)
    if mode == "L":
        return True, np.asarray(im)
    if mode in ("1", "LA", "La"):
        return True, np.asarray(im.convert("L"))
    if mode.startswith("I;16"):  # 16-bit grayscale: scale 0..65535 to 0..255
        return True, np.rint(np.asarray(im).astype(np.float64) / 257.0).astype(np.uint8)
    if mode in ("I", "F"):  # 32-bit: 16-bit range if it exceeds 255, else 8-bit
        a = np.asarray(im).astype(np.float64)
        if a.size and a.max() > 255:
            a = a / 257.0
        return True, np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return False, np.asarray(im.convert("RGB"))


def _decode_one(task: tuple[int, str, tuple[int, int] | None]) -> tuple[int, bool, np.ndarray | None, bool, str | None]:
    """Worker: decode one file to (index, is_gray, array, was_resized, error message)."""
    i, path, size = task
    try:
        with Image.open(path) as im:
            im.load()
            gray, arr = _to_array(im)
        resized = size is not None and (arr.shape[1], arr.shape[0]) != size
        if resized:
            arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR))
        return i, gray, arr, resized, None
    except Exception as err:  # any decoder failure is reported against the file
        return i, False, None, False, f"{type(err).__name__}: {err}"


def _list_images(class_dir: Path) -> list[str]:
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
                files.append(os.path.join(dirpath, f))
    files.sort()
    return files


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _scan_split(root: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """All image files under ``root/<class>`` with their labels (absent class folders allowed)."""
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        cdir = root / cls
        if not cdir.is_dir():
            continue
        found = _list_images(cdir)
        if not found:
            raise SsalError(f"class folder '{cdir}' holds no image files")
        files.extend(found)
        labels.extend([label] * len(found))
    return files, labels


def _decode_chunk(
    task: tuple[int, list[str], tuple[int, int]],
) -> tuple[int, np.ndarray, np.ndarray, list[int], int, str | None]:
    """Worker: decode consecutive files into one (k, 3, H, W) array.

    Returns (start, images, is_gray, resized positions, failed position, error);
    gray images fill channel 0 only. Decoding stops at the first failure.
    """
    start, paths, size = task
    w, h = size
    out = np.empty((len(paths), 3, h, w), dtype=np.uint8)
    gray = np.zeros(len(paths), dtype=bool)
    resized: list[int] = []
    for j, path in enumerate(paths):
        _, is_gray, arr, was_resized, err = _decode_one((j, path, size))
        if err is not None:
            return start, out[:0], gray[:0], resized, j, err
        if is_gray:
            out[j, 0] = arr
            gray[j] = True
        else:
            out[j] = arr.transpose(2, 0, 1)
        if was_resized:
            resized.append(j)
    return start, out, gray, resized, -1, None


def decode_images(files: list[str], workers: int | None = None, progress: bool = True) -> torch.Tensor:
    """Decode image files into one uint8 (N, C, H, W) tensor (size/channel rules in the module doc).

    ``workers``: processes to use; default up to the usable CPU count, one per
    1,000 images (small folders decode in this process).
    """
    if not files:
        raise SsalError("no images to decode")
    first = _decode_one((0, files[0], None))
    if first[4] is not None:
        raise SsalError(f"cannot read image '{files[0]}': {first[4]}")
    assert first[2] is not None
    h, w = first[2].shape[:2]
    n = len(files)
    out = np.empty((n, 3, h, w), dtype=np.uint8)
    is_gray = np.zeros(n, dtype=bool)
    resized: list[str] = []
    if workers is None:
        workers = min(_cpu_count(), max(1, n // _MIN_PER_WORKER))
    tasks = [(i, files[i : i + _CHUNK], (w, h)) for i in range(0, n, _CHUNK)]
    bar = tqdm(total=n, desc="decoding images", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers <= 1:
            _collect(map(_decode_chunk, tasks), files, out, is_gray, resized, bar)
        else:
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            with ctx.Pool(processes=workers) as pool:
                _collect(pool.imap(_decode_chunk, tasks), files, out, is_gray, resized, bar)
    finally:
        bar.close()
    if resized:
        warnings.warn(
            f"resized {len(resized)} of {n} images to {w}x{h} (the first image's size), e.g. '{resized[0]}'",
            stacklevel=2,
        )
    if is_gray.all():
        return torch.from_numpy(np.ascontiguousarray(out[:, :1]))
    gray_idx = np.flatnonzero(is_gray)
    out[gray_idx, 1] = out[gray_idx, 0]
    out[gray_idx, 2] = out[gray_idx, 0]
    return torch.from_numpy(out)


def _collect(
    results: Iterable[tuple[int, np.ndarray, np.ndarray, list[int], int, str | None]],
    files: list[str],
    out: np.ndarray,
    is_gray: np.ndarray,
    resized: list[str],
    bar: tqdm,
) -> None:
    """Copy chunk results into ``out`` in order; the first failure raises SsalError."""
    for start, arr, gray, resized_pos, failed, err in results:
        if err is not None:
            raise SsalError(f"cannot read image '{files[start + failed]}': {err}")
        out[start : start + len(arr)] = arr
        is_gray[start : start + len(gray)] = gray
        resized.extend(files[start + j] for j in resized_pos)
        bar.update(len(arr))


def _build(root: Path, workers: int | None, progress: bool) -> tuple[ImageData, ImageData]:
    train_dir, test_dir = root / "train", root / "test"
    has_train, has_test = train_dir.is_dir(), test_dir.is_dir()
    if has_train != has_test:
        have, lack = ("train", "test") if has_train else ("test", "train")
        raise SsalError(f"image folder '{root}' has '{have}/' but no '{lack}/' sub-folder; give both or neither")
    if has_train:
        classes = _class_dirs(train_dir)
        if not classes:
            raise SsalError(f"image folder '{train_dir}' has no class sub-folders")
        extra = sorted(set(_class_dirs(test_dir)) - set(classes))
        if extra:
            raise SsalError(f"test class folder '{test_dir / extra[0]}' has no matching folder in '{train_dir}'")
        tr_files, tr_labels = _scan_split(train_dir, classes)
        te_files, te_labels = _scan_split(test_dir, classes)
        if not te_files:
            raise SsalError(f"image folder '{test_dir}' holds no images")
        images = decode_images(tr_files + te_files, workers=workers, progress=progress)
        n_tr = len(tr_files)
        labels = torch.tensor(tr_labels + te_labels, dtype=torch.long)
        train = ImageData(images[:n_tr], labels[:n_tr], classes)
        test = ImageData(images[n_tr:], labels[n_tr:], list(classes))
        return train, test
    classes = _class_dirs(root)
    if not classes:
        raise SsalError(f"image folder '{root}' has no class sub-folders (nor train/ and test/)")
    files, labels_list = _scan_split(root, classes)
    labels = torch.tensor(labels_list, dtype=torch.long)
    images = decode_images(files, workers=workers, progress=progress)
    train_idx, test_idx = split_validation(labels, TEST_FRACTION, seed=SPLIT_SEED)
    if test_idx.numel() == 0:
        raise SsalError(f"image folder '{root}' has too few images ({len(files)}) for an 80/20 train/test split")
    return (
        ImageData(images[train_idx], labels[train_idx], classes),
        ImageData(images[test_idx], labels[test_idx], list(classes)),
    )


def load_imagefolder(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> tuple[ImageData, ImageData]:
    """Load ``(train, test)`` from an image folder, decoding once and caching the result."""
    if not str(path).strip():
        raise SsalError("imagefolder: needs a path, e.g. 'imagefolder:/data/my-images'")
    root = Path(path).expanduser()
    if not root.exists():
        raise SsalError(f"image folder '{root}' does not exist")
    if not root.is_dir():
        raise SsalError(f"image folder '{root}' is not a directory")
    root = root.resolve()
    return cached(
        cache_dir,
        "imagefolder",
        str(root),
        fingerprint_tree(root),
        lambda: _build(root, workers, progress),
    )
