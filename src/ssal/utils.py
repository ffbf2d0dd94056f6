"""Small helpers: derived seeds, device choice, atomic file writes."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import SsalError


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from ``seed`` and ``keys``.

    Every random stream of a run (initial set, model init, augmentation, candidate
    subset) gets its own seed from (run seed, cycle, purpose), so a resumed run
    replays exactly what an uninterrupted run does.
    """
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g


_OPTION_TYPES: dict[type, tuple[str, Callable[[Any], bool]]] = {
    bool: ("true or false", lambda v: isinstance(v, bool)),
    int: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    float: ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
}


def check_option_types(fn: Callable[..., Any], options: dict[str, Any], key: str) -> None:
    """SsalError naming ``key.<option>=<value>`` for the first option whose value
    does not fit the plain type (bool, int, float, str) that ``fn``'s signature
    annotates; other annotations are left to ``fn`` itself."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except (NameError, TypeError):  # an annotation that does not evaluate: nothing to check against
        return
    for name, value in options.items():
        hint = hints.get(name)
        plain = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(plain) == 1:  # X | None: None is let through below
            hint = plain[0]
        rule = _OPTION_TYPES.get(hint)  # type: ignore[arg-type]
        if rule is not None and value is not None and not rule[1](value):
            raise SsalError(f"invalid value {key}.{name}={value}: must be {rule[0]}")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU. A named device this machine
    does not have (``cuda`` without a driver, ``cuda:3`` on a 2-GPU box, ``mps``
    off Apple silicon) is a one-line :class:`SsalError`, raised before any work."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SsalError(f"invalid value device={name}: CUDA is not available on this machine; use device=cpu or device=auto")
        if device.index is not None and device.index >= count:
            raise SsalError(f"invalid value device={name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not _mps_available():
        raise SsalError(f"invalid value device={name}: MPS is not available on this machine; use device=cpu or device=auto")
    return device


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is
    renamed over ``path``, so readers see the old or the new file, never a
    half-written one. On failure the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results and caches may be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_file`), synced to disk."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
