"""Score functions: turn a model and images into "higher = more anomalous".

`score_images` computes the raw material once: the model's bits/dim where
the family has a likelihood (and its background model's, for the likelihood
ratio, where the model carries one), its extra named scores (`raw_scores`,
e.g. an autoencoder's `recon`), PNG bits/dim, and the PNG bytes, reused for
the output file. `score_values` turns it into a named score; `typicality`
measures against reference raw scores (the calibration split's, or in
self-audit the data's own). Which scores a family offers follows from its
declarations (`available_scores`). Calibration lives in
`genaug.scoring.calibration`, the stored calibration record in
`genaug.scoring.record`, the background model in `genaug.scoring.llr`,
the typical-set tests in `genaug.scoring.typicality`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from genaug import allocator
from genaug.data.parquet import encode_png
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.models.store import background_of, feature_bank_of
from genaug.progress import progress_bar
from genaug.scoring.complexity import png_bits_per_dim
from genaug.scoring.ensemble import combine
from genaug.scoring.knn import bank_of
from genaug.scoring.nll import SCORE_BATCH, model_bits_per_dim, model_raw_scores
from genaug.scoring.rarity import model_features
from genaug.scoring.typicality import entropy_estimate

# Scores every family with a likelihood offers; `llr` also needs a background model (see available_scores).
LIKELIHOOD_SCORES = ("nll", "complexity", "llr", "typicality")
# Distance to the nearest training images in the model's features (`genaug.scoring.knn`): every
# family with `features`; a fitted model needs its feature bank.
KNN = "knn"
# `auto` for a family with a likelihood: the likelihood ratio against a background model, the best
# single score on mean AUROC over the emoji tasks in both directions, and the only one never near chance
# there (benchmarks/README.md, bench_ood). Where a fitted model has no background model, complexity (the
# runner-up: it survives the likelihood's preference for simple images). For a fitted model that also
# carries a feature bank (reference mode), `ensemble`: llr with knn (REFERENCE_DEFAULT, below).
DEFAULT_SCORE = "llr"
FALLBACK_SCORE = "complexity"
# `auto` for a family with an exact likelihood (the autoregressive ones): complexity. Their background
# models fit photo crops worse than the models themselves do, so llr ranks photo crops among Google emoji
# *below* the emoji (AUROC 0.31 PixelCNN, 0.02 PixelCNN++, where nll reaches 0.98 and 0.91); over
# bench_ood's 12 directions llr is the worst score of both families, and complexity the best single one
# of PixelCNN++, 0.022 behind the best of PixelCNN, and never below 0.5 where another score passes 0.8
# (benchmarks/README.md, "Exact-likelihood families in bench_ood"). The gated PixelCNN agreed on the style task.
EXACT_DEFAULT = FALLBACK_SCORE
ENSEMBLE = "ensemble"
# `auto` in reference mode for a model with a background model and a feature bank: the ensemble of
# llr and knn, mean AUROC 0.830 over 8 reference-mode directions vs llr 0.732 and knn 0.830, worst
# direction 0.70 vs 0.51 and 0.65 (benchmarks/README.md, "The knn score in bench_ood"). Not in self-audit:
# there the combination's tail p-values flagged 1 of 70 emoji among photo crops, llr 69.
REFERENCE_DEFAULT = ENSEMBLE


@dataclass
class RawScores:
    """Per-image raw material for every score (`bits_per_dim` is None for families without a likelihood,
    `background_bits_per_dim` None for models without a background model)."""

    bits_per_dim: np.ndarray | None
    png_bits_per_dim: np.ndarray
    png: list[bytes] = field(default_factory=list, repr=False)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    background_bits_per_dim: np.ndarray | None = None
    # [N, d] feature vectors for rarity (`genaug.scoring.rarity`), where computed; images whose
    # `feature_group` differs (self-audit folds: one model each) lie in different feature spaces.
    features: np.ndarray | None = field(default=None, repr=False)
    feature_group: np.ndarray | None = field(default=None, repr=False)
    # [N] distance to the nearest training images in the model's features, for models with a feature bank.
    knn_distance: np.ndarray | None = None


def available_scores(model: GenerativeModel | type[GenerativeModel]) -> list[str]:
    """The score names a family offers: with a likelihood `nll`, `complexity`, `llr` and
    `typicality`, then its raw scores, then `knn` where it has `features`, then `ensemble`
    (see `ensemble_components`).

    For a fitted model (an instance) `llr` is offered only when it carries a
    background model (`genaug.fit(..., llr=True)`), `knn` only when it carries a
    feature bank (`genaug.fit`); for a family (a class, before training, as in
    self-audit) whenever it has a likelihood, or features.
    """
    caps = model.capabilities()
    fitted = isinstance(model, GenerativeModel)
    likelihood = LIKELIHOOD_SCORES if "nll" in caps else ()
    if fitted and background_of(model) is None:
        likelihood = tuple(k for k in likelihood if k != "llr")
    knn = (KNN,) if "features" in caps and not (fitted and feature_bank_of(model) is None) else ()
    offered = [*likelihood, *model.raw_score_names, *knn]
    return [*offered, ENSEMBLE] if offered else []


def ensemble_components(raw: RawScores) -> list[str]:
    """The scores `ensemble` combines: `llr` and `knn` where the model has a background
    model and a feature bank (the pair that separated best on the emoji tasks: the
    likelihood ratio sees pixel statistics, knn content); else `complexity` and
    `typicality` (and `llr` where the model has a background model) for a family with
    a likelihood, else its raw scores. Raw `nll` stays out: the likelihood's
    preference for simple images is what the others correct."""
    if raw.bits_per_dim is None:
        return list(raw.extra)
    if raw.background_bits_per_dim is not None and raw.knn_distance is not None:
        return ["llr", KNN]
    return ["complexity", "typicality", *(["llr"] if raw.background_bits_per_dim is not None else [])]


def needs_background(kind: str) -> bool:
    """Whether the (resolved) score needs a background model trained beside the model."""
    return kind == "llr"


def reads_background(kind: str) -> bool:
    """Whether the (resolved) score reads the background model's bits/dim where the model carries
    one: `llr`, and `ensemble`, which then combines `llr` too. Other scores skip its scoring pass."""
    return kind in ("llr", ENSEMBLE)


def auto_uses_background(family: type[GenerativeModel]) -> bool:
    """Whether `auto` scores with a background model for this family, so that fitting trains one by default."""
    return needs_background(resolve_score("auto", family))


def resolve_score(kind: str, model: GenerativeModel | type[GenerativeModel]) -> str:
    """The concrete score name for `kind`: `auto` is `complexity` for a family with an exact
    likelihood (EXACT_DEFAULT); else `ensemble` (llr with knn) for a fitted model that carries a
    background model and a feature bank, `llr` for a family with a likelihood (for a fitted model:
    one that carries a background model), `complexity` for a fitted model without one, else the
    family's first raw score; anything else must be offered by the family."""
    kind = kind.lower()
    offered = available_scores(model)
    if kind == "auto":
        if not offered:
            raise GenaugError(f"model family '{model.name}' has neither a likelihood nor a raw score to detect with")
        if model.likelihood == "exact" and EXACT_DEFAULT in offered:
            return EXACT_DEFAULT
        if isinstance(model, GenerativeModel) and {DEFAULT_SCORE, KNN} <= set(offered):
            return REFERENCE_DEFAULT
        return next((k for k in (DEFAULT_SCORE, FALLBACK_SCORE) if k in offered), offered[0])
    if kind not in offered:
        if kind == "llr" and "nll" in model.capabilities():
            raise GenaugError(
                "score 'llr' needs a background model: fit with `genaug fit --llr` / genaug.fit(..., llr=True)"
            )
        if kind == KNN and "features" in model.capabilities():
            raise GenaugError("score 'knn' needs the training images' features: refit the model with this genaug")
        raise GenaugError(f"unknown score '{kind}' for model family '{model.name}'; choose auto or {', '.join(offered)}")
    return kind


