"""PCL (Li et al., ICLR 2021): concentration and ProtoNCE against hand and loop
computations, the negative draw, the warm-up (plain MoCo v2 loss), the E-step on
tiny data, side-effect-free scoring, and the registry."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from ssal.errors import SsalError
from ssal.models import build_model
from ssal.ssl import SSL_METHODS, build_ssl
from ssal.ssl.mocov2 import MoCoV2, info_nce
from ssal.ssl.pcl import (
    PCL,
    auto_num_clusters,
    concentration,
    proto_loss,
    proto_nce_loss,
    sample_negatives,
)

# -- concentration (Eq. 12) ------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, by hand."""
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def test_concentration_matches_hand_computation() -> None:
    pts = [
        (0.0, 0.0), (2.0, 0.0),  # cluster 0, centroid (1, 0): distances 1, 1
        (10.0, 0.0), (10.0, 4.0), (10.0, -4.0),  # cluster 1, centroid (10, 0): 0, 4, 4
        (50.0, 50.0),  # cluster 2: a singleton
        (0.0, 10.0), (0.0, 12.0), (0.0, 14.0), (0.0, 16.0),  # cluster 3, centroid (0, 13): 3, 1, 1, 3
    ]  # cluster 4: empty
    x = torch.tensor(pts)
    a = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3, 3])
    c = torch.tensor([[1.0, 0.0], [10.0, 0.0], [50.0, 50.0], [0.0, 13.0], [7.0, 7.0]])
    phi0 = 1.0 / math.log(2 + 10)
    phi1 = (8.0 / 3.0) / math.log(3 + 10)
    phi3 = 2.0 / math.log(4 + 10)
    raw = [phi0, phi1, phi1, phi3, phi1]  # singleton and empty cluster: the max
    lo, hi = _percentile(raw, 0.1), _percentile(raw, 0.9)
    assert lo == pytest.approx(phi0 + 0.4 * (phi3 - phi0)) and hi == pytest.approx(phi1)
    clipped = [min(max(v, lo), hi) for v in raw]
    want = [0.2 * v / (sum(clipped) / 5) for v in clipped]
    got = concentration(x, a, c, 5, alpha=10.0, temperature=0.2)
    assert got.shape == (5,) and got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    assert float(got.mean()) == pytest.approx(0.2, abs=1e-6)
    assert float(got[2]) == pytest.approx(float(got.max())) and float(got[4]) == pytest.approx(float(got.max()))
    # another temperature rescales, nothing else
    assert torch.allclose(concentration(x, a, c, 5, temperature=0.5), got * 2.5, atol=1e-6)


def test_concentration_all_singletons_is_the_temperature() -> None:
    x = torch.randn(3, 4)
    got = concentration(x, torch.tensor([0, 1, 2]), x.clone(), 4, temperature=0.3)
    assert torch.allclose(got, torch.full((4,), 0.3))


# -- ProtoNCE (Eq. 11) ------------------------------------------------------------


def _loop_proto(q, c, phi, pos, neg, batch_prototypes=True) -> list[float]:
    """Each row: its own prototype first, then the negatives - the batch's other
    distinct clusters (with ``batch_prototypes``) and the sampled ones."""
    out = []
    for i in range(q.shape[0]):
        others = sorted(set(pos.tolist()) - {int(pos[i])}) if batch_prototypes else []
        logits = [float(q[i] @ c[pos[i]]) / float(phi[pos[i]])]
        logits += [float(q[i] @ c[j]) / float(phi[j]) for j in others + neg.tolist()]
        out.append(-logits[0] + math.log(sum(math.exp(v) for v in logits)))
    return out


def test_proto_term_equals_a_loop() -> None:
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    c = F.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=1)
    phi = 0.1 + torch.rand(7, generator=g, dtype=torch.float64) * 0.3
    pos = torch.tensor([0, 0, 2, 5])
    neg = sample_negatives(pos, 7, 2, torch.Generator().manual_seed(11))
    assert torch.equal(neg, sample_negatives(pos, 7, 2, torch.Generator().manual_seed(11)))  # seeded: fixed
    want = torch.tensor(_loop_proto(q, c, phi, pos, neg), dtype=torch.float64)
    got = proto_loss(q, c, phi, pos, neg, "none")
    assert torch.allclose(got, want, atol=1e-10)
    assert float(proto_loss(q, c, phi, pos, neg)) == pytest.approx(float(want.mean()))
    # Eq. 11 literally: own prototype and the sampled negatives only
    strict = torch.tensor(_loop_proto(q, c, phi, pos, neg, batch_prototypes=False), dtype=torch.float64)
    assert torch.allclose(proto_loss(q, c, phi, pos, neg, "none", batch_prototypes=False), strict, atol=1e-10)
    assert bool((got > strict).all())  # more negatives, a larger loss (rows 0-1 see clusters 2 and 5, ...)
    # a batch that uses every cluster: no sampled negative is left, but the in-batch ones still give a loss
    full = torch.tensor([0, 1, 2, 3])
    none = sample_negatives(full, 4, 5)
    assert none.numel() == 0
    assert bool((proto_loss(q, c[:4], phi[:4], full, none, "none") > 0.1).all())
    assert torch.allclose(proto_loss(q, c[:4], phi[:4], full, none, "none", batch_prototypes=False), torch.zeros(4, dtype=torch.float64))


