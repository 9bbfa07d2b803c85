"""Model likelihood scores in bits/dim, batched and reproducible."""

from __future__ import annotations

import math

import numpy as np
import torch

from genaug.models.base import GenerativeModel, bits_per_dim


@torch.inference_mode()
def model_bits_per_dim(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    nll_options: dict | None = None,
    batch_size: int = 1024,
    seed: int = 0,
    progress=None,
) -> np.ndarray:
    """[N] negative log-likelihood (or its bound) of each image in bits/dim.

    A class-conditional model scores labelled images under their own class;
    unlabelled images get the marginal `-log sum_y p(x|y) p(y)` with a
    uniform class prior, so such a model still scores data without labels.
    `progress` is an optional callable taking the number of images done.
    """
    model.eval()
    options = dict(nll_options or {})
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = np.empty(images.shape[0], dtype=np.float64)
    conditional = model.num_classes > 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        if conditional and labels is None:
            nats = _marginal_nll(model, x, options, generator=generator)
        else:
            y = None if not conditional else labels[start : start + batch_size].to(device)
            nats = model.nll(x, y, generator=generator, **options)
        out[start : start + x.shape[0]] = bits_per_dim(nats.float(), model.num_dims).cpu().numpy()
        if progress is not None:
            progress(x.shape[0])
    return out


def _marginal_nll(model: GenerativeModel, x: torch.Tensor, options: dict, *, generator) -> torch.Tensor:
    per_class = torch.stack(
        [
            model.nll(x, torch.full((x.shape[0],), c, device=x.device, dtype=torch.long), generator=generator, **options)
            for c in range(model.num_classes)
        ]
    )
    return -(torch.logsumexp(-per_class, dim=0) - math.log(model.num_classes))


@torch.inference_mode()
def model_raw_scores(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    batch_size: int = 1024,
    seed: int = 0,
    progress=None,
) -> dict[str, np.ndarray]:
    """The family's extra named scores (`raw_score_names`), each [N] float64; {} when it has none."""
    names = model.raw_score_names
    if not names:
        return {}
    model.eval()
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    out = {name: np.empty(images.shape[0], dtype=np.float64) for name in names}
    conditional = model.num_classes > 0 and labels is not None
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device) if conditional else None
        scores = model.raw_scores(x, y, generator=generator)
        for name in names:
            out[name][start : start + x.shape[0]] = scores[name].float().cpu().numpy()
        if progress is not None:
            progress(x.shape[0])
    return out
