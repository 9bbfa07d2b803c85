"""Readers: a folder of images, a Parquet file, an `.npz`, or a built-in dataset.

Every reader returns an `ImageSet` of uint8 [N, C, H, W]. Decoding uses
Pillow (torchvision.io's codecs are deprecated since 0.29) in a thread pool,
since its decoders release the GIL. Bad input is a one-line
`GenaugError` naming the file or column.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_MODES = {"l": "L", "gray": "L", "grey": "L", "grayscale": "L", "rgb": "RGB", "color": "RGB", "colour": "RGB"}


def _digits() -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # 0..16 -> 0..255, the scale every other 8-bit image has.
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageSet(
        images=torch.from_numpy(x),
        labels=bunch.target.astype(np.int64),
        class_names=[str(c) for c in bunch.target_names],
        ids=[f"digits-{i:05d}" for i in range(len(x))],
        source="digits",
    )


BUILTIN_DATASETS: dict[str, Callable[[], ImageSet]] = {"digits": _digits}


def load_images(
    source: str | os.PathLike,
    *,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
) -> ImageSet:
    """Read images from a folder, `.parquet`, `.npz` or built-in name into an ImageSet.

    `image_size` (N or (H, W)) resizes every image; `mode` ("gray"/"L" or
    "rgb") forces the channels, otherwise gray stays 1 channel and any colour
    image makes the set RGB. An existing path wins over a built-in name.
    """
    target_mode = _parse_mode(mode)
    size = _parse_size(image_size)
    path = Path(source)
    if path.is_dir():
        tensors, labels, names, ids, paths = _read_folder(path)
        data_source = str(path)
    elif path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".pq"):
            tensors, labels, names, ids, paths = _read_parquet(path, image_column, label_column, id_column)
        elif suffix == ".npz":
            tensors, labels, names, ids, paths = _read_npz(path)
        elif suffix in IMAGE_EXTENSIONS:
            tensors, labels, names, ids, paths = [_decode(path.read_bytes(), str(path))], None, None, [path.name], [str(path)]
        else:
            raise GenaugError(f"unsupported file type '{path.suffix}': {path} (use a folder, .parquet or .npz)")
        data_source = str(path)
    elif str(source) in BUILTIN_DATASETS:
        data = BUILTIN_DATASETS[str(source)]()
        if size is None and target_mode is None:
            return data
        tensors, labels, names, ids, paths = list(data.images), data.labels, data.class_names, data.ids, None
        data_source = data.source
    else:
        raise GenaugError(
            f"no such file, folder or built-in dataset: {source} (built-ins: {', '.join(BUILTIN_DATASETS)})"
        )
    images = _stack(tensors, ids, size, target_mode, data_source)
    return ImageSet(images=images, labels=labels, class_names=names, ids=ids, paths=paths, source=data_source)


# -- folders ---------------------------------------------------------------
def _read_folder(root: Path):
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise GenaugError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    rel = [p.relative_to(root) for p in files]
    in_root = [len(r.parts) == 1 for r in rel]
    labels = names = None
    if not all(in_root):
        if any(in_root):
            stray = next(r for r, top in zip(rel, in_root) if top)
            raise GenaugError(
                f"{root} mixes images in class sub-folders with images at its top level (e.g. {stray}); "
                "put every image in a class folder, or none"
            )
        names = sorted({r.parts[0] for r in rel})
        lookup = {n: i for i, n in enumerate(names)}
        labels = np.array([lookup[r.parts[0]] for r in rel], dtype=np.int64)
    tensors = _decode_many([(lambda p=p: p.read_bytes()) for p in files], [str(p) for p in files])
    return tensors, labels, names, [r.as_posix() for r in rel], [str(p) for p in files]


# -- parquet ---------------------------------------------------------------
def _read_parquet(path: Path, image_column, label_column, id_column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read Parquet file {path}: {_first_line(e)}") from None
    columns = table.column_names

    def column(name, what):
        if name not in columns:
            raise GenaugError(f"{what} column '{name}' not found in {path}; columns: {', '.join(columns)}")
        return table.column(name)

    image_name = image_column or _guess_image_column(table)
    if image_name is None:
        raise GenaugError(f"no image column found in {path}; columns: {', '.join(columns)} (pass --image-column)")
    cells = column(image_name, "image").to_pylist()
    loaders, names_for_errors = [], []
    for row, cell in enumerate(cells):
        loaders.append(_cell_loader(cell, path.parent, f"{path}:{image_name}[{row}]"))
        names_for_errors.append(f"{path} row {row}")
    tensors = _decode_many(loaders, names_for_errors)

    labels = names = None
    label_name = label_column or next((c for c in ("label", "labels") if c in columns), None)
    if label_name is not None:
        labels, names = _labels(column(label_name, "label").to_pylist(), path, label_name)
        hf_names = _hf_class_names(table.schema.metadata, label_name)
        names = hf_names or names
    id_name = id_column or ("id" if "id" in columns else None)
    if id_name is not None:
        ids = [str(v) for v in column(id_name, "id").to_pylist()]
    else:
        ids = [f"{path.stem}-{i:06d}" for i in range(len(cells))]
    paths = [c.get("path") if isinstance(c, dict) else (c if isinstance(c, str) else None) for c in cells]
    return tensors, labels, names, ids, paths


def _guess_image_column(table) -> str | None:
    import pyarrow as pa

    for name in ("image", "img", "images"):
        if name in table.column_names:
            return name
    for field in table.schema:
        t = field.type
        if (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return field.name
    return None


def _cell_loader(cell, base: Path, where: str) -> Callable[[], bytes]:
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return lambda: cell["bytes"]
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        return lambda: bytes(cell)
    if isinstance(cell, str):
        file = Path(cell) if Path(cell).is_absolute() else base / cell

        def read() -> bytes:
            if not file.is_file():
                raise GenaugError(f"image file not found: {file} (from {where})")
            return file.read_bytes()

        return read
    raise GenaugError(f"{where} holds neither image bytes nor a path")


def _labels(values: list, path: Path, column: str):
    if any(v is None for v in values):
        raise GenaugError(f"label column '{column}' in {path} has missing values")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if labels.min() < 0:
            raise GenaugError(f"label column '{column}' in {path} has negative labels")
        return labels, None
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(v)] for v in values], dtype=np.int64), names


def _hf_class_names(metadata, column: str) -> list[str] | None:
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (KeyError, TypeError, json.JSONDecodeError):
        return None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        return list(feature.get("names") or []) or None
    return None


# -- npz -------------------------------------------------------------------
def _read_npz(path: Path):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise GenaugError(f"cannot read .npz file {path}: {_first_line(e)}") from None
    if "x" not in arrays:
        raise GenaugError(f"{path} has no 'x' array; found: {', '.join(arrays) or 'nothing'}")
    x = _to_uint8(arrays["x"], path)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
            x = np.moveaxis(x, -1, 1)
        if x.shape[1] == 4:  # RGBA: drop alpha
            x = x[:, :3]
        if x.shape[1] not in (1, 3):
            raise GenaugError(f"'x' in {path} has shape {x.shape}; expected [N,H,W], [N,H,W,C] or [N,C,H,W] with C in 1, 3")
    else:
        raise GenaugError(f"'x' in {path} has shape {x.shape}; expected [N,H,W], [N,H,W,C] or [N,C,H,W]")
    labels = None
    if "y" in arrays:
        y = arrays["y"]
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise GenaugError(f"'y' in {path} must be {x.shape[0]} non-negative integer labels, got {y.dtype} {y.shape}")
        labels = y.astype(np.int64)
    tensors = list(torch.from_numpy(np.ascontiguousarray(x)))
    return tensors, labels, None, [f"{path.stem}-{i:06d}" for i in range(x.shape[0])], None


def _to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and x.size and np.nanmin(x) >= 0 and np.nanmax(x) <= 1:
        return np.rint(x * 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and x.size and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    raise GenaugError(f"'x' in {path} must be uint8, integers in 0..255 or floats in [0, 1]; got {x.dtype}")


# -- decoding and stacking ---------------------------------------------------
def _decode_many(loaders: Sequence[Callable[[], bytes]], names: Sequence[str]) -> list[torch.Tensor]:
    def one(i: int) -> torch.Tensor:
        return _decode(loaders[i](), names[i])

    if len(loaders) < 64:
        return [one(i) for i in range(len(loaders))]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, range(len(loaders))))


def _decode(data: bytes, name: str) -> torch.Tensor:
    """uint8 [C, H, W] with C = 1 (gray) or 3 (colour); alpha dropped, 16-bit scaled to 8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = (np.asarray(im, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            else:
                gray = im.mode in ("1", "L", "LA", "F") or (im.mode == "P" and _palette_is_gray(im))
                arr = np.asarray(im.convert("L" if gray else "RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise GenaugError(f"cannot decode image: {name}") from None
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return torch.from_numpy(np.array(arr))  # a writable copy


def _palette_is_gray(im) -> bool:
    rgb = np.asarray(im.convert("RGB"))
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _stack(tensors: list[torch.Tensor], ids, size, mode, source) -> torch.Tensor:
    channels = 3 if mode == "RGB" or (mode is None and any(t.shape[0] == 3 for t in tensors)) else 1
    out = []
    for t in tensors:
        if t.shape[0] != channels:
            t = t.expand(3, -1, -1) if channels == 3 else TF.rgb_to_grayscale(t)
        if size is not None and tuple(t.shape[1:]) != size:
            t = TF.resize(t, list(size), antialias=True)
        out.append(t)
    shapes = {tuple(t.shape[1:]) for t in out}
    if len(shapes) > 1:
        a, b = sorted(shapes)[:2]
        raise GenaugError(
            f"images in {source} have different sizes ({a[0]}x{a[1]} and {b[0]}x{b[1]}); "
            "pass --image-size to resize them to one size"
        )
    return torch.stack(out).contiguous()


def _parse_mode(mode: str | None) -> str | None:
    if mode is None:
        return None
    key = mode.lower()
    if key not in _MODES:
        raise GenaugError(f"unknown mode '{mode}'; use 'gray' or 'rgb'")
    return _MODES[key]


def _parse_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise GenaugError(f"image size must be positive, got {size}")
    return int(h), int(w)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
