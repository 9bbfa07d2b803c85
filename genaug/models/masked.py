"""Causal masks and masked convolutions for autoregressive pixel models.

Papers:
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (masks A and B; colour channels predicted R -> G -> B).
  * van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
    Decoders" (the horizontal stack's 1 x (n+1) kernel ending at the centre).
  * Ramachandran et al. 2017, "Fast Generation for Convolutional
    Autoregressive Models" (sampling that computes every layer at the new
    pixel only, from caches of the layers' inputs: `CachedPixelSession`).

Subpixels are ordered row by row, pixel by pixel, and R, G, B within a pixel.
Every feature channel belongs to a colour group. A masked kernel is open at
the taps before its centre in raster order (rows above, then columns to the
left), closed after it, and at the centre connects input group g_in to
output group g_out only when
  * mask A: g_in < g_out — the first layer, whose inputs are the pixels
    themselves, so a subpixel never sees itself or a later colour;
  * mask B: g_in <= g_out — every later layer, whose group-g features at the
    centre already summarise only the subpixels before colour g.
Composing one mask A with any number of mask-B layers (and any number of
pointwise operations that keep channel groups) keeps the output of colour c
at pixel (i, j) a function of strictly earlier subpixels only.

NOTE: channel k of a layer belongs to group k % colours, where the paper
splits channels into three contiguous thirds. Interleaving works for any
width (not only multiples of three), and a logits layer of 256 * colours
channels viewed as [256, colours] puts logit channel v * colours + c in
group c, so the logits need no reshuffle.
NOTE: the mask is a non-persistent buffer: it is derived from the layer's
shape, so checkpoints hold only the weights, and the mask is applied
functionally (`weight * mask`) so the stored weights never change under it.

At one pixel a masked convolution is one matrix product: the window of its
input around the pixel, channels last and flattened, times
`MaskedConv2d.window_weight()`. The kernel rows below the centre are all
closed, so a window needs the rows down to the centre row only.
NOTE: `CachedPixelSession` (the bookkeeping every cached sampler shares:
which pixels' caches are final, when to recompute) lives here, next to the
masks whose centre taps decide it, rather than in `autoregressive.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.models.autoregressive import PixelSession

MASK_KINDS = ("A", "B")


def colour_groups(channels: int, colours: int) -> Tensor:
    """[channels] int64: the colour group (0 = R, 1 = G, 2 = B) each channel of a layer belongs to."""
    return torch.arange(channels) % colours


def causal_mask(
    out_groups: Tensor,
    in_groups: Tensor,
    kernel_size: tuple[int, int],
    centre: tuple[int, int],
    kind: str,
) -> Tensor:
    """[out, in, kh, kw] float 0/1 mask: open before `centre` in raster order, closed after,
    and at the centre open between channel groups as mask `kind` ("A" or "B") allows."""
    if kind not in MASK_KINDS:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}, got {kind!r}")
    kh, kw = kernel_size
    ci, cj = centre
    if not (0 <= ci < kh and 0 <= cj < kw):
        raise ValueError(f"centre {centre} lies outside a {kernel_size} kernel")
    mask = torch.zeros(len(out_groups), len(in_groups), kh, kw)
    mask[:, :, :ci, :] = 1.0  # every row above
    mask[:, :, ci, :cj] = 1.0  # the centre row, left of the centre
    earlier = in_groups[None, :] < out_groups[:, None]
    same = in_groups[None, :] == out_groups[:, None]
    mask[:, :, ci, cj] = (earlier | same).float() if kind == "B" else earlier.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only earlier subpixels (see the module docstring).

    `centre` is the kernel tap aligned with the output pixel (the middle tap
    by default; the horizontal stack's 1 x (n+1) kernel has it last).
    `out_groups` overrides the interleaved colour groups of the outputs, for
    a gated layer whose two halves must share groups channel by channel.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        kind: str,
        colours: int,
        centre: tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        out_groups: Tensor | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        kh, kw = self.kernel_size
        centre = centre if centre is not None else (kh // 2, kw // 2)
        out_groups = out_groups if out_groups is not None else colour_groups(out_channels, colours)
        mask = causal_mask(out_groups, colour_groups(in_channels, colours), (kh, kw), centre, kind)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def window_weight(self, rows: int | None = None) -> Tensor:
        """[rows * kw * in, out] the masked kernel's first `rows` rows (all by default) as one
        matrix: a channels-last window [B, rows, kw, in] of the input, flattened to [B, rows * kw * in],
        times it (plus the bias) is the convolution's output at the window's centre tap."""
        kh = self.kernel_size[0] if rows is None else rows
        weight = (self.weight * self.mask)[:, :, :kh]
        return weight.permute(2, 3, 1, 0).reshape(-1, self.out_channels).contiguous()


class CachedPixelSession(PixelSession):
    """A sampling session that computes the network at one pixel per step from caches.

    A subclass implements `store(i, j, k)` (copy subpixel (k, i, j) of the
    canvas into its input caches) and `step(i, j)` (every layer at pixel
    (i, j) from the caches of the layers below, writing its own outputs to
    the caches of the layers above; returns the parameters of the pixel).
    Steps come in raster order, repeated at a pixel after each write there,
    and every pixel is stepped at least once before a later pixel is.

    A pixel's caches are final once its colours 0..C-2 are written: masks A
    and B keep every feature at a pixel blind to its last colour. A pixel
    the sampler keeps whole is written without a `params` call, so it is
    stepped when a later pixel first asks.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._width = self.canvas.shape[-1]
        self._last_colour = self.canvas.shape[1] - 1
        self._final = 0  # raster index of the first pixel whose caches are not final
        self._answer: Tensor | None = None  # params of pixel `_answer_at` given the writes so far
        self._answer_at = -1
        self._writes_at, self._writes = -1, 0  # colours written so far at pixel `_writes_at`

    def store(self, i: int, j: int, k: int) -> None:
        """Copy subpixel (k, i, j) of the canvas into the input caches."""
        raise NotImplementedError

    def step(self, i: int, j: int) -> Tensor:
        """[n, ...] the parameters of pixel (i, j): every layer computed at (i, j) from the caches."""
        raise NotImplementedError

    def params(self, i: int, j: int) -> Tensor:
        t = i * self._width + j
        for q in range(self._final, t):  # earlier pixels written without a step at their final values
            self.step(*divmod(q, self._width))
        self._final = max(self._final, t)
        if self._answer is None or self._answer_at != t:
            self._answer, self._answer_at = self.step(i, j), t
        if (self._writes if self._writes_at == t else 0) >= self._last_colour:
            self._final = t + 1
        return self._answer

    def written(self, i: int, j: int, k: int) -> None:
        # The sampler writes a pixel's colours in order, so k + 1 of them are written now.
        self._writes_at, self._writes = i * self._width + j, k + 1
        self._answer = None
        self.store(i, j, k)
