"""Readers: a folder of images, a Parquet file, an `.npz`, or a built-in dataset.

Every reader returns an `ImageSet` of uint8 [N, C, H, W]. Every format
decodes with Pillow, which survives corrupt files (see `_decode`); large
images decode in a thread pool, since Pillow releases the GIL. Bad input is
a one-line `GenaugError` naming the file or column.

A dataset is untrusted input: nothing outside it is read, nothing is
decoded before its size is known, and labels are never guessed at.

* Containment. Every path a dataset names (a Parquet path cell, a link in
  an image folder) must resolve, links included, inside the dataset root:
  the Parquet file's folder, or the folder given. Otherwise it is refused
  with one message that reads the same whether the target is missing,
  unreadable, outside the root or not a file, so an error never tells
  whether, say, /etc/shadow exists. `allow_outside_root=True` lifts this.
* Size. An image's size is read from its header and checked against
  `max_pixels` before it is decoded; an `.npz` array's size is read from its
  `.npy` header and checked before it is expanded.
* Labels are integer class indices 0..MAX_CLASSES-1 or class-name strings;
  floats (even 1.0), NaN, bools and anything else are refused with the fix.
"""

from __future__ import annotations

import decimal
import errno
import functools
import io
import json
import logging
import lzma
import math
import os
import re
import stat
import struct
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError, first_line, shown, shown_names

