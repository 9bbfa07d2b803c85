"""Parquet datasets read a bounded number of rows at a time, decoded per batch.

A source is a Parquet file, a folder of Parquet files (every `.parquet` or
`.pq` file below it; names starting with `.` or `_`, such as Spark's
`_SUCCESS`, skipped; hive partitions `key=value/` read as columns), or a glob
(`shards/*.parquet`, `**` for any depth): on a local disk, behind a `file://`
URI, or on any filesystem pyarrow opens by URI (`s3://`, `gs://`, `hdfs://`)
or fsspec does (`memory://`, and the schemes s3fs, gcsfs... add). Files are
read in sorted path order and rows in file order, so row i is the same image
whichever way the dataset is read: whole, in batches, or by index.

`open_parquet` reads the file footers (row counts) and the label column only,
so labels are checked, and string labels numbered, over the whole dataset
before any image is decoded. Images are read by row group (pyarrow datasets)
and decoded per batch by the readers' own cell decoding
(`genaug.data.readers.read_table`), so every rule of the in-memory reader
holds: the image column as a Hugging Face `{bytes, path}` struct, raw bytes
or a path; a path resolved against its file's folder and read only inside the
dataset root (the folder given, a glob's fixed part, or a single file's
folder) unless `allow_outside_root`, and only from a local disk; `max_pixels`
checked from each image's header. Default ids are `<file stem>-<row in file>`
for one file (as `load_images` gives) and `<path below the root without the
suffix>-<row in file>` for several.

Memory holds the row groups a read touches (a cache of two) and one batch of
decoded images, never the dataset. A row group is the smallest unit Parquet
reads, so a dataset written as one huge row group costs that row group's
encoded bytes.

`ParquetSource.images()` is the disk-backed image source training reads
batches from (`genaug.data.disk_images`).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import torch

from genaug.data import remote
from genaug.data.readers import (
    FOLDER_EXTENSIONS,
    PARQUET_EXTENSIONS,
    _check_class_count,
    _hf_class_names,
    _inside,
    _parse_max_pixels,
    _parse_mode,
    _parse_size,
    _pick_columns,
    _Read,
    _stack,
    has_parquet_files,
    is_glob,
    read_table,
    table_labels,
)
from genaug.errors import GenaugError, first_line, shown

# Rows per batch when none is given: the scoring batch of `genaug.detect`.
DEFAULT_BATCH_ROWS = 1024
# Encoded row groups a source keeps: the one a sequential read is in, and the one before.
_CACHED_TABLES = 2
_READ_ERRORS = (OSError, ValueError, pa.ArrowException)
_SKIPPED = (".", "_")  # hidden files, and Spark / Hive bookkeeping (_SUCCESS, _metadata): pyarrow skips them too
_LABEL_SCAN_ROWS = 65_536


@dataclass(frozen=True)
class _File:
    path: str  # on the filesystem
    shown: str  # in messages: as the user spelled the source
    stem: str  # default ids are f"{stem}-{row:06d}"
    folder: str | None  # the real folder relative path cells start from; None off the local disk
    first_row: int  # the dataset's row number of the file's first row
    row_groups: tuple[int, ...]  # rows per row group

    @property
    def num_rows(self) -> int:
        return sum(self.row_groups)


@dataclass
class ImageBatch:
    """Rows `start` .. `start + len - 1` of a source, decoded: uint8 images [k, C, H, W], labels
    (None when unlabelled), ids, original paths, and whether any image was decoded in colour."""

    start: int
    images: torch.Tensor
    labels: np.ndarray | None
    ids: list[str]
    paths: list[str | None]
    colour: bool

    def __len__(self) -> int:
        return int(self.images.shape[0])


def open_parquet(
    source: str | os.PathLike,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    *,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
) -> ParquetSource:
    """Open a Parquet file, folder of Parquet files, partitioned dataset or glob (see the module) for
    reading in batches; reads footers and the label column only. The options mean what they mean
    for `genaug.load_images`; `mode` None decides gray or RGB per batch (see `ParquetSource.read`)."""
    return ParquetSource(
        source, image_column, label_column, id_column, image_size=image_size, mode=mode,
        allow_outside_root=allow_outside_root, max_pixels=max_pixels,
    )  # fmt: skip


def is_parquet_source(source) -> bool:
    """Whether `load_images` and the streaming jobs read `source` as Parquet: a `.parquet`/`.pq`
    file, a folder holding Parquet files and no images, or a glob; locally or by URI."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if remote.is_uri(text):
        if remote.local_path(text) is None:
            try:
                return bool(_locate(text, allow_outside=True).files)
            except GenaugError:
                return False
        text = str(remote.local_path(text))
    path = Path(text)
    if path.is_file():
        return path.suffix.lower() in PARQUET_EXTENSIONS
    if path.is_dir():
        return has_parquet_files(path) and not _holds_images(path)
    return is_glob(text)


