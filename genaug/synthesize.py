"""Synthetic images: sample a fitted model, optionally keep only plausible samples,
and mix them with albumentations-augmented real images (`augmented_table`).

`--filter-fdr F` treats every sample as a test point against the model's own
calibration scores: samples whose conformal p-value BH flags at false
discovery rate F look unlike the training data and are rejected, and more
are drawn until `n` pass (or a round limit is hit).

The reference is what the model made of held-out real images. A family
that decodes latents (the VAE) samples decoder outputs, which lack the
pixel noise of real photos; against the real images themselves such a
sample is an outlier however good it is (on 32x32 RGB images with sensor
noise, 0 of 1000 VAE samples passed at FDR 0.1, each "too compressible"),
and on noise-free digits every sample passes (median p-value 1.0, the test
sees nothing). Against the decoder's reconstructions of the same held-out
images, stored by `genaug.fit` as `calibration["reconstruction"]`, like is
compared with like: median p-values 0.68 and 0.56 on those two sets.
Families without that entry are compared with the real images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console

from genaug.data.imageset import ImageSet
from genaug.data.parquet import image_table
from genaug.errors import GenaugError
from genaug.limits import check_fits_in_memory
from genaug.models.base import GenerativeModel
from genaug.models.store import model_hash
from genaug.progress import AUTO, progress_bar, resolve_console
from genaug.scoring import reads_background, resolve_score, score_images, score_values
from genaug.scoring.calibration import benjamini_hochberg, check_fraction, conformal_p_values
from genaug.scoring.record import CalibrationRecord

MAX_FILTER_ROUNDS = 20
# `--filter-fdr`'s score for a family with a likelihood (see `synthesize`).
FILTER_SCORE = "complexity"


@dataclass
class Synthesis:
    """Synthetic images plus what a user needs to trust them."""

    data: ImageSet
    seed: int
    model_hash: str
    score: np.ndarray | None = None
    p_value: np.ndarray | None = None
    n_drawn: int = 0
    settings: dict = field(default_factory=dict)

    def columns(self) -> dict:
        """Output columns after the image struct and label."""
        n = len(self.data)
        cols: dict = {
            "synthetic": np.ones(n, dtype=bool),
            "model_hash": [self.model_hash] * n,
            "seed": np.full(n, self.seed, dtype=np.int64),
        }
        if self.score is not None:
            cols["score"] = self.score
            cols["p_value"] = self.p_value
        return cols


def sample_labels(model: GenerativeModel, n: int, label: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """Class labels for `n` samples: `label` for all, else uniform over classes; None if unconditional."""
    if model.num_classes == 0:
        if label is not None:
            raise GenaugError("--label needs a class-conditional model (fit with --conditional)")
        return None
    if label is None:
        return torch.randint(model.num_classes, (n,), generator=generator)
    if not 0 <= label < model.num_classes:
        names = model.metadata.get("class_names") or list(range(model.num_classes))
        raise GenaugError(f"--label {label} is not a class of this model (0..{model.num_classes - 1}: {names})")
    return torch.full((n,), label, dtype=torch.long)


@torch.inference_mode()
def draw(
    model: GenerativeModel,
    n: int,
    *,
    label: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator,
    batch_size: int = 1024,
    advance=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` samples (uint8 on CPU) and their labels, in batches."""
    labels = sample_labels(model, n, label, generator)
    # Sampling noise is drawn on the model's device from a generator seeded from ours,
    # so CPU and CUDA runs are each reproducible.
    device_gen = torch.Generator(device=model.device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    chunks = []
    for start in range(0, n, batch_size):
        y = None if labels is None else labels[start : start + batch_size].to(model.device)
        m = min(batch_size, n - start)
        chunks.append(model.sample(m, y, generator=device_gen, temperature=temperature).cpu())
        if advance is not None:
            advance(m)
    return torch.cat(chunks), labels


def synthesize(
    model: GenerativeModel,
    n: int,
    *,
    label: int | None = None,
    temperature: float = 1.0,
    filter_fdr: float | None = None,
    score: str = "auto",
    seed: int = 0,
    console: Console | str | None = AUTO,
) -> Synthesis:
    """Draw `n` synthetic images from `model` (class `label` if given).

    With `filter_fdr`, samples that BH flags against the model's calibration
    scores at that FDR are rejected and replaced (see the module docstring
    for which calibration scores).
    """
    console = resolve_console(console)
    if "sample" not in model.capabilities():
        raise GenaugError(f"model family '{model.name}' cannot sample")
    if n < 1:
        raise GenaugError(f"-n must be at least 1, got {n}")
    check_fits_in_memory(n, model.image_shape, "-n")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise GenaugError(f"--temperature must be a positive finite number, got {temperature}")
    generator = torch.Generator().manual_seed(seed)
    settings = {"n": n, "label": label, "temperature": temperature, "filter_fdr": filter_fdr, "seed": seed}
    if filter_fdr is None:
        with progress_bar(console, "sampling", n) as advance:
            images, labels = draw(model, n, label=label, temperature=temperature, generator=generator, advance=advance)
        return Synthesis(_as_imageset(model, images, labels, seed), seed, model_hash(model), n_drawn=n, settings=settings)

    check_fraction("filter-fdr", filter_fdr)
    if not model.metadata.get("calibration"):
        raise GenaugError("--filter-fdr needs a model fitted with calibration scores (`genaug fit`)")
    record = CalibrationRecord.of(model)
    reference = record.reconstruction or record.scores
    settings["filter_reference"] = "reconstructions" if record.reconstruction is not None else "real images"
    # The filter was measured with complexity against reconstructions; `auto`'s llr is measured for
    # real images only, so the filter keeps complexity where the family has a likelihood.
    kind = resolve_score(FILTER_SCORE if score == "auto" and "nll" in model.capabilities() else score, model)
    cal_scores = score_values(reference, kind, reference)
    kept_x, kept_y, kept_s, kept_p, drawn = [], [], [], [], 0
    with progress_bar(console, "sampling + filtering", n) as advance:
        for _ in range(MAX_FILTER_ROUNDS):
            need = n - sum(len(x) for x in kept_x)
            if need <= 0:
                break
            # Over-draw a little so one round usually suffices.
            m = max(need + need // 4, 16)
            images, labels = draw(model, m, label=label, temperature=temperature, generator=generator)
            drawn += m
            raw = score_images(
                model, images, labels, nll_options=record.nll_options, seed=seed, with_background=reads_background(kind)
            )
            s = score_values(raw, kind, reference)
            p = conformal_p_values(cal_scores, s)
            keep = ~benjamini_hochberg(p, filter_fdr)
            idx = np.flatnonzero(keep)[:need]
            kept_x.append(images[torch.from_numpy(idx)])
            kept_y.append(None if labels is None else labels[torch.from_numpy(idx)])
            kept_s.append(s[idx])
            kept_p.append(p[idx])
            advance(len(idx))
    got = sum(len(x) for x in kept_x)
    if got < n:
        raise GenaugError(
            f"only {got} of {n} samples passed --filter-fdr {filter_fdr} after {drawn} draws; "
            "raise --filter-fdr, lower --temperature, or train the model longer"
        )
    labels = None if kept_y[0] is None else torch.cat(kept_y)
    return Synthesis(
        _as_imageset(model, torch.cat(kept_x), labels, seed),
        seed,
        model_hash(model),
        score=np.concatenate(kept_s),
        p_value=np.concatenate(kept_p),
        n_drawn=drawn,
        settings=settings,
    )


def _as_imageset(model: GenerativeModel, images: torch.Tensor, labels: torch.Tensor | None, seed: int) -> ImageSet:
    names = model.metadata.get("class_names")
    # Ids name the model and seed so rows from different runs never collide.
    prefix = f"synthetic-{model_hash(model)[:8]}-s{seed}"
    return ImageSet(
        images=images,
        labels=None if labels is None else labels.numpy(),
        class_names=names if labels is not None else None,
        ids=[f"{prefix}-{i:06d}" for i in range(images.shape[0])],
        source="synthetic",
    )


def augmented_table(
    data: ImageSet,
    recipe,
    *,
    copies: int = 1,
    seed: int = 0,
    keep_originals: bool = False,
    model: GenerativeModel | None = None,
    synthetic_ratio: float = 0.0,
    console: Console | None = None,
) -> tuple[pa.Table, dict]:
    """Real images augmented `copies` times, mixed with synthetic ones, as one table.

    Rows: the originals (with `keep_originals`), then the augmented copies
    (copy-major), then `round(synthetic_ratio * n_augmented)` samples of
    `model`. Columns after the image: `kind` (original / augmented /
    synthetic), `synthetic`, `source_id`, `copy`. Returns (table, settings).
    """
    from genaug.augment import augment, recipe_label

    if not (synthetic_ratio >= 0 and math.isfinite(synthetic_ratio)):
        raise GenaugError(f"--synthetic-ratio must be a finite number >= 0, got {synthetic_ratio}")
    if synthetic_ratio > 0 and model is None:
        raise GenaugError("--synthetic-ratio needs --model-path (a fitted model to sample from)")
    if model is not None and tuple(model.image_shape) != data.shape:
        raise GenaugError(f"the model makes {tuple(model.image_shape)} images but the data is {data.shape}; pass --image-size")
    if isinstance(copies, int) and copies > 0:  # augment() checks copies itself
        check_fits_in_memory(round(synthetic_ratio * copies * len(data)), data.shape, "--synthetic-ratio")
    aug = augment(data, recipe, copies=copies, seed=seed, progress=console or False)
    parts = []

    def part(imageset, kind, index, source_ids, copy_numbers, png=None):
        n = len(imageset)
        columns = {
            "kind": [kind] * n,
            "synthetic": np.full(n, kind == "synthetic"),
            "source_id": pa.array(source_ids, type=pa.string()),
            "copy": pa.array(copy_numbers, type=pa.int64()),
        }
        parts.append(image_table(imageset, columns, png=png, index=pa.array(index, type=pa.int64())))

    if keep_originals:
        part(data, "original", np.arange(len(data)), data.ids, [None] * len(data))
    part(aug.data, "augmented", aug.source_index, aug.source_ids, aug.copy)
    n_synth = int(round(synthetic_ratio * len(aug.data)))
    settings = {**aug.settings, "recipe": recipe_label(recipe), "keep_originals": keep_originals,
                "synthetic_ratio": synthetic_ratio, "n_augmented": len(aug.data), "n_synthetic": n_synth}
    if n_synth:
        synth = synthesize(model, n_synth, seed=seed, console=console)
        part(synth.data, "synthetic", [None] * n_synth, [None] * n_synth, [None] * n_synth)
        settings["model_hash"] = synth.model_hash
    return pa.concat_tables(parts), settings
