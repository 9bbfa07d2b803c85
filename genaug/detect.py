"""Outlier and edge-case detection: score -> calibrate -> flag.

Two modes:

* **reference** — a model fitted on clean data (`genaug.fit`) carries
  calibration scores; new images get split-conformal p-values against them
  and are flagged by Benjamini-Hochberg at `fdr`, or by `contamination`.
* **self-audit** — no clean reference: the data itself may hold the
  outliers. Images are split into K folds and each fold is scored by a model
  trained on the others (cross-fitting), so no image is scored by a model
  that memorised it. p-values come from the out-of-fold scores themselves,
  with a generalised Pareto tail fitted below their top 5%
  (`tail_p_values`), flagged by BH at `fdr`; or, when
  `contamination` is given, the top `contamination` share is flagged. The
  fold models train with a trimmed likelihood (`SELF_AUDIT_TRIM`) so the
  outliers in their training folds are not learned as normal; with `refit`
  a second round retrains them without the first round's top-scoring images,
  so outliers they fit well are not learned either. For the
  `llr` score each fold also trains a background model on its perturbed
  training folds; `typicality` measures from the median out-of-fold bits/dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console
from rich.text import Text

from genaug._version import __version__
from genaug.data.align import aligned
from genaug.data.imageset import ImageSet
from genaug.data.parquet import image_table, to_pandas, write_table
from genaug.data.readers import as_imageset
from genaug.errors import GenaugError, warn_all
from genaug.fit import attach_training_features, check_llr, new_model, scoring_options, train_background, train_on
from genaug.models.base import GenerativeModel
from genaug.models.registry import get_family
from genaug.models.store import background_of, load_model, model_hash
from genaug.progress import AUTO, resolve_console
from genaug.scoring import (
    DEFAULT_SCORE,
    FALLBACK_SCORE,
    KNN,
    RawScores,
    auto_uses_background,
    needs_background,
    reads_background,
    resolve_score,
    score_images,
    score_values,
)
from genaug.scoring.calibration import (
    benjamini_hochberg,
    check_fraction,
    conformal_p_values,
    extended_conformal_p_values,
    rank_descending,
    tail_p_values,
    top_fraction,
)
from genaug.scoring.nll import SCORE_BATCH
from genaug.scoring.rarity import EDGE_SHARE, categories, grouped_rarity
from genaug.scoring.record import CalibrationRecord
from genaug.scoring.typicality import DEFAULT_BOOTSTRAP, batch_test
from genaug.train import TrainConfig

DEFAULT_FDR = 0.05
DEFAULT_FOLDS = 2
# Reference-mode conformal p-values: "exact" ones are never below 1/(n_cal + 1),
# so with a few hundred calibration scores BH flags nothing unless dozens of
# images lie beyond all of them; "extended" adds a fitted tail there. Chosen
# by measurement (emoji and photo-crop tasks, 3 seeds): benchmarks/README.md.
CONFORMAL = ("extended", "exact")
DEFAULT_CONFORMAL = "extended"
# Fewest calibration scores whose top 20% (TAIL_FRACTION) give the extended
# tail enough points to fit; below it the BH resolution warning stays.
MIN_EXTENDED = 100
# Self-audit trains on data that may hold the outliers; leaving each batch's
# worst-fit 10% out of the gradient keeps up to ~10% contamination from being
# learned (digits + 3% foreign images, default training, seeds 0-2: AUROC
# 0.951, 0.907, 0.915 untrimmed -> 1.000 trimmed; benchmarks/README.md).
SELF_AUDIT_TRIM = 0.1
# Trimming leaves out what a model fits *badly*; outliers it fits well (simple
# drawings among photos) are learned and then look normal. `refit=R` adds a
# second cross-fitting round that trains without the images whose first-round
# scores are in the top R, so a group of such outliers no longer teaches the
# fold models its kind. Off by default: at R = 0.05 it found emoji among photo
# crops in every seed (recall .16-.99 -> .80-.96) but lost outliers the first
# round ranks poorly (other-style drawings, AUROC .83 -> .69 and .57 -> .39),
# where the top 5% is mostly rare inliers; benchmarks/README.md, "A second
# self-audit round".
SELF_AUDIT_REFIT = 0.0
SUGGESTED_REFIT = 0.05
MAX_REFIT = 0.5


@dataclass
class DetectionResult:
    """Per-image scores, p-values and flags, in input order."""

    data: ImageSet
    score: np.ndarray
    bits_per_dim: np.ndarray | None  # None for families without a likelihood: a null column
    p_value: np.ndarray
    is_outlier: np.ndarray
    rank: np.ndarray
    settings: dict
    png: list[bytes] = field(repr=False, default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Rarity among the inliers in feature space (0 typical .. 1 rarest) and outlier / edge-case / typical.
    rarity: np.ndarray | None = None
    category: np.ndarray | None = None
    # Reference mode with a likelihood: the calibration split's bits/dim, for `batch_p_value`.
    reference_bits_per_dim: np.ndarray | None = field(repr=False, default=None)

    @property
    def n_flagged(self) -> int:
        """How many images are flagged."""
        return int(self.is_outlier.sum())

    def batch_p_value(self, *, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> float:
        """Typicality test of all these images as one batch (`genaug.scoring.typicality.batch_test`):
        a small p-value says the set as a whole is shifted from the reference, too likely or too
        unlikely, even where no single image is flagged. Reference mode, families with a likelihood."""
        if self.reference_bits_per_dim is None or self.bits_per_dim is None:
            raise GenaugError("the batch typicality test needs reference mode and a model with a likelihood")
        return batch_test(self.reference_bits_per_dim, self.bits_per_dim, n_boot=n_boot, seed=seed)

    def columns(self) -> dict[str, np.ndarray]:
        """The job's output columns, in schema order."""
        return result_columns(
            self.score, self.bits_per_dim, self.p_value, self.is_outlier, self.rank, self.rarity, self.category
        )

    def table(self) -> pa.Table:
        """The result as a pyarrow Table with the Parquet schema of DESIGN.md."""
        return image_table(self.data, self.columns(), png=self.png or None)

    def to_pandas(self):
        """The result as a pandas DataFrame (image column holds PNG structs; integers stay Int64)."""
        return to_pandas(self.table())

    def aligned(self, dataset, column: str = "score") -> np.ndarray:
        """One column (score, p_value, is_outlier, rank, rarity, ...) in the row order of `dataset`
        (an ImageFolder, a Hugging Face dataset with ids, an ImageSet, a list of ids), matched by id."""
        columns = self.columns()
        if column not in columns or not isinstance(columns[column], np.ndarray):
            have = ", ".join(k for k, v in columns.items() if isinstance(v, np.ndarray))
            raise GenaugError(f"no per-image column '{column}' in this result; choose from {have}")
        return aligned(columns[column], self.data.ids, dataset)

    def __repr__(self) -> str:
        return (f"DetectionResult({len(self.data)} images, {self.n_flagged} flagged, "
                f"mode={self.settings.get('mode')!r}, score={self.settings.get('score')!r}, "
                f"{len(self.warnings)} warning(s))")

    def write(self, path: str | Path, *, command: str | None = None) -> pa.Table:
        """Write the result to Parquet atomically; returns the table written."""
        table = self.table()
        meta = {"version": __version__, "job": "detect-outliers", "command": command, **self.settings}
        write_table(table, path, genaug_metadata=meta, class_names=self.data.class_names)
        return table

    def top(self, n: int = 10) -> list[int]:
        """Positions of the `n` highest-scoring images, most anomalous first."""
        return [int(i) for i in np.argsort(self.rank, kind="stable")[:n]]

    def top_rows(self, n: int = 10) -> list[dict]:
        """The `n` highest-scoring images as rows (`describe_rows`), most anomalous first."""
        top = self.top(n)
        labels, names = self.data.labels, self.data.class_names
        label = [None if labels is None else (names[labels[i]] if names else str(labels[i])) for i in top]
        return describe_rows(self, top, [self.data.ids[i] for i in top], label)


