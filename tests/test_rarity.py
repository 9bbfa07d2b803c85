"""Rarity and categories: edge cases are the rare inliers, outliers stay outliers."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genaug.scoring.rarity import EDGE_CASE, OUTLIER, TYPICAL, categories, feature_rarity, pixel_features


def _common_and_rare(seed: int, n_common: int = 970, n_rare: int = 30, d: int = 5):
    """A dense common mode and a sparse rare mode (valid but unusual images, in feature space)."""
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(0.0, 1.0, (n_common, d)), rng.normal(6.0, 1.5, (n_rare, d))])
    return z, np.arange(len(z)) >= n_common


def test_the_rare_mode_is_rarer_than_the_common_one():
    z, rare = _common_and_rare(0)
    r = feature_rarity(z, np.ones(len(z), dtype=bool))
    assert r[rare].mean() > 0.9 and r[~rare].mean() < 0.55
    edge = categories(np.zeros(len(z), dtype=bool), r) == EDGE_CASE
    assert edge[rare].mean() > 0.7  # most rare-mode images are edge cases ...
    assert edge[~rare].mean() < 0.03  # ... and few common ones


def test_outliers_are_outliers_whatever_their_rarity_and_do_not_shape_it():
    z, rare = _common_and_rare(1)
    flagged = np.zeros(len(z), dtype=bool)
    flagged[:5] = True  # five typical-looking images flagged by the outlier score
    far = np.vstack([z, np.full((3, z.shape[1]), 100.0)])  # three far-away flagged images
    flagged = np.concatenate([flagged, [True] * 3])
    r = feature_rarity(far, ~flagged)
    cat = categories(flagged, r)
    assert (cat[flagged] == OUTLIER).all()
    assert r[-3:].min() == 1.0  # beyond every inlier
    # The inliers' rarity is a percentile among themselves, unmoved by the far outliers.
    assert np.allclose(r[:-3][~flagged[:-3]], feature_rarity(z, ~flagged[:-3])[~flagged[:-3]])


@given(st.integers(2, 60), st.integers(1, 6), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_rarity_is_a_percentile_among_inliers(n, d, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, d))
    inliers = rng.random(n) < 0.8
    inliers[:2] = True
    r = feature_rarity(z, inliers)
    assert r.shape == (n,) and np.all((r >= 0) & (r <= 1))
    # Among inliers the values are the ranks / n_inliers: each of 0, 1/m, ... appears for distinct distances.
    m = inliers.sum()
    assert np.allclose(np.sort(r[inliers]) * m, np.floor(np.sort(r[inliers]) * m + 1e-9))
    assert r[inliers].min() == 0.0


def test_edge_cases_are_the_requested_share_of_inliers():
    r = np.linspace(0, 1, 1000, endpoint=False)
    flags = np.zeros(1000, dtype=bool)
    cat = categories(flags, r, edge_share=0.05)
    assert (cat == EDGE_CASE).sum() == 50 and (cat == TYPICAL).sum() == 950


def test_pixel_features_downscale_to_8x8_in_unit_range():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    f = pixel_features(x)
    assert f.shape == (4, 3 * 64) and f.min() >= 0 and f.max() <= 1
    assert pixel_features(torch.zeros(2, 1, 5, 5, dtype=torch.uint8)).shape == (2, 25)


def test_detect_outliers_writes_rarity_and_category_for_every_image(digits, tmp_path):
    import pyarrow.parquet as pq

    from genaug.detect import detect_outliers
    from genaug.train import TrainConfig

    data = digits.subset(np.arange(200))
    result = detect_outliers(data, family="ae", contamination=0.05, train_config=TrainConfig(epochs=1, progress=False))
    table = pq.read_table(result.write(tmp_path / "out.parquet") and tmp_path / "out.parquet")
    cat = np.array(table["category"].to_pylist())
    assert ((cat == OUTLIER) == result.is_outlier).all()
    inliers = ~result.is_outlier
    # Each self-audit fold ranks its inliers in its own model's feature space: about 5% edge cases per fold.
    assert abs((cat[inliers] == EDGE_CASE).mean() - 0.05) <= 0.02
    rarity = np.array(table["rarity"].to_pylist())
    assert np.all((rarity >= 0) & (rarity <= 1))
    assert rarity[cat == EDGE_CASE].min() > rarity[cat == TYPICAL].max()


def test_a_sampled_reference_ranks_images_as_the_full_search_does():
    from scipy.stats import spearmanr

    z, rare = _common_and_rare(2, n_common=2910, n_rare=90)
    inliers = np.ones(len(z), dtype=bool)
    full = feature_rarity(z, inliers)
    sampled = feature_rarity(z, inliers, max_reference=600)
    assert spearmanr(full, sampled).statistic > 0.9
    assert sampled[rare].mean() > 0.9 and sampled[~rare].mean() < 0.55
    assert np.array_equal(sampled, feature_rarity(z, inliers, max_reference=600))  # seeded: reproducible
