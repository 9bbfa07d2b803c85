"""What every autoregressive pixel model shares: the exact likelihood, the
training loss, and one sampler (naive or cached) that also completes images.

Papers:
  * van den Oord, Kalchbrenner & Kavukcuoglu 2016, "Pixel Recurrent Neural
    Networks" (p(x) as a product of conditionals, one per subpixel in raster
    order, R -> G -> B within a pixel; sampling one subpixel at a time;
    image completions from the top half of an image).
  * Ramachandran et al. 2017, "Fast Generation for Convolutional
    Autoregressive Models" (a cache of each layer's past activations, so a
    generation step computes every layer at the new position only).

How sampling is split:
  * `sample_autoregressive` is the one loop: it visits every pixel in
    raster order, once, and either has the family draw it
    (`draw_pixel`) or writes the value the caller keeps (completion).
  * A `PixelSession` holds the canvas and answers `params(i, j)`, the
    distribution parameters of pixel (i, j) given every subpixel written so
    far. `NaiveSession` runs the whole network on the rows filled so far;
    a family's `fast_session` answers from per-layer caches and must give
    the same parameters (to float rounding), so the same seed gives the same
    images either way.
  * The family's `draw_pixel` turns parameters into subpixel values with
    the caller's generator and writes them through the session: a 256-way
    softmax draws R, then asks again for G given R; a logistic mixture
    draws all three from one answer.

A family subclasses `AutoregressiveModel` (or `SoftmaxPixelModel` for a
256-way softmax per subpixel), sets `config` (a dataclass of its
constructor options) and implements `pixel_params`, `conditional_log_probs`
and `draw_pixel`; `fast_session` is optional. The contract tests check
every such family for causality (no conditional changes with a later
subpixel), and that both samplers draw the same images for the same seed.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import Tensor

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses
from genaug.models.distributions import to_unit_range

PIXEL_VALUES = 256
SAMPLERS = ("fast", "naive")


class PixelSession:
    """The canvas of one sampling run and the parameters of its next pixel.

    The sampler visits the pixels in raster order, each once: per pixel it
    calls `params(i, j)` any number of times, interleaved with `write(i, j,
    k, values)` for channels k = 0..C-1 in order. Subpixels the caller keeps
    (`keep`, completion) take their `known` value whatever is written.
    Subclasses answer `params`; `written(i, j, k)` tells them a subpixel is final.
    """

    def __init__(
        self,
        model: AutoregressiveModel,
        n: int,
        y: Tensor | None,
        known: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> None:
        self.model, self.n, self.y = model, n, y
        c, h, w = model.image_shape
        self.canvas = (
            known.clone() if known is not None else torch.zeros((n, c, h, w), dtype=torch.uint8, device=model.device)
        )
        self.keep = keep

    def params(self, i: int, j: int) -> Tensor:
        """[n, ...] the distribution parameters of pixel (i, j) given every subpixel written so far."""
        raise NotImplementedError

    def write(self, i: int, j: int, k: int, values: Tensor) -> None:
        """Set subpixel (k, i, j) of every image to `values` [n] (kept subpixels keep their value)."""
        values = values.to(torch.uint8)
        if self.keep is not None:
            values = torch.where(self.keep[:, k, i, j], self.canvas[:, k, i, j], values)
        self.canvas[:, k, i, j] = values
        self.written(i, j, k)

    def written(self, i: int, j: int, k: int) -> None:
        """Hook: subpixel (k, i, j) now holds its final value."""


class NaiveSession(PixelSession):
    """Runs the whole network on the rows filled so far whenever the canvas has changed.

    Causal parameters of row i depend on rows <= i only, so the rows below
    are left out: exact, and half the work of full canvases.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._out: Tensor | None = None
        self._rows = 0

    def params(self, i: int, j: int) -> Tensor:
        if self._out is None or self._rows <= i:
            self._out = self.model.pixel_params(self.canvas[:, :, : i + 1], self.y)
            self._rows = i + 1
        return self._out[..., i, j]

    def written(self, i: int, j: int, k: int) -> None:
        self._out = None


