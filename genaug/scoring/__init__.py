"""Score functions: turn a model and images into "higher = more anomalous".

`score_images` computes the raw material once (model bits/dim, PNG bits/dim,
and the PNG bytes, reused for the output file); `score_values` turns it into
a named score. Calibration lives in `genaug.scoring.calibration`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from genaug.data.parquet import encode_png
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.progress import progress_bar
from genaug.scoring.complexity import png_bits_per_dim
from genaug.scoring.nll import model_bits_per_dim

SCORES = ("auto", "nll", "complexity")
DEFAULT_SCORE = "complexity"


@dataclass
class RawScores:
    """Per-image raw material for every score."""

    bits_per_dim: np.ndarray
    png_bits_per_dim: np.ndarray
    png: list[bytes]


def resolve_score(kind: str) -> str:
    """The concrete score name for `kind` (`auto` -> complexity, which survives the
    likelihood's preference for simple images)."""
    kind = kind.lower()
    if kind not in SCORES:
        raise GenaugError(f"unknown score '{kind}'; choose one of {', '.join(SCORES)}")
    return DEFAULT_SCORE if kind == "auto" else kind


def score_images(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    k: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    console=None,
) -> RawScores:
    """Model bits/dim, PNG bits/dim and PNG bytes of every image.

    PNG encoding runs in worker threads while the model scores (zlib and
    torch both release the GIL), so the output images cost no extra pass.
    A progress bar is drawn on `console` when one is given.
    """
    if k < 1:
        raise GenaugError(f"--iwae-k must be at least 1, got {k}")
    with ThreadPoolExecutor(max_workers=1) as pool, progress_bar(console, "scoring", images.shape[0]) as advance:
        png_future = pool.submit(encode_png, images)
        bpd = model_bits_per_dim(model, images, labels, k=k, batch_size=batch_size, seed=seed, progress=advance)
        png = png_future.result()
    return RawScores(bpd, png_bits_per_dim(png, model.num_dims), png)


def score_values(raw: RawScores, kind: str) -> np.ndarray:
    """The named score from raw material; higher = more anomalous."""
    kind = resolve_score(kind)
    if kind == "nll":
        return raw.bits_per_dim.copy()
    return raw.bits_per_dim - raw.png_bits_per_dim
