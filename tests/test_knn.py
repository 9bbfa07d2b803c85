"""The knn score: distance to the nearest training images in the model's features, and its feature bank."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

import genaug
from conftest import with_foreign_images
from genaug.errors import GenaugError
from genaug.models.registry import build_model, get_family
from genaug.models.store import feature_bank_of, model_hash
from genaug.scoring import available_scores, resolve_score
from genaug.scoring.ensemble import robust_z
from genaug.scoring.knn import MAX_COMPONENTS, FeatureBank
from genaug.scoring.record import CalibrationRecord
from genaug.train import TrainConfig

FAST = TrainConfig(epochs=15, progress=False, seed=0)


def _brute(reference: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    d = np.linalg.norm(query[:, None, :] - reference[None, :, :], axis=-1)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


# -- the bank ----------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [5, MAX_COMPONENTS + 16])  # without and with the PCA projection
@pytest.mark.parametrize("k", [1, 3])
def test_the_distance_is_the_mean_over_the_k_nearest_training_rows(dims, k):
    rng = np.random.default_rng(dims + k)
    scales = rng.uniform(0.1, 50.0, dims)  # standardising matters: one wide feature must not dominate
    train, query = rng.normal(size=(300, dims)) * scales, rng.normal(size=(40, dims)) * scales
    bank = FeatureBank.build(train, k)
    standardised = lambda x: (x - train.mean(0)) / train.std(0)  # noqa: E731
    got = bank.distance(query)
    if dims <= MAX_COMPONENTS:
        np.testing.assert_allclose(got, _brute(standardised(train), standardised(query), k), rtol=1e-5)
    else:
        assert bank.reference.shape[1] == MAX_COMPONENTS
        np.testing.assert_allclose(got, _brute(bank.space.project(train), bank.space.project(query), k), rtol=1e-5)
        # A projection never lengthens a distance; the k nearest can only come closer.
        assert np.all(got <= _brute(standardised(train), standardised(query), k) + 1e-9)


def test_a_training_row_is_at_distance_zero_and_farther_rows_score_higher():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 4))
    bank = FeatureBank.build(train, 1)
    np.testing.assert_allclose(bank.distance(train), 0.0, atol=1e-5)
    direction = rng.normal(size=4)
    shifted = [bank.distance(train[:20] + t * direction).mean() for t in (0.5, 2.0, 8.0)]
    assert shifted[0] < shifted[1] < shifted[2]


def test_the_bank_survives_its_tensors():
    rng = np.random.default_rng(1)
    train, query = rng.normal(size=(120, 40)), rng.normal(size=(30, 40))
    bank = FeatureBank.build(train, 2)
    again = FeatureBank.from_tensors(*bank.tensors())
    np.testing.assert_allclose(again.distance(query), bank.distance(query), rtol=1e-4)
    with pytest.raises(GenaugError, match="have 10 dimensions, its feature bank 40"):
        bank.distance(query[:, :10])


# -- a fitted model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def split(digits):
    """Digits 0-8 to fit on (the first 1200), held-out digits 0-8, and every 9: a novel class."""
    nine = digits.labels == 9
    known = np.flatnonzero(~nine)
    return digits.subset(known[:1200]), digits.subset(known[1200:]), digits.subset(np.flatnonzero(nine))


@pytest.fixture(scope="module")
def fitted(split):
    return genaug.fit(split[0], calibration_fraction=0.25, llr=False, train_config=FAST, console=None)


def test_fit_stores_the_training_split_and_calibrates_knn_on_images_it_never_saw(fitted, split):
    train, _, _ = split
    record = CalibrationRecord.of(fitted).scores
    n_cal = round(0.25 * len(train))
    assert record.knn_distance is not None and len(record.knn_distance) == n_cal
    assert np.all(record.knn_distance > 1e-4)  # no calibration image is in the bank
    assert feature_bank_of(fitted)[1]["size"] == len(train) - n_cal
    on_train = genaug.detect_outliers(train, model=fitted, score="knn", console=None).score
    # The bank is the training split: those images find themselves, the calibration images do not.
    assert np.sum(on_train < 1e-4) == len(train) - n_cal


def test_a_novel_class_lies_farther_from_the_training_images(fitted, split):
    _, known, nines = split
    scores = [genaug.detect_outliers(d, model=fitted, score="knn", console=None).score for d in (known, nines)]
    truth = np.r_[np.zeros(len(known)), np.ones(len(nines))]
    assert roc_auc_score(truth, np.concatenate(scores)) > 0.8


def test_checkpoint_round_trip_keeps_the_bank(fitted, split, tmp_path):
    path = tmp_path / "knn.safetensors"
    genaug.save_model(fitted, path)
    loaded = genaug.load_model(path)
    before = genaug.detect_outliers(split[2], model=fitted, score="knn", console=None)
    after = genaug.detect_outliers(split[2], model=loaded, score="knn", console=None)
    np.testing.assert_array_equal(before.score, after.score)
    np.testing.assert_array_equal(before.p_value, after.p_value)
    assert model_hash(loaded) == model_hash(fitted)


def _rewrite(src, dst, edit_tensors=None, edit_meta=None):
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        doc = json.loads(metadata["genaug"])
        edit_meta(doc)
        metadata["genaug"] = json.dumps(doc)
    save_file(tensors, str(dst), metadata=metadata)


@pytest.mark.parametrize(
    ("edit_tensors", "edit_meta", "match"),
    [
        (lambda t: t.update({"knn.reference": t["knn.reference"][:5].clone()}), None, "has shape"),
        (lambda t: t.pop("knn.mean"), None, "'knn.mean' .* is missing"),
        (None, lambda m: m.pop("knn"), "unexpected tensor 'knn"),
        (None, lambda m: m["knn"].update(neighbours=0), "knn.neighbours"),
        (None, lambda m: m["knn"].update(size="many"), "knn.size"),
        (lambda t: t["knn.reference"].fill_(float("nan")), None, "NaN"),
    ],
    ids=["mis-shaped", "missing", "undescribed", "bad-k", "bad-size", "nan"],
)
def test_a_bank_that_does_not_match_its_description_is_refused(fitted, tmp_path, edit_tensors, edit_meta, match):
    path, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    genaug.save_model(fitted, path)
    _rewrite(path, bad, edit_tensors, edit_meta)
    with pytest.raises(GenaugError, match=match) as e:
        genaug.load_model(bad)
    assert "\n" not in str(e.value)


def test_knn_is_offered_where_there_are_features_and_a_fitted_model_needs_its_bank(fitted):
    assert "knn" in available_scores(get_family("vae")) and "knn" in available_scores(fitted)
    assert "knn" not in available_scores(get_family("pixelcnn"))  # no feature space
    bare = build_model("vae", fitted.image_shape, **fitted.init_args())
    assert "knn" not in available_scores(bare)
    with pytest.raises(GenaugError, match="refit"):
        resolve_score("knn", bare)
    with pytest.raises(GenaugError, match="unknown score 'knn'"):
        resolve_score("knn", get_family("pixelcnn"))


# -- self-audit ------------------------------------------------------------------------------
def test_self_audit_measures_each_image_against_its_fold_models_training_folds(digits):
    data, foreign = with_foreign_images(digits, share=0.03, seed=0)
    result = genaug.detect_outliers(data, score="knn", train_config=FAST, console=None)
    assert np.all(np.isfinite(result.score)) and np.all(result.score > 0)  # no image is in its own bank
    # Weaker than in reference mode (the training folds hold the foreign images too), but it ranks them high.
    assert roc_auc_score(foreign, result.score) > 0.85



def test_auto_in_reference_mode_is_the_ensemble_of_llr_and_knn(split):
    model = genaug.fit(split[0].subset(np.arange(300)), llr=True, console=None,
                       train_config=TrainConfig(epochs=1, progress=False, seed=0))  # fmt: skip
    assert resolve_score("auto", model) == "ensemble" and resolve_score("auto", get_family("vae")) == "llr"
    result = genaug.detect_outliers(split[2], model=model, console=None)
    assert result.settings["score"] == "ensemble"
    by_name = {k: genaug.detect_outliers(split[2], model=model, score=k, console=None).score for k in ("llr", "knn")}
    record = CalibrationRecord.of(model).scores
    calibration = {"llr": record.bits_per_dim - record.background_bits_per_dim, "knn": record.knn_distance}
    expected = np.mean([robust_z(by_name[k], calibration[k]) for k in ("llr", "knn")], axis=0)
    np.testing.assert_allclose(result.score, expected)
