"""Training data read from disk: Parquet images decoded a row group at a time, for `genaug.fit`.

`ParquetImages` is the image source `genaug.train` reads batches from
(`len`, `.shape`, `[indices]`); `ImageRows` is a view of some of its rows (a
training or calibration split) that shares its cache; `DiskImageSet` is what
`genaug.fit` needs of an `ImageSet` (shape, labels, class names, subsets, the
fingerprint) for such data, and `training_data` decides between it and the
in-memory `ImageSet`: Parquet input whose decoded pixels exceed
`stream_threshold()` bytes (`GENAUG_STREAM_BYTES`, default 1 GiB; 0 streams
always) trains from disk, anything else loads whole.

Shuffling from disk: a source says where its blocks (row groups) start and
how many decoded bytes it caches (`blocks()`, `cache_bytes`), and the
training loop shuffles within windows of blocks that fit half that cache, in
a random window order (`genaug.train`). When the training split fits one
window (up to 256 MiB decoded by default: 340,000 28x28 gray images, 87,000
32x32 RGB ones) that is the in-memory shuffle, so the model is the one the
in-memory job trains, bit for bit; beyond it each batch mixes images of a
window rather than of the whole dataset.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from genaug.data.imageset import ImageSet, LabelledImages
from genaug.errors import GenaugError

# Decoded pixels a `ParquetImages` keeps: two shuffle windows of 256 MiB.
CACHE_BYTES = 512 * 2**20
# Decoded pixels above which `training_data` streams Parquet input (GENAUG_STREAM_BYTES overrides; 0: always).
STREAM_BYTES = 2**30
_READ_ROWS = 8192  # rows per read when a split is read in order (fingerprint, calibration)


class ParquetImages:
    """Images of a Parquet source read from disk as they are needed: the image source `genaug.train`
    takes for data that does not fit in memory.

    `len(x)`, `x.shape` (N, C, H, W) and `x[indices]` (a LongTensor, in any
    order, repeats allowed) -> uint8 [k, C, H, W], the same pixels
    `load_images` gives those rows. Each call reads only the row groups
    holding the rows asked for, and keeps the most recent ones decoded up to
    `cache_bytes` (always the last one), so a sampler drawing from a few row
    groups at a time reads each once. `labels` and `class_names` are the
    source's; `blocks()` and `cache_bytes` tell `genaug.train` how to shuffle.

    Channels: the first image decides (RGB stays RGB and turns gray images
    RGB, as `load_images` does); a colour image in a dataset whose first
    image is gray is refused, as a stream cannot go back and convert the
    rows already served: pass `mode` to `open_parquet` for such data.
    """

    def __init__(self, source, *, cache_bytes: int = CACHE_BYTES) -> None:
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 1:
            raise GenaugError(f"cache_bytes must be a positive integer, got {cache_bytes!r}")
        self.source = source
        self.labels, self.class_names = source.labels, source.class_names
        groups = source.row_groups()
        self._starts = np.array([s for s, _ in groups], dtype=np.int64)
        self._sizes = np.array([n for _, n in groups], dtype=np.int64)
        first = source.read(0, 1)
        c, h, w = first.images.shape[1:]
        # An RGB first image makes every image RGB, as in `load_images`.
        self._mode = source.mode or ("RGB" if c == 3 else None)
        self.shape = (len(source), int(c), int(h), int(w))
        self.cache_bytes = cache_bytes
        self._decoded: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._held = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ParquetImages({self.source.source!r}, shape={self.shape})"

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(first row, decoded bytes) of every row group: the units this source reads and caches."""
        return self._starts.copy(), self._sizes * math.prod(self.shape[1:])

    def __getitem__(self, indices) -> torch.Tensor:
        """uint8 [k, C, H, W]: the images at `indices` (ints, negative from the end), in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).numpy()
        n = self.shape[0]
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"index {bad} is out of range for {n} images")
        idx = np.where(idx < 0, idx + n, idx)
        out = torch.empty((idx.size, *self.shape[1:]), dtype=torch.uint8)
        group = np.searchsorted(self._starts, idx, side="right") - 1
        for g in np.unique(group):
            where = np.flatnonzero(group == g)
            block = self._group(int(g))
            out[torch.from_numpy(where)] = block[torch.from_numpy(idx[where] - self._starts[g])]
        return out

    def _group(self, g: int) -> torch.Tensor:
        if g in self._decoded:
            self._decoded.move_to_end(g)
            return self._decoded[g]
        start = int(self._starts[g])
        batch = self.source.read(start, start + int(self._sizes[g]), mode=self._mode)
        got = tuple(batch.images.shape[1:])
        if got != self.shape[1:]:
            c, h, w = self.shape[1:]
            if got[0] != c:
                raise GenaugError(
                    f"{self.source.source} has colour images (from row {start}) but its first image is gray; "
                    "pass mode='rgb' (or 'gray') to read every image one way"
                )
            raise GenaugError(
                f"images in {self.source.source} have different sizes ({h}x{w} in row 0 and {got[1]}x{got[2]} "
                f"from row {start}); pass --image-size to resize them to one size"
            )
        self._decoded[g] = batch.images
        self._held += batch.images.numel()
        while self._held > self.cache_bytes and len(self._decoded) > 1:
            self._held -= self._decoded.popitem(last=False)[1].numel()
        return batch.images


class ImageRows:
    """Rows `rows` (sorted, distinct) of an image source with blocks, as an image source itself:
    row i here is row `rows[i]` there. It reads through, and shares, the base's cache."""

    def __init__(self, base, rows: np.ndarray) -> None:
        self.base = base
        self.rows = np.asarray(rows, dtype=np.int64)
        self.shape = (int(self.rows.size), *base.shape[1:])
        self.cache_bytes = base.cache_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ImageRows({self.shape[0]} rows of {self.base!r})"

    def blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """The base's blocks that hold any of these rows: where each starts here, and its decoded bytes."""
        starts, nbytes = self.base.blocks()
        here = np.searchsorted(self.rows, starts, side="left")
        ends = np.append(here[1:], self.rows.size)
        keep = ends > here  # blocks none of these rows fall in are not read
        return here[keep], nbytes[keep]

    def __getitem__(self, indices) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).numpy()
        return self.base[torch.from_numpy(self.rows[idx])]


