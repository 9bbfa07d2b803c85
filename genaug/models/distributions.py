"""Discrete likelihoods of 8-bit pixels, and the Gaussian pieces of a VAE.

Pixels x in {0..255} are mapped to [-1, 1]; each value owns a bin of
half-width 1/255, and the 0 and 255 bins take the whole tails, so the 256
probabilities sum to exactly one (Salimans et al. 2017, PixelCNN++).

NOTE: PixelCNN++ takes the bin mass as sigmoid(plus) - sigmoid(min), which
cancels catastrophically in the tails (both terms near 0 or near 1), and
falls back to a midpoint density there. We use the exact factorisation
    sigmoid(p) - sigmoid(m) = sigmoid(p) * sigmoid(-m) * (1 - exp(m - p)),
whose log is logsigmoid(p) + logsigmoid(-m) + log(-expm1(-(p - m))): three
terms that never underflow (p - m = 2/(255 s) > 0 is exact), so no bin ever
needs the midpoint approximation or a probability floor, and it is cheaper
(two log-sigmoids instead of three softplus, two sigmoids and a log).

A pixel's colours can also be modelled jointly, as PixelCNN++ does: a
mixture of discretized logistics whose component is shared by R, G and B,
with the means of G and B linear in the true 8-bit values of the colours
before them (`discretized_logistic_mixture_log_prob`), and its sampler.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_SCALE_MIN = -7.0
_HALF_BIN = 1.0 / 255.0


def to_unit_range(x: Tensor) -> Tensor:
    """uint8 0..255 -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def from_unit_range(x: Tensor) -> Tensor:
    """float in [-1, 1] -> uint8 0..255 (rounded, clamped)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """Log-probability (nats) of each 8-bit subpixel of `x` under a discretized logistic.

    `x` is uint8; `mean` is in [-1, 1] space (broadcast against `x`);
    `log_scale` is clamped below at -7. The result has the broadcast shape and
    is float32 even under autocast, since bf16 loses the tails.
    """
    with torch.autocast(device_type=mean.device.type, enabled=False):
        return _bin_log_prob(x, to_unit_range(x), mean.float(), log_scale.float().clamp(min=LOG_SCALE_MIN))


def _bin_log_prob(x: Tensor, unit: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log of the mass a logistic(mean, exp(log_scale)) puts on the 8-bit bin of `x`
    (uint8; `unit` is the same values in [-1, 1]), in the dtype of its inputs."""
    inv_scale = torch.exp(-log_scale)
    centered = (unit - mean) * inv_scale
    half = inv_scale * _HALF_BIN
    # log P(value <= x + 1/255) and log P(value > x - 1/255); the edge bins
    # take the whole tail, so the 0 bin has only the first and 255 only the second.
    log_below_upper = F.logsigmoid(centered + half)
    log_above_lower = F.logsigmoid(half - centered)
    log_width = torch.log(-torch.expm1(-2.0 * half))
    interior = log_below_upper + log_above_lower + log_width
    return torch.where(x == 0, log_below_upper, torch.where(x == 255, log_above_lower, interior))


def discretized_logistic_mean(mean: Tensor) -> Tensor:
    """The decoder's point estimate as uint8: the logistic's centre mapped to 0..255."""
    return from_unit_range(mean.clamp(-1.0, 1.0))


