"""Fit a model for the jobs: train on one split, calibrate on the other.

The calibration split never reaches the optimiser, so its scores are
exchangeable with the scores of new clean images: that is what makes the
conformal p-values of `detect` valid. The raw calibration material
(model bits/dim and PNG bits/dim) is stored in the checkpoint so any score
can be calibrated later without the training data.

With `llr=True` a background model (same family and options) is trained on
the same training split with its pixels perturbed (`genaug.scoring.llr`),
attached to the model, stored in its checkpoint, and its bits/dim of the
calibration split join the record: the `llr` score is then calibrated like
any other. It doubles the training time; it is on by default (`llr=None`)
where `llr` is part of the default score (`auto`): for the VAE, not for the
exact-likelihood families, whose `auto` is `complexity`.

A family with `features` also gets a feature bank: the features of its
training images, for the `knn` score (`genaug.scoring.knn`), stored in the
checkpoint; the calibration split's distances to it join the record.
"""

from __future__ import annotations

import numpy as np
import torch
from rich.console import Console

from genaug._version import __version__
from genaug.data.disk_images import DiskImageSet
from genaug.data.imageset import ImageSet
from genaug.data.readers import as_imageset
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.models.registry import build_model, get_family
from genaug.models.store import attach_background
from genaug.progress import AUTO, resolve_console
from genaug.scoring import auto_uses_background, available_scores, score_images
from genaug.scoring.calibration import check_fraction
from genaug.scoring.knn import NEIGHBOURS, attach_bank, bank_rows
from genaug.scoring.llr import DEFAULT_MUTATION_RATE, PerturbedTraining, check_mutation_rate
from genaug.scoring.nll import SCORE_BATCH
from genaug.scoring.rarity import model_features
from genaug.scoring.record import CalibrationRecord
from genaug.train import TrainConfig, train

DEFAULT_CALIBRATION_FRACTION = 0.2
DEFAULT_IWAE_K = 1
# Calibration images at most: conformal p-values resolve 1/50,001, and the split is scored in memory.
MAX_CALIBRATION = 50_000


def scoring_options(family: type[GenerativeModel], iwae_k: int | None = None, nll_options: dict | None = None) -> dict:
    """The family's `nll` options, with `iwae_k` (the CLI's --iwae-k) folded in; one line for a bad one."""
    options = dict(nll_options or {})
    if iwae_k is not None:
        if isinstance(iwae_k, bool) or not isinstance(iwae_k, int) or iwae_k < 1:
            raise GenaugError(f"--iwae-k must be an integer of at least 1, got {iwae_k}")
        if "iwae_k" not in family.nll_options:
            raise GenaugError(f"--iwae-k applies to families with importance-sampled bounds; '{family.name}' has none")
        options["iwae_k"] = iwae_k
    return family.check_nll_options(options)


def new_model(
    data: ImageSet | DiskImageSet,
    family: str = "vae",
    *,
    conditional: bool = False,
    model_options: dict | None = None,
    seed: int = 0,
) -> GenerativeModel:
    """An untrained model of `family` shaped for `data`, its initial weights drawn from `seed`."""
    num_classes = 0
    if conditional:
        if data.labels is None:
            raise GenaugError("--conditional needs labelled data (class sub-folders, a label column or npz 'y')")
        num_classes = data.num_classes
    # Seeded init without disturbing the caller's global RNG: same seed, same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(family, data.shape, num_classes, **(model_options or {}))


def train_on(
    model: GenerativeModel,
    data: ImageSet | DiskImageSet,
    config: TrainConfig | None,
    console: Console | None = None,
    *,
    sample_weights=None,
) -> GenerativeModel:
    """Train `model` on all of `data` with the one training loop."""
    labels = data.label_tensor() if model.num_classes > 0 else None
    train(model, data.images, labels, config, sample_weights=sample_weights, console=console)
    model.metadata["class_names"] = data.class_names
    return model


def check_llr(family: type[GenerativeModel], mutation_rate: float | None, *, needed: bool) -> float | None:
    """The mutation rate to train a background model with (None: `DEFAULT_MUTATION_RATE`), or None
    when none is `needed`; one line for a family without a likelihood or a rate given for nothing."""
    if not needed:
        if mutation_rate is not None:
            raise GenaugError(
                "--mutation-rate applies only where a background model is trained (fit --llr, self-audit --score llr)"
            )
        return None
    if "nll" not in family.capabilities():
        raise GenaugError(f"the llr score needs a likelihood, which model family '{family.name}' has not")
    return check_mutation_rate(DEFAULT_MUTATION_RATE if mutation_rate is None else mutation_rate)


