"""Image completion: keep part of each real image and let an autoregressive
model draw the rest (van den Oord et al. 2016, "Pixel Recurrent Neural
Networks", Figure 1 and the completions of its section 5).

The kept part is the top `keep_rows` rows (the paper's completions keep the
top half, which is the default) or any mask. The model draws every other
subpixel in raster order given everything before it, kept or drawn, so a
completion continues what is above it; a kept subpixel below a drawn one
stays as it was but cannot inform it (raster order sees only the past).

The output has one row per completion, image by image, each with its
original beside it (`original`, an image column too), so a grid of
originals and completions, or a check of what the model makes of a half
image, is one query away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch
from rich.console import Console

from genaug.data.imageset import ImageSet
from genaug.data.parquet import IMAGE_TYPE, encode_png, image_table, write_table
from genaug.data.readers import as_imageset
from genaug.errors import GenaugError
from genaug.limits import check_fits_in_memory
from genaug.models.base import GenerativeModel
from genaug.models.store import model_hash
from genaug.progress import AUTO, progress_bar, resolve_console

# Images completed per model call: the sampler's cost per step grows with the
# batch, and its steps (one per pixel) are what take the time.
COMPLETION_BATCH = 64


@dataclass
class Completion:
    """Completions of real images; `data` holds them image by image (`completions` per original)."""

    originals: ImageSet
    data: ImageSet
    source_index: np.ndarray  # [N * completions] position of each completion's original
    completion: np.ndarray  # [N * completions] 0..completions-1
    keep: torch.Tensor  # bool, broadcast to [N, C, H, W]: True where the original was kept
    seed: int
    model_hash: str
    settings: dict = field(default_factory=dict)

    def table(self) -> pa.Table:
        """index (the original's position), id, image (the completion), label, original, source_id,
        completion, kept_share, synthetic, model_hash, seed."""
        originals_png = encode_png(self.originals.images)
        original = pa.StructArray.from_arrays(
            [
                pa.array([originals_png[i] for i in self.source_index], type=pa.binary()),
                pa.array([None] * len(self.source_index), type=pa.string()),
            ],
            fields=list(IMAGE_TYPE),
        )
        kept = self.keep.expand(len(self.originals), *self.originals.shape).flatten(1).float().mean(1).numpy()
        n = len(self.data)
        columns = {
            "original": original,
            "source_id": pa.array([self.originals.ids[i] for i in self.source_index], type=pa.string()),
            "completion": pa.array(self.completion, type=pa.int64()),
            "kept_share": kept[self.source_index],
            "synthetic": np.ones(n, dtype=bool),
            "model_hash": [self.model_hash] * n,
            "seed": np.full(n, self.seed, dtype=np.int64),
        }
        return image_table(self.data, columns, index=self.source_index)

    def write(self, path, *, command: str | None = None, version: str | None = None) -> None:
        """Write `table()` to `path` atomically, with the settings in the `genaug` metadata."""
        meta = {"version": version, "job": "complete", "command": command, "model_hash": self.model_hash,
                **self.settings}  # fmt: skip
        write_table(self.table(), path, genaug_metadata=meta, class_names=self.data.class_names)


def keep_mask(shape: tuple[int, int, int], keep_rows: int | None = None, mask=None) -> torch.Tensor:
    """The bool mask of what is kept: the top `keep_rows` rows ([H, W]), or `mask` as given
    (bool, broadcastable to [N, C, H, W]); the top half when neither is given."""
    c, h, w = shape
    if keep_rows is not None and mask is not None:
        raise GenaugError("give the rows to keep or a mask, not both")
    if mask is not None:
        mask = torch.as_tensor(np.asarray(mask))
        if mask.dtype != torch.bool:
            raise GenaugError(f"the completion mask must be boolean (True = keep), got {mask.dtype}")
        return mask
    keep_rows = h // 2 if keep_rows is None else keep_rows
    if isinstance(keep_rows, bool) or not isinstance(keep_rows, (int, np.integer)) or not 0 <= keep_rows < h:
        raise GenaugError(f"--keep-rows must be an integer in 0..{h - 1} for {h}-row images, got {keep_rows!r}")
    rows = torch.zeros((h, w), dtype=torch.bool)
    rows[: int(keep_rows)] = True
    return rows


def complete(
    model: GenerativeModel,
    data: ImageSet,
    *,
    keep_rows: int | None = None,
    mask=None,
    completions: int = 1,
    temperature: float = 1.0,
    seed: int = 0,
    sampler: str = "fast",
    console: Console | str | None = AUTO,
) -> Completion:
    """Complete every image of `data`: keep its top `keep_rows` rows (default: the top half) or
    what `mask` marks (bool, broadcastable to [N, C, H, W]), draw the rest `completions` times.

    A conditional model completes each image as its own label's class when
    `data` has labels. The same `seed` gives the same completions.
    """
    console = resolve_console(console)
    data = as_imageset(data)
    type(model).require("complete", job="completion")
    if tuple(data.shape) != tuple(model.image_shape):
        raise GenaugError(
            f"the model completes {tuple(model.image_shape)} (C, H, W) images but the data is {tuple(data.shape)}; "
            "pass --image-size and --mode to match"
        )
    if isinstance(completions, bool) or not isinstance(completions, (int, np.integer)) or completions < 1:
        raise GenaugError(f"--completions must be a positive integer, got {completions!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise GenaugError(f"--temperature must be a positive finite number, got {temperature}")
    n, m = len(data), int(completions)
    check_fits_in_memory(n * m, data.shape, "--completions")
    keep = keep_mask(data.shape, keep_rows, mask)
    try:
        full_keep = torch.broadcast_to(keep, (n, *data.shape))
    except RuntimeError:
        raise GenaugError(f"a completion mask of shape {tuple(keep.shape)} does not fit {n} images of {data.shape}") from None
    labels = None
    if model.num_classes > 0 and data.labels is not None:
        labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.long)
    source = np.repeat(np.arange(n), m)
    generator = torch.Generator().manual_seed(seed)
    # Noise is drawn on the model's device from a generator seeded from ours (as `synthesize.draw`).
    device_gen = torch.Generator(device=model.device).manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    chunks = []
    with progress_bar(console, "completing", n * m) as advance:
        for start in range(0, n * m, COMPLETION_BATCH):
            rows = torch.from_numpy(source[start : start + COMPLETION_BATCH])
            y = None if labels is None else labels[rows].to(model.device)
            done = model.complete(
                data.images[rows].to(model.device), full_keep[rows].to(model.device), y,
                generator=device_gen, progress=advance, temperature=temperature, sampler=sampler,
            )  # fmt: skip
            chunks.append(done.cpu())
    images = torch.cat(chunks) if chunks else data.images[:0]
    copy = np.tile(np.arange(m), n)
    completed = ImageSet(
        images=images,
        labels=None if data.labels is None else np.asarray(data.labels)[source],
        class_names=data.class_names,
        ids=[f"{data.ids[i]}-completion-{c}" for i, c in zip(source, copy)],
        source="completion",
    )
    settings = {
        "keep_rows": None if mask is not None else (data.shape[1] // 2 if keep_rows is None else int(keep_rows)),
        "mask": mask is not None,
        "completions": m,
        "temperature": temperature,
        "seed": seed,
        "sampler": sampler,
    }
    return Completion(data, completed, source, copy, keep, seed, model_hash(model), settings)
