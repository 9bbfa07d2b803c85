"""Convolutional VAE with a discretized-logistic decoder.

Papers:
  * Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (ELBO, reparameterisation).
  * Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders" (the k-sample bound).
  * Salimans et al. 2017, "PixelCNN++" (discretized logistic likelihood of 8-bit pixels).

NOTE: the decoder's pixels are conditionally independent given z (one
logistic per subpixel, no mixture, no channel coupling) - the simplest
likelihood that is still a proper distribution over 8-bit images.
NOTE: class conditioning enters the decoder only; the encoder sees pixels
alone so `encode(x)` needs no label and latents of all classes share a space.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.models.base import GenerativeModel
from genaug.models.distributions import (
    discretized_logistic_log_prob,
    from_unit_range,
    gaussian_kl,
    gaussian_log_prob,
    to_unit_range,
)

# Downsample by 2 while the feature map is larger than this (8x8 -> 4, 28 -> 7, 32 -> 4).
_MIN_MAP = 7


@dataclass
class VAEConfig:
    """Constructor options of the VAE (stored in checkpoints)."""

    latent_dim: int = 16
    channels: int = 16  # width after the first downsampling; doubles per stage, capped at 4x
    hidden: int = 256  # width of the fully connected layer between the conv stack and z


class VAE(GenerativeModel):
    """Gaussian encoder, reparameterised z, discretized-logistic decoder.

    Every conv is stride 2 (down or up) and nothing but the output layer
    runs at full resolution: scoring must reach thousands of images a second
    on a laptop CPU, and full-resolution feature maps would cost 10x more
    for little gain in bits/dim on the small images data-quality work sees.
    """

    name = "vae"
    capabilities = frozenset({"nll", "encode", "decode", "sample"})

    def __init__(self, image_shape, num_classes: int = 0, **options) -> None:
        super().__init__(image_shape, num_classes)
        self.config = VAEConfig(**options)
        cfg, (c, h, w) = self.config, self.image_shape
        sizes = [(h, w)]
        while max(sizes[-1]) > _MIN_MAP:
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        if len(sizes) == 1:  # tiny images still get one stage
            sizes.append(tuple((s + 1) // 2 for s in sizes[-1]))
        self.sizes = sizes
        widths = [c] + [min(cfg.channels * 2**i, cfg.channels * 4) for i in range(len(sizes) - 1)]
        self.widths = widths

        enc: list[nn.Module] = []
        for i in range(1, len(sizes)):
            # k3 s2 p1 gives ceil(n / 2) for odd and even n alike.
            enc += [nn.Conv2d(widths[i - 1], widths[i], 3, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        flat = widths[-1] * sizes[-1][0] * sizes[-1][1]
        self.to_posterior = nn.Sequential(nn.Linear(flat, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 2 * cfg.latent_dim))

        self.embed = nn.Embedding(num_classes, cfg.latent_dim) if num_classes > 0 else None
        self.from_latent = nn.Sequential(nn.Linear(cfg.latent_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, flat))
        # Upsampling mirrors the encoder; the last stage emits (mean, log_scale) per subpixel.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i], widths[i - 1] if i > 1 else 2 * c, 4, stride=2, padding=1)
            for i in range(len(sizes) - 1, 0, -1)
        )

    def init_args(self) -> dict:
        return asdict(self.config)

    # -- pieces ----------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x) for a uint8 batch."""
        self.check_input(x)
        mu, logvar = self.to_posterior(self.encoder(to_unit_range(x))).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_params(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean in [-1, 1], log_scale) per subpixel for latent points z [B, d]."""
        if self.embed is not None and y is not None:
            z = z + self.embed(y)
        hs, ws = self.sizes[-1]
        feat = F.silu(self.from_latent(z)).view(-1, self.widths[-1], hs, ws)
        for i, (conv, (h, w)) in enumerate(zip(self.up, reversed(self.sizes[:-1]))):
            # A stride-2 transpose doubles the size; odd sizes (7 -> 4 -> 8) crop one row/column.
            feat = conv(feat)[:, :, :h, :w]
            if i < len(self.up) - 1:
                feat = F.silu(feat)
        mean, log_scale = feat.chunk(2, dim=1)
        return torch.tanh(mean), log_scale

    def _log_px_z(self, x: Tensor, z: Tensor, y: Tensor | None) -> Tensor:
        mean, log_scale = self.decoder_params(z, y)
        return discretized_logistic_log_prob(x, mean, log_scale).flatten(1).sum(-1)

    # -- the contract ----------------------------------------------------------
    def training_losses(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self._log_px_z(x, z, y)
        kl = gaussian_kl(mu.float(), logvar.float())
        nll = recon + kl
        # Per-dimension scale keeps one learning rate right for 8x8 and 64x64 alike.
        per_image = nll / self.num_dims
        return {
            "loss": per_image.mean(),
            "per_image": per_image,
            "nll": nll.detach(),
            "recon": recon.detach(),
            "kl": kl.detach(),
        }

    def nll(self, x: Tensor, y: Tensor | None = None, *, k: int = 1, generator: torch.Generator | None = None) -> Tensor:
        mu, logvar = self.posterior(x)
        std = torch.exp(0.5 * logvar)
        if k == 1:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            return -self._log_px_z(x, mu + eps * std, y) + gaussian_kl(mu, logvar)
        b, d = mu.shape
        eps = torch.randn((k, b, d), generator=generator, device=mu.device, dtype=mu.dtype)
        z = (mu + eps * std).reshape(k * b, d)
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        yk = None if y is None else y.repeat(k)
        log_w = (
            self._log_px_z(xk, z, yk).view(k, b)
            + gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).view(k, b)
            - gaussian_log_prob(z.view(k, b, d), mu, logvar)
        )
        return -(torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(k), device=x.device)))

    def encode(self, x: Tensor) -> Tensor:
        return self.posterior(x)[0]

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return from_unit_range(self.decoder_params(z, y)[0])

    def sample(self, n, y=None, *, generator=None, temperature: float = 1.0) -> Tensor:
        if self.num_classes > 0 and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        z = temperature * torch.randn((n, self.config.latent_dim), generator=generator, device=self.device)
        return self.decode(z, y)
