"""Discrete likelihoods of 8-bit pixels.

Pixels x in {0..255} are mapped to [-1, 1]; each value owns a bin of
half-width 1/255, and the 0 and 255 bins take the whole tails, so the 256
probabilities sum to exactly one (Salimans et al. 2017, PixelCNN++).
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

    `x` is uint8; `mean` is in [-1, 1] space; `log_scale` is clamped at -7.
    Computed in float32 (autocast off) since bf16 loses the tails.
    """
    with torch.autocast(device_type=mean.device.type, enabled=False):
        xf = to_unit_range(x)
        mean = mean.float()
        log_scale = log_scale.float().clamp(min=LOG_SCALE_MIN)
        centered = xf - mean
        inv_scale = torch.exp(-log_scale)
        plus_in = inv_scale * (centered + _HALF_BIN)
        min_in = inv_scale * (centered - _HALF_BIN)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log sigmoid: the x = 0 bin takes the lower tail
        log_one_minus_cdf_min = -F.softplus(min_in)  # the x = 255 bin takes the upper tail
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_scale * centered
        # When the bin's mass underflows, its density at the centre times the bin width.
        log_pdf_mid = mid_in - log_scale - 2.0 * F.softplus(mid_in) - math.log(127.5)
        log_delta = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
        return torch.where(x == 0, log_cdf_plus, torch.where(x == 255, log_one_minus_cdf_min, log_delta))


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dimension, in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, in nats."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)
