"""Tests of the backbones, the classifier wrapper and the model registry
(ssal.models): every registered model runs forward and backward on 1- and
3-channel 28 and 32 px input, in both memory formats (timm's test_models idea)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssal.errors import SsalError
from ssal.models import MODELS, Classifier, build_model

FEAT_DIMS = {"resnet18": 512, "vgg16": 512, "smallcnn": 256}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, int], Classifier]:
    """One model per (name, channels), built once: resnet18 and vgg16 take ~1 s each."""
    torch.manual_seed(0)
    return {(name, c): build_model(name, num_classes=10, in_channels=c) for name in MODELS for c in (1, 3)}


def test_registry_lists_the_backbones() -> None:
    assert set(MODELS) == {"resnet18", "vgg16", "smallcnn"}


# resnet18 / vgg16 backward passes take seconds on a 2-core CPU: train-mode
# forward+backward on the two dataset shapes, eval forward on the mixed ones.
TRAIN_CASES = [(name, c, size) for name in sorted(FEAT_DIMS) for c, size in ((1, 28), (3, 32))] + [
    ("smallcnn", 3, 28),
    ("smallcnn", 1, 32),
]
EVAL_CASES = [(name, c, size) for name in ("resnet18", "vgg16") for c, size in ((3, 28), (1, 32))]


@pytest.mark.parametrize("name,c,size", TRAIN_CASES)
def test_forward_backward_shapes(models: dict[tuple[str, int], Classifier], name: str, c: int, size: int) -> None:
    model = models[(name, c)]
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, c, size, size)
    logits, feats = model.forward_with_features(x)
    assert logits.shape == (2, 10)
    assert feats.shape == (2, FEAT_DIMS[name]) and model.feat_dim == FEAT_DIMS[name]
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    # gradients reach the first convolution and the head
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and float(first_conv.weight.grad.abs().sum()) > 0
    assert model.head.weight.grad is not None and float(model.head.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("name,c,size", EVAL_CASES)
def test_eval_forward_shapes(models: dict[tuple[str, int], Classifier], name: str, c: int, size: int) -> None:
    model = models[(name, c)].eval()
    with torch.no_grad():
        logits, feats = model.forward_with_features(torch.randn(1, c, size, size))
    assert logits.shape == (1, 10) and feats.shape == (1, FEAT_DIMS[name])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(FEAT_DIMS))
def test_forward_features_and_logits_agree(models: dict[tuple[str, int], Classifier], name: str) -> None:
    model = models[(name, 3)].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, feats = model.forward_with_features(x)
        assert torch.allclose(model(x), logits, atol=1e-5)
        assert torch.allclose(model.features(x), feats, atol=1e-5)
        assert torch.allclose(model.head(feats), logits, atol=1e-5)
    # eval mode is per-sample: a sample's output does not depend on its batch
    with torch.no_grad():
        single = model(x[:1])
    assert torch.allclose(single, logits[:1], atol=1e-4)


@pytest.mark.parametrize("name", sorted(FEAT_DIMS))
def test_channels_last_matches_contiguous(models: dict[tuple[str, int], Classifier], name: str) -> None:
    model = models[(name, 3)].eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_feature_dims_and_parameter_counts(models: dict[tuple[str, int], Classifier]) -> None:
    # CIFAR ResNet-18 with a 10-class head: 11,173,962 parameters (kuangliu/pytorch-cifar)
    assert n_params(models[("resnet18", 3)]) == 11_173_962
    # the same reference VGG-16 has 14,728,266; ours drops the 4,224 conv biases
    # that the following BatchNorm makes redundant
    assert n_params(models[("vgg16", 3)]) == 14_728_266 - 4_224
    small = n_params(models[("smallcnn", 3)])
    assert 700_000 <= small <= 1_500_000
    # 1-channel input only shrinks the first convolution
    for name in FEAT_DIMS:
        first = next(m for m in models[(name, 3)].backbone.modules() if isinstance(m, nn.Conv2d))
        diff = n_params(models[(name, 3)]) - n_params(models[(name, 1)])
        assert diff == 2 * first.out_channels * 9


def test_smallcnn_width_option() -> None:
    narrow = build_model("smallcnn", 10, width=32)
    assert narrow.feat_dim == 128
    assert 250_000 <= n_params(narrow) <= 350_000
    explicit = build_model("smallcnn", 10, width=(16, 32, 48))
    assert explicit.feat_dim == 48
    assert explicit(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_unknown_model_and_bad_options_raise_ssal_error() -> None:
    with pytest.raises(SsalError, match=r"unknown model 'x'; choose one of: resnet18, smallcnn, vgg16"):
        build_model("x", 10)
    with pytest.raises(SsalError, match="no option 'depth'"):
        build_model("smallcnn", 10, depth=3)
    with pytest.raises(SsalError, match="in_channels"):
        build_model("smallcnn", 10, in_channels=2)


def test_classifier_wraps_any_backbone() -> None:
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    model = Classifier(backbone, feat_dim=5, num_classes=3)
    x = torch.randn(2, 3, 2, 2)
    logits, feats = model.forward_with_features(x)
    assert feats.shape == (2, 5) and logits.shape == (2, 3)
    assert torch.allclose(logits, feats @ model.head.weight.T + model.head.bias)
