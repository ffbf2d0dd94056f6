"""Representation-based strategies for cold start (TypiClust, ProbCover,
prototypes) and their helpers: hand-checked maths, exact picks on crafted
features, and the invariants every strategy keeps with or without labels."""

from __future__ import annotations

import math

import pytest
import torch

from ssal.errors import SsalError
from ssal.strategies import STRATEGIES, SelectionContext, build_strategy
from ssal.clustering import draw_seed, kmeans, l2_normalise, round_robin
from ssal.strategies.probcover import DELTA_GRID, ball_purity, choose_delta, delta_ball_graph, greedy_cover
from ssal.strategies.prototypes import pick_level, select_by_assignment, select_by_prototypes
from ssal.strategies.typiclust import knn_distances, typicality

NEW = ["typiclust", "probcover", "prototypes"]


def make_blobs(sizes: list[int], dim: int = 8, noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob b: unit vector e_b plus Gaussian noise; features float64 and blob ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.eye(dim, dtype=torch.float64)[b] + noise * torch.randn(s, dim, generator=g, dtype=torch.float64)
                   for b, s in enumerate(sizes)])
    return x, torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def context(features: torch.Tensor, candidates: list[int], labelled: list[int], seed: int = 0) -> SelectionContext:
    """Pool index i has feature row i; logits are unused."""
    return SelectionContext(
        candidates=torch.tensor(candidates, dtype=torch.long),
        labelled=torch.tensor(labelled, dtype=torch.long),
        embed=lambda idx: (torch.zeros(idx.numel(), 3), features[idx]),
        generator=torch.Generator().manual_seed(seed),
    )


