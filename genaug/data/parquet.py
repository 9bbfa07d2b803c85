"""Parquet out: one row per image, PNG bytes in the Hugging Face image struct.

The schema metadata carries two JSON documents: `huggingface` (the features,
so `datasets.load_dataset("parquet", ...)` shows an `Image` column and a
`ClassLabel`) and `genaug` (version, command, settings, model hash).
Writes are atomic: a temp file in the target folder, then a rename.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from genaug.atomic import check_output, clean_stale, commit, temp_path
from genaug.data.imageset import ImageSet
from genaug import parquet_meta
from genaug.errors import GenaugError, first_line

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
RESERVED_COLUMNS = ("index", "id", "image", "label")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PARALLEL_MIN_PIXELS = 16 * 16
# Arrow names that differ from the `datasets` Value dtype names.
_HF_DTYPES = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}


def encode_png(images: torch.Tensor, *, compress_level: int = 9, workers: int | None = None) -> list[bytes]:
    """PNG bytes of each uint8 [N, C, H, W] image (C = 1 or 3), in order; deterministic.

    Pillow's encoder (torchvision.io's codecs are deprecated since 0.29)
    runs in threads for images of 16x16 and up; zlib releases the GIL.
    `workers` overrides that choice. Level 9 because the PNG
    length doubles as the complexity score's compressor (Serrà et al. use
    the strongest setting).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"encode_png takes uint8 [N, C, H, W] with C in 1, 3; got {images.dtype} {tuple(images.shape)}"
        )
    images = images.detach().cpu().contiguous()
    n, _, h, w = images.shape
    if workers is None:
        # Measured on 2 cores: threads lose on 8x8 images, win from ~28x28 up.
        workers = min(8, os.cpu_count() or 1) if h * w >= _PARALLEL_MIN_PIXELS else 1
    workers = max(1, workers)

    # HWC (HW for gray) numpy, the layout Pillow reads.
    pixels = images.permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]

    def encode_one(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
        return buffer.getvalue()

    def encode_range(bounds: tuple[int, int]) -> list[bytes]:
        return [encode_one(pixels[i]) for i in range(*bounds)]

    # A few chunks per worker: one call per image would cost more in
    # scheduling than encoding an 8x8 image.
    step = max(1, -(-n // (workers * 4)))
    chunks = [(s, min(n, s + step)) for s in range(0, n, step)]
    if workers == 1 or len(chunks) <= 1:
        return [b for c in chunks for b in encode_range(c)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [b for part in pool.map(encode_range, chunks) for b in part]


def png_payload_bits(png: bytes) -> int:
    """Bits of the compressed pixel stream in a PNG: the IDAT chunks' data only.

    Everything else (the 8-byte signature, IHDR, IEND, and each chunk's
    length, type and CRC) is a fixed cost that says nothing about the image
    but dominates tiny ones: an 8x8 PNG is ~60% container.
    """
    png = bytes(png)
    if not png.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG: missing the PNG signature")
    pos, total = len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            total += length
        elif kind == b"IEND":
            break
        pos += 12 + length  # length + type + data + crc
    return 8 * total


def image_table(
    imageset: ImageSet,
    columns: Mapping[str, Sequence | np.ndarray | pa.Array] | None = None,
    *,
    png: list[bytes] | None = None,
    index: Sequence | np.ndarray | None = None,
) -> pa.Table:
    """The output table: index, id, image struct, label, then `columns` in order.

    `png` reuses encodings made elsewhere (e.g. during scoring); `index`
    defaults to 0..N-1 and may hold None (or be a masked array) for rows
    that are not inputs, such as synthetic images. Column values may be
    numpy arrays (a 2-D array becomes a fixed-size list per row), lists
    (of lists) or pyarrow arrays.
    """
    n = len(imageset)
    png = png if png is not None else encode_png(imageset.images)
    if len(png) != n:
        raise GenaugError(f"{len(png)} PNG encodings for {n} images")
    paths = imageset.paths or [None] * n
    labels = [None] * n if imageset.labels is None else imageset.labels
    arrays = {
        "index": _checked("index", pa.array(np.arange(n) if index is None else index, type=pa.int64()), n),
        "id": pa.array(imageset.ids, type=pa.string()),
        "image": pa.StructArray.from_arrays(
            [pa.array(png, type=pa.binary()), pa.array(paths, type=pa.string())], fields=list(IMAGE_TYPE)
        ),
        "label": pa.array(labels, type=pa.int64()),
    }
    for name, values in (columns or {}).items():
        if name in arrays:
            raise GenaugError(f"column '{name}' is reserved ({', '.join(RESERVED_COLUMNS)})")
        arrays[name] = _checked(name, _to_arrow(values), n)
    return pa.table(arrays)


def to_pandas(table: pa.Table):
    """`table` as a pandas DataFrame whose integer columns stay integers where they hold nulls
    (pandas' nullable Int64: a synthetic row's null `index` is <NA>, not a float NaN)."""
    import pandas as pd

    nullable = {t: pd.Int64Dtype() for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(),
                                            pa.uint16(), pa.uint32())}  # fmt: skip
    return table.to_pandas(types_mapper=nullable.get)


def _checked(name: str, array, n: int):
    if len(array) != n:
        raise GenaugError(f"column '{name}' has {len(array)} values for {n} images")
    return array


def _to_arrow(values) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.ndim == 2:
        # Zero-copy per-row vectors (e.g. latents) instead of N Python lists.
        flat = pa.array(np.ascontiguousarray(values).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    if isinstance(values, np.ndarray):
        return pa.array(values)
    return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])


def hf_features(schema: pa.Schema, class_names: list[str] | None = None) -> dict:
    """The Hugging Face `datasets` features JSON for `schema`.

    Lists are written as `Sequence`, which every `datasets` version reads
    (4.x turns it into `List`; 2.x-3.x know no `List`).
    """
    features = {}
    for field in schema:
        if field.type == IMAGE_TYPE:  # `image`, and e.g. a completion's `original` beside it
            features[field.name] = {"_type": "Image"}
        elif field.name == "label" and class_names and pa.types.is_integer(field.type):
            features[field.name] = {"names": list(class_names), "_type": "ClassLabel"}
        else:
            features[field.name] = _hf_feature(field.type)
    return features


def _hf_feature(t: pa.DataType):
    if pa.types.is_dictionary(t):
        return _hf_feature(t.value_type)
    if pa.types.is_struct(t):
        return {f.name: _hf_feature(f.type) for f in t}
    if pa.types.is_large_list(t):
        return {"feature": _hf_feature(t.value_type), "_type": "LargeList"}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        feature = {"feature": _hf_feature(t.value_type), "_type": "Sequence"}
        if pa.types.is_struct(t.value_type):
            # Sequence of a dict means dict of lists to `datasets`; List keeps a list of structs.
            feature["_type"] = "List"
        if pa.types.is_fixed_size_list(t):
            feature["length"] = t.list_size
        return feature
    return {"dtype": _HF_DTYPES.get(t, str(t)), "_type": "Value"}


def write_table(
    table: pa.Table, path: str | os.PathLike, *, genaug_metadata: dict, class_names: list[str] | None = None
) -> None:
    """Write `table` to `path` with `huggingface` and `genaug` schema metadata, atomically.

    The file appears complete or not at all: it is written to a hidden temp
    file in the target folder (created if missing) and renamed over `path`;
    on any error the temp file is removed and the error re-raised (a
    filesystem error as a one-line GenaugError).
    """
    write_tables([(table, path, genaug_metadata, class_names)])


def write_tables(outputs: Sequence[tuple[pa.Table, str | os.PathLike, dict, list[str] | None]]) -> None:
    """Write several `(table, path, genaug_metadata, class_names)` outputs as one step.

    Every table is written to its temp file first, and only then renamed into
    place; a file being replaced is kept aside until every rename succeeded.
    A job with two outputs (a table and its resample) so never leaves one
    of them behind, or an old one destroyed, after failing on the other.
    """
    temps: list[tuple[Path, Path]] = []
    try:
        for table, path, genaug_metadata, class_names in outputs:
            # A folder, device, pipe or link in the way is refused before any work.
            path = check_output(path)
            clean_stale(path)
            try:
                temps.append((_write_temp(table, path, genaug_metadata, class_names), path))
            except OSError as e:
                raise _write_error(path, e) from None
        _replace_all(temps)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)


def _replace_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename each temp file over its target; on a failure, put every target back as it was."""
    done: list[tuple[Path, Path | None]] = []  # (target, backup of what it replaced)
    try:
        for tmp, target in moves:
            backup = None
            try:
                if len(moves) > 1 and target.exists():
                    backup = temp_path(target, "old")
                    os.replace(target, backup)
                commit(tmp, target)
            except BaseException as e:  # an interrupt too: the old file goes back
                if backup is not None and not target.exists():
                    os.replace(backup, target)
                if isinstance(e, OSError):
                    raise _write_error(target, e) from None
                raise
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
        raise
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def _write_error(path: Path, e: OSError) -> GenaugError:
    return GenaugError(f"cannot write {path}: {e.strerror or first_line(e)}")


def _write_temp(table: pa.Table, path: Path, genaug_metadata: dict, class_names: list[str] | None) -> Path:
    """`table` with its metadata in a hidden temp file beside `path` (removed again on error)."""
    meta = dict(table.schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": hf_features(table.schema, class_names)}}).encode()
    meta[parquet_meta.GENAUG_KEY] = json.dumps(genaug_metadata, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    # Not mkstemp: its 0600 mode would survive the rename and hide the output from other users.
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _json_default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, (os.PathLike, set, frozenset)):
        return str(value) if isinstance(value, os.PathLike) else sorted(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_image_table(
    path: str | os.PathLike,
    imageset: ImageSet,
    columns: Mapping[str, Sequence | np.ndarray | pa.Array] | None = None,
    *,
    png: list[bytes] | None = None,
    index: Sequence | np.ndarray | None = None,
    genaug_metadata: dict,
) -> pa.Table:
    """`image_table` + `write_table` (class names from `imageset`); returns the table written."""
    table = image_table(imageset, columns, png=png, index=index)
    write_table(table, path, genaug_metadata=genaug_metadata, class_names=imageset.class_names)
    return table


def read_genaug_metadata(path: str | os.PathLike) -> dict:
    """The `genaug` metadata of a Parquet file written by genaug ({} if it has none)."""
    try:
        meta = pq.read_schema(path).metadata
    except (OSError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read Parquet file {path}: {first_line(e)}") from None
    return parquet_meta.genaug_metadata(meta, str(path))
