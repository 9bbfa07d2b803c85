"""Properties of reading: what genaug writes it reads back exactly, and no bytes at all,
as an image, a Parquet cell or a whole file, raise anything but a one-line GenaugError."""

import functools
import io
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from genaug.data.imageset import ImageSet
from genaug.data.parquet import write_image_table
from genaug.data.readers import load_images
from genaug.errors import GenaugError

FEW = settings(max_examples=40, deadline=None)
# The formats genaug decodes, and some Pillow knows but genaug refuses (their decoders raise odd errors).
IMAGE_SEEDS = ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "DDS", "ICO", "TGA", "PPM"]


@st.composite
def imagesets(draw, labelled=st.booleans(), names=True) -> ImageSet:
    """Small uint8 image sets: 1 or 3 channels, 1..16 pixels a side, optional labels, class names and ids."""
    n, c = draw(st.integers(1, 4)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    raw = draw(st.binary(min_size=n * c * h * w, max_size=n * c * h * w))
    images = torch.from_numpy(np.frombuffer(raw, np.uint8).reshape(n, c, h, w).copy())
    labels = class_names = None
    if draw(labelled):
        k = draw(st.integers(1, 4))
        labels = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
        if names and draw(st.booleans()):
            class_names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=k, max_size=k, unique=True))
    ids = draw(st.lists(st.text(max_size=10), min_size=n, max_size=n))
    return ImageSet(images=images, labels=labels, class_names=class_names, ids=ids)


def _assert_same(read: ImageSet, written: ImageSet, *, ids=True) -> None:
    assert torch.equal(read.images, written.images)
    if written.labels is None:
        assert read.labels is None
    else:
        np.testing.assert_array_equal(read.labels, written.labels)
    if ids:
        assert read.ids == written.ids


# -- round trips ------------------------------------------------------------------
@FEW
@given(data=imagesets())
def test_parquet_written_by_genaug_reads_back_exactly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.parquet"
        write_image_table(path, data, genaug_metadata={})
        read = load_images(path)
    _assert_same(read, data)
    assert read.class_names == data.class_names


@FEW
@given(data=imagesets(names=False))
def test_npz_reads_back_exactly(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "set.npz"
        arrays = {"x": data.images.numpy()} if data.labels is None else {"x": data.images.numpy(), "y": data.labels}
        np.savez_compressed(path, **arrays)
        read = load_images(path)
    _assert_same(read, data, ids=False)
    assert read.ids == [f"set-{i:06d}" for i in range(len(data))]


@FEW
@given(data=imagesets(labelled=st.just(True), names=False), folders=st.data())
def test_a_folder_of_pngs_reads_back_exactly_in_path_order(data, folders):
    k = int(data.labels.max()) + 1
    name = st.from_regex(r"[a-z0-9_]{1,6}", fullmatch=True)
    names = folders.draw(st.lists(name, min_size=k, max_size=k, unique=True))
    with tempfile.TemporaryDirectory() as tmp:
        rel = []
        for i, (image, label) in enumerate(zip(data.images.numpy(), data.labels)):
            rel.append(f"{names[label]}/{i:03d}.png")
            (Path(tmp) / names[label]).mkdir(exist_ok=True)
            Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(Path(tmp) / rel[-1])
        read = load_images(tmp)
    order = sorted(range(len(rel)), key=lambda i: rel[i])
    used = sorted({names[label] for label in data.labels})
    assert read.ids == [rel[i] for i in order]
    assert read.class_names == used
    assert torch.equal(read.images, data.images[order])
    assert [used[label] for label in read.labels] == [names[data.labels[i]] for i in order]


# -- hostile bytes ----------------------------------------------------------------
def _read_or_refuse(path) -> ImageSet | None:
    """`load_images(path)`, or None where it raised a one-line GenaugError; anything else fails the test."""
    try:
        return load_images(path)
    except GenaugError as e:
        assert "\n" not in str(e)
        return None


@functools.cache
def _valid_image(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


@functools.cache
def _valid_parquet() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, size=(2, 3, 5, 4), dtype=np.uint8)
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.parquet"
        write_image_table(path, ImageSet(torch.from_numpy(pixels), np.array([0, 1]), ["a", "b"]), genaug_metadata={})
        buf.write(path.read_bytes())
    return buf.getvalue()


@functools.cache
def _valid_npz(compressed: bool) -> bytes:
    buf = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(buf, x=np.random.default_rng(2).integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8), y=np.array([1, 0]))
    return buf.getvalue()


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """`valid` with a few bytes overwritten, a run inserted or the tail cut: mostly-valid files reach deep code."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        what = draw(st.sampled_from(["overwrite", "insert", "cut"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if what == "overwrite":
            data[at : at + len(chunk)] = chunk
        elif what == "insert":
            data[at:at] = chunk
        else:
            del data[at:]
    return bytes(data)


any_image_bytes = st.one_of(
    st.binary(max_size=256),
    st.sampled_from(IMAGE_SEEDS).flatmap(lambda fmt: damaged(_valid_image(fmt))),
)


@settings(max_examples=60, deadline=None)
@given(data=any_image_bytes)
def test_any_bytes_as_an_image_file_read_or_fail_with_a_genaug_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "x.png").write_bytes(data)
        _read_or_refuse(Path(tmp) / "x.png")
        _read_or_refuse(tmp)


@FEW
@given(data=any_image_bytes, struct=st.booleans())
def test_any_bytes_as_a_parquet_cell_read_or_fail_with_a_genaug_error(data, struct):
    cells = [{"bytes": data, "path": None}] if struct else [data]
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())]) if struct else pa.binary()
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.table({"image": pa.array(cells, kind)}), Path(tmp) / "t.parquet")
        _read_or_refuse(Path(tmp) / "t.parquet")


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(st.binary(max_size=512), st.builds(_valid_parquet).flatmap(damaged)))
def test_any_bytes_as_a_parquet_file_read_or_fail_with_a_genaug_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.parquet").write_bytes(data)
        _read_or_refuse(Path(tmp) / "t.parquet")


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(st.binary(max_size=512), st.booleans().map(_valid_npz).flatmap(damaged)))
def test_any_bytes_as_an_npz_file_read_or_fail_with_a_genaug_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.npz").write_bytes(data)
        _read_or_refuse(Path(tmp) / "t.npz")