def score_images(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    nll_options: dict | None = None,
    batch_size: int = SCORE_BATCH,
    seed: int = 0,
    console=None,
    with_background: bool = True,
    with_features: bool = False,
    first_row: int = 0,
) -> RawScores:
    """Model bits/dim (where the family has a likelihood; the background model's too where the
    model carries one, unless `with_background` is False), its raw scores, PNG bits/dim and PNG bytes,
    with `with_features` the feature vectors rarity measures in (`model_features`), and where the
    model carries a feature bank the distance to the nearest training images (`genaug.scoring.knn`).

    PNG encoding runs in worker threads while the model scores (zlib and
    torch both release the GIL), so the output images cost no extra pass.
    A progress bar is drawn on `console` when one is given. `images` may
    be part of a larger dataset starting at row `first_row`, a multiple of
    `batch_size`: its scores are then those the whole dataset's rows get
    (random draws are seeded per block of rows, see `genaug.scoring.nll`).
    """
    allocator.tune()  # activations reused from the heap, not mapped afresh every batch
    caps = model.capabilities()
    background = background_of(model) if with_background and "nll" in caps else None
    if "nll" in caps:
        nll_options = model.check_nll_options(dict(nll_options or {}))
    n = images.shape[0]
    passes = 2 if background is not None else 1
    with ThreadPoolExecutor(max_workers=1) as pool, progress_bar(console, "scoring", passes * n) as advance:
        png_future = pool.submit(encode_png, images)
        bpd = background_bpd = None
        blocks = {"batch_size": batch_size, "seed": seed, "first_row": first_row}
        if "nll" in caps:
            bpd = model_bits_per_dim(model, images, labels, nll_options=nll_options, progress=advance, **blocks)
        if background is not None:
            background_bpd = model_bits_per_dim(
                background, images, labels, nll_options=nll_options, progress=advance, **blocks
            )
        extra = model_raw_scores(model, images, labels, progress=None if bpd is not None else advance, **blocks)
        bank = bank_of(model)
        features = knn = None
        if with_features or bank is not None:
            features = model_features(model, images, batch_size=batch_size)
            knn = None if bank is None else bank.distance(features)
        png = png_future.result()
    return RawScores(
        bpd, png_bits_per_dim(png, model.num_dims), png, extra, background_bpd,
        features=features if with_features else None, knn_distance=knn,
    )  # fmt: skip


