"""PixelCNN++: a normalised discretized logistic mixture with colours coupled to
the true earlier values, a network that sees exactly the pixels before each one,
a sampler that draws from the likelihood, and a cached session that gives the
network's parameters at every step."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from genaug.errors import GenaugError
from genaug.models.autoregressive import NaiveSession, PixelSession
from genaug.models.distributions import (
    couple_means,
    discretized_logistic_log_prob,
    discretized_logistic_mixture_log_prob,
    logistic_mixture_channels,
    split_logistic_mixture,
)
from genaug.models.pixelcnnpp import CachedSession, PixelCNNPlusPlus

TINY = {"channels": 8, "resnets": 1, "mixtures": 2, "dropout": 0.0}
VALUES = torch.arange(256, dtype=torch.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    # Tensors here are tiny: extra threads only add synchronisation on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(shape, num_classes=0, seed=0, sharpen=2.0, **options):
    """A tiny float64 model in eval mode whose weights are scaled by `sharpen`, so its
    conditionals are far from uniform (a leak would hide in near-uniform ones)."""
    torch.manual_seed(seed)
    model = PixelCNNPlusPlus(shape, num_classes, **{**TINY, **options}).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpen)
    return model


def largest_gap(a, b) -> float:
    """max |a - b| (torch.testing.assert_close would import torch.distributed: seconds, once)."""
    assert a.shape == b.shape
    return (a.double() - b.double()).abs().max().item()


def random_params(colours, mixtures, seed, n=1, spread=2.0):
    """[n, P] float64 mixture parameters with log-scales around -2 (bins resolved)."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, logistic_mixture_channels(colours, mixtures), generator=g, dtype=torch.float64) * spread
    role = torch.arange(params.shape[1]) // mixtures  # 0 logit, 1..C means, C+1..2C log-scales, then coefficients
    scales = (role > colours) & (role <= 2 * colours)
    params[:, scales] = params[:, scales] * 0.5 - 2.0
    return params


def log_prob(pixels, params, mixtures):
    """[N] log p of N pixels uint8 [N, C] under one pixel's params [1, P]."""
    x = pixels.T.reshape(1, pixels.shape[1], 1, -1)
    params = params[..., None, None].expand(-1, -1, 1, x.shape[-1])
    return discretized_logistic_mixture_log_prob(x, params, mixtures)[0, 0, 0]


def marginal_params(params, colours, mixtures, keep):
    """The parameters of the first `keep` colours' mixture within a `colours` one (same logits,
    means, scales and the coefficients among those colours: they come first)."""
    parts = params.reshape(params.shape[0], -1, mixtures)
    pairs = keep * (keep - 1) // 2
    roles = [parts[:, :1], parts[:, 1 : 1 + keep], parts[:, 1 + colours : 1 + colours + keep],
             parts[:, 1 + 2 * colours : 1 + 2 * colours + pairs]]  # fmt: skip
    return torch.cat(roles, 1).reshape(params.shape[0], -1)


# -- the likelihood --------------------------------------------------------------------


@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
@settings(max_examples=25, deadline=None)
def test_a_grey_mixture_puts_probability_one_on_the_256_values(seed, mixtures):
    params = random_params(1, mixtures, seed)
    total = torch.logsumexp(log_prob(VALUES[:, None], params, mixtures), 0)
    assert abs(total.item()) < 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_an_rgb_pixels_joint_sums_to_one_over_all_256_cubed_values(seed):
    # Summed B, then G, then R: marginalising B of the RGB mixture gives the (R, G) mixture
    # with the same components (checked at every R with a random G, and at the corners),
    # summing G of that gives the R mixture, and the R mixture sums to one; so does the joint.
    m = 3
    params = random_params(3, m, seed)
    rg_params = marginal_params(params, 3, m, 2)
    g = torch.Generator().manual_seed(seed)
    rg = torch.stack([VALUES, torch.randint(0, 256, (256,), generator=g, dtype=torch.uint8)], 1)
    rg = torch.cat([rg, torch.tensor([[0, 0], [0, 255], [255, 0], [255, 255]], dtype=torch.uint8)])
    rgb = torch.cat([rg.repeat_interleave(256, 0), VALUES.repeat(len(rg))[:, None]], 1)
    summed_b = torch.logsumexp(log_prob(rgb, params, m).view(len(rg), 256), 1)
    assert largest_gap(summed_b, log_prob(rg, rg_params, m)) < 1e-10
    all_rg = torch.cartesian_prod(VALUES, VALUES)
    summed_g = torch.logsumexp(log_prob(all_rg, rg_params, m).view(256, 256), 1)
    r_params = marginal_params(params, 3, m, 1)
    assert largest_gap(summed_g, log_prob(VALUES[:, None], r_params, m)) < 1e-10
    assert abs(torch.logsumexp(summed_g, 0).item()) < 1e-10
    # Not vacuous: the coupling moves G's distribution with R.
    assert (summed_b - log_prob(rg[:, :1], marginal_params(params, 3, m, 1), m)).std() > 0.1


