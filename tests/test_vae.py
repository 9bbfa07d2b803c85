"""The VAE and its discrete likelihood: proper probabilities, valid bounds, shapes, determinism."""

import math

import pytest
import torch

from genaug.errors import GenaugError
from genaug.models import build_model
from genaug.models.distributions import discretized_logistic_log_prob
from genaug.models.vae import VAE


@pytest.mark.parametrize("mean,log_scale", [(0.0, -2.0), (0.9, -7.0), (-1.0, 0.5), (0.3, -5.0), (1.2, -3.0)])
def test_discretized_logistic_sums_to_one_over_all_256_values(mean, log_scale):
    x = torch.arange(256, dtype=torch.uint8)
    p = discretized_logistic_log_prob(x, torch.full((256,), mean), torch.full((256,), log_scale)).double().exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert (p >= 0).all()


def test_discretized_logistic_random_parameters_sum_to_one():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(50, generator=g) * 2 - 1
    log_scales = torch.rand(50, generator=g) * 6 - 6
    x = torch.arange(256, dtype=torch.uint8)[:, None].expand(256, 50)
    p = discretized_logistic_log_prob(x, means.expand(256, 50), log_scales.expand(256, 50)).double().exp()
    torch.testing.assert_close(p.sum(0), torch.ones(50, dtype=torch.float64), atol=2e-4, rtol=0)


def test_edge_bins_take_the_tails():
    # A logistic centred far below -1 puts nearly all mass in the 0 bin.
    lp = discretized_logistic_log_prob(torch.tensor([0, 255], dtype=torch.uint8), torch.tensor([-3.0, -3.0]), torch.tensor([-2.0, -2.0]))
    assert lp[0].exp() > 0.999 and lp[1].exp() < 1e-6


@pytest.mark.parametrize("shape,classes", [((1, 8, 8), 0), ((1, 28, 28), 0), ((3, 32, 32), 0), ((1, 7, 9), 0), ((1, 8, 8), 10)])
def test_shapes_and_dtypes(shape, classes):
    model = build_model("vae", shape, classes)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    y = torch.arange(5) % classes if classes else None
    nll = model.nll(x, y)
    assert nll.shape == (5,) and torch.isfinite(nll).all() and (nll > 0).all()
    z = model.encode(x)
    assert z.shape == (5, model.config.latent_dim)
    decoded = model.decode(z, y)
    assert decoded.shape == (5, *shape) and decoded.dtype == torch.uint8
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, *shape) and samples.dtype == torch.uint8


def test_wrong_input_shape_is_a_clear_error():
    model = VAE((1, 8, 8))
    with pytest.raises(GenaugError, match="image-size"):
        model.nll(torch.zeros(2, 1, 9, 9, dtype=torch.uint8))


@pytest.fixture(scope="module")
def trained(digits):
    from genaug.train import TrainConfig, train

    model = VAE(digits.shape)
    train(model, digits.images, config=TrainConfig(epochs=5, progress=False))
    return model


def test_iwae_bound_is_no_looser_than_the_elbo(trained, digits):
    x = digits.images[:256]
    with torch.inference_mode():
        elbo = trained.nll(x, iwae_k=1, generator=torch.Generator().manual_seed(0)).mean()
        iwae = trained.nll(x, iwae_k=16, generator=torch.Generator().manual_seed(0)).mean()
        iwae64 = trained.nll(x, iwae_k=64, generator=torch.Generator().manual_seed(0)).mean()
    # Lower nll = tighter bound; it tightens with k (Burda et al. 2016).
    assert iwae <= elbo + 1e-3
    assert iwae64 <= iwae + 0.05


def test_nll_is_reproducible_with_a_generator(trained, digits):
    x = digits.images[:32]
    a = trained.nll(x, iwae_k=4, generator=torch.Generator().manual_seed(3))
    b = trained.nll(x, iwae_k=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_nll_is_an_upper_bound_in_sensible_units(trained, digits):
    bpd = trained.nll(digits.images[:256]).mean().item() / (64 * math.log(2))
    # Learned digits are far better than uniform 8-bit noise (8 bits/dim).
    assert 0 < bpd < 6


def test_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = VAE((1, 8, 8))
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8) // 64 * 64
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.training_losses(x).loss.item()
    for _ in range(30):
        loss = model.training_losses(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_sampling_is_reproducible_and_respects_temperature(trained):
    a = trained.sample(8, generator=torch.Generator().manual_seed(1))
    b = trained.sample(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    cold = trained.sample(200, generator=torch.Generator().manual_seed(2), temperature=0.01).float()
    warm = trained.sample(200, generator=torch.Generator().manual_seed(2), temperature=1.0).float()
    # Near-zero temperature decodes (almost) the same point every time.
    assert cold.std(0).mean() < warm.std(0).mean()
