"""Score functions: turn a model and images into "higher = more anomalous".

`score_images` computes the raw material once: the model's bits/dim where
the family has a likelihood, its extra named scores (`raw_scores`, e.g. an
autoencoder's `recon`), PNG bits/dim, and the PNG bytes, reused for the
output file. `score_values` turns it into a named score. Which scores a
family offers follows from its declarations (`available_scores`).
Calibration lives in `genaug.scoring.calibration`, the stored calibration
record in `genaug.scoring.record`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from genaug.data.parquet import encode_png
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.progress import progress_bar
from genaug.scoring.complexity import png_bits_per_dim
from genaug.scoring.nll import model_bits_per_dim, model_raw_scores

LIKELIHOOD_SCORES = ("nll", "complexity")
# `auto` for a family with a likelihood: complexity survives the likelihood's preference for simple images.
DEFAULT_SCORE = "complexity"


@dataclass
class RawScores:
    """Per-image raw material for every score (`bits_per_dim` is None for families without a likelihood)."""

    bits_per_dim: np.ndarray | None
    png_bits_per_dim: np.ndarray
    png: list[bytes] = field(default_factory=list, repr=False)
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def available_scores(model: GenerativeModel | type[GenerativeModel]) -> list[str]:
    """The score names a family offers: `nll` and `complexity` with a likelihood, then its raw scores."""
    caps = model.capabilities()
    return [*(LIKELIHOOD_SCORES if "nll" in caps else ()), *model.raw_score_names]


def resolve_score(kind: str, model: GenerativeModel | type[GenerativeModel]) -> str:
    """The concrete score name for `kind`: `auto` is complexity for a family with a
    likelihood, else its first raw score; anything else must be offered by the family."""
    kind = kind.lower()
    offered = available_scores(model)
    if kind == "auto":
        if not offered:
            raise GenaugError(f"model family '{model.name}' has neither a likelihood nor a raw score to detect with")
        return DEFAULT_SCORE if DEFAULT_SCORE in offered else offered[0]
    if kind not in offered:
        raise GenaugError(f"unknown score '{kind}' for model family '{model.name}'; choose auto or {', '.join(offered)}")
    return kind


def score_images(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    nll_options: dict | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    console=None,
) -> RawScores:
    """Model bits/dim (where the family has a likelihood), its raw scores, PNG bits/dim and PNG bytes.

    PNG encoding runs in worker threads while the model scores (zlib and
    torch both release the GIL), so the output images cost no extra pass.
    A progress bar is drawn on `console` when one is given.
    """
    caps = model.capabilities()
    if "nll" in caps:
        nll_options = model.check_nll_options(dict(nll_options or {}))
    with ThreadPoolExecutor(max_workers=1) as pool, progress_bar(console, "scoring", images.shape[0]) as advance:
        png_future = pool.submit(encode_png, images)
        bpd = None
        if "nll" in caps:
            bpd = model_bits_per_dim(
                model, images, labels, nll_options=nll_options, batch_size=batch_size, seed=seed, progress=advance
            )
        extra = model_raw_scores(
            model, images, labels, batch_size=batch_size, seed=seed, progress=None if bpd is not None else advance
        )
        png = png_future.result()
    return RawScores(bpd, png_bits_per_dim(png, model.num_dims), png, extra)


def score_values(raw: RawScores, kind: str) -> np.ndarray:
    """The named (already resolved) score from raw material; higher = more anomalous."""
    if kind in LIKELIHOOD_SCORES:
        if raw.bits_per_dim is None:
            raise GenaugError(f"score '{kind}' needs a likelihood, which this model has not")
        return raw.bits_per_dim.copy() if kind == "nll" else raw.bits_per_dim - raw.png_bits_per_dim
    if kind not in raw.extra:
        raise GenaugError(f"score '{kind}' was not computed for these images")
    return np.asarray(raw.extra[kind], dtype=np.float64).copy()
