"""The likelihood-ratio score: the perturbation, the background model, its checkpoint, the score itself."""

from importlib import import_module

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

import genaug
from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError
from genaug.models.registry import build_model, get_family
from genaug.models.store import attach_background, background_of, model_hash
from genaug.scoring import RawScores, available_scores, resolve_score
from genaug.scoring.llr import PerturbedTraining, perturb
from genaug.scoring.record import CalibrationRecord
from genaug.train import TrainConfig

fit_module, detect_module = import_module("genaug.fit"), import_module("genaug.detect")

TINY = {"channels": 8, "layers": 1, "head_channels": 16}
# Small batches: enough optimiser steps for the tiny PixelCNN to learn the pixel marginal in seconds.
QUICK = TrainConfig(epochs=10, batch_size=32, lr=3e-3, progress=False, seed=0)


def inliers(n: int, seed: int) -> torch.Tensor:
    """Noisy 8x8 images: each pixel black with probability 1/2, else uniform in 128..255 (4.5 bits/dim)."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n, 1, 8, 8)) < 0.5, 0, rng.integers(128, 256, (n, 1, 8, 8)))
    return torch.from_numpy(x.astype(np.uint8))


def specked(n: int, seed: int, specks: int = 8) -> torch.Tensor:
    """Simpler images: black but for a few faint specks (1..100, values the inliers never take).

    The likelihood trap: the black pixels are cheap under the model, so these
    images are *more* likely than the inliers, though foreign. The specks cost
    the model far more than the background model, which has seen every value
    at the mutation rate; the black pixels cost both about the same.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, 8, 8), np.uint8)
    for i in range(n):
        cells = rng.choice(64, size=specks, replace=False)
        x[i, 0, cells // 8, cells % 8] = rng.integers(1, 101, size=specks)
    return torch.from_numpy(x)


@pytest.fixture(scope="module")
def fitted():
    return genaug.fit(ImageSet(inliers(800, 0)), family="pixelcnn", model_options=TINY, llr=True,
                      calibration_fraction=0.25, train_config=QUICK)


@pytest.fixture(scope="module")
def trap():
    images = torch.cat([inliers(200, 1), specked(40, 2)])
    return ImageSet(images), np.r_[np.zeros(200), np.ones(40)].astype(bool)


# -- the perturbation -----------------------------------------------------------
def test_perturb_replaces_whole_pixels_at_the_rate_with_uniform_values():
    images = torch.full((200, 3, 16, 16), 7, dtype=torch.uint8)
    before = images.clone()
    out = perturb(images, 0.2, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(images, before)  # the input is left alone
    changed = out != 7  # [N, C, H, W]
    hit = changed.any(dim=1)
    n = hit.numel()
    assert abs(hit.float().mean().item() - 0.2) < 4 * np.sqrt(0.2 * 0.8 / n)
    # All channels of a chosen pixel are redrawn: only a draw equal to 7 by chance (1 in 256) leaves one unchanged.
    partial = (changed.any(dim=1) & ~changed.all(dim=1)).sum().item()
    assert partial / hit.sum().item() < 0.02
    values = out.permute(0, 2, 3, 1)[hit].float()
    assert abs(values.mean().item() - 127.5) < 3 and values.min() == 0 and values.max() == 255


def test_perturb_is_deterministic_for_a_seed():
    images = inliers(50, 0)
    a = perturb(images, 0.3, generator=torch.Generator().manual_seed(5))
    b = perturb(images, 0.3, generator=torch.Generator().manual_seed(5))
    c = perturb(images, 0.3, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("rate", [0, 1, -0.1, 1.5, float("nan"), True, "0.2"])
def test_a_bad_mutation_rate_is_one_line(rate):
    with pytest.raises(GenaugError, match="mutation-rate"):
        perturb(inliers(2, 0), rate)


def test_training_batches_are_perturbed_afresh_and_validation_the_same_each_time():
    model = build_model("pixelcnn", (1, 8, 8), **TINY)
    stage = PerturbedTraining(model, 0.2).stages()[0]
    x = inliers(16, 0)
    torch.manual_seed(0)
    player = stage.players()[0]
    with torch.no_grad():
        first, second = (player.loss(x, None, 0).loss.item() for _ in range(2))
        val = [stage.validation(x, None, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
        clean = model.validation_score(x)
    assert first != second
    assert torch.equal(val[0], val[1]) and not torch.equal(val[0], clean)


# -- the score --------------------------------------------------------------------
def test_llr_escapes_the_likelihood_trap(fitted, trap):
    data, is_out = trap
    nll = genaug.detect_outliers(data, model=fitted, score="nll")
    llr = genaug.detect_outliers(data, model=fitted, score="llr")
    assert roc_auc_score(is_out, nll.score) < 0.1  # the model calls the specked images the most likely
    assert roc_auc_score(is_out, llr.score) > 0.9
    assert llr.is_outlier[is_out].mean() >= 0.8 and llr.is_outlier[~is_out].mean() <= 0.1
    assert llr.settings["mutation_rate"] == 0.2
    np.testing.assert_allclose(llr.score, nll.bits_per_dim - _background_bpd(fitted, data))


def _background_bpd(model, data):
    from genaug.scoring.nll import model_bits_per_dim

    return model_bits_per_dim(background_of(model), data.images)


def test_the_background_is_no_submodule_of_the_model(fitted):
    fresh = build_model("pixelcnn", (1, 8, 8), **TINY)
    assert len(list(fitted.parameters())) == len(list(fresh.parameters()))
    assert not any(k.startswith("background") for k in fitted.state_dict())
    background = background_of(fitted)
    assert background.init_args() == fitted.init_args()
    assert background.metadata["training"]["family"] == "pixelcnn background"
    # Trained apart: not the model's weights.
    assert any(not torch.equal(a, b) for a, b in zip(fitted.state_dict().values(), background.state_dict().values()))


def test_the_calibration_record_holds_the_background_scores(fitted):
    record = CalibrationRecord.of(fitted)
    assert record.scores.background_bits_per_dim is not None
    assert record.scores.background_bits_per_dim.shape == record.scores.bits_per_dim.shape
    # Records written before the field existed read back without it.
    old = {"nll_options": {}, "scores": {"png_bits_per_dim": [1.0, 2.0], "bits_per_dim": [3.0, 4.0]}}
    model = type("Model", (), {"metadata": {"calibration": old}})
    assert CalibrationRecord.of(model).scores.background_bits_per_dim is None


def test_llr_is_offered_by_a_family_with_a_likelihood_and_a_model_with_a_background(fitted):
    assert "llr" in available_scores(get_family("pixelcnn")) and "llr" in available_scores(fitted)
    assert "llr" not in available_scores(get_family("ae"))
    plain = build_model("pixelcnn", (1, 8, 8), **TINY)
    assert "llr" not in available_scores(plain)
    with pytest.raises(GenaugError, match="--llr"):
        resolve_score("llr", plain)


def test_auto_scores_llr_for_the_vae_and_complexity_for_exact_likelihood_families(fitted, monkeypatch):
    # The VAE's auto is llr, so fit trains its background model by default; the autoregressive
    # families' auto is complexity (their llr ranked photo crops below emoji), so fit skips it.
    assert resolve_score("auto", get_family("vae")) == "llr"
    for family in ("pixelcnn", "gated-pixelcnn", "pixelcnn++", "pixelrnn"):
        assert resolve_score("auto", get_family(family)) == "complexity"
    assert resolve_score("auto", fitted) == "complexity"  # a background model does not change that
    assert resolve_score("llr", fitted) == "llr"  # asked for by name, it is still there
    assert resolve_score("auto", get_family("ae")) == "recon"
    trained = []
    monkeypatch.setattr(fit_module, "train_background", lambda model, *a, **k: trained.append(model.name))
    data = ImageSet(inliers(40, 0))
    quick = TrainConfig(epochs=1, batch_size=16, progress=False)
    small_vae = {"latent_dim": 4, "channels": 4, "hidden": 16}
    genaug.fit(data, family="vae", model_options=small_vae, train_config=quick)
    pixelcnn = genaug.fit(data, family="pixelcnn", model_options=TINY, train_config=quick)
    genaug.fit(data, family="ae", train_config=quick)  # no likelihood: no background, no error
    assert trained == ["vae"]
    genaug.fit(data, family="pixelcnn", model_options=TINY, llr=True, train_config=quick)
    assert trained == ["vae", "pixelcnn"]
    # auto with the score it was meant to have says nothing about background models.
    result = genaug.detect_outliers(data, model=pixelcnn)
    assert result.settings["score"] == "complexity"
    assert not any("background" in w for w in result.warnings)
    # A VAE fitted without one (--no-llr, or a checkpoint from before): auto falls back to complexity, and says so.
    plain = genaug.fit(data, family="vae", model_options=small_vae, llr=False, train_config=quick)
    assert trained == ["vae", "pixelcnn"] and resolve_score("auto", plain) == "complexity"
    result = genaug.detect_outliers(data, model=plain)
    assert result.settings["score"] == "complexity"
    assert any("no background model" in w for w in result.warnings)
    assert not any("background" in w for w in genaug.detect_outliers(data, model=plain, score="nll").warnings)


def test_scores_that_do_not_read_the_background_skip_its_scoring_pass(fitted, trap, monkeypatch):
    scoring = import_module("genaug.scoring")
    passes = []
    real = scoring.model_bits_per_dim
    monkeypatch.setattr(scoring, "model_bits_per_dim", lambda m, *a, **k: passes.append(m) or real(m, *a, **k))
    data, _ = trap
    expected = {"complexity": 1, "nll": 1, "typicality": 1, "llr": 2, "ensemble": 2}
    for kind, n_passes in expected.items():
        passes.clear()
        result = genaug.detect_outliers(data, model=fitted, score=kind)
        assert len(passes) == n_passes, kind
        assert np.isfinite(result.score).all()


def test_llr_settings_are_checked_before_training(monkeypatch):
    monkeypatch.setattr(fit_module, "train", lambda *a, **k: pytest.fail("trained before checking"))
    data = ImageSet(inliers(20, 0))
    with pytest.raises(GenaugError, match="likelihood"):
        genaug.fit(data, family="ae", llr=True)
    with pytest.raises(GenaugError, match="mutation-rate"):
        genaug.fit(data, family="pixelcnn", llr=True, mutation_rate=1.5)
    with pytest.raises(GenaugError, match="only where a background model is trained"):
        genaug.fit(data, family="pixelcnn", llr=False, mutation_rate=0.1)


# -- the checkpoint -----------------------------------------------------------------
def test_checkpoint_round_trip_keeps_the_background_and_its_scores(fitted, trap, tmp_path):
    data, _ = trap
    path = tmp_path / "llr.safetensors"
    genaug.save_model(fitted, path)
    loaded = genaug.load_model(path)
    background = background_of(loaded)
    assert background is not None and background.metadata["mutation_rate"] == 0.2
    for a, b in zip(background_of(fitted).state_dict().values(), background.state_dict().values()):
        assert torch.equal(a, b)
    before = genaug.detect_outliers(data, model=fitted, score="llr")
    after = genaug.detect_outliers(data, model=loaded, score="llr")
    np.testing.assert_array_equal(before.score, after.score)
    np.testing.assert_array_equal(before.p_value, after.p_value)
    assert model_hash(loaded) == model_hash(fitted)


def _rewrite(src, dst, edit):
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(src))
    edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.update({k: t[k][:1].clone() for k in [next(k for k in t if k.startswith("background."))]}),
         "has shape"),
        (lambda t: t.pop(next(k for k in t if k.startswith("background."))), "is missing"),
    ],
    ids=["mis-shaped", "missing"],
)
def test_a_background_that_does_not_match_the_header_is_refused(fitted, tmp_path, edit, match):
    path, bad = tmp_path / "good.safetensors", tmp_path / "bad.safetensors"
    genaug.save_model(fitted, path)
    _rewrite(path, bad, edit)
    with pytest.raises(GenaugError, match=match) as e:
        genaug.load_model(bad)
    assert "background." in str(e.value) and "\n" not in str(e.value)


def test_background_tensors_without_their_description_are_refused(fitted, tmp_path):
    plain = build_model("pixelcnn", (1, 8, 8), **TINY)
    path, bad = tmp_path / "plain.safetensors", tmp_path / "bad.safetensors"
    genaug.save_model(plain, path)
    extra = background_of(fitted).state_dict()
    _rewrite(path, bad, lambda t: t.update({"background." + k: v.clone() for k, v in extra.items()}))
    with pytest.raises(GenaugError, match="unexpected tensor 'background"):
        genaug.load_model(bad)


def test_a_background_must_be_built_like_the_model():
    model = build_model("pixelcnn", (1, 8, 8), **TINY)
    with pytest.raises(GenaugError, match="built like the model"):
        attach_background(model, build_model("pixelcnn", (1, 8, 8), channels=4), {"mutation_rate": 0.2})
    with pytest.raises(GenaugError, match="mutation_rate"):
        attach_background(model, build_model("pixelcnn", (1, 8, 8), **TINY), {})


# -- self-audit ------------------------------------------------------------------------
def test_self_audit_trains_backgrounds_only_for_llr(monkeypatch):
    calls = []
    real = detect_module.train_background
    monkeypatch.setattr(detect_module, "train_background", lambda *a, **k: calls.append(1) or real(*a, **k))
    # 300 training images per fold: fewer leave the tiny models too unsure of the pixel values to tell.
    images = torch.cat([inliers(600, 3), specked(12, 4)])
    is_out = np.r_[np.zeros(600), np.ones(12)].astype(bool)
    data = ImageSet(images)
    common = dict(family="pixelcnn", model_options=TINY, train_config=QUICK)
    nll = genaug.detect_outliers(data, score="nll", **common)
    assert calls == []
    llr = genaug.detect_outliers(data, score="llr", **common)
    assert len(calls) == 2  # one background per fold
    assert roc_auc_score(is_out, nll.score) < 0.1 and roc_auc_score(is_out, llr.score) > 0.9
    with pytest.raises(GenaugError, match="only where a background model is trained"):
        genaug.detect_outliers(data, score="nll", mutation_rate=0.1, **common)


def test_raw_scores_carry_the_background_through_folds():
    part = lambda v: RawScores(np.full(2, v), np.zeros(2), [b"", b""], {}, np.full(2, -v))  # noqa: E731
    raw = detect_module._gather([(np.array([0, 2]), part(1.0)), (np.array([1, 3]), part(2.0))], 4)
    np.testing.assert_array_equal(raw.background_bits_per_dim, [-1, -2, -1, -2])
