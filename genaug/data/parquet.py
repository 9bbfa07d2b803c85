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
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_png(images: torch.Tensor, *, compress_level: int = 9, workers: int | None = None) -> list[bytes]:
    """PNG bytes of each uint8 [N, C, H, W] image; deterministic, encoded in parallel threads.

    Level 9 because the PNG length doubles as the complexity score's
    compressor (Serrà et al. use the strongest setting). Pillow, not
    torchvision.io, whose image codecs are deprecated since 0.29.
    """
    # HWC (or HW for gray) numpy, the layout Pillow reads without a copy per image.
    pixels = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    workers = workers or min(8, os.cpu_count() or 1)

    def encode_one(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
        return buffer.getvalue()

    def encode_range(bounds: tuple[int, int]) -> list[bytes]:
        return [encode_one(pixels[i]) for i in range(*bounds)]

    n = pixels.shape[0]
    step = max(1, -(-n // (workers * 4)))
    chunks = [(s, min(n, s + step)) for s in range(0, n, step)]
    if workers == 1 or len(chunks) == 1:
        return [b for c in chunks for b in encode_range(c)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [b for part in pool.map(encode_range, chunks) for b in part]


def png_payload_bits(png: bytes) -> int:
    """Bits of the compressed pixel stream in a PNG: the IDAT chunks' data only.

    Everything else (signature, IHDR, IEND, chunk lengths, types and CRCs) is
    a fixed cost that says nothing about the image.
    """
    if not png.startswith(_PNG_SIGNATURE):
        raise GenaugError("not a PNG")
    pos, total = len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            total += length
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
    defaults to 0..N-1 and may hold None for rows that are not inputs
    (synthetic images).
    """
    n = len(imageset)
    png = png if png is not None else encode_png(imageset.images)
    if len(png) != n:
        raise GenaugError(f"{len(png)} PNG encodings for {n} images")
    paths = imageset.paths or [None] * n
    arrays = {
        "index": pa.array(np.arange(n) if index is None else index, type=pa.int64()),
        "id": pa.array(imageset.ids, type=pa.string()),
        "image": pa.StructArray.from_arrays(
            [pa.array(png, type=pa.binary()), pa.array(paths, type=pa.string())], fields=list(IMAGE_TYPE)
        ),
        "label": pa.array(
            [None] * n if imageset.labels is None else imageset.labels, type=pa.int64()
        ),
    }
    for name, values in (columns or {}).items():
        if name in arrays:
            raise GenaugError(f"column '{name}' is reserved")
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(_plain(values))
        if len(array) != n:
            raise GenaugError(f"column '{name}' has {len(array)} values for {n} images")
        arrays[name] = array
    return pa.table(arrays)


def _plain(values):
    # numpy arrays convert directly; lists of numpy arrays need lists.
    if isinstance(values, np.ndarray):
        return values
    return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]


def hf_features(schema: pa.Schema, class_names: list[str] | None = None) -> dict:
    """The Hugging Face `datasets` features JSON for `schema`."""
    features = {}
    for field in schema:
        if field.name == "image" and field.type == IMAGE_TYPE:
            features[field.name] = {"_type": "Image"}
        elif field.name == "label" and class_names:
            features[field.name] = {"names": list(class_names), "_type": "ClassLabel"}
        else:
            features[field.name] = _hf_value(field.type)
    return features


def _hf_value(t: pa.DataType) -> dict:
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return {"feature": _hf_value(t.value_type), "_type": "Sequence"}
    if pa.types.is_struct(t):
        return {f.name: _hf_value(f.type) for f in t}
    name = {pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary", pa.bool_(): "bool"}.get(t)
    return {"dtype": name or str(t), "_type": "Value"}


def write_table(
    table: pa.Table, path: str | os.PathLike, *, genaug_metadata: dict, class_names: list[str] | None = None
) -> None:
    """Write `table` to `path` with `huggingface` and `genaug` metadata, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(table.schema.metadata or {})
    meta[b"huggingface"] = json.dumps({"info": {"features": hf_features(table.schema, class_names)}}).encode()
    meta[b"genaug"] = json.dumps(genaug_metadata, default=_json_default).encode()
    table = table.replace_schema_metadata(meta)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_image_table(
    path: str | os.PathLike,
    imageset: ImageSet,
    columns: Mapping | None = None,
    *,
    png: list[bytes] | None = None,
    index=None,
    genaug_metadata: dict,
) -> pa.Table:
    """`image_table` + `write_table` in one call; returns the table written."""
    table = image_table(imageset, columns, png=png, index=index)
    write_table(table, path, genaug_metadata=genaug_metadata, class_names=imageset.class_names)
    return table


def read_genaug_metadata(path: str | os.PathLike) -> dict:
    """The `genaug` metadata of a Parquet file written by genaug ({} if none)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as e:
        raise GenaugError(f"cannot read Parquet file {path}: {str(e).splitlines()[0]}") from None
    raw = meta.get(b"genaug")
    return json.loads(raw) if raw else {}