def describe_rows(result, rows: list[int], ids: list[str], labels: list[str | None]) -> list[dict]:
    """Rows of a detection result for display: rank, index, id, label (its class name where there
    is one), score, bits_per_dim, p_value, is_outlier."""
    bpd = result.bits_per_dim
    return [
        {"rank": int(result.rank[i]), "index": i, "id": ids[k], "label": labels[k], "score": float(result.score[i]),
         "bits_per_dim": None if bpd is None else float(bpd[i]), "p_value": float(result.p_value[i]),
         "is_outlier": bool(result.is_outlier[i])}
        for k, i in enumerate(rows)
    ]  # fmt: skip


def result_columns(score, bits_per_dim, p_value, is_outlier, rank, rarity, category) -> dict:
    """A detection's output columns, in schema order (a missing `bits_per_dim`, `rarity` or
    `category` is a typed null column): one place for the in-memory and streaming writers."""
    n = len(score)
    return {
        "score": score,
        "bits_per_dim": bits_per_dim if bits_per_dim is not None else pa.nulls(n, pa.float64()),
        "p_value": p_value,
        "is_outlier": is_outlier,
        "rank": rank,
        "rarity": rarity if rarity is not None else pa.nulls(n, pa.float64()),
        "category": category.tolist() if category is not None else pa.nulls(n, pa.string()),
    }


