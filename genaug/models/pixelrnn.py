"""PixelRNN: Row LSTM and Diagonal BiLSTM layers with a 256-way softmax per subpixel.

Papers:
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (the Row LSTM and the Diagonal BiLSTM, Sections 3.1-3.2: a
    7x7 mask-A convolution, LSTM layers whose input-to-state convolutions
    are masked, residual connections between layers (3.3), two 1x1 mask-B
    output layers, a 256-way softmax per subpixel, colours R -> G -> B;
    Figure 4 and Table 1).
  * van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
    Decoders" (class conditioning as a learned per-class bias in the gates).
  * Ramachandran et al. 2017, "Fast Generation for Convolutional
    Autoregressive Models" (the idea of the fast sampler: cache every
    layer's past states so a generation step computes the new position only).

The two variants (`variant`):
  * "row" — Row LSTM. The input-to-state is a 1 x 3 convolution along the
    row, masked B; the state-to-state an unmasked 1 x 3 convolution over
    the previous row's hidden state, so a whole row is computed at once,
    rows in sequence. The receptive field is a triangle: from (i, j), row
    i - k is seen up to column j + k + 2 and no further right.
  * "diagonal" — Diagonal BiLSTM. The image is skewed (row i shifted right
    by i) so its diagonals become columns, and the LSTM runs column by
    column: a 1x1 mask-B input-to-state, an unmasked 2 x 1 state-to-state
    over the previous column, so the state at (i, j) reads the states at
    (i-1, j) and (i, j-1). A second direction runs on the mirrored image
    (reading (i-1, j) and (i, j+1)); its output is shifted down one row
    before the two are added, so pixel (i, j) reads it at (i-1, j), which
    has seen rows <= i-1 only. Together they see every earlier pixel.

Colour groups and causality: every feature channel belongs to a colour group
(channel k to k % C, see masked.py), and so do gates, cells and hidden
units (the i, f, o, g gates of unit k and its cell share unit k's group).
The input of group g at a pixel summarises the subpixels before colour g of
that pixel (mask A first, mask B after); the states of strictly earlier
pixels (the row above, the pixel to the left) are read with every group
mixed, which cannot leak. So the logits of colour c at (i, j) are a function
of the subpixels before (c, i, j) only; the tests check it by gradients.

Speed: training and scoring loop once per row (Row LSTM, H steps a layer)
or once per diagonal (Diagonal BiLSTM, H + W - 1 steps a layer, both
directions in one batched matmul); everything else is vectorised over the
batch and the row or diagonal. The fast session (`fast_session`) caches
every layer's states of the row above and of the current row so far, so one
generation step costs one LSTM cell per layer at the new pixel (the
right-to-left direction of a row is run once the row is complete: through
the one-row shift only the rows below read it).

The default variant is "diagonal": it sees the whole context where the Row
LSTM is blind right of its triangle, it is the paper's better model
(CIFAR-10: 3.00 against 3.07 bits/dim), and at the default sizes it costs
little more here: one CPU thread trained about 85-110 images/s at 28x28
against the Row LSTM's 100-120, and on 28x28 grey photo patches it matched
the Row LSTM's test bits/dim at equal CPU time (6.05 against 6.14 after
150 s, 5.34 against 5.33 after 300 s) with a fifth fewer steps, so it is
ahead per step and the gap to the right of the triangle is what it buys.

NOTE: 2 LSTM layers of 16 units and a 32-wide output layer instead of the
paper's 12 layers of 128 units (CIFAR-10): the recurrence is sequential
in the rows (or diagonals), and at this size one CPU thread trains on 28x28
grey images at about a hundred images a second. `channels`, `layers` and
`head_channels` restore larger sizes.
NOTE: the residual stream and the LSTM state have the same width
(`channels`, h; the paper's input map is 2h wide); a 1x1 mask-B
convolution maps the hidden state back to the stream before it is added.
NOTE: the Row LSTM's masked 1 x 3 input-to-state kernel is stored as 1 x 2
(the tap right of the centre is closed by mask B anyway): same function,
a third fewer weights and multiplications.
NOTE: the skewed map is never built: the pixels are gathered diagonal by
diagonal (`diagonal_order`, the skew without its padding) and the LSTM runs
over the blocks, so the padding (half the skewed map at 28x28) costs
nothing, and the states at the image border read zeros (the padding of the
paper's 2 x 1 convolution) rather than states fed by the padding.
NOTE: the first layer's right-to-left direction also reads the pixels
themselves (a 1x1 convolution, unmasked: after the down shift only later
rows read it). With the paper's layers alone the last pixel of the row
above, (i-1, W-1), is a blind spot for pixels (i, j < W-4): the 7x7 mask-A
layer is the only way into the network, and only its positions right of
(i-1, W-1) or in row i near it read that pixel.
NOTE: the class bias enters every LSTM gate pre-activation of every layer
(both directions); y=None on a conditional model leaves it out.
NOTE: no forget-gate bias offset, layer or batch normalisation (the paper
describes none).
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.errors import GenaugError, shown
from genaug.models.autoregressive import PIXEL_VALUES, PixelSession, SoftmaxPixelModel
from genaug.models.base import check_int_options
from genaug.models.distributions import to_unit_range
from genaug.models.masked import MaskedConv2d, colour_groups

VARIANTS = ("diagonal", "row")
# Largest value of each option: far past any useful size, small enough that a
# typo or a hostile checkpoint cannot ask for terabytes of weights.
OPTION_LIMITS = {"channels": 1024, "layers": 256, "head_channels": 4096}
FIRST_KERNEL = 7  # the mask-A input layer (the paper's 7x7)
GATES = 4  # i, f, o, g


@dataclass
class PixelRNNSizes:
    """The integer options, each in 1..OPTION_LIMITS[name] (a GenaugError naming it otherwise)."""

    channels: int = 16  # LSTM units per layer (and per direction), and the residual stream's width
    layers: int = 2  # LSTM layers
    head_channels: int = 32  # width of the hidden 1x1 output layer

    def __post_init__(self) -> None:
        check_int_options(self, OPTION_LIMITS, "PixelRNN")


@dataclass
class PixelRNNConfig(PixelRNNSizes):
    """Constructor options of the PixelRNN (stored in checkpoints as `init_args`)."""

    variant: str = "diagonal"  # "diagonal" (Diagonal BiLSTM) or "row" (Row LSTM)

    def __post_init__(self) -> None:
        if not (isinstance(self.variant, str) and self.variant in VARIANTS):
            raise GenaugError(
                f"PixelRNN option variant must be one of {', '.join(VARIANTS)}, got {shown(repr(self.variant), 40)}"
            )
        # check_int_options checks every field of the dataclass it is given: give it the integer ones.
        sizes = PixelRNNSizes(self.channels, self.layers, self.head_channels)
        self.channels, self.layers, self.head_channels = astuple(sizes)


def lstm_cell(pre: Tensor, c: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """(h, c) of an LSTM from gate pre-activations `pre` (i, f, o, g stacked along `dim`) and the previous cell `c`."""
    units = pre.shape[dim] // GATES
    ifo = torch.sigmoid(pre.narrow(dim, 0, 3 * units))
    i, f, o = ifo.chunk(3, dim)
    c = torch.addcmul(f * c, i, torch.tanh(pre.narrow(dim, 3 * units, units)))
    return o * torch.tanh(c), c


def diagonal_bands(rows: int, cols: int) -> list[tuple[int, int]]:
    """(first, last) image row of each column d of the skewed map (row i shifted right by i),
    d = 0 .. rows + cols - 2: the pixels (i, d - i) of the d-th diagonal."""
    return [(max(0, d - cols + 1), min(d, rows - 1)) for d in range(rows + cols - 1)]


def diagonal_order(rows: int, cols: int, device: torch.device | None = None) -> Tensor:
    """[rows * cols] raster indices i * cols + j in the order the skewed map holds them:
    column d = i + j after column d - 1, rows top to bottom within a column.

    This is the skew of the paper without its padding: gathering pixels in this order puts
    each column of the skewed map (each diagonal of the image) in one contiguous block.
    """
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    return torch.argsort(((i + j) * rows + i).flatten())


def inverse_order(order: Tensor) -> Tensor:
    """The permutation that undoes `order` (x[order][inverse_order(order)] == x)."""
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return inverse


def gate_groups(units: int, colours: int, stacks: int) -> Tensor:
    """Colour groups of `stacks` blocks of `units` gate channels: gate channel q * units + k belongs with unit k."""
    return colour_groups(units, colours).repeat(stacks)


def row_neighbours(h: Tensor) -> Tensor:
    """[..., W, h] -> [..., W, 3h]: the features of columns j-1, j, j+1 side by side (zeros outside)."""
    padded = F.pad(h, (0, 0, 1, 1))
    return torch.cat([padded[..., :-2, :], padded[..., 1:-1, :], padded[..., 2:, :]], dim=-1)


class RowLSTM(nn.Module):
    """One Row LSTM layer with its residual connection: [B, h, H, W] -> [B, h, H, W]."""

    def __init__(self, channels: int, colours: int, num_classes: int) -> None:
        super().__init__()
        h = channels
        # Columns j-1 and j of the row, masked B at j (see the NOTE on the 1 x 2 kernel).
        self.input_to_state = MaskedConv2d(
            h, GATES * h, (1, 2), kind="B", colours=colours, centre=(0, 1), padding=(0, 1),
            out_groups=gate_groups(h, colours, GATES),
        )  # fmt: skip
        # The unmasked 1 x 3 convolution over the row above (earlier pixels), as a matmul over
        # `row_neighbours`: small convolutions in a Python loop cost more in call overhead than in work.
        self.state_to_state = nn.Linear(3 * h, GATES * h, bias=False)
        self.output = MaskedConv2d(h, h, 1, kind="B", colours=colours)
        self.embed = nn.Embedding(num_classes, GATES * h) if num_classes > 0 else None

    def forward(self, x: Tensor, y: Tensor | None, u: Tensor | None = None) -> Tensor:
        """The layer's output for input features `x` (`u`, the pixels, is unused: the Row LSTM
        reads them through the 7x7 input layer only)."""
        b, units, rows, cols = x.shape
        pre = self.input_to_state(x)[..., :cols]  # padded both sides, cropped: column j sees j-1 and j
        if self.embed is not None and y is not None:
            pre = pre + self.embed(y)[:, :, None, None]
        # One contiguous [B, W, 4h] slab per row (channels last, for the matmuls); unbind, not
        # indexing, so the backward pass stacks the rows' gradients once instead of adding each
        # into a full-size zero map (which made training 3x slower).
        pre = pre.permute(2, 0, 3, 1).contiguous().unbind(0)
        h = c = x.new_zeros(b, cols, units)
        hs = []
        for i in range(rows):
            h, c = lstm_cell(pre[i] + self.state_to_state(row_neighbours(h)), c, dim=-1)
            hs.append(h)
        return x + self.output(torch.stack(hs, dim=1).permute(0, 3, 1, 2))


class DiagonalBiLSTM(nn.Module):
    """One Diagonal BiLSTM layer with its residual connection: [B, h, H, W] -> [B, h, H, W]."""

    def __init__(self, channels: int, colours: int, num_classes: int, reads_pixels: bool = False) -> None:
        super().__init__()
        h = channels
        # The first layer's right-to-left direction also reads the pixels themselves (see NOTE):
        # unmasked, as after the down shift only later rows read it.
        self.pixels_to_state = nn.Linear(colours, GATES * h) if reads_pixels else None
        # Both directions' gates (left-to-right first) from one 1x1 mask-B convolution.
        self.input_to_state = MaskedConv2d(
            h, 2 * GATES * h, 1, kind="B", colours=colours, out_groups=gate_groups(h, colours, 2 * GATES)
        )
        # The unmasked 2 x 1 convolution over the previous skewed column, per direction, as one
        # batched matmul: [direction, (row above, same row) x h, 4h].
        self.state_to_state = nn.Parameter(torch.empty(2, 2 * h, GATES * h))
        self.output = MaskedConv2d(h, h, 1, kind="B", colours=colours)
        self.embed = nn.Embedding(num_classes, 2 * GATES * h) if num_classes > 0 else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The state-to-state weights initialised as a convolution's (uniform in +-1/sqrt(fan in))."""
        bound = self.state_to_state.shape[1] ** -0.5
        nn.init.uniform_(self.state_to_state, -bound, bound)

    def streams(self, x: Tensor, y: Tensor | None, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(left-to-right, right-to-left) hidden states [B, h, H, W] before the down shift, for
        input features `x` and (the first layer) pixels `u`: the first at (i, j) has seen the
        inputs at (i' <= i, j' <= j), the second at (i' <= i, j' >= j)."""
        b, units, rows, cols = x.shape
        g = GATES * units
        order = diagonal_order(rows, cols, x.device)
        # Both directions (the right-to-left one is the left-to-right one on the mirrored image),
        # pixels in skewed-column order, channels last: [direction, pixel * B, h].
        both = torch.stack([x, x.flip(-1)]).permute(0, 3, 4, 1, 2).reshape(2, rows * cols, b * units)
        both = both.index_select(1, order).view(2, rows * cols * b, units)
        weight = masked_weight(self.input_to_state)[:, :, 0, 0].view(2, g, units).transpose(1, 2)
        bias = self.input_to_state.bias.view(2, 1, g)
        if self.pixels_to_state is not None:
            # The pixels join the inputs as C more features, with zero weights left to right.
            pixels = u.flip(-1).permute(2, 3, 0, 1).reshape(rows * cols, -1).index_select(0, order)
            pixels = pixels.view(rows * cols * b, -1)
            both = torch.cat([both, torch.stack([torch.zeros_like(pixels), pixels])], dim=-1)
            to_gates = self.pixels_to_state.weight.t()
            weight = torch.cat([weight, torch.stack([torch.zeros_like(to_gates), to_gates])], dim=1)
            bias = bias + torch.stack([torch.zeros_like(self.pixels_to_state.bias), self.pixels_to_state.bias])[:, None]
        pre = torch.baddbmm(bias, both, weight)
        if self.embed is not None and y is not None:
            pre = (pre.view(2, rows * cols, b, g) + self.embed(y).view(b, 2, g).transpose(0, 1)[:, None]).view_as(pre)
        bands = diagonal_bands(rows, cols)
        pre = pre.split([(last - first + 1) * b for first, last in bands], dim=1)
        # Column d of the skewed map holds rows first..last (i + j = d); each row reads the
        # previous column's states at the row above (i-1, j) and at its own row (i, j-1).
        h = c = x.new_zeros(2, 0, units)
        hs, previous = [], (0, -1)
        for d, (first, last) in enumerate(bands):
            above = h[:, : (last - previous[0]) * b]  # rows previous[0]..last-1
            same = slice((first - previous[0]) * b, None)  # rows first..previous[1]
            h_same, c_same = h[:, same], c[:, same]
            if first == 0:  # row -1 is padding
                above = F.pad(above, (0, 0, b, 0))
            if last > previous[1]:  # row `last` enters the image at column 0: nothing to its left
                h_same, c_same = F.pad(h_same, (0, 0, 0, b)), F.pad(c_same, (0, 0, 0, b))
            pre_d = torch.baddbmm(pre[d], torch.cat([above, h_same], dim=-1), self.state_to_state)
            h, c = lstm_cell(pre_d, c_same, dim=-1)
            hs.append(h)
            previous = (first, last)
        # Back to raster order, [direction, B, h, H, W].
        raster = torch.cat(hs, dim=1).view(2, rows * cols, b * units).index_select(1, inverse_order(order))
        raster = raster.view(2, rows, cols, b, units).permute(0, 3, 4, 1, 2)
        return raster[0], raster[1].flip(-1)

    def forward(self, x: Tensor, y: Tensor | None, u: Tensor | None = None) -> Tensor:
        """The layer's output for input features `x` and (the first layer) pixels `u`."""
        left, right = self.streams(x, y, u)
        # Shifted down one row: pixel (i, j) reads the right-to-left state of (i-1, j).
        right = F.pad(right, (0, 0, 1, 0))[:, :, : x.shape[2]]
        return x + self.output(left + right)


class PixelRNN(SoftmaxPixelModel):
    """Row LSTM or Diagonal BiLSTM layers, a 256-way softmax per subpixel; exact likelihood."""

    name = "pixelrnn"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        variant: str = PixelRNNConfig.variant,
        channels: int = PixelRNNConfig.channels,
        layers: int = PixelRNNConfig.layers,
        head_channels: int = PixelRNNConfig.head_channels,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = PixelRNNConfig(channels, layers, head_channels, variant)
        c = self.image_shape[0]
        self.input_conv = MaskedConv2d(c, cfg.channels, FIRST_KERNEL, kind="A", colours=c, padding=FIRST_KERNEL // 2)
        if cfg.variant == "row":
            layers = [RowLSTM(cfg.channels, c, num_classes) for _ in range(cfg.layers)]
        else:
            layers = [DiagonalBiLSTM(cfg.channels, c, num_classes, reads_pixels=k == 0) for k in range(cfg.layers)]
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(cfg.channels, cfg.head_channels, 1, kind="B", colours=c),
            nn.ReLU(),
            MaskedConv2d(cfg.head_channels, PIXEL_VALUES * c, 1, kind="B", colours=c),
        )

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] logits for pixels `u` [B, C, H, W] in [-1, 1] (any H, W)."""
        b, c, h, w = u.shape
        feat = self.input_conv(u)
        for layer in self.layers:
            feat = layer(feat, y, u)
        # Output channel v * C + c is value v of colour c (see masked.py), so this view needs no copy.
        return self.head(feat).view(b, PIXEL_VALUES, c, h, w)

    def fast_session(
        self, n: int, y: Tensor | None, known: Tensor | None = None, keep: Tensor | None = None
    ) -> PixelSession:
        """A session that caches every layer's recurrent states: one LSTM step per layer per pixel."""
        session = RowSession if self.config.variant == "row" else DiagonalSession
        return session(self, n, y, known, keep)


