"""Gated PixelCNN: vertical and horizontal stacks, gated units, no blind spot.

Papers:
  * van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
    Decoders" (the two stacks, gated units
    tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h), class conditioning h
    in every gate, residual connections in the horizontal stack).
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (masks A and B over colours R -> G -> B, 256-way softmax).
  * van den Oord et al. 2016, "WaveNet: A Generative Model for Raw Audio"
    (skip connections from every layer to the output).

How causality holds (a layer with kernel half-width n):
  * the vertical stack is an unmasked (n+1) x (2n+1) convolution over rows
    i-n..i, so vertical features at row i depend on image rows <= i only;
  * the horizontal stack sees them shifted down one row (rows <= i-1: whole
    earlier pixels, every colour) through a 1x1 link, plus a 1 x (n+1)
    convolution over columns j-n..j of its own row, masked at column j by
    colour group (mask A in the first layer, B after: see masked.py);
  * everything after is 1x1 mask-B convolutions and gates that keep groups.
The vertical stack reaches n columns further right per row up, so every
pixel of the rows above is in view once the stack is deep enough: no blind
spot (a 7-wide first layer sees (i-1, j+3); each later layer one more column).

NOTE: 5 layers of 16 gated units (the first 7 wide, the rest 3 wide) and a
32-wide output layer instead of the paper's 20 layers of 384: on a 2-core
CPU it trains on 28x28 images at a few hundred images a second, and with
equal CPU time it fitted 8x8 and (upsampled) 28x28 digits better than the
wider settings tried (24 and 32 units). `channels`, `layers` and
`head_channels` restore larger sizes.
NOTE: every layer's gated output also feeds the output layers through a 1x1
skip convolution (WaveNet), where the paper reads the last horizontal stack
only: shallow layers' features reach the softmax directly.
NOTE: the vertical stack's (n+1) x (2n+1) kernel runs over rows i-n..i and
is shifted down one row before the horizontal stack reads it (the common
implementation), rather than masking out the centre row inside the kernel.
NOTE: the first layer has no residual connection: its input is the image
itself (C channels, and the current subpixel must not pass through).
NOTE: the class embedding h enters every gate of both stacks (V h, the
paper's conditioning); y=None on a conditional model leaves it out.

Fast sampling (Ramachandran et al. 2017): the vertical stack reads only
whole rows, so `GatedPixelCNNSession` computes its row i-1 (every layer,
the whole row, and its link into the horizontal stack) once, when row i
begins; a step then computes the horizontal stack, the skips and the head
at one pixel, each layer a matrix product of a window of its cached row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.models.autoregressive import PIXEL_VALUES, SoftmaxPixelModel, at_least_float32
from genaug.models.base import check_int_options
from genaug.models.distributions import to_unit_range
from genaug.models.masked import CachedPixelSession, MaskedConv2d, colour_groups

# Largest value of each option: far past any useful size, small enough that a
# typo or a hostile checkpoint cannot ask for terabytes of weights.
OPTION_LIMITS = {"channels": 1024, "layers": 256, "head_channels": 4096}
FIRST_HALF_WIDTH = 3  # the first layer's kernels are 7 wide (the paper's 7x7 start)
HALF_WIDTH = 1  # later layers 3 wide


@dataclass
class GatedPixelCNNConfig:
    """Constructor options of the gated PixelCNN (stored in checkpoints as `init_args`).

    Each is an integer in 1..OPTION_LIMITS[name]; anything else is a
    GenaugError naming the option, never coerced.
    """

    channels: int = 16  # gated units per stack per layer (p in the paper)
    layers: int = 5  # gated layers, the first one with mask A
    head_channels: int = 32  # width of the hidden 1x1 output layer

    def __post_init__(self) -> None:
        check_int_options(self, OPTION_LIMITS, "gated PixelCNN")


def gate(pre: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half) along the channels."""
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One layer of both stacks: (v, h) -> (v', h', skip)."""

    def __init__(
        self, in_channels: int, p: int, half_width: int, *, first: bool, colours: int, num_classes: int
    ) -> None:
        super().__init__()
        n = half_width
        self.vertical = nn.Conv2d(in_channels, 2 * p, (n + 1, 2 * n + 1), padding=(n, n))
        # Channel k of each half belongs to group k % colours, so the tanh and
        # sigmoid inputs of one gated unit share a colour group.
        gated_groups = colour_groups(p, colours).repeat(2)
        self.horizontal = MaskedConv2d(
            in_channels, 2 * p, (1, n + 1), kind="A" if first else "B", colours=colours,
            centre=(0, n), padding=(0, n), out_groups=gated_groups,
        )  # fmt: skip
        # Vertical features shifted down hold earlier rows only: no mask needed.
        self.link = nn.Conv2d(2 * p, 2 * p, 1)
        self.residual = None if first else MaskedConv2d(p, p, 1, kind="B", colours=colours)
        self.skip = MaskedConv2d(p, p, 1, kind="B", colours=colours)
        self.embed = nn.Embedding(num_classes, 4 * p) if num_classes > 0 else None

    def forward(self, v: Tensor, h: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = v.shape[-2:]
        # Padded convolutions, cropped so row i sees rows i-n..i and column j columns j-n..j.
        v_pre = self.vertical(v)[:, :, :rows]
        h_pre = self.horizontal(h)[:, :, :, :cols]
        h_pre = h_pre + self.link(F.pad(v_pre, (0, 0, 1, 0))[:, :, :rows])
        if self.embed is not None and y is not None:
            v_bias, h_bias = self.embed(y)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + v_bias, h_pre + h_bias
        out = gate(h_pre)
        h_next = out if self.residual is None else h + self.residual(out)
        return gate(v_pre), h_next, self.skip(out)


class GatedPixelCNN(SoftmaxPixelModel):
    """Vertical and horizontal stacks of gated units, a 256-way softmax per subpixel; exact likelihood."""

    name = "gated-pixelcnn"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        channels: int = GatedPixelCNNConfig.channels,
        layers: int = GatedPixelCNNConfig.layers,
        head_channels: int = GatedPixelCNNConfig.head_channels,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = GatedPixelCNNConfig(channels, layers, head_channels)
        c, p = self.image_shape[0], cfg.channels
        self.layers = nn.ModuleList(
            GatedLayer(
                c if i == 0 else p, p, FIRST_HALF_WIDTH if i == 0 else HALF_WIDTH,
                first=i == 0, colours=c, num_classes=num_classes,
            )  # fmt: skip
            for i in range(cfg.layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(p, cfg.head_channels, 1, kind="B", colours=c),
            nn.ReLU(),
            MaskedConv2d(cfg.head_channels, PIXEL_VALUES * c, 1, kind="B", colours=c),
        )

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] logits for pixels `u` [B, C, H, W] in [-1, 1] (any H, W)."""
        b, c, h, w = u.shape
        v, hz, skips = u, u, 0
        for layer in self.layers:
            v, hz, skip = layer(v, hz, y)
            skips = skips + skip
        # Output channel v * C + c is value v of colour c (see masked.py), so this view needs no copy.
        return self.head(skips).view(b, PIXEL_VALUES, c, h, w)

    def fast_session(self, n, y, known=None, keep=None) -> GatedPixelCNNSession:
        """The cached session: the vertical stack a row at a time, the rest one pixel per step."""
        return GatedPixelCNNSession(self, n, y, known, keep)


