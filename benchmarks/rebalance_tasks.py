"""Realistic rebalancing tasks built on the emoji sets: a rare attribute on 2% of the training images.

Each task splits one emoji style 70/30 (per seed) and labels every image by
its emoji category (10 classes). In the training split a *rare group* makes
up `rare_share` of the images; the classifier is then tested on held-out
images with the rare attribute (rare group) and without (common group):

* ``tone``: People & Body emoji come in six skin tones; the training split
  keeps tones 0-3 and cuts the dark tones (4 and 5) down to the rare share.
  The rare group is real: dark-skinned people drawn by the same artists.
* ``night``: any emoji rotated a quarter turn and darkened to 35% (the
  issue's "harsh conditions" attribute: a camera on its side at night).
* ``cast``: any emoji under a strong blue colour cast (white becomes
  pale blue, skin and red go grey-violet): another light source.
* ``negative``: any emoji as a colour negative (255 - x, a black
  background): the emoji analogue of the inverted digits.

The constructed attributes are applied to a random rare subset of the
training split and, for the test, to every held-out image (the rare test
group is the held-out images with the attribute, the common test group the
same images without it), as with the inverted digits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genaug.data.imageset import ImageSet

TASKS = ("tone", "night", "cast", "negative")
DARK_TONES = (4, 5)
TRAIN_SHARE = 0.7


@dataclass
class RebalanceTask:
    """A biased training set and its two test groups."""

    name: str
    train: ImageSet
    rare: np.ndarray  # bool [len(train)]: the rare group in the training set
    test_rare: ImageSet
    test_common: ImageSet


def load_emoji(emoji_dir: Path, style: str):
    """(uint8 images [N, 3, 32, 32], category [N], tone [N], category names) of one style."""
    with np.load(Path(emoji_dir) / f"emoji-{style}-32.npz", allow_pickle=False) as d:
        x = torch.from_numpy(d["x"]).permute(0, 3, 1, 2).contiguous()
        return x, d["y"].astype(np.int64), d["tone"].astype(np.int64), [str(c) for c in d["categories"]]


def night(images: torch.Tensor) -> torch.Tensor:
    """A quarter turn and 35% brightness."""
    return (torch.rot90(images, 1, dims=(-2, -1)).float() * 0.35).round().to(torch.uint8)


def cast(images: torch.Tensor) -> torch.Tensor:
    """A strong blue cast: red and green scaled down, blue lifted."""
    gain = torch.tensor([0.55, 0.7, 1.0]).view(1, 3, 1, 1)
    offset = torch.tensor([0.0, 10.0, 40.0]).view(1, 3, 1, 1)
    return (images.float() * gain + offset).clamp(0, 255).round().to(torch.uint8)


def negative(images: torch.Tensor) -> torch.Tensor:
    """The colour negative."""
    return 255 - images


ATTRIBUTES = {"night": night, "cast": cast, "negative": negative}


def build(emoji_dir: Path, style: str, task: str, seed: int, rare_share: float = 0.02) -> RebalanceTask:
    """One task on one style; the split and the rare subset depend on `seed` only."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    x, y, tone, categories = load_emoji(emoji_dir, style)
    rng = np.random.default_rng([seed, 10])
    perm = rng.permutation(len(x))
    train_idx, test_idx = perm[: int(TRAIN_SHARE * len(x))], perm[int(TRAIN_SHARE * len(x)) :]

    def subset(idx, images=None, source=""):
        images = x[torch.from_numpy(idx)] if images is None else images
        return ImageSet(images, y[idx], categories, source=f"{style}-{task}{source}")

    if task == "tone":
        dark = np.isin(tone, DARK_TONES)
        common = train_idx[~dark[train_idx]]
        n_rare = int(round(rare_share * len(common) / (1 - rare_share)))
        rare_idx = rng.choice(train_idx[dark[train_idx]], size=n_rare, replace=False)
        idx = rng.permutation(np.concatenate([common, rare_idx]))
        rare = np.isin(idx, rare_idx)
        test_dark = test_idx[dark[test_idx]]
        return RebalanceTask(task, subset(idx), rare, subset(test_dark, source="-rare"),
                             subset(test_idx[~dark[test_idx]], source="-common"))
    attribute = ATTRIBUTES[task]
    rare = np.zeros(len(train_idx), dtype=bool)
    rare[rng.choice(len(train_idx), size=int(round(rare_share * len(train_idx))), replace=False)] = True
    images = x[torch.from_numpy(train_idx)].clone()
    images[torch.from_numpy(rare)] = attribute(images[torch.from_numpy(rare)])
    test_images = x[torch.from_numpy(test_idx)]
    return RebalanceTask(task, subset(train_idx, images), rare, subset(test_idx, attribute(test_images), "-rare"),
                         subset(test_idx, test_images, "-common"))
