"""`genaug rebalance` end to end on digits with a rare attribute (2% inverted images)."""

import io

import numpy as np
import pyarrow.parquet as pq
from PIL import Image
import pytest
import torch

import genaug
from genaug.cli.app import app
from genaug.data.imageset import ImageSet
from genaug.data.parquet import read_genaug_metadata
from genaug.rebalance import rebalance
from typer.testing import CliRunner


def with_rare_attribute(data: ImageSet, share: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    rare = np.zeros(len(data), dtype=bool)
    rare[rng.choice(len(data), int(round(share * len(data))), replace=False)] = True
    images = data.images.clone()
    images[torch.from_numpy(rare)] = 255 - images[torch.from_numpy(rare)]
    return ImageSet(images, data.labels, data.class_names, list(data.ids), None, "digits-biased"), rare


@pytest.fixture(scope="module")
def biased(digits):
    return with_rare_attribute(digits)


@pytest.fixture(scope="module")
def result(biased):
    """knn: inverted digits are scattered over the digit classes' regions, isolated images
    rather than one group, which knn lifts and the default (clusters) does not."""
    data, _ = biased
    return rebalance(data, density="knn", synthesize=40, train_config=genaug.TrainConfig(epochs=10, progress=False))


@pytest.fixture(scope="module")
def model(biased):
    data, _ = biased
    return genaug.fit(data, train_config=genaug.TrainConfig(epochs=10, progress=False))


def test_isolated_rare_images_are_upweighted_and_resampled_by_knn(result, biased):
    _, rare = biased
    w = result.weights
    assert np.all(w > 0) and np.all(np.isfinite(w)) and w.mean() == pytest.approx(1.0)
    assert w[rare].mean() >= 5 * w[~rare].mean()
    assert rare[result.resampled].mean() >= 0.1  # from 2% to about one group's share, 1/8
    assert len(result.resampled) == len(w)
    assert result.summary.to_dict()


def test_the_group_holding_the_rare_images_is_reported_first_with_rare_examples(result, biased):
    data, rare = biased
    top = result.groups[0]
    is_rare = dict(zip(data.ids, rare))
    assert all(is_rare[i] for i in top["examples"])  # its highest-weight members are inverted digits
    assert top["mean_weight"] >= 2 and top["share_after"] > top["share_before"]
    assert result.warnings == []


def test_synthesized_rows_are_marked_decodable_and_sourced(result, biased, tmp_path):
    data, rare = biased
    path = tmp_path / "rebalanced.parquet"
    table = result.write(path)
    assert table.num_rows == len(data) + 40
    on_disk = pq.read_table(path).to_pandas()
    synth = on_disk[on_disk["synthetic"]]
    assert len(synth) == 40 and synth["index"].isna().all() and synth["weight"].isna().all()
    assert set(synth["source_id"]).issubset(set(data.ids))
    # Anchors come from the rare regions: far above the 2% base rate.
    anchors = np.isin(np.array(data.ids), synth["source_id"].to_numpy())
    assert rare[anchors].mean() > 0.2
    # ... and the fine-tuned decoder draws the rare attribute: bright (inverted) images.
    rare_anchored = np.isin(synth["source_id"].to_numpy(), np.array(data.ids)[rare])
    brightness = np.array([np.asarray(Image.open(io.BytesIO(b["bytes"]))).mean() for b in synth["image"]])
    assert brightness[rare_anchored].mean() > 128 > brightness[~rare_anchored].mean()
    img = Image.open(io.BytesIO(synth.iloc[0]["image"]["bytes"]))
    assert img.size == (8, 8)
    real = on_disk[~on_disk["synthetic"]]
    assert real["index"].tolist() == list(range(len(data)))
    assert real["resample_count"].sum() == len(data)


def test_sampler_draws_rare_images_more_often(result, biased):
    _, rare = biased
    idx = np.array(list(result.sampler(20000, seed=0)))
    assert rare[idx].mean() >= 0.1


def test_cli_rebalance_with_a_saved_model(tmp_path, model, biased):
    data, _ = biased
    model_path = tmp_path / "m.safetensors"
    genaug.save_model(model, model_path)
    npz = tmp_path / "biased.npz"
    np.savez(npz, x=data.images[:, 0].numpy(), y=data.labels)
    out, resampled = tmp_path / "w.parquet", tmp_path / "r.parquet"
    res = CliRunner().invoke(
        app,
        ["rebalance", str(npz), "-o", str(out), "--model-path", str(model_path), "--resampled", str(resampled),
         "--size", "500", "--quiet"],
    )
    assert res.exit_code == 0, res.output
    assert "effective sample size" in res.output.lower()
    assert "up-weighted" in res.output  # the groups, or "no group up-weighted"
    assert pq.read_table(resampled).num_rows == 500
    assert pq.read_table(out).num_rows == len(data)
    meta = read_genaug_metadata(out)
    assert meta["density"] == "clusters" and meta["components"] == 8
    assert meta["upweighted_groups"] == [] or meta["upweighted_groups"][0]["mean_weight"] >= 1.5


def test_per_class_groups_are_named_by_class(model, biased):
    data, _ = biased
    result = rebalance(data, model=model, per_class=True)
    assert result.groups and all(" / group " in g["group"] for g in result.groups)
    assert {g["group"].split(" / ")[0] for g in result.groups} <= set(data.class_names)
    for c in range(len(data.class_names)):  # each class keeps its share of the draws
        members = data.labels == c
        assert result.weights[members].sum() == pytest.approx(members.sum())


@pytest.mark.parametrize("boost, message", [("1", "near-uniform weights"), ("3", "only the worst-fitted images")])
def test_near_uniform_weights_warn_on_the_command_line(tmp_path, model, digits, boost, message):
    npz = tmp_path / "clean.npz"
    np.savez(npz, x=digits.images[:300, 0].numpy(), y=digits.labels[:300])
    model_path = tmp_path / "m.safetensors"
    genaug.save_model(model, model_path)
    res = CliRunner().invoke(app, ["rebalance", str(npz), "-o", str(tmp_path / "w.parquet"), "--model-path",
                                   str(model_path), "--density", "mixture", "--components", "1", "--fit-boost", boost,
                                   "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert message in res.output and "no group up-weighted" in res.output


def test_a_fit_boost_draws_the_worst_fitted_tenth_that_many_times_as_often(model, biased, tmp_path):
    """The inverted digits fit worst (complexity AUROC ~0.9), so the boost lifts them further
    (measured 13.9x with it, 7.0x without). It is off by default."""
    data, rare = biased
    result, plain = rebalance(data, model=model, fit_boost=3), rebalance(data, model=model)
    assert result.settings["fit_boost"] == 3.0 and plain.settings["fit_boost"] == 1.0
    worst = result.worst_fit
    assert worst.sum() == int(np.ceil(0.1 * len(data))) and plain.worst_fit is None
    np.testing.assert_allclose(result.weights / plain.weights, np.where(worst, 3.0, 1.0) * result.weights[~worst][0]
                               / plain.weights[~worst][0])  # fmt: skip
    ratio = lambda w: w[rare].mean() / w[~rare].mean()  # noqa: E731
    assert ratio(result.weights) > 1.3 * ratio(plain.weights)
    out = tmp_path / "w.parquet"
    table = result.write(out)
    assert table.column("worst_fit").to_pylist() == worst.tolist()
    report = read_genaug_metadata(out)["worst_fit"]
    order = np.argsort(-result.fit_scores)
    assert report["size"] == worst.sum() and report["examples"] == [data.ids[i] for i in order[:5]]
    assert plain.write(tmp_path / "p.parquet").column("worst_fit").null_count == len(data)


def test_a_fit_boost_on_a_family_without_a_likelihood_fails_before_training(tmp_path, digits):
    npz, out = tmp_path / "d.npz", tmp_path / "w.parquet"
    np.savez(npz, x=digits.images[:100, 0].numpy())
    res = CliRunner().invoke(app, ["rebalance", str(npz), "-o", str(out), "--model", "ae", "--fit-boost", "3"])
    assert res.exit_code != 0 and "needs nll" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_a_failed_second_output_leaves_neither_file(result, tmp_path):
    out, taken = tmp_path / "w.parquet", tmp_path / "taken"
    taken.mkdir()  # the resample cannot replace a folder
    with pytest.raises(genaug.GenaugError, match="taken is a folder"):
        result.write(out, resampled_path=taken)
    assert not out.exists() and taken.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