def test_one_component_is_the_product_of_discretized_logistics_coupled_to_the_true_earlier_colours():
    params = random_params(3, 1, seed=4, n=64)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (64, 3), generator=g, dtype=torch.uint8)
    _, means, log_scales, coeffs = split_logistic_mixture(params, 3, 1)
    a, b, c = coeffs[:, :, 0].T
    unit = x.double() / 127.5 - 1
    mean_g = means[:, 1, 0] + a * unit[:, 0]
    mean_b = means[:, 2, 0] + b * unit[:, 0] + c * unit[:, 1]
    expected = sum(
        discretized_logistic_log_prob(x[:, k], mean, log_scales[:, k, 0]).double()
        for k, mean in enumerate([means[:, 0, 0], mean_g, mean_b])
    )
    got = discretized_logistic_mixture_log_prob(x[..., None, None], params[..., None, None], 1)[:, 0, 0, 0]
    # The existing single logistic works in float32: agreement to its rounding.
    assert largest_gap(got, expected) < 1e-4


def test_each_colours_mean_reads_the_earlier_colours_and_never_itself_or_later_ones():
    g = torch.Generator().manual_seed(0)
    means, coeffs = torch.randn(1, 3, generator=g), torch.rand(1, 3, generator=g) * 0.8 + 0.1
    jacobian = torch.autograd.functional.jacobian(lambda u: couple_means(means, coeffs, u), torch.zeros(1, 3))[0, :, 0]
    assert (jacobian.triu() == 0).all()  # colour k's mean ignores colours k, k+1, ...
    assert (jacobian.tril(-1)[[1, 2, 2], [0, 0, 1]] != 0).all()  # ... and reads every earlier one


def test_extreme_parameters_give_finite_log_probs_with_the_edge_bins_taking_the_tails():
    m = 2
    params = random_params(3, m, seed=1, n=4)
    role = torch.arange(params.shape[1]) // m
    means = torch.tensor([-60.0, 60.0, 0.0, 3.0], dtype=torch.float64)  # one per parameter set
    params[:, (role >= 1) & (role <= 3)] = means[:, None].expand(4, 6)
    params[:, (role >= 4) & (role <= 6)] = -40.0  # far below the clamp at -7
    params.requires_grad_()
    x = torch.tensor([[0, 0, 0], [255, 255, 255], [0, 128, 255], [1, 254, 17]], dtype=torch.uint8)
    # Every pixel under every parameter set: entry 4 * set + pixel.
    lp = discretized_logistic_mixture_log_prob(
        x.repeat(4, 1)[..., None, None], params.repeat_interleave(4, 0)[..., None, None], m
    ).flatten()
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    lp.sum().backward()
    assert torch.isfinite(params.grad).all()  # training never meets a NaN there either
    # Means far below -1 put (almost) all mass in the 0 bin, far above in the 255 bin.
    assert lp[0].item() > -1e-9 and lp[5].item() > -1e-9


def test_the_tails_are_exact_in_float32():
    # A bin 20 logistic scales from the mean: sigmoid(p) - sigmoid(m) would cancel in float32,
    # the factorised form keeps it to float32 rounding of a float64 reference.
    m = 1
    params = torch.zeros(1, logistic_mixture_channels(1, m), dtype=torch.float64)
    params[0, 2] = math.log(2.0 / 255.0)  # scale of two bins
    x = torch.tensor([[200]], dtype=torch.uint8)
    reference = log_prob(x, params, m)
    got = log_prob(x, params.float(), m)
    assert got.dtype == torch.float32 and -100 < reference.item() < -20
    assert abs(got.item() - reference.item()) < 1e-5 * abs(reference.item())


