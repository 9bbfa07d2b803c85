"""PixelCNN: masked convolutions with a 256-way softmax per subpixel.

Papers:
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (the PixelCNN variant: a 7x7 mask-A convolution, residual
    blocks of 1x1 / 3x3 mask-B / 1x1 convolutions, two 1x1 mask-B output
    layers, colours predicted R -> G -> B; Figure 5 and Table 2).
  * van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
    Decoders" (class conditioning as a learned per-class bias).

The receptive field has the PixelCNN's blind spot: the logits of pixel
(i, j) never see pixel (i - r, j + 3 + r) or anything right of it, however
deep the network (the 7x7 layer reaches three columns right of the row
above, each 3x3 mask-B layer one more column per row up), so the row just
above is cut off from column j + 4 on. `gated-pixelcnn` has no blind spot.

NOTE: 5 residual blocks of width 32 (16 inside a block) and a 64-wide output
layer instead of the paper's 15 blocks of 256 (128 inside) and 1024: on a
2-core CPU it trains on 28x28 images at a few hundred images a second, and
with equal CPU time it fitted 8x8 and (upsampled) 28x28 digits at least as
well as twice the width (the 256-way output layer and its softmax are a
large share of the cost whatever the width). The `channels`, `layers` and
`head_channels` options restore the paper's sizes.
NOTE: no batch normalisation or weight normalisation (the paper uses
neither for PixelCNN); nothing couples the images of a batch.
NOTE: a conditional model adds a learned bias per class to the residual
stream before every block and before the output layers; the gated model's
conditioning (inside every gate) is in `gated-pixelcnn`.

Fast sampling (Ramachandran et al. 2017): `PixelCNNSession` keeps the
padded input of every spatial layer (the image for the 7x7 layer, each
block's 3x3 input) and computes one pixel per step: the 7x7 layer, each
block's three layers, the residual adds and the head, at that pixel only,
each a matrix product of a window of its cached input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genaug.models.autoregressive import PIXEL_VALUES, SoftmaxPixelModel, at_least_float32
from genaug.models.base import check_int_options
from genaug.models.distributions import to_unit_range
from genaug.models.masked import CachedPixelSession, MaskedConv2d

# Largest value of each option: far past any useful size, small enough that a
# typo or a hostile checkpoint cannot ask for terabytes of weights.
OPTION_LIMITS = {"channels": 1024, "layers": 256, "head_channels": 4096}
FIRST_KERNEL = 7  # the mask-A input layer (the paper's 7x7)
BLOCK_KERNEL = 3


@dataclass
class PixelCNNConfig:
    """Constructor options of the PixelCNN (stored in checkpoints as `init_args`).

    Each is an integer in 1..OPTION_LIMITS[name]; anything else is a
    GenaugError naming the option, never coerced.
    """

    channels: int = 32  # width of the residual stream (2h in the paper); blocks work at half of it
    layers: int = 5  # residual blocks
    head_channels: int = 64  # width of the hidden 1x1 output layer

    def __post_init__(self) -> None:
        check_int_options(self, OPTION_LIMITS, "PixelCNN")


class ResidualBlock(nn.Module):
    """ReLU, 1x1 down to half width, ReLU, 3x3 mask B, ReLU, 1x1 back up; added to the input."""

    def __init__(self, channels: int, colours: int) -> None:
        super().__init__()
        inner = (channels + 1) // 2
        self.down = MaskedConv2d(channels, inner, 1, kind="B", colours=colours)
        self.conv = MaskedConv2d(inner, inner, BLOCK_KERNEL, kind="B", colours=colours, padding=BLOCK_KERNEL // 2)
        self.up = MaskedConv2d(inner, channels, 1, kind="B", colours=colours)

    def forward(self, h: Tensor) -> Tensor:
        out = self.down(h.relu())
        out = self.conv(out.relu())
        return h + self.up(out.relu())


class PixelCNN(SoftmaxPixelModel):
    """Masked convolutions over the image, a 256-way softmax per subpixel; exact likelihood."""

    name = "pixelcnn"

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        channels: int = PixelCNNConfig.channels,
        layers: int = PixelCNNConfig.layers,
        head_channels: int = PixelCNNConfig.head_channels,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = PixelCNNConfig(channels, layers, head_channels)
        c = self.image_shape[0]
        self.input_conv = MaskedConv2d(c, cfg.channels, FIRST_KERNEL, kind="A", colours=c, padding=FIRST_KERNEL // 2)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.channels, c) for _ in range(cfg.layers))
        self.head = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(cfg.channels, cfg.head_channels, 1, kind="B", colours=c),
            nn.ReLU(),
            MaskedConv2d(cfg.head_channels, PIXEL_VALUES * c, 1, kind="B", colours=c),
        )
        # One bias per class for the input of every block and of the head.
        self.embed = nn.Embedding(num_classes, (cfg.layers + 1) * cfg.channels) if num_classes > 0 else None

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] logits for pixels `u` [B, C, H, W] in [-1, 1] (any H, W)."""
        b, c, h, w = u.shape
        feat = self.input_conv(u)
        biases = None
        if self.embed is not None and y is not None:
            biases = self.embed(y).view(b, self.config.layers + 1, self.config.channels, 1, 1).unbind(1)
        for i, block in enumerate(self.blocks):
            feat = block(feat if biases is None else feat + biases[i])
        out = self.head(feat if biases is None else feat + biases[-1])
        # Output channel v * C + c is value v of colour c (see masked.py), so this view needs no copy.
        return out.view(b, PIXEL_VALUES, c, h, w)

    def fast_session(self, n, y, known=None, keep=None) -> PixelCNNSession:
        """The cached session: each step computes every layer at one pixel."""
        return PixelCNNSession(self, n, y, known, keep)


