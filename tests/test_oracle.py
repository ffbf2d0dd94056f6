"""The pool-label guard: only labelled indices have readable labels."""

import pickle

import pytest
import torch

from ssal.data.oracle import ActivePool, GroundTruthOracle
from ssal.errors import PoolLabelAccessError


def make_pool(n=20, classes=4):
    labels = torch.arange(n) % classes
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    return ActivePool(images, GroundTruthOracle(labels), classes), labels


def test_reading_any_pool_label_fails_loudly():
    pool, _ = make_pool()
    with pytest.raises(PoolLabelAccessError):
        pool.targets(torch.tensor([0]))
    pool.label(torch.tensor([3, 5]))
    with pytest.raises(PoolLabelAccessError):
        pool.targets(torch.tensor([3, 4]))  # 4 is still in the pool
    with pytest.raises(PoolLabelAccessError):
        pool.targets(pool.unlabelled)


def test_labels_revealed_only_on_labelling():
    pool, labels = make_pool()
    got = pool.label(torch.tensor([7, 2, 9]))
    assert got.tolist() == labels[[7, 2, 9]].tolist()
    assert pool.labelled.tolist() == [7, 2, 9]  # acquisition order
    assert pool.labelled_targets().tolist() == labels[[7, 2, 9]].tolist()
    assert 7 not in pool.unlabelled.tolist() and len(pool.unlabelled) == 17
    assert pool.class_histogram(pool.labelled) == torch.bincount(labels[[7, 2, 9]], minlength=4).tolist()


def test_no_attribute_holds_pool_labels():
    labels = torch.arange(10) + 100
    oracle = GroundTruthOracle(labels)
    pool = ActivePool(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), oracle, 110)
    # No tensor reachable through attributes of the pool or the oracle contains
    # the hidden labels before anything is labelled.
    seen = []
    for obj in (pool, oracle):
        for name in dir(obj):
            try:
                val = getattr(obj, name)
            except Exception:
                continue
            if isinstance(val, torch.Tensor):
                seen.append(val)
    assert not any(bool(torch.isin(labels, t.flatten().long()).any()) for t in seen if t.numel())
    with pytest.raises(TypeError):
        pickle.dumps(oracle)


def test_relabelling_and_duplicates_rejected():
    pool, _ = make_pool()
    pool.label(torch.tensor([1]))
    with pytest.raises(ValueError):
        pool.label(torch.tensor([1]))
    with pytest.raises(ValueError):
        pool.label(torch.tensor([2, 2]))


def test_state_round_trip():
    pool, labels = make_pool()
    pool.label(torch.tensor([4, 0, 11]))
    other, _ = make_pool()
    other.load_state_dict(pool.state_dict())
    assert other.labelled.tolist() == [4, 0, 11]
    assert other.labelled_targets().tolist() == labels[[4, 0, 11]].tolist()
    with pytest.raises(PoolLabelAccessError):
        other.targets(torch.tensor([1]))
