"""Self-supervised methods other than PCL (which has tests/test_pcl.py): every loss
against an independent plain-Python reference, symmetry, stop-gradients, the
momentum schedule, the EMA, the FIFO key queue, module behaviour on tiny inputs
(MoBY's two queues, side-effect-free scoring, heads, target encoders, the shared
SSLOutput contract), rotations, the registry's errors, and a short non-collapse
run on the embedded Fashion-MNIST sample (METHODS.md sections 2-4)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssal.errors import SsalError
from ssal.models import build_model
from ssal.ssl import SSL_METHODS, build_ssl, method_options
from ssal.ssl.base import KeyQueue, SSLOutput, cosine_momentum, ema_update
from ssal.ssl.byol import byol_loss
from ssal.ssl.moby import MoBY, moby_loss
from ssal.ssl.mocov2 import info_nce
from ssal.ssl.rotation import rotate_batch, rotation_loss
from ssal.ssl.simclr import nt_xent_loss
from ssal.ssl.simsiam import simsiam_loss
from ssal.ssl.vicreg import vicreg_loss


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The CPU is shared; on 2 busy cores one intra-op thread is ~10x faster than two.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- plain-Python references -------------------------------------------------------


def _rows(t: torch.Tensor) -> list[list[float]]:
    return [[float(v) for v in row] for row in t.double()]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _cos(a: list[float], b: list[float]) -> float:
    return _dot(a, b) / (math.sqrt(_dot(a, a)) * math.sqrt(_dot(b, b)))


def _unit(a: list[float]) -> list[float]:
    n = math.sqrt(_dot(a, a))
    return [x / n for x in a]


def ref_info_nce(q, k, queue, t) -> list[float]:
    """-log(exp(q.k/t) / (exp(q.k/t) + sum_j exp(q.queue_j/t))) per row."""
    out = []
    for qi, ki in zip(_rows(q), _rows(k)):
        pos = math.exp(_dot(qi, ki) / t)
        neg = sum(math.exp(_dot(qi, kj) / t) for kj in _rows(queue))
        out.append(-math.log(pos / (pos + neg)))
    return out


def ref_moby(q1, q2, k1, k2, queue1, queue2, t) -> list[float]:
    # cross pairing: view 1's query against view 2's key AND view 2's queue
    a = ref_info_nce(q1, k2, queue2, t)
    b = ref_info_nce(q2, k1, queue1, t)
    return [x + y for x, y in zip(a, b)]


def ref_byol(p1, p2, z1, z2) -> list[float]:
    return [
        (2 - 2 * _cos(a, d)) + (2 - 2 * _cos(b, c))
        for a, b, c, d in zip(_rows(p1), _rows(p2), _rows(z1), _rows(z2))
    ]


def ref_simsiam(p1, p2, z1, z2) -> list[float]:
    return [-(_cos(a, d) + _cos(b, c)) / 2 for a, b, c, d in zip(_rows(p1), _rows(p2), _rows(z1), _rows(z2))]


def ref_nt_xent(z1, z2, t) -> list[float]:
    """2B x 2B similarities, self excluded; image i's loss = mean of its two anchors."""
    z = [_unit(r) for r in _rows(z1) + _rows(z2)]
    n, b = len(z), len(z) // 2
    anchor = []
    for i in range(n):
        pos = (i + b) % n
        denom = sum(math.exp(_dot(z[i], z[j]) / t) for j in range(n) if j != i)
        anchor.append(-math.log(math.exp(_dot(z[i], z[pos]) / t) / denom))
    return [(anchor[i] + anchor[i + b]) / 2 for i in range(b)]


def ref_vicreg(z1, z2, sim=25.0, std=25.0, cov=1.0) -> float:
    a, b = _rows(z1), _rows(z2)
    n, d = len(a), len(a[0])
    mse = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def var_term(z):
        tot = 0.0
        for j in range(d):
            mu = sum(z[i][j] for i in range(n)) / n
            var = sum((z[i][j] - mu) ** 2 for i in range(n)) / (n - 1)
            tot += max(0.0, 1 - math.sqrt(var + 1e-4))
        return tot / d

    def cov_term(z):
        mu = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        tot = 0.0
        for j in range(d):
            for l in range(d):
                if j != l:
                    c = sum((z[i][j] - mu[j]) * (z[i][l] - mu[l]) for i in range(n)) / (n - 1)
                    tot += c * c
        return tot / d

    return sim * mse + std * (var_term(a) + var_term(b)) + cov * (cov_term(a) + cov_term(b))