def test_log_probs_are_float32_under_bf16_autocast():
    model = tiny((3, 4, 4)).float()
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    plain = model.log_probs(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.log_probs(x)
    assert plain.dtype == autocast.dtype == torch.float32
    assert largest_gap(autocast, plain) < 0.5  # nats per pixel: bf16 convolutions, float32 likelihood


# -- the network -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 3), (1, 3, 1), (1, 5, 7), (3, 4, 5), (1, 5, 8)])
def test_params_depend_on_exactly_the_pixels_before_in_raster_order(shape):
    # Zero gradient at and after the pixel (causal), non-zero at every earlier one (no blind spot).
    c, h, w = shape
    model = tiny(shape)
    for i, j in {(0, 0), (h // 2, w // 2), (h - 1, 0), (h - 1, w - 1)}:
        u = (torch.rand(2, *shape, dtype=torch.float64) * 2 - 1).requires_grad_()
        out = model.net(u)[0, :, i, j]
        (out * torch.randn_like(out)).sum().backward()
        seen = (u.grad[0] != 0).any(0).flatten()
        before = torch.arange(h * w) < i * w + j
        assert torch.equal(seen, before), f"pixel {(i, j)} of {shape}"
        assert (u.grad[1] == 0).all()  # images of a batch never see each other


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 28, 28), (3, 3, 4), (3, 32, 32), (3, 5, 9)])
def test_params_have_one_mixture_per_pixel_in_the_models_dtype(shape):
    c, h, w = shape
    model = tiny(shape, mixtures=3)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    params = model.pixel_params(x)
    assert params.shape == (2, 3 * (1 + 2 * c + c * (c - 1) // 2), h, w) and params.dtype == torch.float64
    assert model.float().pixel_params(x).dtype == torch.float32
    assert model.log_probs(x).shape == (2, 1, h, w)


def test_a_conditional_models_class_changes_the_likelihood_and_no_class_leaves_it_out():
    shape = (3, 4, 4)
    model = tiny(shape, num_classes=3, sharpen=3.0)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    per_class = [model.nll(x, torch.full((2,), k)) for k in range(3)]
    assert (per_class[0] - per_class[1]).abs().min() > 1e-3 and (per_class[1] - per_class[2]).abs().min() > 1e-3
    without = model.nll(x)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.zero_()
    assert largest_gap(without, model.nll(x, torch.zeros(2, dtype=torch.long))) < 1e-10


def test_dropout_is_active_in_training_mode_only():
    model = tiny((1, 6, 6), dropout=0.5).float()
    x = torch.randint(0, 256, (2, 1, 6, 6), dtype=torch.uint8)
    model.train()
    assert not torch.equal(model.nll(x), model.nll(x))
    assert isinstance(model.fast_session(2, None), NaiveSession)  # the cached session runs the eval network
    model.eval()
    assert torch.equal(model.nll(x), model.nll(x))
    assert isinstance(model.fast_session(2, None), CachedSession)


def test_a_few_adam_steps_lower_the_loss_on_rgb_images():
    torch.manual_seed(0)
    model = PixelCNNPlusPlus((3, 6, 6), **TINY)
    noise = torch.randint(-20, 21, (8, 3, 6, 6))
    x = (torch.linspace(0, 255, 6).expand(8, 3, 6, 6) + noise).clamp(0, 255).to(torch.uint8)
    opt = torch.optim.Adam(model.parameters(), lr=model.default_training()["lr"])
    first = model.training_losses(x).loss.item()
    for _ in range(8):
        opt.zero_grad()
        model.training_losses(x).loss.backward()
        opt.step()
    assert model.training_losses(x).loss.item() < first - 0.1  # nats per subpixel


@pytest.mark.parametrize(
    "option,value",
    [("channels", 0), ("channels", 2.0), ("resnets", "2"), ("resnets", 65), ("mixtures", True), ("mixtures", 0),
     ("dropout", 1.0), ("dropout", -0.1), ("dropout", "0.1"), ("dropout", True), ("dropout", float("nan"))],
)  # fmt: skip
def test_invalid_options_are_one_line_errors_naming_the_option(option, value):
    with pytest.raises(GenaugError) as e:
        PixelCNNPlusPlus((1, 8, 8), **{option: value})
    assert f"option {option} " in str(e.value) and "\n" not in str(e.value)


def test_options_are_stored_as_init_args_and_rebuild_the_same_model():
    model = PixelCNNPlusPlus((3, 5, 5), 2, channels=6, resnets=2, mixtures=4, dropout=0.25)
    assert model.init_args() == {"channels": 6, "resnets": 2, "mixtures": 4, "dropout": 0.25}
    with torch.device("meta"):  # checkpoints are checked against a meta build: no values computed
        skeleton = PixelCNNPlusPlus((3, 5, 5), 2, **model.init_args())
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


# -- sampling ----------------------------------------------------------------------------


class OnePixel(PixelSession):
    """n copies of a one-pixel canvas whose parameters are fixed."""

    def __init__(self, model, params, n, known=None, keep=None):
        super().__init__(model, n, None, known, keep)
        self.fixed = params.expand(n, -1)

    def params(self, i, j):
        return self.fixed


def draw(colours, params, mixtures, n, seed=0, temperature=1.0, known=None, keep=None):
    model = PixelCNNPlusPlus((colours, 1, 1), channels=1, resnets=1, mixtures=mixtures).double()
    session = OnePixel(model, params, n, known, keep)
    model.draw_pixel(session, 0, 0, generator=torch.Generator().manual_seed(seed), temperature=temperature)
    return session.canvas[:, :, 0, 0]


def chi_square_p(counts, probs):
    """p-value of the counts against the probabilities, cells with expected counts under 5 pooled."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum(0, keepdim=True)])
    exp = torch.cat([expected[~small], expected[small].sum(0, keepdim=True)])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum().item()
    return chi2.sf(stat, int(keep.sum()) - 1)


@pytest.mark.parametrize("seed", range(3))
def test_drawn_grey_values_follow_the_mixtures_bin_probabilities(seed):
    m, n = 3, 20_000
    params = random_params(1, m, seed)
    drawn = draw(1, params, m, n, seed)[:, 0]
    probs = log_prob(VALUES[:, None], params, m).exp()
    assert chi_square_p(torch.bincount(drawn.long(), minlength=256).double(), probs) > 1e-3


def test_drawn_red_and_green_follow_their_joint_with_green_coupled_to_the_drawn_red():
    m, n = 2, 20_000
    params = random_params(3, m, seed=5)
    drawn = draw(3, params, m, n, seed=5).long()
    # p(R, G) is the two-colour mixture within the RGB one; cells of 16 x 16 values.
    joint = log_prob(torch.cartesian_prod(VALUES, VALUES), marginal_params(params, 3, m, 2), m)
    joint = joint.exp().view(16, 16, 16, 16)  # [R // 16, R % 16, G // 16, G % 16]
    probs = joint.sum((1, 3)).flatten()
    counts = torch.bincount((drawn[:, 0] // 16) * 16 + drawn[:, 1] // 16, minlength=256).double()
    assert chi_square_p(counts, probs) > 1e-3


@pytest.mark.parametrize("kept", [(100, 200), (0, 255)])
def test_blue_is_drawn_given_the_red_and_green_in_the_canvas_where_the_caller_keeps_them(kept):
    m, n = 2, 20_000
    params = random_params(3, m, seed=6)
    known = torch.tensor([*kept, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 1, 1).clone()
    keep = torch.tensor([True, True, False]).view(1, 3, 1, 1).expand(n, 3, 1, 1)
    drawn = draw(3, params, m, n, seed=6, known=known, keep=keep).long()
    assert (drawn[:, 0] == kept[0]).all() and (drawn[:, 1] == kept[1]).all()
    pixels = torch.cat([torch.tensor(kept, dtype=torch.uint8).expand(256, 2), VALUES[:, None]], 1)
    probs = log_prob(pixels, params, m).exp()
    assert chi_square_p(torch.bincount(drawn[:, 2], minlength=256).double(), probs / probs.sum()) > 1e-3


def test_a_low_temperature_draws_the_bin_of_the_most_likely_components_mean():
    m = 4
    params = random_params(3, m, seed=7)
    logits, means, _, coeffs = split_logistic_mixture(params, 3, m)
    best = int(logits.argmax())
    drawn = draw(3, params, m, 50, temperature=1e-4)
    unit = drawn[0].double() / 127.5 - 1
    mean = couple_means(means[:, :, best], coeffs[:, :, best], unit[None])[0]
    expected = ((mean + 1) * 127.5).round().clamp(0, 255)
    assert (drawn == expected.to(torch.uint8)).all()


@pytest.mark.parametrize("shape,num_classes", [((3, 8, 8), 0), ((3, 8, 8), 3), ((1, 7, 9), 0), ((3, 5, 6), 2)])
def test_the_cached_session_gives_the_networks_params_at_every_step(shape, num_classes):
    # Sampling as the sampler does (raster order, one pixel at a time), with the top-left
    # pixels kept whole (their steps are caught up), the params match the naive session's.
    c, h, w = shape
    model = tiny(shape, num_classes, resnets=2, mixtures=3)
    n = 3
    y = torch.arange(n) % num_classes if num_classes else None
    known = torch.randint(0, 256, (n, *shape), dtype=torch.uint8)
    keep = torch.zeros(n, *shape, dtype=torch.bool)
    keep[:, :, 0, : w // 2] = True
    fast, naive = CachedSession(model, n, y, known, keep), NaiveSession(model, n, y, known, keep)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for i in range(h):
            for j in range(w):
                if keep[0, 0, i, j]:
                    for k in range(c):
                        fast.write(i, j, k, known[:, k, i, j])
                        naive.write(i, j, k, known[:, k, i, j])
                    continue
                assert largest_gap(fast.params(i, j), naive.params(i, j)) < 1e-12, (i, j)
                for k in range(c):
                    value = torch.randint(0, 256, (n,), generator=g)
                    fast.write(i, j, k, value)
                    naive.write(i, j, k, value)
    assert torch.equal(fast.canvas, naive.canvas)