# A folder's images are the files torchvision's ImageFolder reads (its IMG_EXTENSIONS), in its
# order, so its rows and genaug's line up (`_image_files` says where the two still differ).
FOLDER_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
# A file named on its own (or a Parquet cell's path) may also be a GIF (its first frame).
IMAGE_EXTENSIONS = FOLDER_EXTENSIONS | {".gif"}
PARQUET_EXTENSIONS = frozenset({".parquet", ".pq"})
IMAGE_COLUMN_NAMES = ("image", "img", "images")
LABEL_COLUMN_NAMES = ("label", "labels")
# The Pillow decoders genaug uses: the formats IMAGE_EXTENSIONS name (JPEG
# includes MPO, as many camera JPEGs open; PPM reads .ppm and .pgm). Pillow picks a decoder by
# content, not by name: without this list an `x.png` holding EPS would start
# Ghostscript, and rarely used decoders (DDS, ...) raise NotImplementedError
# on bad bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
# genaug's models see small images (8x8 up to a few hundred pixels a side).
# 4096x4096 still lets a 12-megapixel photo in to be resized, while one
# decoded image stays under 64 MiB (RGBA) and eight decoding threads under
# 512 MiB. Pillow's own limit (89M pixels, ~270 MB per RGB image) suits an
# image viewer, not a reader of thousands of files. --max-pixels raises it.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Labels index classes. 65,536 is far more than any image dataset has
# (ImageNet-21k: 21,841) yet small enough to print, store and one-hot: a
# label of 10**6 once made `genaug info` print an 11.9 MB line.
MAX_CLASSES = 65_536
# An .npz array may expand to at most this many times its compressed size
# once it is over _NPZ_SMALL_BYTES. Image arrays saved with
# np.savez_compressed expand 2-20x (digits: 2.5x as uint8, 6.8x as float32,
# 18x upscaled to 32x32); zeros expand 1030x with deflate and without bound
# with bzip2 or lzma, so a 200 KB file could claim gigabytes. A ratio, not a
# fixed byte cap: an uncompressed .npz (np.savez, ratio 1) of any size reads,
# because memory then grows only with the file the user has on disk.
MAX_NPZ_EXPANSION = 100
_NPZ_SMALL_BYTES = 64 * 2**20
_MODES = {"l": "L", "gray": "L", "grey": "L", "grayscale": "L", "rgb": "RGB", "color": "RGB", "colour": "RGB"}
# Below this many images, or pixels per image, a thread pool costs more than it saves.
_PARALLEL_MIN = 64
_PARALLEL_MIN_PIXELS = 128 * 128
# What decoding damaged or hostile bytes can raise besides OSError (which
# covers UnidentifiedImageError and truncated files): Pillow's plugins parse
# headers in Python (struct, indexing, arithmetic), so a bad header can
# surface as any of these; each means the bytes are no usable image.
# Fuzzing (tests/reliability/test_io_properties.py) found NotImplementedError
# in the DDS decoder, which IMAGE_FORMATS now leaves out.
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError,
    ZeroDivisionError, OverflowError, RuntimeError, MemoryError, zlib.error,
)
# The same for zipfile, its codecs and numpy's .npy header parser (which
# runs `tokenize` and `ast` over the header text).
_NPZ_ERRORS = (
    OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
    struct.error, KeyError, IndexError, OverflowError, TypeError, SyntaxError, tokenize.TokenError,
)

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
    source,
    *,
    labels=None,
    image_size: int | tuple[int, int] | None = None,
    mode: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    allow_outside_root: bool = False,
    max_pixels: int | None = None,
) -> ImageSet:
    """Read a dataset into an ImageSet: a folder, `.parquet`, `.npz`, single image file or
    built-in name, a URI (`file://`, or any fsspec filesystem: `s3://`, `gs://`, `memory://`),
    or an object in memory: an `ImageSet`, a uint8 array or tensor (`[N, H, W]`,
    `[N, H, W, C]` or `[N, C, H, W]`, with `labels=`), a Hugging Face `datasets.Dataset`
    or a torch `Dataset` (see `genaug.data.objects`).

    `image_size` (N or (H, W)) resizes every image; `mode` ("gray"/"L" or
    "rgb") forces the channels, otherwise gray stays 1 channel and any colour
    image makes the whole set RGB. An existing path wins over a built-in
    name. The column arguments apply to Parquet input only.

    Paths the dataset names are read only if they resolve inside the
    dataset root (the Parquet file's folder, or the folder given), unless
    `allow_outside_root`: a Parquet path cell or a link in a folder that
    leads out is refused, with one message whether or not its target exists.
    In a folder, a link loop is refused, other links to folders inside the
    root are not followed (their files are read at their real place), and
    each real file is read once. A single image file given as `source` is
    always read.

    Images over `max_pixels` pixels (None: DEFAULT_MAX_PIXELS) are refused
    from their header, before decoding; so are `.npz` images, from the
    `.npy` header, and an `image_size` over it. Labels must be integers
    0..MAX_CLASSES-1 or strings.
    """
    target_mode = _parse_mode(mode)
    size = _parse_size(image_size)
    cap = _parse_max_pixels(max_pixels)
    if size is not None and size[0] * size[1] > cap:  # resizing up to it would allocate as much as a bomb
        raise GenaugError(
            f"image size {size[0]}x{size[1]} ({size[0] * size[1]:,} pixels) is above the cap of {cap:,} pixels; "
            "pass --max-pixels to raise it"
        )
    if labels is not None and not isinstance(source, (np.ndarray, torch.Tensor)):
        raise GenaugError("labels= goes with an array or tensor of images; other inputs carry their own labels")
    from genaug.data import objects, remote

    if isinstance(source, ImageSet):
        if size is None and target_mode in (None, _mode_of(source.images)):
            return source
        read = list(source.images), source.labels, source.class_names, source.ids, source.paths
        return _finish(read, size, target_mode, source.source)
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return _finish(objects.read_array(source, labels, cap), size, target_mode, "array")
    if objects.is_hf_dataset(source):
        read = objects.read_hf_dataset(source, image_column, label_column, id_column, cap)
        return _finish(read, size, target_mode, "dataset")
    if objects.is_torch_dataset(source):
        return _finish(objects.read_torch_dataset(source, cap), size, target_mode, objects.describe(source))
    if not isinstance(source, (str, os.PathLike)):
        raise GenaugError(
            f"cannot read images from {objects.describe(source)!r} input; give a path or URI, an ImageSet, a uint8 "
            "array or tensor, a Hugging Face datasets.Dataset or a torch Dataset"
        )
    columns = (image_column, label_column, id_column)
    if remote.is_uri(source):
        local = remote.local_path(source)
        if local is None and is_glob(source):  # no single thing to copy: read in place
            from genaug.data import streaming

            read = streaming.open_parquet(source, *columns, max_pixels=cap).read_all()
            return _finish(read, size, target_mode, source)
        if local is None:
            with remote.staged(source, FOLDER_EXTENSIONS | PARQUET_EXTENSIONS | {".npz"}) as copy:
                read = (_read_dir(copy, *columns, False, cap) if copy.is_dir()
                        else _read_file(copy, *columns, False, cap))  # fmt: skip
            return _finish(_without_paths(read), size, target_mode, source)
        source = local
    path = Path(source)
    if path.is_dir():
        read = _read_dir(path, *columns, allow_outside_root, cap)
    elif not path.exists() and is_glob(str(source)):
        from genaug.data import streaming

        dataset = streaming.open_parquet(str(source), *columns, allow_outside_root=allow_outside_root, max_pixels=cap)
        read = dataset.read_all()
    elif path.is_file():
        read = _read_file(path, image_column, label_column, id_column, allow_outside_root, cap)
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


def _without_paths(read: _Read) -> _Read:
    """A read of a temp copy: its file paths are gone once read, so none is kept."""
    tensors, labels, names, ids, _ = read
    return tensors, labels, names, ids, None


def _read_file(path: Path, image_column, label_column, id_column, allow_outside: bool, cap: int) -> _Read:
    suffix = path.suffix.lower()
    if suffix in PARQUET_EXTENSIONS:
        return _read_parquet(path, image_column, label_column, id_column, allow_outside, cap)
    if suffix == ".npz":
        return _read_npz(path, cap)
    if suffix in IMAGE_EXTENSIONS:
        # The user named this file: no root to stay inside, links followed.
        loader = partial(_read_regular, str(path), follow=True)
        return _decode_many([loader], [str(path)], cap), None, None, [_utf8(path.name)], [_utf8(str(path))]
    raise GenaugError(f"unsupported file type '{path.suffix}': {path} (use a folder, .parquet or .npz)")