def sample_autoregressive(
    model: AutoregressiveModel,
    n: int,
    y: Tensor | None,
    *,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    temperature: float = 1.0,
    sampler: str = "fast",
    known: Tensor | None = None,
    keep: Tensor | None = None,
) -> Tensor:
    """uint8 [n, C, H, W]: every pixel in raster order, drawn by the family with
    `generator` (the same seed gives the same images with either sampler),
    except the subpixels `keep` ([n, C, H, W] bool) holds at their `known` value.

    A pixel every image keeps whole draws nothing (it uses no random numbers).
    `progress` receives whole images' worth of work as rows complete (shares summing to n).
    """
    c, h, w = model.image_shape
    session = model.fast_session(n, y, known, keep) if sampler == "fast" else NaiveSession(model, n, y, known, keep)
    kept_whole = None if keep is None else keep.all(dim=1).all(dim=0)  # [H, W]
    reported = 0
    for i in range(h):
        for j in range(w):
            if kept_whole is not None and bool(kept_whole[i, j]):
                for k in range(c):
                    session.write(i, j, k, session.canvas[:, k, i, j])
            else:
                model.draw_pixel(session, i, j, generator=generator, temperature=temperature)
        if progress is not None:
            done = n * (i + 1) // h
            if done > reported:
                progress(done - reported)
                reported = done
    return session.canvas


def categorical_nll(logits: Tensor, x: Tensor) -> Tensor:
    """[B] nats: the sum over subpixels of -log softmax(logits)[true value].

    `logits` is [B, 256, C, H, W], `x` uint8 [B, C, H, W]. Computed in float32
    with autocast off: a bf16 log-softmax over 256 values loses the tails.
    """
    return categorical_log_probs(logits, x).neg().flatten(1).sum(1)


def categorical_log_probs(logits: Tensor, x: Tensor) -> Tensor:
    """[B, C, H, W] nats: log softmax(logits)[true value] of each subpixel (float32 at least, autocast off)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return -F.cross_entropy(at_least_float32(logits), x.long(), reduction="none")


def at_least_float32(t: Tensor) -> Tensor:
    """`t` in float32, or kept in float64: bf16 (autocast) loses a likelihood's tails."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _check_sampling_options(n, temperature, sampler) -> None:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise GenaugError(f"the number of samples must be a non-negative integer, got {n!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
        0 < temperature and math.isfinite(temperature)
    ):
        raise GenaugError(f"temperature must be a positive number, got {temperature!r}")
    if sampler not in SAMPLERS:
        raise GenaugError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


