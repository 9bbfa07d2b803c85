"""OutlierDetector: an estimator in the scikit-learn / PyOD mould, backed by detect-outliers."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

import genaug
from genaug.errors import GenaugError
from genaug.estimator import OutlierDetector

FAST = {"epochs": 3, "llr": False, "progress": False, "seed": 0}


@pytest.fixture(scope="module")
def clean_and_new(digits):
    x = digits.images.numpy()
    new = x[1200:1300].copy()
    new[:10] = 255 - new[:10]  # ten inverted digits
    return x[:1200], new


@pytest.fixture(scope="module")
def fitted(clean_and_new):
    return OutlierDetector(**FAST).fit(clean_and_new[0])


def test_it_is_backed_by_detect_outliers(fitted, clean_and_new):
    _, new = clean_and_new
    result = genaug.detect_outliers(genaug.load_images(new), model=fitted.model_, console=None)
    np.testing.assert_array_equal(fitted.decision_function(new), result.score)
    np.testing.assert_array_equal(fitted.p_values(new), result.p_value)
    np.testing.assert_array_equal(fitted.predict(new), result.is_outlier.astype(int))
    np.testing.assert_array_equal(fitted.score_samples(new), -result.score)
    assert fitted.predict(new)[:10].sum() >= 8 and fitted.predict(new)[10:].sum() <= 2  # the inverted ones
    assert fitted.decision_scores_.shape == (1200,) and set(np.unique(fitted.labels_)) <= {0, 1}


def test_params_round_trip_and_clone_gives_an_unfitted_twin(fitted):
    params = fitted.get_params()
    assert params["family"] == "vae" and params["epochs"] == 3 and params["fdr"] == 0.05
    twin = clone(fitted)
    assert twin.get_params() == params and not hasattr(twin, "model_")
    assert twin.set_params(fdr=0.1).fdr == 0.1 and fitted.fdr == 0.05
    with pytest.raises(GenaugError, match="not fitted yet"):
        twin.predict(np.zeros((2, 8, 8), np.uint8))


def test_a_pipeline_of_a_clone_fits_and_predicts_as_the_original(fitted, clean_and_new):
    clean, new = clean_and_new
    pipe = Pipeline([("detector", clone(fitted))]).fit(clean)  # same parameters and seed: the same model
    np.testing.assert_array_equal(pipe.predict(new), fitted.predict(new))


def test_save_and_load_give_the_same_scores(fitted, clean_and_new, tmp_path):
    fitted.save(tmp_path / "d.safetensors")
    loaded = OutlierDetector.load(tmp_path / "d.safetensors")
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.decision_function(clean_and_new[1]), fitted.decision_function(clean_and_new[1]))


def test_audit_needs_no_fit(clean_and_new):
    result = OutlierDetector(**FAST).audit(clean_and_new[1])
    assert result.settings["mode"] == "self-audit" and len(result.score) == 100
    assert result.settings["refit"] == 0  # one round unless asked


def test_audit_runs_a_second_round_when_asked(clean_and_new):
    result = OutlierDetector(**{**FAST, "epochs": 1}).audit(clean_and_new[1], refit=0.1)
    assert result.settings["refit"] == 0.1
    with pytest.raises(GenaugError, match="refit"):
        OutlierDetector(**FAST).audit(clean_and_new[1], refit=0.7)
