"""Tests of the data layer: datasets, image folders, cache, class caps and splits."""

from __future__ import annotations

import gzip
import os
import tarfile
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ssal.data import datasets as ds
from ssal.data import imagefolder as imf
from ssal.data.cache import fingerprint_tree
from ssal.data.datasets import DATASET_NAMES, load_dataset, read_idx
from ssal.data.imagefolder import decode_images
from ssal.data.splits import apply_class_caps, imbalanced_caps, split_validation
from ssal.errors import SsalError

# The project's offline data sits in ../shared/data beside the checkout (CI too).
SHARED_DATA = Path(os.environ.get("SSAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
FMNIST_DIR = SHARED_DATA / "fashion-mnist"
CIFAR_TAR = SHARED_DATA / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="module")
def cifar_jpeg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 JPEG folders, extracted once per test run."""
    if not CIFAR_TAR.is_file():
        pytest.skip("cifar10-jpeg.tar.gz absent")
    root = tmp_path_factory.mktemp("cifar")
    with tarfile.open(CIFAR_TAR) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10-jpeg"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's cache from tests."""
    monkeypatch.setenv("SSAL_CACHE", str(tmp_path / "default-cache"))


# ------------------------------------------------------------------ helpers
def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _fake_fmnist(folder: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        _write_idx(folder / name, arr, gz)
    return arrays


def _rgb(seed: int, size: tuple[int, int] = (8, 6)) -> np.ndarray:
    """A random (H, W, 3) uint8 image for size (W, H)."""
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------- sample
def test_sample_shapes_dtypes_balance() -> None:
    train, test = load_dataset("sample")
    assert tuple(train.images.shape) == (6000, 1, 28, 28)
    assert tuple(test.images.shape) == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.classes[0] == "T-shirt/top" and train.num_classes == 10 and train.channels == 1
    assert torch.bincount(train.labels, minlength=10).tolist() == [600] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [100] * 10
    assert 50 < train.images.float().mean().item() < 100  # Fashion-MNIST mean pixel is ~73


def test_sample_default_name_is_case_insensitive() -> None:
    train, _ = load_dataset(" Sample ")
    assert len(train) == 6000


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="shared Fashion-MNIST files absent")
def test_sample_images_come_from_fashion_mnist() -> None:
    full = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    _, test = load_dataset("sample")
    first = test.images[0, 0].numpy()
    assert any(np.array_equal(first, img) for img in full)


# -------------------------------------------------------------- fashionmnist
@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="shared Fashion-MNIST files absent")
def test_fashionmnist_from_gz_folder_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    train, test = load_dataset("fashionmnist", str(FMNIST_DIR), str(cache), progress=False)
    t_first = time.perf_counter() - t0
    assert tuple(train.images.shape) == (60000, 1, 28, 28) and tuple(test.images.shape) == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert len(list(cache.glob("fashionmnist-*.pt"))) == 1

    def fail(path: object) -> np.ndarray:
        raise AssertionError("cache missed: idx files read again")

    monkeypatch.setattr(ds, "read_idx", fail)
    t0 = time.perf_counter()
    train2, test2 = load_dataset("fashionmnist", str(FMNIST_DIR), str(cache), progress=False)
    t_second = time.perf_counter() - t0
    assert torch.equal(train2.images, train.images) and torch.equal(test2.labels, test.labels)
    assert train2.classes == train.classes
    assert t_second <= t_first


def test_fashionmnist_layouts_gz_raw_and_torchvision(tmp_path: Path) -> None:
    gz = _fake_fmnist(tmp_path / "gz", gz=True)
    _fake_fmnist(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    a_train, a_test = load_dataset("fashionmnist", str(tmp_path / "gz"), str(tmp_path / "c"), progress=False)
    b_train, b_test = load_dataset("fashionmnist", str(tmp_path / "tv"), str(tmp_path / "c"), progress=False)
    assert torch.equal(a_train.images[:, 0], torch.from_numpy(gz["train-images-idx3-ubyte"]))
    assert a_test.labels.tolist() == gz["t10k-labels-idx1-ubyte"].tolist()
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_test.labels, b_test.labels)
    assert sorted(p.name for p in (tmp_path / "gz").iterdir())[0].endswith(".gz")  # source untouched
    assert len(list((tmp_path / "gz").iterdir())) == 4