def detect_outliers(
    data: ImageSet,
    *,
    model: GenerativeModel | str | Path | None = None,
    family: str = "vae",
    model_options: dict | None = None,
    score: str = "auto",
    fdr: float = DEFAULT_FDR,
    contamination: float | None = None,
    folds: int = DEFAULT_FOLDS,
    iwae_k: int | None = None,
    mutation_rate: float | None = None,
    conformal: str = DEFAULT_CONFORMAL,
    refit: float | None = None,
    train_config: TrainConfig | None = None,
    batch_size: int = SCORE_BATCH,
    console: Console | str | None = AUTO,
) -> DetectionResult:
    """Score every image of `data` and flag the outliers.

    With `model` (a fitted model or a checkpoint path) the reference mode
    is used; without it, self-audit by `folds`-fold cross-fitting trains
    `family` models with `train_config` (and, for `score="llr"`, background
    models on pixels perturbed at `mutation_rate`, default
    `DEFAULT_MUTATION_RATE`; a fitted model keeps its own). Flags by BH at `fdr`
    unless `contamination` (share of images to flag) is given. `conformal`
    (reference mode): "extended", the conformal p-values with a fitted tail
    beyond the largest calibration score (`extended_conformal_p_values`), or
    "exact", never below 1/(n_calibration + 1). `refit` (self-audit): the
    share of images, by first-round score, left out of a second round of fold
    models' training (twice the time; `SUGGESTED_REFIT` is the measured share);
    0, the default (`SELF_AUDIT_REFIT`), is one round.
    """
    console = resolve_console(console)
    data = as_imageset(data)
    if refit is not None:
        if model is not None:
            raise GenaugError("--refit applies to self-audit; a fitted model was trained on clean data")
        check_refit(refit)
    if model is not None:
        # Everything needed is checked before any work: the score, the options.
        plan = reference_plan(model, score=score, fdr=fdr, contamination=contamination, iwae_k=iwae_k,
                              mutation_rate=mutation_rate, conformal=conformal)  # fmt: skip
        model, settings, reference = plan.model, plan.settings, plan.record.scores
        labels = data.label_tensor() if model.num_classes > 0 else None
        raw = score_images(
            model, data.images, labels, nll_options=plan.options, batch_size=batch_size, console=console,
            with_background=reads_background(plan.kind), with_features=True,
        )
        kind, reference_bpd = plan.kind, reference.bits_per_dim
    else:
        check_fraction("fdr", fdr)
        if contamination is not None:
            check_fraction("contamination", contamination)
        cls = get_family(family)
        # A family offers `llr` whenever it has a likelihood.
        kind = resolve_score(score, cls)
        settings = {"score": kind, "fdr": fdr, "contamination": contamination}
        options = scoring_options(cls, iwae_k)
        reference, reference_bpd = None, None
        background = check_llr(cls, mutation_rate, needed=needs_background(kind))
        if background is not None:
            settings["mutation_rate"] = background
        # Feature banks only for the knn score: in self-audit the ensemble has no background models, so no llr+knn.
        cross_fit = partial(
            cross_fit_scores, data, family=family, model_options=model_options, folds=folds, nll_options=options,
            background=background, knn=kind == KNN, train_config=train_config, batch_size=batch_size, console=console,
        )  # fmt: skip
        raw = cross_fit()
        refit = SELF_AUDIT_REFIT if refit is None else refit
        if refit > 0:
            # The same top share `contamination` would flag, by the first round's scores.
            suspects = top_fraction(score_values(raw, kind, raw, robust=True), refit)
            if console is not None:
                console.print(Text(f"self-audit round 2: retraining without the {int(suspects.sum())} highest-scoring "
                                   "images", style="dim"))  # fmt: skip
            raw = cross_fit(exclude=suspects)
        trim = train_config.trim_fraction if train_config and train_config.trim_fraction is not None else SELF_AUDIT_TRIM
        settings.update(mode="self-audit", model=family, folds=folds, trim_fraction=trim, refit=refit)
        settings["nll_options"] = options
        if "iwae_k" in options:
            settings["iwae_k"] = options["iwae_k"]
    flagged = calibrate_and_flag(
        raw, kind=kind, requested=score, reference=reference, fdr=fdr, contamination=contamination, settings=settings
    )
    warn_all(flagged.warnings)
    return DetectionResult(
        data=data,
        score=flagged.score,
        bits_per_dim=raw.bits_per_dim,
        p_value=flagged.p_value,
        is_outlier=flagged.is_outlier,
        rank=flagged.rank,
        settings=settings,
        png=raw.png,
        warnings=flagged.warnings,
        reference_bits_per_dim=reference_bpd,
        rarity=flagged.rarity,
        category=flagged.category,
    )


