"""Plain convolutional autoencoder: reconstruction error for detection, a feature mixture for sampling.

Papers and sources:
  * Hinton & Salakhutdinov 2006, "Reducing the Dimensionality of Data with
    Neural Networks" (the deterministic autoencoder, an L2 reconstruction loss).
  * Sakurada & Yairi 2014, "Anomaly Detection Using Autoencoders with Nonlinear
    Dimensionality Reduction" (reconstruction error as the anomaly score).
  * Ghosh et al. 2020, "From Variational to Deterministic Autoencoders" (RAE:
    sample a deterministic autoencoder by decoding draws from a Gaussian
    mixture fitted to its training codes, "ex-post density estimation").
  * Shi et al. 2016, "Real-Time Single Image and Video Super-Resolution Using an
    Efficient Sub-Pixel Convolutional Neural Network" (the decoder's upsampling).

The encoder and decoder follow `genaug.models.vae` (strided 3x3 convolutions
down to at most 7x7, fully connected layers around the code, a 3x3
convolution and a pixel shuffle per upsampling stage, odd sizes cropped).

NOTE: no likelihood. The AE declares `likelihood = "none"`; it detects with
`raw_scores()["recon"]`, the mean squared error per subpixel in [-1, 1] units.
NOTE: the decoder's outputs are not squashed (no tanh, whose gradient vanishes
at the 0 and 255 values that fill most images); the loss and the `recon`
score are the error of those raw outputs, and `decode` clamps them to 0..255.
So `recon` equals the per-image training loss, and can only overstate the
error of the clamped image the user sees.
NOTE: class conditioning enters the decoder only (as in the VAE), and one
mixture is fitted to the features of all classes: a class-conditional sample
decodes a draw from the whole mixture with that class's decoder bias.
NOTE: the mixture is fitted to at most `MAX_PRIOR_IMAGES` training images (a
fixed-seed subset beyond that), on features standardised per dimension so
`reg_covar` is relative to each dimension's spread; the stored means and
Cholesky factors are mapped back to feature units.
NOTE: the Ghosh et al. RAE regularises the decoder (gradient penalty or
spectral norm) and the code (||z||^2); this AE has neither: it is the plain
baseline, and the mixture does not need a regularised latent space to fit.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Losses, Stage, check_int_options
from genaug.models.conv_trunk import down_layers, feature_sizes, stage_widths, up_convs, upsample
from genaug.models.distributions import from_unit_range, to_unit_range

# Images the mixture is fitted to: EM on full covariances costs N*K*d^2 per
# iteration, and 10,000 codes pin down ten 32-d Gaussians far past what sampling needs.
MAX_PRIOR_IMAGES = 10_000
# Images encoded per forward pass in `fit_prior` (bounded memory on any dataset size).
ENCODE_BATCH = 1024
# Variance added to each component's diagonal, relative to the standardised
# features: keeps near-duplicate codes from making a singular component.
REG_COVAR = 1e-4

# Largest value of each option: far past any useful size, small enough that a
# typo or a hostile checkpoint cannot ask for terabytes of weights. The
# mixture's Cholesky factors hold K * d^2 numbers: at most 100 * 1024^2 (400 MB).
OPTION_LIMITS = {"latent_dim": 1024, "channels": 1024, "hidden": 16384, "mixture_components": 100}


@dataclass
class AEConfig:
    """Constructor options of the autoencoder (stored in checkpoints as `init_args`).

    Each is an integer in 1..OPTION_LIMITS[name]; anything else (a float, a
    boolean, a string) is a GenaugError naming the option, never coerced.
    """

    latent_dim: int = 32
    channels: int = 32  # width at half resolution; doubles per further stage, capped at 2x
    hidden: int = 512  # width of the fully connected layers between the conv stacks and the code
    mixture_components: int = 10  # Gaussians in the feature mixture that `sample` draws from

    def __post_init__(self) -> None:
        check_int_options(self, OPTION_LIMITS, "AE")


class Autoencoder(GenerativeModel):
    """Deterministic encoder to a `latent_dim` code, decoder back to pixels, L2 loss;
    samples by decoding draws from a Gaussian mixture fitted to its training codes."""

    name = "ae"
    likelihood = "none"
    latent = "continuous"
    raw_score_names = ("recon",)

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 0,
        *,
        latent_dim: int = AEConfig.latent_dim,
        channels: int = AEConfig.channels,
        hidden: int = AEConfig.hidden,
        mixture_components: int = AEConfig.mixture_components,
    ) -> None:
        super().__init__(image_shape, num_classes)
        self.config = cfg = AEConfig(latent_dim, channels, hidden, mixture_components)
        c, h, w = self.image_shape
        self.sizes = feature_sizes(h, w)
        self.widths = stage_widths(c, cfg.channels, len(self.sizes) - 1)
        bottom = self.widths[-1] * self.sizes[-1][0] * self.sizes[-1][1]
        self.encoder = nn.Sequential(
            *down_layers(self.widths), nn.Flatten(), nn.Linear(bottom, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.latent_dim)
        )

        self.from_latent = nn.Linear(cfg.latent_dim, cfg.hidden)
        # A class shifts the decoder's first hidden layer (a learned per-class bias).
        self.embed = nn.Embedding(num_classes, cfg.hidden) if num_classes > 0 else None
        self.to_bottom = nn.Linear(cfg.hidden, bottom)
        self.up = up_convs(self.widths, c)  # then a pixel shuffle per stage (conv_trunk.upsample)

        # The feature mixture `sample` draws from, filled by `fit_prior`. Fixed
        # shapes from the options, so a checkpoint carries it and the loader's
        # shape check covers it; the placeholders are finite (checkpoints refuse NaN).
        k, d = cfg.mixture_components, cfg.latent_dim
        self.register_buffer("mixture_weights", torch.zeros(k))
        self.register_buffer("mixture_means", torch.zeros(k, d))
        self.register_buffer("mixture_scale_tril", torch.eye(d).expand(k, d, d).clone())
        self.register_buffer("mixture_fitted", torch.tensor(0.0))

    def init_args(self) -> dict:
        return asdict(self.config)

    # -- pieces ----------------------------------------------------------------
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The decoder's raw output for a uint8 batch, in [-1, 1] units (not clamped)."""
        return self._decoder(self.encode(x), self.check_labels(y, x.shape[0]))

    def _decoder(self, z: Tensor, y: Tensor | None) -> Tensor:
        hidden = self.from_latent(z)
        if self.embed is not None and y is not None:
            hidden = hidden + self.embed(y)
        feat = self.to_bottom(F.silu(hidden)).view(z.shape[0], self.widths[-1], *self.sizes[-1])
        feat = upsample(feat, self.up, self.sizes)
        return feat

    def _squared_error(self, x: Tensor, y: Tensor | None) -> Tensor:
        """[B] mean squared error per subpixel, in [-1, 1] units, float32 even under autocast."""
        recon = self.reconstruct(x, y)
        return (recon.float() - to_unit_range(x)).square().flatten(1).mean(1)

    # -- the contract ----------------------------------------------------------
    def training_losses(self, x: Tensor, y: Tensor | None = None, *, step: int = 0) -> Losses:
        """L2 reconstruction loss per subpixel in [-1, 1] units; `per_image` is that loss per image."""
        per_image = self._squared_error(x, y)
        loss = per_image.mean()
        # PSNR of the batch with a peak-to-peak range of 2: the number image people read.
        psnr = 10.0 * torch.log10(4.0 / loss.detach().clamp(min=1e-12))
        return Losses(loss=loss, per_image=per_image, logs={"psnr_db": psnr})

    def raw_scores(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """{"recon": [B]} mean squared reconstruction error per subpixel in [-1, 1] units
        (0 for a perfect reconstruction); higher = more anomalous. It equals the per-image
        training loss; `generator` is unused (the AE is deterministic)."""
        return {"recon": self._squared_error(x, y)}

    def encode(self, x: Tensor) -> Tensor:
        """[B, latent_dim] float codes of a uint8 batch (the encoder sees no label)."""
        self.check_input(x)
        return self.encoder(to_unit_range(x)).float()

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """uint8 [B, C, H, W] images decoded from codes `z` [B, latent_dim] (class `y` when conditional)."""
        z = torch.as_tensor(z).to(self.device, torch.float32)
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise GenaugError(f"the AE decodes codes of shape [n, {self.config.latent_dim}], got {list(z.shape)}")
        return from_unit_range(self._decoder(z, self.check_labels(y, z.shape[0])))

    # -- the feature mixture -------------------------------------------------------
    def stages(self) -> list[Stage]:
        """Train the autoencoder, then fit the feature mixture (a stage with no players and
        no budget: its `prepare(x, y)` is `fit_prior` on the training images)."""
        return [
            Stage("autoencoder", self.players, self.validation_score),
            Stage("prior", lambda: [], self.validation_score, budget_share=0.0, prepare=self.fit_prior),
        ]

    def fit_prior(self, x: Tensor, y: Tensor | None = None) -> None:
        """Fit the Gaussian mixture `sample` draws from to the codes of uint8 training images `x`.

        Full covariances, `mixture_components` Gaussians (fewer when there are
        fewer images), scikit-learn's EM with a fixed seed: the same weights and
        images give the same mixture. `y` is accepted for the training loop's
        `prepare(x, y)` and unused: one mixture covers every class.
        """
        from sklearn.exceptions import ConvergenceWarning  # sklearn is slow to import; only this needs it
        from sklearn.mixture import GaussianMixture

        n = x.shape[0]
        if n == 0:
            raise GenaugError("cannot fit the autoencoder's feature mixture to 0 images")
        self.check_input(x)
        if n > MAX_PRIOR_IMAGES:
            keep = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:MAX_PRIOR_IMAGES]
            x = x[keep.to(x.device)]
        with torch.inference_mode():
            batches = (x[i : i + ENCODE_BATCH].to(self.device) for i in range(0, len(x), ENCODE_BATCH))
            codes = torch.cat([self.encode(batch).cpu() for batch in batches])
        codes = codes.double().numpy()
        if not np.isfinite(codes).all():
            raise GenaugError("the autoencoder's features are not finite; it cannot fit a mixture to them")

        # Standardised, so reg_covar is relative to each dimension's spread; a dead
        # (constant) dimension keeps a tiny scale rather than a division by zero.
        center, spread = codes.mean(0), np.maximum(codes.std(0), 1e-6)
        k = min(self.config.mixture_components, len(codes))
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=REG_COVAR, random_state=0)
        with warnings.catch_warnings():
            # An EM run that stops at max_iter still gives a valid mixture to sample from.
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit((codes - center) / spread)
        # Back to feature units: mean * spread + center, and L -> diag(spread) @ L.
        means = gmm.means_ * spread + center
        scale_tril = np.linalg.cholesky(gmm.covariances_) * spread[None, :, None]

        with torch.no_grad():
            d = self.config.latent_dim
            # Unused components keep weight 0 (never drawn) and finite placeholders.
            self.mixture_weights.zero_()
            self.mixture_means.zero_()
            self.mixture_scale_tril.copy_(torch.eye(d).expand_as(self.mixture_scale_tril))
            self.mixture_weights[:k] = torch.as_tensor(gmm.weights_, dtype=self.mixture_weights.dtype)
            self.mixture_means[:k] = torch.as_tensor(means, dtype=self.mixture_means.dtype)
            self.mixture_scale_tril[:k] = torch.as_tensor(scale_tril, dtype=self.mixture_scale_tril.dtype)
            self.mixture_fitted.fill_(1.0)

    def sample(
        self,
        n: int,
        y: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Callable[[int], None] | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """n images decoded from codes drawn from the fitted feature mixture, each
        component's spread scaled by `temperature` (0: its mean). Uniform random classes
        when the model is conditional and `y` is None. One decoder pass: `progress` is
        told at the end. A GenaugError when the mixture was never fitted."""
        if not bool(self.mixture_fitted):
            raise GenaugError("the autoencoder's feature mixture was never fitted; train it with genaug fit")
        if isinstance(temperature, bool) or not (isinstance(temperature, numbers.Real) and 0 <= temperature < math.inf):
            raise GenaugError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if self.num_classes > 0 and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator, device=self.device)
        d = self.config.latent_dim
        if n > 0:
            component = torch.multinomial(self.mixture_weights, n, replacement=True, generator=generator)
        else:  # multinomial refuses to draw nothing
            component = torch.zeros(0, dtype=torch.long, device=self.device)
        eps = torch.randn((n, d, 1), generator=generator, device=self.device)
        z = self.mixture_means[component] + temperature * (self.mixture_scale_tril[component] @ eps).squeeze(-1)
        images = self.decode(z, y)
        if progress is not None:
            progress(n)
        return images
