"""The ensemble score: components on one robust scale, order kept beyond the reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from genaug.scoring import RawScores, available_scores, score_values
from genaug.scoring.ensemble import combine, robust_z


def test_robust_z_is_unmoved_by_a_few_percent_of_outliers():
    rng = np.random.default_rng(0)
    clean = rng.normal(5.0, 2.0, 2000)
    dirty = np.concatenate([clean, np.full(60, 1e6)])
    x = np.array([5.0, 9.0])
    assert np.allclose(robust_z(x, clean), [0.0, 2.0], atol=0.15)
    assert np.allclose(robust_z(x, dirty), robust_z(x, clean), atol=0.15)


def test_an_image_extreme_on_one_score_or_high_on_both_ranks_above_typical_ones():
    rng = np.random.default_rng(1)
    ref = {"a": rng.normal(size=1000), "b": rng.exponential(size=1000) * 10}
    imgs = {"a": np.array([0.0, 8.0, 2.5]), "b": np.array([7.0, 7.0, 40.0])}
    e = combine(imgs, ref)
    assert e[1] > e[0] and e[2] > e[0]


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=50), st.floats(0.1, 10), st.floats(-5, 5))
@settings(max_examples=50, deadline=None)
def test_the_ensemble_ignores_each_score_units_and_offset(values, scale, shift):
    s = np.array(values)
    ref = np.linspace(-3, 3, 101)
    one = combine({"a": s}, {"a": ref})
    rescaled = combine({"a": s * scale + shift}, {"a": ref * scale + shift})
    assert np.allclose(one, rescaled, rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(one[np.argsort(s, kind="stable")]) >= -1e-9)  # monotone in the score


def test_ensemble_of_a_likelihood_family_combines_complexity_and_typicality():
    rng = np.random.default_rng(2)
    ref = RawScores(rng.normal(4, 0.5, 500), rng.normal(3, 0.5, 500))
    new = RawScores(np.array([4.0, 7.0, 1.0]), np.array([3.0, 3.0, 3.0]))
    expected = combine(
        {k: score_values(new, k, ref) for k in ("complexity", "typicality")},
        {k: score_values(ref, k, ref) for k in ("complexity", "typicality")},
    )
    assert np.allclose(score_values(new, "ensemble", ref), expected)
    e = score_values(new, "ensemble", ref)
    assert e[1] > e[0] and e[2] > e[0]  # too unlikely and too likely both stand out


def test_every_family_offers_the_ensemble_and_a_single_score_family_ranks_as_its_score(digits):
    from genaug.detect import detect_outliers
    from genaug.models.registry import available_families, get_family
    from genaug.train import TrainConfig

    assert all("ensemble" in available_scores(get_family(f)) for f in available_families())
    data = digits.subset(np.arange(120))
    config = TrainConfig(epochs=1, progress=False, seed=0)
    recon = detect_outliers(data, family="ae", score="recon", train_config=config)
    ensemble = detect_outliers(data, family="ae", score="ensemble", train_config=config)
    assert ensemble.settings["score"] == "ensemble"
    assert (ensemble.rank == recon.rank).all()  # one component: a monotone rescaling of recon
