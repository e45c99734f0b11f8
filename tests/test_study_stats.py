"""Paired statistics on known cases: coverage, A/A, clear effects, Holm, power, crossover."""

import math

import numpy as np
import pytest

from keras_tl.study import stats


@pytest.mark.parametrize("n, ci", [(5, stats.difference_ci), (10, stats.difference_ci), (20, stats.bootstrap_ci)])
def test_ci_coverage_on_simulated_paired_data(n, ci):
    rng = np.random.default_rng(123 + n)
    true = 0.03
    # Paired arms share a per-seed effect (the seed's luck), so differences have a small sd.
    shared = rng.normal(0.8, 0.05, (400, n))
    a = shared + true + rng.normal(0, 0.02, (400, n))
    b = shared + rng.normal(0, 0.02, (400, n))
    lo, hi = ci(a - b, n_boot=4000, seed=1)
    coverage = np.mean((lo < true) & (true < hi))
    assert 0.93 <= coverage <= 0.97, coverage


def test_t_interval_coverage_and_values():
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, (400, 5))
    hits = [(lambda r: r["lo"] < 1.0 < r["hi"])(stats.t_interval(row)) for row in x]
    assert 0.93 <= np.mean(hits) <= 0.97
    r = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert r["mean"] == 2.0 and r["lo"] == pytest.approx(2 - half) and r["hi"] == pytest.approx(2 + half)
    assert stats.t_interval([0.5])["lo"] is None


def _finalised(a, b, **kw):
    c = stats.compare(a, b, **kw)
    stats.finalise([c], kw.get("higher_is_better", True))
    return c


def test_aa_comparison_gives_no_evidence():
    rng = np.random.default_rng(0)
    for _ in range(20):
        seed_luck = rng.normal(0.7, 0.05, 5)
        a = seed_luck + rng.normal(0, 0.01, 5)
        b = seed_luck + rng.normal(0, 0.01, 5)
        c = _finalised(a, b)
        if c["ci_lo"] < 0 < c["ci_hi"]:
            assert c["verdict"] == stats.NO_EVIDENCE
    same = _finalised([0.7, 0.8, 0.75, 0.71, 0.9], [0.7, 0.8, 0.75, 0.71, 0.9])
    assert same["verdict"] == stats.NO_EVIDENCE and same["mean"] == 0 and same["seeds_needed"] is None
    assert same["p_better"] == 0.5


def test_clear_effect_is_better_and_direction_follows_metric():
    a = [0.81, 0.84, 0.80, 0.83, 0.82]
    b = [0.70, 0.73, 0.71, 0.72, 0.70]
    c = _finalised(a, b)
    assert c["verdict"] == stats.BETTER
    assert c["ci_lo"] > 0 and c["mean"] == pytest.approx(0.108)
    assert c["p_better"] == 1.0 and 0.5 < c["p_better_lo"] < 0.6 and c["p_better_hi"] == 1.0
    assert "bootstrap" in c["ci_method"]
    assert c["p_sign_flip"] == pytest.approx(2 / 32)
    # For a loss, lower is better: the same numbers now mean A is worse.
    assert _finalised(a, b, higher_is_better=False)["verdict"] == stats.WORSE
    assert _finalised(b, a, higher_is_better=False)["verdict"] == stats.BETTER
    assert _finalised(b, a)["verdict"] == stats.WORSE


def test_identical_differences_are_not_infinitely_significant():
    # Two seeds that both differ by exactly one test image: t is undefined, sign-flip p = 0.5.
    c = _finalised([0.10, 0.20], [0.05, 0.15])
    assert c["p_t"] == pytest.approx(0.5) and c["verdict"] == stats.NO_EVIDENCE
    assert c["seeds_needed"] == 6  # the smallest n with sign-flip p = 2 / 2**n < 0.05


def test_small_seed_counts_use_t_interval_and_say_so():
    c = stats.compare([0.8, 0.9], [0.7, 0.75])
    assert "t-interval" in c["ci_method"]
    assert c["ci_lo"] == pytest.approx(c["t_lo"])


