"""PixelCNN and gated PixelCNN: causal in raster order, exactly normalised, and
samplers that draw from the distribution the models score with."""

import math

import pytest
import torch

from genaug.errors import GenaugError
from genaug.models.gated_pixelcnn import GatedPixelCNN
from genaug.models.masked import MASK_KINDS, MaskedConv2d
from genaug.models.pixelcnn import PixelCNN

FAMILIES = [PixelCNN, GatedPixelCNN]
# Widths a multiple of 3: every colour group gets the same share of channels.
TINY = {"channels": 12, "layers": 2, "head_channels": 12}


@pytest.fixture(autouse=True)
def one_thread():
    # Tensors here are tiny: extra threads only add synchronisation, which on a
    # busy 2-core machine made this file 8x slower (OpenMP threads spin-wait).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cls, shape, num_classes=0, seed=0, sharpen=1.0):
    """A tiny model; `sharpen` scales every weight so the conditionals are far from
    uniform (a near-uniform model would hide a leak in a sum-to-one check)."""
    torch.manual_seed(seed)
    model = cls(shape, num_classes, **TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpen)
    return model


def raster_index(shape):
    """[C, H, W] position of each subpixel in the order the models predict them: rows, columns, R -> G -> B."""
    c, h, w = shape
    return (torch.arange(h)[:, None] * w + torch.arange(w)[None, :])[None] * c + torch.arange(c)[:, None, None]


def input_gradient(model, shape, subpixel, seed=1):
    """Gradient of (randomly weighted) logits of `subpixel` (c, i, j) of image 0 of a random
    batch of 2 w.r.t. every input subpixel of the batch."""
    torch.manual_seed(seed)
    u = (torch.rand(2, *shape) * 2 - 1).requires_grad_()
    c, i, j = subpixel
    logits = model(u)[0, :, c, i, j]
    (logits * torch.randn(256)).sum().backward()
    return u.grad


def all_images(shape):
    """Every uint8 image of a 2-subpixel shape, [65536, *shape]."""
    values = torch.arange(256, dtype=torch.uint8)
    pairs = torch.cartesian_prod(values, values)
    return pairs.view(-1, *shape)


# -- causality -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize(
    "shape,subpixels",
    [
        ((1, 5, 6), [(0, 0, 0), (0, 0, 1), (0, 2, 3), (0, 4, 5)]),
        ((3, 4, 5), [(0, 0, 0), (1, 0, 0), (2, 0, 1), (0, 2, 3), (1, 2, 3), (2, 3, 4)]),
    ],
)
def test_logits_depend_only_on_earlier_subpixels(cls, shape, subpixels):
    model = tiny(cls, shape)
    order = raster_index(shape)
    for c, i, j in subpixels:
        t = order[c, i, j]
        seen = torch.zeros(shape, dtype=torch.bool)
        for seed in range(3):
            grad = input_gradient(model, shape, (c, i, j), seed=seed)
            # Exactly zero, not small: the current subpixel and every later one are masked out.
            assert (grad[0][order >= t] == 0).all(), f"subpixel {(c, i, j)} sees itself or a later subpixel"
            # Images of a batch never see each other.
            assert (grad[1] == 0).all()
            seen |= grad[0] != 0
        if c > 0 or j > 0:
            # Not vacuous: the subpixel just before (earlier colour, or the pixel to the left)
            # is seen, at one of three random inputs at least (a ReLU may be off at one).
            before = (c - 1, i, j) if c > 0 else (shape[0] - 1, i, j - 1)
            assert seen[before], f"subpixel {(c, i, j)} does not see {before}"


