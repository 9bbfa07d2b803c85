"""Edge cases vs outliers: how rare an image is among the inliers, in feature space.

An outlier score asks "does this image belong here at all?"; rarity asks
"among the images that belong, how unusual is this one?". A dark skin tone
in a dataset of mostly default-tone emoji is rare but valid: an edge case,
not an outlier. Rarity is the distance to the `k` nearest inliers in the
model's feature space (`GenerativeModel.features`; pixels downscaled to 8x8
for families without one), reported as a percentile among the inliers:
0 = the most typical inlier, 1 = the rarest. A k-NN distance needs no
density model and makes no assumption about the shape of the feature cloud.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from genaug.scoring.knn import QUERY_CHUNK, FeatureSpace
from genaug.scoring.nll import SCORE_BATCH

# Inliers whose rarity is in this top share are called edge cases.
EDGE_SHARE = 0.05
NEIGHBOURS = 10
# The k-NN search runs against at most this many inliers, drawn at random
# (seeded): an exact search against all of them is quadratic in the rows
# (200 s and 150 MB more at 200,000 images), while the percentile of a k-NN
# distance to a fixed-size sample ranks images as the full search does.
MAX_REFERENCE = 20_000
# The category column's values.
OUTLIER, EDGE_CASE, TYPICAL = "outlier", "edge-case", "typical"


def pixel_features(images: torch.Tensor, size: int = 8) -> np.ndarray:
    """[N, C*size*size] features for families without a feature space: area-downscaled pixels in [0, 1]."""
    x = images.float().div(255.0)
    if x.shape[-2] > size or x.shape[-1] > size:
        x = F.adaptive_avg_pool2d(x, (min(size, x.shape[-2]), min(size, x.shape[-1])))
    return x.flatten(1).numpy().astype(np.float64)


@torch.inference_mode()
def model_features(model, images: torch.Tensor, *, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """[N, d] features of uint8 images: the model's own (`features`, e.g. posterior means) where
    the family has them, else `pixel_features`."""
    if "features" not in model.capabilities():
        return pixel_features(images)
    model.eval()
    chunks = [model.features(images[s : s + batch_size].to(model.device)).float().cpu() for s in range(0, len(images), batch_size)]
    return torch.cat(chunks).numpy().astype(np.float64)


def grouped_rarity(features: np.ndarray, inliers: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """`feature_rarity` within each group of images that share a feature space (None: one group)."""
    if groups is None:
        return feature_rarity(features, inliers)
    out = np.empty(len(features))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = feature_rarity(features[idx], inliers[idx])
    return out


def feature_rarity(
    features: np.ndarray, inliers: np.ndarray, *, neighbours: int = NEIGHBOURS, max_reference: int = MAX_REFERENCE
) -> np.ndarray:
    """[N] rarity in [0, 1]: the share of inliers that lie closer to their `neighbours`
    nearest inliers than this image does (each inlier leaves itself out).

    `features` is [N, d]; `inliers` a boolean mask of the images the rarity is
    measured among (the ones not flagged as outliers). Neighbours are sought
    among at most `max_reference` inliers, a seeded random sample when there
    are more. With fewer than two inliers every rarity is 0.
    """
    from sklearn.neighbors import NearestNeighbors

    z = np.asarray(features).reshape(len(features), -1)
    inliers = np.asarray(inliers, dtype=bool)
    ref = np.flatnonzero(inliers)
    if ref.size < 2:
        return np.zeros(len(z))
    sample = ref
    if ref.size > max_reference:
        sample = np.sort(np.random.default_rng(0).choice(ref, max_reference, replace=False))
    space = FeatureSpace.fit(z, ref, sample)  # standardised on the inliers, projected on their components
    reference_rows = space.project(z[sample])
    chunks = [slice(start, start + QUERY_CHUNK) for start in range(0, len(z), QUERY_CHUNK)]
    k = min(neighbours, sample.size - 1)
    index = NearestNeighbors(n_neighbors=k + 1).fit(reference_rows)
    knn = np.empty(len(z))
    for rows in chunks:  # in chunks: neighbour lists of every row would be O(N k)
        dist, idx = index.kneighbors(space.project(z[rows]))
        # An inlier in the sample finds itself at distance 0 first: drop that column; others drop their k+1-th.
        is_self = sample[idx[:, 0]] == np.arange(rows.start, rows.start + len(idx))
        knn[rows.start : rows.start + len(idx)] = np.where(is_self, dist[:, 1:].mean(axis=1), dist[:, :k].mean(axis=1))
    reference = np.sort(knn[ref])
    return np.searchsorted(reference, knn, side="left") / ref.size


def categories(is_outlier: np.ndarray, rarity: np.ndarray, *, edge_share: float = EDGE_SHARE) -> np.ndarray:
    """`outlier` where flagged, else `edge-case` in the rarest `edge_share` of inliers, else `typical`."""
    is_outlier = np.asarray(is_outlier, dtype=bool)
    out = np.full(is_outlier.shape, TYPICAL, dtype=object)
    out[(np.asarray(rarity) >= 1.0 - edge_share) & ~is_outlier] = EDGE_CASE
    out[is_outlier] = OUTLIER
    return out
