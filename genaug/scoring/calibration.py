"""From scores to flags: conformal p-values, Benjamini-Hochberg, robust rules.

With a clean reference, split-conformal p-values are valid whatever the
score's distribution (Bates et al. 2023, "Testing for outliers with conformal
p-values"), and BH over them controls the false discovery rate. Without one
(self-audit), there is no clean calibration set, so the p-values come from a
robust normal fit to the bulk of the scores; see `robust_p_values`.
"""

from __future__ import annotations

import numpy as np

from genaug.errors import GenaugError

# MAD of a standard normal is 1/1.4826; scaling by it makes MAD estimate sigma.
_MAD_TO_SIGMA = 1.4826


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


def robust_p_values(scores: np.ndarray) -> np.ndarray:
    """One-sided p-values of robust z-scores `(s - median) / (1.4826 * MAD)`.

    Used when there is no clean reference: the median and MAD describe the
    bulk of the data and barely move when a few percent are outliers, so the
    outliers stand out instead of inflating the scale (as a mean/std fit would).
    """
    s = np.asarray(scores, dtype=np.float64)
    median = np.median(s)
    scale = _MAD_TO_SIGMA * np.median(np.abs(s - median))
    if not np.isfinite(scale) or scale <= 0:
        scale = np.std(s) or 1.0
    from scipy import stats

    return stats.norm.sf((s - median) / scale)


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