def train_background(
    model: GenerativeModel,
    data: ImageSet | DiskImageSet,
    config: TrainConfig | None,
    *,
    mutation_rate: float = DEFAULT_MUTATION_RATE,
    console: Console | None = None,
) -> GenerativeModel:
    """Train a background model for `model`'s likelihood ratio on `data` with perturbed pixels
    (same family, options, seed and training settings) and attach it to `model`; returns it."""
    config = config or TrainConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        background = build_model(model.name, model.image_shape, model.num_classes, **model.init_args())
    wrapper = PerturbedTraining(background, mutation_rate)
    labels = data.label_tensor() if model.num_classes > 0 else None
    train(wrapper, data.images, labels, config, console=console)
    info = {"mutation_rate": wrapper.rate, "training": wrapper.metadata["training"]}
    attach_background(model, background.eval(), info)
    return background


def attach_training_features(model: GenerativeModel, training, *, neighbours: int = NEIGHBOURS, seed: int = 0) -> None:
    """Attach the feature bank of the `knn` score: the features of (a seeded sample of at most
    `genaug.scoring.knn.MAX_REFERENCE` of) the images `model` was trained on."""
    part = training.subset(bank_rows(len(training), seed))
    if isinstance(part, DiskImageSet):
        part = part.load()
    attach_bank(model, model_features(model, part.images), neighbours)


@torch.inference_mode()
def reconstruct(
    model: GenerativeModel, images: torch.Tensor, labels: torch.Tensor | None = None, *, batch_size: int = SCORE_BATCH
) -> torch.Tensor:
    """uint8 decoder outputs for the latent codes of `images` (posterior means), on the CPU."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(model.device)
        y = None if labels is None else labels[start : start + batch_size].to(model.device)
        out.append(model.decode(model.encode(x), y).cpu())
    return torch.cat(out)


def fit(
    data: ImageSet | DiskImageSet,
    *,
    family: str = "vae",
    conditional: bool = False,
    model_options: dict | None = None,
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
    iwae_k: int | None = None,
    nll_options: dict | None = None,
    llr: bool | None = None,
    mutation_rate: float | None = None,
    train_config: TrainConfig | None = None,
    console: Console | str | None = AUTO,
) -> GenerativeModel:
    """Train a model on `data` minus a held-out calibration split (`calibration_fraction`
    of it, at most MAX_CALIBRATION images), and store the split's scores in
    `model.metadata["calibration"]`.

    `data` is anything `load_images` reads, or a `DiskImageSet`
    (`genaug.data.disk_images.training_data`) to train from disk, batch by batch.

    With `llr` (None, the default: where `auto` scores llr, i.e. for the VAE;
    the exact-likelihood families' `auto` is `complexity`), also train a
    background model on the training split with each pixel replaced by a
    random colour at `mutation_rate` (None: `DEFAULT_MUTATION_RATE`), for the
    `llr` score (twice the training time; `llr=False` skips it and `auto`
    scores `complexity`).
    The returned model is ready for `detect_outliers(..., model=model)`,
    `rebalance`, `synthesize`, or `save_model`.
    """
    console = resolve_console(console)
    data = data if isinstance(data, DiskImageSet) else as_imageset(data)
    check_fraction("calibration-fraction", calibration_fraction)
    # Everything the job will need is checked before any training.
    cls = get_family(family)
    options = scoring_options(cls, iwae_k, nll_options)
    if llr is None:
        llr = auto_uses_background(cls)
    mutation_rate = check_llr(cls, mutation_rate, needed=llr)
    if not available_scores(cls):
        raise GenaugError(f"model family '{family}' has neither a likelihood nor a raw score to calibrate")
    config = train_config or TrainConfig()
    n = len(data)
    n_cal = min(int(round(calibration_fraction * n)), MAX_CALIBRATION)
    if n_cal < 1 or n - n_cal < 2:
        raise GenaugError(f"{n} images are too few to hold out a calibration split of {calibration_fraction:.0%}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).numpy()
    cal_idx, train_idx = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
    model = new_model(data, family, conditional=conditional, model_options=model_options, seed=config.seed)
    training = data.subset(train_idx)
    train_on(model, training, config, console)
    if mutation_rate is not None:
        train_background(model, training, config, mutation_rate=mutation_rate, console=console)
    if "features" in model.capabilities():
        attach_training_features(model, training, seed=config.seed)
    cal = data.subset(cal_idx)
    if isinstance(cal, DiskImageSet):
        cal = cal.load()
    cal_labels = cal.label_tensor() if model.num_classes > 0 else None
    raw = score_images(model, cal.images, cal_labels, nll_options=options, seed=config.seed)
    reconstruction = None
    if {"encode", "decode"} <= model.capabilities():
        # What the decoder makes of the same held-out images: the reference for
        # its samples, which are decoder outputs too (see genaug.synthesize).
        recon_images = reconstruct(model, cal.images, cal_labels)
        reconstruction = score_images(model, recon_images, cal_labels, nll_options=options, seed=config.seed)
    calibration = CalibrationRecord(options, raw, reconstruction).to_metadata()
    model.metadata.update(
        {
            "genaug_version": __version__,
            "calibration": calibration,
            "data": {
                "source": data.source,
                "fingerprint": data.fingerprint(),
                "n_images": n,
                "n_train": int(train_idx.size),
                "n_calibration": int(n_cal),
                "seed": config.seed,
            },
        }
    )
    return model.eval()