# -- the fast sampler -------------------------------------------------------------------------


def masked_weight(conv: MaskedConv2d) -> Tensor:
    """The convolution's weight with its mask applied, as the layer uses it."""
    return conv.weight * conv.mask


class RecurrentSession(PixelSession):
    """The cached session both variants share: the canvas in [-1, 1] (zero-padded for the
    7x7 input layer), the head, and the order in which pixels' states are committed.

    A pixel's states are computed (`step`) when the sampler asks for its parameters and
    committed (`commit`) before the next pixel's are needed. States of colour group g at
    (i, j) depend on the subpixels before (g, i, j) only, so states computed once colours
    0..C-2 of the pixel are written are final; a pixel the caller keeps whole (written,
    never asked about) is stepped at commit time instead.
    """

    def __init__(self, model: PixelRNN, n: int, y: Tensor | None, known=None, keep=None) -> None:
        super().__init__(model, n, y, known, keep)
        c, self.rows, self.cols = model.image_shape
        self.colours, self.units = c, model.config.channels
        dtype, device = model.dtype, model.device
        pad = FIRST_KERNEL // 2
        # Rows above and columns either side padded with zeros (the convolution's padding, in [-1, 1] units).
        self.u = torch.zeros(n, c, self.rows + pad, self.cols + 2 * pad, dtype=dtype, device=device)
        self.u[:, :, pad:, pad : pad + self.cols] = to_unit_range(self.canvas).to(dtype)
        # The 7x7 layer's rows up to the centre, flattened for one matmul per pixel.
        first = masked_weight(model.input_conv)[:, :, : pad + 1]
        self.first_weight, self.first_bias = first.flatten(1), model.input_conv.bias
        head = [m for m in model.head if isinstance(m, MaskedConv2d)]
        self.head = [(masked_weight(m)[:, :, 0, 0], m.bias) for m in head]
        self.next = 0  # raster index of the first pixel not committed
        self.pending: tuple[int, int, list] | None = None  # (index, subpixels written then, states)
        self.written_here = (0, 0)  # (raster index, subpixels of it written)

    def written(self, i: int, j: int, k: int) -> None:
        pad = FIRST_KERNEL // 2
        self.u[:, k, i + pad, j + pad] = to_unit_range(self.canvas[:, k, i, j]).to(self.u.dtype)
        p = i * self.cols + j
        self.written_here = (p, self.written_here[1] + 1 if self.written_here[0] == p else 1)

    def params(self, i: int, j: int) -> Tensor:
        p = i * self.cols + j
        while self.next < p:
            self.commit(self.next)
        states, features = self.step(i, j)
        self.pending = (p, self.written_here[1] if self.written_here[0] == p else 0, states)
        out = features
        for weight, bias in self.head:
            out = F.linear(out.relu(), weight, bias)
        return out.view(self.n, PIXEL_VALUES, self.colours)

    def commit(self, p: int) -> None:
        i, j = divmod(p, self.cols)
        if self.pending is not None and self.pending[0] == p and self.pending[1] >= self.colours - 1:
            states = self.pending[2]
        else:
            states = self.step(i, j)[0]
        self.store(i, j, states)
        if j == self.cols - 1:
            self.end_row(i)
        self.next = p + 1

    def first_layer(self, i: int, j: int) -> Tensor:
        """[n, h]: the 7x7 mask-A layer at (i, j) from rows i-3..i of the padded canvas."""
        pad = FIRST_KERNEL // 2
        patch = self.u[:, :, i : i + pad + 1, j : j + FIRST_KERNEL]
        return F.linear(patch.flatten(1), self.first_weight, self.first_bias)

    # -- what a variant implements
    def step(self, i: int, j: int) -> tuple[list, Tensor]:
        """(every layer's states at (i, j), the last layer's output [n, h]) from the caches and the canvas."""
        raise NotImplementedError

    def store(self, i: int, j: int, states: list) -> None:
        """Cache the final states of pixel (i, j)."""
        raise NotImplementedError

    def end_row(self, i: int) -> None:
        """Row i is committed: prepare what row i + 1 reads of it."""
        raise NotImplementedError


