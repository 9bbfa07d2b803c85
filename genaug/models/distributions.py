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
        log_scale = log_scale.float().clamp(min=LOG_SCALE_MIN)
        inv_scale = torch.exp(-log_scale)
        centered = (to_unit_range(x) - mean.float()) * inv_scale
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


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dimension, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, in nats (standard normal by default)."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