def _finish(read: _Read, size, mode, source: str) -> ImageSet:
    tensors, labels, names, ids, paths = read
    images = _stack(tensors, ids, size, mode, source)
    return ImageSet(images=images, labels=labels, class_names=names, ids=ids, paths=paths, source=source)


# -- reading the files a dataset names -----------------------------------------
def _read_regular(path: str, *, follow: bool) -> bytes:
    """The bytes of the regular file at `path`; OSError for anything else.

    Opened non-blocking, so a FIFO named like an image fails at once instead
    of waiting for a writer; `follow=False` fails on a link, so a path whose
    real location was checked cannot be swapped for a link before the read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return f.read()


def _read_named(written: str, root: str, where: str, allow_outside: bool, base: str | None = None) -> bytes:
    """The bytes of the image file a dataset names: `written`, relative to `base` (default `root`)
    unless absolute.

    Read only if its real path (links resolved) is inside `root`, or with
    `allow_outside`. Otherwise every failure, whether the path is outside,
    missing, unreadable or not a file, gives the same message, so the error
    reveals nothing about files outside the root.
    """
    try:
        real = os.path.realpath(os.path.join(root if base is None else base, written))
        if allow_outside or _inside(real, root):
            return _read_regular(real, follow=False)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        if allow_outside:
            raise GenaugError(f"cannot read image file {shown(written)} ({where}): {_reason(e)}") from None
    raise _refused(written, where, root)


def _refused(written: str, where: str, root: str) -> GenaugError:
    """The one refusal for a path out of the root or not readable: it must not depend on which."""
    return GenaugError(
        f"image path outside the dataset root or not readable: {shown(written)} ({where}); "
        f"pass --allow-outside-root to read files outside {shown(root)}"
    )


def _inside(real: str, root: str) -> bool:
    """Whether the resolved path `real` is `root` or below it (both real paths)."""
    real, root = os.path.normcase(real), os.path.normcase(root)
    return real == root or real.startswith(os.path.join(root, ""))


# -- folders ---------------------------------------------------------------
def _read_dir(root: Path, image_column, label_column, id_column, allow_outside: bool, cap: int) -> _Read:
    """A folder of images, or, when it holds Parquet files and no images, a Parquet dataset
    (every Parquet file below it, in path order: `genaug.data.streaming`)."""
    found = _image_files(root, allow_outside)
    if not found and has_parquet_files(root):
        from genaug.data import streaming

        source = streaming.open_parquet(
            root, image_column, label_column, id_column, allow_outside_root=allow_outside, max_pixels=cap
        )
        return source.read_all()
    return _read_folder(root, allow_outside, cap, found)


def is_glob(text: str) -> bool:
    """Whether a source names files by a pattern (`*`, `?` or `[`), e.g. `shards/*.parquet`."""
    return any(c in text for c in "*?[")


def has_parquet_files(root: Path) -> bool:
    """Whether a folder holds a Parquet file at any depth (hidden and `_`-prefixed names skipped)."""
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith((".", "_"))]
        if any(os.path.splitext(f)[1].lower() in PARQUET_EXTENSIONS for f in files if not f.startswith((".", "_"))):
            return True
    return False


def _read_folder(root: Path, allow_outside: bool, cap: int, found: list | None = None) -> _Read:
    found = _image_files(root, allow_outside) if found is None else found
    if not found:
        raise GenaugError(f"no images found in {root} (looked for {', '.join(sorted(FOLDER_EXTENSIONS))})")
    rel = [r for r, _ in found]
    labels = names = None
    in_root = [len(r.parts) == 1 for r in rel]
    if not all(in_root):
        if any(in_root):
            stray = next(r for r, top in zip(rel, in_root) if top)
            raise GenaugError(
                f"{root} mixes images in class sub-folders with images at its top level "
                f"(e.g. {shown(stray.as_posix())}); put every image in a class folder, or none"
            )
        names = sorted({_utf8(r.parts[0]) for r in rel})
        _check_class_count(len(names), f"{root} has {len(names):,} class folders")
        lookup = {n: i for i, n in enumerate(names)}
        labels = np.array([lookup[_utf8(r.parts[0])] for r in rel], dtype=np.int64)
    real_root = os.path.realpath(root)
    files = [str(root / r) for r in rel]
    loaders = [
        partial(_read_named, r.as_posix(), real_root, f"in {root}", allow_outside)
        if linked
        else partial(_read_regular, f, follow=False)
        for r, f, (_, linked) in zip(rel, files, found)
    ]
    tensors = _decode_many(loaders, files, cap)
    return tensors, labels, names, [_utf8(r.as_posix()) for r in rel], [_utf8(f) for f in files]


def _image_files(root: Path, allow_outside: bool = False) -> list[tuple[Path, bool]]:
    """Image files under `root` as (path relative to it, reached through a link), in ImageFolder's order.

    torchvision's `ImageFolder` reads the same files (FOLDER_EXTENSIONS, any
    case) in the same order: class folders sorted, and within each, folder
    by folder (sorted by path), the files of each sorted by name. Where the
    two differ, on purpose:
      * hidden files and folders are skipped here (ImageFolder reads them);
      * images at the top level are read unlabelled when there are no class
        folders (ImageFolder refuses such a root), and refused beside class
        folders (ImageFolder ignores them);
      * links are handled as below (ImageFolder follows every linked folder).

    Hidden files and folders are skipped: `.ipynb_checkpoints` would become
    a class and macOS `._x.png` resource forks do not decode. Unreadable
    folders are skipped too (a disk's `lost+found`).

    Links: a link that resolves outside the root is refused, whatever it
    points to and whether that exists (so the refusal says nothing about
    what lies outside), unless `allow_outside`, which follows it. A link to
    a folder holding the link (a loop) is refused. Any other linked folder
    inside the root is not followed: its files are read at their real place,
    under their real class. A linked image file inside the root is read
    (git-annex and DVC checkouts link into a hidden store). Each real folder
    is walked once and each real file read once, a file itself winning over
    links to it, so no loop or alias can multiply images.
    """
    real_root = os.path.realpath(root)
    seen_folders: set[tuple[int, int]] = set()
    entries: list[tuple[Path, str, bool]] = []  # (relative path, real path, via a link)
    stack = [(str(root), real_root, Path())]
    while stack:
        folder, real_folder, rel = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen_folders:
                continue
            seen_folders.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                listing = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            continue
        subfolders = []
        for entry in listing:
            image = os.path.splitext(entry.name)[1].lower() in FOLDER_EXTENSIONS
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                inside = _inside(target, real_root)
                if not inside and not allow_outside:
                    raise _refused((rel / entry.name).as_posix(), f"in {root}", real_root)
                if os.path.isdir(target):
                    if _inside(real_folder, target):
                        raise GenaugError(
                            f"link loop: {shown((rel / entry.name).as_posix())} in {root} leads back to a folder "
                            "that holds it; remove the link"
                        )
                    if not inside:
                        subfolders.append((entry.path, target, rel / entry.name))
                elif image:
                    entries.append((rel / entry.name, target, True))
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append((entry.path, os.path.join(real_folder, entry.name), rel / entry.name))
            elif image:
                entries.append((rel / entry.name, os.path.join(real_folder, entry.name), False))
        stack.extend(reversed(subfolders))  # walk in sorted order: the first of two aliases wins
    entries.sort(key=lambda e: _imagefolder_order(e[0]))
    claimed = {real for _, real, linked in entries if not linked}
    found = []
    for rel, real, linked in entries:
        if linked and real in claimed:
            continue
        claimed.add(real)
        found.append((rel, linked))
    return found


def _imagefolder_order(rel: Path) -> tuple[str, str, str]:
    """Sort key of a file in ImageFolder's order: its class, then its folder's path, then its name."""
    parts = rel.parts
    return (parts[0] if len(parts) > 1 else "", "/".join(parts[:-1]), parts[-1])


# -- parquet ---------------------------------------------------------------
def _read_parquet(path: Path, image_column, label_column, id_column, allow_outside: bool, cap: int) -> _Read:
    # Imported here: folder and npz reads do not need pyarrow.
    import pyarrow as pa
    import pyarrow.parquet as pq

    # ValueError: a damaged file can hold column names that are not UTF-8.
    errors = (OSError, ValueError, pa.ArrowException)
    try:
        schema = pq.read_schema(path)
    except errors as e:
        raise GenaugError(f"cannot read Parquet file {path}: {first_line(e)}") from None
    image_name, label_name, id_name = _pick_columns(schema, image_column, label_column, id_column, str(path))
    wanted = list(dict.fromkeys(c for c in (image_name, label_name, id_name) if c is not None))
    try:
        table = pq.read_table(path, columns=wanted)
    except errors as e:
        raise GenaugError(f"cannot read Parquet file {path}: {first_line(e)}") from None
    hf_names = None if label_name is None else _hf_class_names(schema.metadata, label_name, path)
    return read_table(
        table, image_name, label_name, id_name, where=str(path), stem=path.stem, root=os.path.realpath(path.parent),
        allow_outside=allow_outside, cap=cap, class_names=hf_names,
    )  # fmt: skip


def _pick_columns(schema, image_column, label_column, id_column, where: str) -> tuple[str, str | None, str | None]:
    """(image, label, id) column names of a table: as given (checked), else guessed."""
    columns = schema.names

    def pick(given: str | None, guess: str | None, what: str) -> str | None:
        if given is not None and given not in columns:
            raise GenaugError(f"{what} column '{given}' not found in {where}; columns: {shown_names(columns)}")
        return given if given is not None else guess

    image_name = pick(image_column, _guess_image_column(schema), "image")
    if image_name is None:
        raise GenaugError(f"no image column found in {where}; columns: {shown_names(columns)} (pass --image-column)")
    label_name = pick(label_column, next((c for c in LABEL_COLUMN_NAMES if c in columns), None), "label")
    id_name = pick(id_column, "id" if "id" in columns else None, "id")
    twice = next((c for c in (image_name, label_name, id_name) if c is not None and columns.count(c) > 1), None)
    if twice is not None:
        raise GenaugError(f"column '{shown(twice)}' appears more than once in {where}")
    return image_name, label_name, id_name


def read_table(
    table,
    image_name: str,
    label_name: str | None,
    id_name: str | None,
    *,
    where: str,
    stem: str,
    root: str,
    allow_outside: bool,
    cap: int,
    class_names: list[str] | None = None,
    first_row: int = 0,
    base: str | None = None,
    labels: tuple[np.ndarray, list[str] | None] | None = None,
) -> _Read:
    """The images, labels and ids of a pyarrow table (a Parquet file's, or a Hugging Face dataset's).

    Image cells are the HF struct, encoded bytes or a path (relative to
    `base`, default `root`), read inside `root` unless `allow_outside`; a
    `root` of None refuses path cells (data on a remote filesystem).
    `class_names` (a ClassLabel's) name integer labels. A part of a larger
    dataset (`genaug.data.streaming`) gives its first row's number in the
    file, `first_row` (for default ids and messages), and its `labels`
    (and class names) as already read for the whole dataset, so
    `label_name` is not read here.
    """
    import pyarrow as pa

    try:
        cells = table.column(image_name).to_pylist()
        label_values = None
        # An all-null label column (genaug's output for unlabelled data) means no labels.
        if labels is None and label_name is not None and table.column(label_name).null_count < table.num_rows:
            label_values = table.column(label_name).to_pylist()
        id_values = None if id_name is None else table.column(id_name).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as e:
        raise GenaugError(f"cannot read {where}: {first_line(e)}") from None

    # Labels and ids first: a bad label column fails before any image is decoded.
    if labels is not None:
        labels, names = labels
    elif label_values is not None:
        labels, names = table_labels(label_values, where, label_name, class_names)
    else:
        labels = names = None
    if id_values is not None:
        if any(v is None for v in id_values):
            raise GenaugError(f"id column '{id_name}' in {where} has missing values")
        ids = [str(v) for v in id_values]
    else:
        ids = [f"{stem}-{first_row + i:06d}" for i in range(len(cells))]
    rows = range(first_row, first_row + len(cells))
    loaders = [
        _cell_loader(cell, root, f"row {i} of {where}", image_name, allow_outside, base) for i, cell in zip(rows, cells)
    ]
    tensors = _decode_many(loaders, [f"{where} row {i}" for i in rows], cap)
    return tensors, labels, names, ids, [_cell_path(c) for c in cells]


def table_labels(
    values: list, where: str, label_name: str, class_names: list[str] | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Labels and class names of a label column's values (`_labels`); `class_names` (a
    ClassLabel's) name integer labels and must cover them."""
    labels, names = _labels(values, where, label_name)
    if class_names is not None and names is None:
        if len(labels) and labels.max() >= len(class_names):
            raise GenaugError(
                f"label column '{label_name}' in {where} has label {labels.max()} beyond its "
                f"{len(class_names)} class names"
            )
        names = class_names
    return labels, names


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


def _cell_loader(
    cell, root: str | None, where: str, column: str, allow_outside: bool, base: str | None = None
) -> Callable[[], bytes]:
    """A function returning the encoded bytes of one image-column cell (a path is read only when called;
    relative to `base`, default `root`; refused when `root` is None)."""
    if isinstance(cell, dict):  # the Hugging Face image struct: its bytes win, else its path
        data = cell.get("bytes")
        if data is None:
            cell = cell.get("path")
        else:  # a `bytes` field of another type (a string) is no image, and not a path either
            cell = data if isinstance(data, (bytes, bytearray)) else None
    if isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
        return lambda: data
    if isinstance(cell, str):
        if root is None:
            raise GenaugError(
                f"column '{column}' {where} names a file ({shown(cell)}); image paths in a Parquet file are read "
                "only from a local disk (or file://), store the image bytes to read it from elsewhere"
            )
        return partial(_read_named, cell, root, where, allow_outside, base)
    raise GenaugError(f"column '{column}' {where} holds neither image bytes nor a path")


def _cell_path(cell) -> str | None:
    path = cell.get("path") if isinstance(cell, dict) else cell
    return path if isinstance(path, str) else None


def _labels(values: list, path: Path | str, column: str) -> tuple[np.ndarray, list[str] | None]:
    """Int labels as they are, strings mapped to their index among the sorted names; nothing else.

    A float label (even 1.0), NaN or bool is refused rather than turned into
    a class named "1.0", "nan" or "True".
    """
    where = f"label column '{column}' in {path}"
    if any(v is None for v in values):
        raise GenaugError(f"{where} has missing values")
    ints = [isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values]
    strs = [isinstance(v, str) for v in values]
    if all(ints):
        # Checked before the cast: a uint64 label past 2**63 cannot become int64.
        _check_label_range(int(min(values, default=0)), int(max(values, default=0)), where)
        return np.asarray(values, dtype=np.int64).reshape(-1), None
    if all(strs):
        names = sorted(set(values))
        _check_class_count(len(names), f"{where} has {len(names):,} distinct labels")
        lookup = {n: i for i, n in enumerate(names)}
        return np.array([lookup[v] for v in values], dtype=np.int64), names
    # A Parquet column has one type: neither all ints nor all strings means none is either.
    bad = next(v for v, i, s in zip(values, ints, strs) if not (i or s))
    number = isinstance(bad, (bool, float, np.bool_, np.floating, decimal.Decimal))
    kind = "bool" if isinstance(bad, (bool, np.bool_)) else type(bad).__name__
    fix = "cast it to int" if number else "convert it to int or string"
    raise GenaugError(
        f"{where} holds {kind} labels (e.g. {shown(repr(bad), 40)}); labels must be integer class indices "
        f"0..{MAX_CLASSES - 1} or class-name strings: {fix}"
    )


def _check_label_range(lowest: int, highest: int, where: str) -> None:
    """Labels must index one of at most MAX_CLASSES classes (checked on Python ints: no overflow)."""
    if lowest < 0:
        raise GenaugError(f"{where} has negative labels (e.g. {lowest}); labels are class indices 0, 1, ...")
    if highest >= MAX_CLASSES:
        raise GenaugError(
            f"{where} has label {highest}, beyond the {MAX_CLASSES:,} classes genaug takes; "
            "labels are class indices 0, 1, ... (renumber them)"
        )


def _check_class_count(n: int, what: str) -> None:
    if n > MAX_CLASSES:
        raise GenaugError(f"{what}, more than the {MAX_CLASSES:,} classes genaug takes")


def _hf_class_names(metadata, column: str, path: Path) -> list[str] | None:
    """Class names from a Hugging Face `ClassLabel` feature in the schema metadata."""
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (KeyError, TypeError, ValueError, RecursionError):
        return None
    if not (isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and feature.get("names")):
        return None
    names = feature["names"]
    if not isinstance(names, list):
        return None
    _check_class_count(len(names), f"ClassLabel '{column}' in {path} has {len(names):,} class names")
    return [str(n) for n in names]


# -- npz -------------------------------------------------------------------
def _read_npz(path: Path, cap: int) -> _Read:
    """`x` (and `y`) of an .npz; their sizes are read from the .npy headers and checked before expanding.

    Other arrays in the file are never read.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = {(n[:-4] if n.endswith(".npy") else n): zf.getinfo(n) for n in zf.namelist()}
            if "x" not in members:
                found = ", ".join(shown(m, 40) for m in list(members)[:20]) or "nothing"
                raise GenaugError(f"{path} has no 'x' array; found: {found}")
            archive_bytes = os.path.getsize(path)
            x_shape, x_dtype = _npy_header(zf, members["x"], path, "x", archive_bytes)
            _check_x(x_shape, x_dtype, f"'x' in {path}", cap)
            if "y" in members:
                y_shape, y_dtype = _npy_header(zf, members["y"], path, "y", archive_bytes)
                n = x_shape[0]
                if math.prod(y_shape) != n or not _is_int_dtype(y_dtype):
                    raise GenaugError(
                        f"'y' in {path} must be {n} integer labels in 0..{MAX_CLASSES - 1}, got {y_dtype} "
                        f"{tuple(y_shape)}" + ("; cast it to int" if y_dtype.kind in "fb" else "")
                    )
            x = _npy_read(zf, members["x"])
            y = _npy_read(zf, members["y"]) if "y" in members else None
    except MemoryError:
        raise GenaugError(f"not enough memory to read {path}") from None
    except _NPZ_ERRORS as e:
        raise GenaugError(f"cannot read .npz file {path}: {first_line(e)}") from None
    x = _channels_first(_to_uint8(x, f"'x' in {path}"), f"'x' in {path}")
    labels = None
    if y is not None:
        if y.size:
            _check_label_range(int(y.min()), int(y.max()), f"'y' in {path}")
        labels = y.reshape(-1).astype(np.int64)
    tensors = list(torch.from_numpy(np.ascontiguousarray(x)))
    return tensors, labels, None, [f"{path.stem}-{i:06d}" for i in range(x.shape[0])], None


def _npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str, archive_bytes: int):
    """(shape, dtype) of one .npy member, from the zip directory and the .npy header alone.

    Refuses a member that would expand past MAX_NPZ_EXPANSION times its
    compressed size, or whose header promises more data than the member
    holds: numpy allocates what the header declares before reading a byte.
    """
    # numpy writes stored or deflated members. zipfile inflates those in
    # bounded steps, but decompresses a bzip2 or lzma member without an output
    # bound: reading even its 100-byte header could expand gigabytes.
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise GenaugError(
            f"'{key}' in {path} uses zip compression method {info.compress_type}; genaug reads .npz files "
            "as numpy writes them (np.savez or np.savez_compressed)"
        )
    if info.compress_size > archive_bytes:
        raise GenaugError(f"cannot read .npz file {path}: '{key}' is damaged (larger than the file)")
    if info.file_size > _NPZ_SMALL_BYTES and info.file_size > MAX_NPZ_EXPANSION * info.compress_size:
        raise GenaugError(
            f"'{key}' in {path} would expand from {info.compress_size:,} to {info.file_size:,} bytes, more than "
            f"{MAX_NPZ_EXPANSION}x; refused as a likely decompression bomb (if it is real, save it uncompressed "
            "with np.savez)"
        )
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
        except ValueError:
            raise GenaugError(f"'{key}' in {path} is not a NumPy array (.npy)") from None
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:  # 3.0 only adds UTF-8 field names, which no image array has
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        header_bytes = f.tell()
    if dtype.hasobject:
        raise GenaugError(f"'{key}' in {path} holds Python objects, which genaug never unpickles; save numbers")
    if header_bytes + math.prod(shape) * dtype.itemsize != info.file_size:
        raise GenaugError(f"cannot read .npz file {path}: '{key}' is damaged (its header and size disagree)")
    return shape, dtype


def _npy_read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _is_int_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "iu"  # bool is kind "b", not an integer here


def _check_x(shape: tuple, dtype: np.dtype, what: str, cap: int) -> None:
    """Refuse an image array (`what`, e.g. "'x' in f.npz") from its shape and dtype alone:
    a layout or dtype no image has, or images over `cap` pixels."""
    if dtype.kind not in "iuf":
        raise GenaugError(f"{what} must be uint8, integers in 0..255 or floats in [0, 1]; got {dtype}")
    h, w = _image_hw(shape, what)
    if h == 0 or w == 0:
        raise GenaugError(f"{what} has shape {tuple(shape)}: images with no pixels")
    if h * w > cap:
        raise GenaugError(
            f"images in {what} are {h}x{w} ({h * w:,} pixels), above the cap of {cap:,} pixels; "
            "pass --max-pixels to raise it"
        )


_LAYOUTS = "expected [N,H,W], [N,H,W,C] (C in 1, 3, 4) or [N,C,H,W] (C in 1, 3)"


def _channels_last(shape: tuple) -> bool:
    # Channels last unless axis 1 already looks like channels: images are
    # larger than 4 pixels on a side in any layout worth guessing.
    return shape[-1] in (1, 3, 4) and shape[1] not in (1, 3)


def _image_hw(shape: tuple, what: str) -> tuple[int, int]:
    """(H, W) of the images in an `x` of this shape."""
    if len(shape) == 3:
        return shape[1], shape[2]
    if len(shape) != 4:
        raise GenaugError(f"{what} has shape {tuple(shape)}; {_LAYOUTS}")
    return (shape[1], shape[2]) if _channels_last(shape) else (shape[2], shape[3])


def _channels_first(x: np.ndarray, what: str) -> np.ndarray:
    """[N,H,W], [N,H,W,C] or [N,C,H,W] -> [N,C,H,W] with C in 1, 3 (alpha dropped)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise GenaugError(f"{what} has shape {x.shape}; {_LAYOUTS}")
    if _channels_last(x.shape):
        x = np.moveaxis(x, -1, 1)
    if x.shape[1] == 4:
        x = x[:, :3]
    if x.shape[1] not in (1, 3):
        raise GenaugError(f"{what} has shape {x.shape}; {_LAYOUTS}")
    return x


def _to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if x.size and np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
        return np.rint(x * 255).astype(np.uint8)
    if x.size and np.issubdtype(x.dtype, np.integer) and x.min() >= 0 and x.max() <= 255:
        return x.astype(np.uint8)
    raise GenaugError(f"{what} must be uint8, integers in 0..255 or floats in [0, 1]; got {x.dtype}")


# -- decoding and stacking ---------------------------------------------------
def _decode_many(loaders: Sequence[Callable[[], bytes]], names: Sequence[str], cap: int) -> list[torch.Tensor]:
    """Read and decode every image, in order.

    Threads pay only for large images: below ~128x128 (measured, 2 cores)
    the decoders' many short GIL releases make two threads slower than one.
    The first image decides.
    """
    names = [shown(n, 4096) for n in names]  # escaped, not cut: they are file paths

    def one(i: int) -> torch.Tensor:
        try:
            data = loaders[i]()
        except OSError as e:
            raise GenaugError(f"cannot read {names[i]}: {_reason(e)}") from None
        return _decode(data, names[i], cap)

    if not loaders:
        return []
    _quiet_pillow_logging()
    # Pillow warns about huge images (the size is checked here, first) and odd
    # TIFF tags; a warning on stderr would break the CLI's one-line output.
    # Set once around the whole read: the filters are process-wide, the
    # decoding threads see them too, and entering catch_warnings per image
    # from several threads could leave the filters changed for good.
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL\.")
        first = one(0)
        small = first.shape[-2] * first.shape[-1] < _PARALLEL_MIN_PIXELS
        workers = min(8, os.cpu_count() or 1)
        if len(loaders) < _PARALLEL_MIN or small or workers == 1:
            return [first] + [one(i) for i in range(1, len(loaders))]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [first, *pool.map(one, range(1, len(loaders)), chunksize=16)]


def _quiet_pillow_logging() -> None:
    """Keep Pillow's log records (a damaged TIFF logs an error) off stderr unless the app set up logging.

    With no handler anywhere, Python prints WARNING records to stderr; a
    NullHandler on Pillow's logger stops that fallback and nothing else, so
    an application's own logging still receives them.
    """
    log = logging.getLogger("PIL")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())


def _decode(data: bytes, name: str, cap: int) -> torch.Tensor:
    """uint8 [C, H, W] with C = 1 (gray) or 3 (colour); alpha dropped, 16 bits cut to 8.

    NOTE: Pillow decodes every format. torchvision.io is faster on small
    PNGs, but its codecs are deprecated since 0.29, its libpng wrapper
    segfaults on a corrupt pixel stream, and libpng/libjpeg print to stderr,
    which would break the one-line error users get for a bad file.
    """
    img = _decode_with_pil(data, name, cap)
    if img.ndim != 3 or img.shape[0] not in (1, 3) or 0 in img.shape:
        raise GenaugError(f"cannot decode image: {name} (decoded shape {tuple(img.shape)})")
    return img


def _decode_with_pil(data: bytes, name: str, cap: int) -> torch.Tensor:
    from PIL import Image

    try:
        # `open` reads the header only: the size is known before any pixel is decoded.
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            w, h = im.size
            if w * h > cap:
                raise _too_large(name, w * h, cap, f"{h}x{w}")
            if im.format == "TIFF":
                _silence_libtiff()
            arr = _pil_to_uint8(im)
    except Image.DecompressionBombError as e:
        # Pillow refuses above 2 * MAX_IMAGE_PIXELS inside `open`, before the check above.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(name, int(found.group(1)) if found else None, cap, "") from None
    except _DECODE_ERRORS:
        raise GenaugError(f"cannot decode image: {name}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    # A copy: PIL's array is read-only, which torch warns about.
    return torch.from_numpy(np.array(arr, order="C"))


@functools.cache
def _silence_libtiff() -> None:
    """Stop libtiff printing its own errors and warnings to stderr.

    On a damaged TIFF libtiff writes a line (`ZIPDecode: Decoding error ...`)
    straight to file descriptor 2, before the one-line error genaug reports;
    Pillow raises the same failure as an exception anyway. The handlers are
    process-wide; this runs only once genaug decodes a TIFF, and only where
    the libtiff Pillow loaded can be found (Linux's /proc/self/maps).
    NOTE: other TIFF reads in the same process lose those stderr lines too.
    """
    import ctypes

    from PIL import Image

    Image.init()  # loads Pillow's C core, and with it libtiff
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return
    found = re.search(r"(/\S*libtiff[^/\s]*\.so[^/\s]*)", maps)
    if not found:
        return
    try:
        lib = ctypes.CDLL(found.group(1))
        for setter in (lib.TIFFSetErrorHandler, lib.TIFFSetWarningHandler):
            setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
            setter(None)
    except (OSError, AttributeError):
        return


def _too_large(name: str, pixels: int | None, cap: int, size: str) -> GenaugError:
    """The refusal of an image over the cap; `size` is "HxW" where known."""
    if pixels is None or pixels <= cap:  # only Pillow's own limit, set lower than ours, refused it
        return GenaugError(f"image too large: {name} is over PIL.Image.MAX_IMAGE_PIXELS (Pillow's limit)")
    has = f"is {size} ({pixels:,} pixels)" if size else f"has {pixels:,} pixels"
    return GenaugError(
        f"image too large: {name} {has}, above the cap of {cap:,} pixels; pass --max-pixels to raise it"
    )


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
            f"images in {source} have different sizes ({first[0]}x{first[1]} in {shown(ids[0])} and "
            f"{other[0]}x{other[1]} in {shown(ids[odd])}); pass --image-size to resize them to one size"
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


def _reason(e: OSError | ValueError) -> str:
    return getattr(e, "strerror", None) or first_line(e)


def _utf8(name: str) -> str:
    """A file name as text every output can hold: bytes that are not UTF-8 become `\\xff` escapes.

    Linux allows any bytes in a name; Python keeps the stray ones as lone
    surrogates, which Parquet and JSON writers cannot encode.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _parse_max_pixels(max_pixels) -> int:
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
        raise GenaugError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return int(max_pixels)


def as_imageset(data) -> ImageSet:
    """`data` as an ImageSet: itself if it is one, else read by `load_images` at its own size."""
    return data if isinstance(data, ImageSet) else load_images(data)