def test_gated_pixelcnn_sees_the_row_above_where_pixelcnn_is_blind():
    shape, (i, j) = (1, 5, 8), (3, 1)
    gated_model, plain_model = tiny(GatedPixelCNN, shape), tiny(PixelCNN, shape)
    gated = sum(input_gradient(gated_model, shape, (0, i, j), seed)[0, 0].abs() for seed in range(3))
    plain = sum(input_gradient(plain_model, shape, (0, i, j), seed)[0, 0].abs() for seed in range(3))
    assert gated[i - 1, j + 1] != 0 and plain[i - 1, j + 1] != 0
    # Four columns right in the row above: the PixelCNN's blind spot (its 7x7 mask-A
    # layer reaches three, and mask-B layers only reach further right in higher rows).
    assert gated[i - 1, j + 4] != 0
    assert plain[i - 1, j + 4] == 0


# -- an exact, normalised likelihood ---------------------------------------------------------


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_probabilities_of_all_65536_two_pixel_images_sum_to_one(cls, num_classes):
    shape = (1, 1, 2)
    model = tiny(cls, shape, num_classes, sharpen=3.0)
    x = all_images(shape)
    y = torch.full((len(x),), 2) if num_classes else None
    with torch.inference_mode():
        log_p = -model.nll(x, y).double()
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-3)
    # Not vacuous: the sharpened model is far from uniform.
    assert log_p.max() - log_p.min() > 5.0


