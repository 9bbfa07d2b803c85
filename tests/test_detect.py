"""Detection end to end on digits: out-of-fold self-audit and the calibrated reference mode."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

import genaug
from conftest import with_foreign_images
from genaug.data.parquet import read_genaug_metadata
from genaug.errors import GenaugError
from genaug.train import TrainConfig

FAST = TrainConfig(epochs=15, progress=False, seed=0)


@pytest.fixture(scope="module")
def contaminated(digits):
    return with_foreign_images(digits, share=0.03, seed=0)


@pytest.fixture(scope="module")
def self_audit(contaminated):
    data, _ = contaminated
    return genaug.detect_outliers(data, train_config=FAST)


@pytest.fixture(scope="module")
def reference_model(digits):
    # Fit on the first 1500 clean digits, half of them held out for calibration
    # (BH needs n_cal well above n_test / fdr / n_outliers); the rest are new data.
    return genaug.fit(digits.subset(np.arange(1500)), calibration_fraction=0.5, train_config=FAST)


def test_self_audit_finds_foreign_images_in_digits(self_audit, contaminated):
    _, foreign = contaminated
    assert roc_auc_score(foreign, self_audit.score) > 0.95
    flagged = self_audit.is_outlier
    # Most foreign images are flagged, and most flags are foreign.
    assert flagged[foreign].mean() >= 0.8
    assert foreign[flagged].mean() >= 0.5


def test_self_audit_scores_every_image_out_of_fold(self_audit, contaminated):
    data, _ = contaminated
    assert self_audit.settings["mode"] == "self-audit"
    assert len(self_audit.score) == len(data) and np.isfinite(self_audit.score).all()
    assert sorted(self_audit.rank.tolist()) == list(range(1, len(data) + 1))


def test_contamination_flags_that_share(contaminated):
    data, _ = contaminated
    result = genaug.detect_outliers(data, contamination=0.05, train_config=TrainConfig(epochs=2, progress=False))
    assert result.n_flagged == int(np.ceil(0.05 * len(data)))


def test_reference_mode_p_values_are_calibrated_and_find_foreign_images(reference_model, digits):
    clean_new = digits.subset(np.arange(1500, len(digits)))
    clean = genaug.detect_outliers(clean_new, model=reference_model)
    assert clean.settings["mode"] == "reference"
    # Clean new data: p-values roughly uniform, few flags at fdr 0.05.
    assert 0.35 < np.median(clean.p_value) < 0.65
    assert clean.n_flagged <= 0.05 * len(clean_new) + 2

    dirty, foreign = with_foreign_images(clean_new, share=0.05, seed=1)
    result = genaug.detect_outliers(dirty, model=reference_model)
    assert roc_auc_score(foreign, result.score) > 0.95
    assert result.is_outlier[foreign].mean() >= 0.8
    assert result.p_value[foreign].max() < 0.05


def test_too_few_calibration_scores_is_a_warning_for_exact_p_values(reference_model, digits):
    result = genaug.detect_outliers(digits, model=reference_model, fdr=0.01, conformal="exact")
    assert result.warnings and "calibration scores" in result.warnings[0]
    # Extended p-values go below the conformal floor: 750 calibration scores are enough for them.
    assert not genaug.detect_outliers(digits, model=reference_model, fdr=0.01).warnings


def test_extended_p_values_are_the_exact_ones_above_the_floor(reference_model, digits):
    dirty, _ = with_foreign_images(digits.subset(np.arange(1500, len(digits))), share=0.05, seed=1)
    extended = genaug.detect_outliers(dirty, model=reference_model)
    exact = genaug.detect_outliers(dirty, model=reference_model, conformal="exact")
    assert (extended.settings["conformal"], exact.settings["conformal"]) == ("extended", "exact")
    floor = 1 / (exact.settings["n_calibration"] + 1)
    assert exact.p_value.min() == pytest.approx(floor) and extended.p_value.min() < floor
    above = exact.p_value > floor * (1 + 1e-9)
    np.testing.assert_array_equal(extended.p_value[above], exact.p_value[above])
    assert not (exact.is_outlier & ~extended.is_outlier).any()  # smaller p-values: BH flags a superset


def test_saved_model_scores_the_same_as_in_memory(reference_model, digits, tmp_path):
    path = tmp_path / "model.safetensors"
    genaug.save_model(reference_model, path)
    data = digits.subset(np.arange(1500, 1600))
    a = genaug.detect_outliers(data, model=reference_model)
    b = genaug.detect_outliers(data, model=path)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5)
    np.testing.assert_array_equal(a.is_outlier, b.is_outlier)


def test_written_parquet_has_the_documented_schema(reference_model, digits, tmp_path):
    data = digits.subset(np.arange(1500, 1600))
    path = tmp_path / "out.parquet"
    genaug.detect_outliers(data, model=reference_model).write(path, command="test")
    table = pq.read_table(path)
    assert table.column_names == [
        "index", "id", "image", "label", "score", "bits_per_dim", "p_value", "is_outlier", "rank", "rarity", "category"
    ]
    assert table["index"].to_pylist() == list(range(100))
    assert table["id"].to_pylist() == data.ids
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    meta = read_genaug_metadata(path)
    assert meta["job"] == "detect-outliers" and meta["mode"] == "reference" and meta["model_hash"]


def test_nll_and_complexity_scores_differ_by_the_png_code_length(reference_model, digits):
    data = digits.subset(np.arange(1500, 1600))
    nll = genaug.detect_outliers(data, model=reference_model, score="nll")
    cx = genaug.detect_outliers(data, model=reference_model, score="complexity")
    np.testing.assert_allclose(nll.bits_per_dim, cx.bits_per_dim)
    assert np.all(cx.score < nll.score)  # complexity subtracts the (positive) PNG bits/dim


def test_bad_settings_are_clear_errors(reference_model, digits):
    data = digits.subset(np.arange(10))
    with pytest.raises(GenaugError, match="fdr"):
        genaug.detect_outliers(data, model=reference_model, fdr=2.0)
    with pytest.raises(GenaugError, match="score"):
        genaug.detect_outliers(data, model=reference_model, score="magic")
    with pytest.raises(GenaugError, match="--conformal must be one of extended, exact"):
        genaug.detect_outliers(data, model=reference_model, conformal="magic")
    with pytest.raises(GenaugError, match="--refit applies to self-audit"):
        genaug.detect_outliers(data, model=reference_model, refit=0.05)
    for share in (-0.1, 0.5):
        with pytest.raises(GenaugError, match="--refit must be at least 0 and below 0.5"):
            genaug.detect_outliers(data, refit=share)
    with pytest.raises(GenaugError, match=r"^1 image is too few for 2-fold self-audit \(it needs at least 4\)"):
        genaug.detect_outliers(digits.subset(np.arange(1)), folds=2)
    with pytest.raises(GenaugError, match=r"^7 images are too few for 4-fold self-audit \(it needs at least 8\)"):
        genaug.detect_outliers(digits.subset(np.arange(7)), folds=4)
    uncalibrated = genaug.fit(digits.subset(np.arange(50)), train_config=TrainConfig(epochs=1, progress=False))
    uncalibrated.metadata.pop("calibration")
    with pytest.raises(GenaugError, match="calibration"):
        genaug.detect_outliers(data, model=uncalibrated)


def test_scoring_options_must_be_those_the_model_was_calibrated_with(reference_model, digits):
    small = digits.subset(np.arange(20))
    calibrated = reference_model.metadata["calibration"]["nll_options"]["iwae_k"]
    genaug.detect_outliers(small, model=reference_model, iwae_k=calibrated)  # restating them is fine
    with pytest.raises(GenaugError, match="calibrated with"):
        genaug.detect_outliers(small, model=reference_model, iwae_k=calibrated + 3)


def test_self_audit_second_round_never_trains_on_the_first_rounds_top_scores(monkeypatch, digits):
    from genaug import detect as detect_module
    from genaug.scoring import score_values

    data = digits.subset(np.arange(300))
    rounds, trained_on = [], []
    real_cross_fit, real_train_on = detect_module.cross_fit_scores, detect_module.train_on

    def cross_fit(*args, **kwargs):
        raw = real_cross_fit(*args, **kwargs)
        rounds.append((kwargs.get("exclude"), raw))
        return raw

    def train_on(model, training, *args, **kwargs):
        trained_on.append(set(training.ids))
        return real_train_on(model, training, *args, **kwargs)

    monkeypatch.setattr(detect_module, "cross_fit_scores", cross_fit)
    monkeypatch.setattr(detect_module, "train_on", train_on)
    result = genaug.detect_outliers(data, score="nll", refit=0.1, train_config=TrainConfig(epochs=1, progress=False))
    assert [exclude is None for exclude, _ in rounds] == [True, False]
    first = score_values(rounds[0][1], "nll", rounds[0][1], robust=True)
    suspects = rounds[1][0]
    assert suspects.sum() == 30 and first[suspects].min() > first[~suspects].max()  # the top 10%, exactly
    suspect_ids = {data.ids[i] for i in np.flatnonzero(suspects)}
    assert len(trained_on) == 4 and all(not (ids & suspect_ids) for ids in trained_on[2:])
    assert trained_on[0] | trained_on[1] >= suspect_ids  # the first round trained on everything
    # Every image, suspects too, is scored out of fold by the second round's models.
    np.testing.assert_array_equal(result.bits_per_dim, rounds[1][1].bits_per_dim)
    assert result.settings["refit"] == 0.1

    rounds.clear()
    one = genaug.detect_outliers(data, score="nll", train_config=TrainConfig(epochs=1, progress=False))
    assert len(rounds) == 1 and one.settings["refit"] == 0  # one round unless asked


def test_the_bh_resolution_warning_says_when_no_image_can_be_flagged():
    from genaug.detect import bh_resolution_warning

    # 8 calibration scores: the smallest p-value is 1/9, and BH at 0.05 over 40 images needs 89 of them.
    (never,) = bh_resolution_warning(8, 40, 0.05)
    assert "cannot flag any of these 40 images (it needs at least 89 extreme ones)" in never
    (rarely,) = bh_resolution_warning(750, 1797, 0.01)
    assert "flags nothing unless at least 240 (13.4%) of these 1797 images are extreme" in rarely
    assert bh_resolution_warning(5000, 1000, 0.05) == []
