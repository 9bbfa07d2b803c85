"""What every 256-way autoregressive pixel model shares: the exact likelihood,
the training loss and the pixel-by-pixel sampler.

Papers:
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (p(x) as a product of 256-way softmax conditionals, one per
    subpixel in raster order, R -> G -> B within a pixel; sampling one
    subpixel at a time).

A family subclasses `SoftmaxPixelModel`, sets `config` (a dataclass of its
constructor options) and implements `forward(u, y) -> [B, 256, C, H, W]`
logits for pixels `u` in [-1, 1], causal in raster order and fully
convolutional (any height and width). Everything else is here, once.

NOTE: the sampler runs the network on the rows filled so far (rows 0..i)
instead of the whole canvas. Causal logits of row i depend on rows <= i
only, so this is exact, and it halves the naive sampler's work. A faster
(cached) sampler for all autoregressive families is meant to replace
`sample_pixels` later; `logits` is the interface it needs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses, check_int_options
from genaug.models.distributions import to_unit_range

PIXEL_VALUES = 256


def categorical_nll(logits: Tensor, x: Tensor) -> Tensor:
    """[B] nats: the sum over subpixels of -log softmax(logits)[true value].

    `logits` is [B, 256, C, H, W], `x` uint8 [B, C, H, W]. Computed in float32
    with autocast off: a bf16 log-softmax over 256 values loses the tails.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_subpixel = F.cross_entropy(logits.float(), x.long(), reduction="none")
    return per_subpixel.flatten(1).sum(1)


def sample_pixels(
    logits: Callable[[Tensor, Tensor | None], Tensor],
    n: int,
    image_shape: tuple[int, int, int],
    y: Tensor | None,
    *,
    device: torch.device,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """uint8 [n, C, H, W]: one subpixel at a time in raster order, R -> G -> B, each drawn
    from softmax(logits / temperature) with `generator` (the same seed gives the same images).

    `logits(canvas, y)` returns [n, 256, C, h, W] for a uint8 canvas of the first h rows.
    `progress` receives whole images' worth of work as rows complete (shares summing to n).
    """
    c, h, w = image_shape
    canvas = torch.zeros((n, c, h, w), dtype=torch.uint8, device=device)
    reported = 0
    for i in range(h):
        for j in range(w):
            for k in range(c):
                scores = logits(canvas[:, :, : i + 1], y)[:, :, k, i, j].float()
                probs = torch.softmax(scores / temperature, dim=-1)
                canvas[:, k, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(torch.uint8)
        if progress is not None:
            done = n * (i + 1) // h
            if done > reported:
                progress(done - reported)
                reported = done
    return canvas


class SoftmaxPixelModel(GenerativeModel):
    """Base of the autoregressive families with a 256-way softmax per subpixel.

    Subclasses set `self.config` (a dataclass; `init_args` is derived from it)
    and implement `forward`.
    """

    likelihood = "exact"
    latent = "none"
    config: object

    def init_args(self) -> dict:
        return asdict(self.config)

    def default_training(self) -> dict:
        # Adam at 1e-3 is what PixelCNNs are trained with; 3e-3 (the VAE's)
        # makes the deep stack of full-resolution convolutions diverge.
        return {"lr": 1e-3}

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] logits for pixels `u` [B, C, H, W] in [-1, 1] (any H, W)."""
        raise NotImplementedError

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] float32 logits of each subpixel's value given the earlier ones,
        for a uint8 canvas of any height and width (rows below the ones given are not needed)."""
        return self(to_unit_range(x), y).float()

    def training_losses(self, x: Tensor, y: Tensor | None = None, *, step: int = 0) -> Losses:
        """Exact negative log-likelihood; `loss` is its mean per dimension so one
        learning rate fits 8x8 and 64x64 alike; `per_image` is that loss per image."""
        self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        nll = categorical_nll(self.logits(x, y), x)
        per_image = nll / self.num_dims
        return Losses(loss=per_image.mean(), per_image=per_image, nll=nll.detach())

    def nll(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None, **options) -> Tensor:
        """[B] nats: exactly -log p(x) of the 8-bit image (deterministic; `generator` is unused)."""
        self.check_nll_options(options)
        self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        return categorical_nll(self.logits(x, y), x)

    def sample(self, n, y=None, *, generator=None, progress=None, temperature: float = 1.0) -> Tensor:
        """n images drawn subpixel by subpixel from softmax(logits / temperature); uniform
        random classes (from `generator`) when the model is conditional and `y` is None.

        One network pass per subpixel (C*H*W passes): slow, exact. `progress` is told
        as pixel rows complete, in whole images (the calls sum to n).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise GenaugError(f"the number of samples must be a non-negative integer, got {n!r}")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            0 < temperature and math.isfinite(temperature)
        ):
            raise GenaugError(f"temperature must be a positive number, got {temperature!r}")
        n = int(n)
        if self.num_classes > 0 and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        y = self.check_labels(y, n)
        with torch.inference_mode():
            return sample_pixels(
                self.logits,
                n,
                self.image_shape,
                y,
                device=self.device,
                generator=generator,
                progress=progress,
                temperature=float(temperature),
            )