def _approx(got: torch.Tensor, want: list[float] | float, tol: float = 1e-5) -> None:
    want_t = torch.tensor(want, dtype=torch.float64)
    assert got.shape == want_t.shape
    assert torch.allclose(got.double(), want_t, atol=tol, rtol=tol), (got, want_t)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit_rows(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


# -- 1. losses against the references ----------------------------------------------


def test_info_nce_hand_computed_2d() -> None:
    # t = 0.5, queue = [(0, 1), (-1, 0)]
    # row 1: q = (1, 0), k = (0.6, 0.8): logits / t = 1.2, 0, -2
    #        loss = log(1 + e^-1.2 + e^-3.2) = log(1.341956...) = 0.2941286
    # row 2: q = (0, 1), k = (0.8, 0.6): logits / t = 1.2, 2, 0
    #        loss = log(1 + e^0.8 + e^-1.2) = log(3.526735...) = 1.2603726
    # mean = 0.7772506
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    per = info_nce(q, k, queue, temperature=0.5, reduction="none")
    _approx(per, [0.2941286, 1.2603726], tol=1e-6)
    assert float(info_nce(q, k, queue, temperature=0.5)) == pytest.approx(0.7772506, abs=1e-6)


def test_info_nce_matches_reference() -> None:
    g = _gen(1)
    q, k, queue = _unit_rows(4, 5, g), _unit_rows(4, 5, g), _unit_rows(7, 5, g)
    for t in (0.2, 0.07, 1.0):
        want = ref_info_nce(q, k, queue, t)
        _approx(info_nce(q, k, queue, t, "none"), want)
        assert float(info_nce(q, k, queue, t)) == pytest.approx(sum(want) / 4, rel=1e-5)


def test_moby_loss_matches_reference_with_cross_pairing() -> None:
    g = _gen(2)
    q1, q2, k1, k2 = (_unit_rows(3, 4, g) for _ in range(4))
    queue1, queue2 = _unit_rows(6, 4, g), _unit_rows(5, 4, g)
    want = ref_moby(q1, q2, k1, k2, queue1, queue2, 0.2)
    _approx(moby_loss(q1, q2, k1, k2, queue1, queue2, 0.2, "none"), want)
    assert float(moby_loss(q1, q2, k1, k2, queue1, queue2)) == pytest.approx(sum(want) / 3, rel=1e-5)
    # the pairing matters: contrasting q1 with its own view's queue gives another value
    wrong = [a + b for a, b in zip(ref_info_nce(q1, k2, queue1, 0.2), ref_info_nce(q2, k1, queue2, 0.2))]
    assert max(abs(a - b) for a, b in zip(want, wrong)) > 1e-2


def test_byol_loss_matches_reference() -> None:
    g = _gen(3)
    p1, p2, z1, z2 = (torch.randn(4, 6, generator=g) for _ in range(4))
    want = ref_byol(p1, p2, z1, z2)
    _approx(byol_loss(p1, p2, z1, z2, "none"), want)
    assert float(byol_loss(p1, p2, z1, z2)) == pytest.approx(sum(want) / 4, rel=1e-5)
    # scale-invariant and in [0, 8]; 0 when predictions align with the other view's target
    assert all(0 <= v <= 8 for v in want)
    assert float(byol_loss(3 * z2, 0.5 * z1, z1, z2)) == pytest.approx(0.0, abs=1e-5)


def test_simsiam_loss_matches_reference() -> None:
    g = _gen(4)
    p1, p2, z1, z2 = (torch.randn(4, 6, generator=g) for _ in range(4))
    want = ref_simsiam(p1, p2, z1, z2)
    _approx(simsiam_loss(p1, p2, z1, z2, "none"), want)
    assert float(simsiam_loss(p1, p2, z1, z2)) == pytest.approx(sum(want) / 4, rel=1e-5)
    assert float(simsiam_loss(z2, z1, z1, z2)) == pytest.approx(-1.0, abs=1e-6)


def test_nt_xent_matches_reference() -> None:
    g = _gen(5)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    for t in (0.5, 0.1):
        want = ref_nt_xent(z1, z2, t)
        _approx(nt_xent_loss(z1, z2, t, "none"), want)
        assert float(nt_xent_loss(z1, z2, t)) == pytest.approx(sum(want) / 3, rel=1e-5)


def test_nt_xent_hand_computed_two_images() -> None:
    # B = 2, orthogonal 2-D vectors, t = 1: z1 = (e1, e2), z2 = (e1, e2) (each view equals its twin).
    # Anchor e1 (image 0, view 1): others = e2 (0), e1 (1, positive), e2 (0)
    #   loss = -log(e / (e + 2)) = log(1 + 2/e)
    z = torch.eye(2)
    want = math.log(1 + 2 / math.e)
    _approx(nt_xent_loss(z, z.clone(), 1.0, "none"), [want, want], tol=1e-6)


def test_vicreg_matches_reference() -> None:
    g = _gen(6)
    z1 = torch.randn(5, 3, generator=g) * 0.7
    z2 = z1 + 0.3 * torch.randn(5, 3, generator=g)
    for coeffs in ((25.0, 25.0, 1.0), (1.0, 2.0, 3.0)):
        got = vicreg_loss(z1, z2, *coeffs)
        assert float(got) == pytest.approx(ref_vicreg(z1, z2, *coeffs), rel=1e-5)
    # the per-sample form is the invariance term alone
    per = vicreg_loss(z1, z2, reduction="none")
    want = [25.0 * sum((a - b) ** 2 for a, b in zip(r1, r2)) / 3 for r1, r2 in zip(_rows(z1), _rows(z2))]
    _approx(per, want)


def test_vicreg_uses_unbiased_variance() -> None:
    # two samples per dim at +-0.5: biased var 0.25 (std 0.5), unbiased var 0.5 (std 0.7071)
    z = torch.tensor([[0.5, 0.5], [-0.5, -0.5]])
    want_var = 1 - math.sqrt(0.5 + 1e-4)  # per dim, per branch
    # cov (unbiased) between the two identical dims = 0.5, off-diagonal sum of squares = 2 * 0.25 / d(=2)
    want = 25.0 * 0.0 + 25.0 * 2 * want_var + 1.0 * 2 * (2 * 0.25 / 2)
    assert float(vicreg_loss(z, z.clone())) == pytest.approx(want, rel=1e-5)


def test_rotation_loss_is_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    turns = torch.tensor([0, 3])
    want = [-math.log(math.exp(2) / (math.exp(2) + 3)), -math.log(1 / (3 + math.e))]
    _approx(rotation_loss(logits, turns, "none"), want, tol=1e-6)


# -- 2. symmetry -----------------------------------------------------------------


def test_symmetric_losses_are_symmetric_in_the_views() -> None:
    g = _gen(7)
    q1, q2, k1, k2 = (_unit_rows(4, 5, g) for _ in range(4))
    queue1, queue2 = _unit_rows(6, 5, g), _unit_rows(6, 5, g)
    a = moby_loss(q1, q2, k1, k2, queue1, queue2, reduction="none")
    b = moby_loss(q2, q1, k2, k1, queue2, queue1, reduction="none")
    assert torch.allclose(a, b, atol=1e-6)
    p1, p2, z1, z2 = (torch.randn(4, 5, generator=g) for _ in range(4))
    assert torch.allclose(byol_loss(p1, p2, z1, z2, "none"), byol_loss(p2, p1, z2, z1, "none"), atol=1e-6)
    assert torch.allclose(simsiam_loss(p1, p2, z1, z2, "none"), simsiam_loss(p2, p1, z2, z1, "none"), atol=1e-6)
    assert torch.allclose(nt_xent_loss(z1, z2, reduction="none"), nt_xent_loss(z2, z1, reduction="none"), atol=1e-6)
    assert float(vicreg_loss(z1, z2)) == pytest.approx(float(vicreg_loss(z2, z1)), rel=1e-6)
    assert torch.allclose(vicreg_loss(z1, z2, reduction="none"), vicreg_loss(z2, z1, reduction="none"))


# -- 3. stop-gradient -------------------------------------------------------------


@pytest.mark.parametrize("loss_fn", [byol_loss, simsiam_loss], ids=["byol", "simsiam"])
def test_no_gradient_reaches_the_targets(loss_fn) -> None:
    g = _gen(8)
    p1, p2, z1, z2 = (torch.randn(4, 5, generator=g).requires_grad_() for _ in range(4))
    loss_fn(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None
    assert p1.grad is not None and p2.grad is not None
    assert float(p1.grad.abs().sum()) > 0 and float(p2.grad.abs().sum()) > 0


def test_stop_gradient_in_a_shared_graph() -> None:
    # SimSiam/BYOL's p and z come from one network: the gradient flows only through p,
    # i.e. it equals the gradient with the targets detached by hand
    g = _gen(9)
    w = torch.randn(5, 5, generator=g)
    x1, x2 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    for loss_fn in (byol_loss, simsiam_loss):
        grads = []
        for manual_detach in (False, True):
            a = w.clone().requires_grad_()
            z1, z2 = x1 @ a, x2 @ a
            p1, p2 = torch.tanh(z1), torch.tanh(z2)
            if manual_detach:
                z1, z2 = z1.detach(), z2.detach()
            loss_fn(p1, p2, z1, z2).backward()
            grads.append(a.grad)
        assert torch.allclose(grads[0], grads[1], atol=1e-6)
        assert float(grads[0].abs().sum()) > 0


# -- 4. momentum schedule ---------------------------------------------------------


def test_cosine_momentum_schedule() -> None:
    k_total = 100
    assert cosine_momentum(0, k_total, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(k_total, k_total, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(k_total // 2, k_total, 0.99) == pytest.approx(0.995)
    values = [cosine_momentum(k, k_total, 0.99) for k in range(k_total + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # clamped outside [0, K]
    assert cosine_momentum(-5, k_total, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(10 * k_total, k_total, 0.99) == pytest.approx(1.0)
    # MoCo v2: 0.99 -> 0.999
    assert cosine_momentum(0, k_total, 0.99, final=0.999) == pytest.approx(0.99)
    assert cosine_momentum(k_total, k_total, 0.99, final=0.999) == pytest.approx(0.999)
    assert cosine_momentum(k_total // 2, k_total, 0.99, final=0.999) == pytest.approx(0.9945)


def _backbone(width: int = 8, in_channels: int = 3):
    m = build_model("smallcnn", 10, in_channels, width=width)
    return m.backbone, m.feat_dim


def test_moby_momentum_follows_the_paper_formula() -> None:
    enc, fd = _backbone()
    moby = MoBY(enc, fd, proj_dim=8, hidden_dim=16, queue_size=8)
    k_total = 37
    for k in (0, 1, 5, 18, 30, 36, 37):
        want = 1 - (1 - 0.99) * (math.cos(math.pi * k / k_total) + 1) / 2
        assert moby.momentum_at(k, k_total) == pytest.approx(want, abs=1e-12)
    mocov2 = build_ssl("mocov2", *_backbone(), proj_dim=8, hidden_dim=16, queue_size=8)
    assert mocov2.momentum_at(k_total, k_total) == pytest.approx(0.999)


# -- 5. EMA -----------------------------------------------------------------------


def test_ema_update_parameters_and_buffers() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online.train()(torch.randn(6, 3))  # moves the online BN running statistics
    before = [p.detach().clone() for p in target.parameters()]
    m = 0.9
    ema_update(target, online, m)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)
        assert not torch.allclose(t, o)
    for tb, ob in zip(target.buffers(), online.buffers()):
        assert torch.equal(tb, ob)
    # m = 1 leaves the parameters unchanged, m = 0 copies them
    snap = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(snap, target.parameters()))
    ema_update(target, online, 0.0)
    assert all(torch.allclose(t, o) for t, o in zip(target.parameters(), online.parameters()))


# -- 6. key queue -----------------------------------------------------------------


def test_key_queue_is_fifo() -> None:
    q = KeyQueue(5, 2, generator=_gen(0))
    assert q.size == 5 and int(q.ptr) == 0
    init = q.keys.clone()
    assert torch.allclose(init.norm(dim=1), torch.ones(5))

    def batch(start: int, n: int) -> torch.Tensor:
        return torch.tensor([[float(start + i), -float(start + i)] for i in range(n)])

    b1, b2, b3 = batch(1, 3), batch(4, 3), batch(7, 3)
    q.enqueue(b1)
    assert int(q.ptr) == 3
    assert torch.equal(q.ordered(), torch.cat([init[3:], b1]))
    q.enqueue(b2)  # wraps: b1[0] (the oldest) is overwritten
    assert int(q.ptr) == 1
    assert torch.equal(q.ordered(), torch.cat([b1[1:], b2]))
    q.enqueue(b3)
    assert int(q.ptr) == 4
    assert torch.equal(q.ordered(), torch.cat([b2[1:], b3]))
    assert torch.equal(q.ordered()[-1], torch.tensor([9.0, -9.0]))
    # a batch larger than the queue keeps its newest `size` keys
    big = batch(100, 7)
    q.enqueue(big)
    assert int(q.ptr) == 4
    assert torch.equal(q.ordered(), big[-5:])
    # keys are stored detached
    q.enqueue(torch.ones(2, 2, requires_grad=True))
    assert not q.keys.requires_grad


def test_key_queue_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        KeyQueue(0, 4)
    with pytest.raises(ValueError):
        KeyQueue(4, 0)


# -- 7. modules on tiny inputs ----------------------------------------------------


def _views(b: int = 6, size: int = 16, seed: int = 0) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(b, 3, size, size, generator=g) for _ in range(2)]


def _small_moby(**kw) -> MoBY:
    torch.manual_seed(0)
    enc, fd = _backbone()
    opts = dict(proj_dim=8, hidden_dim=16, queue_size=16)
    opts.update(kw)
    return MoBY(enc, fd, **opts)


def test_moby_update_enqueues_each_views_keys_into_its_own_queue() -> None:
    moby = _small_moby()
    moby.train()
    v1, v2 = _views(b=4)
    ref = copy.deepcopy(moby)
    k1, k2 = ref.target_keys(v1), ref.target_keys(v2)
    assert not torch.allclose(k1, k2, atol=1e-3)
    q1_before, q2_before = moby.queue1.keys.clone(), moby.queue2.keys.clone()
    out = moby([v1, v2], update=True)
    assert int(moby.queue1.ptr) == 4 and int(moby.queue2.ptr) == 4
    assert torch.allclose(moby.queue1.ordered()[-4:], k1, atol=1e-6)
    assert torch.allclose(moby.queue2.ordered()[-4:], k2, atol=1e-6)
    # the older keys are untouched
    assert torch.equal(moby.queue1.keys[4:], q1_before[4:])
    assert torch.equal(moby.queue2.keys[4:], q2_before[4:])
    # the loss used the queues as they were *before* this batch's keys went in
    q1 = F.normalize(ref.predictor(ref.projector(ref.encoder(v1))), dim=1)
    q2 = F.normalize(ref.predictor(ref.projector(ref.encoder(v2))), dim=1)
    want = moby_loss(q1, q2, k1, k2, q1_before, q2_before, 0.2, "none")
    assert torch.allclose(out.per_sample, want.detach(), atol=1e-5)
    assert float(out.loss.detach()) == pytest.approx(float(want.detach().mean()), rel=1e-5)


def test_moby_scoring_changes_nothing() -> None:
    moby = _small_moby()
    moby.train()
    moby([*_views(seed=1)], update=True)  # non-trivial queue state first
    snap = {k: v.clone() for k, v in moby.state_dict().items()}
    # train mode: queues, pointers and target weights stay put
    moby(_views(seed=2), update=False)
    for name in ("queue1.keys", "queue1.ptr", "queue2.keys", "queue2.ptr"):
        assert torch.equal(moby.state_dict()[name], snap[name]), name
    for prefix in ("target_encoder", "target_projector"):
        for name, p in getattr(moby, prefix).named_parameters():
            assert torch.equal(p, snap[f"{prefix}.{name}"]), name
    # eval mode (how scoring runs it): the whole state, BN statistics included
    moby.load_state_dict(snap)
    moby.eval()
    moby(_views(seed=3), update=False)
    for k, v in moby.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_moby_after_step_moves_target_with_scheduled_momentum() -> None:
    moby = _small_moby()
    with torch.no_grad():
        for p in list(moby.encoder.parameters()) + list(moby.projector.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    online = [p.detach().clone() for p in list(moby.encoder.parameters()) + list(moby.projector.parameters())]
    target_params = list(moby.target_encoder.parameters()) + list(moby.target_projector.parameters())
    before = [p.clone() for p in target_params]
    k, k_total = 3, 10
    m = 1 - (1 - 0.99) * (math.cos(math.pi * k / k_total) + 1) / 2
    moby.after_step(k, k_total)
    for t, b, o in zip(target_params, before, online):
        assert torch.allclose(t, m * b + (1 - m) * o, atol=1e-6)
    assert any(not torch.equal(t, b) for t, b in zip(target_params, before))
    # the predictor has no momentum copy, and the final step (m = 1) freezes the target
    snap = [p.clone() for p in target_params]
    moby.after_step(k_total, k_total)
    assert all(torch.equal(t, s) for t, s in zip(target_params, snap))


def test_moby_heads() -> None:
    lin = _small_moby(head="linear")
    assert type(lin.projector) is nn.Linear and type(lin.predictor) is nn.Linear
    assert (lin.projector.in_features, lin.projector.out_features) == (lin.feat_dim, 8)
    assert (lin.predictor.in_features, lin.predictor.out_features) == (8, 8)
    paper = _small_moby()
    for head in (paper.projector, paper.predictor):
        kinds = [type(m) for m in head.modules()]
        assert nn.BatchNorm1d in kinds and nn.ReLU in kinds
        assert isinstance(head[-1], nn.Linear) and head[-1].out_features == 8


def _tiny_options(name: str) -> dict:
    wanted = {"proj_dim": 16, "hidden_dim": 16, "queue_size": 32}
    return {k: v for k, v in wanted.items() if k in method_options(name)}


METHODS = [n for n in SSL_METHODS if n != "pcl"]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_honours_the_interface(name: str) -> None:
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 3, width=8)
    method = build_ssl(name, model.backbone, model.feat_dim, **_tiny_options(name))
    assert method.name == name
    method.train()
    b = 6
    views = _views(b=b, seed=4)[: method.num_views]
    out = method(views, update=True)
    assert isinstance(out, SSLOutput)
    assert out.loss.ndim == 0 and bool(torch.isfinite(out.loss))
    assert out.per_sample.shape == (b,) and bool(torch.isfinite(out.per_sample).all())
    assert not out.per_sample.requires_grad
    if name == "rotation":
        assert out.features is None
    else:
        assert out.features.shape == (b, model.feat_dim)
        assert torch.allclose(out.features, method.encoder(views[0]), atol=1e-5)
    if name != "vicreg":  # vicreg's batch-level terms have no per-sample share
        assert float(out.loss.detach()) == pytest.approx(float(out.per_sample.mean()), rel=1e-5, abs=1e-6)
    first_conv = model.backbone.stem[0].weight
    assert first_conv.grad is None
    out.loss.backward()
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0
    # the optimizer sees the encoder, and only trainable tensors
    params = {id(p) for p in method.trainable_parameters()}
    assert id(first_conv) in params
    assert all(p.requires_grad for p in method.trainable_parameters())
    # scoring is label-free and side-effect free in eval mode
    method.eval()
    snap = {k: v.clone() for k, v in method.state_dict().items()}
    scored = method(views, update=False)
    assert scored.per_sample.shape == (b,)
    for k, v in method.state_dict().items():
        assert torch.equal(v, snap[k]), (name, k)


@pytest.mark.parametrize("name", ["moby", "byol", "mocov2"])
def test_target_encoders_are_frozen_and_not_trained(name: str) -> None:
    method = build_ssl(name, *_backbone(), **_tiny_options(name))
    target = list(method.target_encoder.parameters()) + list(method.target_projector.parameters())
    assert target and all(not p.requires_grad for p in target)
    trainable = {id(p) for p in method.trainable_parameters()}
    assert not trainable & {id(p) for p in target}
    assert {id(p) for p in method.encoder.parameters()} <= trainable
    # distinct tensors, equal values at the start
    assert all(t is not o for t, o in zip(method.target_encoder.parameters(), method.encoder.parameters()))
    assert all(torch.equal(t, o) for t, o in zip(method.target_encoder.parameters(), method.encoder.parameters()))


def test_mocov2_enqueues_both_views_keys() -> None:
    torch.manual_seed(0)
    method = build_ssl("mocov2", *_backbone(), proj_dim=8, hidden_dim=16, queue_size=16)
    method.train()
    v1, v2 = _views(b=3, seed=5)
    ref = copy.deepcopy(method)
    keys = torch.cat([ref.target_keys(v1), ref.target_keys(v2)])
    method([v1, v2], update=True)
    assert int(method.queue.ptr) == 6
    assert torch.allclose(method.queue.ordered()[-6:], keys, atol=1e-6)


@pytest.mark.parametrize("name", ["moby", "mocov2", "byol"])
def test_one_direction_form_is_view1_against_view2s_target(name: str) -> None:
    """``symmetric=False``: only view 1 goes through the online encoder and only
    view 2 through the momentum encoder; the loss is the one-direction term of the
    symmetric loss (MoCo v2's form) and only view 2's keys are queued."""
    torch.manual_seed(0)
    opts = dict(proj_dim=8, hidden_dim=16) | ({} if name == "byol" else dict(queue_size=16))
    method = build_ssl(name, *_backbone(), symmetric=False, **opts)
    method.train()
    v1, v2 = _views(b=4, seed=7)
    ref = copy.deepcopy(method)
    online_in, target_in = [], []
    method.encoder.register_forward_hook(lambda m, i, o: online_in.append(i[0]))
    method.target_encoder.register_forward_hook(lambda m, i, o: target_in.append(i[0]))
    queues = {k: v.clone() for k, v in method.state_dict().items() if k.endswith("keys")}
    out = method([v1, v2], update=True)
    assert len(online_in) == 1 and torch.equal(online_in[0], v1)
    assert len(target_in) == 1 and torch.equal(target_in[0], v2)
    k2 = ref.target_keys(v2)
    if name == "byol":
        p1 = ref.predictor(ref.projector(ref.encoder(v1)))
        want = 2 - 2 * F.cosine_similarity(p1, ref.target_projector(ref.target_encoder(v2)), dim=1)
    elif name == "moby":
        q1 = F.normalize(ref.predictor(ref.projector(ref.encoder(v1))), dim=1)
        want = info_nce(q1, k2, queues["queue2.keys"], 0.2, "none")
        assert int(method.queue1.ptr) == 0 and torch.equal(method.queue1.keys, queues["queue1.keys"])
        assert int(method.queue2.ptr) == 4 and torch.allclose(method.queue2.ordered()[-4:], k2, atol=1e-6)
    else:
        q1 = F.normalize(ref.projector(ref.encoder(v1)), dim=1)
        want = info_nce(q1, k2, queues["queue.keys"], 0.2, "none")
        assert int(method.queue.ptr) == 4 and torch.allclose(method.queue.ordered()[-4:], k2, atol=1e-6)
    assert torch.allclose(out.per_sample, want.detach(), atol=1e-5)
    assert torch.allclose(out.features, ref.encoder(v1), atol=1e-5)
    # the symmetric form (the default) is this term plus the mirrored one
    if name == "moby":  # the mirrored term reads queue 1: make both queues equal
        ref.queue1.keys.copy_(ref.queue2.keys)
    sym = copy.deepcopy(ref)
    sym.symmetric = True
    both = sym([v1, v2], update=False).per_sample
    mirrored = ref([v2, v1], update=False).per_sample
    assert torch.allclose(both, want.detach() + mirrored, atol=1e-5)


def test_rotation_training_cycles_turns_and_scoring_does_not() -> None:
    torch.manual_seed(0)
    method = build_ssl("rotation", *_backbone())
    x = _views(b=4, seed=6)[:1]
    method(x, update=False)
    assert int(method.offset) == 0
    method(x, update=True)
    assert int(method.offset) == 1
    for _ in range(3):
        method(x, update=True)
    assert int(method.offset) == 0


def test_rotate_batch() -> None:
    g = _gen(10)
    x = torch.randn(4, 2, 5, 5, generator=g)
    for k in range(4):
        turns = torch.full((4,), k)
        once = rotate_batch(x, turns)
        assert torch.equal(once, torch.rot90(x, k, dims=(-2, -1)))
        assert torch.equal(rotate_batch(once, (4 - turns) % 4), x)
    mixed = torch.tensor([0, 1, 2, 3])
    back = rotate_batch(rotate_batch(x, mixed), (4 - mixed) % 4)
    assert torch.equal(back, x)
    # a quarter turn is counter-clockwise, as torch.rot90: the top-right corner goes to the top-left
    img = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    assert rotate_batch(img, torch.tensor([1]))[0, 0].tolist() == [[1.0, 3.0], [0.0, 2.0]]
    assert torch.equal(rotate_batch(x, torch.tensor([1, 0, 0, 0]))[0], torch.rot90(x[0], 1, dims=(-2, -1)))
    assert torch.equal(rotate_batch(x, torch.tensor([1, 0, 0, 0]))[1:], x[1:])
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(2, 1, 4, 6), torch.zeros(2, dtype=torch.long))


def test_build_ssl_errors_name_the_culprit() -> None:
    enc, fd = _backbone()
    with pytest.raises(SsalError, match="no_such_method"):
        build_ssl("no_such_method", enc, fd)
    with pytest.raises(SsalError, match="bogus_option"):
        build_ssl("moby", enc, fd, bogus_option=3)
    with pytest.raises(SsalError, match="moby"):
        build_ssl("moby", enc, fd, queue_size=0)
    assert "queue_size" in method_options("moby") and method_options("rotation") == []


def test_moby_and_joint_defaults_are_the_papers() -> None:
    """MoBYv2AL (METHODS.md sec. 2): two queues of 4096, t = 0.2, momentum
    cosine-ramped 0.99 -> 1, lambda = 0.5; pinned so a changed default fails here."""
    from ssal.config import resolve_config

    enc, fd = _backbone()
    moby = build_ssl("moby", enc, fd)
    assert moby.queue1.keys.shape[0] == moby.queue2.keys.shape[0] == 4096
    assert moby.temperature == 0.2 and moby.symmetric
    assert (moby.momentum_base, moby.momentum_final) == (0.99, 1.0)
    assert moby.momentum_at(0, 100) == pytest.approx(0.99) and moby.momentum_at(100, 100) == pytest.approx(1.0)
    assert resolve_config(None, []).ssl.lambda_c == 0.5


# -- 8. no collapse on a short real-data run ----------------------------------------


@pytest.fixture(scope="module")
def fmnist():
    from ssal.augment import StrongView, TestView, channel_stats
    from ssal.data import load_dataset

    train, _ = load_dataset("sample")
    mean, std = channel_stats(train.images)
    return train.images, StrongView(mean, std), TestView(mean, std)


def _short_run_spread(method, images, strong, test_view, steps: int = 35) -> tuple[float, float]:
    """Train ``method`` for ``steps`` SGD steps on two strong views of random
    batches, then the mean per-dimension std of the L2-normalised encoder
    features and projector outputs of 256 un-augmented images (eval mode)."""
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9)
    g = _gen(0)
    start = [p.detach().clone() for p in method.encoder.parameters()]
    method.train()
    for step in range(steps):
        x = images[torch.randint(0, images.shape[0], (64,), generator=g)]
        out = method([strong(x, g), strong(x, g)], update=True)
        assert bool(torch.isfinite(out.loss))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        method.after_step(step, steps)
    assert any(not torch.equal(a, b) for a, b in zip(start, method.encoder.parameters()))
    method.eval()
    with torch.no_grad():
        f = method.encoder(test_view(images[:256]))
        z = method.projector(f)
    return float(F.normalize(f, dim=1).std(dim=0).mean()), float(F.normalize(z, dim=1).std(dim=0).mean())


# Measured (seed 0, width 8, 35 steps, batch 64), mean per-dim std of the
# L2-normalised projector outputs of 256 test-view images: BYOL 0.066, SimSiam
# 0.033, MoBY 0.071; SimSiam *without* its stop-gradient (the negative control
# below) 0.0046, while its encoder features keep 0.109 (BYOL's: 0.116). So the
# projector, where the loss acts, is the place to look for collapse.
COLLAPSED = 0.02


@pytest.mark.parametrize(
    "name,options",
    [("byol", {}), ("simsiam", {}), ("moby", {"queue_size": 256})],
    ids=["byol", "simsiam", "moby"],
)
def test_short_run_does_not_collapse(fmnist, name: str, options: dict) -> None:
    images, strong, test_view = fmnist
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=8)
    method = build_ssl(name, model.backbone, model.feat_dim, **options)
    enc, proj = _short_run_spread(method, images, strong, test_view)
    assert proj > COLLAPSED, f"{name} collapsed: projector spread {proj:.4f} (encoder {enc:.4f})"


def test_simsiam_without_stop_gradient_collapses(fmnist, monkeypatch) -> None:
    """The negative control of the test above: SimSiam's loss with the
    stop-gradient removed (Chen & He, Sec. 4.1: it collapses at once) falls
    below the threshold, so the threshold can tell collapse from learning."""
    import ssal.ssl.simsiam as simsiam_mod

    def no_stop_grad(p1, p2, z1, z2, reduction="mean"):
        per = -(F.cosine_similarity(p1, z2, dim=1) + F.cosine_similarity(p2, z1, dim=1)) / 2
        return per if reduction == "none" else per.mean()

    monkeypatch.setattr(simsiam_mod, "simsiam_loss", no_stop_grad)
    images, strong, test_view = fmnist
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, width=8)
    enc, proj = _short_run_spread(build_ssl("simsiam", model.backbone, model.feat_dim), images, strong, test_view)
    assert proj < COLLAPSED, f"no stop-gradient should collapse: projector spread {proj:.4f} (encoder {enc:.4f})"