class ParquetSource:
    """A Parquet dataset opened for reading by rows (`open_parquet` builds it).

    `len(source)` rows; `labels` (int64, or None) and `class_names` are read
    for the whole dataset at opening; `read(start, stop)` decodes those rows,
    `batches(n)` yields them n at a time, `images()` is the disk-backed image
    source. It pickles small (paths and counts, no open files), so Ray
    workers can read the same rows.
    """

    def __init__(
        self,
        source,
        image_column: str | None = None,
        label_column: str | None = None,
        id_column: str | None = None,
        *,
        image_size=None,
        mode: str | None = None,
        allow_outside_root: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        self.source = os.fspath(source)
        self.size = _parse_size(image_size)
        self.mode = _parse_mode(mode)
        self.cap = _parse_max_pixels(max_pixels)
        self.allow_outside = allow_outside_root
        found = _locate(self.source, allow_outside_root)
        if not found.files:
            raise GenaugError(f"no Parquet files {'match' if found.pattern else 'in'} {self.source}")
        self._fs, self._base_dir, self._partitioned = found.fs, found.root, found.partitioned
        self._root = found.real_root  # containment root of path cells; None off the local disk
        dataset = self._dataset_of([f[0] for f in found.files], self._where())
        self.image_column, label, self.id_column = _pick_columns(
            dataset.schema, image_column, label_column, id_column, self.source
        )
        hf_names = None if label is None else _hf_class_names(dataset.schema.metadata, label, self.source)
        self.files = _count_rows(dataset, found.files, self._root is not None)
        self.num_rows = sum(f.num_rows for f in self.files)
        if self.num_rows == 0:
            raise GenaugError(f"no images in {self.source}")
        self._starts = np.array([f.first_row for f in self.files], dtype=np.int64)
        self.labels, self.class_names = _scan_labels(dataset, self.files, label, hf_names)
        self.label_column = label if self.labels is not None else None
        self._columns = list(dict.fromkeys(c for c in (self.image_column, self.id_column) if c is not None))
        self._dataset: pads.Dataset | None = dataset
        self._fragments: dict | None = None
        self._tables: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return f"ParquetSource({self.source!r}, {self.num_rows} rows in {len(self.files)} file(s))"

    def __getstate__(self) -> dict:
        # Open datasets and cached row groups stay behind; a worker reopens the files it reads.
        return {**self.__dict__, "_dataset": None, "_fragments": None, "_tables": OrderedDict()}

    # -- reading rows ----------------------------------------------------------
    def read(self, start: int, stop: int, *, mode: str | None = None) -> ImageBatch:
        """Rows `start` .. `stop - 1` decoded into one uint8 batch, converted and resized as asked.

        `mode` ("gray" or "rgb"; default the source's) forces the channels;
        with neither, the batch is RGB when any of its images is in colour
        (`load_images` decides that over the whole dataset, which a stream
        cannot: a job that must match it forces the model's channels).
        """
        tensors, labels, _, ids, paths = self.read_cells(start, stop)
        colour = any(t.shape[0] == 3 for t in tensors)
        target = _parse_mode(mode) if mode is not None else self.mode
        images = _stack(tensors, ids, self.size, target, self.source)
        return ImageBatch(start, images, labels, ids, paths, colour)

    def batches(self, batch_rows: int = DEFAULT_BATCH_ROWS, *, mode: str | None = None) -> Iterator[ImageBatch]:
        """Every row in order, `batch_rows` at a time; batch k starts at row k * batch_rows."""
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise GenaugError(f"batch_rows must be a positive integer, got {batch_rows!r}")
        for start in range(0, self.num_rows, batch_rows):
            yield self.read(start, min(self.num_rows, start + batch_rows), mode=mode)

    def read_all(self) -> _Read:
        """Every row decoded, unstacked: what `genaug.load_images` builds its ImageSet from."""
        return self.read_cells(0, self.num_rows)

    def read_cells(self, start: int, stop: int) -> _Read:
        """Rows `start` .. `stop - 1` as the readers' (tensors, labels, class names, ids, paths)."""
        if not 0 <= start < stop <= self.num_rows:
            raise IndexError(f"rows {start}..{stop - 1} are outside 0..{self.num_rows - 1}")
        tensors: list[torch.Tensor] = []
        ids: list[str] = []
        paths: list[str | None] = []
        for f, lo, hi in self._spans(start, stop):
            file = self.files[f]
            labels = None
            if self.labels is not None:
                labels = (self.labels[file.first_row + lo : file.first_row + hi], self.class_names)
            part = read_table(
                self._rows(f, lo, hi), self.image_column, self.label_column, self.id_column, where=file.shown,
                stem=file.stem, root=self._root, allow_outside=self.allow_outside, cap=self.cap, first_row=lo,
                base=file.folder, labels=labels,
            )  # fmt: skip
            tensors += part[0]
            ids += part[3]
            paths += part[4]
        labels = None if self.labels is None else self.labels[start:stop]
        if self._root is None:  # as `load_images` reads remote data: from a copy, whose paths mean nothing
            paths = [None] * len(paths)
        return tensors, labels, self.class_names, ids, paths

    def images(self, *, cache_bytes: int | None = None):
        """The disk-backed image source of these rows (`genaug.data.disk_images.ParquetImages`), for
        `genaug.train`, keeping up to `cache_bytes` of decoded row groups (None: its default)."""
        from genaug.data.disk_images import CACHE_BYTES, ParquetImages

        return ParquetImages(self, cache_bytes=CACHE_BYTES if cache_bytes is None else cache_bytes)

    # -- row groups ------------------------------------------------------------
    def row_groups(self) -> list[tuple[int, int]]:
        """(first row, rows) of every non-empty row group, in dataset order."""
        out = []
        for file in self.files:
            start = file.first_row
            for rows in file.row_groups:
                if rows:
                    out.append((start, rows))
                start += rows
        return out

    def _spans(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """(file, first row in it, end row in it) of each file rows start..stop-1 fall in."""
        f = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            file = self.files[f]
            end = min(stop, file.first_row + file.num_rows)
            if end > start:
                yield f, start - file.first_row, end - file.first_row
            start, f = max(start, end), f + 1

    def _rows(self, f: int, lo: int, hi: int) -> pa.Table:
        """Rows lo..hi-1 of file f (its image and id columns), from the row groups holding them."""
        parts, first = [], 0
        for g, rows in enumerate(self.files[f].row_groups):
            if first < hi and first + rows > lo:
                table = self._table(f, g)
                parts.append(table.slice(max(lo, first) - first, min(hi, first + rows) - max(lo, first)))
            first += rows
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _table(self, f: int, g: int) -> pa.Table:
        key = (f, g)
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        file = self.files[f]
        if self._dataset is None:
            self._dataset = self._dataset_of([x.path for x in self.files], self._where())
        if self._fragments is None:
            self._fragments = {fr.path: fr for fr in self._dataset.get_fragments()}
        fragment = self._fragments[file.path]
        try:
            table = fragment.subset(row_group_ids=[g]).to_table(columns=self._columns, schema=self._dataset.schema)
        except _READ_ERRORS as e:
            raise GenaugError(f"cannot read Parquet file {file.shown}: {first_line(e)}") from None
        if table.num_rows != file.row_groups[g]:
            raise GenaugError(f"cannot read Parquet file {file.shown}: row group {g} changed while it was read")
        self._tables[key] = table
        while len(self._tables) > _CACHED_TABLES:
            self._tables.popitem(last=False)
        return table

    def _where(self) -> str:
        return f"Parquet file {self.source}" if not self._partitioned else f"Parquet dataset {self.source}"

    def _dataset_of(self, paths: list[str], where: str) -> pads.Dataset:
        try:
            return pads.dataset(
                paths, filesystem=self._fs, format="parquet",
                partitioning="hive" if self._partitioned else None,
                partition_base_dir=self._base_dir if self._partitioned else None,
            )  # fmt: skip
        except _READ_ERRORS as e:
            raise GenaugError(f"cannot read {where}: {first_line(e)}") from None


# -- finding the files -------------------------------------------------------------
@dataclass
class _Found:
    fs: pafs.FileSystem
    root: str  # the folder files and partitions are relative to, on `fs`
    real_root: str | None  # its real local path (the containment root); None off the local disk
    files: list[tuple[str, str, str, str | None]]  # (path on fs, shown, stem, real folder)
    partitioned: bool  # several files below a folder: hive partitions may name columns
    pattern: bool


def _locate(source: str, allow_outside: bool) -> _Found:
    """The Parquet files `source` names, sorted, with the filesystem and root they are read from."""
    text = source
    if remote.is_uri(text):
        local = remote.local_path(text)
        if local is None:
            fs, path = _open_uri(text)
            return _list(fs, path, text, posixpath, local=False, allow_outside=True)
        text = str(local)
    return _list(pafs.LocalFileSystem(), os.path.abspath(text), text, os.path, local=True, allow_outside=allow_outside)


def _open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem behind a URI: pyarrow's own where it has one (s3, gs, hdfs), else fsspec's."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except _READ_ERRORS:
        pass  # a scheme pyarrow does not know (memory://, ...): ask fsspec
    try:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(uri)
    except (ImportError, ValueError) as e:  # an unknown scheme, or its driver (s3fs, gcsfs) missing
        raise GenaugError(f"cannot open {uri}: {first_line(e)}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _list(fs: pafs.FileSystem, path: str, spelled: str, paths, *, local: bool, allow_outside: bool) -> _Found:
    """List `path` on `fs` (a file, a folder or a glob); `spelled` is how the user wrote it, `paths`
    the path module of the filesystem (os.path locally, posixpath elsewhere)."""
    try:
        info = fs.get_file_info(path)
    except _READ_ERRORS as e:
        raise GenaugError(f"cannot open {spelled}: {first_line(e)}") from None
    pattern = False
    if info.type == pafs.FileType.File:
        root = paths.dirname(path)
        found = [(path, spelled, paths.splitext(paths.basename(path))[0])]
    elif info.type == pafs.FileType.Directory or is_glob(path):
        pattern = info.type != pafs.FileType.Directory
        parts = path.split("/")
        fixed = len(parts) if not pattern else next(i for i, p in enumerate(parts) if is_glob(p))
        root = "/".join(parts[:fixed]) or "/"
        tail = parts[fixed:]
        spelled_root = "/".join(spelled.split("/")[: len(spelled.split("/")) - len(tail)]) if pattern else spelled
        try:
            listing = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=pattern))
        except _READ_ERRORS as e:
            raise GenaugError(f"cannot list {spelled}: {first_line(e)}") from None
        found = []
        for item in listing:
            rel = posixpath.relpath(item.path, root) if root != "/" else item.path.lstrip("/")
            parts_rel = rel.split("/")
            if item.type != pafs.FileType.File or any(p.startswith(_SKIPPED) for p in parts_rel):
                continue
            if pattern and not _match(parts_rel, tail):
                continue
            if not pattern and posixpath.splitext(rel)[1].lower() not in PARQUET_EXTENSIONS:
                continue
            shown_path = paths.join(spelled_root, *parts_rel) if spelled_root else rel
            found.append((item.path, shown_path, posixpath.splitext(rel)[0]))
        found.sort()
    else:
        raise GenaugError(f"no such Parquet file, folder or pattern: {spelled}")
    real_root = None
    files = []
    if local:
        real_root = os.path.realpath(root)
        for p, shown_path, stem in found:
            real = os.path.realpath(p)
            if not (allow_outside or _inside(real, real_root)):
                raise GenaugError(
                    f"Parquet file outside the dataset root: {shown(shown_path)}; pass --allow-outside-root to read "
                    f"files outside {shown(real_root)}"
                )
            files.append((p, shown_path, stem, os.path.dirname(real)))
    else:
        files = [(p, shown_path, stem, None) for p, shown_path, stem in found]
    partitioned = info.type != pafs.FileType.File
    return _Found(fs, root, real_root, files, partitioned, pattern)


def _match(parts: list[str], pattern: list[str]) -> bool:
    """Whether path components match glob components (`**` matches any number of them)."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_match(parts[i:], rest) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _match(parts[1:], rest)


def _holds_images(root: Path) -> bool:
    """Whether a local folder holds an image file at any depth (hidden names skipped)."""
    for _, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        if any(os.path.splitext(f)[1].lower() in FOLDER_EXTENSIONS for f in files if not f.startswith(".")):
            return True
    return False


# -- what opening reads: footers and labels ---------------------------------------
def _count_rows(dataset: pads.Dataset, found: list, local: bool) -> list[_File]:
    fragments = {fr.path: fr for fr in dataset.get_fragments()}
    files, first = [], 0
    for path, shown_path, stem, folder in found:
        try:
            groups = tuple(rg.num_rows for rg in fragments[path].row_groups)
        except _READ_ERRORS as e:
            raise GenaugError(f"cannot read Parquet file {shown_path}: {first_line(e)}") from None
        files.append(_File(path, shown_path, stem, folder if local else None, first, groups))
        first += sum(groups)
    return files


def _scan_labels(
    dataset: pads.Dataset, files: list[_File], column: str | None, hf_names: list[str] | None
) -> tuple[np.ndarray | None, list[str] | None]:
    """The dataset's labels (int64) and class names, checked as `load_images` checks them.

    An all-null column (genaug's output for unlabelled data) means no labels;
    string labels are numbered by their sorted names over every file.
    """
    if column is None:
        return None, None
    chunks: list[tuple[_File, pa.Array]] = []
    nulls = 0
    fragments = {fr.path: fr for fr in dataset.get_fragments()}
    for file in files:
        if not file.num_rows:
            continue
        try:
            batches = fragments[file.path].to_batches(columns=[column], schema=dataset.schema,
                                                      batch_size=_LABEL_SCAN_ROWS)  # fmt: skip
            for batch in batches:
                chunks.append((file, batch.column(0)))
                nulls += batch.column(0).null_count
        except _READ_ERRORS as e:
            raise GenaugError(f"cannot read Parquet file {file.shown}: {first_line(e)}") from None
    if nulls == sum(len(c) for _, c in chunks):
        return None, None
    parts = [table_labels(values.to_pylist(), file.shown, column, hf_names) for file, values in chunks]
    names = [n for _, n in parts]
    if names[0] is None or names[0] is hf_names:
        return np.concatenate([labels for labels, _ in parts]), hf_names
    # String labels: each chunk numbered its own names; renumber by the names of all of them.
    every = sorted(set().union(*names))
    where = f"label column '{column}' in {_dataset_name(files)}"
    _check_class_count(len(every), f"{where} has {len(every):,} distinct labels")
    lookup = {n: i for i, n in enumerate(every)}
    out = [np.array([lookup[n] for n in local], dtype=np.int64)[labels] for labels, local in parts]
    return np.concatenate(out), every


def _dataset_name(files: list[_File]) -> str:
    """How messages name a dataset: its one file, or its first file and how many more."""
    return files[0].shown if len(files) == 1 else f"{files[0].shown} and {len(files) - 1} more file(s)"