def test_fashionmnist_default_uses_debian_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_fmnist(tmp_path / "debian", gz=True, n_train=20)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    train, _ = load_dataset("fashionmnist", None, str(tmp_path / "c"), progress=False)
    assert len(train) == 20
    assert train.labels.tolist() == fake["train-labels-idx1-ubyte"].tolist()


def test_corrupt_idx_names_file(tmp_path: Path) -> None:
    _fake_fmnist(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(SsalError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashionmnist", str(tmp_path), str(tmp_path / "c"), progress=False)


def _no_network(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("no network")


def test_offline_download_failure_names_root_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "download", _no_network)
    monkeypatch.setattr(tvd.FashionMNIST, "download", _no_network)
    monkeypatch.setattr(ds, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nowhere")
    root = tmp_path / "empty"
    with pytest.raises(SsalError, match="download failed") as err:
        load_dataset("cifar10", str(root), str(tmp_path / "c"), progress=False)
    assert str(root) in str(err.value) and "cifar-10-batches-py/data_batch_1" in str(err.value)
    with pytest.raises(SsalError, match="train-images-idx3-ubyte") as err:
        load_dataset("fashionmnist", None, str(tmp_path / "c"), progress=False)
    assert str(tmp_path / "nowhere") in str(err.value)


class _FakeCifar10:
    """Stands in for torchvision.datasets.CIFAR10 (the real one checks md5 sums)."""

    classes = ["c0", "c1"]

    def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
        n = 4 if train else 2
        self.data = np.arange(n * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(n, 32, 32, 3)
        self.targets = [i % 2 for i in range(n)]


class _FakeSvhn:
    def __init__(self, root: str, split: str = "train", download: bool = False) -> None:
        n = 3 if split == "train" else 1
        self.data = np.full((n, 3, 32, 32), 7, dtype=np.uint8)
        self.labels = np.arange(n)


class _CorruptCifar10:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("Dataset not found or corrupted.")


def test_torchvision_datasets_convert_to_nchw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / f).write_bytes(b"x")
    for f in ("train_32x32.mat", "test_32x32.mat"):
        (tmp_path / f).write_bytes(b"x")
    monkeypatch.setattr(tvd, "CIFAR10", _FakeCifar10)
    monkeypatch.setattr(tvd, "SVHN", _FakeSvhn)
    train, test = load_dataset("cifar10", str(tmp_path), str(tmp_path / "c"))
    assert tuple(train.images.shape) == (4, 3, 32, 32) and len(test) == 2
    ref = _FakeCifar10(str(tmp_path)).data
    assert torch.equal(train.images[1].permute(1, 2, 0), torch.from_numpy(ref[1]))
    assert train.labels.tolist() == [0, 1, 0, 1] and train.classes == ["c0", "c1"]
    same, _ = load_dataset("cifar10", str(batches), str(tmp_path / "c"))  # the batches folder itself
    assert torch.equal(same.images, train.images)
    s_train, s_test = load_dataset("svhn", str(tmp_path), str(tmp_path / "c"))
    assert tuple(s_train.images.shape) == (3, 3, 32, 32) and s_train.classes == [str(d) for d in range(10)]
    assert s_test.labels.tolist() == [0]
    monkeypatch.setattr(tvd, "CIFAR10", _CorruptCifar10)
    with pytest.raises(SsalError, match="corrupt or incomplete") as err:
        load_dataset("cifar10", str(tmp_path), str(tmp_path / "other-cache"))
    assert str(tmp_path) in str(err.value)


# ---------------------------------------------------------------- imagefolder
def _make_split_folder(root: Path) -> dict[str, np.ndarray]:
    """3 classes; PNG (lossless) RGB, a grayscale PNG, and a JPEG. Returns exact PNG pixels."""
    pixels = {}
    for split, n in (("train", 3), ("test", 1)):
        for c, cls in enumerate(["cat", "ant", "bee"]):
            for k in range(n):
                arr = _rgb(100 * c + 10 * k + (split == "test"))
                pixels[f"{split}/{cls}/{k}"] = arr
                _save(root / split / cls / f"img{k}.png", arr)
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    _save(root / "train" / "bee" / "z_gray.png", gray)
    pixels["train/bee/z_gray"] = gray
    _save(root / "train" / "ant" / "photo.jpg", _rgb(7))
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    (root / "train" / "ant" / ".hidden.png").write_bytes(b"ignored")
    return pixels


def test_imagefolder_train_test_labels_classes(tmp_path: Path) -> None:
    pixels = _make_split_folder(tmp_path / "imgs")
    train, test = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", cache_dir=str(tmp_path / "c"), progress=False)
    assert train.classes == ["ant", "bee", "cat"]
    # ant: img0-2 + photo.jpg; bee: img0-2 + z_gray; cat: img0-2
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert test.labels.tolist() == [0, 1, 2]
    assert tuple(train.images.shape) == (11, 3, 6, 8) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[0].permute(1, 2, 0), torch.from_numpy(pixels["train/ant/0"]))
    assert torch.equal(test.images[2].permute(1, 2, 0), torch.from_numpy(pixels["test/cat/0"]))
    gray = torch.from_numpy(pixels["train/bee/z_gray"])
    assert all(torch.equal(train.images[7, ch], gray) for ch in range(3))  # replicated to RGB


def test_imagefolder_all_gray_is_one_channel_and_8020_split(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    for c, cls in enumerate(["a", "b", "c"]):
        for k in range(10):
            _save(root / cls / f"{k:02d}.png", np.full((5, 4), 10 * c + k, dtype=np.uint8))
    train, test = load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "c1"), progress=False)
    assert train.channels == 1 and tuple(test.images.shape) == (6, 1, 5, 4)
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]
    assert torch.bincount(train.labels).tolist() == [8, 8, 8]
    values = sorted(train.images[:, 0, 0, 0].tolist() + test.images[:, 0, 0, 0].tolist())
    assert values == sorted(10 * c + k for c in range(3) for k in range(10))  # disjoint, complete
    again, again_test = load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "c2"), progress=False)
    assert torch.equal(again_test.images, test.images)  # split is fixed (seed 0)