@dataclass
class ReferencePlan:
    """What reference-mode detection scores with, checked before any image is read: the model, the
    resolved score, the scoring options, the calibration record and the settings written out."""

    model: GenerativeModel
    kind: str
    options: dict
    record: CalibrationRecord
    settings: dict


def reference_plan(
    model: GenerativeModel | str | Path,
    *,
    score: str = "auto",
    fdr: float = DEFAULT_FDR,
    contamination: float | None = None,
    iwae_k: int | None = None,
    mutation_rate: float | None = None,
    conformal: str = DEFAULT_CONFORMAL,
    device: str | torch.device = "cpu",
) -> ReferencePlan:
    """Check a reference-mode detection before any work (`fdr`, `contamination`, the score the model
    offers, scoring options equal to the calibrated ones) and gather what scoring needs.

    `model` is a fitted model or a checkpoint path (loaded here, onto `device`).
    Shared by `detect_outliers` and the streaming engines
    (`genaug.pipelines.engines`), so both refuse and record alike.
    """
    check_fraction("fdr", fdr)
    if contamination is not None:
        check_fraction("contamination", contamination)
    check_conformal(conformal)
    model_path = None
    if isinstance(model, (str, Path)):
        model_path, model = str(model), load_model(model, device=device)
    # A fitted model offers `llr` only when it carries a background model.
    kind = resolve_score(score, model)
    settings: dict = {"score": kind, "fdr": fdr, "contamination": contamination, "conformal": conformal}
    if model_path is not None:
        settings["model_path"] = model_path
    record = CalibrationRecord.of(model)
    cls = type(model)
    # --iwae-k may restate the calibrated options, never change them: the p-values compare like with like.
    options = scoring_options(cls, iwae_k, record.nll_options)
    if mutation_rate is not None:
        raise GenaugError("--mutation-rate applies to self-audit; a fitted model's background model keeps its own")
    if options != scoring_options(cls, None, record.nll_options):
        raise GenaugError(f"the model was calibrated with {record.nll_options}; score with the same options")
    settings.update(mode="reference", model=model.name, model_hash=model_hash(model), n_calibration=record.size)
    if needs_background(kind):
        settings["mutation_rate"] = background_of(model).metadata["mutation_rate"]
    settings["nll_options"] = options
    if "iwae_k" in options:
        settings["iwae_k"] = options["iwae_k"]
    return ReferencePlan(model, kind, options, record, settings)


