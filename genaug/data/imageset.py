"""`ImageSet`: the in-memory dataset every job reads and writes, and a torch `Dataset`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from genaug.errors import GenaugError


# The label `__getitem__` gives an unlabelled image (default collation cannot batch None).
NO_LABEL = -1


class LabelledImages:
    """What an image set answers from its `images` ([N, C, H, W]: a tensor, or an image source left
    on disk, `genaug.data.disk_images`), `labels` (int64 [N] or None) and `class_names`."""

    images: torch.Tensor
    labels: np.ndarray | None
    class_names: list[str] | None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        """Number of classes: from the class names, else max label + 1, else 0."""
        if self.class_names:
            return len(self.class_names)
        if self.labels is not None and len(self.labels):
            return int(self.labels.max()) + 1
        return 0

    def label_tensor(self) -> torch.Tensor | None:
        """Labels as an int64 tensor, or None."""
        return None if self.labels is None else torch.from_numpy(self.labels)


@dataclass(repr=False)
class ImageSet(torch.utils.data.Dataset, LabelledImages):
    """Images as `uint8 [N, C, H, W]` with optional labels, stable ids and provenance.

    `labels` is an int64 array of length N or None; `class_names[k]` names
    label k. `ids` are stable strings (file paths relative to the root, a
    Parquet id column, or `<name>-<index>`). `paths` keeps the original file
    path of each image where there is one (written to the output's
    `image.path`).

    It is a torch `Dataset`: `data[i]` is `(image, label)`, the image a
    uint8 [C, H, W] tensor passed through `transform` when one is set
    (`with_transform`), the label an int (NO_LABEL = -1 when unlabelled), so
    `DataLoader(data, sampler=result.sampler())` draws the rows genaug scored.
    """

    images: torch.Tensor
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    ids: list[str] = field(default_factory=list)
    paths: list[str | None] | None = None
    source: str = ""
    transform: Callable | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise GenaugError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if n == 0:
            raise GenaugError(f"no images in {self.source or 'the input'}")
        if self.images.shape[1] not in (1, 3):
            raise GenaugError(f"images must have 1 or 3 channels, got {self.images.shape[1]}")
        if not self.ids:
            stem = self.source or "image"
            self.ids = [f"{stem}-{i:06d}" for i in range(n)]
        if len(self.ids) != n:
            raise GenaugError(f"{len(self.ids)} ids for {n} images")
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
            if self.labels.shape != (n,):
                raise GenaugError(f"{self.labels.shape[0]} labels for {n} images")
        if self.paths is not None and len(self.paths) != n:
            raise GenaugError(f"{len(self.paths)} paths for {n} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int):
        """`(image, label)` of row `i`: uint8 [C, H, W] (after `transform`) and an int."""
        image = self.images[i]
        label = NO_LABEL if self.labels is None else int(self.labels[i])
        return (image if self.transform is None else self.transform(image)), label

    def with_transform(self, transform: Callable | None) -> ImageSet:
        """The same images (not copied) whose `__getitem__` passes each image through `transform`."""
        return replace(self, transform=transform)

    def __repr__(self) -> str:
        c, h, w = self.shape
        classes = f", {self.num_classes} classes" if self.labels is not None else ", unlabelled"
        source = f", source={self.source!r}" if self.source else ""
        return f"ImageSet({len(self)} images of {c}x{h}x{w}{classes}{source})"

    def subset(self, index) -> ImageSet:
        """The images at `index` (an int array or boolean mask), keeping ids and labels."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        t = torch.from_numpy(idx.astype(np.int64))
        return ImageSet(
            images=self.images[t],
            labels=None if self.labels is None else self.labels[idx],
            class_names=self.class_names,
            ids=[self.ids[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            source=self.source,
            transform=self.transform,
        )

    def fingerprint(self) -> str:
        """sha256 of shape, pixels and labels: identifies the training data in a checkpoint."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        return h.hexdigest()
