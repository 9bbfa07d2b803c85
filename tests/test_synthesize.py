"""Synthesis: samples are images of the model's shape, labelled, reproducible, filterable."""

import numpy as np
import pytest
import torch

import genaug
from genaug.errors import GenaugError
from genaug.synthesize import synthesize
from genaug.train import TrainConfig


@pytest.fixture(scope="module")
def conditional_model(digits):
    return genaug.fit(digits, conditional=True, train_config=TrainConfig(epochs=8, progress=False))


def test_samples_have_the_model_shape_labels_and_marks(conditional_model):
    out = synthesize(conditional_model, 50, label=3, seed=1)
    assert out.data.images.shape == (50, 1, 8, 8) and out.data.images.dtype == torch.uint8
    assert (out.data.labels == 3).all() and out.data.class_names[3] == "3"
    cols = out.columns()
    assert cols["synthetic"].all() and set(cols["model_hash"]) == {out.model_hash}
    assert len(set(out.data.ids)) == 50


def test_same_seed_same_images(conditional_model):
    a = synthesize(conditional_model, 20, seed=7)
    b = synthesize(conditional_model, 20, seed=7)
    c = synthesize(conditional_model, 20, seed=8)
    assert torch.equal(a.data.images, b.data.images)
    np.testing.assert_array_equal(a.data.labels, b.data.labels)
    assert not torch.equal(a.data.images, c.data.images)


def test_filter_keeps_only_samples_that_pass_bh(conditional_model):
    out = synthesize(conditional_model, 40, filter_fdr=0.2, seed=0)
    assert len(out.data) == 40
    assert out.n_drawn >= 40
    # Every kept sample has a p-value and none would be flagged on its own at the FDR.
    assert (out.p_value > 0).all() and out.score is not None


def test_fit_stores_what_the_decoder_makes_of_the_calibration_images(conditional_model):
    cal = conditional_model.metadata["calibration"]["scores"]
    rec = conditional_model.metadata["calibration"]["reconstruction"]
    assert len(rec["bits_per_dim"]) == len(rec["png_bits_per_dim"]) == len(cal["bits_per_dim"])
    assert np.isfinite(rec["bits_per_dim"]).all() and np.isfinite(rec["png_bits_per_dim"]).all()
    # They are other images than the real ones: decoder outputs code differently.
    assert not np.allclose(rec["png_bits_per_dim"], cal["png_bits_per_dim"])


def noisy_blobs(n: int = 300, size: int = 16, seed: int = 0):
    """RGB discs on a plain background with sensor-like pixel noise (sd 6)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.25, size * 0.75, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(size * 0.12, size * 0.3) ** 2
        out[i] = np.clip(np.where(disc, 60.0, 220.0)[None] + rng.normal(0, 6, (3, size, size)), 0, 255)
    return genaug.ImageSet(torch.from_numpy(out), source="blobs")


def test_the_filter_compares_samples_with_reconstructions_and_keeps_typical_ones():
    model = genaug.fit(noisy_blobs(), train_config=TrainConfig(epochs=10, progress=False))
    out = synthesize(model, 100, filter_fdr=0.1, seed=0)
    assert out.settings["filter_reference"] == "reconstructions"
    assert len(out.data) == 100 and out.n_drawn <= 150
    # Samples are neither all extreme nor all far inside the reference: the test sees them.
    assert 0.05 < np.median(out.p_value) < 0.95


def test_label_checks(conditional_model, digits):
    with pytest.raises(GenaugError, match="label"):
        synthesize(conditional_model, 5, label=12)
    unconditional = genaug.fit(digits.subset(np.arange(100)), train_config=TrainConfig(epochs=1, progress=False))
    with pytest.raises(GenaugError, match="conditional"):
        synthesize(unconditional, 5, label=1)


def test_augment_mixes_augmented_and_synthetic_rows(conditional_model, digits):
    from genaug.synthesize import augmented_table

    data = digits.subset(np.arange(40))
    table, settings = augmented_table(
        data, "light", copies=2, keep_originals=True, model=conditional_model, synthetic_ratio=0.25, seed=3
    )
    df = table.to_pandas()
    assert df["kind"].value_counts().to_dict() == {"augmented": 80, "original": 40, "synthetic": 20}
    aug = df[df["kind"] == "augmented"]
    assert (aug["source_id"].to_numpy() == np.array(data.ids * 2)).all()
    assert (aug["label"].to_numpy() == np.tile(data.labels, 2)).all()
    assert df[df["kind"] == "synthetic"]["synthetic"].all() and df["index"].isna().sum() == 20
    again, _ = augmented_table(
        data, "light", copies=2, keep_originals=True, model=conditional_model, synthetic_ratio=0.25, seed=3
    )
    assert again.equals(table)  # a fixed seed reproduces every image
    with pytest.raises(GenaugError, match="model-path"):
        augmented_table(data, "light", synthetic_ratio=0.5)


def test_cli_synthesize_writes_marked_rows(conditional_model, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from genaug.cli.app import app

    model_path = tmp_path / "m.safetensors"
    genaug.save_model(conditional_model, model_path)
    out = tmp_path / "s.parquet"
    res = CliRunner().invoke(app, ["synthesize", "--model-path", str(model_path), "-n", "30", "-o", str(out), "--label", "7", "--quiet"])
    assert res.exit_code == 0, res.output
    df = pq.read_table(out).to_pandas()
    assert len(df) == 30 and df["synthetic"].all() and (df["label"] == 7).all() and (df["seed"] == 0).all()
    res = CliRunner().invoke(app, ["synthesize", "--model-path", str(model_path), "-n", "5", "-o", str(out), "--label", "x"])
    assert res.exit_code == 2
