"""PixelRNN (Row LSTM and Diagonal BiLSTM): causal in raster order with colours R -> G -> B,
the receptive fields the paper describes, an exact likelihood, and a cached sampling session
that gives the network's own logits step by step."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genaug.errors import GenaugError
from genaug.models.autoregressive import NaiveSession
from genaug.models.pixelrnn import (
    DiagonalBiLSTM,
    PixelRNN,
    RowLSTM,
    diagonal_bands,
    diagonal_order,
    inverse_order,
)
from genaug.models.registry import build_model

VARIANTS = ["row", "diagonal"]
# Widths a multiple of 3: every colour group gets the same share of channels.
TINY = {"channels": 12, "layers": 2, "head_channels": 12}


@pytest.fixture(autouse=True)
def one_thread():
    # Tensors here are tiny: extra threads only add synchronisation on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(variant, shape, num_classes=0, seed=0, sharpen=1.0, dtype=torch.float32):
    """A tiny model; `sharpen` scales every weight so the conditionals are far from uniform."""
    torch.manual_seed(seed)
    model = PixelRNN(shape, num_classes, variant=variant, **TINY).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(sharpen)
    return model


def raster_index(shape):
    """[C, H, W] position of each subpixel in the order the model predicts them: rows, columns, R -> G -> B."""
    c, h, w = shape
    return (torch.arange(h)[:, None] * w + torch.arange(w)[None, :])[None] * c + torch.arange(c)[:, None, None]


def seen_by(model, shape, subpixels, seeds=3):
    """{subpixel (c, i, j): [2, C, H, W] summed |gradient| of (randomly weighted) logits of that
    subpixel of image 0 w.r.t. every input subpixel of a random batch of 2, over `seeds` inputs}."""
    out = {s: torch.zeros(2, *shape, dtype=torch.float64) for s in subpixels}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        u = (torch.rand(2, *shape, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
        logits = model(u)
        for c, i, j in subpixels:
            weights = torch.randn(256, generator=g, dtype=torch.float64)
            (grad,) = torch.autograd.grad((logits[0, :, c, i, j] * weights).sum(), u, retain_graph=True)
            out[(c, i, j)] += grad.abs()
    return out


# -- causality and receptive fields -------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 5, 6), (3, 4, 5), (1, 1, 7), (3, 5, 1)], ids=str)
def test_every_subpixel_sees_only_earlier_subpixels(variant, shape):
    model = tiny(variant, shape, dtype=torch.float64)
    with torch.no_grad():
        # Every ReLU on (causality holds for any weights): a zero gradient then means no path,
        # not a unit that happens to be off at a position with little context, like (0, 0).
        model.layers[-1].output.bias.add_(10.0)
        model.head[1].bias.add_(10.0)
    order = raster_index(shape)
    subpixels = list(itertools.product(*map(range, shape)))
    seen = seen_by(model, shape, subpixels)
    for (c, i, j), grad in seen.items():
        t = order[c, i, j]
        # Exactly zero, not small: the subpixel itself and every later one are cut off.
        assert (grad[0][order >= t] == 0).all(), f"subpixel {(c, i, j)} sees itself or a later subpixel"
        assert (grad[1] == 0).all()  # images of a batch never see each other
        if t > 0:
            # Not vacuous: the previous colour is seen, else the pixel to the left, else the one above.
            before = (c - 1, i, j) if c > 0 else (shape[0] - 1, i, j - 1) if j > 0 else (shape[0] - 1, i - 1, j)
            assert grad[0][before] > 0, f"subpixel {(c, i, j)} does not see {before}"


def test_the_down_shift_is_what_keeps_the_right_to_left_stream_causal():
    shape, (i, j) = (1, 4, 6), (2, 2)
    model = tiny("diagonal", shape, dtype=torch.float64)
    layer = model.layers[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, TINY["channels"], *shape[1:], generator=g, dtype=torch.float64, requires_grad=True)
    u = (torch.rand(1, *shape, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    left, right = layer.streams(x, None, u)
    right_x, right_u = torch.autograd.grad(right[0, :, i, j].sum(), (x, u), retain_graph=True)
    left_x, left_u = torch.autograd.grad(left[0, :, i, j].sum(), (x, u), allow_unused=True)
    # The right-to-left stream at (i, j) has seen the features and the pixel to its right, and
    # the pixel (i, j) itself: added unshifted, it would leak them into the logits of (i, j).
    assert right_x[0, :, i, j + 1].abs().sum() > 0 and right_x[0, :, i, j - 1].abs().sum() == 0
    assert right_u[0, 0, i, j] != 0 and right_u[0, 0, i, j + 1] != 0 and right_u[0, 0, i, j - 1] == 0
    # The left-to-right stream: the other way round, and the pixels only through the features.
    assert left_x[0, :, i, j + 1].abs().sum() == 0 and left_x[0, :, i, j - 1].abs().sum() > 0
    assert left_u is None or (left_u == 0).all()
    # Shifted down one row, the logits see the pixel above-right but not the one to the right.
    seen = seen_by(model, shape, [(0, i, j)])[(0, i, j)][0, 0]
    assert seen[i, j + 1] == 0 and seen[i, j] == 0
    assert seen[i - 1, j + 1] > 0


def test_the_diagonal_bilstm_sees_every_earlier_pixel_and_the_row_lstm_a_triangle():
    shape, (i, j) = (1, 5, 10), (3, 2)
    earlier = raster_index(shape)[0] < raster_index(shape)[0, i, j]
    diagonal = seen_by(tiny("diagonal", shape, dtype=torch.float64), shape, [(0, i, j)])[(0, i, j)][0, 0]
    row = seen_by(tiny("row", shape, dtype=torch.float64), shape, [(0, i, j)])[(0, i, j)][0, 0]
    # No blind spot: every pixel of the rows above, to the far right, and left of (i, j).
    assert ((diagonal > 0) == earlier).all()
    # The Row LSTM reads the row above at j-1..j+1 per layer step and its 7x7 input layer
    # three columns either side: row i - k is seen up to column j + k + 2 and no further.
    for k in range(1, i + 1):
        edge = j + k + 2
        assert (row[i - k, edge + 1 :] == 0).all()
        assert edge >= shape[2] or row[i - k, edge] > 0  # the edge is reached where it lies in the image
    assert (row[i - 1, j + 4 :] == 0).all() and (diagonal[i - 1, j + 4 :] > 0).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(3, 5, 4), (1, 6, 1), (1, 1, 5)], ids=str)
def test_a_canvas_of_the_first_rows_gives_the_first_rows_logits(variant, shape):
    # The naive sampler feeds rows 0..i only; exact because a row's logits never read lower rows.
    model = tiny(variant, shape, num_classes=2)
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 0])
    full = model.logits(x, y)
    for rows in range(1, shape[1] + 1):
        torch.testing.assert_close(model.logits(x[:, :, :rows], y), full[:, :, :, :rows], rtol=1e-5, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 9))
def test_the_skew_puts_each_diagonal_in_one_block_and_unskews_to_the_image(rows, cols):
    order = diagonal_order(rows, cols)
    image = torch.arange(rows * cols)
    # A permutation, undone exactly by its inverse (skew then unskew is the identity).
    assert torch.equal(torch.sort(order).values, image)
    assert torch.equal(image[order][inverse_order(order)], image)
    # Block d holds the pixels with i + j = d, rows top to bottom, as diagonal_bands says.
    i, j = order // cols, order % cols
    start = 0
    for d, (first, last) in enumerate(diagonal_bands(rows, cols)):
        block = slice(start, start + last - first + 1)
        assert ((i + j)[block] == d).all() and torch.equal(i[block], torch.arange(first, last + 1))
        start += last - first + 1
    assert start == rows * cols


# -- an exact, normalised likelihood ------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_colour_images_with_a_fixed_red_value_sum_to_its_probability(variant):
    # 256^3 colour pixels are too many to enumerate; fixing R, the 65,536 (G, B)
    # completions must add up to p(R = r), which the R logits give directly.
    shape, r = (3, 1, 1), 77
    model = tiny(variant, shape, sharpen=3.0)
    values = torch.arange(256, dtype=torch.uint8)
    gb = torch.cartesian_prod(values, values).view(-1, 2, 1, 1)
    x = torch.cat([torch.full((len(gb), 1, 1, 1), r, dtype=torch.uint8), gb], dim=1)
    with torch.inference_mode():
        log_p = -model.nll(x).double()
        log_p_red = torch.log_softmax(model.logits(x[:1]).double()[0, :, 0, 0, 0], 0)[r]
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(log_p_red.item(), abs=1e-3)
    assert log_p.max() - log_p.min() > 5.0  # not vacuous: far from uniform


@pytest.mark.parametrize("variant", VARIANTS)
def test_adam_steps_on_a_fixed_batch_lower_the_loss(variant):
    shape = (1, 6, 6)
    model = tiny(variant, shape)
    x = (torch.randint(0, 4, (16, *shape), generator=torch.Generator().manual_seed(0)) * 85).to(torch.uint8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.training_losses(x).loss.item()
    for _ in range(20):
        loss = model.training_losses(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Four values used out of 256: 20 steps cut well below ln(256) = 5.55 nats/dim.
    assert loss.item() < first - 1.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_conditional_model_scores_by_class_and_without_labels(variant):
    shape = (3, 3, 3)
    model = tiny(variant, shape, num_classes=3, sharpen=3.0)
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert not torch.allclose(model.nll(x, zeros), model.nll(x, ones))
    # y=None leaves the class bias out: a score of its own, neither class's.
    unlabelled = model.nll(x)
    assert not torch.allclose(unlabelled, model.nll(x, zeros)) and torch.isfinite(unlabelled).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_stay_float32_under_bf16_autocast(variant):
    model = tiny(variant, (1, 4, 4))
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.logits(x)
        nll = model.nll(x)
    assert logits.dtype == torch.float32 and nll.dtype == torch.float32
    torch.testing.assert_close(nll, model.nll(x), rtol=0.02, atol=0.0)


# -- the fast session -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_the_fast_session_gives_the_networks_logits_at_every_step(variant, num_classes):
    # Both sessions get the same writes; every pixel the fast one is asked about must have the
    # logits the whole network gives on the canvas so far, including after pixels that were
    # only written (kept whole by a completion: the sampler never asks about them).
    shape = (3, 4, 5)
    model = tiny(variant, shape, num_classes, sharpen=3.0, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(0)
    known = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=g)
    keep = torch.rand(2, *shape, generator=g) < 0.3  # some subpixels kept, per image
    kept_whole = torch.zeros(shape[1:], dtype=torch.bool)
    kept_whole[0, 1:3] = kept_whole[2, 4] = kept_whole[3, 0] = True
    keep |= kept_whole
    y = torch.tensor([2, 0]) if num_classes else None
    fast, naive = model.fast_session(2, y, known, keep), NaiveSession(model, 2, y, known, keep)
    asked = 0
    with torch.no_grad():
        for i, j in itertools.product(range(shape[1]), range(shape[2])):
            for k in range(shape[0]):
                if not kept_whole[i, j]:
                    expected = naive.params(i, j)[:, :, k]
                    torch.testing.assert_close(fast.params(i, j)[:, :, k], expected, rtol=0, atol=1e-10)
                    asked += 1
                values = torch.randint(0, 256, (2,), generator=g)
                fast.write(i, j, k, values)
                naive.write(i, j, k, values)
    assert torch.equal(fast.canvas, naive.canvas) and asked == 3 * (20 - 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_and_naive_samples_agree_on_a_wide_image(variant):
    # Wider than the tiny shapes of the contract: the right-to-left pass over a whole row and
    # the Row LSTM's row above are exercised at many columns.
    model = tiny(variant, (1, 3, 9), sharpen=3.0, dtype=torch.float64)
    fast = model.sample(3, generator=torch.Generator().manual_seed(4), sampler="fast")
    naive = model.sample(3, generator=torch.Generator().manual_seed(4), sampler="naive")
    assert torch.equal(fast, naive) and len(torch.unique(fast)) > 3


# -- construction and options ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Row", "lstm", "", 3, None, ["row"]])
def test_an_unknown_variant_is_a_one_line_error_naming_the_choices(value):
    with pytest.raises(GenaugError, match=r"^PixelRNN option variant must be one of diagonal, row, got ") as e:
        PixelRNN((1, 8, 8), variant=value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("option", ["channels", "layers", "head_channels"])
@pytest.mark.parametrize("value", [0, -1, 2.0, True, "8", None, 10**6])
def test_an_option_out_of_range_is_an_error_naming_it(option, value):
    with pytest.raises(GenaugError, match=f"^PixelRNN option {option} must be an integer in 1\\.\\."):
        PixelRNN((1, 8, 8), **{option: value})


def test_the_registry_builds_either_variant_and_names_unknown_options():
    assert all(isinstance(m, RowLSTM) for m in build_model("pixelrnn", (1, 4, 4), variant="row").layers)
    assert all(isinstance(m, DiagonalBiLSTM) for m in build_model("pixelrnn", (1, 4, 4)).layers)  # the default
    with pytest.raises(GenaugError, match="unknown option.*kernel"):
        build_model("pixelrnn", (1, 4, 4), kernel=3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_built_on_the_meta_device_and_rebuilt_from_weights_alone(variant):
    # The checkpoint loader builds a skeleton on the meta device, then loads weights into a
    # fresh model: masks are derived, not stored, and init_args rebuild the same network.
    with torch.device("meta"):
        skeleton = PixelRNN((3, 4, 4), 2, variant=variant, **TINY)
    model = tiny(variant, (3, 4, 4), num_classes=2)
    state = model.state_dict()
    assert set(state) == set(skeleton.state_dict()) and not any("mask" in k for k in state)
    assert model.init_args() == {"variant": variant, **TINY}
    rebuilt = PixelRNN((3, 4, 4), 2, **model.init_args())
    rebuilt.load_state_dict(state)
    x = torch.randint(0, 256, (3, 3, 4, 4), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1])
    torch.testing.assert_close(rebuilt.nll(x, y), model.nll(x, y), rtol=0, atol=0)