class AutoregressiveModel(GenerativeModel):
    """Base of the autoregressive families: exact likelihood in raster order, R -> G -> B.

    Subclasses set `self.config` (a dataclass; `init_args` is derived from it)
    and implement `pixel_params`, `conditional_log_probs` and `draw_pixel`.
    """

    likelihood = "exact"
    latent = "none"
    config: object

    def init_args(self) -> dict:
        return asdict(self.config)

    @property
    def dtype(self) -> torch.dtype:
        """The parameters' floating dtype: float32, or float64 where a test asks for exact sums."""
        return next(self.parameters()).dtype

    # -- what a family implements -------------------------------------------------
    def pixel_params(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, ..., h, W] float32 parameters of each pixel's distribution given the earlier
        subpixels, for a uint8 canvas [B, C, h, W] of any height and width (causal: the
        parameters of row i depend on rows <= i only)."""
        raise NotImplementedError

    def conditional_log_probs(self, params: Tensor, x: Tensor) -> Tensor:
        """Nats of each conditional the likelihood factorises into, for uint8 `x` given
        `params = pixel_params(x)`: [B, C, H, W] per subpixel (R, then G given R, ...),
        or [B, 1, H, W] per pixel where a family models a pixel's colours jointly."""
        raise NotImplementedError

    def draw_pixel(
        self, session: PixelSession, i: int, j: int, *, generator: torch.Generator | None, temperature: float
    ) -> None:
        """Draw every subpixel of pixel (i, j) from `session.params(i, j)` and `session.write` them, k = 0..C-1."""
        raise NotImplementedError

    def fast_session(
        self, n: int, y: Tensor | None, known: Tensor | None = None, keep: Tensor | None = None
    ) -> PixelSession:
        """The cached session of the fast sampler; the naive one where a family has none."""
        return NaiveSession(self, n, y, known, keep)

    # -- shared ---------------------------------------------------------------------
    def default_training(self) -> dict:
        # Adam at 1e-3 is what PixelCNNs are trained with; 3e-3 (the VAE's)
        # makes the deep stack of full-resolution convolutions diverge.
        return {"lr": 1e-3}

    def log_probs(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Nats of each conditional of uint8 `x` given everything before it in raster order:
        [B, C, H, W] per subpixel, or [B, 1, H, W] per pixel (see `conditional_log_probs`)."""
        self.check_input(x)
        y = self.check_labels(y, x.shape[0])
        return self.conditional_log_probs(self.pixel_params(x, y), x)

    def training_losses(self, x: Tensor, y: Tensor | None = None, *, step: int = 0) -> Losses:
        """Exact negative log-likelihood; `loss` is its mean per dimension so one
        learning rate fits 8x8 and 64x64 alike; `per_image` is that loss per image."""
        nll = -self.log_probs(x, y).flatten(1).sum(1)
        per_image = nll / self.num_dims
        return Losses(loss=per_image.mean(), per_image=per_image, nll=nll.detach())

    def nll(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None, **options) -> Tensor:
        """[B] nats: exactly -log p(x) of the 8-bit image (deterministic; `generator` is unused)."""
        self.check_nll_options(options)
        return -self.log_probs(x, y).flatten(1).sum(1)

    def sample(
        self, n, y=None, *, generator=None, progress=None, temperature: float = 1.0, sampler: str = "fast"
    ) -> Tensor:
        """n images drawn pixel by pixel at `temperature`; uniform random classes (from
        `generator`) when the model is conditional and `y` is None.

        `sampler="fast"` answers each step from the family's per-layer caches
        (where it has them), `"naive"` runs the network on the rows filled so
        far for every subpixel; both give the same images for the same seed.
        `progress` is told as pixel rows complete, in whole images (the calls sum to n).
        """
        _check_sampling_options(n, temperature, sampler)
        n = int(n)
        if self.num_classes > 0 and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        y = self.check_labels(y, n)
        with torch.inference_mode(), evaluating(self):
            return sample_autoregressive(
                self, n, y, generator=generator, progress=progress, temperature=float(temperature), sampler=sampler
            )

    def complete(
        self,
        x: Tensor,
        keep: Tensor,
        y: Tensor | None = None,
        *,
        generator=None,
        progress=None,
        temperature: float = 1.0,
        sampler: str = "fast",
    ) -> Tensor:
        """uint8 [B, C, H, W]: `x` with the subpixels where `keep` is False drawn anew given the rest
        that comes before them in raster order (those after a drawn subpixel cannot inform it).

        `keep` is bool, broadcastable to `x` ([H, W], [B, 1, H, W], ...); kept
        subpixels are returned unchanged. Sampling options as in `sample`.
        """
        _check_sampling_options(x.shape[0], temperature, sampler)
        self.check_input(x)
        keep = torch.as_tensor(keep, device=x.device)
        if keep.dtype != torch.bool:
            raise GenaugError(f"the completion mask must be bool, got {keep.dtype}")
        try:
            keep = torch.broadcast_to(keep, x.shape).to(self.device)
        except RuntimeError:
            raise GenaugError(f"a completion mask of shape {tuple(keep.shape)} does not fit images {tuple(x.shape)}") from None
        y = self.check_labels(y, x.shape[0])
        with torch.inference_mode(), evaluating(self):
            return sample_autoregressive(
                self, x.shape[0], y, generator=generator, progress=progress, temperature=float(temperature),
                sampler=sampler, known=x.to(self.device), keep=keep,
            )  # fmt: skip


@contextmanager
def evaluating(model: torch.nn.Module):
    """Eval mode (no dropout) while sampling; the caller's mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def draw_categorical(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """[n] int64 values drawn from softmax(logits [n, 256] / temperature)."""
    probs = torch.softmax(at_least_float32(logits) / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class SoftmaxPixelModel(AutoregressiveModel):
    """Base of the autoregressive families with a 256-way softmax per subpixel.

    Subclasses implement `forward(u, y) -> [B, 256, C, H, W]` logits for
    pixels `u` in [-1, 1], causal in raster order and fully convolutional.
    """

    def forward(self, u: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] logits for pixels `u` [B, C, H, W] in [-1, 1] (any H, W)."""
        raise NotImplementedError

    def logits(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """[B, 256, C, H, W] float32 logits of each subpixel's value given the earlier ones,
        for a uint8 canvas of any height and width (rows below the ones given are not needed)."""
        return at_least_float32(self(to_unit_range(x).to(self.dtype), y))

    def pixel_params(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.logits(x, y)

    def conditional_log_probs(self, params: Tensor, x: Tensor) -> Tensor:
        return categorical_log_probs(params, x)

    def draw_pixel(self, session, i, j, *, generator, temperature) -> None:
        """R, then G given R, then B given both: one `params` call per subpixel."""
        for k in range(self.image_shape[0]):
            session.write(i, j, k, draw_categorical(session.params(i, j)[:, :, k], temperature, generator))
