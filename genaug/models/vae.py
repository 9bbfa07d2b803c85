"""Convolutional VAE with a discretized-logistic decoder.

Papers:
  * Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (ELBO, reparameterisation).
  * Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders" (the k-sample bound).
  * Salimans et al. 2017, "PixelCNN++" (discretized logistic likelihood of 8-bit pixels).
  * Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
    Efficient Sub-Pixel Convolutional Neural Network" (the decoder's upsampling).

NOTE: the decoder's subpixels are conditionally independent given z (one
logistic per subpixel, no mixture, no channel coupling): the simplest
likelihood that is still a proper distribution over 8-bit images.
NOTE: class conditioning enters the decoder only; the encoder sees pixels
alone so `encode(x)` needs no label and latents of all classes share a space.
NOTE: no convolution runs at full resolution. The decoder upsamples by a
convolution at the lower resolution followed by a pixel shuffle (Shi et al.),
and odd sizes are cropped (7 -> 14 and 14 -> 28 exactly, 4 -> 8 -> 7 by a crop).
Full-resolution convolutions with few output channels run an order of
magnitude slower on CPU, and scoring must reach ~10,000 images a second there.
NOTE: the logistic means are not squashed (PixelCNN++ style); `decode`
clamps them into 0..255, and the 0 and 255 bins take the tails.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses, check_int_options
from genaug.models.conv_trunk import down_layers, feature_sizes, stage_widths, up_convs, upsample
from genaug.models.distributions import (
    discretized_logistic_log_prob,
    from_unit_range,
    gaussian_kl,
    gaussian_log_prob,
    to_unit_range,
)



# Largest value of each option: far past any useful size, small enough that a
# typo or a hostile checkpoint cannot ask for terabytes of weights.
OPTION_LIMITS = {"latent_dim": 4096, "channels": 1024, "hidden": 16384}


@dataclass
class VAEConfig:
    """Constructor options of the VAE (stored in checkpoints as `init_args`).

    Each is an integer in 1..OPTION_LIMITS[name]; anything else (a float, a
    boolean, a string) is a GenaugError naming the option, never coerced.
    """

    latent_dim: int = 32
    channels: int = 32  # width at half resolution; doubles per further stage, capped at 2x
    hidden: int = 512  # width of the fully connected layers between the conv stacks and z

    def __post_init__(self) -> None:
        check_int_options(self, OPTION_LIMITS, "VAE")


class VAE(GenerativeModel):
    """Gaussian encoder q(z|x), standard normal prior, discretized-logistic decoder p(x|z, y)."""

    name = "vae"
    likelihood = "bound"
    latent = "continuous"
    nll_options = {"iwae_k": 1}

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        latent_dim: int = VAEConfig.latent_dim,
        channels: int = VAEConfig.channels,
        hidden: int = VAEConfig.hidden,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = VAEConfig(latent_dim, channels, hidden)
        c, h, w = self.image_shape
        self.sizes = feature_sizes(h, w)
        self.widths = stage_widths(c, cfg.channels, len(self.sizes) - 1)
        bottom = self.widths[-1] * self.sizes[-1][0] * self.sizes[-1][1]
        self.encoder = nn.Sequential(*down_layers(self.widths), nn.Flatten(), nn.Linear(bottom, cfg.hidden), nn.SiLU())
        self.to_posterior = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)

        self.from_latent = nn.Linear(cfg.latent_dim, cfg.hidden)
        # A class shifts the decoder's first hidden layer (a learned per-class bias).
        self.embed = nn.Embedding(num_classes, cfg.hidden) if num_classes > 0 else None
        self.to_bottom = nn.Linear(cfg.hidden, bottom)
        self.up = up_convs(self.widths, 2 * c)  # then a pixel shuffle per stage (conv_trunk.upsample)

    def init_args(self) -> dict:
        return asdict(self.config)

    # -- pieces ----------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z | x) for a uint8 batch."""
        self.check_input(x)
        mu, logvar = self.to_posterior(self.encoder(to_unit_range(x))).float().chunk(2, dim=-1)
        # Bounded so exp(logvar) neither vanishes nor overflows early in training.
        return mu, logvar.clamp(-12.0, 8.0)

    def decoder_params(self, z: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mean in [-1, 1] space, log_scale) of each subpixel's logistic, for latents z [B, d]."""
        hidden = self.from_latent(z)
        if self.embed is not None and y is not None:
            hidden = hidden + self.embed(y)
        feat = self.to_bottom(F.silu(hidden))
        feat = feat.view(z.shape[0], self.widths[-1], *self.sizes[-1])
        feat = upsample(feat, self.up, self.sizes)
        mean, log_scale = feat.chunk(2, dim=1)
        return mean, log_scale

    def log_px_z(self, x: Tensor, z: Tensor, y: Tensor | None = None) -> Tensor:
        """[B] log p(x | z, y) in nats."""
        mean, log_scale = self.decoder_params(z, y)
        return discretized_logistic_log_prob(x, mean, log_scale).flatten(1).sum(-1)

    # -- the contract ----------------------------------------------------------
    def training_losses(self, x: Tensor, y: Tensor | None = None, *, step: int = 0) -> Losses:
        """Negative ELBO with one reparameterised sample; `loss` is per dimension so
        one learning rate fits 8x8 and 64x64 alike; `per_image` is that loss per image."""
        y = self.check_labels(y, x.shape[0])
        mu, logvar = self.posterior(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self.log_px_z(x, z, y)
        kl = gaussian_kl(mu, logvar)
        nll = recon + kl
        per_image = nll / self.num_dims
        return Losses(
            loss=per_image.mean(),
            per_image=per_image,
            nll=nll.detach(),
            logs={"recon": recon.detach().mean(), "kl": kl.detach().mean()},
        )

    def nll(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None, **options) -> Tensor:
        """[B] nats: the negative ELBO (`iwae_k=1`) or the k-sample IWAE bound, an upper
        bound on -log p(x) that tightens as k grows."""
        k = self.check_nll_options(options)["iwae_k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise GenaugError(f"--iwae-k must be an integer of at least 1, got {k}")
        y = self.check_labels(y, x.shape[0])
        mu, logvar = self.posterior(x)
        std = torch.exp(0.5 * logvar)
        b, d = mu.shape
        if k == 1:
            eps = torch.randn((b, d), generator=generator, device=mu.device, dtype=mu.dtype)
            return -self.log_px_z(x, mu + eps * std, y) + gaussian_kl(mu, logvar)
        eps = torch.randn((k, b, d), generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + eps * std  # [k, B, d]
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
        yk = None if y is None else y.repeat(k)
        log_w = (
            self.log_px_z(xk, z.reshape(k * b, d), yk).view(k, b)
            + gaussian_log_prob(z)
            - gaussian_log_prob(z, mu, logvar)
        )
        return math.log(k) - torch.logsumexp(log_w, dim=0)

    def encode(self, x: Tensor) -> Tensor:
        """[B, latent_dim] posterior means."""
        return self.posterior(x)[0]

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """uint8 images: each subpixel's logistic mean, mapped to 0..255."""
        z = z.to(self.device, torch.float32)
        return from_unit_range(self.decoder_params(z, self.check_labels(y, z.shape[0]))[0])

    def sample(self, n, y=None, *, generator=None, progress=None, temperature: float = 1.0) -> Tensor:
        """n images decoded from z ~ N(0, temperature^2 I); uniform random classes when
        the model is conditional and `y` is None. One decoder pass: `progress` is told at the end."""
        if self.num_classes > 0 and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        z = temperature * torch.randn((n, self.config.latent_dim), generator=generator, device=self.device)
        images = self.decode(z, y)
        if progress is not None:
            progress(n)
        return images
