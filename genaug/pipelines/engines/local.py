"""The local engine: reference-mode detection streamed over Parquet input in this process.

When jobs stream: `genaug detect-outliers` streams whenever it has a fitted
model (`--model-path`, reference mode) and Parquet input (a file, a folder of
Parquet files, a partitioned dataset or a glob: `is_parquet_source`), at any
size. The output is the in-memory job's value for value (scores, p-values,
flags, rarity, images, ids, schema and metadata), so there is no size
threshold to tune or to explain; memory stays bounded by a shard and a few
row groups plus ~50 bytes per image of gathered scores and features.
Self-audit trains on the whole dataset, so it reads it into memory.

Pass 1 reads aligned shards of `SHARD_ROWS` rows, decodes and scores them
(`shards.score_batch`); `collect.write_detection` spills them, calibrates
and flags over all scores, and writes the output row group by row group.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from genaug.data.streaming import ParquetSource, open_parquet
from genaug.detect import DEFAULT_CONFORMAL, DEFAULT_FDR, ReferencePlan, reference_plan
from genaug.errors import warn_all
from genaug.models.base import GenerativeModel
from genaug.progress import AUTO, progress_bar, resolve_console
from genaug.scoring import reads_background
from genaug.pipelines.engines.collect import StreamedDetection, write_detection
from genaug.pipelines.engines.shards import SHARD_ROWS, score_batch


def detect_outliers_parquet(
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: GenerativeModel | str | Path,
    score: str = "auto",
    fdr: float = DEFAULT_FDR,
    contamination: float | None = None,
    iwae_k: int | None = None,
    mutation_rate: float | None = None,
    conformal: str = DEFAULT_CONFORMAL,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
    device: str | torch.device = "cpu",
    console=AUTO,
    command: str | None = None,
    metadata: dict | None = None,
) -> StreamedDetection:
    """Score Parquet `data` against a fitted `model` (or a checkpoint path, loaded onto `device`) and
    write `output`, streaming.

    The result and the file are those of `genaug.detect_outliers(load_images(data, ...), model=model,
    ...)` followed by `.write(output, command=command)`, with memory bounded whatever the size of
    `data`. The reading options are `load_images`'s; `metadata` joins the output's `genaug` metadata.
    """
    console = resolve_console(console)
    plan = reference_plan(model, score=score, fdr=fdr, contamination=contamination, iwae_k=iwae_k,
                          mutation_rate=mutation_rate, conformal=conformal, device=device)  # fmt: skip
    inputs = [("DATA", data)] + ([("--model-path", model)] if isinstance(model, (str, Path)) else [])
    source = open_parquet(
        data, image_column, label_column, id_column, image_size=image_size, mode=mode,
        allow_outside_root=allow_outside_root, max_pixels=max_pixels,
    )  # fmt: skip
    result = write_detection(
        scored_shards(plan, source, console), output, plan=plan, requested=score, fdr=fdr,
        contamination=contamination, class_names=source.class_names, inputs=inputs, command=command,
        metadata=metadata,
    )  # fmt: skip
    warn_all(result.warnings)
    return result


def scored_shards(plan: ReferencePlan, source: ParquetSource, console=None):
    """Yield every shard of `source` scored in this process, in order (`shards.score_batch`)."""
    mode = channels_for(plan.model, source)
    colour = False
    with progress_bar(console, "scoring", len(source)) as advance:
        for batch in source.batches(SHARD_ROWS, mode=mode):
            colour |= batch.colour
            yield score_batch(plan.model, batch, options=plan.options, with_background=reads_background(plan.kind))
            advance(len(batch))
    check_colour(plan.model, source, colour)


def channels_for(model: GenerativeModel, source: ParquetSource) -> str | None:
    """The mode shards are read in: the source's; for an RGB model with none given, RGB.

    `load_images` makes a whole dataset RGB when any image is in colour; a
    stream decides per shard, so an RGB model reads every shard as RGB and
    `check_colour` refuses afterwards the one case the two would differ on.
    """
    if source.mode is None and model.image_shape[0] == 3:
        return "rgb"
    return None


def check_colour(model: GenerativeModel, source: ParquetSource, colour: bool) -> None:
    """Refuse an all-gray dataset read as RGB for an RGB model, as the in-memory job does."""
    if source.mode is None and model.image_shape[0] == 3 and not colour:
        _, h, w = model.image_shape
        model.check_input(torch.empty((0, 1, h, w), dtype=torch.uint8))  # its one-line refusal
