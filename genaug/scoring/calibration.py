"""From scores to flags: conformal p-values, Benjamini-Hochberg, robust rules.

With a clean reference, split-conformal p-values are valid whatever the
score's distribution (Bates et al. 2023, "Testing for outliers with conformal
p-values"), and BH over them controls the false discovery rate. Without one
(self-audit), there is no clean calibration set: the null distribution is
estimated from the scores themselves, with a generalised Pareto tail fitted
below the region where outliers sit; see `tail_p_values`.
"""

from __future__ import annotations

import numpy as np

from genaug.errors import GenaugError

def conformal_p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Split-conformal p-values `(1 + #{cal >= s}) / (n_cal + 1)`; higher score = more anomalous."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    if cal.size == 0:
        raise GenaugError("no calibration scores: fit the model with a calibration split")
    s = np.asarray(scores, dtype=np.float64)
    n_at_least = cal.size - np.searchsorted(cal, s, side="left")
    return (1.0 + n_at_least) / (cal.size + 1.0)


def benjamini_hochberg(p_values: np.ndarray, fdr: float) -> np.ndarray:
    """Boolean mask of the hypotheses BH rejects at false discovery rate `fdr`."""
    check_fraction("fdr", fdr)
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    from scipy import stats  # half a second to import; only flagging needs it

    return stats.false_discovery_control(p, method="bh") <= fdr


# Self-audit null (`tail_p_values`): the tail model is fitted to the scores
# between these upper quantiles, so up to TAIL_TRIM of the data can be
# outliers without touching the fit. Chosen by measurement (skewed and
# heavy-tailed synthetic scores with 2% shifted points; out-of-fold VAE
# scores of emoji): see benchmarks/README.md.
TAIL_FRACTION = 0.2
TAIL_TRIM = 0.05
# A normal prior (sd) on the Pareto shape: the shape is poorly identified
# from a truncated window, and an unregularised fit swings from "no tail" to
# "infinite variance" between samples of the same data.
_SHAPE_PRIOR_SD = 0.3
# Fewest scores the tail window must hold; smaller data widens the window.
_MIN_TAIL_POINTS = 20
# The largest shape a tail fit held to a bound may take (infinite variance beyond 0.5; the prior makes
# anything near this implausible).
_MAX_SHAPE = 2.0
# Reference mode extrapolates beyond the largest calibration score, and the
# ~100 calibration scores of the fitted window cannot tell an exponential tail
# from a moderately heavy one: an exponential extrapolation gave a lone odd
# inlier far beyond them a p-value BH flags alone (emoji, realised FDR 1 on a
# direction). A shape of at least 0.1 removed every such flag over 24 emoji
# direction-seeds and cost little recall; benchmarks/README.md, "A floor under
# the reference-mode tail".
REFERENCE_MIN_SHAPE = 0.1


