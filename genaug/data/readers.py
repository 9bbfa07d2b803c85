"""Readers: a folder of images, a Parquet file, an `.npz`, or a built-in dataset.

Every reader returns an `ImageSet` of uint8 [N, C, H, W]. Every format
decodes with Pillow, which survives corrupt files (see `_decode`); large
images decode in a thread pool, since Pillow releases the GIL. Bad input is
a one-line `GenaugError` naming the file or column.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
PARQUET_EXTENSIONS = frozenset({".parquet", ".pq"})
IMAGE_COLUMN_NAMES = ("image", "img", "images")
LABEL_COLUMN_NAMES = ("label", "labels")
_MODES = {"l": "L", "gray": "L", "grey": "L", "grayscale": "L", "rgb": "RGB", "color": "RGB", "colour": "RGB"}
# Below this many images, or pixels per image, a thread pool costs more than it saves.
_PARALLEL_MIN = 64
_PARALLEL_MIN_PIXELS = 128 * 128

# What a reader hands to `_finish`: per-image tensors (sizes may differ),
# labels, class names, ids and original paths.
_Read = tuple[list[torch.Tensor], "np.ndarray | None", "list[str] | None", list[str], "list[str | None] | None"]


def _digits() -> ImageSet:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes); never downloads."""
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
    """Read a folder, `.parquet`, `.npz`, single image file or built-in name into an ImageSet.

    `image_size` (N or (H, W)) resizes every image; `mode` ("gray"/"L" or
    "rgb") forces the channels, otherwise gray stays 1 channel and any colour
    image makes the whole set RGB. An existing path wins over a built-in
    name. The column arguments apply to Parquet input only.
    """
    target_mode = _parse_mode(mode)
    size = _parse_size(image_size)
    path = Path(source)
    if path.is_dir():
        read = _read_folder(path)
    elif path.is_file():
        read = _read_file(path, image_column, label_column, id_column)
    elif str(source) in BUILTIN_DATASETS:
        data = BUILTIN_DATASETS[str(source)]()
        if size is None and target_mode in (None, _mode_of(data.images)):
            return data
        read = list(data.images), data.labels, data.class_names, data.ids, data.paths
        return _finish(read, size, target_mode, data.source)
    else:
        raise GenaugError(
            f"no such file, folder or built-in dataset: {source} (built-ins: {', '.join(BUILTIN_DATASETS)})"
        )
    return _finish(read, size, target_mode, str(path))


def _read_file(path: Path, image_column, label_column, id_column) -> _Read:
    suffix = path.suffix.lower()
    if suffix in PARQUET_EXTENSIONS:
        return _read_parquet(path, image_column, label_column, id_column)
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in IMAGE_EXTENSIONS:
        return [_decode(path.read_bytes(), str(path))], None, None, [path.name], [str(path)]
    raise GenaugError(f"unsupported file type '{path.suffix}': {path} (use a folder, .parquet or .npz)")


def _finish(read: _Read, size, mode, source: str) -> ImageSet:
    tensors, labels, names, ids, paths = read
    images = _stack(tensors, ids, size, mode, source)
    return ImageSet(images=images, labels=labels, class_names=names, ids=ids, paths=paths, source=source)


# -- folders ---------------------------------------------------------------
def _read_folder(root: Path) -> _Read:
    rel = _image_files(root)
    if not rel:
        raise GenaugError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    labels = names = None
    in_root = [len(r.parts) == 1 for r in rel]
    if not all(in_root):
        if any(in_root):
            stray = next(r for r, top in zip(rel, in_root) if top)
            raise GenaugError(
                f"{root} mixes images in class sub-folders with images at its top level (e.g. {stray.as_posix()}); "
                "put every image in a class folder, or none"
            )
        names = sorted({r.parts[0] for r in rel})
        lookup = {n: i for i, n in enumerate(names)}
        labels = np.array([lookup[r.parts[0]] for r in rel], dtype=np.int64)
    files = [root / r for r in rel]
    tensors = _decode_many([f.read_bytes for f in files], [str(f) for f in files])
    return tensors, labels, names, [r.as_posix() for r in rel], [str(f) for f in files]


def _image_files(root: Path) -> list[Path]:
    """Image files under `root`, relative to it, sorted by their posix path.

    Hidden files and folders are skipped: `.ipynb_checkpoints` would become
    a class and macOS `._x.png` resource forks do not decode.
    """
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root)
        found.extend(
            base / f for f in files if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
        )
    return sorted(found, key=lambda p: p.as_posix())


