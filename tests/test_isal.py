"""ISAL influence selection (Liu et al., ICCV 2021): the maths against autograd,
exact solves and actual retraining, and the strategy end to end."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssal import influence as inf
from ssal.config import resolve_config
from ssal.errors import SsalError
from ssal.loop import run_experiment
from ssal.models import build_model
from ssal.models.base import Classifier
from ssal.strategies import build_strategy
from ssal.strategies.base import NetworkAccess, SelectionContext

FAST = ["initial=40", "budget=30", "cycles=2", "train.epochs=2", "train.min_steps=0", "train.batch_size=32", "model_width=8", "plot=false"]


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    model = build_model("smallcnn", 4, 3, width=4).double().eval()
    # non-trivial BN statistics, so eval mode matters
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_parameters_are_conv_and_linear_weights_only():
    model = tiny_cnn()
    names = list(inf.influence_parameters(model))
    assert names and all(n.endswith(".weight") for n in names)
    bn = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert not bn & set(names)
    convs = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(names) == convs


@pytest.mark.parametrize("labelled", [True, False])
def test_vmap_per_sample_gradients_equal_a_loop_of_backward_passes(labelled):
    model = tiny_cnn()
    params = inf.influence_parameters(model)
    x = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1]) if labelled else None
    a = inf.per_sample_grads(model, params, x, y, top_k=2)
    b = inf.loop_grads(model, params, x, y, top_k=2)
    assert a.shape == (6, sum(p.numel() for p in params.values()))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert float(b.abs().max()) > 1e-4  # not trivially zero


def test_jvp_and_vmap_scores_equal_loop_gradients_times_s_test():
    model = tiny_cnn()
    params = inf.influence_parameters(model)
    x = torch.randn(7, 3, 16, 16, dtype=torch.float64)
    s = torch.randn(sum(p.numel() for p in params.values()), dtype=torch.float64)
    want = -(inf.loop_grads(model, params, x) @ s)
    torch.testing.assert_close(inf.influence_scores(model, params, x, s, method="jvp", chunk=3), want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(inf.influence_scores(model, params, x, s, method="vmap", chunk=3), want, rtol=1e-9, atol=1e-12)


def test_expected_loss_top_k_weights():
    logits = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
    p = logits.softmax(1)[0]
    ce = -logits.log_softmax(1)[0]
    assert torch.isclose(inf.expected_loss(logits, 1)[0], p[0] * ce[0])
    assert torch.isclose(inf.expected_loss(logits, 2)[0], p[0] * ce[0] + p[1] * ce[1])
    assert torch.isclose(inf.expected_loss(logits, 9)[0], (p * ce).sum())  # K capped at C


def head_problem(seed=0, n=30, d=5, c=3):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    labels = torch.randint(c, (n,), generator=g)
    return feats, w, labels


def test_closed_form_head_gradient_hessian_and_expected_gradient_equal_autograd():
    feats, w, labels = head_problem()
    probs = (feats @ w.T).softmax(1)
    g = inf.head_gradient(probs, feats, labels)
    for i in range(3):
        wi = w.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(F.cross_entropy((feats[i] @ wi.T)[None], labels[i : i + 1]), wi)
        torch.testing.assert_close(g[i], auto.reshape(-1))
        (exp,) = torch.autograd.grad(inf.expected_loss(feats[i] @ wi.T, 2), wi)
        a = inf.head_expected_gradient_factors(probs[i : i + 1], 2)[0]
        torch.testing.assert_close(torch.outer(a, feats[i]).reshape(-1), exp.reshape(-1))
    hess = torch.autograd.functional.hessian(lambda ww: F.cross_entropy(feats @ ww.reshape(3, 5).T, labels), w.reshape(-1))
    torch.testing.assert_close(inf.head_hessian(probs, feats), hess)


def tiny_mlp_problem():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(12, 3, dtype=torch.float64)
    y = torch.randint(3, (12,))
    params = inf.influence_parameters(model)
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in params}

    def mean_loss(flat):
        ps = dict(zip(names, [t.reshape(s) for t, s in zip(flat.split(sizes), shapes)]))
        return F.cross_entropy(torch.func.functional_call(model, {**frozen, **ps}, (x,)), y)

    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])
    hess = torch.autograd.functional.hessian(mean_loss, flat0)
    return model, params, x, y, hess


def test_batched_hvp_equals_the_hessian():
    model, params, x, y, hess = tiny_mlp_problem()
    vec = torch.randn(len(x), hess.shape[0], dtype=torch.float64)
    per_image = inf.hvp(model, params, x, y, vec)
    # the mean over images of each image's HVP with one shared vector is H v
    shared = inf.hvp(model, params, x, y, vec[:1].expand(len(x), -1)).mean(0)
    torch.testing.assert_close(shared, hess @ vec[0])
    assert per_image.shape == vec.shape


def test_lissa_converges_to_the_exact_inverse_hvp():
    model, params, x, y, hess = tiny_mlp_problem()
    p = hess.shape[0]
    v = torch.randn(p, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    damping, scale = 0.1, 10.0  # effective damping 1.0 exceeds the most negative eigenvalue (-0.40) of this MLP's Hessian
    assert float(torch.linalg.eigvalsh(hess)[0]) > -damping * scale
    exact = torch.linalg.solve(hess + damping * scale * torch.eye(p, dtype=torch.float64), v)

    def full_hvp(idx, vec):  # the whole-set Hessian: LiSSA's fixed-point iteration without sampling noise
        return torch.stack([inf.hvp(model, params, x, y, vr.expand(len(x), -1)).mean(0) for vr in vec])

    est = inf.lissa(full_hvp, v, len(x), depth=600, repeats=1, damping=damping, scale=scale)
    torch.testing.assert_close(est, exact, rtol=1e-6, atol=1e-8)

    def one_image_hvp(idx, vec):  # the real recursion: one random image per step, repeats batched
        return inf.hvp(model, params, x[idx], y[idx], vec)

    noisy = inf.lissa(one_image_hvp, v, len(x), depth=600, repeats=64, damping=damping, scale=scale, generator=torch.Generator().manual_seed(0))
    assert float((noisy - exact).norm() / exact.norm()) < 0.1


def test_lissa_refuses_a_diverging_scale():
    model, params, x, y, hess = tiny_mlp_problem()
    v = torch.ones(hess.shape[0], dtype=torch.float64)
    with pytest.raises(FloatingPointError, match="scale"):
        inf.lissa(lambda idx, vec: vec @ (1e6 * hess), v, len(x), depth=200, repeats=1, damping=0.01, scale=1.0)


def test_influence_predicts_leave_one_in_retraining_on_a_convex_model():
    """Logistic regression on fixed features with L2 (strictly convex): the
    predicted change of the reference loss from adding each candidate agrees with
    actually retraining with it (Koh & Liang 2017, fig. 2)."""
    g = torch.Generator().manual_seed(0)
    c, d, lam = 3, 4, 0.01
    centres = 2.0 * torch.randn(c, d, generator=g, dtype=torch.float64)

    def draw(n):
        yy = torch.randint(c, (n,), generator=g)
        return centres[yy] + 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64), yy

    xt, yt = draw(40)
    xr, yr = draw(60)
    xz, yz = draw(25)

    def fit(x, y, extra=None):
        w = torch.zeros(c, d, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w.T, y) + lam / 2 * (w**2).sum()
            if extra is not None:
                loss = loss + F.cross_entropy(extra[0][None] @ w.T, extra[1][None]) / len(y)
            loss.backward()
            return loss

        opt.step(closure)
        return w.detach()

    w = fit(xt, yt)
    ref_loss = lambda ww: F.cross_entropy(xr @ ww.T, yr, reduction="sum")  # noqa: E731
    actual = torch.stack([ref_loss(fit(xt, yt, (xz[i], yz[i]))) - ref_loss(w) for i in range(len(yz))])
    s = inf.head_s_test((xt @ w.T).softmax(1), xt, (xr @ w.T).softmax(1), xr, yr, damping=lam)
    predicted = -(inf.head_gradient((xz @ w.T).softmax(1), xz, yz) @ s.reshape(-1)) / len(yt)
    assert inf.spearman(predicted, actual) >= 0.9
    # the first-order estimate gets the direction right (it overshoots only for the few most influential points)
    assert float((predicted.sign() == actual.sign()).double().mean()) >= 0.9


class Features(nn.Module):
    """A parameter-free backbone: the model is logistic regression on fixed features."""

    feat_dim = 6

    def forward(self, x):
        return x.flatten(1)[:, :6].double()


def linear_context(seed=0, n_pool=40, n_lab=30, n_ref=50):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Classifier(Features(), 6, 3).double()
    images = torch.randn(n_pool + n_lab + n_ref, 6, 1, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(3, 6, generator=g))
        model.head.bias.zero_()
    labels = model(images).argmax(1)
    flip = torch.rand(len(labels), generator=g) < 0.3
    labels[flip] = torch.randint(3, (int(flip.sum()),), generator=g)
    pool = images[:n_pool]
    lab_idx = torch.arange(n_lab)
    net = NetworkAccess(
        model=model, prepare=lambda x: x.double(), pool_images=lambda idx: pool[idx],
        labelled_images=images[n_pool : n_pool + n_lab], labelled_labels=labels[n_pool : n_pool + n_lab],
        reference=(images[n_pool + n_lab :], labels[n_pool + n_lab :]), num_classes=3, device=torch.device("cpu"), batch_size=16,
    )  # fmt: skip

    def embed(idx):
        x = images[n_pool:][idx - n_pool] if bool((idx >= n_pool).all()) and idx.numel() else pool[idx]
        with torch.no_grad():
            return model.forward_with_features(x)

    return SelectionContext(torch.arange(20), lab_idx + n_pool, embed, torch.Generator().manual_seed(1), network=net)


def test_faithful_and_last_layer_rankings_agree_on_a_convex_model():
    """With only the head's weight differentiable, the faithful mode (LiSSA on
    per-image Hessians) estimates what last-layer mode solves exactly, with
    effective damping damping*scale = 0.2 in both."""
    ctx = linear_context()
    faithful = build_strategy("isal", mode="faithful", depth=800, repeats=8, damping=0.02, scale=10.0, progress=False)
    last = build_strategy("isal", mode="last_layer", head_damping=0.2)
    sf = faithful.scores(ctx, ctx.network)
    sl = last.scores(ctx, ctx.network)
    rho = inf.spearman(sf, sl)
    assert rho >= 0.95, rho
    print(f'faithful vs last-layer Spearman {rho:.3f}')


def test_isal_end_to_end_both_modes_deterministic_and_weights_untouched(tmp_path, monkeypatch):
    import ssal.strategies.isal as isal_mod

    seen = []
    real = isal_mod.ISALStrategy.select

    def spy(self, ctx, budget):
        before = {k: v.clone() for k, v in ctx.network.model.state_dict().items()}
        mode = ctx.network.model.training
        out = real(self, ctx, budget)
        seen.append(all(torch.equal(before[k], v) for k, v in ctx.network.model.state_dict().items()) and ctx.network.model.training == mode)
        return out

    monkeypatch.setattr(isal_mod.ISALStrategy, "select", spy)
    opts = ["strategy=isal", "strategy_options.depth=5", "strategy_options.repeats=2"]
    runs = []
    for name, extra in [("f1", []), ("f2", []), ("ll", ["strategy_options.mode=last_layer"])]:
        cfg = resolve_config(None, [*FAST, *opts, *extra, f"out={tmp_path / name}"])
        runs.append(run_experiment(cfg, progress=False, log=lambda s: None))
    assert runs[0][0]["picked_per_class"] == runs[1][0]["picked_per_class"]
    assert [r["test_acc"] for r in runs[0]] == [r["test_acc"] for r in runs[1]]
    assert all(seen) and len(seen) == 3
    assert sum(runs[2][0]["picked_per_class"]) == 30


def test_isal_refuses_to_run_without_a_reference_set(tmp_path):
    cfg = resolve_config(None, [*FAST, "strategy=isal", "val_size=0", f"out={tmp_path / 'r'}"])
    with pytest.raises(SsalError, match="val_size"):
        run_experiment(cfg, progress=False, log=lambda s: None)


def test_bad_isal_options_give_one_line_errors():
    with pytest.raises(SsalError, match="mode"):
        build_strategy("isal", mode="fast")
    with pytest.raises(SsalError, match="gradients"):
        build_strategy("isal", gradients="loop")
    with pytest.raises(SsalError, match="bad options"):
        build_strategy("isal", depht=3)


def test_a_diverging_lissa_is_a_one_line_error():
    ctx = linear_context()
    with pytest.raises(SsalError, match="strategy_options.scale"):
        build_strategy("isal", depth=400, repeats=1, damping=0.0, scale=1e-3, progress=False).select(ctx, 3)