class RowSession(RecurrentSession):
    """Row LSTM: per layer, the previous row's cells and state-to-state term, and the
    current row's input at the pixel to the left."""

    def __init__(self, model: PixelRNN, *args) -> None:
        super().__init__(model, *args)
        n, h, w = self.n, self.units, self.cols
        z = {"dtype": model.dtype, "device": model.device}
        self.layers = []
        for layer in model.layers:
            weight = masked_weight(layer.input_to_state)[:, :, 0]  # [4h, h, 2]: columns j-1, j
            bias = layer.input_to_state.bias
            if layer.embed is not None and self.y is not None:
                bias = bias + layer.embed(self.y)  # [n, 4h]
            self.layers.append({
                "left": weight[..., 0], "centre": weight[..., 1], "bias": bias,
                "ss": layer.state_to_state.weight, "out": masked_weight(layer.output)[:, :, 0, 0],
                "out_bias": layer.output.bias,
            })  # fmt: skip
        L = len(self.layers)
        self.x_left = [torch.zeros(n, h, **z) for _ in range(L)]  # layer inputs at (i, j-1)
        self.c_above = [torch.zeros(n, w, h, **z) for _ in range(L)]  # cells of row i-1
        self.ss_row = [torch.zeros(n, w, GATES * h, **z) for _ in range(L)]  # state-to-state from row i-1
        self.h_row = [torch.zeros(n, w, h, **z) for _ in range(L)]
        self.c_row = [torch.zeros(n, w, h, **z) for _ in range(L)]

    def step(self, i: int, j: int) -> tuple[list, Tensor]:
        x, states = self.first_layer(i, j), []
        for l, p in enumerate(self.layers):
            pre = F.linear(self.x_left[l], p["left"]) + F.linear(x, p["centre"]) + p["bias"] + self.ss_row[l][:, j]
            h, c = lstm_cell(pre, self.c_above[l][:, j], dim=1)
            states.append((x, h, c))
            x = x + F.linear(h, p["out"], p["out_bias"])
        return states, x

    def store(self, i: int, j: int, states: list) -> None:
        for l, (x, h, c) in enumerate(states):
            self.x_left[l], self.h_row[l][:, j], self.c_row[l][:, j] = x, h, c

    def end_row(self, i: int) -> None:
        for l, p in enumerate(self.layers):
            self.x_left[l] = torch.zeros_like(self.x_left[l])
            self.c_above[l], self.c_row[l] = self.c_row[l], torch.zeros_like(self.c_row[l])
            self.ss_row[l] = F.linear(row_neighbours(self.h_row[l]), p["ss"])