def tail_p_values(
    scores: np.ndarray,
    *,
    tail: float = TAIL_FRACTION,
    trim: float = TAIL_TRIM,
    bounded: bool = True,
    min_shape: float = 0.0,
) -> np.ndarray:
    """One-sided p-values against a null estimated from the (contaminated) scores themselves.

    The bulk gets empirical tail fractions `#{s_j >= s_i} / n`. Above the
    `1 - tail` quantile `u`, the null tail is a generalised Pareto
    distribution (peaks over threshold) fitted by maximum likelihood to the
    exceedances below the `1 - trim` quantile only, as a truncated sample, so
    the highest `trim` share (where outliers sit) has no say in the fit but
    one: the fitted tail may not put more of the null beyond the window than
    the data have there (outliers only add to that share); a fit that would
    is held to that bound. `p(s) = P(S > u) * GPD.sf(s - u)` there,
    extrapolating the natural tail. The shape is kept >= 0 (an exponential or
    heavier tail): for light-tailed scores that overstates the tail, so it
    errs towards fewer flags. (`min_shape` below 0 admits lighter tails with
    an end point, beyond which p is 0; `bounded=False` drops the bound; both
    for benchmarks/self_audit_tail.py to compare, not for use.)

    What holds: if the inliers' upper tail is (close to) generalised Pareto
    above `u` and at most `trim` of the images are outliers, the p-values of
    inliers are close to uniform in the tail, and BH over them holds the FDR
    approximately. Nothing is exact: the tail beyond the fitted window is an
    extrapolation. Measured realised FDR at fdr 0.05 (2% outliers): <= 0.02
    for normal, gamma and skew-normal scores, 0.09-0.17 for lognormal,
    Student-t(3) and Pareto(3) tails; with no outliers at most 0.3% flagged.
    More outliers than `trim` leak into the fit and make it conservative.
    """
    from scipy import stats

    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    sorted_s = np.sort(s)
    p = (n - np.searchsorted(sorted_s, s, side="left")) / max(n, 1)
    if n == 0:
        return p
    tail = min(0.5, max(tail, trim + _MIN_TAIL_POINTS / n))
    u, cut = np.quantile(s, 1.0 - tail), np.quantile(s, 1.0 - trim)
    exceed = s[s > u] - u
    window = exceed[exceed <= cut - u]
    if window.size < 3 or not np.ptp(window) > 0:
        return p  # too few distinct tail scores to fit a tail: ranks only (flags nothing extreme)
    # The null's share beyond the window is at most the data's (outliers only add to it). A window whose
    # scores are still spread almost evenly (the bulk of a light-tailed score) makes the truncated fit
    # alone extrapolate a tail heavier than the data above the window allow, and flag nothing.
    beyond = (exceed.size - window.size) / exceed.size if bounded else None
    shape, scale = fit_pareto_tail(window, cut - u, min_shape=min_shape, max_sf=beyond)
    high = s > u
    p[high] = (exceed.size / n) * stats.genpareto.sf(s[high] - u, shape, scale=scale)
    return p


def extended_conformal_p_values(
    calibration: np.ndarray,
    scores: np.ndarray,
    *,
    tail: float = TAIL_FRACTION,
    min_shape: float = REFERENCE_MIN_SHAPE,
) -> np.ndarray:
    """Split-conformal p-values, with a fitted tail beyond the largest calibration score.

    A conformal p-value is never below 1/(n_cal+1): with a few hundred
    calibration scores BH then needs dozens of images beyond *every*
    calibration score before it flags one (600 scores, 1,000 images, fdr
    0.05: 34), and a score that separates well still flags nothing. Here a
    generalised Pareto tail (shape >= `min_shape`, by default
    `REFERENCE_MIN_SHAPE`: heavier than an exponential, where `tail_p_values`
    allows 0) is fitted to the calibration scores above their `1 - tail`
    quantile `u` (clean scores: no trimming),
    and an image scoring above the largest calibration score gets
    `min(1/(n_cal+1), (k+1)/(n_cal+1) * GPD.sf(s - u))`, with k calibration
    scores above `u`: smaller the further it lies beyond them.

    What holds: every p-value of at least 1/(n_cal+1) is the conformal one,
    valid for exchangeable data whatever the score's distribution; only the
    p-values below it (images beyond every calibration score) come from the
    fitted tail, and are right as far as the inliers' tail beyond the
    calibration scores follows the fit. Too few distinct tail scores to fit
    (under 3): the plain conformal p-values.
    """
    from scipy import stats

    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    p = conformal_p_values(cal, scores)
    s = np.asarray(scores, dtype=np.float64)
    beyond = s > cal[-1]
    u = np.quantile(cal, 1.0 - tail)
    exceed = cal[cal > u] - u
    if not beyond.any() or exceed.size < 3 or not np.ptp(exceed) > 0:
        return p
    shape, scale = fit_pareto_tail(exceed, min_shape=min_shape)
    tail_p = (exceed.size + 1.0) / (cal.size + 1.0) * stats.genpareto.sf(s[beyond] - u, shape, scale=scale)
    # The tail may underflow far out (or with sub-normal scales); a p-value stays positive.
    p[beyond] = np.clip(tail_p, np.finfo(np.float64).tiny, 1.0 / (cal.size + 1.0))
    return p


