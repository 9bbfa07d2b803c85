"""The likelihood-ratio score's background model: pixel perturbation and its training.

Paper: Ren et al. 2019, "Likelihood Ratios for Out-of-Distribution
Detection". A model's likelihood mixes two things: population-level
"background" statistics (smooth regions, flat backgrounds, noise level),
which make simple images likely whatever their content, and the semantics
of the data. A background model of the same family, trained on inputs
whose pixels were randomly substituted, learns the first and not the
second; the ratio `log p_model(x) - log p_background(x)` cancels the
background statistics. genaug's score is its negative in bits/dim,
`llr = bpd_model - bpd_background`, higher = more anomalous.

NOTE: the paper substitutes each *position* (a DNA base; a pixel) with
probability mu. For images with several channels genaug draws one Bernoulli
per pixel position and then replaces *all* its channels by independent
uniform values in 0..255 (a random colour), so "pixel" means the same for
grey and colour images. The uniform draw may return the original value
(1 in 256), where the paper draws "one of the other" values.
NOTE: every batch is perturbed afresh as the training loop draws it (the
paper perturbs each example as the input pipeline reads it); validation
batches get the same perturbation every epoch (the loop's validation
generator is re-seeded), so early stopping compares like with like.
NOTE: the paper also adds an L2 penalty to the background model's weights;
genaug trains it with the same settings as the model (one less option).

The background is trained by `genaug.fit` (`llr=True`) and, in self-audit,
per fold by `genaug.detect`; it is attached to the model with
`genaug.models.store.attach_background` and stored in the same checkpoint.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel, Player, Stage

# Ren et al. found 0.1-0.3 best on images (Fashion-MNIST vs MNIST). Measured (one seed, VAE and
# PixelCNN, mean AUROC of llr at 0.1 / 0.2 / 0.3): emoji style task, both directions, 0.62 / 0.68 /
# 0.68; held-out digit classes (4 splits), 0.54 / 0.59 / 0.60. 0.1 is worst; 0.2, the middle of the
# paper's range, ties with 0.3. At 0.2, llr is `auto`'s choice on the wider emoji benchmark
# (benchmarks/README.md, bench_ood).
DEFAULT_MUTATION_RATE = 0.2


def check_mutation_rate(rate: float) -> float:
    """`rate` as a float; one GenaugError line unless 0 < rate < 1."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) < 1.0:
        raise GenaugError(f"--mutation-rate must be between 0 and 1 (exclusive), got {rate!r}")
    return float(rate)


def perturb(images: Tensor, rate: float, *, generator: torch.Generator | None = None) -> Tensor:
    """uint8 [N, C, H, W] `images` with each pixel position, with probability `rate`,
    replaced in all its channels by uniform random values in 0..255.

    Draws from `generator` (on the images' device) or, when None, the global
    RNG; the same seed gives the same perturbation. The input is not changed.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise GenaugError(f"perturb takes uint8 [N, C, H, W] images, got {images.dtype} {list(images.shape)}")
    rate = check_mutation_rate(rate)
    n, c, h, w = images.shape
    hit = torch.rand((n, 1, h, w), generator=generator, device=images.device) < rate
    noise = torch.randint(0, 256, images.shape, generator=generator, device=images.device, dtype=torch.uint8)
    return torch.where(hit, noise, images)


class PerturbedTraining(GenerativeModel):
    """A model seen by the training loop as if its data were perturbed: for training only.

    Wraps `model` (a child module, so the loop moves, trains, snapshots and
    restores its weights) and perturbs every batch before the model's own
    losses, validation and stage preparation see it. Nothing of the family
    changes; after `train(...)`, `model` is the trained background and the
    wrapper is dropped (its `metadata["training"]` is the background's report).
    """

    def __init__(self, model: GenerativeModel, rate: float) -> None:
        super().__init__(model.image_shape, model.num_classes)
        self.model = model
        self.rate = check_mutation_rate(rate)
        self.name = f"{model.name} background"  # shown in the progress bar and the training report

    def default_training(self) -> dict:
        """The wrapped family's training defaults."""
        return self.model.default_training()

    def stages(self) -> list[Stage]:
        """The wrapped model's stages, each seeing perturbed images."""
        return [self._perturbed_stage(s) for s in self.model.stages()]

    def _perturbed_stage(self, stage: Stage) -> Stage:
        def players() -> list[Player]:
            # Training batches draw from the global RNG, which the loop seeds: reproducible on CPU.
            return [
                dataclasses.replace(p, loss=lambda x, y, step, loss=p.loss: loss(perturb(x, self.rate), y, step))
                for p in stage.players()
            ]

        def validation(x, y=None, *, generator=None):
            return stage.validation(perturb(x, self.rate, generator=generator), y, generator=generator)

        prepare = None
        if stage.prepare is not None:
            prepare = lambda x, y, inner=stage.prepare: inner(perturb(x, self.rate), y)  # noqa: E731
        return dataclasses.replace(stage, players=players, validation=validation, prepare=prepare)