def logistic_mixture_channels(colours: int, mixtures: int) -> int:
    """Parameters per pixel of a discretized logistic mixture over `colours` subpixels:
    per component a logit, a mean and a log-scale per colour, and one coupling
    coefficient per pair of colours (R -> G, R -> B, G -> B for RGB)."""
    return mixtures * (1 + 2 * colours + colours * (colours - 1) // 2)


def split_logistic_mixture(params: Tensor, colours: int, mixtures: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The parts of mixture parameters `params` [B, P, ...] (P = `logistic_mixture_channels`):
    logits [B, M, ...], means [B, C, M, ...], log-scales [B, C, M, ...] clamped below
    at -7, and coupling coefficients [B, C(C-1)/2, M, ...] through tanh.

    Channel `role * M + m` holds component m's value of one role: the logit, then
    the C means, the C log-scales and the coefficients.
    """
    parts = params.reshape(params.shape[0], -1, mixtures, *params.shape[2:])
    logits = parts[:, 0]
    means = parts[:, 1 : 1 + colours]
    log_scales = parts[:, 1 + colours : 1 + 2 * colours].clamp(min=LOG_SCALE_MIN)
    coeffs = torch.tanh(parts[:, 1 + 2 * colours :])
    return logits, means, log_scales, coeffs


def couple_means(means: Tensor, coeffs: Tensor, unit: Tensor) -> Tensor:
    """[B, C, ...] the mean of each colour k: means[:, k] + sum over earlier colours j < k of
    coefficient (k, j) times colour j's 8-bit value `unit[:, j]` in [-1, 1] (broadcast).

    Only earlier colours are read, so the sampler may pass colours not drawn yet as anything.
    """
    out = [means[:, 0]]
    for k in range(1, means.shape[1]):
        mean = means[:, k]
        for j in range(k):
            mean = mean + coeffs[:, k * (k - 1) // 2 + j] * unit[:, j]
        out.append(mean)
    return torch.stack(out, 1)


def to_unit_values(x: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 0..255 -> [-1, 1] computed in `dtype` (float64 stays exact where a test sums probabilities)."""
    return x.to(dtype) / 127.5 - 1.0


def discretized_logistic_mixture_log_prob(x: Tensor, params: Tensor, mixtures: int) -> Tensor:
    """[B, 1, H, W] nats: log p of each whole pixel of uint8 `x` [B, C, H, W] under a mixture
    of discretized logistics whose component is shared by the pixel's colours.

    Colour k's mean is coupled linearly to the true 8-bit values of the colours
    before it (`couple_means`; Salimans et al. 2017, eq. 3), so the pixel's
    joint probability is sum_m pi_m prod_k p_m(x_k | x_<k), which sums to one
    over all 256^C values. `params` is [B, P, H, W] (`split_logistic_mixture`).
    Computed in float32 (float64 kept) with autocast off, with the exact bin
    masses of `discretized_logistic_log_prob`.
    """
    with torch.autocast(device_type=params.device.type, enabled=False):
        params = params.to(torch.promote_types(params.dtype, torch.float32))
        colours = x.shape[1]
        logits, means, log_scales, coeffs = split_logistic_mixture(params, colours, mixtures)
        unit = to_unit_values(x, params.dtype)[:, :, None]  # [B, C, 1, H, W]: broadcast over components
        means = couple_means(means, coeffs, unit)
        per_component = _bin_log_prob(x[:, :, None], unit, means, log_scales).sum(1)  # [B, M, H, W]
        return torch.logsumexp(F.log_softmax(logits, 1) + per_component, 1, keepdim=True)


def logistic_bin_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log of the mass a logistic(mean, exp(log_scale)) puts on the 8-bit bin of uint8 `x`
    (broadcast), the edge bins taking the tails, in the dtype of `mean` (no clamping here)."""
    return _bin_log_prob(x, to_unit_values(x, mean.dtype), mean, log_scale)


def draw_mixture_component(log_weights: Tensor, generator: torch.Generator | None) -> Tensor:
    """[n] int64 components drawn with probabilities softmax(log_weights [n, M]): the Gumbel-max
    trick, one uniform per component, so a seed always consumes the same random numbers."""
    u = torch.rand(log_weights.shape, generator=generator, dtype=log_weights.dtype, device=log_weights.device)
    return (log_weights - torch.log(-torch.log(u))).argmax(-1)


def draw_discretized_logistic(mean: Tensor, log_scale: Tensor, generator: torch.Generator | None) -> Tensor:
    """[n] int64 8-bit values: a logistic(mean, exp(log_scale)) draw rounded to its bin, the
    edge bins taking the tails, which gives each value exactly its bin mass."""
    u = torch.rand(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    # The logistic's inverse CDF; u = 0 gives -inf, which lands in the 0 bin as it should.
    value = mean + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))
    return ((value + 1.0) * 127.5).round().clamp(0, 255).long()


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dimension, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, in nats (standard normal by default)."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
