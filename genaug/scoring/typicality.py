"""Typicality: is an image's (or a batch's) likelihood where the data's likelihoods are?

Paper: Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019, "Detecting
Out-of-Distribution Inputs to Deep Generative Models Using Typicality".
High-dimensional data concentrates on a typical set whose negative
log-likelihood is close to the entropy H of the distribution, not at the
mode: an image far *more* likely than the data (a flat or simpler image,
the failure of the `nll` score) is as atypical as one far less likely. The
test is two-sided, `|bpd - H|`, with H estimated by the data's mean
bits/dim.

* Per image (`score_values(raw, "typicality", reference)`): `|bpd(x) - H|`;
  calibrated like any score (conformal p-values in reference mode).
* Per batch (`batch_test`): `|mean bpd of the batch - H|` against the same
  statistic of bootstrap batches of the same size drawn from the reference
  bits/dim, as the paper sets its threshold. Averaging over a batch of M
  shrinks the spread of clean batches by sqrt(M), so a small shift that no
  single image reveals shows up in a batch.

NOTE: the paper estimates H on the training data and bootstraps from a
validation split; genaug uses its held-out calibration split for both (the
training split's likelihoods are biased low by fitting). In self-audit,
where the data may hold the outliers, H is their median (`robust=True`).
NOTE: the paper's bootstrap treats H as exact (it had tens of thousands of
training images). A calibration split may be smaller than the batch, and
then the error of H dominates: a 3,000-image batch against 300 calibration
scores was flagged about half the time at the 5% level. So each bootstrap
replicate also re-estimates H from a resample of the calibration scores;
for batches much smaller than the split this changes next to nothing.
"""

from __future__ import annotations

import numpy as np

from genaug.errors import GenaugError

DEFAULT_BOOTSTRAP = 9999
# Elements of bootstrap draws held at once (8 bytes each): bounds memory whatever the batch size.
_CHUNK_ELEMENTS = 4_000_000


def entropy_estimate(bits_per_dim: np.ndarray, *, robust: bool = False) -> float:
    """The in-distribution entropy estimate H in bits/dim: the mean of reference
    bits/dim, or their median with `robust` (references that may hold outliers)."""
    bpd = np.asarray(bits_per_dim, dtype=np.float64)
    if bpd.size == 0 or not np.isfinite(bpd).all():
        raise GenaugError("typicality needs finite bits/dim of at least one reference image")
    return float(np.median(bpd) if robust else np.mean(bpd))


def batch_test(
    calibration_bpd: np.ndarray,
    batch_bpd: np.ndarray,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
) -> float:
    """p-value of the hypothesis that `batch_bpd` (the bits/dim of M images) is a batch of
    in-distribution images, given `calibration_bpd` of held-out clean images.

    Statistic: `|mean(batch_bpd) - H|` with H = mean(calibration_bpd). Null:
    the same statistic for `n_boot` batches of M drawn with replacement from
    `calibration_bpd`, each against H of a resample of `calibration_bpd` (see
    the module's NOTE), seeded by `seed`; `p = (1 + #{null >= stat}) / (n_boot + 1)`.
    Small p: the batch as a whole is atypical, too likely or too unlikely.
    Costs O(n_boot * n_cal) whatever M (large batches draw counts).

    Example, a fitted model's record against a new set's bits/dim::

        record = CalibrationRecord.of(model)
        raw = score_images(model, images)
        p = batch_test(record.scores.bits_per_dim, raw.bits_per_dim)
    """
    cal = np.asarray(calibration_bpd, dtype=np.float64).reshape(-1)
    batch = np.asarray(batch_bpd, dtype=np.float64).reshape(-1)
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise GenaugError(f"n_boot must be a positive integer, got {n_boot!r}")
    if batch.size == 0 or not np.isfinite(batch).all():
        raise GenaugError("the typicality batch test needs the finite bits/dim of at least one image")
    stat = abs(batch.mean() - entropy_estimate(cal))
    rng = np.random.default_rng(seed)
    batches = _bootstrap_means(cal, batch.size, int(n_boot), rng)
    null = np.abs(batches - _bootstrap_means(cal, cal.size, int(n_boot), rng))
    return float((1 + np.count_nonzero(null >= stat)) / (n_boot + 1))


def _bootstrap_means(values: np.ndarray, m: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `n_boot` samples of size `m` drawn with replacement from `values`."""
    n = values.size
    out = np.empty(n_boot)
    width = min(m, n)
    rows = max(1, _CHUNK_ELEMENTS // width)
    for start in range(0, n_boot, rows):
        k = min(rows, n_boot - start)
        if m <= n:
            out[start : start + k] = values[rng.integers(0, n, size=(k, m))].mean(axis=1)
        else:
            # A sample larger than `values` is fully described by how often each value was drawn.
            counts = rng.multinomial(m, np.full(n, 1.0 / n), size=k)
            out[start : start + k] = counts @ values / m
    return out
