"""Scored shards: the unit both engines work in.

A shard is rows [start, stop) of the dataset with `start` a multiple of the
scoring batch size, so it is whole scoring blocks: random draws are seeded
per block (`genaug.scoring.nll`) and a shard scores the same in this process,
in a Ray worker or inside the whole in-memory set. `score_batch` turns one
decoded shard into an Arrow table of the output's own columns (`index`, `id`,
`image` as PNG, `label`, as `genaug.data.parquet.image_table` builds them)
and the raw material of every score (columns named `RAW_PREFIX...`), which
`raw_scores` gathers back into one `RawScores` for calibration.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from genaug.data.imageset import ImageSet
from genaug.data.parquet import RESERVED_COLUMNS, image_table
from genaug.data.streaming import ImageBatch
from genaug.models.base import GenerativeModel
from genaug.scoring import RawScores, score_images
from genaug.scoring.nll import SCORE_BATCH

# Rows per shard, read and decoded at once: a multiple of the scoring block (SCORE_BATCH), so a shard's
# blocks are those of `genaug.detect.detect_outliers`.
SHARD_ROWS = 1024
RAW_PREFIX = "_raw."
_BPD, _PNG, _BACKGROUND, _FEATURES, _KNN = (
    RAW_PREFIX + k for k in ("bits_per_dim", "png", "background", "features", "knn_distance")
)
_EXTRA = RAW_PREFIX + "extra."


def score_batch(
    model: GenerativeModel,
    batch: ImageBatch,
    *,
    options: dict,
    with_background: bool,
    batch_size: int = SCORE_BATCH,
    seed: int = 0,
) -> pa.Table:
    """One shard scored: its output columns (index, id, image, label) and its raw scores and features.

    `batch.start` must be a multiple of `batch_size`; `options` are the
    nll options and `with_background` whether the score reads the
    background model (`genaug.scoring.reads_background`).
    """
    labels = torch.from_numpy(batch.labels) if model.num_classes > 0 and batch.labels is not None else None
    raw = score_images(
        model, batch.images, labels, nll_options=options, batch_size=batch_size, seed=seed,
        with_background=with_background, with_features=True, first_row=batch.start,
    )  # fmt: skip
    rows = ImageSet(images=batch.images, labels=batch.labels, ids=batch.ids, paths=batch.paths)
    table = image_table(rows, png=raw.png, index=np.arange(batch.start, batch.start + len(batch)))
    columns = {_PNG: raw.png_bits_per_dim}
    if raw.bits_per_dim is not None:
        columns[_BPD] = raw.bits_per_dim
    if raw.background_bits_per_dim is not None:
        columns[_BACKGROUND] = raw.background_bits_per_dim
    if raw.knn_distance is not None:
        columns[_KNN] = raw.knn_distance
    columns.update({_EXTRA + name: values for name, values in raw.extra.items()})
    for name, values in columns.items():
        table = table.append_column(name, pa.array(np.asarray(values, dtype=np.float64)))
    # float32: the features are computed in float32, so nothing is lost, and they are half the
    # memory the gathered scores of a streamed job hold.
    features = np.ascontiguousarray(raw.features, dtype=np.float32)
    flat = pa.array(features.reshape(-1))
    return table.append_column(_FEATURES, pa.FixedSizeListArray.from_arrays(flat, features.shape[1]))


def output_part(table: pa.Table) -> pa.Table:
    """The output's own columns of a scored shard (what the output file holds before the job's)."""
    return table.select(list(RESERVED_COLUMNS))


def raw_scores(tables: list[pa.Table]) -> RawScores:
    """The raw scores and features of scored shards (their raw columns only), in order, as one RawScores."""
    table = pa.concat_tables(tables)

    def column(name: str) -> np.ndarray | None:
        return table.column(name).to_numpy() if name in table.column_names else None

    extra = {n[len(_EXTRA) :]: column(n) for n in table.column_names if n.startswith(_EXTRA)}
    features = table.column(_FEATURES).combine_chunks()
    width = features.type.list_size
    return RawScores(
        column(_BPD), column(_PNG), [], extra, column(_BACKGROUND),
        features=features.flatten().to_numpy().reshape(-1, width), knn_distance=column(_KNN),
    )  # fmt: skip


def raw_part(table: pa.Table) -> pa.Table:
    """The raw columns of a scored shard: what is kept in memory for calibration."""
    return table.select([n for n in table.column_names if n.startswith(RAW_PREFIX)])