# -- parquet ---------------------------------------------------------------
def _read_parquet(path: Path, image_column, label_column, id_column) -> _Read:
    # Imported here: folder and npz reads do not need pyarrow.
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read Parquet file {path}: {_first_line(e)}") from None
    columns = schema.names

    def pick(given: str | None, guess: str | None, what: str) -> str | None:
        if given is not None and given not in columns:
            raise GenaugError(f"{what} column '{given}' not found in {path}; columns: {', '.join(columns)}")
        return given if given is not None else guess

    image_name = pick(image_column, _guess_image_column(schema), "image")
    if image_name is None:
        raise GenaugError(f"no image column found in {path}; columns: {', '.join(columns)} (pass --image-column)")
    label_name = pick(label_column, next((c for c in LABEL_COLUMN_NAMES if c in columns), None), "label")
    id_name = pick(id_column, "id" if "id" in columns else None, "id")
    wanted = list(dict.fromkeys(c for c in (image_name, label_name, id_name) if c is not None))
    try:
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read Parquet file {path}: {_first_line(e)}") from None

    cells = table.column(image_name).to_pylist()
    loaders = [
        _cell_loader(cell, path.parent, f"{path} column '{image_name}' row {i}") for i, cell in enumerate(cells)
    ]
    tensors = _decode_many(loaders, [f"{path} row {i}" for i in range(len(cells))])
    labels = names = None
    # An all-null label column (genaug's output for unlabelled data) means no labels.
    if label_name is not None and table.column(label_name).null_count < table.num_rows:
        labels, names = _labels(table.column(label_name).to_pylist(), path, label_name)
        hf_names = _hf_class_names(schema.metadata, label_name)
        if hf_names is not None and names is None:
            if len(labels) and labels.max() >= len(hf_names):
                raise GenaugError(
                    f"label column '{label_name}' in {path} has labels beyond its {len(hf_names)} class names"
                )
            names = hf_names
    if id_name is not None:
        ids = [str(v) for v in table.column(id_name).to_pylist()]
    else:
        ids = [f"{path.stem}-{i:06d}" for i in range(len(cells))]
    return tensors, labels, names, ids, [_cell_path(c) for c in cells]


def _guess_image_column(schema) -> str | None:
    import pyarrow as pa

    for name in IMAGE_COLUMN_NAMES:
        if name in schema.names:
            return name
    for field in schema:
        t = field.type
        hf_struct = pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
        if hf_struct or pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return field.name
    return None


