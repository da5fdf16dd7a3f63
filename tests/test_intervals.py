"""The interval arithmetic behind every accuracy defpert prints, against known values."""

from __future__ import annotations

import pytest

from defpert.wording import PairedDifference, wilson


@pytest.mark.parametrize(("k", "n"), [(0, 10), (81, 263), (930, 1000), (1000, 1000), (3, 200)])
def test_wilson_matches_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
    assert wilson(k, n, z=1.959963984540054) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-5)  # z rounded to 1.96


def test_paired_difference_matches_the_published_square_and_add_interval():
    # Fagerland, Lydersen and Laake's paired 2x2 example (Cavo et al., 2012), as their
    # contingencytables package checks it: -0.0621 (95 % CI -0.1186 to -0.0046)
    paired = PairedDifference(both=59, only_first=6, only_second=16, neither=80)
    assert round(paired.difference, 4) == -0.0621
    low, high = paired.interval95()
    assert (round(low, 4), round(high, 4)) == (-0.1186, -0.0046)


def test_paired_difference_from_verdicts_and_its_mirror():
    first = [True] * 30 + [False] * 5 + [True] * 10 + [False] * 5
    second = [True] * 30 + [True] * 5 + [False] * 10 + [False] * 5
    paired = PairedDifference.of(first, second)
    assert (paired.both, paired.only_first, paired.only_second, paired.neither) == (30, 10, 5, 5)
    mirror = PairedDifference.of(second, first)
    low, high = paired.interval95()
    assert mirror.interval95() == pytest.approx((-high, -low))
    assert low < paired.difference < high
    with pytest.raises(ValueError, match="verdicts on 2 and 1 examples"):
        PairedDifference.of([True, False], [True])


def test_a_gain_on_the_same_examples_is_judged_by_the_examples_that_differ():
    """Two accuracies of 96.9 % and 93.0 % on 1,000 examples: unpaired their intervals touch
    at the edges; paired, with few examples that differ, the interval is far narrower."""
    tight = PairedDifference(both=930, only_first=39, only_second=0, neither=31)
    loose = PairedDifference(both=899, only_first=70, only_second=31, neither=0)
    assert tight.difference == pytest.approx(loose.difference) == pytest.approx(0.039)
    (tl, th), (ll, lh) = tight.interval95(), loose.interval95()
    assert th - tl < lh - ll and tl > 0.02
