"""Calibration: conformal p-values are valid, BH controls false discoveries."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from genaug.errors import GenaugError
from genaug.scoring.calibration import (
    TAIL_TRIM,
    benjamini_hochberg,
    conformal_p_values,
    extended_conformal_p_values,
    rank_descending,
    tail_p_values,
    top_fraction,
)


def test_conformal_p_value_formula():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_p_values(cal, np.array([0.0, 2.0, 2.5, 5.0]))
    # (1 + #{cal >= s}) / (n + 1)
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 3 / 5, 1 / 5])


def test_conformal_p_values_are_uniform_on_exchangeable_data():
    rng = np.random.default_rng(0)
    n_cal, n_test, trials = 99, 20, 500
    p = np.concatenate(
        [conformal_p_values(rng.normal(size=n_cal), rng.normal(size=n_test)) for _ in range(trials)]
    )
    # Marginally uniform on {1/100, ..., 1}: P(p <= a) = a at the grid points.
    for a in (0.05, 0.1, 0.25, 0.5, 0.9):
        assert abs(np.mean(p <= a) - a) < 0.02, a


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_conformal_p_values_are_in_range_and_monotone(cal, test):
    cal, test = np.array(cal), np.sort(np.array(test))
    p = conformal_p_values(cal, test)
    assert np.all(p > 0) and np.all(p <= 1)
    assert np.all(np.diff(p) <= 1e-12)  # higher score -> smaller p


def test_bh_flags_about_fdr_times_n_of_clean_data_at_most():
    rng = np.random.default_rng(1)
    fdr, n, trials = 0.1, 500, 100
    flagged = [
        benjamini_hochberg(conformal_p_values(rng.normal(size=999), rng.normal(size=n)), fdr).sum()
        for _ in range(trials)
    ]
    # All nulls: FDR = P(any flag) <= fdr, and far fewer than fdr*n images are flagged.
    assert np.mean(np.array(flagged) > 0) <= fdr + 0.05
    assert np.mean(flagged) <= fdr * n


def test_bh_finds_strong_outliers_and_matches_step_up_rule():
    rng = np.random.default_rng(2)
    cal = rng.normal(size=999)
    scores = np.concatenate([rng.normal(size=480), rng.normal(loc=8.0, size=20)])
    flags = benjamini_hochberg(conformal_p_values(cal, scores), 0.05)
    assert flags[480:].all()
    assert flags[:480].sum() <= 5
    # The step-up rule by hand: the largest i with p_(i) <= i * q / m.
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8


def _shifted(rng, draw, n=2000, share=0.02):
    """Scores from `draw` with `share` of them moved 3-6 IQRs beyond the 99.9th percentile."""
    s = draw(rng, n)
    k = int(share * n)
    q, iqr = np.quantile(s, 0.999), np.subtract(*np.quantile(s, [0.75, 0.25]))
    s[:k] = q + iqr * rng.uniform(3, 6, k)
    return s, k


# Skewed, long-tailed scores like real out-of-fold complexity scores (skewness 1-2, excess kurtosis up to 6).
SKEWED = {"gamma(2)": lambda r, n: r.gamma(2.0, 1.0, n), "lognormal(0.5)": lambda r, n: r.lognormal(0.0, 0.5, n)}


@pytest.mark.parametrize("name", SKEWED)
def test_self_audit_null_holds_the_fdr_on_skewed_scores(name):
    """BH over `tail_p_values` keeps the realised FDR within 2 x fdr (averaged over seeds) on
    skewed scores with 2% shifted points, and finds most of them; the median/MAD normal
    fit it replaces had a realised FDR of 0.61 (gamma) and 0.66 (lognormal) here."""
    fdrs, recalls = [], []
    for seed in range(10):
        scores, k = _shifted(np.random.default_rng(seed), SKEWED[name])
        flags = benjamini_hochberg(tail_p_values(scores), 0.05)
        fdrs.append(flags[k:].sum() / max(flags.sum(), 1))
        recalls.append(flags[:k].mean())
    assert np.mean(fdrs) <= 0.10
    assert np.mean(recalls) >= 0.7  # measured 0.85: BH finds all of them or, in a few seeds, none


@pytest.mark.parametrize("name", SKEWED)
def test_self_audit_null_flags_almost_nothing_on_clean_scores(name):
    for seed in range(10):
        scores = SKEWED[name](np.random.default_rng(100 + seed), 2000)
        assert benjamini_hochberg(tail_p_values(scores), 0.05).mean() <= 0.005


# Light-tailed scores whose 80-95% window is still flat: uniform, beta(2, 2), and a bounded bulk.
FLAT_WINDOW = {
    "uniform": lambda r, n: r.uniform(size=n),
    "beta(2, 2)": lambda r, n: r.beta(2.0, 2.0, n),
    "truncated normal": lambda r, n: np.clip(r.normal(size=n), -1.5, 1.5),
}


@pytest.mark.parametrize("name", [*SKEWED, *FLAT_WINDOW])
def test_the_fitted_null_never_puts_more_beyond_the_window_than_the_data(name):
    """The tail fit's share of the null beyond its window (p at the first score past the 95th
    percentile) is at most the share of all scores there: the outliers only add to that share."""
    draw = {**SKEWED, **FLAT_WINDOW}[name]
    for seed in range(5):
        scores, _ = _shifted(np.random.default_rng(seed), draw)
        p = tail_p_values(scores)
        cut = np.quantile(scores, 1 - TAIL_TRIM)
        beyond = scores > cut
        first = np.argmin(np.where(beyond, scores, np.inf))
        assert p[first] <= beyond.mean() + 1e-12


@pytest.mark.parametrize("name", FLAT_WINDOW)
def test_self_audit_finds_outliers_beyond_a_light_tail(name):
    """2% shifted points beyond light-tailed scores are all found: a truncated fit alone reads the
    flat window as a long tail and flagged none of them on the uniform scores."""
    for seed in range(5):
        scores, k = _shifted(np.random.default_rng(seed), FLAT_WINDOW[name])
        flags = benjamini_hochberg(tail_p_values(scores), 0.05)
        assert flags[:k].all() and flags[k:].sum() <= 0.05 * k


def test_a_shape_floor_below_zero_fits_a_bounded_score_with_an_end_point():
    """Uniform scores have an end point: with shapes below 0 allowed (a rule benchmarks/self_audit_tail.py
    compares), the fitted tail ends, and a score far beyond it gets p 0; genaug's fit (shape >= 0)
    never ends, so every score keeps a p-value above 0."""
    scores = np.append(np.random.default_rng(0).uniform(size=3000), 3.0)
    light, default = tail_p_values(scores, min_shape=-0.5), tail_p_values(scores)
    assert light[-1] == 0 and default[-1] > 0
    assert np.all((light >= 0) & (light <= 1))


def test_tail_p_values_are_not_masked_by_outliers():
    rng = np.random.default_rng(3)
    scores = np.concatenate([rng.normal(size=970), np.full(30, 50.0)])
    p = tail_p_values(scores)
    assert p[970:].max() < 1e-6
    assert np.median(p[:970]) == pytest.approx(0.5, abs=0.08)


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300))
@settings(max_examples=60, deadline=None)
def test_tail_p_values_are_probabilities_decreasing_in_the_score(values):
    s = np.array(values)
    p = tail_p_values(s)
    assert np.all((p >= 0) & (p <= 1))
    order = np.argsort(s, kind="stable")
    assert np.all(np.diff(p[order]) <= 1e-12)  # a higher score never gets a higher p-value


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.lists(st.floats(-1e7, 1e7), min_size=1, max_size=50))
# Found by hypothesis: tail exceedances of 1e-300 make the fitted tail underflow to 0.
@example([0.0] * 9 + [4.04e-206, 5.69e-261, 1e-300], [1.0])
@settings(max_examples=60, deadline=None)
def test_extended_p_values_are_the_conformal_ones_down_to_their_floor(cal, test):
    """Every p-value the conformal rule can give (>= 1/(n+1)) is unchanged; beyond the largest
    calibration score the extension only goes lower, and a higher score never gets a higher p."""
    cal, test = np.array(cal), np.sort(np.array(test))
    exact, extended = conformal_p_values(cal, test), extended_conformal_p_values(cal, test)
    within = test <= cal.max()
    np.testing.assert_array_equal(extended[within], exact[within])
    assert np.all(extended[~within] <= 1 / (cal.size + 1)) and np.all(extended > 0)
    assert np.all(np.diff(extended) <= 1e-12)


# Calibration and test inliers from one distribution (exchangeable), 5% outliers well beyond.
TAILS = {"normal": lambda r, n: r.normal(size=n), "gamma(2)": lambda r, n: r.gamma(2.0, 1.0, n),
         "lognormal(0.5)": lambda r, n: r.lognormal(0.0, 0.5, n)}


@pytest.mark.parametrize("name", TAILS)
def test_extended_p_values_find_far_outliers_a_small_calibration_set_cannot(name):
    """With 500 calibration scores and 1,000 test images (20 outliers a little beyond the inliers'
    99.9th percentile) exact conformal BH at 0.05 needs 40 images beyond every calibration score and
    flags nothing; the extended p-values flag most outliers with the realised FDR, averaged over
    seeds, within fdr (measured recall 0.65, 0.52 and 0.63; 0.92, 0.91 and 0.79 with an exponential
    extrapolation, which is the price of `REFERENCE_MIN_SHAPE`)."""
    draw, fdrs, recalls, exact_recalls = TAILS[name], [], [], []
    for seed in range(20):
        rng = np.random.default_rng([seed, 5])
        cal, inliers = draw(rng, 500), draw(rng, 980)
        q, iqr = np.quantile(draw(rng, 100_000), 0.999), np.subtract(*np.quantile(cal, [0.75, 0.25]))
        scores = np.concatenate([inliers, q + iqr * rng.uniform(0.5, 3, 20)])
        flags = benjamini_hochberg(extended_conformal_p_values(cal, scores), 0.05)
        fdrs.append(flags[:980].sum() / max(flags.sum(), 1))
        recalls.append(flags[980:].mean())
        exact_recalls.append(benjamini_hochberg(conformal_p_values(cal, scores), 0.05)[980:].mean())
    assert np.mean(fdrs) <= 0.05
    assert np.mean(recalls) >= 0.5 and np.mean(exact_recalls) == 0


@pytest.mark.parametrize("name", TAILS)
def test_extended_p_values_flag_almost_nothing_on_inliers(name):
    flagged = []
    for seed in range(100):
        rng = np.random.default_rng([seed, 6])
        cal, scores = TAILS[name](rng, 500), TAILS[name](rng, 1000)
        flagged.append(benjamini_hochberg(extended_conformal_p_values(cal, scores), 0.05).sum())
    # All nulls: the FDR is P(any flag), which the exact rule holds at 0.05; measured 0, 0.01 and
    # 0.01 (an exponential extrapolation, shape >= 0: 0, 0.03 and 0.06), one image at most.
    assert np.mean(np.array(flagged) > 0) <= 0.05 and max(flagged) <= 2


# Tails a window of ~100 calibration scores cannot tell from an exponential one.
HEAVIER = {"lognormal(0.75)": lambda r, n: r.lognormal(0.0, 0.75, n), "weibull(0.8)": lambda r, n: r.weibull(0.8, n),
           "|t(6)|": lambda r, n: np.abs(r.standard_t(6, n))}


@pytest.mark.parametrize("name", HEAVIER)
def test_extended_p_values_hold_the_fdr_on_tails_heavier_than_the_calibration_shows(name):
    """Extrapolating beyond every calibration score with an exponential tail gives a lone inlier far
    out a p-value BH flags on its own; the fitted shape kept >= REFERENCE_MIN_SHAPE holds P(any
    flag) on clean data, its FDR, within 2 x fdr (measured 0.015-0.08; exponential: 0.105-0.155)."""
    draw, flagged = HEAVIER[name], []
    for seed in range(200):
        cal, scores = draw(np.random.default_rng([seed, 6]), 500), draw(np.random.default_rng([seed, 7]), 1000)
        flagged.append(benjamini_hochberg(extended_conformal_p_values(cal, scores), 0.05).any())
    assert np.mean(flagged) <= 0.1


def test_extended_p_values_fall_back_to_conformal_without_a_tail_to_fit():
    cal, test = np.array([1.0, 1.0, 1.0, 2.0]), np.array([0.5, 3.0, 10.0])
    np.testing.assert_array_equal(extended_conformal_p_values(cal, test), conformal_p_values(cal, test))


def test_top_fraction_flags_exactly_the_highest_share():
    scores = np.arange(100.0)
    mask = top_fraction(scores, 0.05)
    assert mask.sum() == 5 and mask[95:].all()
    with pytest.raises(GenaugError):
        top_fraction(scores, 1.5)


def test_rank_one_is_most_anomalous_and_ties_keep_input_order():
    assert rank_descending(np.array([0.5, 3.0, 3.0, -1.0])).tolist() == [3, 1, 2, 4]