def _cell_loader(cell, base: Path, where: str) -> Callable[[], bytes]:
    """A function returning the encoded bytes of one image-column cell."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            data = cell["bytes"]
            return lambda: data
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
        return lambda: data
    if isinstance(cell, str):
        file = Path(cell) if Path(cell).is_absolute() else base / cell

        def read() -> bytes:
            if not file.is_file():
                raise GenaugError(f"image file not found: {file} (from {where})")
            return file.read_bytes()

        return read
    raise GenaugError(f"{where} holds neither image bytes nor a path")


def _cell_path(cell) -> str | None:
    if isinstance(cell, dict):
        return cell.get("path")
    return cell if isinstance(cell, str) else None


def _labels(values: list, path: Path, column: str) -> tuple[np.ndarray, list[str] | None]:
    """Int labels as they are; anything else mapped to its index among the sorted names."""
    if any(v is None for v in values):
        raise GenaugError(f"label column '{column}' in {path} has missing values")
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            raise GenaugError(f"label column '{column}' in {path} has negative labels")
        return labels, None
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(v)] for v in values], dtype=np.int64), names


def _hf_class_names(metadata, column: str) -> list[str] | None:
    """Class names from a Hugging Face `ClassLabel` feature in the schema metadata."""
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names"):
        return [str(n) for n in feature["names"]]
    return None


# -- npz -------------------------------------------------------------------
def _read_npz(path: Path) -> _Read:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise GenaugError(f"cannot read .npz file {path}: {_first_line(e)}") from None
    if "x" not in arrays:
        raise GenaugError(f"{path} has no 'x' array; found: {', '.join(arrays) or 'nothing'}")
    x = _channels_first(_to_uint8(arrays["x"], path), path)
    labels = None
    if "y" in arrays:
        y = arrays["y"]
        if y.size != x.shape[0] or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
            raise GenaugError(
                f"'y' in {path} must be {x.shape[0]} non-negative integer labels, got {y.dtype} {y.shape}"
            )
        labels = y.reshape(-1).astype(np.int64)
    tensors = list(torch.from_numpy(np.ascontiguousarray(x)))
    return tensors, labels, None, [f"{path.stem}-{i:06d}" for i in range(x.shape[0])], None


def _channels_first(x: np.ndarray, path: Path) -> np.ndarray:
    """[N,H,W], [N,H,W,C] or [N,C,H,W] -> [N,C,H,W] with C in 1, 3 (alpha dropped)."""
    layouts = "expected [N,H,W], [N,H,W,C] (C in 1, 3, 4) or [N,C,H,W] (C in 1, 3)"
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise GenaugError(f"'x' in {path} has shape {x.shape}; {layouts}")
    # Channels last unless axis 1 already looks like channels: images are
    # larger than 4 pixels on a side in any layout worth guessing.
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3):
        x = np.moveaxis(x, -1, 1)
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] not in (1, 3):
        raise GenaugError(f"'x' in {path} has shape {x.shape}; {layouts}")
    return x


def _to_uint8(x: np.ndarray, path: Path) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.size and np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
        return np.rint(x * 255).astype(np.uint8)
    if x.size and np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    raise GenaugError(f"'x' in {path} must be uint8, integers in 0..255 or floats in [0, 1]; got {x.dtype}")


# -- decoding and stacking ---------------------------------------------------
def _decode_many(loaders: Sequence[Callable[[], bytes]], names: Sequence[str]) -> list[torch.Tensor]:
    """Read and decode every image, in order.

    Threads pay only for large images: below ~128x128 (measured, 2 cores)
    the decoders' many short GIL releases make two threads slower than one.
    The first image decides.
    """

    def one(i: int) -> torch.Tensor:
        try:
            data = loaders[i]()
        except OSError as e:
            raise GenaugError(f"cannot read {names[i]}: {e.strerror or _first_line(e)}") from None
        return _decode(data, names[i])

    if not loaders:
        return []
    first = one(0)
    small = first.shape[-2] * first.shape[-1] < _PARALLEL_MIN_PIXELS
    workers = min(8, os.cpu_count() or 1)
    if len(loaders) < _PARALLEL_MIN or small or workers == 1:
        return [first] + [one(i) for i in range(1, len(loaders))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [first, *pool.map(one, range(1, len(loaders)), chunksize=16)]


def _decode(data: bytes, name: str) -> torch.Tensor:
    """uint8 [C, H, W] with C = 1 (gray) or 3 (colour); alpha dropped, 16 bits cut to 8.

    NOTE: Pillow decodes every format. torchvision.io is faster on small
    PNGs, but its codecs are deprecated since 0.29, its libpng wrapper
    segfaults on a corrupt pixel stream, and libpng/libjpeg print to stderr,
    which would break the one-line error users get for a bad file.
    """
    img = _decode_with_pil(data, name)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise GenaugError(f"cannot decode image: {name} (decoded shape {tuple(img.shape)})")
    return img


def _decode_with_pil(data: bytes, name: str) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = _pil_to_uint8(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # UnidentifiedImageError and truncated files are OSErrors.
        raise GenaugError(f"cannot decode image: {name}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    # A copy: PIL's array is read-only, which torch warns about.
    return torch.from_numpy(np.array(arr, order="C"))


def _pil_to_uint8(im) -> np.ndarray:
    """[H, W] gray or [H, W, 3] RGB uint8 from any PIL image (first frame)."""
    if im.mode.startswith("I;16"):  # 16-bit gray: the high byte, so 257*v -> v exactly
        return (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
    if im.mode in ("I", "F"):  # 32-bit int or float: already 0..255 or clipped to it
        return np.clip(np.rint(np.asarray(im, dtype=np.float64)), 0, 255).astype(np.uint8)
    if im.mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))


def _stack(tensors: list[torch.Tensor], ids: Sequence[str], size, mode, source: str) -> torch.Tensor:
    """One uint8 [N, C, H, W] tensor: each image converted and resized before stacking."""
    if not tensors:
        raise GenaugError(f"no images in {source}")
    channels = 3 if mode == "RGB" or (mode is None and any(t.shape[0] == 3 for t in tensors)) else 1
    out = [_convert(t, channels, size) for t in tensors]
    first = tuple(out[0].shape[1:])
    odd = next((i for i, t in enumerate(out) if tuple(t.shape[1:]) != first), None)
    if odd is not None:
        other = tuple(out[odd].shape[1:])
        raise GenaugError(
            f"images in {source} have different sizes ({first[0]}x{first[1]} in {ids[0]} and "
            f"{other[0]}x{other[1]} in {ids[odd]}); pass --image-size to resize them to one size"
        )
    return torch.stack(out).contiguous()


def _convert(t: torch.Tensor, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    to_gray = channels == 1 and t.shape[0] == 3
    if not to_gray and (size is None or tuple(t.shape[1:]) == size):
        return t.expand(channels, -1, -1)  # gray -> RGB is a view; nothing else to do
    # Imported here: torchvision.transforms pulls in torch._dynamo and sympy,
    # a second of start-up that only resizing and gray conversion need.
    from torchvision.transforms.v2 import functional as TF

    # To gray before resizing and to RGB after: resize the fewest channels.
    if to_gray:
        t = TF.rgb_to_grayscale(t)
    if size is not None and tuple(t.shape[1:]) != size:
        t = TF.resize(t, list(size), antialias=True)
    if channels == 3 and t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t


def _mode_of(images: torch.Tensor) -> str:
    return "RGB" if images.shape[1] == 3 else "L"


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
    try:
        h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise GenaugError(f"image size must be N or (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise GenaugError(f"image size must be positive, got {size}")
    return h, w


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
