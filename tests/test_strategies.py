"""Selection strategies: exact scores on hand-checked inputs, exact picks on
crafted embeddings, and the invariants every strategy keeps."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssal import kcenter_greedy
from ssal.errors import SsalError
from ssal.models import build_model
from ssal.strategies import STRATEGIES, SelectionContext, build_strategy
from ssal.strategies.base import NetworkAccess
from ssal.train import predict
from ssal.strategies.uncertainty import entropy, least_confidence, margin

# -- pure scores ---------------------------------------------------------------


def test_scores_on_hand_checked_inputs() -> None:
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.7, 0.2]], dtype=torch.float64)
    p = torch.cat([p, 1 - p.sum(1, keepdim=True)], 1)  # third class: 0, 0, 0.1
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert torch.allclose(entropy(p), torch.tensor([math.log(2), 0.0, h], dtype=torch.float64))
    assert torch.allclose(margin(p), torch.tensor([0.0, -1.0, -0.5], dtype=torch.float64))
    assert torch.allclose(least_confidence(p), torch.tensor([0.5, 0.0, 0.3], dtype=torch.float64))


def test_scores_are_row_wise() -> None:
    """Scoring a batch equals scoring its halves (chunked == one-shot)."""
    p = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(0)), 1)
    for fn in (entropy, margin, least_confidence):
        assert torch.equal(fn(p), torch.cat([fn(p[:3]), fn(p[3:])]))


def test_margin_needs_two_classes() -> None:
    with pytest.raises(SsalError, match="2 classes"):
        margin(torch.ones(3, 1))


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 6).flatmap(lambda c: st.lists(st.lists(st.floats(-20, 20), min_size=c, max_size=c), min_size=1, max_size=8)))
def test_score_ranges(logits: list[list[float]]) -> None:
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1)
    c = p.shape[1]
    eps = 1e-12
    assert bool(((entropy(p) >= -eps) & (entropy(p) <= math.log(c) + eps)).all())
    assert bool(((margin(p) >= -1 - eps) & (margin(p) <= eps)).all())
    assert bool(((least_confidence(p) >= -eps) & (least_confidence(p) <= 1 - 1 / c + eps)).all())
    uniform = torch.full((1, c), 1 / c, dtype=torch.float64)
    assert torch.allclose(entropy(uniform), torch.tensor([math.log(c)], dtype=torch.float64))


# -- crafted pools ---------------------------------------------------------------


def context(candidates: list[int], labelled: list[int], logits: dict[int, list[float]] | None = None,
            features: dict[int, list[float]] | None = None, seed: int = 0, calls: list | None = None) -> SelectionContext:
    """A context whose embed looks pool indices up in dicts (and records its calls)."""

    def embed(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if calls is not None:
            calls.append(idx.tolist())
        lg = torch.tensor([logits[i] for i in idx.tolist()]) if logits else torch.zeros(idx.numel(), 2)
        ft = torch.tensor([features[i] for i in idx.tolist()]) if features else torch.zeros(idx.numel(), 1)
        return lg, ft

    return SelectionContext(
        candidates=torch.tensor(candidates, dtype=torch.long),
        labelled=torch.tensor(labelled, dtype=torch.long),
        embed=embed,
        generator=torch.Generator().manual_seed(seed),
        ssl_loss=lambda idx: ((idx * 7) % 13).double(),  # a label-free per-image score
        predicted_loss=lambda idx: ((idx * 5) % 11).float(),  # a Learning Loss module's output
    )


def log_probs(*p: float) -> list[float]:
    return [math.log(v) if v > 0 else -1e4 for v in p]  # exp(-1e4) == 0 in float64


# Candidates in position order a, b, c, d, e with pool indices 40, 7, 23, 5, 31.
#        p                  entropy  margin  1-max
# a  .5  .5  0              0.693     0      .5
# b  .6  .2  .2             0.950    -.4     .4
# c  .4  .3  .3             1.089    -.1     .6
# d  .9  .05 .05            0.394    -.85    .1
# e  .45 .45 .1             0.949     0      .55
UNCERTAIN = {
    40: log_probs(0.5, 0.5, 0.0),
    7: log_probs(0.6, 0.2, 0.2),
    23: log_probs(0.4, 0.3, 0.3),
    5: log_probs(0.9, 0.05, 0.05),
    31: log_probs(0.45, 0.45, 0.1),
}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("entropy", [23, 7, 31, 40, 5]),
        ("margin", [40, 31, 23, 7, 5]),  # a and e tie at 0: the lower position (a) first
        ("least_confidence", [23, 31, 40, 7, 5]),
    ],
)
def test_uncertainty_picks(name: str, expected: list[int]) -> None:
    calls: list = []
    ctx = context([40, 7, 23, 5, 31], [1, 2], logits=UNCERTAIN, calls=calls)
    strategy = build_strategy(name)
    for budget in range(6):
        assert strategy.select(ctx, budget).tolist() == expected[:budget]
    assert calls == [[40, 7, 23, 5, 31]] * 5  # only the candidates are embedded; budget 0 embeds nothing


def test_non_finite_logits_raise() -> None:
    ctx = context([0, 1], [], logits={0: [0.0, math.nan], 1: [0.0, 0.0]})
    with pytest.raises(SsalError, match="NaN"):
        build_strategy("entropy").select(ctx, 1)


def test_coreset_picks_far_away_points() -> None:
    # Pool indices 0..5 on a line at 0, 1, 2, 10, 11, 5; index 0 is labelled.
    feats = {0: [0.0], 1: [1.0], 2: [2.0], 3: [10.0], 4: [11.0], 5: [5.0]}
    calls: list = []
    ctx = context([5, 1, 2, 3, 4], [0], features=feats, calls=calls)
    assert build_strategy("coreset").select(ctx, 3).tolist() == [4, 5, 2]
    assert calls == [[5, 1, 2, 3, 4, 0]]  # candidates then labelled, embedded once


def test_coreset_cold_start_is_seeded_random_then_greedy() -> None:
    feats = {i: [float(v)] for i, v in enumerate([0, 1, 2, 10, 11, 5])}
    candidates = [0, 1, 2, 3, 4, 5]
    first = int(torch.randint(6, (1,), generator=torch.Generator().manual_seed(7)))
    picks = build_strategy("coreset").select(context(candidates, [], features=feats, seed=7), 3).tolist()
    assert picks[0] == candidates[first]
    # The rest is k-center greedy from that first centre.
    line = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [5.0]])
    assert picks[1:] == kcenter_greedy(line, torch.tensor([first]), 2).tolist()


def test_random_is_seeded_and_without_replacement() -> None:
    cands = list(range(100, 150))
    a = build_strategy("random").select(context(cands, [], seed=1), 20)
    b = build_strategy("random").select(context(cands, [], seed=1), 20)
    c = build_strategy("random").select(context(cands, [], seed=2), 20)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 20 and set(a.tolist()) <= set(cands)
    everything = build_strategy("random").select(context(cands, [], seed=3), 50)
    assert sorted(everything.tolist()) == cands


# -- every strategy ------------------------------------------------------------------


def tiny_network(labelled: list[int]) -> tuple[NetworkAccess, object]:
    """A real (untrained) 4-class network over 60 random 16x16 pool images, and
    the matching embed (eval-mode logits and features, as the loop's)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (70, 3, 16, 16), dtype=torch.uint8, generator=g)
    model = build_model("smallcnn", 4, 3, dropout=0.3, width=4)
    idx = torch.tensor(labelled, dtype=torch.long)
    net = NetworkAccess(
        model=model, prepare=lambda x: x.float() / 255, pool_images=lambda i: images[i], labelled_images=images[idx],
        labelled_labels=idx % 4, reference=(images[60:], torch.arange(10) % 4), num_classes=4, device=torch.device("cpu"),
    )  # fmt: skip
    return net, lambda i: predict(model, images[i], net.prepare, torch.device("cpu"), 64)


CHEAP = {"isal": {"depth": 10}, "vaal": {"steps": 10}, "bald": {"passes": 3}}  # same code paths, fewer iterations


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_returns_distinct_candidates(name: str) -> None:
    cands = list(range(0, 60, 2))
    for labelled in ([1, 3, 5], []):
        net, embed = tiny_network(labelled)
        ctx = dataclasses.replace(context(cands, labelled), embed=embed, network=net)
        strategy = build_strategy(name, **CHEAP.get(name, {}))
        if not labelled and name in ("isal", "vaal"):  # they learn from L: a clear error at cold start
            with pytest.raises(SsalError, match="labelled"):
                strategy.select(ctx, 12)
            continue
        picks = strategy.select(ctx, 12)
        assert picks.dtype == torch.long and picks.numel() == 12
        assert picks.unique().numel() == 12 and set(picks.tolist()) <= set(cands)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_bad_requests_raise(name: str) -> None:
    strategy = build_strategy(name)
    with pytest.raises(SsalError, match="budget"):
        strategy.select(context([1, 2, 3], []), 4)
    with pytest.raises(SsalError, match="labelled"):
        strategy.select(context([1, 2, 3], [3]), 1)
    with pytest.raises(SsalError, match="repeated"):
        strategy.select(context([1, 1, 3], []), 1)


def test_registry_and_errors() -> None:
    names = ["random", "entropy", "margin", "least_confidence", "coreset", "typiclust", "probcover", "prototypes", "ssl_loss_high",
             "learning_loss", "isal", "badge", "bald", "vaal"]  # fmt: skip
    assert list(STRATEGIES) == names
    assert all(build_strategy(n).name == n for n in STRATEGIES)
    with pytest.raises(SsalError, match=r"unknown strategy 'coregcn'; choose one of: random, entropy, margin, least_confidence, coreset, typiclust"):
        build_strategy("coregcn")
    with pytest.raises(SsalError, match="no option 'temperature'.*it takes: none"):
        build_strategy("random", temperature=2)
    with pytest.raises(SsalError, match="no option 'pases'.*it takes: passes, dropout"):
        build_strategy("bald", pases=2)
    from ssal.strategies import describe

    assert all(STRATEGIES[n].summary and describe(n).startswith(STRATEGIES[n].summary) for n in STRATEGIES)
    assert describe("bald").endswith("[passes=20, dropout=0.3]")


def test_context_carries_no_pool_labels() -> None:
    """Strategies cannot read labels of unlabelled images: the only label fields
    are those of the labelled set and of the validation split, in NetworkAccess
    (tests/test_network_access.py checks what the loop puts there)."""
    assert [f.name for f in dataclasses.fields(SelectionContext)] == [
        "candidates", "labelled", "embed", "generator", "ssl_loss", "network", "predicted_loss", "ssl_prototypes"
    ]
    label_fields = [f.name for f in dataclasses.fields(NetworkAccess) if "label" in f.name or f.name == "reference"]
    assert label_fields == ["labelled_images", "labelled_labels", "reference"]


def test_ssl_loss_high_picks_the_highest_ssl_losses() -> None:
    ctx = context(list(range(20)), [20, 21])
    picks = build_strategy("ssl_loss_high").select(ctx, 3)
    # (i * 7) % 13 over 0..19: 12 at i=11, 11 at i=9, 10 at i=7
    assert picks.tolist() == [11, 9, 7]
    no_ssl = dataclasses.replace(ctx, ssl_loss=None)
    with pytest.raises(SsalError, match="train.mode=joint"):
        build_strategy("ssl_loss_high").select(no_ssl, 3)