def score_values(
    raw: RawScores, kind: str, reference: RawScores | None = None, *, robust: bool = False
) -> np.ndarray:
    """The named (already resolved) score from raw material; higher = more anomalous.

    `typicality` is the distance of each image's bits/dim from the entropy
    estimate of the in-distribution, taken from `reference`: the calibration
    split's raw scores (its mean bits/dim, Nalisnick et al. 2019b), or in
    self-audit the out-of-fold scores themselves with `robust=True` (their
    median: the data may hold the outliers). `ensemble` is the mean robust z
    of `ensemble_components`, each against the same component of `reference`
    (`genaug.scoring.ensemble`). Other scores ignore `reference`.
    """
    if kind == ENSEMBLE:
        if reference is None:
            raise GenaugError("score 'ensemble' needs reference scores to put its components on one scale")
        names = ensemble_components(raw)
        return combine(
            {n: score_values(raw, n, reference, robust=robust) for n in names},
            {n: score_values(reference, n, reference, robust=robust) for n in names},
        )
    if kind == KNN:
        if raw.knn_distance is None:
            raise GenaugError("score 'knn' needs k-NN distances, which these scores have not; refit the model")
        return raw.knn_distance.copy()
    if kind in LIKELIHOOD_SCORES:
        if raw.bits_per_dim is None:
            raise GenaugError(f"score '{kind}' needs a likelihood, which this model has not")
        if kind == "nll":
            return raw.bits_per_dim.copy()
        if kind == "complexity":
            return raw.bits_per_dim - raw.png_bits_per_dim
        if kind == "llr":
            if raw.background_bits_per_dim is None:
                raise GenaugError("score 'llr' needs background-model scores, which these have not; fit with --llr")
            return raw.bits_per_dim - raw.background_bits_per_dim
        if reference is None or reference.bits_per_dim is None:
            raise GenaugError("score 'typicality' needs the bits/dim of reference (in-distribution) images")
        return np.abs(raw.bits_per_dim - entropy_estimate(reference.bits_per_dim, robust=robust))
    if kind not in raw.extra:
        raise GenaugError(f"score '{kind}' was not computed for these images")
    return np.asarray(raw.extra[kind], dtype=np.float64).copy()
