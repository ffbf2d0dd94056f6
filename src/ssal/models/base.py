"""A classifier = backbone (image -> feature vector) + linear head.

Every method in ssal needs the same three things from a network: logits for the
task loss, features for self-supervised heads and selection (CoreSet uses the
encoder features f_q(x), Caramalau et al., BMVC 2022, Sec. 3), and both from one
forward pass. Keeping the backbone separate from the head lets SSL methods build
their momentum copies and projectors on ``.backbone`` alone.
"""

from __future__ import annotations

from torch import Tensor, nn


class Classifier(nn.Module):
    """``backbone`` maps (B, C, H, W) to (B, feat_dim); ``head`` is
    ``nn.Linear(feat_dim, num_classes)``.

    ``dropout > 0`` puts dropout between the features and the head, active in
    train mode only: the MC-dropout network of BALD (Gal et al., ICML 2017), which
    samples it at selection time. Features are returned before the dropout."""

    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if feat_dim < 1 or num_classes < 1:
            raise ValueError(f"feat_dim and num_classes must be positive, got {feat_dim} and {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.backbone = backbone
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, feat_dim) backbone features (after global pooling, before the head)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, num_classes) logits."""
        return self.head(self.dropout(self.backbone(x)))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and features from one backbone pass."""
        feats = self.backbone(x)
        return self.head(self.dropout(feats)), feats

    def forward_with_stages(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Logits, features and the backbone's intermediate stage maps (its
        ``stages``, channels ``backbone.stage_channels``) from one pass: the
        inputs of a Learning Loss module (Yoo & Kweon, CVPR 2019, Fig. 3)."""
        feats, stages = self.backbone.forward_with_stages(x)
        return self.head(self.dropout(feats)), feats, stages
