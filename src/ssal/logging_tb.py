"""TensorBoard logging of a run (``log.tensorboard=true``).

Writes to ``<out>/tensorboard/`` with :class:`torch.utils.tensorboard.SummaryWriter`:

- per epoch (global step = epochs trained so far over all cycles, so the curves
  of successive cycles follow each other): ``train/loss`` (mean training loss of
  the epoch's optimizer steps), ``train/lr`` (learning rate of its last step)
  and, in joint mode, ``train/ssl_loss`` (mean SSL loss of every step, without
  the ``lambda_c`` weight) and ``train/ce_loss`` (mean cross-entropy of the
  labelled steps);
- per cycle (step = cycle): ``cycle/test_acc``, ``cycle/val_acc``,
  ``cycle/n_labelled``, ``cycle/final_train_loss`` and ``cycle/seconds_train``,
  ``cycle/seconds_eval``, ``cycle/seconds_select``.

``results.jsonl`` stays the source of truth; the scalars here are a view for
watching a run live. A resumed run replays its interrupted cycle: the writer
is opened with ``purge_step`` at the first epoch of that cycle, so TensorBoard
hides the interrupted cycle's epochs written before the restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .errors import SsalError

TB_DIR = "tensorboard"

#: ``on_epoch(epoch, scalars)``: called by the trainers after each epoch
EpochCallback = Callable[[int, dict[str, float]], None]


def require_tensorboard() -> None:
    """SsalError with the install command unless ``tensorboard`` is importable
    (checked before any training, so a run does not fail hours in)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise SsalError(
            "log.tensorboard=true needs the tensorboard package: pip install tensorboard (or pip install 'ssal[tb]')"
        ) from None


class TensorBoardLogger:
    """Per-epoch and per-cycle scalars of one run, in ``<out>/tensorboard/``.

    ``records`` are the cycles already completed (a resumed run): the epoch
    counter continues after their ``train_epochs``."""

    def __init__(self, out: str | Path, records: list[dict] | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        records = records or []
        self.epochs_done = sum(int(r.get("train_epochs") or 0) for r in records)
        self.log_dir = Path(out) / TB_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self.epochs_done if records else None)

    def epoch_logger(self) -> EpochCallback:
        """The ``on_epoch`` callback of the next cycle's training."""
        offset = self.epochs_done

        def on_epoch(epoch: int, scalars: dict[str, float]) -> None:
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", float(value), offset + epoch)

        return on_epoch

    def log_cycle(self, rec: dict) -> None:
        """The per-cycle scalars of a finished (and saved) cycle record."""
        step = int(rec["cycle"])
        for key in ("test_acc", "val_acc", "n_labelled", "final_train_loss", "seconds_train", "seconds_eval", "seconds_select"):
            value = rec.get(key)
            if value is not None:
                self.writer.add_scalar(f"cycle/{key}", float(value), step)
        self.epochs_done += int(rec.get("train_epochs") or 0)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


__all__ = ["TensorBoardLogger", "require_tensorboard", "EpochCallback", "TB_DIR"]