class DiskImageSet(LabelledImages):
    """What `genaug.fit` needs of an `ImageSet`, with the images left on disk (`images`: a
    `ParquetImages` or `ImageRows`): `shape`, `labels`, `class_names`, `num_classes`, `source`,
    `label_tensor()`, `subset()`, `fingerprint()` (the in-memory set's), and `load()`."""

    def __init__(self, images, labels: np.ndarray | None, class_names: list[str] | None, source: str) -> None:
        self.images, self.labels, self.class_names, self.source = images, labels, class_names, source

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        c, h, w = self.shape
        return f"DiskImageSet({len(self)} images of {c}x{h}x{w} in {self.source!r})"

    def subset(self, index) -> DiskImageSet:
        """The rows at `index` (sorted, distinct ints), still on disk."""
        index = np.asarray(index, dtype=np.int64)
        images = self.images
        if isinstance(images, ImageRows):  # a view of a view reads the base's rows directly
            images, index_in_base = images.base, images.rows[index]
        else:
            index_in_base = index
        labels = None if self.labels is None else self.labels[index]
        return DiskImageSet(ImageRows(images, index_in_base), labels, self.class_names, self.source)

    def _chunks(self):
        for start in range(0, len(self), _READ_ROWS):
            yield self.images[torch.arange(start, min(len(self), start + _READ_ROWS))]

    def load(self) -> ImageSet:
        """These images read into memory (for a split small enough to hold)."""
        return ImageSet(images=torch.cat(list(self._chunks())), labels=self.labels, class_names=self.class_names,
                        source=self.source)  # fmt: skip

    def fingerprint(self) -> str:
        """`ImageSet.fingerprint` of these images, computed one read at a time."""
        h = hashlib.sha256()
        h.update(str((len(self), *self.shape)).encode())
        for chunk in self._chunks():
            h.update(chunk.contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        return h.hexdigest()


def stream_threshold() -> int:
    """Decoded bytes above which training data stays on disk: GENAUG_STREAM_BYTES, else STREAM_BYTES."""
    text = os.environ.get("GENAUG_STREAM_BYTES")
    if text is None or not text.strip():
        return STREAM_BYTES
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise GenaugError(f"GENAUG_STREAM_BYTES must be a whole number of bytes (0: always stream), got {text!r}")
    return value


def training_data(source, *, image_size=None, mode=None, image_column=None, label_column=None, id_column=None,
                  allow_outside_root: bool = False, max_pixels=None):  # fmt: skip
    """The data `genaug.fit` trains on: Parquet input (file, folder, partitioned dataset, glob) over
    `stream_threshold()` decoded bytes as a `DiskImageSet`, anything else as `load_images` reads it."""
    from genaug.data.readers import load_images
    from genaug.data.streaming import is_parquet_source, open_parquet

    options = {"image_column": image_column, "label_column": label_column, "id_column": id_column,
               "allow_outside_root": allow_outside_root, "max_pixels": max_pixels}  # fmt: skip
    if is_parquet_source(source):
        threshold = stream_threshold()
        opened = open_parquet(source, image_size=image_size, mode=mode, **options)
        images = opened.images()
        if len(images) * math.prod(images.shape[1:]) > threshold:
            return DiskImageSet(images, opened.labels, opened.class_names, _shown(opened.source))
    return load_images(source, image_size=image_size, mode=mode, **options)


def _shown(source: str) -> str:
    """The source name `load_images` gives the same input (a local path as pathlib spells it)."""
    from genaug.data import remote

    if remote.is_uri(source):
        local = remote.local_path(source)
        return source if local is None else str(Path(local))
    return str(Path(source))
