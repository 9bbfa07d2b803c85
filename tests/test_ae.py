"""The plain autoencoder: its loss and recon score, its codes, and sampling from its feature mixture."""

import pytest
import torch

from genaug.errors import GenaugError
from genaug.models.ae import REG_COVAR, Autoencoder

TINY = {"latent_dim": 4, "channels": 8, "hidden": 32}


def tiny(shape=(1, 8, 8), classes=0, **options) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(shape, classes, **{**TINY, **options})


def fit_steps(model, x, steps, lr=3e-3, y=None):
    """Adam steps on `x` in batches of 128 (no genaug.train: the tests see only the model)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(128, len(x)),), generator=g)
        loss = model.training_losses(x[idx], None if y is None else y[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@pytest.fixture(scope="module")
def split(digits):
    """(train, held-out) digits."""
    perm = torch.randperm(len(digits.images), generator=torch.Generator().manual_seed(0))
    return digits.images[perm[:1400]], digits.images[perm[1400:]]


@pytest.fixture(scope="module")
def trained(split):
    """A tiny AE trained briefly on digits, its feature mixture fitted (3 components)."""
    model = fit_steps(tiny(mixture_components=3), split[0], steps=300)
    model.fit_prior(split[0][:400])
    return model


def test_training_steps_reduce_the_loss(digits):
    model = tiny()
    x = digits.images[:64]
    first = model.training_losses(x).loss.item()
    fit_steps(model, x, steps=30)
    # A per-subpixel MSE in [-1, 1] units: it starts near E[x^2] and must fall well below it.
    assert model.training_losses(x).loss.item() < 0.5 * first


def test_recon_is_the_per_image_training_loss(digits):
    model = tiny()
    x = digits.images[:16]
    recon = model.raw_scores(x)["recon"]
    losses = model.training_losses(x)
    assert recon.shape == (16,) and torch.isfinite(recon).all() and (recon >= 0).all()
    torch.testing.assert_close(recon, losses.per_image)
    torch.testing.assert_close(losses.loss, recon.mean())
    assert losses.nll is None  # no likelihood: nothing may be shown as bits/dim


def test_recon_is_higher_for_images_unlike_the_training_data(trained, split):
    held_out = split[1]
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (len(held_out), 1, 8, 8), dtype=torch.uint8, generator=g)
    with torch.inference_mode():
        digits_recon = trained.raw_scores(held_out)["recon"]
        noise_recon = trained.raw_scores(noise)["recon"]
        inverted_recon = trained.raw_scores(255 - held_out)["recon"]
    assert noise_recon.mean() > 3 * digits_recon.mean()
    # Ranked, not just on average: almost every foreign image scores above the median digit.
    assert (noise_recon > digits_recon.median()).float().mean() > 0.95
    assert (inverted_recon > digits_recon.median()).float().mean() > 0.95


@pytest.mark.parametrize(
    "shape,classes", [((1, 8, 8), 0), ((1, 28, 28), 0), ((3, 32, 32), 0), ((1, 7, 9), 0), ((1, 8, 8), 3)]
)
def test_encode_decode_shapes_and_dtypes(shape, classes):
    model = tiny(shape, classes)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    y = torch.arange(5) % classes if classes else None
    z = model.encode(x)
    assert z.shape == (5, TINY["latent_dim"]) and z.dtype == torch.float32
    torch.testing.assert_close(model.features(x), z)
    decoded = model.decode(z, y)
    assert decoded.shape == (5, *shape) and decoded.dtype == torch.uint8
    assert model.raw_scores(x, y)["recon"].shape == (5,)


def test_decode_is_the_clamped_reconstruction(digits):
    model = fit_steps(tiny(), digits.images[:256], steps=20)
    x = digits.images[:8]
    expected = ((model.reconstruct(x) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(model.decode(model.encode(x)), expected)


def test_bad_inputs_are_one_line_errors():
    model = tiny(classes=3)
    with pytest.raises(GenaugError, match="image-size"):
        model.encode(torch.zeros(2, 1, 9, 9, dtype=torch.uint8))
    with pytest.raises(GenaugError, match="uint8"):
        model.raw_scores(torch.zeros(2, 1, 8, 8))
    with pytest.raises(GenaugError, match=r"\[n, 4\]"):
        model.decode(torch.zeros(2, 5))
    with pytest.raises(GenaugError, match="labels must be in 0..2"):
        model.decode(torch.zeros(2, 4), torch.tensor([0, 3]))


def test_class_conditioning_changes_the_decoded_image():
    model = tiny(classes=3)
    torch.nn.init.normal_(model.embed.weight, std=3.0)  # a trained class bias is far from zero
    z = torch.zeros(1, 4)
    decoded = [model.decode(z, torch.tensor([k])) for k in range(3)]
    assert not torch.equal(decoded[0], decoded[1]) and not torch.equal(decoded[1], decoded[2])


def test_sampling_before_the_mixture_is_fitted_is_an_error():
    with pytest.raises(GenaugError, match="never fitted; train it with genaug fit"):
        tiny().sample(4)


def test_one_component_mixture_is_the_mean_and_covariance_of_the_features(split):
    model = fit_steps(tiny(mixture_components=1), split[0], steps=20)
    x = split[0][:300]
    model.fit_prior(x)
    with torch.inference_mode():
        z = model.encode(x).double()
    mean, centered = z.mean(0), z - z.mean(0)
    cov = centered.T @ centered / len(z)  # EM's maximum-likelihood (biased) covariance
    # reg_covar is added to the standardised features' diagonal: REG_COVAR times each variance here.
    cov = cov + REG_COVAR * torch.diag(cov.diagonal())
    assert model.mixture_weights.item() == pytest.approx(1.0)
    torch.testing.assert_close(model.mixture_means[0].double(), mean, atol=1e-4, rtol=1e-4)
    tril = model.mixture_scale_tril[0].double()
    assert torch.equal(tril, tril.tril())  # a Cholesky factor, lower triangular
    torch.testing.assert_close(tril @ tril.T, cov, atol=1e-4, rtol=1e-3)


def test_temperature_zero_decodes_the_component_mean(split):
    model = fit_steps(tiny(mixture_components=1), split[0], steps=20)
    model.fit_prior(split[0][:300])
    samples = model.sample(5, generator=torch.Generator().manual_seed(0), temperature=0.0)
    assert torch.equal(samples, model.decode(model.mixture_means[:1]).expand(5, -1, -1, -1))
    for bad in (-0.5, float("nan"), "1"):
        with pytest.raises(GenaugError, match="temperature"):
            model.sample(2, temperature=bad)


def test_samples_are_uint8_reproducible_and_report_progress(trained):
    seen = []
    a = trained.sample(16, generator=torch.Generator().manual_seed(1), progress=seen.append)
    b = trained.sample(16, generator=torch.Generator().manual_seed(1))
    c = trained.sample(16, generator=torch.Generator().manual_seed(2))
    assert a.shape == (16, 1, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sum(seen) == 16
    assert trained.sample(0).shape == (0, 1, 8, 8)


def test_samples_from_the_mixture_look_like_the_training_data(trained, split):
    """Decoded mixture draws reconstruct far better than decoded draws from a broad N(0, 100 I):
    they sit where the training images' codes are, on the data the decoder learned."""
    g = torch.Generator().manual_seed(0)
    mixture = trained.sample(300, generator=g)
    broad = trained.decode(10.0 * torch.randn(300, TINY["latent_dim"], generator=g))
    with torch.inference_mode():
        data = trained.raw_scores(split[1])["recon"].mean()
        assert trained.raw_scores(mixture)["recon"].mean() < 2 * data
        assert trained.raw_scores(broad)["recon"].mean() > 2 * trained.raw_scores(mixture)["recon"].mean()