@dataclass
class Flags:
    """A detection's per-image results computed from the gathered raw scores of every image."""

    score: np.ndarray
    p_value: np.ndarray
    is_outlier: np.ndarray
    rank: np.ndarray
    rarity: np.ndarray
    category: np.ndarray
    warnings: list[str]


def calibrate_and_flag(
    raw: RawScores,
    *,
    kind: str,
    requested: str,
    reference: RawScores | None,
    fdr: float,
    contamination: float | None,
    settings: dict,
) -> Flags:
    """Scores, p-values, flags, ranks and rarity from the raw scores of *every* image.

    With `reference` (the calibration record's raw scores) split-conformal
    p-values against it (extended beyond its largest score unless
    `settings["conformal"]` is "exact"); without (self-audit) the tail estimate of the
    scores' own null. Flags by BH at `fdr` over all images at once, or the
    top `contamination` share: never per shard, so a streamed or
    distributed job flags exactly as the in-memory one. `raw.features`
    (and `feature_group`) must be set, for rarity. `requested` is the score
    as asked (for the `auto` fallback warning); `settings` gains the flag
    rule and the edge-case share. The in-memory job and the streaming
    engines all end here.
    """
    exact = settings.get("conformal", DEFAULT_CONFORMAL) == "exact"
    if reference is not None:
        s = score_values(raw, kind, reference)
        p = (conformal_p_values if exact else extended_conformal_p_values)(score_values(reference, kind, reference), s)
    else:
        # The data may hold the outliers: typicality measures from their median.
        s = score_values(raw, kind, raw, robust=True)
        p = tail_p_values(s)
    warnings = []
    # Only where auto would have used a background model: an exact-likelihood family's auto is complexity.
    family = settings.get("model")
    if requested.lower() == "auto" and kind == FALLBACK_SCORE and family and auto_uses_background(get_family(family)):
        warnings.append(
            f"auto scored {FALLBACK_SCORE}: the model has no background model for {DEFAULT_SCORE}, the default "
            "score; refit with --llr, the default (genaug.fit(..., llr=True)), to use it"
        )
    if reference is not None and contamination is None and (exact or settings["n_calibration"] < MIN_EXTENDED):
        warnings += bh_resolution_warning(settings["n_calibration"], len(s), fdr)
    flags = top_fraction(s, contamination) if contamination is not None else benjamini_hochberg(p, fdr)
    settings["flag_rule"] = f"top {contamination:.2%}" if contamination is not None else f"BH at fdr {fdr}"
    rarity = grouped_rarity(raw.features, ~flags, raw.feature_group)
    settings["edge_share"] = EDGE_SHARE
    return Flags(s, p, flags, rank_descending(s), rarity, categories(flags, rarity), warnings)


def check_refit(refit: float) -> None:
    """Raise a clear error unless 0 <= refit < MAX_REFIT."""
    if not 0.0 <= float(refit) < MAX_REFIT:
        raise GenaugError(f"--refit must be at least 0 and below {MAX_REFIT}, got {refit}")


def check_conformal(conformal: str) -> None:
    if conformal not in CONFORMAL:
        raise GenaugError(f"--conformal must be one of {', '.join(CONFORMAL)}, got {conformal!r}")


def bh_resolution_warning(n_calibration: int, n_test: int, fdr: float) -> list[str]:
    """A warning when too few calibration scores keep BH from flagging a handful of images.

    The smallest conformal p-value is 1/(n_cal+1); BH rejects k images only
    if k/m * fdr reaches it, so at least ceil(m / (fdr * (n_cal+1))) images
    must be extreme before any is flagged. Extended p-values go lower beyond
    the calibration scores, so the warning is given for them only when the
    calibration set is too small to fit its tail (under MIN_EXTENDED).
    """
    k_min = int(np.ceil(n_test / (fdr * (n_calibration + 1)) - 1e-9))
    if k_min <= max(1, 0.01 * n_test):
        return []
    if k_min > n_test:  # not even every image scoring beyond every calibration score would do
        reach = f"cannot flag any of these {n_test} images (it needs at least {k_min} extreme ones)"
    else:
        reach = f"flags nothing unless at least {k_min} ({k_min / n_test:.1%}) of these {n_test} images are extreme"
    return [
        f"only {n_calibration} calibration scores: BH at fdr {fdr} {reach}; "
        "fit on more data or raise --calibration-fraction"
    ]


