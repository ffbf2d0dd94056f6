"""Multi-crop pretraining (ssl.multicrop): the loss over view pairs, queues,
the cache key, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssal.config import resolve_config
from ssal.errors import SsalError
from ssal.models import build_backbone
from ssal.ssl import SSL_METHODS, build_ssl
from ssal.ssl.base import multicrop_mean
from ssal.ssl.byol import byol_loss
from ssal.ssl.moby import moby_loss

@pytest.fixture(scope="module")
def sample():
    from ssal.data import load_dataset

    return load_dataset("sample")[0]


MULTICROP = [name for name, cls in SSL_METHODS.items() if cls.supports_multicrop]


def _method(name: str, seed: int = 0):
    torch.manual_seed(seed)
    enc = build_backbone("smallcnn", 3, width=8)
    return build_ssl(name, enc, enc.feat_dim).eval()  # eval: BN uses running stats, so re-encoding is exact


def _views(b: int = 6, locals_: int = 2):
    g = torch.Generator().manual_seed(3)
    glob = [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]
    small = [torch.randn(b, 3, 16, 16, generator=g) for _ in range(locals_)]
    return glob, small


def test_multicrop_mean_is_the_global_term_without_crops_and_a_plain_mean_with_them() -> None:
    g, a, b = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 5.0]), torch.tensor([6.0, 1.0])
    assert multicrop_mean(g, []) is g
    assert torch.equal(multicrop_mean(g, [a, b]), torch.tensor([3.0, 3.0]))


def test_supporting_methods_and_the_rest() -> None:
    assert set(MULTICROP) == {"moby", "byol", "mocov2", "simclr", "simsiam", "vicreg"}
    assert not SSL_METHODS["pcl"].supports_multicrop and not SSL_METHODS["rotation"].supports_multicrop


@pytest.mark.parametrize("name", MULTICROP)
def test_no_small_crop_gives_the_two_view_loss_and_crops_change_it(name: str) -> None:
    m = _method(name)
    glob, small = _views()
    plain = m(glob, update=False)
    empty = m(glob, update=False, local_views=[])
    crops = m(glob, update=False, local_views=small)
    assert torch.equal(plain.loss, empty.loss) and torch.equal(plain.per_sample, empty.per_sample)
    assert not torch.equal(plain.per_sample, crops.per_sample)
    assert crops.per_sample.shape == (6,) and torch.equal(crops.features, plain.features)


def test_byol_small_crop_terms_match_a_hand_computation() -> None:
    m = _method("byol")
    glob, small = _views()
    with torch.no_grad():
        out = m(glob, update=False, local_views=small)
        pred = lambda x: m.predictor(m.projector(m.encoder(x)))  # noqa: E731
        z1, z2 = m.target_keys(glob[0]), m.target_keys(glob[1])
        terms = [byol_loss(pred(glob[0]), pred(glob[1]), z1, z2, "none")]
        for v in small:  # a crop's prediction against both global targets, never a crop's own target
            p = pred(v)
            terms.append((2 - 2 * F.cosine_similarity(p, z2)) + (2 - 2 * F.cosine_similarity(p, z1)))
    expected = torch.stack(terms).mean(0)
    assert torch.allclose(out.per_sample, expected, atol=1e-6)
    assert torch.allclose(out.loss, expected.mean(), atol=1e-6)


def test_moby_small_crops_use_both_queues_and_enqueue_nothing() -> None:
    m = _method("moby")
    glob, small = _views()
    q1_before, q2_before = m.queue1.keys.clone(), m.queue2.keys.clone()
    with torch.no_grad():
        out = m(glob, update=True, local_views=small)
        query = lambda x: F.normalize(m.predictor(m.projector(m.encoder(x))), dim=1)  # noqa: E731
        k1, k2 = m.target_keys(glob[0]), m.target_keys(glob[1])
        terms = [moby_loss(query(glob[0]), query(glob[1]), k1, k2, q1_before, q2_before, 0.2, "none")]
        terms += [moby_loss(query(v), query(v), k1, k2, q1_before, q2_before, 0.2, "none") for v in small]
    assert torch.allclose(out.per_sample, torch.stack(terms).mean(0), atol=1e-5)
    # only the 6 keys of each global view were queued, not the 2 x 6 of the crops
    assert int(m.queue1.ptr) == int(m.queue2.ptr) == 6
    assert torch.equal(m.queue1.keys[:6], k1) and torch.equal(m.queue1.keys[6:], q1_before[6:])


@pytest.mark.parametrize("name", MULTICROP)
def test_small_crops_train_the_online_encoder(name: str) -> None:
    m = _method(name).train()
    glob, small = _views()
    m.zero_grad()
    m(glob, update=False).loss.backward()
    g_plain = torch.cat([p.grad.flatten() for p in m.encoder.parameters()])
    m.zero_grad()
    m(glob, update=False, local_views=small).loss.backward()
    g_crops = torch.cat([p.grad.flatten() for p in m.encoder.parameters()])
    assert g_crops.abs().sum() > 0 and not torch.allclose(g_plain, g_crops)
    for mod in ("target_encoder", "target_projector"):
        if hasattr(m, mod):
            assert all(p.grad is None for p in getattr(m, mod).parameters())


def test_cache_key_holds_for_two_views_and_changes_with_crops() -> None:
    from omegaconf import OmegaConf

    from ssal.pretrain import pretrain_key

    base = resolve_config(None, ["ssl.method=byol"]).ssl
    older = {k: v for k, v in OmegaConf.to_container(base).items() if not k.startswith("multicrop")}
    key = lambda s: pretrain_key("fp", "smallcnn", {"width": 8}, 3, s)  # noqa: E731
    assert key(base) == key(older)  # caches written before multi-crop existed keep their key
    assert key(base) == key(resolve_config(None, ["ssl.method=byol", "ssl.multicrop_size=24"]).ssl)
    four = resolve_config(None, ["ssl.method=byol", "ssl.multicrop=4"]).ssl
    assert key(four) != key(base)
    assert key(four) != key(resolve_config(None, ["ssl.method=byol", "ssl.multicrop=4", "ssl.multicrop_size=24"]).ssl)


def test_multicrop_pretraining_runs_and_costs_more_images(tmp_path, sample) -> None:
    from ssal.augment import channel_stats
    from ssal.pretrain import local_views, pretrain

    images = sample.images[:64]
    mean, std = channel_stats(images)
    common = ["ssl.method=byol", "ssl.epochs=1", "ssl.batch_size=32", "ssl.amp=false", f"ssl.cache_dir={tmp_path}"]
    cfg = resolve_config(None, [*common, "ssl.multicrop=3", "ssl.multicrop_size=12"])
    crops = local_views(cfg.ssl, mean, std)
    assert len(crops) == 3 and crops[0](images[:4], torch.Generator().manual_seed(0)).shape == (4, 1, 12, 12)
    kw = dict(model="smallcnn", model_kwargs={"width": 8}, mean=mean, std=std, device=torch.device("cpu"), progress=False, log=lambda s: None)
    with_crops, meta, folder = pretrain(images, ssl_cfg=cfg.ssl, **kw)
    plain, _, folder2 = pretrain(images, ssl_cfg=resolve_config(None, common).ssl, **kw)
    assert folder != folder2 and meta["ssl"]["multicrop"] == 3 and meta["steps"] == 2
    assert any(not torch.equal(with_crops[k], plain[k]) for k in plain if with_crops[k].is_floating_point())


def test_multicrop_errors_are_one_line_and_name_the_setting(tmp_path, sample) -> None:
    from ssal.augment import channel_stats
    from ssal.pretrain import pretrain

    for bad, msg in [
        (["ssl.multicrop=-1"], "ssl.multicrop=-1"),
        (["ssl.multicrop_size=4"], "ssl.multicrop_size=4"),
        (["ssl.multicrop_scale=[0.5, 0.2]"], "ssl.multicrop_scale"),
        (["ssl.multicrop=2", "train.mode=joint"], "not joint training"),
    ]:
        with pytest.raises(SsalError, match=msg.replace("[", r"\[")):
            resolve_config(None, bad)
    images = sample.images[:40]
    mean, std = channel_stats(images)
    for method in ("rotation", "pcl"):
        cfg = resolve_config(None, [f"ssl.method={method}", "ssl.multicrop=2", f"ssl.cache_dir={tmp_path}"])
        with pytest.raises(SsalError, match=f"{method} takes no multi-crop views") as err:
            pretrain(images, "smallcnn", {"width": 8}, cfg.ssl, mean, std, torch.device("cpu"), progress=False, log=lambda s: None)
        assert "\n" not in str(err.value)
    assert not any(tmp_path.iterdir())  # refused before any folder was made


def test_diverging_pretraining_is_a_one_line_error_naming_the_lr(tmp_path, sample, capsys) -> None:
    from ssal.cli import main

    args = ["pretrain", "-q", "ssl.method=vicreg", "ssl.lr=1e6", "ssl.epochs=1", "ssl.batch_size=32", "subset=64", "model_width=8", f"cache_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "diverged" in err and "ssl.lr (now 1000000.0)" in err and "\n" not in err and "Traceback" not in err


def test_mocov2_queues_only_the_global_keys() -> None:
    m = _method("mocov2")
    glob, small = _views()
    m(glob, update=True, local_views=small)
    assert int(m.queue.ptr) == 2 * 6  # the keys of both global views, none of the 2 x 6 crops


def test_vicreg_small_crop_terms_equal_the_reference_pair_losses() -> None:
    from ssal.ssl.vicreg import vicreg_loss

    m = _method("vicreg")
    glob, small = _views()
    with torch.no_grad():
        out = m(glob, update=False, local_views=small)
        z = [m.projector(m.encoder(v)) for v in [*glob, *small]]
        terms = [vicreg_loss(z[0], z[1])] + [(vicreg_loss(zl, z[0]) + vicreg_loss(zl, z[1])) / 2 for zl in z[2:]]
        per = [vicreg_loss(z[0], z[1], reduction="none")]
        per += [(vicreg_loss(zl, z[0], reduction="none") + vicreg_loss(zl, z[1], reduction="none")) / 2 for zl in z[2:]]
    assert torch.allclose(out.loss, torch.stack(terms).mean(), rtol=1e-5)
    assert torch.allclose(out.per_sample, torch.stack(per).mean(0), rtol=1e-5)