def brute_typicality(x: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: 1 / mean of the k smallest direct-difference distances to other rows."""
    d = (x.unsqueeze(1) - x.unsqueeze(0)).square().sum(-1).sqrt()
    d.fill_diagonal_(math.inf)
    return 1.0 / d.sort(1).values[:, :k].mean(1)


def shuffled_pool(n: int, seed: int = 5) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


# -- k-means helper ---------------------------------------------------------------


def test_kmeans_is_seeded_and_recovers_blobs() -> None:
    x, blob = make_blobs([30, 50, 40, 20], dim=6)
    c1, a1 = kmeans(x, 4, seed=3)
    c2, a2 = kmeans(x, 4, seed=3)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    assert c1.shape == (4, 6) and c1.dtype == torch.float32 and a1.dtype == torch.long
    # The partition is the blobs' (up to renaming), and each centroid is its blob's mean.
    assert len({(int(b), int(a)) for b, a in zip(blob, a1)}) == 4
    for b in range(4):
        c = int(a1[blob == b][0])
        assert torch.allclose(c1[c].double(), x[blob == b].mean(0), atol=1e-5)
    # Spherical: unit centroids; same partition.
    cs, as_ = kmeans(x, 4, seed=3, spherical=True)
    assert torch.allclose(cs.norm(dim=1), torch.ones(4), atol=1e-5)
    assert len({(int(b), int(a)) for b, a in zip(blob, as_)}) == 4
    with pytest.raises(SsalError, match="k-means needs"):
        kmeans(x[:3], 4, seed=0)


def test_round_robin_tie_rules() -> None:
    # Cluster: 0     1     2     3
    sizes = [10, 30, 30, 50]
    labelled = [0, 1, 0, 2]
    ranked = {0: [100, 101], 1: [110], 2: [120, 121, 122], 3: [130]}
    # Fewest labelled+picked first, then larger, then lower id; exhausted clusters leave.
    assert round_robin(range(4), sizes, labelled, ranked.__getitem__, 10) == [120, 100, 110, 121, 101, 130, 122]
    assert round_robin([0, 3], sizes, labelled, ranked.__getitem__, 3) == [100, 101, 130]


# -- TypiClust ---------------------------------------------------------------------


def test_typicality_by_hand() -> None:
    line = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    # k = 1: nearest-neighbour distances 1, 1, 2, 3.
    assert torch.allclose(typicality(line, 1), torch.tensor([1.0, 1.0, 1 / 2, 1 / 3], dtype=torch.float64))
    # k = 2: {1, 3} -> 2; {1, 2} -> 1.5; {2, 3} -> 2.5; {3, 5} -> 4.
    assert torch.allclose(typicality(line, 2), torch.tensor([1 / 2, 1 / 1.5, 1 / 2.5, 1 / 4], dtype=torch.float64))
    assert torch.allclose(knn_distances(line, 3, rows=torch.tensor([3, 0])),
                          torch.tensor([[3.0, 5.0, 6.0], [1.0, 3.0, 6.0]], dtype=torch.float64))
    # A duplicate is a neighbour at distance 0 (the row itself is not).
    assert typicality(torch.tensor([[0.0], [0.0], [5.0]]), 1).tolist() == [math.inf, math.inf, 0.2]
    with pytest.raises(SsalError, match="1 <= k <= N - 1"):
        typicality(line, 4)


def test_typiclust_cold_start_picks_most_typical_point_of_each_blob() -> None:
    x, blob = make_blobs([40] * 5)
    pool = shuffled_pool(200)
    picks = build_strategy("typiclust").select(context(x, pool, []), 5)
    assert sorted(blob[picks].tolist()) == [0, 1, 2, 3, 4]
    xn = l2_normalise(x)
    for p in picks.tolist():
        members = (blob == blob[p]).nonzero().view(-1)
        t = brute_typicality(xn[members], 20)
        assert p == int(members[t.argmax()])
        # The most typical point lies near the blob's centre.
        dist = (xn[members] - xn[members].mean(0)).norm(dim=1)
        assert float(dist[members == p]) < float(dist.median())


def test_typiclust_serves_unlabelled_blobs_first() -> None:
    x, blob = make_blobs([40] * 5)
    labelled = [0, 1, 40]  # two in blob 0, one in blob 1
    cands = [i for i in shuffled_pool(200) if i not in labelled]
    picks = build_strategy("typiclust").select(context(x, cands, labelled), 2)  # K = 3 + 2 = 5 clusters
    assert sorted(blob[picks].tolist()) in ([2, 3], [2, 4], [3, 4])
    picks = build_strategy("typiclust").select(context(x, cands, labelled), 3)  # K = 6
    assert sorted(blob[picks].tolist()) == [2, 3, 4]


def test_typiclust_falls_back_to_global_typicality_when_clusters_are_small() -> None:
    x, _ = make_blobs([3, 3, 3, 3], dim=4, noise=0.2, seed=1)
    # K = 4 clusters of <= 5 points: all dropped; order by typicality over all 12 points (k = 11).
    picks = build_strategy("typiclust").select(context(x, list(range(12)), []), 4)
    expected = torch.sort(brute_typicality(l2_normalise(x), 11), descending=True, stable=True).indices[:4]
    assert picks.tolist() == expected.tolist()


# -- ProbCover ---------------------------------------------------------------------

LINE = torch.tensor([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1], [10.0]], dtype=torch.float64)


def test_delta_ball_graph_and_greedy_by_hand() -> None:
    indptr, indices = delta_ball_graph(LINE, 0.25)
    rows = [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(7)]
    assert rows == [[0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3], [1, 2, 3], [4, 5], [4, 5], [6]]
    assert indices.dtype == torch.int32
    # Degrees 3 4 4 3 2 2 1: row 1 (lowest of the maxima), then the 2-ball, then the singleton.
    assert greedy_cover(indptr, indices, 7, 5) == [1, 4, 6]
    assert greedy_cover(indptr, indices, 7, 2) == [1, 4]
    # Rows 5 and 6 labelled: they cover {4, 5} and {6}; candidates 0..4.
    assert greedy_cover(indptr, indices, 5, 5) == [1]
    # Chunked build equals the one-shot build.
    import ssal.strategies.probcover as pc

    old, pc._CHUNK = pc._CHUNK, 10
    try:
        p2, i2 = delta_ball_graph(LINE, 0.25)
    finally:
        pc._CHUNK = old
    assert torch.equal(p2, indptr) and torch.equal(i2, indices)


def circle(angles: list[float]) -> torch.Tensor:
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([a.cos(), a.sin()], 1)  # chord = 2 sin(dangle / 2)


def test_probcover_picks_max_degree_then_random() -> None:
    # Pool i at angle: 0, .1, .2, .3 (one group), 2.0, 2.1, 4.0; delta .25 gives LINE's graph.
    x = circle([0.0, 0.1, 0.2, 0.3, 2.0, 2.1, 4.0])
    cands = [6, 3, 1, 0, 5, 2, 4]
    picks = build_strategy("probcover", delta=0.25).select(context(x, cands, []), 3)
    assert picks.tolist() == [1, 5, 6]  # max degree (ties: lowest candidate position: 1 before 2)
    # Budget beyond full coverage: the rest is uniform from ctx.generator.
    picks = build_strategy("probcover", delta=0.25).select(context(x, cands, [], seed=9), 5)
    rest = torch.tensor([3, 0, 2, 4])  # unpicked candidates in position order
    assert picks.tolist() == [1, 5, 6] + rest[torch.randperm(4, generator=torch.Generator().manual_seed(9))[:2]].tolist()


def test_probcover_everything_covered_by_labelled_is_random() -> None:
    x = circle([0.0, 2.0, 4.0, 0.05, -0.05, 0.1, 2.05, 1.95, 2.1, 4.05, 3.95, 4.1, 3.9])
    cands = list(range(3, 13))
    picks = build_strategy("probcover", delta=0.3).select(context(x, cands, [0, 1, 2], seed=4), 10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    assert picks.tolist() == torch.tensor(cands)[perm].tolist()


def test_ball_purity_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    # Distance to the nearest other label: 2, 1, 1, 9; a ball (strict <) is pure while delta <= it.
    assert ball_purity(x, labels, [0.5, 1.0, 1.5, 2.5, 9.0, 9.5]).tolist() == [1.0, 1.0, 0.5, 0.25, 0.25, 0.0]


def test_probcover_auto_delta() -> None:
    assert DELTA_GRID[0] == 0.3 and DELTA_GRID[-1] == 1.2 and len(DELTA_GRID) == 19
    # Three tight groups at 0.8 rad from each other: chord ~0.78 between groups.
    g = torch.Generator().manual_seed(0)
    angles = torch.cat([c + 0.03 * torch.randn(30, generator=g, dtype=torch.float64) for c in (0.0, 0.8, 1.6)])
    x = circle(angles.tolist())
    strategy = build_strategy("probcover", delta="auto", auto_clusters=3)
    picks = strategy.select(context(x, list(range(90)), [], seed=2), 3)
    assert strategy.last_delta in DELTA_GRID
    expected = choose_delta(l2_normalise(x), 3, draw_seed(torch.Generator().manual_seed(2)))
    assert strategy.last_delta == expected
    # It is the largest grid delta whose purity (k-means labels) is >= 0.95.
    _, labels = kmeans(l2_normalise(x), 3, draw_seed(torch.Generator().manual_seed(2)))
    purity = dict(zip(DELTA_GRID, ball_purity(l2_normalise(x), labels, DELTA_GRID).tolist()))
    assert purity[expected] >= 0.95 and all(p < 0.95 for d, p in purity.items() if d > expected)
    assert 0.5 <= expected <= 0.8  # below the gap between groups, above their spread
    assert sorted((picks // 30).tolist()) == [0, 1, 2]
    with pytest.raises(SsalError, match="delta"):
        build_strategy("probcover", delta="big")


# -- prototypes --------------------------------------------------------------------


def test_select_by_prototypes_serves_labelless_prototypes_first() -> None:
    sizes = [40, 40, 30, 50, 20]
    x, blob = make_blobs(sizes)
    centroids = torch.eye(8, dtype=torch.float64)[:5]
    labelled = torch.zeros(180, dtype=torch.bool)
    labelled[[0, 40]] = True  # one in blob 0, one in blob 1
    picks = select_by_prototypes(x, centroids, labelled, 6).tolist()
    cos = l2_normalise(x) @ centroids.T

    def ranked(b: int) -> list[int]:
        members = ((blob == b) & ~labelled).nonzero().view(-1)
        return members[torch.sort(cos[members, b], descending=True, stable=True).indices].tolist()

    # Labelless prototypes by size (3: 50, 2: 30, 4: 20), nearest first; then all
    # hold one: by size, 3 (50), then 0 and 1 (40, lower id first).
    assert picks == [ranked(3)[0], ranked(2)[0], ranked(4)[0], ranked(3)[1], ranked(0)[0], ranked(1)[0]]
    assert select_by_prototypes(x, centroids, labelled, 0).numel() == 0
    with pytest.raises(SsalError, match="budget"):
        select_by_prototypes(x, centroids, labelled, 179)


def test_prototype_strategy_picks_centroid_neighbours_of_unlabelled_clusters() -> None:
    x, blob = make_blobs([40] * 5)
    labelled = [3, 45]
    cands = [i for i in shuffled_pool(200) if i not in labelled]
    ctx = context(x, cands, labelled, seed=6)
    picks = build_strategy("prototypes").select(ctx, 3)  # K = 2 + 3 = 5 prototypes
    assert sorted(blob[picks].tolist()) == [2, 3, 4]
    rows = torch.tensor(cands + labelled)
    centroids, _ = kmeans(x[rows], 5, draw_seed(torch.Generator().manual_seed(6)), spherical=True)
    cos = l2_normalise(x) @ centroids.double().T
    for p in picks.tolist():
        c = int(cos[p].argmax())
        members = torch.tensor(cands)[cos[cands].argmax(1) == c]
        assert p == int(members[cos[members, c].argmax()])


def test_select_by_assignment_is_select_by_prototypes_on_the_nearest_centroid() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(120, 6, generator=g)
    centroids = torch.randn(7, 6, generator=g)
    labelled = torch.zeros(120, dtype=torch.bool)
    labelled[torch.randperm(120, generator=g)[:15]] = True
    best, assign = (l2_normalise(x) @ l2_normalise(centroids).T).max(1)
    for budget in (0, 1, 9, 40, 105):
        assert torch.equal(select_by_assignment(assign, best, labelled, budget, 7), select_by_prototypes(x, centroids, labelled, budget))
    with pytest.raises(SsalError, match=r"prototype ids must lie in \[0, 3\)"):
        select_by_assignment(assign, best, labelled, 5, 3)
    with pytest.raises(SsalError, match="differ in length"):
        select_by_assignment(assign[:-1], best, labelled, 5, 7)


def test_pick_level_takes_the_k_closest_to_the_wanted_number() -> None:
    assert pick_level([50, 100, 200], 120) == 1
    assert pick_level([50, 100, 200], 150) == 2  # a tie goes to the finer
    assert pick_level([50, 100, 200], 10) == 0 and pick_level([50, 100, 200], 5000) == 2


def _pcl_lookup(levels: list[tuple[torch.Tensor, torch.Tensor]]):
    """``ssl_prototypes`` over crafted per-image assignments and similarities (pool index i = row i)."""
    return lambda idx: [(int(a.max()) + 1, a[idx], s[idx]) for a, s in levels]


def test_prototype_strategy_uses_the_pcl_prototypes_of_the_run() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 5, generator=g, dtype=torch.float64)  # features that k-means would cut differently
    coarse = torch.arange(100) % 2  # K = 2
    fine = torch.arange(100) // 20  # K = 5: images 0-19, 20-39, ...
    sim = torch.rand(100, generator=g)
    labelled = [0, 25]  # in fine prototypes 0 and 1
    cands = [i for i in shuffled_pool(100) if i not in labelled]
    ctx = context(x, cands, labelled, seed=1)
    ctx.ssl_prototypes = _pcl_lookup([(coarse, sim), (fine, sim)])
    picks = build_strategy("prototypes").select(ctx, 3)  # |L| + budget = 5 -> the fine level
    assert torch.equal(build_strategy("prototypes", max_prototypes=3).select(ctx, 3), picks)  # the k-means cap does not apply
    assert sorted(int(p) // 20 for p in picks) == [2, 3, 4]  # the prototypes that hold no label
    for p in picks.tolist():  # each the unlabelled image most similar to its prototype
        members = [i for i in cands if i // 20 == p // 20]
        assert p == max(members, key=lambda i: (float(sim[i]), -i))
    rows = torch.tensor(cands + labelled)
    mask = torch.arange(rows.numel()) >= len(cands)
    assert torch.equal(picks, torch.tensor(cands)[select_by_assignment(fine[rows], sim[rows], mask, 3, 5)])
    assert torch.equal(build_strategy("prototypes", source="pcl").select(ctx, 3), picks)
    coarse_picks = build_strategy("prototypes", level=0).select(ctx, 2)
    assert sorted(int(coarse[p]) for p in coarse_picks) == [0, 1]  # both coarse prototypes hold a label: one each
    # k-means on the features when asked, or when the run has no prototypes
    plain = context(x, cands, labelled, seed=1)
    by_kmeans = build_strategy("prototypes").select(plain, 3)
    assert torch.equal(build_strategy("prototypes", source="kmeans").select(ctx, 3), by_kmeans)
    with pytest.raises(SsalError, match="source=pcl needs the prototypes of a PCL pretraining"):
        build_strategy("prototypes", source="pcl").select(plain, 3)
    with pytest.raises(SsalError, match="level=2: the PCL pretraining has 2 granularities"):
        build_strategy("prototypes", level=2).select(ctx, 3)
    with pytest.raises(SsalError, match="strategy_options.source=centroids"):
        build_strategy("prototypes", source="centroids")


# -- every new strategy --------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_invariants(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(80, 5, generator=g)
    cands = shuffled_pool(80)[:50]
    others = [i for i in range(80) if i not in cands]
    for labelled in ([], others[:10]):
        a = build_strategy(name).select(context(x, cands, labelled, seed=3), 12)
        b = build_strategy(name).select(context(x, cands, labelled, seed=3), 12)
        assert a.dtype == torch.long and torch.equal(a, b)
        assert a.unique().numel() == 12 and set(a.tolist()) <= set(cands)
        everything = build_strategy(name).select(context(x, cands, labelled, seed=3), 50)
        assert sorted(everything.tolist()) == sorted(cands)
        assert build_strategy(name).select(context(x, cands, labelled), 0).numel() == 0
    one = build_strategy(name).select(context(x, [7], []), 1)
    assert one.tolist() == [7]


@pytest.mark.parametrize("name", NEW)
def test_registered_and_checked(name: str) -> None:
    assert name in STRATEGIES and build_strategy(name).name == name
    with pytest.raises(SsalError, match="labelled"):
        build_strategy(name).select(context(torch.zeros(4, 2), [1, 2], [2]), 1)


def test_ball_graph_refuses_a_delta_that_joins_too_many_pairs() -> None:
    """A delta that puts most pairs in each other's balls would build an N^2
    graph (7.9 GB for 15,000 points of a supervised model's features at delta
    0.75): a one-line error instead."""
    from ssal.strategies.probcover import delta_ball_graph

    x = torch.nn.functional.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    indptr, _ = delta_ball_graph(x, 0.5, max_edges=19900)
    with pytest.raises(SsalError, match="joins 19,900 of the 19,900 pairs"):
        delta_ball_graph(x, 2.5, max_edges=19899)


def test_initial_strategy_options_reach_the_cold_start_strategy(tmp_path) -> None:
    from ssal.config import resolve_config
    from ssal.loop import run_experiment

    base = ["initial=20", "budget=10", "cycles=1", "model_width=8", "train.epochs=1", "plot=false", "val_size=50", "initial_strategy=prototypes"]
    run = lambda *extra: run_experiment(resolve_config(None, [*base, f"out={tmp_path / str(len(extra))}", *extra]), progress=False, log=lambda s: None)  # noqa: E731
    with pytest.raises(SsalError, match="source=pcl needs the prototypes of a PCL pretraining"):
        run("initial_strategy_options.source=pcl")  # no PCL cache in a supervised run: the option arrived
    with pytest.raises(SsalError, match=r"no option 'sorce' \(initial_strategy_options.sorce\)"):
        run("initial_strategy_options.sorce=pcl")
    with pytest.raises(SsalError, match="initial_strategy_options=.*initial_strategy=random takes no options"):
        resolve_config(None, ["initial_strategy_options.source=pcl"])
    (rec,) = run("initial_strategy_options.source=kmeans")
    assert rec["n_labelled"] == 20


def test_typiclust_never_returns_a_labelled_singleton():
    g = torch.Generator().manual_seed(0)
    e = torch.eye(4, dtype=torch.float64)
    x = torch.cat([e[0].repeat(3, 1), e[1].repeat(3, 1), e[2:3]]) + 0.01 * torch.randn(7, 4, generator=g, dtype=torch.float64)
    # clusters: {0,1,2}, {3,4,5}, {6 (labelled)}; the labelled singleton is visited at the 5th pick
    picks = build_strategy("typiclust", max_clusters=3, min_cluster_size=0).select(context(x, list(range(6)), [6]), 6)
    assert sorted(picks.tolist()) == list(range(6))