def test_proto_nce_loss_is_infonce_plus_mean_of_granularities() -> None:
    g = torch.Generator().manual_seed(5)
    q = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=1)
    queue = F.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=1)
    cs = [F.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=1) for n in (5, 9)]
    phis = [0.1 + torch.rand(n, generator=g, dtype=torch.float64) for n in (5, 9)]
    assigns = [torch.randint(0, n, (20,), generator=g) for n in (5, 9)]
    index = torch.tensor([3, 17, 8, 0])
    got = proto_nce_loss(q, k, queue, cs, phis, assigns, index, 0.2, 3, torch.Generator().manual_seed(1), "none")
    gen = torch.Generator().manual_seed(1)  # the same draws, in the same order
    want = info_nce(q, k, queue, 0.2, "none").tolist()
    for c, phi, a in zip(cs, phis, assigns):
        pos = a[index]
        neg = sample_negatives(pos, c.shape[0], 3, gen)
        want = [w + v / 2 for w, v in zip(want, _loop_proto(q, c, phi, pos, neg))]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-10)
    # no granularity: plain InfoNCE
    assert torch.allclose(proto_nce_loss(q, k, queue, [], [], [], index, reduction="none"), info_nce(q, k, queue, 0.2, "none"))


def test_negatives_never_include_a_batch_cluster() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        k = int(torch.randint(2, 30, (1,), generator=g))
        pos = torch.randint(0, k, (int(torch.randint(1, 10, (1,), generator=g)),), generator=g)
        r = int(torch.randint(0, 12, (1,), generator=g))
        neg = sample_negatives(pos, k, r, g)
        free = set(range(k)) - set(pos.tolist())
        assert set(neg.tolist()) <= free
        assert len(set(neg.tolist())) == neg.numel() == min(r, len(free))
    assert set(sample_negatives(torch.tensor([0, 2]), 5, 100, g).tolist()) == {1, 3, 4}  # r capped: all of them
    none = sample_negatives(torch.tensor([0, 1, 2]), 3, 4, g)
    assert none.numel() == 0
    q = F.normalize(torch.randn(3, 2), dim=1)
    assert torch.allclose(proto_loss(q, F.normalize(torch.randn(3, 2), dim=1), torch.ones(3), torch.tensor([0, 1, 2]), none, "none", batch_prototypes=False), torch.zeros(3))


def test_negative_draw_is_uniform() -> None:
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(2000):
        counts[sample_negatives(torch.tensor([0, 1]), 10, 2, g)] += 1
    assert counts[:2].sum() == 0
    assert torch.allclose(counts[2:] / 2000, torch.full((8,), 2 / 8), atol=0.04)


# -- the module ------------------------------------------------------------------


def _backbone():
    torch.manual_seed(0)
    return build_model("smallcnn", 10, 3, width=8).backbone


def _batches(x: torch.Tensor, bs: int = 16):
    return lambda: (x[s : s + bs] for s in range(0, x.shape[0], bs))


def _views(n: int = 8, seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)], torch.randperm(60, generator=g)[:n]