class GatedPixelCNNSession(CachedPixelSession):
    """Sampling from per-layer caches: `GatedPixelCNN.forward` a row or a pixel at a time.

    Caches, channels last and zero-padded as the full pass pads: each
    layer's vertical input over the whole canvas (the first layer's is the
    image, which its horizontal stack reads too), each later layer's
    horizontal input along the current row, and per layer what the row's
    pre-activations receive from outside the row: the link from the
    vertical stack above, the horizontal bias and the class's gate bias.
    """

    def __init__(self, model: GatedPixelCNN, n: int, y, known=None, keep=None) -> None:
        super().__init__(model, n, y, known, keep)
        _, h, w = model.image_shape
        dtype, device, p = model.dtype, model.device, model.config.channels
        self.layers = model.layers
        self.half_widths = [layer.horizontal.kernel_size[1] - 1 for layer in model.layers]
        self.vertical_in = [
            torch.zeros((n, h + m, w + 2 * m, layer.vertical.in_channels), dtype=dtype, device=device)
            for layer, m in zip(model.layers, self.half_widths)
        ]
        # The image cache holds the whole canvas (kept subpixels too), so every
        # answer, not only the colour about to be drawn, equals the full pass's.
        m = self.half_widths[0]
        self.vertical_in[0][:, m:, m : m + w] = to_unit_range(self.canvas).to(dtype).permute(0, 2, 3, 1)
        self.horizontal_in = [self.vertical_in[0]] + [
            torch.zeros((n, w + m, layer.horizontal.in_channels), dtype=dtype, device=device)
            for layer, m in zip(model.layers[1:], self.half_widths[1:])
        ]
        self.horizontal_weight = [layer.horizontal.window_weight() for layer in model.layers]
        self.residual = [
            None if layer.residual is None else (layer.residual.window_weight(), layer.residual.bias)
            for layer in model.layers
        ]
        # Every layer's gated output goes to its slice of one buffer, so the skips of
        # all layers are one product with the skip weights stacked (not one per layer).
        self.gated = torch.empty((n, len(model.layers) * p), dtype=dtype, device=device)
        self.gated_slices = self.gated.split(p, dim=1)
        self.skip_weight = torch.cat([layer.skip.window_weight() for layer in model.layers])
        self.skip_bias = sum(layer.skip.bias for layer in model.layers)
        self.gate_biases = []  # per layer: (vertical [n, 2p, 1, 1], horizontal [n, 1, 2p]), or zeros
        for layer in model.layers:
            if layer.embed is not None and y is not None:
                v_bias, h_bias = layer.embed(y).chunk(2, dim=1)
                self.gate_biases.append((v_bias[:, :, None, None], h_bias[:, None, :]))
            else:
                self.gate_biases.append((0, 0))
        self.from_above: list[Tensor] = []  # per layer [n, W, 2p], for the current row
        self.row = -1
        hidden, out = model.head[1], model.head[3]
        self.head = (hidden.window_weight(), hidden.bias, out.window_weight(), out.bias)

    def store(self, i: int, j: int, k: int) -> None:
        m, image = self.half_widths[0], self.vertical_in[0]
        image[:, i + m, j + m, k] = to_unit_range(self.canvas[:, k, i, j]).to(image.dtype)

    def start_row(self, i: int) -> None:
        """Every layer's vertical stack at row i-1 (the whole row) and what it adds to row i."""
        w = self.canvas.shape[-1]
        self.from_above = []
        for l, layer in enumerate(self.layers):
            v_bias, h_bias = self.gate_biases[l]
            bias = layer.horizontal.bias + h_bias
            if i == 0:  # the full pass pads the vertical features above the first row with zeros
                self.from_above.append((layer.link.bias + bias).expand(self.n, w, -1))
                continue
            m = self.half_widths[l]
            rows = self.vertical_in[l][:, i - 1 : i + m].permute(0, 3, 1, 2)  # rows i-1-m..i-1
            v_pre = F.conv2d(rows, layer.vertical.weight, layer.vertical.bias)  # [n, 2p, 1, W]
            self.from_above.append(layer.link(v_pre)[:, :, 0].transpose(1, 2) + bias)
            if l + 1 < len(self.layers):
                m = self.half_widths[l + 1]
                self.vertical_in[l + 1][:, i - 1 + m, m : m + w] = gate(v_pre + v_bias)[:, :, 0].transpose(1, 2)
        self.row = i

    def step(self, i: int, j: int) -> Tensor:
        if i != self.row:
            self.start_row(i)
        n, last = self.n, len(self.layers) - 1
        for l in range(last + 1):
            m, cache = self.half_widths[l], self.horizontal_in[l]
            # Columns j-m..j of the row (the image cache is two-dimensional: its row i).
            window = (cache[:, i + m] if l == 0 else cache)[:, j : j + m + 1].reshape(n, -1)
            f, g = torch.addmm(self.from_above[l][:, j], window, self.horizontal_weight[l]).chunk(2, dim=1)
            out = torch.mul(f.tanh_(), g.sigmoid_(), out=self.gated_slices[l])
            if l < last:
                if self.residual[l] is not None:
                    res_w, res_b = self.residual[l]
                    out = cache[:, j + m] + torch.addmm(res_b, out, res_w)
                self.horizontal_in[l + 1][:, j + self.half_widths[l + 1]] = out
        skips = torch.addmm(self.skip_bias, self.gated, self.skip_weight)
        hidden_w, hidden_b, out_w, out_b = self.head
        out = torch.addmm(out_b, torch.addmm(hidden_b, skips.relu_(), hidden_w).relu_(), out_w)
        return at_least_float32(out.view(n, PIXEL_VALUES, -1))
