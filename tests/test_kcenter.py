"""kcenter_greedy against a brute-force float64 k-center greedy (Sener & Savarese 2018, Alg. 1)."""

from __future__ import annotations

import math
import resource

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssal.strategies.kcenter as kc
from ssal.errors import SsalError
from ssal.strategies.kcenter import kcenter_greedy


def brute_force(x: torch.Tensor, initial: torch.Tensor, budget: int) -> torch.Tensor:
    """Textbook k-center greedy: full float64 distance matrix (direct differences),
    argmax of the min distance to the centres, ties to the lowest index, no
    centre picked twice; no centres yet = every point at +inf."""
    x64 = x.double()
    d2 = (x64[:, None, :] - x64[None, :, :]).square().sum(-1)
    mind = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    taken = torch.zeros(x.shape[0], dtype=torch.bool)
    for c in initial.tolist():
        mind = torch.minimum(mind, d2[:, c])
        taken[c] = True
    picks = []
    for _ in range(budget):
        j = int(torch.argmax(torch.where(taken, -math.inf, mind)))
        picks.append(j)
        taken[j] = True
        mind = torch.minimum(mind, d2[:, j])
    return torch.tensor(picks, dtype=torch.long)


def random_case(g: torch.Generator, trial: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    n = int(torch.randint(1, 201, (1,), generator=g))
    d = int(torch.randint(1, 17, (1,), generator=g))
    kind = trial % 5
    if kind == 0:
        x = torch.randn(n, d, generator=g)
    elif kind == 1:  # small integers: many exact ties
        x = torch.randint(-2, 3, (n, d), generator=g).float()
    elif kind == 2:  # exact duplicate points
        base = torch.randn(max(1, n // 4), d, generator=g)
        x = base[torch.randint(0, base.shape[0], (n,), generator=g)]
    elif kind == 3:  # large common offset, tiny spread: stresses the float32 error bound
        x = 1000 + 1e-2 * torch.randn(n, d, generator=g)
    else:  # near-duplicates in clusters
        base = torch.randn(max(1, n // 8), d, generator=g)
        x = base[torch.randint(0, base.shape[0], (n,), generator=g)] + 1e-6 * torch.randn(n, d, generator=g)
    k = int(torch.randint(0, n + 1, (1,), generator=g))
    initial = torch.randperm(n, generator=g)[:k]
    budget = int(torch.randint(0, n - k + 1, (1,), generator=g))
    return x, initial, budget


@pytest.fixture
def tiny_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny slices, blocks and frontier so small inputs go through every code path
    (frontier rebuilds, geometric refreshes, exact blocks, chunked first pass)."""
    for name, value in dict(_FIRST_SLICE=2, _BLOCK=4, _BLOCK_MIN=1, _BLOCK_PAIRS=8, _EXACT_BLOCK=2, _FRONTIER=8, _CHUNK=16).items():
        monkeypatch.setattr(kc, name, value)


def test_matches_brute_force_on_random_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    for trial in range(150):
        x, initial, budget = random_case(g, trial)
        assert torch.equal(kcenter_greedy(x, initial, budget), brute_force(x, initial, budget)), trial


def test_matches_brute_force_with_tiny_blocks(tiny_blocks: None) -> None:
    g = torch.Generator().manual_seed(1)
    for trial in range(60):
        x, initial, budget = random_case(g, trial)
        assert torch.equal(kcenter_greedy(x, initial, budget), brute_force(x, initial, budget)), trial


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=2), min_size=n, max_size=n),
            st.sets(st.integers(0, n - 1)),
            st.integers(0, n),
        )
    )
)
def test_property_integer_grid(case: tuple[list[list[int]], set[int], int]) -> None:
    rows, init, budget = case
    x = torch.tensor(rows, dtype=torch.float32)
    initial = torch.tensor(sorted(init), dtype=torch.long)
    budget = min(budget, x.shape[0] - initial.numel())
    picks = kcenter_greedy(x, initial, budget)
    assert picks.dtype == torch.long and picks.numel() == budget
    assert picks.unique().numel() == budget
    assert not bool(torch.isin(picks, initial).any())
    assert torch.equal(picks, brute_force(x, initial, budget))


def test_hand_example_on_a_line() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [5.0]])
    # From {0}: 11 is farthest; then 5 (5 from 0, 6 from 11); then 2 (2 from 0, 3 from 5).
    assert kcenter_greedy(x, torch.tensor([0]), 3).tolist() == [4, 5, 2]
    # From {11}: 0 is farthest (11); then, with distances to {11, 0} of 1, 2, 1, 5, it is 5.
    assert kcenter_greedy(x, torch.tensor([4]), 2).tolist() == [0, 5]


def test_exact_tie_goes_to_lowest_index() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    assert kcenter_greedy(x, torch.tensor([0]), 3).tolist() == [1, 2, 3]


def test_no_initial_centres_starts_at_index_zero() -> None:
    x = torch.tensor([[5.0], [0.0], [100.0], [50.0]])
    assert kcenter_greedy(x, torch.empty(0, dtype=torch.long), 3).tolist() == [0, 2, 3]


def test_budget_zero_and_full() -> None:
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(2))
    assert kcenter_greedy(x, torch.tensor([1, 2]), 0).tolist() == []
    everything = kcenter_greedy(x, torch.tensor([1, 2, 2]), 8)  # repeats in initial are ignored
    assert sorted(everything.tolist()) == [0, 3, 4, 5, 6, 7, 8, 9]


def test_bad_inputs_raise_ssal_error() -> None:
    x = torch.randn(5, 2)
    with pytest.raises(SsalError, match="budget"):
        kcenter_greedy(x, torch.tensor([0, 1]), 4)
    with pytest.raises(SsalError, match="budget"):
        kcenter_greedy(x, torch.tensor([0]), -1)
    with pytest.raises(SsalError, match="initial"):
        kcenter_greedy(x, torch.tensor([5]), 1)
    with pytest.raises(SsalError, match="NaN"):
        kcenter_greedy(torch.tensor([[0.0], [math.nan]]), torch.tensor([0]), 1)
    with pytest.raises(SsalError, match="features"):
        kcenter_greedy(torch.zeros(5), torch.tensor([0]), 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_other_dtypes(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(150, 6, generator=g).to(dtype)
    initial = torch.randperm(150, generator=g)[:20]
    assert torch.equal(kcenter_greedy(x, initial, 60), brute_force(x, initial, 60))


def test_huge_values_fall_back_to_float64_products() -> None:
    g = torch.Generator().manual_seed(4)
    x = 1e18 * torch.randn(100, 8, generator=g)  # float32 squared norms would overflow
    assert torch.equal(kcenter_greedy(x, torch.tensor([3]), 40), brute_force(x, torch.tensor([3]), 40))


def test_large_n_runs_in_linear_memory_and_restores_threads() -> None:
    threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(50_000, 8, generator=g)  # an N x N float32 matrix would take 10 GB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    picks = kcenter_greedy(x, torch.arange(200), 300)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200
    assert picks.unique().numel() == 300 and int(picks.min()) >= 200
    assert torch.get_num_threads() == threads
    # The same picks as the straightforward per-pick pass (float64, direct
    # differences; numpy, single-threaded, so the check stays fast on busy cores).
    x64 = x.double().numpy()
    mind = np.full(50_000, np.inf)
    for c in range(200):
        mind = np.minimum(mind, np.square(x64 - x64[c]).sum(1))
    mind[:200] = -np.inf
    for j in picks.tolist():
        assert j == int(np.argmax(mind))
        mind = np.minimum(mind, np.square(x64 - x64[j]).sum(1))
        mind[j] = -np.inf