def test_holm_known_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, None, 0.001]) == [pytest.approx(0.5), None, pytest.approx(0.002)]
    # A significant effect among many comparisons can lose its verdict after correction.
    comps = [stats.compare([0.2, 0.25, 0.18, 0.3, 0.22], [0.1, 0.21, 0.15, 0.22, 0.2])] + [
        stats.compare([0.5] * 5, [0.5] * 5) for _ in range(9)]
    assert comps[0]["p_t"] < 0.05
    stats.finalise(comps)
    assert comps[0]["p_holm"] == pytest.approx(min(1, 10 * comps[0]["p_t"]))
    assert comps[0]["verdict"] == stats.NO_EVIDENCE


def test_seeds_needed_is_the_smallest_n():
    for diff, sd in [(0.01, 0.02), (0.05, 0.02), (0.001, 0.05)]:
        n = stats.seeds_needed(diff, sd)
        crit = lambda k: stats.st.t.ppf(0.975, k - 1) * sd / math.sqrt(k) < diff  # noqa: E731
        assert crit(n) and (n == 2 or not crit(n - 1))
    assert stats.seeds_needed(0.0, 0.1) is None
    assert stats.seeds_needed(1e-9, 1.0) is None


def test_sign_flip_and_wilson():
    assert stats.sign_flip_pvalue([1, 1, 1, 1, 1]) == pytest.approx(2 / 32)
    assert stats.sign_flip_pvalue([1, -1, 1, -1]) == pytest.approx(1.0)
    lo, hi = stats.wilson(5, 5)
    assert lo == pytest.approx(0.5655, abs=1e-3) and hi == 1.0


def test_crossover_interpolates_in_log_size():
    sizes = [0.01, 0.1, 1.0]
    curve = np.array([4.0, 2.0, -2.0])
    diffs = curve + np.array([[0.0], [0.0], [0.0], [0.0]])
    res = stats.crossover(sizes, diffs)
    assert res["size"] == pytest.approx(10 ** -0.5)
    assert res["lo"] == pytest.approx(10 ** -0.5) and res["hi"] == pytest.approx(10 ** -0.5)
    assert res["share_of_resamples_crossing"] == 1.0
    never = stats.crossover(sizes, np.array([[4.0, 3.0, 1.0]] * 4))
    assert never["size"] is None and never["share_of_resamples_crossing"] == 0.0
    rng = np.random.default_rng(0)
    noisy = curve + rng.normal(0, 1.0, (6, 3))
    r = stats.crossover(sizes, noisy)
    assert r["size"] is not None and (r["lo"] is None or r["lo"] <= r["size"])
    assert r["hi"] is None or r["size"] <= r["hi"]


def test_bounded_interval_stays_in_bounds_and_covers():
    """Seeds drawn from Beta distributions near the bounds: always within [0, 1], coverage near 95%."""
    rng = np.random.default_rng(0)
    for mean, sd, n in [(0.5, 0.1, 5), (0.97, 0.02, 5), (0.12, 0.03, 3), (0.9, 0.03, 10)]:
        k = mean * (1 - mean) / sd**2 - 1
        x = rng.beta(mean * k, (1 - mean) * k, (1500, n))
        cover = 0
        for row in x:
            r = stats.bounded_interval(row, n_examples=450)
            assert 0.0 <= r["lo"] <= r["mean"] <= r["hi"] <= 1.0
            cover += r["lo"] <= mean <= r["hi"]
        assert 0.92 <= cover / len(x) <= 0.98, (mean, sd, n, cover / len(x))
    r = stats.bounded_interval([0.0, 0.0, 1.0], n_examples=40)
    assert 0.0 <= r["lo"] < r["hi"] <= 1.0


def test_chance_ceiling_is_a_one_sided_binomial_bound():
    assert stats.majority_rate([45] * 10) == pytest.approx(0.1)
    assert stats.majority_rate([30, 10]) == pytest.approx(0.75)
    top = stats.chance_ceiling(0.1, 450)
    assert top == pytest.approx(56 / 450)  # P(X > 56) <= 5% < P(X > 55) for X ~ Binomial(450, 0.1)
    assert stats.at_chance(0.1, 0.1, 450) and stats.at_chance(top, 0.1, 450) and not stats.at_chance(0.1756, 0.1, 450)


def test_collapsed_seeds_break_the_difference_ci():
    """The issue's simulation through stats.difference_ci: 20% collapsing seeds, 5 seeds (4,000 sims gave 0.670)."""
    cov = stats.collapse_coverage(n_seeds=5, p_collapse=0.2, n_sims=600, n_boot=1000)
    assert cov["with_collapse"] < 0.8 and cov["without_collapse"] > 0.92