def test_warmup_loss_is_mocov2() -> None:
    enc = _backbone()
    torch.manual_seed(1)
    moco = MoCoV2(copy.deepcopy(enc), enc.feat_dim, queue_size=32, momentum=0.999)
    pcl = PCL(copy.deepcopy(enc), enc.feat_dim, queue_size=32, num_clusters=(3, 6), warmup_epochs=2)
    pcl.load_state_dict(moco.state_dict(), strict=False)  # the same parameters and buffers
    assert set(pcl.state_dict()) - set(moco.state_dict()) == {"_extra_state"}  # the cluster state
    images = torch.randn(60, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for epoch in (0, 1):
        pcl.epoch_start(epoch, _batches(images))
        assert pcl.prototypes() == []
        views, index = _views(seed=epoch)
        a, b = moco(views), pcl(views, index=index)
        torch.testing.assert_close(b.loss, a.loss)
        torch.testing.assert_close(b.per_sample, a.per_sample)
        torch.testing.assert_close(b.features, a.features)
        assert torch.equal(pcl.queue.keys, moco.queue.keys)
    assert pcl.momentum_at(0, 100) == pcl.momentum_at(50, 100) == pcl.momentum_at(100, 100) == 0.999


def test_e_step_and_scoring_without_side_effects() -> None:
    enc = _backbone()
    pcl = PCL(enc, enc.feat_dim, queue_size=32, num_clusters=(3, 6), warmup_epochs=1, num_negatives=2)
    pcl.train()
    images = torch.randn(60, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pcl.epoch_start(0, _batches(images))
    assert pcl.prototypes() == []
    pcl.epoch_start(1, _batches(images))
    assert pcl.target_encoder.training and pcl.target_projector.training  # modes restored
    feats = pcl.momentum_features(_batches(images, 7))
    assert feats.shape == (60, 128) and torch.allclose(feats.norm(dim=1), torch.ones(60), atol=1e-5)
    protos = pcl.prototypes()
    assert [c.shape[0] for c, _ in protos] == [3, 6]
    for (c, a), phi, k in zip(protos, pcl.phis, (3, 6)):
        assert a.shape == (60,) and a.dtype == torch.long and 0 <= int(a.min()) and int(a.max()) < k
        assert torch.allclose(c.norm(dim=1), torch.ones(k), atol=1e-5)
        assert phi.shape == (k,) and float(phi.mean()) == pytest.approx(0.2, abs=1e-5) and bool((phi > 0).all())
        # each image sits with its nearest (max inner product) unit centroid
        sims = feats @ c.t()
        assert torch.allclose(sims.gather(1, a[:, None]).squeeze(1), sims.max(1).values, atol=1e-5)
        torch.testing.assert_close(phi, concentration(feats, a, c, k, 10.0, 0.2))

    views, index = _views()
    queue, ptr = pcl.queue.keys.clone(), pcl.queue.ptr.clone()
    target = {n: p.clone() for n, p in list(pcl.target_encoder.named_parameters()) + list(pcl.target_projector.named_parameters())}
    gen_state = pcl._generator.get_state()
    out = pcl(views, update=False, index=index)
    plain = pcl(views, update=False)
    assert torch.equal(pcl.queue.keys, queue) and torch.equal(pcl.queue.ptr, ptr)
    assert torch.equal(pcl._generator.get_state(), gen_state)
    for n, p in list(pcl.target_encoder.named_parameters()) + list(pcl.target_projector.named_parameters()):
        assert torch.equal(p, target[n]), n

    # the loss is the symmetric InfoNCE plus the prototype term of both queries
    with torch.no_grad():
        q1 = F.normalize(pcl.projector(pcl.encoder(views[0])), dim=1)
        q2 = F.normalize(pcl.projector(pcl.encoder(views[1])), dim=1)
        k1, k2 = pcl.target_keys(views[0]), pcl.target_keys(views[1])
    want = info_nce(q1, k2, queue, reduction="none") + info_nce(q2, k1, queue, reduction="none")
    torch.testing.assert_close(plain.per_sample, want)
    gen = torch.Generator()
    gen.set_state(gen_state)
    for c, phi, a in zip(pcl.centroids, pcl.phis, pcl.assignments):
        neg = sample_negatives(a[index], c.shape[0], 2, gen)
        assert neg.numel() == min(2, c.shape[0] - len(set(a[index].tolist())))
        want = want + (torch.tensor(_loop_proto(q1, c, phi, a[index], neg)) + torch.tensor(_loop_proto(q2, c, phi, a[index], neg))) / 2
    torch.testing.assert_close(out.per_sample, want, atol=1e-5, rtol=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(want.mean()), abs=1e-5)

    # a training step: gradients reach the online side only, keys enqueued, draws advance
    trained = pcl(views, update=True, index=index)
    torch.testing.assert_close(trained.per_sample, out.per_sample)
    trained.loss.backward()
    assert pcl.projector[0].weight.grad is not None
    assert all(p.grad is None for p in pcl.target_projector.parameters())
    assert not torch.equal(pcl.queue.keys, queue) and int(pcl.queue.ptr) == (int(ptr) + 16) % 32
    assert not torch.equal(pcl._generator.get_state(), gen_state)

    # back in a warm-up epoch (a new run): prototypes dropped
    pcl.epoch_start(0, _batches(images))
    assert pcl.prototypes() == [] and not pcl.has_prototypes


def test_final_prototypes_cluster_the_final_momentum_features_without_side_effects() -> None:
    enc = _backbone()
    pcl = PCL(enc, enc.feat_dim, queue_size=32, num_clusters=(3, 6), warmup_epochs=0, num_negatives=2)
    images = torch.randn(60, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    pcl.epoch_start(2, _batches(images))
    state = [t.clone() for t in pcl.centroids + pcl.assignments + pcl.phis]
    gen_state = pcl._generator.get_state()
    levels = pcl.final_prototypes(_batches(images))
    assert pcl.epoch == 2 and torch.equal(pcl._generator.get_state(), gen_state)  # the training state is untouched
    assert all(torch.equal(x, y) for x, y in zip(pcl.centroids + pcl.assignments + pcl.phis, state))
    feats = pcl.momentum_features(_batches(images))
    assert [lv["centroids"].shape[0] for lv in levels] == [3, 6]
    for lv in levels:
        assert lv["assignments"].shape == lv["similarity"].shape == (60,)
        sims = feats @ lv["centroids"].t()
        torch.testing.assert_close(sims.gather(1, lv["assignments"][:, None]).squeeze(1), lv["similarity"])  # cosine to its prototype
        torch.testing.assert_close(lv["similarity"], sims.max(1).values, atol=1e-5, rtol=0)  # which is the nearest
    pcl.epoch_start(3, _batches(images))  # seeded as the next epoch's E-step: the same clustering
    for lv, (c, a) in zip(levels, pcl.prototypes()):
        assert torch.equal(lv["assignments"], a) and torch.equal(lv["centroids"], c)
    assert build_ssl("mocov2", _backbone(), 256).final_prototypes(_batches(images)) is None  # methods without prototypes


def test_auto_num_clusters() -> None:
    assert auto_num_clusters(50_000) == (50, 100, 200)
    assert auto_num_clusters(5_000) == (5, 10, 20)
    assert auto_num_clusters(60) == (2, 2, 2)
    assert auto_num_clusters(1) == (1, 1, 1)
    enc = _backbone()
    pcl = PCL(enc, enc.feat_dim, queue_size=16, num_clusters="auto", warmup_epochs=0)
    assert pcl.clusters_for(73_000) == (73, 146, 292)
    pcl.epoch_start(0, _batches(torch.randn(60, 3, 16, 16)))
    assert [c.shape[0] for c, _ in pcl.prototypes()] == [2, 2, 2]
    with pytest.raises(SsalError, match="cannot cluster"):
        PCL(enc, enc.feat_dim, queue_size=16, num_clusters=(3, 100), warmup_epochs=0).epoch_start(0, _batches(torch.randn(60, 3, 16, 16)))


def test_registry() -> None:
    assert SSL_METHODS["pcl"] is PCL
    enc = _backbone()
    m = build_ssl("pcl", enc, enc.feat_dim, queue_size=16, num_clusters=[4, 8])
    assert isinstance(m, PCL) and m.name == "pcl" and m.num_clusters == (4, 8)
    assert m.warmup_epochs == 20 and m.num_negatives == 16000 and m.temperature == 0.2
    assert m.momentum_base == m.momentum_final == 0.999
    with pytest.raises(SsalError, match="no option 'bogus'"):
        build_ssl("pcl", enc, enc.feat_dim, bogus=1)
    with pytest.raises(SsalError, match="num_clusters"):
        build_ssl("pcl", enc, enc.feat_dim, num_clusters="many")
    with pytest.raises(SsalError, match="num_clusters"):
        build_ssl("pcl", enc, enc.feat_dim, num_clusters=[1, 5])


def test_too_few_images_fail_before_the_first_pretraining_step(tmp_path) -> None:
    """``check_images``: with fewer images than clusters, SSL pretraining stops
    with a one-line error before training, not after the warm-up epochs."""
    from ssal.config import resolve_config
    from ssal.pretrain import pretrain

    cfg = resolve_config(None, ["ssl.method=pcl", "ssl.options.num_clusters=[100]", "ssl.options.queue_size=16", "ssl.batch_size=16", "ssl.epochs=30"]).ssl
    steps: list[str] = []
    enc = _backbone()
    assert PCL(enc, enc.feat_dim, num_clusters=[100]).check_images(100) is None
    with pytest.raises(SsalError, match="cannot cluster 64 images into 100 clusters"):
        pretrain(torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8), "smallcnn", {"width": 8}, cfg, (0.5,) * 3, (0.25,) * 3,
                 torch.device("cpu"), str(tmp_path), progress=False, log=steps.append, stop_after_steps=1)  # a late check would stop here instead
