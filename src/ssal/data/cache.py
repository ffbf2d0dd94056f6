"""Decoded-dataset cache: every dataset is decoded once into a uint8 tensor file.

A cache entry is one ``torch.save``'d dict under the cache directory
(``cache_dir`` argument, else ``$SSAL_CACHE``, else ``~/.cache/ssal``). Its key
is the cache format version + dataset name + resolved source path + a
fingerprint of the source (file count, total size and newest mtime), so
editing, adding or replacing source files invalidates it. Files are written
atomically (temporary file in the same folder + ``os.replace``); when a new
entry for a source is written, older entries for the same name and source are
removed. An unreadable or mismatching entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from ssal.data.types import ImageData
from ssal.utils import atomic_torch_save

CACHE_VERSION = 1
"""Bump when the decoded form changes; old entries are then never read."""


def default_cache_dir() -> Path:
    """``$SSAL_CACHE`` if set, else ``~/.cache/ssal``."""
    env = os.environ.get("SSAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ssal"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cache directory to use for an optional user setting."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def fingerprint_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """Fingerprint of a set of files: count, total size and newest mtime (ns)."""
    count = size = newest = 0
    for p in paths:
        st = os.stat(p)
        count += 1
        size += st.st_size
        newest = max(newest, st.st_mtime_ns)
    return f"files={count};bytes={size};mtime={newest}"


def fingerprint_tree(root: str | os.PathLike[str]) -> str:
    """Fingerprint of every regular file below ``root`` (recursive, hidden files included)."""
    count = size = newest = 0
    stack = [os.fspath(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat(follow_symlinks=True)
                    count += 1
                    size += st.st_size
                    newest = max(newest, st.st_mtime_ns)
    return f"files={count};bytes={size};mtime={newest}"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)[:40]


def cache_path(cache_dir: Path, name: str, source: str, fingerprint: str) -> Path:
    """File holding the entry for (name, source, fingerprint) at the current version."""
    src_hash = hashlib.sha256(f"{name}|{source}".encode()).hexdigest()[:12]
    key_hash = hashlib.sha256(cache_key(name, source, fingerprint).encode()).hexdigest()[:12]
    return cache_dir / f"{_slug(name)}-{src_hash}-{key_hash}.pt"


def cache_key(name: str, source: str, fingerprint: str) -> str:
    """The full key string stored inside an entry and checked on load."""
    return f"v{CACHE_VERSION}|{name}|{source}|{fingerprint}"


def load_cached(path: Path, key: str) -> tuple[ImageData, ImageData] | None:
    """Read ``(train, test)`` from ``path`` if it exists and holds ``key``; else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            return None
        classes = list(blob["classes"])
        train = ImageData(blob["train_images"], blob["train_labels"], classes)
        test = ImageData(blob["test_images"], blob["test_labels"], list(classes))
    except Exception as err:  # corrupt or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable cache file '{path}': {err}", stacklevel=3)
        return None
    return train, test


def save_cached(path: Path, key: str, train: ImageData, test: ImageData) -> None:
    """Write an entry atomically and drop older entries for the same name and source.

    A cache folder that cannot be written only produces a warning: the data is
    already in memory, so the run goes on without a cache.
    """
    blob = {
        "key": key,
        "version": CACHE_VERSION,
        "classes": list(train.classes),
        "train_images": train.images.contiguous(),
        "train_labels": train.labels,
        "test_images": test.images.contiguous(),
        "test_labels": test.labels,
    }
    try:
        atomic_torch_save(blob, path)
    except OSError as err:
        warnings.warn(f"could not write dataset cache '{path}': {err}", stacklevel=3)
        return
    prefix = path.name.rsplit("-", 1)[0] + "-"
    for old in path.parent.glob(prefix + "*.pt"):
        if old != path:
            old.unlink(missing_ok=True)


def cached(
    cache_dir: str | os.PathLike[str] | None,
    name: str,
    source: str,
    fingerprint: str,
    build: Callable[[], tuple[ImageData, ImageData]],
) -> tuple[ImageData, ImageData]:
    """Return the cached ``(train, test)`` for the key, or ``build()`` it and cache it."""
    path = cache_path(resolve_cache_dir(cache_dir), name, source, fingerprint)
    key = cache_key(name, source, fingerprint)
    hit = load_cached(path, key)
    if hit is not None:
        return hit
    train, test = build()
    save_cached(path, key, train, test)
    return train, test