def test_imagefolder_resizes_to_first_image(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    _save(root / "a" / "0.png", _rgb(1, (8, 6)))
    _save(root / "a" / "1.png", _rgb(2, (16, 12)))
    for k in range(4):
        _save(root / "b" / f"{k}.png", _rgb(3 + k, (8, 6)))
    with pytest.warns(UserWarning, match=r"resized 1 of 6 images to 8x6"):
        train, test = load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "c"), progress=False)
    assert tuple(train.images.shape[1:]) == (3, 6, 8) and len(train) + len(test) == 6


def test_imagefolder_corrupt_image_names_file(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    for k in range(3):
        _save(root / "a" / f"{k}.png", _rgb(k))
        _save(root / "b" / f"{k}.png", _rgb(10 + k))
    bad = root / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(SsalError, match="cannot read image") as err:
        load_dataset(f"imagefolder:{root}", cache_dir=str(tmp_path / "c"), progress=False)
    assert str(bad) in str(err.value)


def test_imagefolder_corrupt_image_in_pool_names_file(tmp_path: Path) -> None:
    files = []
    for k in range(12):
        _save(tmp_path / f"{k:02d}.png", _rgb(k))
        files.append(str(tmp_path / f"{k:02d}.png"))
    (tmp_path / "07.png").write_bytes(b"this is not a png")
    with pytest.raises(SsalError, match="07.png"):
        decode_images(files, workers=2, progress=False)


def test_imagefolder_missing_and_bad_layouts(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    with pytest.raises(SsalError, match="does-not-exist"):
        load_dataset(f"imagefolder:{missing}", cache_dir=str(tmp_path / "c"))
    with pytest.raises(SsalError, match="needs a path"):
        load_dataset("imagefolder:", cache_dir=str(tmp_path / "c"))
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    with pytest.raises(SsalError, match="no 'test/'"):
        load_dataset(f"imagefolder:{tmp_path / 'half'}", cache_dir=str(tmp_path / "c"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(SsalError, match=r"empty.a' holds no image files"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", cache_dir=str(tmp_path / "c"))


def test_decode_pool_matches_serial(tmp_path: Path) -> None:
    files = []
    for k in range(30):
        path = tmp_path / f"{k:02d}.{'jpg' if k % 3 else 'png'}"
        _save(path, _rgb(k) if k % 5 else _rgb(k)[:, :, 0])
        files.append(str(path))
    monkey_chunk = imf._CHUNK
    try:
        imf._CHUNK = 7  # several chunks across two processes
        pooled = decode_images(files, workers=2, progress=False)
    finally:
        imf._CHUNK = monkey_chunk
    serial = decode_images(files, workers=1, progress=False)
    assert tuple(pooled.shape) == (30, 3, 6, 8)
    assert torch.equal(pooled, serial)


def test_imagefolder_cache_hit_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "imgs"
    _make_split_folder(root)
    cache = tmp_path / "c"
    name = f"imagefolder:{root}"
    first, _ = load_dataset(name, cache_dir=str(cache), progress=False)
    assert len(list(cache.glob("imagefolder-*.pt"))) == 1
    real = imf.decode_images
    monkeypatch.setattr(imf, "decode_images", lambda *a, **k: pytest.fail("cache missed"))
    hit, _ = load_dataset(name, cache_dir=str(cache), progress=False)
    assert torch.equal(hit.images, first.images)
    _save(root / "train" / "cat" / "new.png", _rgb(99))
    monkeypatch.setattr(imf, "decode_images", real)
    more, _ = load_dataset(name, cache_dir=str(cache), progress=False)
    assert len(more) == len(first) + 1
    assert len(list(cache.glob("imagefolder-*.pt"))) == 1  # stale entry replaced
    assert not list(cache.glob("*.tmp"))


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"12")
    fp1 = fingerprint_tree(tmp_path)
    (tmp_path / "a").write_bytes(b"123")
    assert fingerprint_tree(tmp_path) != fp1


def test_cifar_jpegs_decode_like_pil(cifar_jpeg_dir: Path) -> None:
    folder = cifar_jpeg_dir / "test" / "airplane"
    files = sorted(str(p) for p in folder.iterdir())[:200]
    images = decode_images(files, progress=False)
    assert tuple(images.shape) == (200, 3, 32, 32)
    ref = np.array(Image.open(files[123]).convert("RGB"))
    assert torch.equal(images[123].permute(1, 2, 0), torch.from_numpy(ref))


def test_cifar_jpeg_folder_loads_whole(cifar_jpeg_dir: Path, tmp_path: Path) -> None:
    """The user-folder path on its real test case: 60,000 JPEGs, 10 classes."""
    train, test = load_dataset(f"imagefolder:{cifar_jpeg_dir}", cache_dir=str(tmp_path), progress=False)
    assert tuple(train.images.shape) == (50000, 3, 32, 32) and tuple(test.images.shape) == (10000, 3, 32, 32)
    assert train.classes[:2] == ["airplane", "automobile"] and len(train.classes) == 10
    assert torch.bincount(train.labels).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# --------------------------------------------------------------------- names
def test_unknown_name_error_lists_choices() -> None:
    with pytest.raises(SsalError) as err:
        load_dataset("xyz")
    msg = str(err.value)
    assert msg.startswith("unknown dataset 'xyz'; choose one of: sample, cifar10")
    assert "imagefolder:<path>" in msg
    assert set(DATASET_NAMES) == {"sample", "cifar10", "cifar100", "svhn", "fashionmnist"}


# -------------------------------------------------------------------- splits
def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])


def test_class_caps_counts_sorted_deterministic() -> None:
    labels = _labels([50, 30, 10])[torch.randperm(90, generator=torch.Generator().manual_seed(0))]
    kept = apply_class_caps(labels, {0: 20, 2: 15}, seed=3)
    assert torch.bincount(labels[kept]).tolist() == [20, 30, 10]
    assert torch.equal(kept, torch.sort(kept).values) and kept.unique().numel() == kept.numel()
    assert torch.equal(kept, apply_class_caps(labels, {0: 20, 2: 15}, seed=3))
    assert not torch.equal(kept, apply_class_caps(labels, {0: 20, 2: 15}, seed=4))
    assert torch.equal(apply_class_caps(labels, None, 0), torch.arange(90))
    assert torch.bincount(labels[apply_class_caps(labels, {1: 0}, 0)], minlength=3).tolist() == [50, 0, 10]
    with pytest.raises(SsalError, match=r"class_caps\[0\]"):
        apply_class_caps(labels, {0: -1}, 0)


def test_imbalanced_cifar10_caps() -> None:
    caps = imbalanced_caps(10, [0, 1, 2, 3, 4], 500)
    assert caps == {0: 500, 1: 500, 2: 500, 3: 500, 4: 500}
    labels = _labels([5000] * 10)
    kept = apply_class_caps(labels, caps, seed=0)
    assert kept.numel() == 27500
    assert torch.bincount(labels[kept]).tolist() == [500] * 5 + [5000] * 5
    with pytest.raises(SsalError, match="classes_cut"):
        imbalanced_caps(10, [10], 500)


def test_split_validation_invariants() -> None:
    labels = _labels([100, 60, 40])
    pool, val = split_validation(labels, 0.1, seed=0)
    assert val.numel() == 20 and pool.numel() == 180
    assert torch.bincount(labels[val]).tolist() == [10, 6, 4]
    assert torch.equal(torch.sort(torch.cat([pool, val])).values, torch.arange(200))
    p2, v2 = split_validation(labels, 20, seed=0)
    assert torch.equal(v2, val) and torch.equal(p2, pool)  # int count == same fraction
    assert not torch.equal(split_validation(labels, 20, seed=1)[1], val)
    pool0, val0 = split_validation(labels, 0, seed=0)
    assert val0.numel() == 0 and torch.equal(pool0, torch.arange(200))


@pytest.mark.parametrize("bad", [-1, 1.0, 1.5, 200, float("nan"), True, "10"])
def test_split_validation_bad_sizes(bad: object) -> None:
    with pytest.raises(SsalError, match="val_size"):
        split_validation(_labels([100, 60, 40]), bad, seed=0)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    frac=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**63 - 1),
)
def test_split_validation_property(counts: list[int], frac: float, seed: int) -> None:
    labels = _labels(counts)
    n = labels.numel()
    pool, val = split_validation(labels, frac, seed)
    assert val.numel() == round(frac * n)
    assert not set(pool.tolist()) & set(val.tolist())
    assert pool.numel() + val.numel() == n
    per_class = torch.bincount(labels[val], minlength=len(counts)).tolist()
    for c, k in enumerate(per_class):
        assert abs(k - val.numel() * counts[c] / n) < 1.0 + 1e-9  # stratified within rounding
    assert torch.equal(split_validation(labels, frac, seed)[1], val)

