"""The study's statistics against direct computations on hand-made predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ghns.stats import binomial_two_sided, mcnemar, mean_std, paired_bootstrap, sign_test_greater


def loop_bootstrap(a, b, n_boot, seed, level=0.95):
    """The documented two-way bootstrap, one draw at a time."""
    rng = np.random.default_rng(seed)
    s, n = a.shape
    diff = a.astype(float) - b.astype(float)
    means = []
    for _ in range(n_boot):
        seeds = rng.integers(0, s, s)
        images = rng.integers(0, n, n)
        means.append(diff[seeds][:, images].mean())
    tail = (1 - level) / 2
    return 100 * diff.mean(), 100 * np.quantile(means, [tail, 1 - tail])


def test_bootstrap_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    a = rng.random((4, 50)) < 0.8
    b = rng.random((4, 50)) < 0.7
    got = paired_bootstrap(a, b, n_boot=300, seed=7, chunk=64)
    mean, (lo, hi) = loop_bootstrap(a, b, 300, 7)
    assert got["mean"] == pytest.approx(mean, abs=1e-3)
    assert got["ci95"] == pytest.approx([lo, hi], abs=1e-3)


def test_bootstrap_of_a_clear_gain_excludes_zero_and_of_no_gain_is_zero():
    a = np.ones((5, 200), bool)
    b = np.zeros((5, 200), bool)
    b[:, :100] = True  # "with" is right on 100 more images in every seed: +50 points
    gain = paired_bootstrap(a, b, n_boot=500)
    assert gain["mean"] == pytest.approx(50.0) and gain["ci95"][0] > 0
    same = paired_bootstrap(b, b, n_boot=200)
    assert same["mean"] == 0 and same["ci95"] == [0, 0]


def test_bootstrap_rejects_unpaired_arms():
    with pytest.raises(ValueError, match="same shape"):
        paired_bootstrap(np.ones((2, 3)), np.ones((2, 4)))


def test_mcnemar_counts_discordant_pairs_and_matches_scipy():
    a = np.array([[1, 1, 0, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1, 0, 1]], bool)
    b = np.array([[1, 0, 0, 0, 1, 0, 1, 0], [0, 0, 1, 0, 1, 1, 1, 0]], bool)
    got = mcnemar(a, b)
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    assert (got["only_with"], got["only_without"]) == (only_a, only_b) == (7, 2)
    expected = sps.binomtest(only_b, only_a + only_b, 0.5, alternative="two-sided").pvalue
    assert got["p"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("k,n", [(0, 0), (0, 1), (3, 10), (5, 10), (40, 100), (480, 1000)])
def test_binomial_two_sided_matches_scipy(k, n):
    expected = 1.0 if n == 0 else sps.binomtest(k, n, 0.5).pvalue
    assert binomial_two_sided(k, n) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("new,old", [(0, 0), (2, 0), (5, 0), (4, 1), (3, 3), (1, 6), (40, 25), (300, 250)])
def test_sign_test_greater_is_the_upper_binomial_tail(new, old):
    n = new + old  # brute force: count the outcomes of n fair coins with at least `new` heads
    expected = sum(math.comb(n, i) for i in range(new, n + 1)) / 2 ** n if n else 1.0
    assert sign_test_greater(new, old) == pytest.approx(expected, rel=1e-9)
    assert sign_test_greater(5, 0) < 0.05 < sign_test_greater(4, 0)  # 5 fixed, none broken: enough


def test_mean_std():
    assert mean_std([90.0, 92.0, 94.0]) == {"mean": 92.0, "std": 2.0}
    assert mean_std([91.5]) == {"mean": 91.5, "std": 0.0}


def direct_auroc(known, unknown):
    """P(known > unknown) + 0.5 P(tie) over every pair, by a double loop."""
    total = 0.0
    for k in known:
        for u in unknown:
            total += 1.0 if k > u else 0.5 if k == u else 0.0
    return total / (len(known) * len(unknown))


def test_auroc_equals_the_pairwise_count_with_ties():
    from ghns.stats import auroc

    rng = np.random.default_rng(0)
    known = rng.integers(0, 6, 40) / 5  # many ties
    unknown = rng.integers(0, 5, 30) / 5
    assert auroc(known, unknown) == pytest.approx(direct_auroc(known, unknown), abs=1e-12)
    assert auroc([1.0, 2.0], [0.0]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0
    assert auroc([1.0], [1.0]) == 0.5
    assert math.isnan(auroc([], [1.0]))


def test_paired_auroc_bootstrap_matches_a_plain_loop():
    from ghns.stats import auroc, paired_auroc_bootstrap

    rng = np.random.default_rng(1)
    s, nk, nu = 3, 25, 20
    ka, ua = rng.random((s, nk)) + 0.3, rng.random((s, nu))
    kb, ub = rng.random((s, nk)) + 0.1, rng.random((s, nu))
    got = paired_auroc_bootstrap(ka, ua, kb, ub, n_boot=200, seed=4)
    draw = np.random.default_rng(4)
    means = []
    for _ in range(200):
        seeds = draw.integers(0, s, s)
        ki, ui = draw.integers(0, nk, nk), draw.integers(0, nu, nu)
        means.append(np.mean([direct_auroc(ka[i, ki], ua[i, ui]) - direct_auroc(kb[i, ki], ub[i, ui]) for i in seeds]))
    expected = np.mean([direct_auroc(ka[i], ua[i]) - direct_auroc(kb[i], ub[i]) for i in range(s)])
    assert got["mean"] == pytest.approx(expected, abs=1e-4)
    assert got["ci95"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])), abs=1e-4)
    assert got["ci95"][0] <= got["mean"] <= got["ci95"][1]
    same = paired_auroc_bootstrap(ka, ua, ka, ua, n_boot=50)
    assert same["mean"] == 0 and same["ci95"] == [0, 0]
    with pytest.raises(ValueError, match="matching shapes"):
        paired_auroc_bootstrap(ka, ua, kb[:, :3], ub)
    assert auroc(ka[0], ua[0]) > 0.5