class PixelCNNSession(CachedPixelSession):
    """Sampling from per-layer caches: one step computes `PixelCNN.forward` at one pixel.

    The spatial layers read windows of channels-last caches (zero-padded as
    the full pass pads): the image in [-1, 1] for the 7x7 layer, and each
    block's 3x3 input, written as steps compute it. The rows of a window stop
    at the centre row (the kernel rows below are closed), and the pointwise
    layers need no cache at all.
    """

    def __init__(self, model: PixelCNN, n: int, y, known=None, keep=None) -> None:
        super().__init__(model, n, y, known, keep)
        c, h, w = model.image_shape
        cfg, dtype, device = model.config, model.dtype, model.device
        r, q = FIRST_KERNEL // 2, BLOCK_KERNEL // 2
        # The cache holds the whole canvas (kept subpixels too), so every answer,
        # not only the colour about to be drawn, equals the full pass's.
        self.image = torch.zeros((n, h + r, w + 2 * r, c), dtype=dtype, device=device)
        self.image[:, r:, r : r + w] = to_unit_range(self.canvas).to(dtype).permute(0, 2, 3, 1)
        self.input_weight = model.input_conv.window_weight(r + 1)
        self.input_bias = model.input_conv.bias
        self.blocks = [
            (
                block.down.window_weight(), block.down.bias,
                torch.zeros((n, h + q, w + 2 * q, block.conv.in_channels), dtype=dtype, device=device),
                block.conv.window_weight(q + 1), block.conv.bias,
                block.up.window_weight(), block.up.bias,
            )  # fmt: skip
            for block in model.blocks
        ]
        hidden, out = model.head[1], model.head[3]
        self.head = (hidden.window_weight(), hidden.bias, out.window_weight(), out.bias)
        self.class_biases = None
        if model.embed is not None and y is not None:
            self.class_biases = model.embed(y).view(n, cfg.layers + 1, cfg.channels).unbind(1)

    def store(self, i: int, j: int, k: int) -> None:
        r = FIRST_KERNEL // 2
        self.image[:, i + r, j + r, k] = to_unit_range(self.canvas[:, k, i, j]).to(self.image.dtype)

    def step(self, i: int, j: int) -> Tensor:
        n, r, q = self.n, FIRST_KERNEL // 2, BLOCK_KERNEL // 2
        window = self.image[:, i : i + r + 1, j : j + 2 * r + 1].reshape(n, -1)
        feat = torch.addmm(self.input_bias, window, self.input_weight)
        biases = self.class_biases
        for b, (down_w, down_b, cache, conv_w, conv_b, up_w, up_b) in enumerate(self.blocks):
            if biases is not None:
                feat = feat + biases[b]
            # Written straight into the cache: the 3x3 window below reads it at its centre tap.
            torch.addmm(down_b, feat.relu(), down_w, out=cache[:, i + q, j + q]).relu_()
            out = torch.addmm(conv_b, cache[:, i : i + q + 1, j : j + 2 * q + 1].reshape(n, -1), conv_w).relu_()
            feat = torch.addmm(up_b, out, up_w).add_(feat)
        if biases is not None:
            feat = feat + biases[-1]
        hidden_w, hidden_b, out_w, out_b = self.head
        out = torch.addmm(out_b, torch.addmm(hidden_b, feat.relu(), hidden_w).relu_(), out_w)
        return at_least_float32(out.view(n, PIXEL_VALUES, -1))
