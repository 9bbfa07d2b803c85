"""From scored shards to the output file, with bounded memory.

Pass 1 takes the scored shards in input order (from whichever engine scored
them): the output's own columns of each (index, id, PNG image, label) go to a
hidden spill file beside the output, and only the per-image raw scores and
feature vectors stay in memory (a few dozen bytes per image). Then every
image is calibrated and flagged at once (`genaug.detect.calibrate_and_flag`:
p-values and BH over all the scores, never per shard). Pass 2 reads the spill
back one row group at a time, adds the job's columns and writes the output:
a temp file in the target folder with the schema and `genaug`/`huggingface`
metadata `DetectionResult.write` gives, renamed into place at the end. An
error or Ctrl-C leaves no output and no temp files.

NOTE: the spill saves pass 2 from re-reading the input, which would decode
and PNG-encode every image a second time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genaug import parquet_meta
from genaug._version import __version__
from genaug.atomic import check_output, clean_stale, commit, temp_path
from genaug.data.parquet import _json_default, _to_arrow, hf_features
from genaug.detect import ReferencePlan, calibrate_and_flag, describe_rows, result_columns
from genaug.errors import GenaugError, first_line
from genaug.pipelines.engines.shards import output_part, raw_part, raw_scores


@dataclass
class StreamedDetection:
    """What a streamed detection wrote to `path`: per-image scores, p-values and flags in input order
    (the same columns as the file), its settings and warnings; images, ids and labels stay in the file."""

    path: Path
    score: np.ndarray
    bits_per_dim: np.ndarray | None
    p_value: np.ndarray
    is_outlier: np.ndarray
    rank: np.ndarray
    rarity: np.ndarray
    category: np.ndarray
    settings: dict
    class_names: list[str] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        """How many images were scored."""
        return len(self.score)

    @property
    def n_flagged(self) -> int:
        """How many images are flagged."""
        return int(self.is_outlier.sum())

    def top(self, n: int = 10) -> list[int]:
        """Positions of the `n` highest-scoring images, most anomalous first."""
        return [int(i) for i in np.argsort(self.rank, kind="stable")[:n]]

    def top_rows(self, n: int = 10) -> list[dict]:
        """The `n` highest-scoring images as rows (`genaug.detect.describe_rows`); their ids and
        labels are read back from the output, one row group at a time."""
        top = self.top(n)
        found: dict[int, tuple[str, int | None]] = {}
        wanted = np.array(sorted(top), dtype=np.int64)
        try:
            parquet = pq.ParquetFile(self.path)
            start = 0
            for g in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(g).num_rows
                inside = wanted[(wanted >= start) & (wanted < start + rows)]
                if len(inside):
                    part = parquet.read_row_group(g, columns=["id", "label"]).take(pa.array(inside - start))
                    found.update(zip(inside.tolist(), zip(part["id"].to_pylist(), part["label"].to_pylist())))
                start += rows
        except (OSError, pa.ArrowException) as e:
            raise GenaugError(f"cannot read {self.path}: {first_line(e)}") from None
        names = self.class_names
        labels = [found[i][1] for i in top]
        shown = [None if v is None else (names[v] if names else str(v)) for v in labels]
        return describe_rows(self, top, [found[i][0] for i in top], shown)


def write_detection(
    shards: Iterable[pa.Table],
    output: str | os.PathLike,
    *,
    plan: ReferencePlan,
    requested: str,
    fdr: float,
    contamination: float | None,
    class_names: list[str] | None,
    inputs: list[tuple[str, object]] = (),
    command: str | None = None,
    metadata: dict | None = None,
) -> StreamedDetection:
    """Gather scored shards (`shards.score_batch` tables, in input order), flag, and write `output`.

    `plan` is the checked reference-mode plan; `requested` the score as asked
    (for the auto-fallback warning); `inputs` the `(role, path)` pairs the
    output must not overwrite; `metadata` extra entries for the output's `genaug` metadata (a
    pipeline's record). Returns the gathered result.
    """
    path = check_output(output, inputs)
    clean_stale(path)
    spill, tmp = temp_path(path), temp_path(path)
    try:
        raw_parts = _spill(shards, spill, path)
        raw = raw_scores(raw_parts)
        del raw_parts  # the gathered copy is all that is needed now
        settings = {**plan.settings, **(metadata or {})}
        flagged = calibrate_and_flag(
            raw, kind=plan.kind, requested=requested, reference=plan.record.scores, fdr=fdr,
            contamination=contamination, settings=settings,
        )  # fmt: skip
        columns = result_columns(flagged.score, raw.bits_per_dim, flagged.p_value, flagged.is_outlier, flagged.rank,
                                 flagged.rarity, flagged.category)  # fmt: skip
        meta = {"version": __version__, "job": "detect-outliers", "command": command, **settings}
        try:
            _write_output(spill, tmp, columns, meta, class_names)
        except OSError as e:
            raise GenaugError(f"cannot write {path}: {e.strerror or first_line(e)}") from None
        commit(tmp, path)
    finally:
        spill.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return StreamedDetection(
        path=path, score=flagged.score, bits_per_dim=raw.bits_per_dim, p_value=flagged.p_value,
        is_outlier=flagged.is_outlier, rank=flagged.rank, rarity=flagged.rarity, category=flagged.category,
        settings=settings, class_names=class_names, warnings=flagged.warnings,
    )  # fmt: skip


def _spill(shards: Iterable[pa.Table], spill: Path, target: Path) -> list[pa.Table]:
    """Pass 1: each shard's output columns to `spill` (one row group each), its raw columns kept."""
    writer = None
    raw_parts: list[pa.Table] = []
    n = 0
    try:
        for table in shards:
            first = table.column("index")[0].as_py()
            if first != n:  # an engine that lost or reordered a shard: never write a shuffled output
                raise RuntimeError(f"scored shards arrived out of order: rows from {first} after {n} rows")
            part = output_part(table)
            try:
                if writer is None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    writer = pq.ParquetWriter(spill, part.schema)
                writer.write_table(part)
            except OSError as e:
                raise GenaugError(f"cannot write {target}: {e.strerror or first_line(e)}") from None
            raw_parts.append(raw_part(table))
            n += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise GenaugError("no images to score")
    return raw_parts


def _write_output(spill: Path, tmp: Path, columns: dict, meta: dict, class_names: list[str] | None) -> None:
    """Pass 2: the spill's row groups with the job's columns beside them, to `tmp`."""
    source = pq.ParquetFile(spill)
    writer = None
    start = 0
    try:
        for g in range(source.num_row_groups):
            part = source.read_row_group(g)
            stop = start + part.num_rows
            for name, values in columns.items():
                part = part.append_column(name, _to_arrow(values[start:stop]))
            if writer is None:
                # The metadata `genaug.data.parquet.write_table` writes, so both paths' files read alike.
                schema = part.schema.with_metadata({
                    b"huggingface": json.dumps({"info": {"features": hf_features(part.schema, class_names)}}).encode(),
                    parquet_meta.GENAUG_KEY: json.dumps(meta, default=_json_default).encode(),
                })  # fmt: skip
                writer = pq.ParquetWriter(tmp, schema)
            writer.write_table(part.replace_schema_metadata(writer.schema.metadata))
            start = stop
    finally:
        if writer is not None:
            writer.close()
