"""Learning Loss for Active Learning (Yoo & Kweon, CVPR 2019).

A small loss-prediction module reads the task network's intermediate feature
maps and predicts, for each image, the loss the task network will suffer on it
(paper Sec. 3.2, Fig. 3). It is trained jointly with the task network with a
pairwise margin ranking loss (paper Sec. 3.3, Eq. 2-3) and, at selection time,
the unlabelled images with the highest predicted loss are labelled (Sec. 3.1).

As in the released code (Mephisto405/Learning-Loss-for-Active-Learning, also
used by the MoBYv2AL baselines), the module's inputs are detached from the task
network after epoch 120 of 200, so the ranking loss stops shaping the backbone
for the last 40% of training (METHODS.md sec. 7); :func:`ssal.train.train_supervised`
applies that schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LossPredictionModule", "loss_ranking_loss"]


class LossPredictionModule(nn.Module):
    """The loss-prediction module of Yoo & Kweon (CVPR 2019), Sec. 3.2 and Fig. 3.

    For each of the backbone's stage maps: global average pooling, a fully
    connected layer to ``hidden`` (128 in the paper) units and a ReLU; the
    per-stage vectors are concatenated and one fully connected layer maps them
    to a scalar, the predicted loss ``l_hat``.

    stage_channels: channels of each stage map, in order (``backbone.stage_channels``).
    """

    def __init__(self, stage_channels: Sequence[int], hidden: int = 128) -> None:
        super().__init__()
        stage_channels = tuple(int(c) for c in stage_channels)
        if not stage_channels or min(stage_channels) < 1 or hidden < 1:
            raise ValueError(f"need at least one stage with positive channels and hidden >= 1, got {stage_channels}, {hidden}")
        self.stage_channels = stage_channels
        self.fcs = nn.ModuleList(nn.Linear(c, hidden) for c in stage_channels)
        self.out = nn.Linear(hidden * len(stage_channels), 1)

    def forward(self, stages: Sequence[Tensor]) -> Tensor:
        """(B,) predicted losses from the stage maps ``(B, C_k, H_k, W_k)``."""
        if len(stages) != len(self.fcs):
            raise ValueError(f"expected {len(self.fcs)} stage maps, got {len(stages)}")
        hs = [F.relu(fc(torch.flatten(F.adaptive_avg_pool2d(s, 1), 1))) for fc, s in zip(self.fcs, stages)]
        return self.out(torch.cat(hs, dim=1)).squeeze(1)


def loss_ranking_loss(pred: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Loss-prediction loss of Yoo & Kweon (CVPR 2019), Sec. 3.3, Eq. 2 (averaged as in Eq. 3).

    A batch of size B is split into B // 2 pairs as in the released code: the
    first half against the reversed second half, pair p = (p, B' - 1 - p) with
    B' = B rounded down to even (an odd batch leaves its last sample out). For
    a pair (i, j) with true losses ``l`` (``target``, detached here) and
    predictions ``l_hat`` (``pred``)::

        L(i, j) = max(0, -1(l_i, l_j) * (l_hat_i - l_hat_j) + margin),
        1(l_i, l_j) = +1 if l_i > l_j, -1 otherwise            (Eq. 2)

    and the result is the mean over pairs. Only the ranking of the pair's true
    losses matters, not their scale, which is why the paper prefers it to an MSE
    on the loss values. Ties (l_i == l_j) count as -1, as in the paper's Eq. 2
    and the released code (``2 * sign(clamp(target, min=0)) - 1``). A batch of
    fewer than two samples gives zero.

    pred, target: (B,) predicted and true per-sample losses.
    """
    if pred.ndim != 1 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be 1-D of equal length, got {tuple(pred.shape)} and {tuple(target.shape)}")
    half = pred.shape[0] // 2
    if half == 0:
        return (pred * 0.0).sum()
    even = 2 * half
    pred, target = pred[:even], target[:even].detach()
    diff_pred = (pred - pred.flip(0))[:half]  # l_hat_p - l_hat_{B'-1-p}
    diff_true = (target - target.flip(0))[:half]
    sign = torch.where(diff_true > 0, 1.0, -1.0).to(diff_pred.dtype)
    return torch.clamp(margin - sign * diff_pred, min=0).mean()