def test_fewer_images_than_components_leaves_the_rest_unused():
    model = tiny(mixture_components=10)
    model.fit_prior(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))
    assert (model.mixture_weights[3:] == 0).all() and model.mixture_weights.sum().item() == pytest.approx(1.0)
    samples = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 1, 8, 8)
    with pytest.raises(GenaugError, match="0 images"):
        model.fit_prior(torch.zeros(0, 1, 8, 8, dtype=torch.uint8))


def test_the_mixture_travels_with_the_state_dict(trained):
    copy = tiny(mixture_components=3)
    with pytest.raises(GenaugError, match="never fitted"):
        copy.sample(2)
    copy.load_state_dict(trained.state_dict())
    assert {"mixture_weights", "mixture_means", "mixture_scale_tril", "mixture_fitted"} <= set(trained.state_dict())
    a = trained.sample(8, generator=torch.Generator().manual_seed(3))
    b = copy.sample(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_conditional_sampling_takes_or_draws_classes(digits):
    model = tiny(classes=10)
    model.fit_prior(digits.images[:100], digits.labels[:100])
    given = model.sample(6, torch.tensor([0, 1, 2, 3, 4, 5]), generator=torch.Generator().manual_seed(0))
    drawn = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert given.shape == drawn.shape == (6, 1, 8, 8)


def test_stages_train_the_autoencoder_then_fit_the_mixture(digits):
    model = tiny()
    autoencoder, prior = model.stages()
    assert autoencoder.name == "autoencoder" and autoencoder.budget_share == 1.0
    assert [p.name for p in autoencoder.players()] == ["model"]
    assert prior.name == "prior" and prior.players() == [] and prior.budget_share == 0.0
    # The loop calls prepare(x, y) with the uint8 training images; afterwards the AE samples.
    prior.prepare(digits.images[:100], None)
    assert model.sample(2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "option,value",
    [
        ("latent_dim", 0),
        ("latent_dim", 1025),
        ("channels", 2.0),
        ("hidden", True),
        ("mixture_components", 101),
        ("mixture_components", "3"),
    ],
)
def test_out_of_range_options_are_errors_naming_the_option(option, value):
    with pytest.raises(GenaugError, match=f"AE option {option} must be an integer"):
        Autoencoder((1, 8, 8), **{option: value})


def test_init_args_rebuild_the_same_architecture():
    model = tiny(mixture_components=5)
    assert model.init_args() == {**TINY, "mixture_components": 5}
    rebuilt = Autoencoder((1, 8, 8), **model.init_args())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_declared_capabilities():
    assert Autoencoder.capabilities() == {"encode", "decode", "features", "sample", "raw:recon"}
    assert Autoencoder.likelihood == "none" and Autoencoder.latent == "continuous"
    with pytest.raises(GenaugError, match="does not support nll"):
        tiny().nll(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