def cross_fit_scores(
    data: ImageSet,
    *,
    family: str = "vae",
    model_options: dict | None = None,
    folds: int = DEFAULT_FOLDS,
    nll_options: dict | None = None,
    background: float | None = None,
    knn: bool = False,
    exclude: np.ndarray | None = None,
    train_config: TrainConfig | None = None,
    batch_size: int = SCORE_BATCH,
    console: Console | None = None,
) -> RawScores:
    """Out-of-fold raw scores: each image scored by a model trained on the other folds.

    `exclude` (a mask): images left out of every fold model's training (and feature
    bank), still scored.

    With `knn` each fold model gets the feature bank of its training folds, and the
    held-out images their `knn` distances to it (a pass over the training folds' features).

    With `background` (a mutation rate), each fold model also gets a background
    model trained on the same folds with perturbed pixels (for `llr`)."""
    if folds < 2:
        raise GenaugError(f"--folds must be at least 2, got {folds}")
    n = len(data)
    if n < 2 * folds:
        raise GenaugError(
            f"{n} image{'s are' if n != 1 else ' is'} too few for {folds}-fold self-audit (it needs at least "
            f"{2 * folds}); score them against a model fitted on other data (--model-path)"
        )
    config = train_config or TrainConfig()
    if config.trim_fraction is None:
        config = replace(config, trim_fraction=SELF_AUDIT_TRIM)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed)).numpy()
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[perm] = np.arange(n) % folds
    keep = np.ones(n, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    parts: list[tuple[np.ndarray, RawScores]] = []
    for f in range(folds):
        held_out = np.flatnonzero(fold_of == f)
        training = data.subset(np.flatnonzero((fold_of != f) & keep))
        if len(training) == 0:
            raise GenaugError(f"self-audit fold {f + 1}/{folds} has no images left to train on; lower --refit")
        if console is not None:
            console.print(Text(f"self-audit fold {f + 1}/{folds}: training on {len(training)} images", style="dim"))
        model = new_model(data, family, model_options=model_options, seed=config.seed)
        train_on(model, training, config, console)
        if background is not None:
            train_background(model, training, config, mutation_rate=background, console=console)
        part = data.subset(held_out)
        if knn:
            # The held-in folds are this fold model's training images: the knn score's reference.
            attach_training_features(model, training, seed=config.seed)
        raw = score_images(
            model, part.images, nll_options=nll_options, batch_size=batch_size, seed=config.seed, console=console,
            with_features=True,  # in this fold model's own space
        )  # fmt: skip
        parts.append((held_out, raw))
    return _gather(parts, n)


def _gather(parts: list[tuple[np.ndarray, RawScores]], n: int) -> RawScores:
    """One RawScores in input order from per-fold RawScores of the positions given."""

    def column(get) -> np.ndarray | None:
        if get(parts[0][1]) is None:
            return None
        out = np.empty(n)
        for idx, raw in parts:
            out[idx] = get(raw)
        return out

    png: list[bytes] = [b""] * n
    for idx, raw in parts:
        for i, b in zip(idx, raw.png):
            png[i] = b
    extra = {k: column(lambda r, k=k: r.extra[k]) for k in parts[0][1].extra}
    features, group = None, None
    if parts[0][1].features is not None:
        features = np.empty((n, parts[0][1].features.shape[1]))
        group = np.empty(n, dtype=np.int64)
        for g, (idx, raw) in enumerate(parts):
            features[idx], group[idx] = raw.features, g
    return RawScores(
        column(lambda r: r.bits_per_dim),
        column(lambda r: r.png_bits_per_dim),
        png,
        extra,
        column(lambda r: r.background_bits_per_dim),
        features=features,
        feature_group=group,
        knn_distance=column(lambda r: r.knn_distance),
    )