@pytest.mark.parametrize("cls", FAMILIES)
def test_colour_images_with_a_fixed_red_value_sum_to_its_probability(cls):
    # 256^3 colour pixels are too many to enumerate; fixing R, the 65,536 (G, B)
    # completions must add up to p(R = r), which the R logits give directly.
    shape, r = (3, 1, 1), 77
    model = tiny(cls, shape, sharpen=3.0)
    gb = all_images((2, 1, 1))
    x = torch.cat([torch.full((len(gb), 1, 1, 1), r, dtype=torch.uint8), gb], dim=1)
    with torch.inference_mode():
        log_p = -model.nll(x).double()
        log_p_red = torch.log_softmax(model.logits(x[:1]).double()[0, :, 0, 0, 0], 0)[r]
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(log_p_red.item(), abs=1e-3)


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 6, 5), (3, 4, 4)])
def test_nll_and_training_loss_agree(cls, shape):
    model = tiny(cls, shape)
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    nll = model.nll(x)
    assert nll.shape == (4,) and nll.dtype == torch.float32
    assert torch.isfinite(nll).all() and (nll > 0).all()
    losses = model.training_losses(x)
    dims = math.prod(shape)
    # The loss is nats per dimension, so one learning rate fits every image size.
    assert (losses.loss * dims).item() == pytest.approx(nll.mean().item(), rel=1e-5)
    torch.testing.assert_close(losses.per_image * dims, nll, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(losses.nll, nll.detach(), rtol=1e-5, atol=1e-4)
    assert not losses.nll.requires_grad and losses.loss.requires_grad
    # Exact likelihood: scoring twice gives the same value (no sampling inside).
    torch.testing.assert_close(model.nll(x), nll, rtol=0, atol=0)


@pytest.mark.parametrize("cls", FAMILIES)
def test_declares_an_exact_likelihood_sampling_and_completion_without_latents(cls):
    assert cls.likelihood == "exact" and cls.latent == "none" and cls.nll_options == {}
    assert cls.capabilities() == {"nll", "sample", "complete"}


@pytest.mark.parametrize("cls", FAMILIES)
def test_logits_stay_float32_under_bf16_autocast(cls):
    model = tiny(cls, (1, 4, 4))
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.logits(x)
        nll = model.nll(x)
    assert logits.dtype == torch.float32 and nll.dtype == torch.float32
    # bf16 convolutions are coarse, but the softmax over 256 values is not: close to float32.
    torch.testing.assert_close(nll, model.nll(x), rtol=0.02, atol=0.0)


@pytest.mark.parametrize("cls", FAMILIES)
def test_adam_steps_on_a_fixed_batch_lower_the_loss(cls):
    shape = (1, 6, 6)
    model = tiny(cls, shape)
    x = (torch.randint(0, 4, (16, *shape), generator=torch.Generator().manual_seed(0)) * 85).to(torch.uint8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.training_losses(x).loss.item()
    for _ in range(20):
        loss = model.training_losses(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Four values used out of 256: even 20 steps should cut well below ln(256) = 5.55 nats/dim.
    assert loss.item() < first - 1.0


# -- sampling ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 3, 4)])
def test_samples_are_uint8_images_reproducible_from_a_seed(cls, shape):
    model = tiny(cls, shape)
    a = model.sample(3, generator=torch.Generator().manual_seed(7))
    b = model.sample(3, generator=torch.Generator().manual_seed(7))
    c = model.sample(3, generator=torch.Generator().manual_seed(8))
    assert a.shape == (3, *shape) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("cls", FAMILIES)
def test_samples_follow_the_distribution_the_model_scores(cls):
    # On 2-pixel images the exact distribution is enumerable: the mean nll of
    # samples must match its entropy, and colder samples must be likelier.
    shape, n = (1, 1, 2), 20_000
    model = tiny(cls, shape, sharpen=3.0)
    with torch.inference_mode():
        nll_all = model.nll(all_images(shape)).double()
    p = torch.exp(-nll_all)
    entropy = (p * nll_all).sum()
    stderr = torch.sqrt((p * (nll_all - entropy) ** 2).sum() / n)
    warm = model.sample(n, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        warm_nll = model.nll(warm).double().mean()
    assert abs(warm_nll - entropy) < 5 * stderr
    # The first subpixel's empirical marginal matches the model's (total variation).
    marginal = p.view(256, 256).sum(1)
    empirical = torch.bincount(warm[:, 0, 0, 0].long(), minlength=256).double() / n
    assert 0.5 * (marginal - empirical).abs().sum() < 0.05
    cold = model.sample(1000, generator=torch.Generator().manual_seed(0), temperature=0.3)
    with torch.inference_mode():
        assert model.nll(cold).mean() < warm_nll - 1.0


@pytest.mark.parametrize("cls", FAMILIES)
def test_the_sampler_may_run_on_the_rows_filled_so_far(cls):
    # The sampler feeds rows 0..i only; that is exact because logits of a row never read lower rows.
    model = tiny(cls, (3, 5, 4))
    x = torch.randint(0, 256, (2, 3, 5, 4), dtype=torch.uint8)
    full = model.logits(x)
    for rows in (1, 3):
        torch.testing.assert_close(model.logits(x[:, :, :rows]), full[:, :, :, :rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", FAMILIES)
def test_progress_reports_whole_images_adding_up_to_n(cls):
    calls = []
    tiny(cls, (1, 4, 3)).sample(6, generator=torch.Generator().manual_seed(0), progress=calls.append)
    assert sum(calls) == 6 and all(isinstance(k, int) and k > 0 for k in calls)
    assert len(calls) == 4  # once per pixel row


@pytest.mark.parametrize("cls", FAMILIES)
def test_a_conditional_model_scores_and_samples_by_class(cls):
    shape = (1, 4, 4)
    model = tiny(cls, shape, num_classes=3, sharpen=3.0)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    zeros, ones = torch.zeros(5, dtype=torch.long), torch.ones(5, dtype=torch.long)
    assert not torch.allclose(model.nll(x, zeros), model.nll(x, ones))
    y = torch.tensor([0, 1, 2, 0])
    seeded = lambda labels: model.sample(4, labels, generator=torch.Generator().manual_seed(3))  # noqa: E731
    assert torch.equal(seeded(y), seeded(y))
    # Same seed, other classes: the class changes what is drawn.
    assert not torch.equal(seeded(y), seeded((y + 1) % 3))
    # Without labels the classes are drawn from the generator too, so still reproducible.
    assert torch.equal(seeded(None), seeded(None))
    with pytest.raises(GenaugError, match="labels must be in 0..2"):
        model.sample(2, torch.tensor([0, 3]))


# -- construction and input errors ------------------------------------------------------------


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("option", ["channels", "layers", "head_channels"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "8", None, 10**6])
def test_an_option_out_of_range_is_an_error_naming_it(cls, option, value):
    with pytest.raises(GenaugError, match=f"option {option} must be an integer in 1\\.\\."):
        cls((1, 8, 8), **{option: value})


@pytest.mark.parametrize("cls", FAMILIES)
def test_built_on_the_meta_device_and_rebuilt_from_weights_alone(cls):
    # The checkpoint loader builds a skeleton on the meta device, then loads
    # weights into a fresh model: the masks are derived, not stored.
    with torch.device("meta"):
        skeleton = cls((3, 4, 4), 2, **TINY)
    model = tiny(cls, (3, 4, 4), num_classes=2, seed=0)
    state = model.state_dict()
    assert set(state) == set(skeleton.state_dict()) and not any("mask" in k for k in state)
    rebuilt = cls((3, 4, 4), 2, **model.init_args())
    rebuilt.load_state_dict(state)
    x = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    torch.testing.assert_close(rebuilt.nll(x, y), model.nll(x, y), rtol=0, atol=0)
    assert model.init_args() == TINY


@pytest.mark.parametrize("cls", FAMILIES)
def test_bad_inputs_are_one_line_errors(cls):
    model = tiny(cls, (1, 4, 4))
    with pytest.raises(GenaugError, match="uint8"):
        model.nll(torch.zeros(2, 1, 4, 4))
    with pytest.raises(GenaugError, match="image-size"):
        model.nll(torch.zeros(2, 1, 5, 5, dtype=torch.uint8))
    with pytest.raises(GenaugError, match="takes no scoring option iwae_k"):
        model.nll(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), iwae_k=4)
    with pytest.raises(GenaugError, match="temperature"):
        model.sample(2, temperature=0.0)


# -- the fast (cached) sampler ------------------------------------------------------------------


def exact(cls, shape, num_classes=0):
    """A tiny float64 model far from uniform: a cache answering from stale or missing
    inputs would show as a difference far above float64 rounding."""
    return tiny(cls, shape, num_classes, sharpen=3.0).double()


def check_every_answer(model, n, y=None, known=None, keep=None, *, every_colour=True, seed=0):
    """Drive the fast session as the sampler does (pixels in raster order, a pixel every image
    keeps written without a question) and compare each `params(i, j)` with a full pass of the
    whole canvas. With `every_colour` False it asks once per pixel and then writes every colour,
    as a family drawing a pixel's colours jointly would. Returns the number of answers checked."""
    c, h, w = model.image_shape
    g = torch.Generator().manual_seed(seed)
    kept_whole = torch.zeros(h, w, dtype=torch.bool) if keep is None else keep.all(1).all(0)
    checked = 0
    with torch.inference_mode():
        session = model.fast_session(n, y, known, keep)
        for i in range(h):
            for j in range(w):
                if kept_whole[i, j]:
                    for k in range(c):
                        session.write(i, j, k, session.canvas[:, k, i, j])
                    continue
                for k in range(c):
                    if every_colour or k == 0:
                        answer = session.params(i, j)
                        full = model.pixel_params(session.canvas, y)[..., i, j]
                        # Every colour, not only the one about to be drawn.
                        torch.testing.assert_close(answer, full, rtol=1e-9, atol=1e-9)
                        checked += 1
                    session.write(i, j, k, torch.randint(256, (n,), generator=g))
    return checked


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 4, 5)], ids=["grey", "rgb"])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_the_fast_session_answers_as_a_full_pass_at_every_step(cls, shape, num_classes):
    model = exact(cls, shape, num_classes)
    y = torch.tensor([2, 0, 1]) if num_classes else None
    c, h, w = shape
    assert check_every_answer(model, 3, y) == c * h * w
    # A conditional model's answers come from the class's biases: other classes, other answers.
    if num_classes:
        with torch.inference_mode():
            first = [model.fast_session(3, labels).params(0, 0) for labels in (y, (y + 1) % 3)]
        assert (first[0] - first[1]).abs().max() > 1e-3


@pytest.mark.parametrize("cls", FAMILIES)
def test_the_fast_session_completes_images_from_the_kept_subpixels(cls):
    # Scattered per-image, per-subpixel masks, plus a whole row and the last pixel kept by every
    # image: those are written without a question, so the caches must catch up on them.
    shape = (3, 5, 4)
    model = exact(cls, shape)
    known = torch.randint(0, 256, (3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    keep = torch.rand(3, *shape, generator=torch.Generator().manual_seed(3)) < 0.5
    keep[:, :, 1] = True
    keep[:, :, 3, 1:3] = True
    keep[:, :, -1, -1] = True
    assert check_every_answer(model, 3, known=known, keep=keep) == 3 * (20 - 4 - 2 - 1)


@pytest.mark.parametrize("cls", FAMILIES)
def test_the_fast_session_answers_a_family_that_asks_once_per_pixel(cls):
    # A family drawing a pixel's colours jointly asks once, then writes them all: the caches
    # of that pixel are then stale until the next question, which must bring them up to date.
    model = exact(cls, (3, 4, 4))
    assert check_every_answer(model, 2, every_colour=False) == 16


@pytest.mark.parametrize("cls", FAMILIES)
def test_writing_red_changes_the_green_logits_in_the_cache_as_in_a_full_pass(cls):
    shape, (i, j) = (3, 3, 4), (1, 2)
    model = exact(cls, shape)
    canvas = torch.randint(0, 256, (2, *shape), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    with torch.inference_mode():
        session = model.fast_session(2, None)
        for q in range(i * shape[2] + j):  # every earlier pixel, as drawn
            for k in range(3):
                session.write(*divmod(q, shape[2]), k, canvas[:, k, q // shape[2], q % shape[2]])
        before = session.params(i, j).clone()
        for red in (100, 200):  # the canvas starts at 0: each value is a change
            session.write(i, j, 0, torch.full((2,), red))
            after = session.params(i, j)
            full = model.pixel_params(session.canvas)[..., i, j]
            torch.testing.assert_close(after, full, rtol=1e-9, atol=1e-9)
            # R's own logits never see R; G's and B's see it, through the centre taps.
            torch.testing.assert_close(after[:, :, 0], before[:, :, 0], rtol=0, atol=1e-12)
            assert (after[:, :, 1] - before[:, :, 1]).abs().max() > 1e-3
            before = after.clone()


def test_a_masked_convolution_at_one_pixel_is_its_window_times_the_window_weight():
    torch.manual_seed(0)
    for kernel, centre, rows in [((7, 7), None, 4), ((3, 3), None, 2), ((1, 4), (0, 3), 1), ((1, 1), None, 1)]:
        for kind in MASK_KINDS:
            conv = MaskedConv2d(6, 9, kernel, kind=kind, colours=3, centre=centre).double()
            ci, cj = centre if centre is not None else (kernel[0] // 2, kernel[1] // 2)
            x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
            full = conv(x)  # unpadded: output (a, b) has its centre tap at input (a + ci, b + cj)
            a, b = 1, 1
            window = x[:, :, a : a + rows, b : b + kernel[1]].permute(0, 2, 3, 1).reshape(2, -1)
            at_pixel = window @ conv.window_weight(rows) + conv.bias
            torch.testing.assert_close(at_pixel, full[:, :, a, b], rtol=1e-12, atol=1e-12)
            # The rows left out hold only closed taps.
            assert rows == ci + 1 and (conv.mask[:, :, rows:] == 0).all()
