"""Shared fixtures: small datasets generated here or bundled with scikit-learn."""

import numpy as np
import pytest
import torch

from genaug.data.imageset import ImageSet
from genaug.train import TrainConfig


def digits_imageset() -> ImageSet:
    """scikit-learn's bundled 8x8 digits as an ImageSet (no download)."""
    from genaug.data.readers import load_images

    return load_images("digits")


def with_foreign_images(data: ImageSet, share: float = 0.03, seed: int = 0) -> tuple[ImageSet, np.ndarray]:
    """`data` with `share` of its images replaced by foreign ones: half inverted, half uniform noise.

    Returns the new set and a boolean mask of the foreign images.
    """
    rng = np.random.default_rng(seed)
    n = len(data)
    idx = rng.choice(n, size=int(round(share * n)), replace=False)
    images = data.images.clone()
    half = len(idx) // 2
    images[idx[:half]] = 255 - images[idx[:half]]
    noise = rng.integers(0, 256, size=(len(idx) - half, *data.shape), dtype=np.uint8)
    images[idx[half:]] = torch.from_numpy(noise)
    mask = np.zeros(n, dtype=bool)
    mask[idx] = True
    return ImageSet(images, data.labels, data.class_names, list(data.ids), None, data.source), mask


@pytest.fixture(scope="session")
def digits() -> ImageSet:
    return digits_imageset()


@pytest.fixture
def quick_config() -> TrainConfig:
    """A training config small enough for unit tests."""
    return TrainConfig(epochs=3, progress=False, seed=0)
