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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.models.autoregressive import PIXEL_VALUES, SoftmaxPixelModel
from genaug.models.base import check_int_options
from genaug.models.masked import MaskedConv2d, colour_groups

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
