"""Detection metrics of a `detect-outliers` output against the truth.

The scores are a `detect-outliers` output: its Parquet file, its table, or
the `DetectionResult` itself. The truth is exactly one of

* `truth=COLUMN`: a bool column (or integers 0/1, 1 = outlier) of the scores
  themselves, or, with `truth_file=`, of another Parquet file joined on
  `id`: every scored id must be in it exactly once (extra rows are fine);
* `truth=array`: one bool per scored row, in row order (Python only);
* `outliers=`: the known outliers' ids, as a Parquet file with an `id`
  column, a text file of ids (one a line), or a collection of id strings.
  Every scored row whose id is among them is an outlier, the others are not.

Ranking metrics (AUROC, AUPR, FPR at 95% TPR) judge the score column, the
outliers being the positive class (higher = more anomalous); flag metrics
(precision, recall, realised FDR) judge the `is_outlier` flags. The numbers
are scikit-learn's. A metric the truth leaves undefined (one class only,
nothing flagged) is None with a note, never a stand-in 0 or 0.5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genaug.data.parquet import read_genaug_metadata
from genaug.parquet_meta import genaug_metadata
from genaug.data.readers import PARQUET_EXTENSIONS
from genaug.errors import GenaugError, first_line, shown, shown_names

if TYPE_CHECKING:
    from genaug.detect import DetectionResult

# FPR at 95% TPR: the operating point the OOD literature reports (Hendrycks & Gimpel 2017, Liang et al. 2018).
TPR_TARGET = 0.95
FLAG_COLUMN = "is_outlier"
ID_COLUMN = "id"


@dataclass(frozen=True)
class Evaluation:
    """How well scores and flags find the true outliers. None marks a metric the truth leaves undefined."""

    n: int  # images evaluated
    n_outliers: int  # true outliers among them
    n_flagged: int  # images with is_outlier set
    true_positives: int  # flagged true outliers
    false_positives: int  # flagged inliers
    auroc: float | None  # None unless the truth has both classes
    aupr: float | None  # average precision; chance level is n_outliers / n
    fpr_at_95_tpr: float | None  # smallest FPR at which TPR >= 0.95
    precision: float | None  # of the flags; None when nothing is flagged
    recall: float | None  # of the flags; None when there are no true outliers
    realised_fdr: float  # false share of the flags: 1 - precision, 0 when nothing is flagged
    score_column: str = "score"
    truth_source: str = ""  # where the truth came from, in words
    source: str | None = None  # the scores file, if read from one
    flag_rule: str | None = None  # how detect-outliers flagged (its metadata), if known
    target_fdr: float | None = None  # the FDR the flags were set for (BH), if known
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, score, is_outlier, truth, **context) -> Evaluation:
        """The metrics of `score` (higher = more anomalous) and `is_outlier` flags against bool `truth`.

        The three are per-image arrays of one length; `context` fills the
        descriptive fields (`score_column`, `truth`, `source`, ...).
        """
        from sklearn.metrics import (
            average_precision_score,
            confusion_matrix,
            precision_score,
            recall_score,
            roc_auc_score,
        )

        score = np.asarray(score, dtype=np.float64)
        flags = np.asarray(is_outlier)
        truth = np.asarray(truth)
        if not (score.ndim == flags.ndim == truth.ndim == 1 and len(score) == len(flags) == len(truth)):
            raise GenaugError(
                f"length mismatch: {score.shape} scores, {flags.shape} flags and {truth.shape} truth values"
            )
        if len(score) == 0:
            raise GenaugError("no images to evaluate")
        if flags.dtype != bool or truth.dtype != bool:
            raise GenaugError("flags and truth must be bool arrays")
        if not np.isfinite(score).all():
            raise GenaugError(f"{int((~np.isfinite(score)).sum())} scores are NaN or infinite")

        n, n_outliers, n_flagged = len(score), int(truth.sum()), int(flags.sum())
        _, fp, _, tp = (int(c) for c in confusion_matrix(truth, flags, labels=[False, True]).ravel())
        notes = list(context.pop("notes", ()))
        auroc = aupr = fpr95 = None
        if 0 < n_outliers < n:
            auroc = float(roc_auc_score(truth, score))
            aupr = float(average_precision_score(truth, score))
            fpr95 = fpr_at_tpr(truth, score, TPR_TARGET)
        elif n_outliers == 0:
            notes.append("the truth marks no image as an outlier: AUROC, AUPR, FPR at 95% TPR and recall are undefined")
        else:
            notes.append("the truth marks every image as an outlier: AUROC, AUPR and FPR at 95% TPR are undefined")
        precision = float(precision_score(truth, flags)) if n_flagged else None
        recall = float(recall_score(truth, flags)) if n_outliers else None
        if not n_flagged:
            notes.append("no image is flagged: precision is undefined and the realised FDR is 0 (no discoveries)")
        return cls(
            n=n,
            n_outliers=n_outliers,
            n_flagged=n_flagged,
            true_positives=tp,
            false_positives=fp,
            auroc=auroc,
            aupr=aupr,
            fpr_at_95_tpr=fpr95,
            precision=precision,
            recall=recall,
            realised_fdr=fp / n_flagged if n_flagged else 0.0,
            notes=tuple(notes),
            **context,
        )

    def to_dict(self) -> dict:
        """Every field by name, in a fixed order; None (JSON null) for undefined metrics."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["notes"] = list(self.notes)
        return d

    def to_json(self) -> str:
        """`to_dict()` as one line of strict JSON (null, never NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False)


def fpr_at_tpr(truth, score, tpr: float = TPR_TARGET) -> float:
    """The smallest false-positive rate among thresholds whose true-positive rate is at least `tpr`.

    NOTE: roc_curve's default `drop_intermediate=True` drops collinear ROC
    points, and the first point to reach `tpr` can be one of them (tied
    scores step both rates at once), which would report a larger FPR.
    """
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(truth, score, drop_intermediate=False)
    return float(fprs[tprs >= tpr].min())


def evaluate(
    scores: str | os.PathLike | pa.Table | DetectionResult,
    *,
    truth: str | np.ndarray | Collection[bool] | None = None,
    truth_file: str | os.PathLike | None = None,
    outliers: str | os.PathLike | Collection[str] | None = None,
    score_column: str = "score",
) -> Evaluation:
    """Detection metrics of a `detect-outliers` output against the truth (see the module docstring).

    `scores` is the output's Parquet file, its table or the DetectionResult;
    give exactly one of `truth` (a column name, or bools in row order) and
    `outliers` (ids). `truth_file` is a Parquet file holding the `truth`
    column, joined on `id`. `score_column` is the column ranked (higher =
    more anomalous). Bad input raises a one-line GenaugError.
    """
    if (truth is None) == (outliers is None):
        raise GenaugError("give exactly one truth: --truth COLUMN or --outliers IDS")
    if truth_file is not None and not isinstance(truth, str):
        raise GenaugError("--truth-file needs --truth COLUMN, the column of the truth file to read")
    truth_in_scores = isinstance(truth, str) and truth_file is None
    wanted = [ID_COLUMN, score_column, FLAG_COLUMN] + ([truth] if truth_in_scores else [])
    table, meta, where = _scores_table(scores, list(dict.fromkeys(wanted)))
    ids = _id_strings(table.column(ID_COLUMN), where)
    notes: list[str] = []
    if not meta and where != "the table":
        notes.append(f"{where} has no genaug metadata (rewritten by another tool?): the flag rule is unknown")

    score = _score_values(table.column(score_column), score_column, ids, where)
    flags = table.column(FLAG_COLUMN)
    if not pa.types.is_boolean(flags.type) or flags.null_count:
        raise GenaugError(f"column '{FLAG_COLUMN}' of {where} must be bool with no missing values, got {flags.type}")
    flags = flags.to_numpy(zero_copy_only=False).astype(bool)
    if truth_in_scores:
        values = _truth_values(table.column(truth), truth, where)
        described = f"column '{truth}'"
    elif isinstance(truth, str):
        values = _joined_truth(ids, truth, Path(truth_file), where)
        described = f"column '{truth}' of {truth_file}, joined on id"
    elif truth is not None:
        values = _truth_array(truth, len(ids))
        described = "the given array"
    else:
        values, described, unmatched = _truth_from_ids(ids, outliers, where)
        notes += unmatched

    contamination = meta.get("contamination")
    return Evaluation.of(
        score,
        flags,
        values,
        score_column=score_column,
        truth_source=described,
        source=None if where == "the table" else where,
        flag_rule=meta.get("flag_rule"),
        target_fdr=meta.get("fdr") if contamination is None and meta.get("job") == "detect-outliers" else None,
        notes=notes,
    )


# -- the scores -------------------------------------------------------------------
def _scores_table(scores, columns: list[str]) -> tuple[pa.Table, dict, str]:
    """The `columns` of the scores, their genaug metadata ({} if none) and how to name them in messages."""
    if isinstance(scores, pa.Table):
        try:
            meta = _object(genaug_metadata(scores.schema.metadata, "the table"))
        except GenaugError:  # a hand-made table's unreadable metadata: treated as none, as before
            meta = {}
        _require(scores.schema.names, columns, "the table", meta)
        return scores.select(columns), meta, "the table"
    if hasattr(scores, "columns") and hasattr(scores, "settings"):  # a DetectionResult: no PNGs needed
        table = pa.table({ID_COLUMN: scores.data.ids, **scores.columns()})
        meta = {"job": "detect-outliers", **scores.settings}
        _require(table.schema.names, columns, "the table", meta)
        return table.select(columns), meta, "the table"
    path = Path(scores)
    _check_file(path, str(path))
    meta = _object(read_genaug_metadata(path))
    return _read_columns(path, columns, str(path), meta), meta, str(path)


def _object(meta) -> dict:
    """Parsed genaug metadata, or {} if it is not a JSON object (only a hand-made file's could be)."""
    return meta if isinstance(meta, dict) else {}


def _check_file(path: Path, where: str) -> None:
    if path.is_dir():
        raise GenaugError(f"{where} is a folder, not a Parquet file")
    if not path.is_file():
        raise GenaugError(f"no such file: {where}")


def _read_columns(path: Path, columns: list[str], where: str, meta: dict | None = None) -> pa.Table:
    """Only `columns` of the Parquet file `path`: the image column is most of a genaug output."""
    try:
        _require(pq.read_schema(path).names, columns, where, meta)
        return pq.read_table(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read Parquet file {where}: {first_line(e)}") from None


def _require(names: list[str], columns: list[str], where: str, meta: dict | None) -> None:
    """Refuse a table without each of `columns` exactly once; `meta` (the scores' metadata) names a wrong job."""
    missing = next((c for c in columns if c not in names), None)
    if missing is None:
        twice = next((c for c in columns if names.count(c) > 1), None)
        if twice is not None:
            raise GenaugError(f"column '{shown(twice)}' appears more than once in {where}")
        return
    job = None if meta is None else meta.get("job")
    if meta is not None and missing in (ID_COLUMN, FLAG_COLUMN, "score") and job != "detect-outliers":
        origin = f"written by genaug {job}" if job else "not a genaug output"
        raise GenaugError(
            f"{where} is not a detect-outliers output ({origin}): it has no '{missing}' column; columns: {shown_names(names)}"
        )
    raise GenaugError(f"column '{shown(missing)}' not found in {where}; columns: {shown_names(names)}")


def _score_values(column: pa.ChunkedArray, name: str, ids: list[str], where: str) -> np.ndarray:
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise GenaugError(f"score column '{shown(name)}' of {where} is {column.type}, not numbers")
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise GenaugError(
            f"score column '{shown(name)}' of {where} is missing, NaN or infinite for {len(bad)} of {len(values)} "
            f"images (e.g. id '{shown(ids[bad[0]])}'); every image needs a finite score"
        )
    return values


# -- the truth --------------------------------------------------------------------
def _truth_values(column: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """A truth column as bools: bool, or integers 0/1 with 1 = outlier; nothing missing."""
    need = "it must be bool, or integers 0/1 with 1 = outlier"
    if column.null_count:
        raise GenaugError(f"truth column '{name}' of {where} has {column.null_count} missing values; {need}")
    if pa.types.is_boolean(column.type):
        return column.to_numpy(zero_copy_only=False).astype(bool)
    if pa.types.is_integer(column.type):
        values = column.to_numpy()
        other = values[(values != 0) & (values != 1)]
        if len(other):
            raise GenaugError(f"truth column '{name}' of {where} holds {other[0]}; {need}")
        return values == 1
    raise GenaugError(f"truth column '{name}' of {where} is {column.type}; {need}")


def _truth_array(truth, n: int) -> np.ndarray:
    values = np.asarray(truth)
    if values.ndim != 1 or len(values) != n:
        raise GenaugError(f"length mismatch: {values.shape} truth values for {n} scored images")
    if values.dtype == bool:
        return values
    if values.dtype.kind in "iu" and np.isin(values, (0, 1)).all():
        return values == 1
    raise GenaugError(f"truth values must be bool, or integers 0/1 with 1 = outlier; got {values.dtype}")


def _joined_truth(ids: list[str], column: str, path: Path, where: str) -> np.ndarray:
    """Column `column` of the Parquet file `path`, one value per scored id, matched on the file's `id` column."""
    _check_file(path, f"{path} (--truth-file)")
    table = _read_columns(path, [ID_COLUMN, column], f"{path} (--truth-file)")
    values = _truth_values(table.column(column), column, str(path))
    row_of: dict[str, int] = {}
    for i, key in enumerate(_id_strings(table.column(ID_COLUMN), path)):
        if row_of.setdefault(key, i) != i:
            raise GenaugError(f"id '{shown(key)}' appears more than once in {path}; each id needs one truth value")
    rows = np.array([row_of.get(key, -1) for key in ids], dtype=np.int64)
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise GenaugError(
            f"{len(missing)} of the {len(ids)} ids of {where} are not in {path} (e.g. '{shown(ids[missing[0]])}'); "
            "the truth file needs a row for every scored image"
        )
    return values[rows]


def _truth_from_ids(ids: list[str], outliers, where: str) -> tuple[np.ndarray, str, list[str]]:
    """The scored rows whose id is a known outlier, a description, and a note on unmatched outlier ids."""
    if isinstance(outliers, (str, os.PathLike)):
        known, origin, described = read_ids(outliers), str(outliers), f"the ids in {outliers}"
    else:
        known, origin, described = [str(v) for v in outliers], "the given list", "the given ids"
    known_set = set(known)
    values = np.fromiter((key in known_set for key in ids), dtype=bool, count=len(ids))
    unmatched = sorted(known_set.difference(ids))
    if known_set and len(unmatched) == len(known_set):
        raise GenaugError(
            f"none of the {len(known_set)} outlier ids in {origin} is an id of {where} "
            f"(e.g. '{shown(unmatched[0])}'; its ids look like '{shown(ids[0])}')"
        )
    notes = []
    if unmatched:
        notes.append(
            f"{len(unmatched)} of the {len(known_set)} outlier ids are not ids of {where} "
            f"(e.g. '{shown(unmatched[0])}') and count nowhere"
        )
    return values, described, notes


def read_ids(path: str | os.PathLike) -> list[str]:
    """The ids listed in `path`: the `id` column of a Parquet file, or the lines of a UTF-8 text file.

    In a text file, surrounding whitespace is stripped and blank lines are
    skipped (an id with leading or trailing spaces needs a Parquet file).
    """
    path = Path(path)
    if path.is_dir():
        raise GenaugError(f"{path} is a folder; --outliers takes a .parquet with an 'id' column or a text file of ids")
    if not path.is_file():
        raise GenaugError(f"no such file: {path}")
    if path.suffix.lower() in PARQUET_EXTENSIONS:
        ids = _id_strings(_read_columns(path, [ID_COLUMN], f"{path} (--outliers)").column(ID_COLUMN), path)
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise GenaugError(f"cannot read {path}: {e.strerror or first_line(e)}") from None
        try:
            if b"\0" in data:
                raise UnicodeError
            text = data.decode("utf-8-sig")
        except UnicodeError:
            raise GenaugError(
                f"{path} is not a text file of ids; --outliers takes a .parquet with an 'id' column "
                "or a UTF-8 text file with one id per line"
            ) from None
        ids = [line.strip() for line in text.splitlines() if line.strip()]
    if not ids:
        raise GenaugError(f"no ids in {path}")
    return ids


def _id_strings(column: pa.ChunkedArray, where) -> list[str]:
    """Ids as the readers make them: `str()` of each value, so an int id column matches too."""
    if column.null_count:
        raise GenaugError(f"id column of {where} has {column.null_count} missing values")
    return [str(v) for v in column.to_pylist()]

