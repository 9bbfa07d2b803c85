"""The `knn` score: how far an image lies from the nearest training images, in the model's features.

A likelihood asks how well the model can *encode* an image, and a model
that draws smooth shapes encodes a novel smooth shape just as well. The
distance to the nearest training images in the model's feature space
(`GenerativeModel.features`, e.g. a VAE's posterior means) asks instead
whether anything like the image was in the training data: on the emoji
tasks it separates novel categories far better than the likelihood ratio
(benchmarks/README.md, "k-NN distance in the model's features").

The training images' features travel with the model as a **feature bank**
(`genaug.models.store.attach_feature_bank`, stored in the checkpoint):
standardised on the training images, reduced to at most `MAX_COMPONENTS`
principal components, at most `MAX_REFERENCE` rows (a seeded sample).
`genaug.fit` builds it from the training split, so the calibration split's
distances are those of clean images the bank never saw, and the conformal
p-values stay valid. Self-audit builds one per fold model from its
training folds, which may hold outliers: an injected outlier then finds its
own kind there (photo crops injected among emoji find each other), which
makes `knn` a weak self-audit score (benchmarks/README.md).

`FeatureSpace` (standardise, then project) is shared with rarity
(`genaug.scoring.rarity`), which measures among the scored images instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genaug.errors import GenaugError
from genaug.models.store import attach_feature_bank, feature_bank_of

# k of the k-NN distance: the nearest training image alone separated best on the emoji tasks, in
# reference mode (mean AUROC over 8 directions and 2 seeds: 1-NN 0.856, 5-NN 0.836, 20-NN 0.778) and
# in self-audit too (4 directions: 1-NN 0.718, 5-NN 0.701, 20-NN 0.681, 50-NN 0.655), although there
# the training folds hold the injected outliers and an outlier's nearest neighbour may be its own kind.
NEIGHBOURS = 1
# Features are reduced to at most this many principal components before the search:
# distances in hundreds of raw dimensions are dominated by noise.
MAX_COMPONENTS = 32
# At most this many reference rows, a seeded sample: an exact search against every training image is
# quadratic in the rows, and the bank is stored in the checkpoint (20,000 x 32 float32: 2.5 MB).
MAX_REFERENCE = 20_000
QUERY_CHUNK = 8192


@dataclass
class FeatureSpace:
    """Standardise features (`mean`, `scale`), then project them on principal components
    (`centre`, `components` [c, d]; None: no projection, the features have few dimensions)."""

    mean: np.ndarray
    scale: np.ndarray
    centre: np.ndarray | None = None
    components: np.ndarray | None = None

    @classmethod
    def fit(cls, z: np.ndarray, rows: np.ndarray, sample: np.ndarray | None = None) -> FeatureSpace:
        """Standardisation from the rows `rows` of `z` (indices), principal components from the
        rows `sample` (default: `rows`). The mean and sd are summed in chunks: no standardised
        copy of every row, which on a streamed dataset would be most of the job's memory."""
        sample = rows if sample is None else sample
        weight = np.zeros(len(z))
        weight[rows] = 1.0 / len(rows)
        mean, square = np.zeros(z.shape[1]), np.zeros(z.shape[1])
        for start in range(0, len(z), QUERY_CHUNK):
            part = z[start : start + QUERY_CHUNK].astype(np.float64)
            mean += weight[start : start + QUERY_CHUNK] @ part
            square += weight[start : start + QUERY_CHUNK] @ (part * part)
        sd = np.sqrt(np.maximum(square - mean**2, 0.0))
        scale = np.where(sd > 1e-6 * np.maximum(np.abs(mean), 1.0), sd, 1.0)  # constant: sd is rounding noise
        space = cls(mean, scale)
        components = min(MAX_COMPONENTS, z.shape[1], len(sample))
        if components < z.shape[1]:
            from sklearn.decomposition import PCA

            pca = PCA(components, random_state=0).fit(space.project(z[sample]))
            space.centre, space.components = pca.mean_, pca.components_
        return space

    def project(self, part: np.ndarray) -> np.ndarray:
        """[n, c] float64 coordinates of [n, d] features."""
        x = (np.asarray(part, dtype=np.float64) - self.mean) / self.scale
        return x if self.components is None else (x - self.centre) @ self.components.T


@dataclass
class FeatureBank:
    """Projected training features (`reference` [m, c]) in `space`, searched for `neighbours` neighbours."""

    space: FeatureSpace
    reference: np.ndarray
    neighbours: int

    @classmethod
    def build(cls, features: np.ndarray, neighbours: int = NEIGHBOURS) -> FeatureBank:
        """The bank of [n, d] training features (all of them: sample beforehand, see `bank_rows`)."""
        z = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
        if len(z) < neighbours:
            raise GenaugError(f"the knn score needs at least {neighbours} training images, got {len(z)}")
        space = FeatureSpace.fit(z, np.arange(len(z)))
        return cls(space, space.project(z).astype(np.float32), neighbours)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """[n] mean distance of each row of [n, d] `features` to its `neighbours` nearest reference rows."""
        from sklearn.neighbors import NearestNeighbors

        z = np.asarray(features).reshape(len(features), -1)
        if z.shape[1] != self.space.mean.shape[0]:
            raise GenaugError(
                f"the model's features have {z.shape[1]} dimensions, its feature bank {self.space.mean.shape[0]}; refit the model"
            )
        index = NearestNeighbors(n_neighbors=self.neighbours).fit(self.reference.astype(np.float64))
        out = np.empty(len(z))
        for start in range(0, len(z), QUERY_CHUNK):  # in chunks: neighbour lists of every row would be O(n k)
            dist, _ = index.kneighbors(self.space.project(z[start : start + QUERY_CHUNK]))
            out[start : start + len(dist)] = dist.mean(axis=1)
        return out

    def tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The bank as the tensors and description `attach_feature_bank` stores."""
        d, c = self.space.mean.shape[0], self.reference.shape[1]
        centre = np.zeros(d) if self.space.centre is None else self.space.centre
        components = np.eye(d) if self.space.components is None else self.space.components
        arrays = {"mean": self.space.mean, "scale": self.space.scale, "centre": centre,
                  "components": components, "reference": self.reference}  # fmt: skip
        info = {"neighbours": self.neighbours, "dims": d, "components": c, "size": int(self.reference.shape[0])}
        return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}, info

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], info: dict) -> FeatureBank:
        t = {k: v.double().numpy() for k, v in tensors.items() if k != "reference"}
        space = FeatureSpace(t["mean"], t["scale"], t["centre"], t["components"])
        return cls(space, tensors["reference"].numpy(), int(info["neighbours"]))


def bank_rows(n: int, seed: int = 0) -> np.ndarray:
    """The sorted training rows a bank of `n` training images holds: all, or a seeded sample of MAX_REFERENCE."""
    if n <= MAX_REFERENCE:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_REFERENCE, replace=False))


def attach_bank(model, features: np.ndarray, neighbours: int = NEIGHBOURS) -> FeatureBank:
    """Build the feature bank of the training `features` and attach it to `model` (stored with it)."""
    bank = FeatureBank.build(features, neighbours)
    attach_feature_bank(model, *bank.tensors())
    return bank


def bank_of(model) -> FeatureBank | None:
    """The model's feature bank, or None when it carries none."""
    stored = feature_bank_of(model)
    return None if stored is None else FeatureBank.from_tensors(*stored)
