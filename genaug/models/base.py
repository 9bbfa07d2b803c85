"""The contract every generative family implements (model contract v2).

A family is a `GenerativeModel` subclass, registered by `name`, that turns
`uint8 [B, C, H, W]` pixels into its own input range inside. What it can do
is declared, never guessed from its name:

* `likelihood` — "exact" (autoregressive: `nll` is -log p(x) of the 8-bit
  image), "bound" (an upper bound on it: VAE ELBO/IWAE, a diffusion bound)
  or "none" (AE, GANs: no `nll`; they detect with `raw_scores`).
* `latent` — "continuous" (`encode`/`decode` of [B, d] codes), "discrete"
  (codes of any integer shape: VQ), or "none".
* `raw_score_names` — the extra named scores `raw_scores` returns (`recon`,
  `disc`, ...), each "higher = more anomalous".
* `nll_options` — the keyword options `nll` takes, with their defaults
  (the VAE: `{"iwae_k": 1}`); the scoring layer passes only these.
* `features` and `sample` — available where the family overrides them.

Training goes through the one loop (`genaug.train`), which knows `stages`
(trained and early-stopped in turn) made of `players` (each with its own
parameters, loss, optimiser settings, clipping and steps per round) and
nothing of the families. `capabilities()` is derived from the declarations
and the overridden methods; the contract test checks the two agree.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from genaug.errors import GenaugError

LIKELIHOODS = ("exact", "bound", "none")
LATENTS = ("continuous", "discrete", "none")


@dataclass
class Losses:
    """What one training step of one player returns.

    `loss` is the scalar minimised. `per_image` ([B]) is that loss per image,
    given only where images compare (trimming leaves out the worst ones); a
    diffusion loss at a random timestep does not compare and leaves it None.
    `nll` ([B] nats, detached) is shown in bits/dim while training. `logs`
    holds anything else worth showing (floats or 0-d tensors).
    """

    loss: Tensor
    per_image: Tensor | None = None
    nll: Tensor | None = None
    logs: dict[str, float | Tensor] = field(default_factory=dict)


# A player's loss: (x uint8 [B, C, H, W], y [B] or None, step) -> Losses.
LossFn = Callable[[Tensor, "Tensor | None", int], Losses]


@dataclass
class Player:
    """One set of parameters trained by one optimiser on one loss.

    `lr`, `betas` and `max_grad_norm` of None take the training config's
    values. `clip_value` clamps the weights after each step (WGAN's weight
    clipping). `steps` is how many optimiser steps this player takes per
    round (a WGAN critic takes 5 per generator step). `trim` says whether
    the trimmed likelihood applies (only meaningful with `per_image`).
    """

    name: str
    parameters: list[nn.Parameter]
    loss: LossFn
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    clip_value: float | None = None
    steps: int = 1
    trim: bool = True


# A stage's validation score: (x, y, *, generator) -> [B] float, lower is better.
ValidationFn = Callable[..., Tensor]


@dataclass
class Stage:
    """One phase of training: its players, trained until early stopping or its share of the budget.

    `prepare(x, y)` runs once before the stage, on the training split's
    uint8 images and labels (an autoencoder fits a mixture to its features
    there; a VQ-VAE could cache the codes its prior trains on); a stage
    with no players only prepares. `validation` drives early stopping;
    `budget_share` is the stage's share of the epochs and of `--time-limit`.
    """

    name: str
    players: Callable[[], list[Player]]
    validation: ValidationFn
    budget_share: float = 1.0
    prepare: Callable[[Tensor, "Tensor | None"], None] | None = None


class GenerativeModel(nn.Module):
    """Base class of every family.

    Subclasses take `image_shape=(C, H, W)` and `num_classes` (0 for
    unconditional) plus their own keyword arguments, and return those
    keyword arguments, JSON-serialisable, from `init_args()` so a checkpoint
    can rebuild the model. `metadata` travels with the model into its
    checkpoint: class names, data fingerprint, calibration, training summary.
    """

    name: ClassVar[str] = ""
    likelihood: ClassVar[str] = "none"
    latent: ClassVar[str] = "none"
    raw_score_names: ClassVar[tuple[str, ...]] = ()
    nll_options: ClassVar[dict[str, int | float]] = {}

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.metadata: dict = {}

    # -- declared abilities --------------------------------------------------
    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """What the family can do, from its declarations and overridden methods.

        Names: "nll", "encode", "decode", "features", "sample", "complete",
        and "raw:<score>" for each extra score.
        """
        caps = set()
        if cls.likelihood != "none":
            caps.add("nll")
        if cls.latent != "none":
            caps |= {"encode", "decode"}
        if cls.latent == "continuous" or _overrides(cls, "features"):
            caps.add("features")
        if _overrides(cls, "sample"):
            caps.add("sample")
        if _overrides(cls, "complete"):
            caps.add("complete")
        caps |= {f"raw:{n}" for n in cls.raw_score_names}
        return frozenset(caps)

    @classmethod
    def require(cls, *needed: str, job: str) -> None:
        """Raise one GenaugError line, before any training, when `job` needs what the family lacks."""
        missing = [n for n in needed if n not in cls.capabilities()]
        if missing:
            have = ", ".join(sorted(cls.capabilities())) or "nothing"
            raise GenaugError(f"{job} needs {', '.join(missing)}, which model family '{cls.name}' lacks (it has: {have})")

    # -- construction ------------------------------------------------------------
    def init_args(self) -> dict:
        """Constructor keyword arguments beyond image_shape and num_classes (JSON)."""
        return {}

    @property
    def device(self) -> torch.device:
        """The device of the parameters (never assume CUDA)."""
        return next(self.parameters()).device

    @property
    def num_dims(self) -> int:
        """C*H*W: the number of 8-bit subpixels the likelihood covers."""
        c, h, w = self.image_shape
        return c * h * w

    # -- training ----------------------------------------------------------------
    def training_losses(self, x: Tensor, y: Tensor | None = None, *, step: int = 0) -> Losses:
        """The losses of one training step on a uint8 batch (the default player's loss)."""
        raise self._missing("training_losses")

    def players(self) -> list[Player]:
        """Default: one player over every parameter, minimising `training_losses`."""
        return [Player("model", list(self.parameters()), lambda x, y, step: self.training_losses(x, y, step=step))]

    def stages(self) -> list[Stage]:
        """Default: one stage of `players()`, early-stopped on `validation_score`."""
        return [Stage("model", self.players, self.validation_score)]

    def default_training(self) -> dict:
        """Family defaults for `TrainConfig` fields (lr, batch_size, ema_decay, ...); user options override."""
        return {}

    def validation_score(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """[B] lower is better, for early stopping. Default: bits/dim of `nll`, else the per-image loss."""
        if self.likelihood != "none":
            return bits_per_dim(self.nll(x, y, generator=generator).float(), self.num_dims)
        losses = self.training_losses(x, y)
        per_image = losses.per_image if losses.per_image is not None else losses.loss.expand(x.shape[0])
        return per_image.float()

    # -- scoring ---------------------------------------------------------------------
    def nll(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None, **options) -> Tensor:
        """[B] negative log-likelihood in nats of the discrete 8-bit image (exact or
        an upper bound, per `likelihood`); `options` as declared in `nll_options`."""
        raise self._missing("nll")

    def raw_scores(self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The extra named scores of `raw_score_names`, each [B], higher = more anomalous."""
        if self.raw_score_names:
            raise NotImplementedError(f"{type(self).__name__} declares raw scores but does not compute them")
        return {}

    @classmethod
    def check_nll_options(cls, options: dict) -> dict:
        """`options` with the declared defaults filled in; one line for an unknown option."""
        unknown = set(options) - set(cls.nll_options)
        if unknown:
            known = ", ".join(cls.nll_options) or "none"
            raise GenaugError(f"model family '{cls.name}' takes no scoring option {', '.join(sorted(unknown))} (it takes: {known})")
        return {**cls.nll_options, **options}

    # -- representation and sampling ----------------------------------------------------
    def features(self, x: Tensor) -> Tensor:
        """[B, d] continuous features, what rebalancing's density sees. Default: `encode(x)` flattened."""
        if self.latent == "continuous":
            return self.encode(x).flatten(1).float()
        raise self._missing("features")

    def encode(self, x: Tensor) -> Tensor:
        """Latent codes of a uint8 batch: [B, d] floats (continuous) or integer codes of any shape (discrete)."""
        raise self._missing("encode")

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """uint8 [B, C, H, W] images decoded from latent codes `z`."""
        raise self._missing("decode")

    def sample(
        self,
        n: int,
        y: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> Tensor:
        """uint8 [n, C, H, W] samples (class `y` [n] for conditional families).

        `progress(k)` is called as work is done (k units of `n`), for long
        samplers; `options` are the family's own (temperature, steps, ...).
        """
        raise self._missing("sample")

    def complete(
        self,
        x: Tensor,
        keep: Tensor,
        y: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        progress: Callable[[int], None] | None = None,
        **options,
    ) -> Tensor:
        """uint8 [B, C, H, W]: `x` with the subpixels where `keep` (bool, broadcastable to `x`)
        is False drawn by the model given the rest; kept subpixels unchanged."""
        raise self._missing("completion")

    def _missing(self, what: str) -> GenaugError:
        return GenaugError(f"model family '{self.name}' does not support {what}")

    # -- helpers shared by families ------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when a batch does not match the model's image shape."""
        if x.dtype != torch.uint8:
            raise GenaugError(f"model '{self.name}' takes uint8 pixels, got {x.dtype}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise GenaugError(
                f"images are {tuple(x.shape[1:])} (C, H, W) but the model was trained on "
                f"{self.image_shape}; pass --image-size / image_size= to resize"
            )

    def check_labels(self, y: Tensor | None, n: int) -> Tensor | None:
        """`y` as int64 [n] on the model's device, or None for unconditional models or no labels."""
        if self.num_classes == 0 or y is None:
            return None
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if y.shape[0] != n:
            raise GenaugError(f"{y.shape[0]} labels for {n} images")
        if n and (y.min() < 0 or y.max() >= self.num_classes):
            raise GenaugError(f"labels must be in 0..{self.num_classes - 1}, got {int(y.min())}..{int(y.max())}")
        return y


def check_int_options(config, limits: dict[str, int], family: str) -> None:
    """Check that every field of the dataclass `config` is an integer in 1..limits[name],
    as one GenaugError naming the option; never coerced (a float, bool or string fails).
    Families call it from their config's `__post_init__`."""
    for f in dataclasses.fields(config):
        value, top = getattr(config, f.name), limits[f.name]
        # numbers.Integral admits numpy integers; bool is an Integral too, but no width.
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and 1 <= value <= top):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise GenaugError(f"{family} option {f.name} must be an integer in 1..{top}, got {shown}")
        setattr(config, f.name, int(value))


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(GenerativeModel, method)


def bits_per_dim(nats: Tensor | float, num_dims: int):
    """Nats per image -> bits per subpixel; the one conversion every score uses."""
    return nats / (num_dims * math.log(2.0))
