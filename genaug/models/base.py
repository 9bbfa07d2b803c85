"""The contract every generative family implements.

A family is a `GenerativeModel` subclass, registered by `name`, that turns
`uint8 [B, C, H, W]` pixels into its own input range inside. Capabilities are
declared in `capabilities`, not guessed: the jobs check them and give a clear
error when a family cannot do what was asked (e.g. rebalance needs `encode`).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from genaug.errors import GenaugError


class GenerativeModel(nn.Module):
    """Base class of every family.

    Subclasses take `image_shape=(C, H, W)` and `num_classes` (0 for
    unconditional) plus their own keyword arguments, and must return those
    keyword arguments, JSON-serialisable, from `init_args()` so a checkpoint
    can rebuild the model.

    `metadata` travels with the model into its checkpoint: class names,
    training-data fingerprint, calibration scores, training summary.
    """

    name: ClassVar[str] = ""
    # Subset of {"nll", "encode", "decode", "sample", "outlier_score"}.
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.metadata: dict = {}

    # -- construction -----------------------------------------------------
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

    # -- the contract -----------------------------------------------------
    def training_losses(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Losses on a uint8 batch: `loss` (scalar to minimise) and, where it exists,
        `nll` ([B] nats per image, exact or an upper bound)."""
        raise NotImplementedError

    def nll(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        k: int = 1,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """[B] negative log-likelihood in nats of the discrete 8-bit image
        (exact, or an upper bound; `k` importance samples where the family has them;
        `generator` makes any sampling in the bound reproducible)."""
        raise self._missing("nll")

    def encode(self, x: Tensor) -> Tensor:
        """[B, d] latent features (posterior means for a VAE)."""
        raise self._missing("encode")

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """uint8 [B, C, H, W] images decoded from latent points `z` [B, d]."""
        raise self._missing("decode")

    def sample(
        self,
        n: int,
        y: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """uint8 [n, C, H, W] samples (class `y` [n] for conditional families)."""
        raise self._missing("sample")

    def outlier_score(self, x: Tensor) -> Tensor:
        """[B] higher = more anomalous, for families with no likelihood (GANs)."""
        raise self._missing("outlier_score")

    def _missing(self, what: str) -> GenaugError:
        return GenaugError(f"model family '{self.name}' does not support {what}")

    # -- helpers shared by families ---------------------------------------
    def check_input(self, x: Tensor) -> None:
        """Raise a clear error when a batch does not match the model's image shape."""
        if x.dtype != torch.uint8:
            raise GenaugError(f"model '{self.name}' takes uint8 pixels, got {x.dtype}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise GenaugError(
                f"images are {tuple(x.shape[1:])} (C, H, W) but the model was trained on "
                f"{self.image_shape}; pass --image-size / image_size= to resize"
            )


def bits_per_dim(nats: Tensor | float, num_dims: int):
    """Nats per image -> bits per subpixel; the one conversion every score uses."""
    return nats / (num_dims * math.log(2.0))
