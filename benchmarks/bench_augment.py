"""Batched tensor augmentation (ssal.augment) vs a torchvision PIL DataLoader.

Both sides augment the same CIFAR-sized images held in memory: ssal's views take
one uint8 tensor (N, 3, 32, 32) and augment it batch by batch on the CPU; the
baseline keeps the decoded PIL images in a Dataset and lets a 2-worker DataLoader
run the equivalent torchvision transforms. Decoding is outside the timing on both
sides (it happens once, before training, in ssal's data cache).

    PYTHONPATH=src python benchmarks/bench_augment.py              # real CIFAR-10 JPEGs
    PYTHONPATH=src python benchmarks/bench_augment.py --random     # random uint8 data

Prints a markdown table of images per second (median and range over
``--repeats`` passes) and the batched / PIL speed-up for the weak and the strong
view.
"""

from __future__ import annotations

import argparse
import statistics
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from ssal.augment import StrongView, WeakView

# CIFAR-10 training-set statistics, the usual constants
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
DEFAULT_ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def load_cifar_jpegs(archive: Path, dest: Path, n: int) -> list[Image.Image]:
    """Extract the archive once into ``dest`` and decode ``n`` training images,
    taken evenly from the sorted file list so every class appears."""
    root = dest / "cifar10-jpeg" / "train"
    if not root.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
    files = sorted(root.glob("*/*.jpg"))
    if len(files) < n:
        raise SystemExit(f"only {len(files)} images under {root}, asked for {n}")
    step = len(files) / n
    chosen = [files[int(i * step)] for i in range(n)]
    out = []
    for f in chosen:
        with Image.open(f) as im:
            out.append(im.convert("RGB").copy())
    return out


def random_images(n: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return [Image.fromarray(a) for a in arr]


def to_uint8_tensor(imgs: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in imgs])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class PILDataset(Dataset[torch.Tensor]):
    def __init__(self, imgs: list[Image.Image], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.imgs = imgs
        self.transform = transform

    def __len__(self) -> int:
        return len(self.imgs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.imgs[i])


def pil_weak() -> T.Compose:
    return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def pil_strong() -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(32, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 2.0))], p=0.2),
            T.RandomSolarize(threshold=128, p=0.2),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


def time_batched(
    view: Callable[[torch.Tensor, torch.Generator], torch.Tensor], x: torch.Tensor, batch: int, repeats: int
) -> list[float]:
    """Images per second of one pass over ``x`` in batches, per repeat."""
    g = torch.Generator().manual_seed(0)
    view(x[:batch], g)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(0, x.shape[0], batch):
            view(x[i : i + batch], g)
        rates.append(x.shape[0] / (time.perf_counter() - t0))
    return rates


def time_loader(imgs: list[Image.Image], transform: T.Compose, batch: int, workers: int, repeats: int) -> list[float]:
    """Images per second of full DataLoader epochs (workers already started: the
    first, unmeasured epoch starts them)."""
    loader = DataLoader(
        PILDataset(imgs, transform), batch_size=batch, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up epoch starts the workers
        pass
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(imgs) / (time.perf_counter() - t0))
    return rates


def fmt(rates: list[float]) -> str:
    """Median and range: on a shared CPU one pass can be several times slower
    than the others, which a mean +- std would smear over the whole row."""
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images (default 10,000)")
    ap.add_argument("--batch", type=int, default=512, help="batch size on both sides (default 512)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the PIL side (default 2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per pipeline (default 5)")
    ap.add_argument("--random", action="store_true", help="random uint8 images instead of CIFAR-10 JPEGs")
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="cifar10-jpeg.tar.gz")
    ap.add_argument("--extract-to", type=Path, default=Path("/tmp/ssal_bench_data"), help="extraction folder")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the batched side (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    imgs = random_images(args.n, 0) if args.random else load_cifar_jpegs(args.archive, args.extract_to, args.n)
    x = to_uint8_tensor(imgs)
    source = "random uint8" if args.random else f"CIFAR-10 train JPEGs ({args.archive.name})"
    print(f"{args.n} images from {source}, loaded in {time.perf_counter() - t0:.1f} s; "
          f"batch {args.batch}, {args.workers} DataLoader workers, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} timed passes each\n")

    rows = []
    for name, view, pil in (
        ("weak (crop 4 + flip + normalise)", WeakView(MEAN, STD), pil_weak()),
        ("strong (RRC + flip + jitter + gray + blur + solarize + normalise)", StrongView(MEAN, STD), pil_strong()),
    ):
        fast = time_batched(view, x, args.batch, args.repeats)
        slow = time_loader(imgs, pil, args.batch, args.workers, args.repeats)
        rows.append((name, fmt(fast), fmt(slow), statistics.median(fast) / statistics.median(slow)))

    print("img/s as median (min-max) over the timed passes; speed-up = ratio of medians\n")
    print("| view | batched ssal.augment img/s | torchvision PIL DataLoader img/s | speed-up |")
    print("|---|---|---|---|")
    for name, fast_s, slow_s, ratio in rows:
        print(f"| {name} | {fast_s} | {slow_s} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
