"""Self-supervised pretraining for the ``pretrain`` and ``frozen`` modes: run once
per (images, backbone, SSL config), cached on disk, resumable.

Pretraining reads images only (uint8 tensors, no labels), so its result is valid
for every strategy, cycle and run seed that uses the same images; it is keyed by
a fingerprint of the image bytes, the backbone and every SSL setting, and stored
under ``<cache>/ssl/<method>-<key>/``:

- ``checkpoint.pt``: the method, optimizer and augmentation-generator state,
  written atomically every ``ssl.checkpoint_minutes`` and at each epoch's end; a
  killed pretraining restarts from it and ends bit-identical to an uninterrupted
  one (same batches, same views, same steps).
- ``backbone.pt``: the finished online encoder (``{"backbone": state_dict,
  "meta": {...}}``), what the AL cycles load.
- ``log.jsonl``: loss and images/s per epoch. ``meta.json``: the settings.

A file lock lets parallel runs (``ssal bench --workers``) share one pretraining:
the second waits for the first instead of repeating it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .augment import StrongView, TestView, WeakView
from .data.cache import resolve_cache_dir
from .models import build_backbone
from .errors import SsalError, TrainingDiverged, first_line
from .ssl import SSL_METHODS, SSLMethod, build_ssl
from .train import _bar, _memory_format, _Stepper, amp_cpu_on, amp_cpu_warning, lr_schedule, prepared_batches
from .utils import atomic_torch_save, atomic_write_json, derive_seed, generator

CACHE_FORMAT = 1
PROTOTYPES_FILE = "prototypes.pt"  # an SSL cache's prototypes for selection (PCL), beside backbone.pt
# SSL settings that do not change the result (where and how often to save)
_NOT_IN_KEY = {"cache_dir", "checkpoint_minutes", "lambda_c", "views", "low_loss_fraction"}


def images_fingerprint(images: torch.Tensor) -> str:
    """sha256 of the shape and bytes of a uint8 image tensor (about 0.3 s for CIFAR-10)."""
    h = hashlib.sha256(repr((tuple(images.shape), str(images.dtype))).encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def pretrain_key(
    fingerprint: str, model: str, model_kwargs: dict, in_channels: int, ssl_cfg: DictConfig | dict, cuda: bool = True
) -> str:
    """Cache key: image fingerprint + backbone + every SSL setting that changes the result.

    ``cuda``: whether the pretraining runs on a CUDA device; ``ssl.amp`` acts
    only there, so off CUDA every value of it shares the key of its default.
    """
    ssl = OmegaConf.to_container(ssl_cfg) if isinstance(ssl_cfg, DictConfig) else dict(ssl_cfg)
    ssl = {k: v for k, v in ssl.items() if k not in _NOT_IN_KEY}
    if not cuda and "amp" in ssl:
        ssl["amp"] = True  # the default: caches written before this rule keep their keys
    if not ssl.get("multicrop"):  # no small crops: their settings change nothing (and older caches keep their keys)
        ssl = {k: v for k, v in ssl.items() if not k.startswith("multicrop")}
    if amp_cpu_on(ssl.get("amp_cpu")):  # resolved: auto shares the cache of what it chose on this CPU
        ssl["amp_cpu"] = True
    else:  # float32 on the CPU: older caches keep their keys
        ssl.pop("amp_cpu", None)
    ssl["crop_scale"] = crop_scale(ssl)  # resolved: a null and its value share a cache
    asymmetric = uses_asymmetric_views(ssl)
    ssl.pop("asymmetric_views", None)
    if asymmetric:  # the shared symmetric pair adds nothing: caches written before the option keep their keys
        ssl["asymmetric_views"] = True
    blob = json.dumps(
        {"format": CACHE_FORMAT, "images": fingerprint, "model": model, "model_kwargs": model_kwargs, "in_channels": in_channels, "ssl": ssl},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def uses_asymmetric_views(ssl_cfg: DictConfig | dict) -> bool:
    """``ssl.asymmetric_views``, with ``null`` resolved: on for ``byol`` only."""
    value = ssl_cfg.get("asymmetric_views")
    return str(ssl_cfg.get("method")) == "byol" if value is None else bool(value)


#: smallest RandomResizedCrop area per method where it is not MoCo v2's / MoBYv2AL's 0.2
_CROP_SCALE = {"byol": 0.08}  # Grill et al. 2020, Appendix B (METHODS.md sec. 3)


def crop_scale(ssl_cfg: DictConfig | dict) -> float:
    """``ssl.crop_scale``, with ``null`` resolved to the method's paper value:
    0.08 for ``byol``, 0.2 (MoCo v2, MoBYv2AL's strong view) for the others."""
    value = ssl_cfg.get("crop_scale")
    return float(_CROP_SCALE.get(str(ssl_cfg.get("method")), 0.2) if value is None else value)


def pretrain_views(ssl_cfg: DictConfig, mean, std, num_views: int) -> list:
    """Two strong views at :func:`crop_scale`, output ``image_size``: BYOL's
    asymmetric pair (Grill et al. 2020, Table 6; METHODS.md sec. 3: Gaussian
    blur p = 1.0 / 0.1, solarize p = 0 / 0.2) when :func:`uses_asymmetric_views`,
    else the same recipe twice (blur 0.2, solarize 0.2); a weak view for
    single-view methods (rotation)."""
    size = int(ssl_cfg.image_size) or None
    if num_views == 1:
        return [WeakView(mean, std)]
    scale = (crop_scale(ssl_cfg), 1.0)
    if uses_asymmetric_views(ssl_cfg):
        first = StrongView(mean, std, scale=scale, out_size=size, blur_p=1.0, solarize_p=0.0)
        second = StrongView(mean, std, scale=scale, out_size=size, blur_p=0.1, solarize_p=0.2)
        return [first, second] + [second] * (num_views - 2)
    strong = StrongView(mean, std, scale=scale, out_size=size)
    return [strong] * num_views


def local_views(ssl_cfg: DictConfig, mean, std) -> list:
    """The ``ssl.multicrop`` small crops of multi-crop pretraining (SwAV, Caron et
    al., NeurIPS 2020, sec. 3.2): the strong recipe at ``multicrop_scale`` of the
    image area, resized to ``multicrop_size`` px; empty when multicrop is 0."""
    n = int(ssl_cfg.multicrop)
    if not n:
        return []
    low, high = (float(x) for x in ssl_cfg.multicrop_scale)
    return [StrongView(mean, std, scale=(low, high), out_size=int(ssl_cfg.multicrop_size))] * n


def pretrain(
    images: torch.Tensor,
    model: str,
    model_kwargs: dict[str, Any],
    ssl_cfg: DictConfig,
    mean,
    std,
    device: torch.device,
    cache_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after_steps: int | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """Pretrain (or load from the cache) the backbone ``model`` with ``ssl_cfg.method``
    on ``images`` (uint8, N x C x H x W). Returns ``(backbone_state, meta, folder)``.

    ``stop_after_steps`` stops early after writing a checkpoint (tests of resume).
    """
    method_cls = SSL_METHODS.get(str(ssl_cfg.method))
    if ssl_cfg.multicrop and method_cls is not None and not method_cls.supports_multicrop:
        takes = ", ".join(k for k, c in SSL_METHODS.items() if c.supports_multicrop)
        raise SsalError(f"ssl.multicrop={ssl_cfg.multicrop}: {ssl_cfg.method} takes no multi-crop views (these do: {takes}); set ssl.multicrop=0")
    in_channels = int(images.shape[1])
    fp = images_fingerprint(images)
    key = pretrain_key(fp, model, model_kwargs, in_channels, ssl_cfg, cuda=torch.device(device).type == "cuda")
    root = Path(ssl_cfg.cache_dir).expanduser() if ssl_cfg.cache_dir else resolve_cache_dir(cache_dir) / "ssl"
    folder = root / f"{ssl_cfg.method}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / "backbone.pt"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run with the same key waits here
        if final.exists():
            saved = torch.load(final, map_location="cpu")
            log(f"ssl: loaded {ssl_cfg.method} pretraining from {folder}")
            return saved["backbone"], saved["meta"], folder
        state = _run(images, model, model_kwargs, ssl_cfg, mean, std, device, folder, fp, key, progress, log, stop_after_steps)
        return state


def _run(images, model, model_kwargs, ssl_cfg, mean, std, device, folder: Path, fp: str, key: str, progress, log, stop_after_steps):
    in_channels = int(images.shape[1])
    n = int(images.shape[0])
    bs = min(int(ssl_cfg.batch_size), n)
    spe = n // bs  # drop the last partial batch: contrastive and batch-statistics losses need full batches
    epochs = int(ssl_cfg.epochs)
    total = epochs * spe
    fmt = _memory_format(ssl_cfg)
    torch.manual_seed(derive_seed(ssl_cfg.seed, "ssl-init"))
    encoder = build_backbone(model, in_channels, **model_kwargs)
    method: SSLMethod = build_ssl(str(ssl_cfg.method), encoder, int(encoder.feat_dim), **dict(ssl_cfg.options))
    method.check_images(n)
    method.to(device=device, memory_format=fmt)
    stepper = _Stepper(method.trainable_parameters(), ssl_cfg, lr_schedule(ssl_cfg, spe, total), device)
    views = pretrain_views(ssl_cfg, mean, std, method.num_views)
    warning = amp_cpu_warning("ssl.amp_cpu", ssl_cfg.amp_cpu, device)
    if warning:
        log(warning)
    small = local_views(ssl_cfg, mean, std)
    meta = {
        "kind": "ssl-backbone",
        "method": str(ssl_cfg.method),
        "model": model,
        "model_kwargs": dict(model_kwargs),
        "in_channels": in_channels,
        "feat_dim": int(encoder.feat_dim),
        "images": fp,
        "num_images": n,
        "key": key,
        "ssl": OmegaConf.to_container(ssl_cfg),
        "amp": stepper.use_amp,  # autocast in this pretraining (amp_cpu: auto resolved on this machine)
        "mean": list(mean),
        "std": list(std),
    }
    atomic_write_json(folder / "meta.json", meta)
    epoch, batch, step = 0, 0, 0
    g = generator(ssl_cfg.seed, "ssl-aug", 0)
    ckpt_path = folder / "checkpoint.pt"
    seconds = 0.0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        method.load_state_dict(ck["method"])
        stepper.opt.load_state_dict(ck["optimizer"])
        epoch, batch, step, seconds = ck["epoch"], ck["batch"], ck["step"], ck.get("seconds", 0.0)
        g.set_state(ck["generator"])
        log(f"ssl: resuming {ssl_cfg.method} pretraining at epoch {epoch}, step {step} of {total} ({folder})")
    else:
        log(f"ssl: pretraining {ssl_cfg.method} on {n} images, {epochs} epochs of {spe} steps -> {folder}")

    def save_checkpoint() -> None:
        atomic_torch_save(
            {
                "method": method.state_dict(),
                "optimizer": stepper.opt.state_dict(),
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "generator": g.get_state(),
                "seconds": seconds,
            },
            ckpt_path,
        )

    prepare = TestView(mean, std)
    bar = _bar(total, f"ssl {ssl_cfg.method}", progress)
    bar.update(step)
    last_save = time.perf_counter()
    images_dev = images.to(device)
    while epoch < epochs:
        t_epoch = time.perf_counter()
        method.train()
        if batch == 0:  # mid-epoch, the checkpoint restored the generator and the method's epoch state
            g = generator(ssl_cfg.seed, "ssl-aug", epoch)
            method.epoch_start(epoch, prepared_batches(images_dev, prepare, device, 512, fmt))
        perm = torch.randperm(n, generator=generator(ssl_cfg.seed, "ssl-perm", epoch)).to(device)
        losses = []
        while batch < spe:
            idx = perm[batch * bs : (batch + 1) * bs]
            x = images_dev[idx]
            vs = [v(x, g).contiguous(memory_format=fmt) for v in views]
            extra = {"local_views": [v(x, g).contiguous(memory_format=fmt) for v in small]} if small else {}
            with stepper.autocast():
                out = method(vs, update=True, index=idx, **extra)
            stepper.step(step, out.loss)
            method.after_step(step, total)
            losses.append(float(out.loss.detach()))
            if not math.isfinite(losses[-1]):
                raise TrainingDiverged(
                    f"ssl {ssl_cfg.method} pretraining diverged: loss became {losses[-1]} at step {step}; lower ssl.lr (now {ssl_cfg.lr})"
                )
            step += 1
            batch += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update(1)
            if time.perf_counter() - last_save > 60 * float(ssl_cfg.checkpoint_minutes) or step == stop_after_steps:
                seconds += time.perf_counter() - t_epoch
                t_epoch = time.perf_counter()
                save_checkpoint()
                last_save = time.perf_counter()
                if step == stop_after_steps:
                    bar.close()
                    raise KeyboardInterrupt(f"stopped after {step} steps (stop_after_steps)")
        seconds += time.perf_counter() - t_epoch
        rec = {"epoch": epoch, "step": step, "loss": sum(losses) / max(len(losses), 1), "seconds": round(seconds, 1)}
        with open(folder / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        epoch, batch = epoch + 1, 0
        save_checkpoint()
        last_save = time.perf_counter()
    bar.close()
    protos = method.final_prototypes(prepared_batches(images_dev, prepare, device, 512, fmt))
    if protos is not None:  # written before backbone.pt, which marks the cache finished
        levels = [{k: v.detach().cpu() for k, v in level.items()} for level in protos]
        atomic_torch_save({"format": 1, "levels": levels}, folder / PROTOTYPES_FILE)
    meta["seconds"] = round(seconds, 1)
    meta["steps"] = step
    backbone = {k: v.detach().cpu() for k, v in method.encoder.state_dict().items()}
    atomic_torch_save({"backbone": backbone, "meta": meta}, folder / "backbone.pt")
    atomic_write_json(folder / "meta.json", meta)
    ckpt_path.unlink(missing_ok=True)
    log(f"ssl: pretraining done in {seconds / 60:.1f} min -> {folder / 'backbone.pt'}")
    return backbone, meta, folder


def load_prototypes(folder: str | Path) -> list[dict[str, torch.Tensor]] | None:
    """The prototypes saved by :func:`pretrain` in ``folder`` (PCL), one dict per
    granularity (``centroids``, ``assignments``, ``similarity``; the last two
    index the pretraining's images, ``meta["images"]``), or None when it saved none."""
    file = Path(folder) / PROTOTYPES_FILE
    return torch.load(file, map_location="cpu")["levels"] if file.is_file() else None


def load_backbone(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder saved by :func:`pretrain` (a ``backbone.pt`` file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "backbone.pt"
    saved = torch.load(path, map_location="cpu")
    meta = saved["meta"]
    encoder = build_backbone(meta["model"], meta["in_channels"], **meta["model_kwargs"])
    encoder.load_state_dict(saved["backbone"])
    return encoder, meta


def read_backbone(path: str | Path, field: str = "") -> tuple[torch.nn.Module, dict[str, Any], Path]:
    """:func:`load_backbone` for user input: ``(encoder, meta, file)``, or an
    :class:`SsalError` naming the file (and the config ``field`` it came from)
    when it is missing, unfinished or not a backbone written by ``ssal pretrain``."""
    where = f"{field}: " if field else ""
    path = Path(path).expanduser()
    file = path / "backbone.pt" if path.is_dir() else path
    if not file.is_file():
        if path.is_dir() and (path / "checkpoint.pt").exists():
            raise SsalError(f"{where}the SSL pretraining in {path} is not finished (no backbone.pt yet); rerun its `ssal pretrain` command")
        raise SsalError(f"{where}no SSL backbone at {file}")
    try:
        encoder, meta = load_backbone(file)
    except SsalError:
        raise
    except pickle.UnpicklingError:
        raise SsalError(f"{where}{file} is not an SSL backbone written by `ssal pretrain` (not a PyTorch checkpoint file)") from None
    except Exception as err:  # not {"backbone": ..., "meta": ...}, or weights that do not fit meta
        raise SsalError(f"{where}{file} is not an SSL backbone written by `ssal pretrain` ({first_line(err)})") from None
    return encoder, meta, file
