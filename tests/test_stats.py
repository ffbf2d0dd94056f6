"""ssal.stats on hand-made numbers, against values computed by hand with the
Student t quantiles written out."""

import math

import pytest

from ssal.stats import aubc, labels_to_reach, mean_std_ci, paired_difference, t_quantile

# With 2 degrees of freedom the t quantile has a closed form,
# t_{p, 2} = (2p - 1) / sqrt(2p (1 - p)): t_{0.975, 2} = 0.95 / sqrt(0.04875) = 4.30265272975
# (the often quoted 4.302652729911275 is off in the 11th digit).
T_975_2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)
T_950_2 = 0.90 / math.sqrt(2 * 0.95 * 0.05)  # 2.91998558035
T_975_3 = 3.182446305284  # t_{0.975, 3}, from a table


def test_t_quantiles():
    assert t_quantile(0.95, 2) == pytest.approx(T_975_2, rel=1e-12)
    assert t_quantile(0.95, 2) == pytest.approx(4.302652729911275, rel=1e-10)
    assert t_quantile(0.95, 3) == pytest.approx(T_975_3, rel=1e-11)
    assert t_quantile(0.90, 2) == pytest.approx(T_950_2, rel=1e-12)


def test_mean_std_ci_by_hand():
    m = mean_std_ci([1.0, 2.0, 3.0])
    assert m.mean == 2.0 and m.std == pytest.approx(1.0)
    assert m.ci == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-12)  # 2.4841377117

    # 80, 82, 87, 85: mean 83.5, squared deviations 12.25 + 2.25 + 12.25 + 2.25 = 29
    m = mean_std_ci([80, 82, 87, 85])
    assert m.mean == 83.5
    assert m.std == pytest.approx(math.sqrt(29 / 3), rel=1e-12)
    assert m.ci == pytest.approx(T_975_3 * math.sqrt(29 / 3) / 2, rel=1e-11)

    m90 = mean_std_ci([1.0, 2.0, 3.0], confidence=0.90)
    assert m90.ci == pytest.approx(T_950_2 / math.sqrt(3), rel=1e-12)


def test_mean_std_ci_single_value_and_empty():
    assert mean_std_ci([0.7]) == (0.7, None, None)
    mean, std, ci = mean_std_ci([5, 5])
    assert (mean, std, ci) == (5.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        mean_std_ci([])


def test_aubc_is_the_normalised_trapezoid():
    # (1000, 50) -> (2000, 60) -> (4000, 80): 1000 * 55 + 2000 * 70 = 195000 over 3000 labels
    assert aubc([1000, 2000, 4000], [50.0, 60.0, 80.0]) == pytest.approx(65.0)
    assert aubc([40, 70], [0.5, 0.6]) == pytest.approx(0.55)  # two points: their mean
    assert aubc([1, 2, 3], [80.0, 80.0, 80.0]) == pytest.approx(80.0)  # flat curve: its level
    assert aubc([1000], [42.0]) == 42.0
    with pytest.raises(ValueError):
        aubc([1000, 1000], [1.0, 2.0])
    with pytest.raises(ValueError):
        aubc([1, 2], [1.0])


def test_labels_to_reach():
    f = labels_to_reach
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 65.0) == 2500
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 45.0) == 1000
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 70.0) == 3000
    assert f([1000, 2000, 3000], [50.0, 60.0, 70.0], 70.5) is None
    # first crossing counts, even if the curve dips later: 40 + 30 * (62 - 52) / (65 - 52)
    assert f([40, 70, 100], [52.0, 65.0, 50.0], 62.0) == pytest.approx(40 + 300 / 13)


def test_paired_difference_by_hand():
    # diffs 1, 2, 4 (seed 3 only in a: ignored): mean 7/3, sd sqrt(7/3), ci = t * sd / sqrt(3) = 3.79 > 7/3
    a = {0: 60.0, 1: 62.0, 2: 65.0, 3: 99.0}
    b = {0: 59.0, 1: 60.0, 2: 61.0}
    d = paired_difference(a, b)
    assert d.n == 3 and d.seeds == (0, 1, 2)
    assert d.mean == pytest.approx(7 / 3)
    assert d.ci == pytest.approx(T_975_2 * math.sqrt(7 / 3) / math.sqrt(3), rel=1e-12)
    assert not d.resolved  # the CI contains 0: not resolved by the seeds

    # diffs 2.0, 2.1, 1.9: mean 2, sd 0.1, ci = t * 0.1 / sqrt(3) = 0.248: resolved
    d = paired_difference({0: 62.0, 1: 62.1, 2: 61.9}, {0: 60.0, 1: 60.0, 2: 60.0})
    assert d.mean == pytest.approx(2.0) and d.ci == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-9)
    assert d.resolved
    # and negative: the sign does not matter for resolved
    assert paired_difference({0: 60.0, 1: 60.0, 2: 60.0}, {0: 62.0, 1: 62.1, 2: 61.9}).resolved


def test_paired_difference_edge_cases():
    same = paired_difference({0: 50.0, 1: 52.0}, {0: 50.0, 1: 52.0})  # cycle 0: the same initial set
    assert (same.mean, same.ci, same.resolved) == (0.0, 0.0, False)
    constant = paired_difference({0: 51.0, 1: 53.0}, {0: 50.0, 1: 52.0})
    assert constant.ci == 0.0 and constant.resolved
    one = paired_difference({0: 55.0, 1: 1.0}, {0: 50.0})
    assert (one.n, one.mean, one.ci, one.resolved) == (1, 5.0, None, False)
    with pytest.raises(ValueError):
        paired_difference({0: 1.0}, {1: 1.0})


def test_paired_difference_pairs_by_seed_not_position():
    d = paired_difference({0: 1.0, 1: 5.0, 2: 9.0}, {2: 8.0, 1: 4.0, 0: 0.0})
    assert d.mean == 1.0 and d.ci == 0.0 and d.n == 3
    d = paired_difference({0: 1.0, 1: 5.0}, {1: 4.0, 7: 100.0})
    assert d.mean == 1.0 and d.n == 1 and d.seeds == (1,)