class DiagonalSession(RecurrentSession):
    """Diagonal BiLSTM: per layer, the left-to-right states of the row above and of the
    pixel to the left, and the right-to-left states of the row above (run over the whole
    row once it is complete)."""

    def __init__(self, model: PixelRNN, *args) -> None:
        super().__init__(model, *args)
        n, h, w = self.n, self.units, self.cols
        z = {"dtype": model.dtype, "device": model.device}
        self.layers = []
        for layer in model.layers:
            weight = masked_weight(layer.input_to_state)[:, :, 0, 0]  # [8h, h]
            bias = layer.input_to_state.bias.expand(n, -1)
            if layer.embed is not None and self.y is not None:
                bias = bias + layer.embed(self.y)
            ss = layer.state_to_state  # [direction, (row above, same row) x h, 4h]
            self.layers.append({
                "is_l": weight[: GATES * h], "is_r": weight[GATES * h :],
                "bias_l": bias[:, : GATES * h], "bias_r": bias[:, GATES * h :],
                "above_l": ss[0, :h], "beside_l": ss[0, h:], "above_r": ss[1, :h], "beside_r": ss[1, h:],
                "out": masked_weight(layer.output)[:, :, 0, 0], "out_bias": layer.output.bias,
                "pixels": layer.pixels_to_state,
            })  # fmt: skip
        L = len(self.layers)
        self.x_row = [torch.zeros(n, w, h, **z) for _ in range(L)]  # layer inputs of row i
        self.h_left = [torch.zeros(n, h, **z) for _ in range(L)]  # left-to-right at (i, j-1)
        self.c_left = [torch.zeros(n, h, **z) for _ in range(L)]
        self.h_row = [torch.zeros(n, w, h, **z) for _ in range(L)]  # left-to-right of row i
        self.h_above = [torch.zeros(n, w, h, **z) for _ in range(L)]  # left-to-right of row i-1
        self.r_above = [torch.zeros(n, w, h, **z) for _ in range(L)]  # right-to-left of row i-1

    def step(self, i: int, j: int) -> tuple[list, Tensor]:
        x, states = self.first_layer(i, j), []
        for l, p in enumerate(self.layers):
            pre = (
                F.linear(x, p["is_l"]) + p["bias_l"]
                + self.h_above[l][:, j] @ p["above_l"] + self.h_left[l] @ p["beside_l"]
            )  # fmt: skip
            h, c = lstm_cell(pre, self.c_left[l], dim=1)
            states.append((x, h, c))
            x = x + F.linear(h + self.r_above[l][:, j], p["out"], p["out_bias"])
        return states, x

    def store(self, i: int, j: int, states: list) -> None:
        for l, (x, h, c) in enumerate(states):
            self.x_row[l][:, j], self.h_row[l][:, j] = x, h
            self.h_left[l], self.c_left[l] = h, c

    def end_row(self, i: int) -> None:
        for l, p in enumerate(self.layers):
            # Right-to-left over row i: (i, j) reads (i-1, j) and (i, j+1).
            pre_row = F.linear(self.x_row[l], p["is_r"]) + p["bias_r"][:, None] + self.r_above[l] @ p["above_r"]
            if p["pixels"] is not None:
                pad = FIRST_KERNEL // 2
                pre_row = pre_row + p["pixels"](self.u[:, :, i + pad, pad : pad + self.cols].transpose(1, 2))
            h = c = torch.zeros_like(self.h_left[l])
            r_row = torch.empty_like(self.r_above[l])
            for j in reversed(range(self.cols)):
                h, c = lstm_cell(pre_row[:, j] + h @ p["beside_r"], c, dim=1)
                r_row[:, j] = h
            self.r_above[l] = r_row
            self.h_above[l], self.h_row[l] = self.h_row[l], torch.zeros_like(self.h_row[l])
            self.h_left[l] = torch.zeros_like(self.h_left[l])
            self.c_left[l] = torch.zeros_like(self.c_left[l])
