"""Random crops of scikit-learn's two sample photographs: real-image data for the benchmarks, no download."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def random_crops(sources: list[torch.Tensor], n: int, size: int, sides: tuple[int, int],
                 rng: np.random.Generator) -> torch.Tensor:
    """uint8 [n, C, size, size]: each a square crop of a random source (float [C, H, W], 0..255)
    with a side drawn uniformly in `sides` (inclusive) at a random place, downscaled with antialiasing."""
    out = torch.empty(n, sources[0].shape[0], size, size)
    for i in range(n):
        src = sources[rng.integers(len(sources))]
        side = int(rng.integers(sides[0], sides[1] + 1))
        top = int(rng.integers(0, src.shape[1] - side + 1))
        left = int(rng.integers(0, src.shape[2] - side + 1))
        crop = src[None, :, top : top + side, left : left + side]
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)