def fit_pareto_tail(
    exceedances: np.ndarray, width: float | None = None, min_shape: float = 0.0, max_sf: float | None = None
) -> tuple[float, float]:
    """(shape, scale) of a generalised Pareto distribution fitted to `exceedances` (> 0) by maximum
    a posteriori, with a normal prior (sd `_SHAPE_PRIOR_SD`) on the shape, kept >= `min_shape`
    (the scale refitted at that shape when the fit lands below it).

    `width`: the exceedances are a sample truncated at `width` (larger ones
    were left out of the fit), so each density is divided by P(X <= width).
    `max_sf` (with `width`): the fitted P(X > width) may not exceed it; a fit
    that does is replaced by the best one on that bound (scale tied to shape).
    """
    from scipy import optimize, stats

    window = np.asarray(exceedances, dtype=np.float64)

    # The optimiser may probe absurd scales; an infinite answer is fine there, a warning is noise.
    @np.errstate(over="ignore", divide="ignore", invalid="ignore")
    def neg_log_posterior(shape: float, log_scale: float) -> float:
        # The GPD log density and log cdf in closed form: scipy.stats' per-call
        # overhead would make the hundreds of optimiser steps take seconds.
        scale = np.exp(log_scale)
        z = shape * window / scale
        if z.min() <= -1:
            return np.inf
        if abs(shape) < 1e-9:
            log_pdf = -log_scale - window / scale
        else:
            log_pdf = -log_scale - (1.0 / shape + 1.0) * np.log1p(z)
        ll = log_pdf.sum() - 0.5 * (shape / _SHAPE_PRIOR_SD) ** 2
        if width is not None:
            zw = shape * width / scale
            if zw <= -1:
                return np.inf
            log_sf = -width / scale if abs(shape) < 1e-9 else -np.log1p(zw) / shape
            log_cdf = np.log(-np.expm1(log_sf))
            ll -= window.size * log_cdf
        return -ll if np.isfinite(ll) else np.inf

    start = np.log(window.mean())
    fits = [optimize.minimize(lambda t: neg_log_posterior(*t), [x0, start], method="Nelder-Mead") for x0 in (0.0, 0.3)]
    shape, log_scale = min(fits, key=lambda r: r.fun).x
    if shape < min_shape:
        shape = min_shape
        log_scale = optimize.minimize_scalar(
            lambda t: neg_log_posterior(min_shape, t), bracket=(start - 1, start + 1)
        ).x
    bounded = max_sf is not None and width is not None and 0 < max_sf < 1
    if bounded and stats.genpareto.sf(width, shape, scale=np.exp(log_scale)) > max_sf:
        # On the bound each shape has one scale; the shape is the one the window likes best.
        def on_bound(k: float) -> float:
            return neg_log_posterior(k, np.log(_scale_for_sf(k, width, max_sf)))

        result = optimize.minimize_scalar(on_bound, bounds=(min_shape, _MAX_SHAPE), method="bounded")
        shape = result.x if result.fun <= on_bound(min_shape) else min_shape
        log_scale = np.log(_scale_for_sf(shape, width, max_sf))
    return float(shape), float(np.exp(log_scale))


def _scale_for_sf(shape: float, x: float, sf: float) -> float:
    """The scale at which a generalised Pareto distribution of this shape has P(X > x) = sf."""
    log_inverse = -np.log(sf)
    return float(x / log_inverse if abs(shape) < 1e-9 else shape * x / np.expm1(shape * log_inverse))


def top_fraction(scores: np.ndarray, contamination: float) -> np.ndarray:
    """Mask of the `ceil(contamination * n)` highest scores (ties broken by position)."""
    check_fraction("contamination", contamination)
    s = np.asarray(scores, dtype=np.float64)
    n_flag = int(np.ceil(contamination * s.size))
    mask = np.zeros(s.size, dtype=bool)
    mask[np.argsort(-s, kind="stable")[:n_flag]] = True
    return mask


def rank_descending(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score (most anomalous); ties keep input order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(1, order.size + 1)
    return rank


def check_fraction(name: str, value: float) -> None:
    """Raise a clear error unless 0 < value < 1."""
    if not (0.0 < float(value) < 1.0):
        raise GenaugError(f"--{name} must be between 0 and 1 (exclusive), got {value}")
