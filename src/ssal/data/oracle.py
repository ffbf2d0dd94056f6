"""The oracle and the active pool: the only place pool labels live.

METHODS.md section 1: the labels of the unlabelled pool ``U`` must be
unreachable by training and selection code. Here the ground truth is captured in
a closure of :class:`GroundTruthOracle`; no attribute holds it. Code can read a
label only through :meth:`ActivePool.targets`, which raises
:class:`~ssal.errors.PoolLabelAccessError` for any index not yet revealed, and an
index is revealed only by :meth:`ActivePool.label` (the act of labelling).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ..errors import PoolLabelAccessError


class Oracle(Protocol):
    """Something that can label pool images: the stored ground truth in
    experiments, a person in a labelling campaign."""

    def reveal(self, idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...


class GroundTruthOracle:
    """Reveals stored ground-truth labels, one index at a time, on request.

    The labels are kept in a closure, not an attribute, so ``vars(oracle)``,
    pickling or attribute access cannot reach them.
    """

    __slots__ = ("_reveal", "num_items")

    def __init__(self, labels: torch.Tensor) -> None:
        hidden = labels.detach().to("cpu", torch.long).clone()

        def reveal(idx: torch.Tensor) -> torch.Tensor:
            return hidden[idx].clone()

        self._reveal: Callable[[torch.Tensor], torch.Tensor] = reveal
        self.num_items = int(hidden.numel())

    def reveal(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return self._reveal(idx)

    def __getstate__(self) -> None:
        raise TypeError("GroundTruthOracle cannot be pickled: it would leak pool labels")

    def __reduce__(self):  # noqa: D105 - same reason as __getstate__
        raise TypeError("GroundTruthOracle cannot be pickled: it would leak pool labels")


class ActivePool:
    """The train pool split into labelled ``L`` and unlabelled ``U`` indices.

    ``images`` are visible for every index (self-supervised objectives use them);
    labels are visible only for labelled indices.
    """

    def __init__(self, images: torch.Tensor, oracle: Oracle, num_classes: int) -> None:
        self.images = images
        self.num_classes = num_classes
        self._oracle = oracle
        n = int(images.shape[0])
        self._is_labelled = torch.zeros(n, dtype=torch.bool)
        self._order: list[int] = []
        self._known = torch.full((n,), -1, dtype=torch.long)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def labelled(self) -> torch.Tensor:
        """Labelled indices in the order they were labelled."""
        return torch.tensor(self._order, dtype=torch.long)

    @property
    def unlabelled(self) -> torch.Tensor:
        """Unlabelled indices, ascending."""
        return torch.nonzero(~self._is_labelled).flatten()

    @property
    def num_labelled(self) -> int:
        return len(self._order)

    def label(self, idx: torch.Tensor) -> torch.Tensor:
        """Ask the oracle for the labels of ``idx`` (pool indices, all currently
        unlabelled and distinct) and move them to ``L``. Returns their labels."""
        idx = torch.as_tensor(idx, dtype=torch.long).flatten()
        if idx.numel() == 0:
            return torch.empty(0, dtype=torch.long)
        if idx.unique().numel() != idx.numel():
            raise ValueError("label(): indices must be distinct")
        if bool(self._is_labelled[idx].any()):
            raise ValueError("label(): some indices are already labelled")
        labels = torch.as_tensor(self._oracle.reveal(idx), dtype=torch.long)
        if labels.shape != idx.shape:
            raise ValueError("oracle returned labels of the wrong shape")
        self._known[idx] = labels
        self._is_labelled[idx] = True
        self._order.extend(idx.tolist())
        return labels.clone()

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Labels of labelled indices. Any unlabelled index raises
        :class:`PoolLabelAccessError`: this is the pool-label guard."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        if not bool(self._is_labelled[idx].all()):
            bad = idx[~self._is_labelled[idx]][:5].tolist()
            raise PoolLabelAccessError(f"label of unlabelled pool index {bad} requested: pool labels are hidden")
        return self._known[idx].clone()

    def labelled_targets(self) -> torch.Tensor:
        """Labels of ``L``, aligned with :attr:`labelled`."""
        return self.targets(self.labelled)

    def class_histogram(self, idx: torch.Tensor) -> list[int]:
        """Class counts among labelled indices ``idx``."""
        return torch.bincount(self.targets(idx), minlength=self.num_classes).tolist()

    def state_dict(self) -> dict:
        """What a resume or a campaign needs: the labelled indices in order and
        their labels (already revealed, so not secret)."""
        return {"order": list(self._order), "labels": self._known[self.labelled].tolist()}

    def load_state_dict(self, state: dict) -> None:
        order = torch.tensor(state["order"], dtype=torch.long)
        labels = torch.tensor(state["labels"], dtype=torch.long)
        self._is_labelled.zero_()
        self._known.fill_(-1)
        self._order = order.tolist()
        self._is_labelled[order] = True
        self._known[order] = labels
