"""The `ensemble` score: several scores' evidence on one scale.

Each component score is put on a common robust scale against the reference
(the calibration split's scores, or in self-audit the data's own):
`z = (s - median) / (IQR / 1.349)`, so 1 unit is one standard deviation of
a normal bulk and a few percent of outliers in the reference barely move
it. The ensemble is the mean of the components' z: an image must stand out
on the scores together, or a lot on one, to rank high. A mean of z rather
than of ranks or p-values keeps the order among images beyond every
reference score, where ranks and conformal p-values all tie.
"""

from __future__ import annotations

import numpy as np

# IQR of a standard normal: dividing by it makes the IQR estimate sigma.
_IQR_TO_SIGMA = 1.349


def robust_z(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`scores` standardised by the median and IQR of `reference` (a zero IQR counts as 1)."""
    ref = np.asarray(reference, dtype=np.float64)
    q1, median, q3 = np.quantile(ref, [0.25, 0.5, 0.75])
    scale = (q3 - q1) / _IQR_TO_SIGMA
    if not (np.isfinite(scale) and scale > 0):
        scale = 1.0
    return (np.asarray(scores, dtype=np.float64) - median) / scale


def combine(components: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> np.ndarray:
    """Mean robust z of the named component scores, each against its own reference scores."""
    if not components:
        raise ValueError("an ensemble needs at least one component score")
    return np.mean([robust_z(s, reference[name]) for name, s in components.items()], axis=0)
