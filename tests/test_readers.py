"""Readers give back exactly the pixels, labels, class names and ids that were written."""

import io
import json
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from genaug.data.readers import BUILTIN_DATASETS, load_images
from genaug.errors import GenaugError

CLASSES = ["cat", "dog"]


def _images(n=6, c=3, h=6, w=5, seed=0) -> np.ndarray:
    """uint8 [N, C, H, W] noise: every pixel matters, so any decoding slip shows."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _png(img: np.ndarray, fmt="PNG") -> bytes:
    arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=fmt)
    return buf.getvalue()


def _class_folder(root, x):
    """Images 0, 2, 4 -> cat/, 1, 3, 5 -> dog/; returns the expected (ids, labels, pixels) in reading order."""
    rows = []
    for i, img in enumerate(x):
        rel = f"{CLASSES[i % 2]}/img{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_png(img))
        rows.append((rel, i % 2, img))
    rows.sort(key=lambda r: r[0])
    return [r[0] for r in rows], np.array([r[1] for r in rows]), np.stack([r[2] for r in rows])


def _one_line_error(match, *args, **kwargs) -> str:
    with pytest.raises(GenaugError, match=match) as info:
        load_images(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- folders ---------------------------------------------------------------
def test_class_folders_round_trip(tmp_path):
    ids, labels, pixels = _class_folder(tmp_path, _images())
    data = load_images(tmp_path)
    assert data.class_names == CLASSES
    assert data.ids == ids
    np.testing.assert_array_equal(data.labels, labels)
    np.testing.assert_array_equal(data.images.numpy(), pixels)
    assert data.paths == [str(tmp_path / i) for i in ids]


def test_flat_folder_has_no_labels_and_sorted_ids(tmp_path):
    x = _images(n=3, c=1)
    for i, name in enumerate(["b.png", "a.PNG", "c.png"]):
        (tmp_path / name).write_bytes(_png(x[i]))
    data = load_images(tmp_path)
    assert data.labels is None and data.class_names is None
    assert data.ids == ["a.PNG", "b.png", "c.png"]
    np.testing.assert_array_equal(data.images.numpy(), x[[1, 0, 2]])


def test_nested_folders_take_the_first_level_as_class_and_skip_hidden(tmp_path):
    x = _images(n=3)
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep" / "1.png").write_bytes(_png(x[0]))
    (tmp_path / "b" / "2.png").write_bytes(_png(x[1]))
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "._2.png").write_bytes(b"macOS resource fork")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "3.png").write_bytes(_png(x[2]))
    data = load_images(tmp_path)
    assert data.ids == ["a/deep/1.png", "b/2.png"]
    assert data.class_names == ["a", "b"]
    np.testing.assert_array_equal(data.labels, [0, 1])


def test_lossless_formats_decode_exactly(tmp_path):
    x = _images(n=4)
    for i, ext in enumerate(["BMP", "TIFF", "PNG", "WEBP"]):
        arr = np.ascontiguousarray(x[i].transpose(1, 2, 0))
        options = {"lossless": True} if ext == "WEBP" else {}
        Image.fromarray(arr).save(tmp_path / f"{i}.{ext.lower()}", format=ext, **options)
    data = load_images(tmp_path)
    np.testing.assert_array_equal(data.images.numpy(), x)


def test_palette_16bit_and_alpha_images_become_8bit_gray_or_rgb(tmp_path):
    gray = _images(n=1, c=1)[0, 0]
    rgb = _images(n=1, c=3, seed=1)[0].transpose(1, 2, 0)
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "a16.png")  # 16-bit gray
    Image.fromarray(rgb).quantize(8).save(tmp_path / "b_palette.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "c_rgba.png")
    data = load_images(tmp_path)
    assert data.images.dtype == torch.uint8 and data.shape == (3, 6, 5)
    # The gray image is promoted to RGB by repeating its one channel.
    for c in range(3):
        np.testing.assert_array_equal(data.images[0, c].numpy(), gray)
    palette = np.asarray(Image.fromarray(rgb).quantize(8).convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(data.images[1].numpy(), palette)
    np.testing.assert_array_equal(data.images[2].numpy(), rgb.transpose(2, 0, 1))


def test_folder_errors_are_one_line_and_name_the_culprit(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in _one_line_error("no images found", empty)

    corrupt = tmp_path / "corrupt"
    (corrupt / "a").mkdir(parents=True)
    (corrupt / "a" / "ok.png").write_bytes(_png(_images(n=1)[0]))
    (corrupt / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    assert str(corrupt / "a" / "bad.png") in _one_line_error("cannot decode image", corrupt)

    mixed = tmp_path / "mixed"
    (mixed / "a").mkdir(parents=True)
    (mixed / "a" / "1.png").write_bytes(_png(_images(n=1)[0]))
    (mixed / "top.png").write_bytes(_png(_images(n=1)[0]))
    assert "top.png" in _one_line_error("class folder", mixed)


def test_a_corrupt_png_pixel_stream_is_an_error_not_a_crash(tmp_path):
    # Valid signature, header and CRCs around a damaged zlib stream: torchvision
    # 0.29's PNG decoder segfaults on this (so if this test dies, that is why).
    png = bytearray(_png(_images(n=1, h=32, w=32)[0]))
    idat = png.index(b"IDAT")
    (length,) = struct.unpack(">I", png[idat - 4 : idat])
    png[idat + 4 + length // 2] ^= 0xFF
    png[idat + 4 + length : idat + 8 + length] = struct.pack(">I", zlib.crc32(png[idat : idat + 4 + length]))
    (tmp_path / "bad.png").write_bytes(bytes(png))
    assert "bad.png" in _one_line_error("cannot decode image", tmp_path)


def test_jpeg_and_animated_gif_decode(tmp_path):
    smooth = np.broadcast_to(np.linspace(0, 255, 32, dtype=np.uint8), (32, 32))
    rgb = np.stack([smooth, smooth.T, 255 - smooth], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    frames = [Image.fromarray(f) for f in (rgb, 255 - rgb)]
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:])
    data = load_images(tmp_path / "a.jpg")
    assert data.shape == (3, 32, 32)
    assert np.abs(data.images[0].numpy().astype(int) - rgb.transpose(2, 0, 1)).mean() < 3  # lossy
    # A GIF named on its own is read (its first frame); in a folder it is skipped, as ImageFolder does.
    first_frame = np.asarray(Image.open(tmp_path / "b.gif").convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(load_images(tmp_path / "b.gif").images[0].numpy(), first_frame)
    assert load_images(tmp_path).ids == ["a.jpg"]


def test_different_sizes_need_image_size(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(_images(n=1, h=28, w=28)[0]))
    (tmp_path / "b.png").write_bytes(_png(_images(n=1, h=32, w=32)[0]))
    message = _one_line_error("different sizes", tmp_path)
    assert "28x28" in message and "32x32" in message and "b.png" in message and "--image-size" in message
    assert load_images(tmp_path, image_size=16).shape == (3, 16, 16)


# -- resize and mode -------------------------------------------------------
def test_resize_and_mode_match_torchvision(tmp_path):
    x = _images(n=4, c=3, h=12, w=10)
    np.savez(tmp_path / "d.npz", x=x)
    gray = load_images(tmp_path / "d.npz", mode="gray", image_size=(6, 4))
    expected = TF.resize(TF.rgb_to_grayscale(torch.from_numpy(x)), [6, 4], antialias=True)
    assert gray.shape == (1, 6, 4)
    assert torch.equal(gray.images, expected)
    assert load_images(tmp_path / "d.npz", image_size=5).shape == (3, 5, 5)
    assert torch.equal(load_images(tmp_path / "d.npz", mode="L").images, TF.rgb_to_grayscale(torch.from_numpy(x)))


def test_rgb_mode_repeats_gray(digits):
    rgb = load_images("digits", mode="rgb")
    assert rgb.shape == (3, 8, 8)
    assert all(torch.equal(rgb.images[:, c : c + 1], digits.images) for c in range(3))


def test_unknown_mode_is_an_error():
    _one_line_error("unknown mode 'cmyk'", "digits", mode="cmyk")


# -- built-in --------------------------------------------------------------
def test_digits_is_sklearns_bundled_set(digits):
    from sklearn.datasets import load_digits

    assert set(BUILTIN_DATASETS) == {"digits"}
    assert len(digits) == 1797 and digits.shape == (1, 8, 8)
    assert digits.class_names == [str(i) for i in range(10)]
    assert set(digits.labels.tolist()) == set(range(10))
    assert digits.ids[0] == "digits-00000" and len(set(digits.ids)) == 1797
    raw = load_digits()
    # 16 (the maximum) maps to 255 and the order is sklearn's.
    np.testing.assert_array_equal(digits.images.numpy()[:, 0], np.rint(raw.images * 255 / 16))
    np.testing.assert_array_equal(digits.labels, raw.target)


def test_an_existing_path_wins_over_a_builtin_name(tmp_path, monkeypatch):
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "only.png").write_bytes(_png(_images(n=1)[0]))
    monkeypatch.chdir(tmp_path)
    data = load_images("digits")
    assert len(data) == 1 and data.ids == ["only.png"]


def test_missing_source_names_it_and_the_builtins(tmp_path):
    message = _one_line_error("no such file, folder or built-in dataset", tmp_path / "nope")
    assert str(tmp_path / "nope") in message and "digits" in message


# -- parquet ---------------------------------------------------------------
def _parquet(path, image_cells, image_type, **extra):
    pq.write_table(pa.table({"image": pa.array(image_cells, type=image_type), **extra}), path)
    return path


def test_parquet_hf_struct_round_trip(tmp_path):
    x = _images()
    cells = [{"bytes": _png(img), "path": f"img{i}.png"} for i, img in enumerate(x)]
    path = _parquet(
        tmp_path / "hf.parquet",
        cells,
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        label=pa.array([1, 0, 1, 0, 1, 0]),
        id=pa.array([f"row{i}" for i in range(6)]),
    )
    data = load_images(path)
    np.testing.assert_array_equal(data.images.numpy(), x)
    np.testing.assert_array_equal(data.labels, [1, 0, 1, 0, 1, 0])
    assert data.class_names is None  # int labels without names stay unnamed
    assert data.ids == [f"row{i}" for i in range(6)]
    assert data.paths == [f"img{i}.png" for i in range(6)]


def test_parquet_raw_bytes_with_string_labels_and_default_ids(tmp_path):
    x = _images(c=1)
    names = ["zebra", "ant", "zebra", "bee", "ant", "ant"]
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"pixels": pa.array([_png(i) for i in x], pa.binary()), "kind": names}), path)
    data = load_images(path, label_column="kind")  # the image column is found by its binary type
    np.testing.assert_array_equal(data.images.numpy(), x)
    assert data.class_names == ["ant", "bee", "zebra"]
    assert [data.class_names[k] for k in data.labels] == names
    assert data.ids == [f"raw-{i:06d}" for i in range(6)]


def test_parquet_path_column_resolves_against_the_file_folder(tmp_path):
    x = _images(n=3)
    (tmp_path / "pics").mkdir()
    for i, img in enumerate(x):
        (tmp_path / "pics" / f"{i}.png").write_bytes(_png(img))
    rel = [f"pics/{i}.png" for i in range(3)]
    path = _parquet(tmp_path / "paths.parquet", rel, pa.string())
    struct_path = _parquet(
        tmp_path / "nobytes.parquet",
        [{"bytes": None, "path": p} for p in rel],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    for p in (path, struct_path):
        data = load_images(p)
        np.testing.assert_array_equal(data.images.numpy(), x)
        assert data.paths == rel


def test_parquet_class_names_come_from_hf_classlabel_metadata(tmp_path):
    x = _images(n=3)
    table = pa.table({"img": pa.array([_png(i) for i in x], pa.binary()), "label": [2, 0, 1]})
    features = {"img": {"_type": "Image"}, "label": {"names": ["c", "b", "a"], "_type": "ClassLabel"}}
    hf = json.dumps({"info": {"features": features}})
    pq.write_table(table.replace_schema_metadata({"huggingface": hf}), tmp_path / "cl.parquet")
    data = load_images(tmp_path / "cl.parquet")
    assert data.class_names == ["c", "b", "a"]
    np.testing.assert_array_equal(data.labels, [2, 0, 1])


def test_parquet_errors_name_the_column_or_file(tmp_path):
    x = _images(n=2)
    path = _parquet(tmp_path / "t.parquet", [_png(i) for i in x], pa.binary(), label=[0, 1])
    message = _one_line_error("column 'pixels' not found", path, image_column="pixels")
    assert str(path) in message and "image, label" in message
    _one_line_error("column 'y' not found", path, label_column="y")
    _one_line_error("column 'name' not found", path, id_column="name")

    no_images = tmp_path / "no_images.parquet"
    pq.write_table(pa.table({"label": [0, 1]}), no_images)
    _one_line_error("no image column", no_images)

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    assert str(corrupt) in _one_line_error("cannot read Parquet file", corrupt)

    bad_cell = _parquet(tmp_path / "bad_cell.parquet", [_png(x[0]), b"garbage"], pa.binary())
    assert "row 1" in _one_line_error("cannot decode image", bad_cell)

    missing = _parquet(tmp_path / "missing.parquet", ["nowhere.png"], pa.string())
    # One message for any path that cannot be read, so it never tells whether a file outside exists.
    message = _one_line_error("image path outside the dataset root or not readable", missing)
    assert "nowhere.png" in message and "row 0" in message


# -- npz -------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 3),
    h=st.integers(5, 9),
    w=st.integers(5, 9),
    layout=st.sampled_from(["NHW", "NHW1", "NHW3", "NHW4", "N1HW", "N3HW"]),
)
def test_npz_layouts_round_trip(tmp_path_factory, n, h, w, layout):
    c = {"NHW": 1, "NHW1": 1, "NHW3": 3, "NHW4": 4, "N1HW": 1, "N3HW": 3}[layout]
    x = _images(n=n, c=c, h=h, w=w)  # the expected channels-first pixels (alpha included for now)
    stored = {"NHW": x[:, 0], "N1HW": x, "N3HW": x}.get(layout, x.transpose(0, 2, 3, 1))
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, x=stored, y=np.arange(n))
    data = load_images(path)
    np.testing.assert_array_equal(data.images.numpy(), x[:, :3])  # alpha dropped
    np.testing.assert_array_equal(data.labels, np.arange(n))
    assert data.ids == [f"data-{i:06d}" for i in range(n)]


def test_npz_accepts_unit_floats_and_small_ints(tmp_path):
    x = _images(n=2, c=1)
    np.savez(tmp_path / "f.npz", x=x.astype(np.float32) / 255)
    np.savez(tmp_path / "i.npz", x=x.astype(np.int64))
    for name in ("f.npz", "i.npz"):
        np.testing.assert_array_equal(load_images(tmp_path / name).images.numpy(), x)


def test_npz_errors_are_one_line(tmp_path):
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4), np.uint8), labels=np.zeros(2))
    message = _one_line_error("no 'x' array", tmp_path / "nox.npz")
    assert "images, labels" in message
    np.savez(tmp_path / "range.npz", x=np.full((2, 4, 4), 3.5))
    _one_line_error("floats in \\[0, 1\\]", tmp_path / "range.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 4, 4, 5, 5), np.uint8))
    _one_line_error("has shape", tmp_path / "shape.npz")
    np.savez(tmp_path / "y.npz", x=np.zeros((2, 4, 4), np.uint8), y=np.zeros(3, np.int64))
    _one_line_error("'y'", tmp_path / "y.npz")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 broken zip")
    _one_line_error("cannot read .npz", tmp_path / "broken.npz")


def test_large_folders_decode_in_parallel_and_keep_their_order(tmp_path):
    # 70 images of 128x128: above both thresholds for the thread pool.
    x = _images(n=70, c=1, h=128, w=128)
    for i, img in enumerate(x):
        (tmp_path / f"{i:03d}.png").write_bytes(_png(img))
    data = load_images(tmp_path)
    assert data.ids == [f"{i:03d}.png" for i in range(70)]
    np.testing.assert_array_equal(data.images.numpy(), x)
