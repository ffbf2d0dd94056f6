"""Tests of the batched per-sample augmentation (ssal.augment).

Exact values on hand-made inputs, agreement with torchvision's per-image
functions, and invariants: per-sample randomness, determinism under a seed,
identities when an op's strength is zero.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from ssal import augment as A
from ssal.augment import StrongView, TestView, WeakView

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
MEAN1, STD1 = (0.29,), (0.35,)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=gen(seed))


def repeated(n: int, c: int, size: int) -> torch.Tensor:
    """A batch of ``n`` copies of one random image."""
    return images(1, c, size).expand(n, -1, -1, -1).contiguous()


def distinct_samples(y: torch.Tensor) -> int:
    return int(torch.unique(y.flatten(1), dim=0).shape[0])


FLOAT_OPS = {
    "random_resized_crop": lambda x, g: A.random_resized_crop(x, generator=g),
    "random_flip": lambda x, g: A.random_flip(x, generator=g),
    "random_crop": lambda x, g: A.random_crop(x, 4, g),
    "color_jitter": lambda x, g: A.color_jitter(x, generator=g),
    "color_jitter_yiq": lambda x, g: A.color_jitter(x, generator=g, hue_mode="yiq"),
    "random_grayscale": lambda x, g: A.random_grayscale(x, generator=g),
    "gaussian_blur": lambda x, g: A.gaussian_blur(x, 0.5, generator=g),
    "solarize": lambda x, g: A.solarize(x, 0.5, generator=g),
}


# ---------------------------------------------------------------- conversion


def test_to_float_and_normalize_hand_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    f = A.to_float(x)
    assert f.dtype == torch.float32
    assert torch.allclose(f.flatten(), torch.tensor([0.0, 0.2, 1.0]))
    y = A.normalize(f, (0.2,), (0.4,))
    assert torch.allclose(y.flatten(), torch.tensor([-0.5, 0.0, 2.0]), atol=1e-6)
    with pytest.raises(ValueError, match="one per channel"):
        A.normalize(f, MEAN3, STD3)


def test_channel_stats_hand_values_and_chunking() -> None:
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[1] = 255
    x[:, 2] = 51
    mean, std = A.channel_stats(x)
    assert mean == pytest.approx((0.5, 0.5, 0.2))
    assert std == pytest.approx((0.5, 0.5, 0.0), abs=1e-7)

    y = images(37, 3, 8)
    ref = y.double() / 255
    m_ref = ref.mean(dim=(0, 2, 3))
    s_ref = ref.std(dim=(0, 2, 3), unbiased=False)
    results = {chunk: A.channel_stats(y, chunk=chunk) for chunk in (1, 5, 1000)}
    assert results[1] == results[5] == results[1000]  # exact integer sums: chunking never matters
    m, s = results[5]
    assert torch.allclose(torch.tensor(m, dtype=torch.float64), m_ref, atol=1e-12)
    assert torch.allclose(torch.tensor(s, dtype=torch.float64), s_ref, atol=1e-12)


# ---------------------------------------------------------------- shapes, ranges


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", sorted(FLOAT_OPS))
def test_ops_keep_shape_dtype_device_and_range(name: str, c: int, size: int) -> None:
    x = A.to_float(images(8, c, size))
    y = FLOAT_OPS[name](x, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("c,mean,std", [(1, MEAN1, STD1), (3, MEAN3, STD3)])
@pytest.mark.parametrize("size", [28, 32])
def test_views_shape_dtype_and_value_range(c: int, mean: tuple[float, ...], std: tuple[float, ...], size: int) -> None:
    x = images(16, c, size)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for view in (WeakView(mean, std), StrongView(mean, std), TestView(mean, std)):
        y = view(x, gen(2))
        assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
        # undoing the normalisation lands in [0, 1]
        raw = y * s + m
        assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_random_resized_crop_out_size() -> None:
    x = A.to_float(images(4, 3, 32))
    assert A.random_resized_crop(x, out_size=16, generator=gen()).shape == (4, 3, 16, 16)
    assert A.random_resized_crop(x, out_size=(20, 24), generator=gen()).shape == (4, 3, 20, 24)


def test_views_channels_last_output() -> None:
    x = images(4, 3, 32)
    y = WeakView(MEAN3, STD3, memory_format=torch.channels_last)(x, gen())
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_test_view_is_plain_normalisation() -> None:
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2)
    y = TestView((0.5,), (0.5,))(x)
    assert torch.allclose(y.flatten(), torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="one per channel"):
        TestView(MEAN3, STD3)(x)


def test_color_ops_reject_uint8() -> None:
    with pytest.raises(TypeError, match="float"):
        A.color_jitter(images(2, 3, 8))


# ---------------------------------------------------------------- per-sample randomness, determinism


@pytest.mark.parametrize(
    "view", [WeakView(MEAN3, STD3), StrongView(MEAN3, STD3)], ids=["weak", "strong"]
)
def test_views_draw_per_sample_parameters(view: WeakView | StrongView) -> None:
    x = repeated(32, 3, 32)
    y = view(x, gen(3))
    # 32 copies of one image: a per-batch draw would give 1 distinct output
    assert distinct_samples(y) >= 28


@pytest.mark.parametrize("name", ["random_resized_crop", "random_crop", "color_jitter", "gaussian_blur"])
def test_ops_draw_per_sample_parameters(name: str) -> None:
    x = A.to_float(repeated(32, 3, 32))
    if name == "gaussian_blur":
        y = A.gaussian_blur(x, 1.0, generator=gen(4))
    elif name == "color_jitter":
        y = A.color_jitter(x, p=1.0, generator=gen(4))
    else:
        y = FLOAT_OPS[name](x, gen(4))
    assert distinct_samples(y) >= 20


@pytest.mark.parametrize(
    "view", [WeakView(MEAN3, STD3), StrongView(MEAN3, STD3)], ids=["weak", "strong"]
)
def test_views_deterministic_given_seed(view: WeakView | StrongView) -> None:
    x = images(16, 3, 32)
    a = view(x, gen(7))
    b = view(x, gen(7))
    c = view(x, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_probabilities_are_per_sample_frequencies() -> None:
    x = A.to_float(images(2000, 3, 4))
    flipped = (A.random_flip(x, 0.3, gen(5)) != x).flatten(1).any(1).float().mean()
    solar = (A.solarize(x, 0.2, 0.5, gen(6)) != x).flatten(1).any(1).float().mean()
    assert abs(float(flipped) - 0.3) < 0.04
    assert abs(float(solar) - 0.2) < 0.04


# ---------------------------------------------------------------- geometric ops


def test_flip_p1_equals_torch_flip_and_p0_identity() -> None:
    x = images(5, 3, 8)
    assert torch.equal(A.random_flip(x, 1.0, gen()), torch.flip(x, dims=[3]))
    assert torch.equal(A.random_flip(x, 0.0, gen()), x)


def test_crop_padding_zero_is_identity() -> None:
    x = images(5, 3, 8)
    assert torch.equal(A.random_crop(x, 0, gen()), x)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_crop_output_is_a_window_of_the_padded_image(mode: str) -> None:
    x = images(12, 3, 8)
    p = 2
    y = A.random_crop(x, p, gen(9), padding_mode=mode)  # type: ignore[arg-type]
    assert y.dtype == torch.uint8
    padded = F.pad(x.float(), (p, p, p, p), mode=mode).to(torch.uint8)
    offsets = set()
    for i in range(x.shape[0]):
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], y[i])
        ]
        assert hits, f"sample {i} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets vary between samples


def test_crop_smaller_out_size() -> None:
    x = images(3, 1, 10)
    y = A.random_crop(x, 0, gen(), out_size=6)
    assert y.shape == (3, 1, 6, 6)
    for i in range(3):
        assert any(
            torch.equal(x[i, :, a : a + 6, b : b + 6], y[i]) for a in range(5) for b in range(5)
        )


def test_resized_crop_full_box_is_identity() -> None:
    x = A.to_float(images(4, 3, 16))
    y = A.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen())
    assert torch.allclose(y, x, atol=1e-5)


def test_resized_crop_is_bilinear_resize_of_a_box() -> None:
    # scale 1/4 and ratio 1 on 16x16 -> an 8x8 box, upsampled 2x
    x = A.to_float(images(6, 3, 16))
    y = A.random_resized_crop(x, scale=(0.25, 0.25), ratio=(1.0, 1.0), generator=gen(11))
    for i in range(x.shape[0]):
        found = False
        for top in range(9):
            for left in range(9):
                box = x[i : i + 1, :, top : top + 8, left : left + 8]
                ref = F.interpolate(box, size=(16, 16), mode="bilinear", align_corners=False)
                if torch.allclose(ref[0], y[i], atol=1e-5):
                    found = True
                    break
            if found:
                break
        assert found, f"sample {i} is not a resized 8x8 box"


def test_resized_crop_whole_image_downscale_matches_interpolate() -> None:
    x = A.to_float(images(3, 3, 32))
    y = A.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), out_size=(12, 20), generator=gen())
    ref = F.interpolate(x, size=(12, 20), mode="bilinear", align_corners=False, antialias=False)
    assert torch.allclose(y, ref, atol=1e-5)


# ---------------------------------------------------------------- photometric ops


def test_grayscale_equal_channels_and_luma() -> None:
    x = A.to_float(images(6, 3, 8))
    y = A.random_grayscale(x, 1.0, gen())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    assert torch.allclose(y, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)
    one = A.to_float(images(6, 1, 8))
    assert torch.equal(A.random_grayscale(one, 1.0, gen()), one)


def test_solarize_threshold_hand_values() -> None:
    x = torch.tensor([0.0, 0.25, 0.49, 0.5, 0.75, 1.0]).view(1, 1, 1, 6)
    y = A.solarize(x, 1.0, 0.5, gen())
    assert torch.equal(y.flatten(), torch.tensor([0.0, 0.25, 0.49, 0.5, 0.25, 0.0]))
    assert torch.equal(A.solarize(x, 0.0, 0.5, gen()), x)


def test_blur_preserves_constant_image() -> None:
    x = torch.full((8, 3, 32, 32), 0.37)
    for k in (3, 5, 9):
        y = A.gaussian_blur(x, 1.0, kernel_size=k, generator=gen())
        assert torch.allclose(y, x, atol=1e-6)


def test_blur_matches_torchvision_for_fixed_sigma() -> None:
    x = A.to_float(images(4, 3, 16))
    y = A.gaussian_blur(x, 1.0, sigma=(1.3, 1.3), kernel_size=5, generator=gen())
    ref = TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[1.3, 1.3])
    assert torch.allclose(y, ref, atol=1e-5)
    assert A.default_blur_kernel(32, 32) == 3 and A.default_blur_kernel(224, 224) == 23


def test_jitter_zero_strengths_is_identity() -> None:
    for c in (1, 3):
        x = A.to_float(images(8, c, 8))
        y = A.color_jitter(x, 0.0, 0.0, 0.0, 0.0, p=1.0, generator=gen())
        assert torch.equal(y, x)


def test_jitter_brightness_is_per_sample_scaling() -> None:
    x = A.to_float(images(16, 3, 8)).clamp(0.05, 0.6)  # no clipping at 1.4x
    y = A.color_jitter(x, brightness=0.4, contrast=0, saturation=0, hue=0, p=1.0, generator=gen())
    factor = (y / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-5)
    assert float(factor.min()) >= 0.6 - 1e-6 and float(factor.max()) <= 1.4 + 1e-6
    assert torch.unique(factor[:, 0]).numel() == 16


def _recovered_factor(x: torch.Tensor, y: torch.Tensor, anchor: torch.Tensor) -> float:
    """Blend factor f of ``y = f x + (1 - f) anchor``, read at the unclipped pixel
    farthest from the anchor."""
    d = (x - anchor).expand_as(x)
    ok = (y > 0.01) & (y < 0.99)
    k = int(torch.where(ok, d.abs(), torch.zeros_like(d)).flatten().argmax())
    return float(((y - anchor).expand_as(x).flatten()[k]) / d.flatten()[k])


def test_jitter_contrast_and_saturation_match_torchvision() -> None:
    x = A.to_float(images(4, 3, 8))
    y = A.color_jitter(x, 0, 0.5, 0, 0, p=1.0, generator=gen(12))
    factors = []
    for i in range(4):
        mean = TF.rgb_to_grayscale(x[i]).mean()
        f = _recovered_factor(x[i], y[i], mean)
        assert 0.5 - 1e-4 <= f <= 1.5 + 1e-4
        assert torch.allclose(TF.adjust_contrast(x[i], f), y[i], atol=1e-5)
        factors.append(f)
    assert len(set(round(f, 4) for f in factors)) == 4
    z = A.color_jitter(x, 0, 0, 0.5, 0, p=1.0, generator=gen(12))
    for i in range(4):
        f = _recovered_factor(x[i], z[i], TF.rgb_to_grayscale(x[i]))
        assert 0.5 - 1e-4 <= f <= 1.5 + 1e-4
        assert torch.allclose(TF.adjust_saturation(x[i], f), z[i], atol=1e-5)


def test_hue_shift_matches_torchvision() -> None:
    x = A.to_float(images(6, 3, 8))
    x[0] = 0.5  # grey image: hue undefined, must stay grey
    shifts = torch.tensor([0.3, -0.5, -0.1, 0.0, 0.25, 0.5])
    y = A._hue_shift_hsv(x, shifts.view(-1, 1, 1))
    for i in range(6):
        assert torch.allclose(y[i], TF.adjust_hue(x[i], float(shifts[i])), atol=1e-5)


def test_yiq_hue_rotation_keeps_luma_and_full_turn_is_identity() -> None:
    x = A.to_float(images(4, 3, 8)) * 0.5 + 0.25  # room so that clamping does not bite
    full = A._adjust_hue(x, torch.full((4,), 1.0), "yiq")
    assert torch.allclose(full, x, atol=1e-5)
    small = A._adjust_hue(x, torch.full((4,), 0.02), "yiq")
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((small * luma).sum(1), (x * luma).sum(1), atol=1e-4)
    assert not torch.allclose(small, x, atol=1e-3)


def test_jitter_on_gray_channel_changes_only_brightness_contrast() -> None:
    x = A.to_float(images(8, 1, 8))
    # saturation / hue alone are no-ops on 1-channel images
    assert torch.equal(A.color_jitter(x, 0, 0, 0.5, 0.5, p=1.0, generator=gen()), x)
    y = A.color_jitter(x, 0.4, 0.4, 0, 0, p=1.0, generator=gen())
    assert not torch.equal(y, x)


def test_strong_view_on_one_channel_images() -> None:
    x = images(8, 1, 28)
    y = StrongView(MEAN1, STD1)(x, gen())
    assert y.shape == (8, 1, 28, 28)
    assert torch.isfinite(y).all()


def test_rrc_fallback_box_when_ratio_cannot_fit() -> None:
    # a wide 4x32 image: most proposals do not fit, the fallback must stay in bounds
    top, left, h, w = A._rrc_boxes(200, 4, 32, (0.9, 1.0), (0.9, 1.1), gen())
    # no proposal fits (each needs about 11x11), so every box is the central
    # 4 x round(4 * 1.1) = 4x4 crop, as torchvision's fallback
    assert torch.equal(h, torch.full((200,), 4)) and torch.equal(w, torch.full((200,), 4))
    assert torch.equal(top, torch.zeros(200, dtype=torch.long))
    assert torch.equal(left, torch.full((200,), 14))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_match_cpu() -> None:
    x = images(16, 3, 32)
    for view in (WeakView(MEAN3, STD3), StrongView(MEAN3, STD3)):
        cpu = view(x, gen(5))
        cuda = view(x.cuda(), gen(5))
        assert cuda.device.type == "cuda"
        assert torch.allclose(cuda.cpu(), cpu, atol=1e-4)
