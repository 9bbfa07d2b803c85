"""Typicality: the per-image score and the batch test against the typical set."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import genaug
from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError
from genaug.scoring import RawScores, score_values
from genaug.scoring.record import CalibrationRecord
from genaug.scoring.typicality import _bootstrap_means, batch_test, entropy_estimate
from genaug.train import TrainConfig

TINY = {"channels": 8, "layers": 1, "head_channels": 16}
QUICK = TrainConfig(epochs=10, batch_size=32, lr=3e-3, progress=False, seed=0)


def noisy(n: int, seed: int, bright: float = 0.5) -> torch.Tensor:
    """8x8 images whose pixels are black, or with probability `bright` uniform in 128..255.

    At bright=0.5 (the training data) 4.5 bits/dim; fewer bright pixels make
    simpler images of the same kind, which the model finds *more* likely.
    """
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, 1, 8, 8)) < bright, rng.integers(128, 256, (n, 1, 8, 8)), 0)
    return torch.from_numpy(x.astype(np.uint8))


@pytest.fixture(scope="module")
def fitted():
    return genaug.fit(ImageSet(noisy(800, 0)), family="pixelcnn", model_options=TINY,
                      calibration_fraction=0.25, train_config=QUICK)


# -- the batch test on known distributions ---------------------------------------------
def _gamma(rng, size, shift=0.0):
    return rng.gamma(4.0, 0.5, size) + 3.0 + shift  # skewed, like bits/dim; sd 1


def test_batches_of_the_reference_distribution_are_rarely_flagged():
    rng = np.random.default_rng(0)
    cal = _gamma(rng, 1000)
    for m in (10, 50):
        p = np.array([batch_test(cal, _gamma(rng, m), n_boot=999, seed=s) for s in range(150)])
        assert (p <= 0.05).mean() <= 0.1  # valid: about 5% at the 5% level
        assert 0.3 < np.median(p) < 0.7  # and not conservative (median 0.5 when exact)


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_shifted_batches_are_flagged_both_ways(shift):
    """Half a standard deviation is invisible in one image and plain in a batch of 100:
    too likely (simpler) is as atypical as too unlikely."""
    rng = np.random.default_rng(1)
    cal = _gamma(rng, 2000)
    p = np.array([batch_test(cal, _gamma(rng, 100, shift), n_boot=999, seed=s) for s in range(50)])
    assert (p <= 0.05).mean() >= 0.95


def test_batches_larger_than_the_reference_use_the_same_null():
    rng = np.random.default_rng(2)
    values = _gamma(rng, 300)
    for m in (100, 3000):  # drawn indices below n_cal, counts above
        means = _bootstrap_means(values, m, 4000, np.random.default_rng(0))
        assert abs(means.std() / (values.std() / np.sqrt(m)) - 1) < 0.06
        assert abs(means.mean() - values.mean()) < 4 * values.std() / np.sqrt(m * 4000)
    # Valid though the error of H (sd / sqrt(300)) outweighs the batch's own (sd / sqrt(3000)).
    p = np.array([batch_test(values, _gamma(rng, 3000), n_boot=999, seed=s) for s in range(120)])
    assert (p <= 0.05).mean() <= 0.1


def test_the_p_value_counts_the_bootstrap_batches_at_least_as_extreme():
    cal = np.linspace(3.0, 5.0, 101)
    assert batch_test(cal, np.full(10, 9.0), n_boot=99) == pytest.approx(1 / 100)
    assert batch_test(cal, np.full(10, cal.mean()), n_boot=99) > 0.9
    assert batch_test(cal, cal[:7], n_boot=500, seed=3) == batch_test(cal, cal[:7], n_boot=500, seed=3)


@pytest.mark.parametrize(
    ("cal", "batch", "n_boot", "match"),
    [([1.0], [], 10, "at least one image"), ([], [1.0], 10, "reference"), ([1.0], [np.nan], 10, "finite"),
     ([1.0], [1.0], 0, "n_boot")],
)
def test_bad_inputs_are_one_line(cal, batch, n_boot, match):
    with pytest.raises(GenaugError, match=match):
        batch_test(np.array(cal), np.array(batch), n_boot=n_boot)


# -- the per-image score ---------------------------------------------------------------------
def test_typicality_measures_from_the_mean_or_the_median():
    ref = RawScores(np.array([1.0, 2.0, 6.0]), np.zeros(3))
    raw = RawScores(np.array([0.0, 3.0]), np.zeros(2))
    np.testing.assert_allclose(score_values(raw, "typicality", ref), [3.0, 0.0])
    np.testing.assert_allclose(score_values(raw, "typicality", ref, robust=True), [2.0, 1.0])
    assert entropy_estimate(ref.bits_per_dim) == 3.0
    with pytest.raises(GenaugError, match="reference"):
        score_values(raw, "typicality")


def test_typicality_flags_too_simple_images_that_nll_calls_most_likely(fitted):
    # 100 + 20 images: with 200 calibration scores BH can flag from 12 extreme images on.
    images = torch.cat([noisy(100, 1), noisy(20, 2, bright=0.1)])
    is_out = np.r_[np.zeros(100), np.ones(20)].astype(bool)
    data = ImageSet(images)
    nll = genaug.detect_outliers(data, model=fitted, score="nll")
    typ = genaug.detect_outliers(data, model=fitted, score="typicality")
    assert roc_auc_score(is_out, nll.score) < 0.05  # the simple images are the most likely of all
    assert roc_auc_score(is_out, typ.score) > 0.95
    assert typ.is_outlier[is_out].mean() >= 0.9 and typ.is_outlier[~is_out].mean() <= 0.05
    entropy = CalibrationRecord.of(fitted).scores.bits_per_dim.mean()
    np.testing.assert_allclose(typ.score, np.abs(typ.bits_per_dim - entropy))


def test_a_slightly_simpler_batch_is_flagged_though_few_of_its_images_are(fitted):
    clean = genaug.detect_outliers(ImageSet(noisy(200, 3)), model=fitted, score="typicality")
    assert clean.batch_p_value() > 0.05
    simpler = genaug.detect_outliers(ImageSet(noisy(200, 4, bright=0.42)), model=fitted, score="typicality")
    assert simpler.n_flagged <= 0.25 * 200
    assert simpler.batch_p_value() < 0.001


def test_the_batch_test_needs_a_reference(fitted):
    data = ImageSet(noisy(40, 5))
    result = genaug.detect_outliers(data, family="pixelcnn", model_options=TINY, score="typicality",
                                    train_config=TrainConfig(epochs=1, progress=False))
    assert result.settings["mode"] == "self-audit"
    with pytest.raises(GenaugError, match="reference mode"):
        result.batch_p_value()
