"""Hostile datasets: nothing outside the dataset root is read, nothing is decoded or expanded
before its size is known, and no label is guessed at. Each test is an input that once got through."""

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genaug.cli.app import main
from genaug.data.readers import DEFAULT_MAX_PIXELS, MAX_CLASSES, MAX_NPZ_EXPANSION, load_images
from genaug.errors import GenaugError

# A colour no test image has: if these pixels come back, a file outside the root was read.
SENTINEL = (250, 3, 177)
REFUSED = "image path outside the dataset root or not readable"
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _noise(seed: int, h: int = 4, w: int = 4) -> np.ndarray:
    """RGB noise below 250 in every channel, so no pixel equals the sentinel."""
    return np.random.default_rng(seed).integers(0, 250, size=(h, w, 3), dtype=np.uint8)


def _sentinel() -> bytes:
    return _png(np.broadcast_to(np.array(SENTINEL, np.uint8), (4, 4, 3)).copy())


def _holds_sentinel(images) -> bool:
    pixels = images.numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    return bool((pixels == SENTINEL).all(axis=1).any())


def _error(*args, **kwargs) -> str:
    """The one-line GenaugError message `load_images(*args, **kwargs)` raises."""
    with pytest.raises(GenaugError) as info:
        load_images(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def world(tmp_path):
    """A dataset root holding two images, and beside it an outside folder holding the sentinel image."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(_sentinel())
    for i in range(2):
        (root / f"in{i}.png").write_bytes(_png(_noise(i)))
    return root, outside


def _parquet(path, cells: list, column: str) -> str:
    """A Parquet file whose image column holds `cells` as paths: an HF struct with null bytes, or strings."""
    if column == "struct":
        array = pa.array([{"bytes": None, "path": c} for c in cells], HF_IMAGE)
    else:
        array = pa.array(cells, pa.string())
    pq.write_table(pa.table({"image": array}), path)
    return path


# -- Parquet paths stay inside the Parquet file's folder -------------------------
@pytest.mark.parametrize("column", ["struct", "string"])
@pytest.mark.parametrize("escape", ["dotdot", "absolute", "link"])
def test_a_parquet_path_out_of_the_root_is_refused(world, column, escape):
    root, outside = world
    secret = outside / "secret.png"
    if escape == "link":
        (root / "link.png").symlink_to(secret)
    written = {"dotdot": "../outside/secret.png", "absolute": str(secret), "link": "link.png"}[escape]
    path = _parquet(root / "t.parquet", ["in0.png", written], column)
    message = _error(path)
    assert message.startswith(f"{REFUSED}: {written} (row 1 of {path})")
    assert "--allow-outside-root" in message


def test_the_refusal_reads_the_same_whether_the_outside_file_exists(world):
    root, outside = world
    path = _parquet(root / "t.parquet", ["../outside/secret.png"], "struct")
    as_image = _error(path)
    (outside / "secret.png").write_bytes(b"not an image")
    as_other_bytes = _error(path)
    (outside / "secret.png").unlink()
    missing = _error(path)
    (outside / "secret.png").mkdir()
    as_folder = _error(path)
    assert as_image == as_other_bytes == missing == as_folder


def test_a_missing_path_inside_the_root_gets_the_same_message(world):
    root, _ = world
    path = _parquet(root / "t.parquet", ["nowhere.png"], "string")
    assert _error(path).startswith(f"{REFUSED}: nowhere.png (row 0 of {path})")


def test_allow_outside_root_reads_the_outside_file(world):
    root, _ = world
    path = _parquet(root / "t.parquet", ["in0.png", "../outside/secret.png"], "struct")
    data = load_images(path, allow_outside_root=True)
    assert data.images[1, :, 0, 0].tolist() == list(SENTINEL)
    assert data.paths == ["in0.png", "../outside/secret.png"]


def test_allow_outside_root_still_names_a_missing_file(world):
    root, _ = world
    path = _parquet(root / "t.parquet", ["../outside/gone.png"], "string")
    message = _error(path, allow_outside_root=True)
    assert "gone.png" in message and "No such file" in message


def test_a_cell_with_bytes_never_reads_its_path(world):
    root, _ = world
    inside = _noise(7)
    cells = [{"bytes": _png(inside), "path": "../outside/secret.png"}]
    pq.write_table(pa.table({"image": pa.array(cells, HF_IMAGE)}), root / "t.parquet")
    data = load_images(root / "t.parquet")
    np.testing.assert_array_equal(data.images[0].numpy(), inside.transpose(2, 0, 1))
    assert not _holds_sentinel(data.images)
    assert data.paths == ["../outside/secret.png"]  # kept as metadata, as Hugging Face does


def test_a_path_with_a_newline_stays_on_one_line(world):
    root, _ = world
    path = _parquet(root / "t.parquet", ["a\nb.png"], "string")
    assert "a\\nb.png" in _error(path)


# -- folders: links out of the root are refused, loops cannot multiply images ---------
def test_a_linked_image_pointing_out_of_the_folder_is_refused(world):
    root, outside = world
    (root / "z.png").symlink_to(outside / "secret.png")
    message = _error(root)
    assert message.startswith(f"{REFUSED}: z.png (in {root})")
    data = load_images(root, allow_outside_root=True)
    assert data.ids == ["in0.png", "in1.png", "z.png"] and _holds_sentinel(data.images)


def test_a_dangling_link_reads_like_a_link_out_of_the_root(world):
    root, outside = world
    (root / "z.png").symlink_to(outside / "secret.png")
    to_file = _error(root)
    (root / "z.png").unlink()
    (root / "z.png").symlink_to(outside / "missing.png")
    assert _error(root) == to_file


def test_a_linked_folder_outside_the_root_is_refused_not_made_a_class(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(_png(_noise(0)))
    outside.mkdir()
    (outside / "secret.png").write_bytes(_sentinel())
    (root / "etc").symlink_to(outside, target_is_directory=True)
    assert _error(root).startswith(f"{REFUSED}: etc (in {root})")
    data = load_images(root, allow_outside_root=True)
    assert data.class_names == ["cat", "etc"] and data.ids == ["cat/a.png", "etc/secret.png"]


@pytest.mark.parametrize("allow_outside_root", [False, True])
@pytest.mark.parametrize("loop", ["a/loop", "b/self"])
def test_a_link_loop_is_refused(tmp_path, allow_outside_root, loop):
    # Followed, a/loop -> root once turned 24 images into 984.
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "1.png").write_bytes(_png(_noise(0)))
    (root / "b" / "2.png").write_bytes(_png(_noise(1)))
    (root / loop).symlink_to(root if loop == "a/loop" else root / "b", target_is_directory=True)
    message = _error(root, allow_outside_root=allow_outside_root)
    assert message == f"link loop: {loop} in {root} leads back to a folder that holds it; remove the link"


def test_a_link_to_another_folder_inside_the_root_reads_its_files_once_at_their_place(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i, rel in enumerate(["a/1.png", "a/2.png", "b/3.png"]):
        (root / rel).write_bytes(_png(_noise(i)))
    (root / "b" / "up").symlink_to(root / "a", target_is_directory=True)
    (root / "c").symlink_to(root / "a", target_is_directory=True)
    data = load_images(root)
    assert data.ids == ["a/1.png", "a/2.png", "b/3.png"] and data.class_names == ["a", "b"]


def test_two_links_into_one_outside_folder_read_it_once_when_outside_is_allowed(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(_png(_noise(0)))
    (outside / "sub").mkdir(parents=True)
    (outside / "2.png").write_bytes(_png(_noise(1)))
    (outside / "sub" / "again").symlink_to(outside, target_is_directory=True)  # a loop two folders deep
    (root / "b").symlink_to(outside, target_is_directory=True)
    (root / "c").symlink_to(outside, target_is_directory=True)
    with pytest.raises(GenaugError, match="link loop: b/sub/again"):
        load_images(root, allow_outside_root=True)
    (outside / "sub" / "again").unlink()
    data = load_images(root, allow_outside_root=True)
    assert data.ids == ["a/1.png", "b/2.png"]


def test_links_inside_the_root_are_read_once_under_the_real_file(tmp_path):
    root = tmp_path / "root"
    for folder in ("cat", "dog", ".store"):
        (root / folder).mkdir(parents=True)
    (root / "cat" / "a.png").write_bytes(_png(_noise(0)))
    (root / ".store" / "blob").write_bytes(_png(_noise(1)))  # git-annex / DVC style store
    (root / "dog" / "b.png").symlink_to(root / ".store" / "blob")
    (root / "cat" / "0_alias.png").symlink_to(root / "cat" / "a.png")  # sorts first, yet the file wins
    (root / "dog" / "alias.png").symlink_to(root / "cat" / "a.png")
    data = load_images(root)
    assert data.ids == ["cat/a.png", "dog/b.png"]
    np.testing.assert_array_equal(data.images[1].numpy(), _noise(1).transpose(2, 0, 1))


def test_a_file_name_that_is_not_utf8_is_read_under_an_escaped_id(tmp_path):
    # Linux allows any bytes in a name; the raw one could not be written to Parquet.
    try:
        (tmp_path / os.fsdecode(b"\xff\xfe.png")).write_bytes(_png(_noise(0)))
    except (OSError, UnicodeError):
        pytest.skip("this filesystem takes UTF-8 names only")
    data = load_images(tmp_path)
    assert data.ids == ["\\xff\\xfe.png"] and data.paths == [f"{tmp_path}/\\xff\\xfe.png"]
    np.testing.assert_array_equal(data.images[0].numpy(), _noise(0).transpose(2, 0, 1))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_named_like_an_image_is_refused_at_once(tmp_path):
    # Opened blocking, a FIFO waits for a writer forever.
    (tmp_path / "a.png").write_bytes(_png(_noise(0)))
    os.mkfifo(tmp_path / "b.png")
    assert "not a regular file" in _error(tmp_path)


# -- pixel caps: sizes come from the header, before decoding -----------------------
def _png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels (1-bit gray) and holds no pixel data: all a bomb needs to be opened."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # bit depth 1, gray
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12_000, 60_000])  # over Pillow's warning limit; over its error limit
def test_a_pixel_bomb_is_refused_from_its_header_without_a_warning(tmp_path, recwarn, capsys, side):
    (tmp_path / "a.png").write_bytes(_png(_noise(0)))
    (tmp_path / "bomb.png").write_bytes(_png_header(side, side))
    start = time.perf_counter()
    message = _error(tmp_path)
    assert time.perf_counter() - start < 2  # decoding 144M+ pixels would take far longer
    # Over twice its limit Pillow refuses inside `Image.open`, which tells the pixel count only.
    size = f"is {side}x{side} ({side * side:,} pixels)" if side == 12_000 else f"has {side * side:,} pixels"
    assert message == (
        f"image too large: {tmp_path / 'bomb.png'} {size}, above the cap of {DEFAULT_MAX_PIXELS:,} pixels; "
        "pass --max-pixels to raise it"
    )
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert capsys.readouterr().err == ""


def test_max_pixels_is_the_largest_size_read(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(_noise(0, h=6, w=5)))
    assert load_images(tmp_path, max_pixels=30).shape == (3, 6, 5)
    assert "6x5 (30 pixels), above the cap of 29 pixels" in _error(tmp_path, max_pixels=29)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 6, 5), np.uint8))
    assert load_images(tmp_path / "d.npz", max_pixels=30).shape == (1, 6, 5)
    assert "6x5 (30 pixels), above the cap of 29 pixels" in _error(tmp_path / "d.npz", max_pixels=29)


def test_an_image_size_over_the_cap_is_refused_before_resizing():
    # --image-size 100000 once asked torchvision for 10 GB per image.
    message = _error("digits", image_size=100_000)
    assert message == (
        f"image size 100000x100000 (10,000,000,000 pixels) is above the cap of {DEFAULT_MAX_PIXELS:,} pixels; "
        "pass --max-pixels to raise it"
    )
    assert load_images("digits", image_size=(6, 5), max_pixels=30).shape == (1, 6, 5)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "100"])
def test_max_pixels_must_be_a_positive_integer(bad):
    assert "max_pixels must be a positive integer" in _error("digits", max_pixels=bad)


def test_a_damaged_tiff_fails_with_one_line_and_nothing_else_on_stderr(tmp_path):
    # Pillow logs "More samples per pixel than can be decoded" for this TIFF and
    # warns for the bomb; with no logging set up Python prints both to stderr.
    # A subprocess: pytest's own log capture would hide the print in-process.
    buf = io.BytesIO()
    Image.fromarray(_noise(0)).save(buf, format="TIFF")
    tiff = bytearray(buf.getvalue())
    entry = tiff.index(struct.pack("<HHI", 277, 3, 1))  # SamplesPerPixel = 3, a SHORT
    tiff[entry + 8 : entry + 10] = struct.pack("<H", 40_000)
    (tmp_path / "bad.tif").write_bytes(bytes(tiff))
    (tmp_path / "bomb.png").write_bytes(_png_header(12_000, 12_000))
    script = textwrap.dedent(
        """
        import sys
        from genaug.data.readers import load_images
        from genaug.errors import GenaugError
        for path in sys.argv[1:]:
            try:
                load_images(path)
            except GenaugError as e:
                print(e)
        """
    )
    files = [tmp_path / "bad.tif", tmp_path / "bomb.png"]
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True)
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        f"cannot decode image: {files[0]}",
        f"image too large: {files[1]} is 12000x12000 (144,000,000 pixels), above the cap of "
        f"{DEFAULT_MAX_PIXELS:,} pixels; pass --max-pixels to raise it",
    ]


# -- .npz: sizes come from the zip directory and .npy headers, before expanding ------------
def _npy_header(shape: tuple, descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _refused_cheaply(path, match: str) -> str:
    tracemalloc.start()
    try:
        message = _error(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert match in message
    assert peak < 8 * 2**20, f"{peak:,} bytes allocated to refuse {path}"
    return message


def test_an_npz_of_zeros_that_expands_too_far_is_refused_before_expanding(tmp_path):
    # 70 MiB of zeros in a 0.3 MB file: over 64 MiB and over MAX_NPZ_EXPANSION times its size.
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w") as f:
            f.write(_npy_header((70, 1024, 1024)))
            zeros = bytes(2**20)
            for _ in range(70):
                f.write(zeros)
    assert zipfile.ZipFile(path).getinfo("x.npy").compress_size * MAX_NPZ_EXPANSION < 70 * 2**20
    message = _refused_cheaply(path, "decompression bomb")
    assert f"more than {MAX_NPZ_EXPANSION}x" in message and "np.savez" in message


def test_an_npy_header_promising_more_than_its_member_holds_is_refused_before_allocating(tmp_path):
    # numpy allocates what the header declares (1.27 GB here) before reading any data.
    path = tmp_path / "liar.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", _npy_header((1270, 1000, 1000)) + bytes(100))
    _refused_cheaply(path, "'x' is damaged")


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_npz_members_compressed_without_an_output_bound_are_refused(tmp_path, method):
    # zipfile decompresses bzip2 and lzma in one call: even the header read would expand everything.
    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        buf = io.BytesIO()
        np.save(buf, np.zeros((2, 4, 4), np.uint8))
        zf.writestr("x.npy", buf.getvalue())
    _refused_cheaply(path, f"compression method {method}")


def test_an_npz_object_array_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "pickle.npz"
    payload = b"cos\nsystem\n(S'touch pwned'\ntR."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", _npy_header((1,), "|O") + payload)
    assert "holds Python objects" in _error(path)


def test_arrays_other_than_x_and_y_are_never_read(tmp_path):
    path = tmp_path / "extra.npz"
    buf = io.BytesIO()
    np.save(buf, np.full((2, 4, 4), 9, np.uint8))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue())
        zf.writestr("junk.npy", _npy_header((10**12,)))  # would be a terabyte, and a damaged one
    assert load_images(path).images.unique().tolist() == [9]


# -- labels: integer class indices in range, or strings --------------------------
@pytest.mark.parametrize(
    "labels, shown",
    [
        ([0.0, 1.0], "float labels (e.g. 0.0)"),
        ([1.0, float("nan")], "float labels (e.g. 1.0)"),
        ([True, False], "bool labels (e.g. True)"),
        ([0, 10**6], f"label 1000000, beyond the {MAX_CLASSES:,} classes"),
        ([0, MAX_CLASSES], f"label {MAX_CLASSES}, beyond"),
        ([0, -1], "negative labels (e.g. -1)"),
        (pa.array([0, 2**64 - 1], pa.uint64()), f"label {2**64 - 1}, beyond"),
        ([b"a", b"b"], "bytes labels"),
    ],
)
def test_parquet_labels_that_are_not_class_indices_or_names_are_refused(tmp_path, labels, shown):
    path = tmp_path / "t.parquet"
    png = _png(_noise(0))
    pq.write_table(pa.table({"image": [png, png], "label": labels}), path)
    message = _error(path)
    assert message.startswith(f"label column 'label' in {path} ") and shown in message
    if "float" in shown or "bool" in shown:
        assert message.endswith("cast it to int")


def test_labels_up_to_the_class_cap_are_read(tmp_path):
    path = tmp_path / "t.parquet"
    png = _png(_noise(0))
    pq.write_table(pa.table({"image": [png, png], "label": [0, MAX_CLASSES - 1]}), path)
    assert load_images(path).labels.tolist() == [0, MAX_CLASSES - 1]


def test_string_labels_become_sorted_class_names(tmp_path):
    path = tmp_path / "t.parquet"
    png = _png(_noise(0))
    pq.write_table(pa.table({"image": [png] * 3, "label": ["dog", "cat", "dog"]}), path)
    data = load_images(path)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [1, 0, 1]


def test_hf_class_names_must_cover_the_labels(tmp_path):
    path = tmp_path / "t.parquet"
    png = _png(_noise(0))
    features = {"image": {"_type": "Image"}, "label": {"names": ["a", "b"], "_type": "ClassLabel"}}
    table = pa.table({"image": [png, png], "label": [0, 2]})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)
    assert "has label 2 beyond its 2 class names" in _error(path)
    features["label"]["names"] = [str(i) for i in range(MAX_CLASSES + 1)]
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})}), path)
    assert f"has {MAX_CLASSES + 1:,} class names, more than the {MAX_CLASSES:,} classes" in _error(path)


@pytest.mark.parametrize(
    "y, shown",
    [
        (np.array([0.0, 1.0]), "got float64 (2,); cast it to int"),
        (np.array([True, False]), "got bool (2,); cast it to int"),
        (np.array([0, 10**6]), "label 1000000, beyond"),
        (np.array([0, -3]), "negative labels (e.g. -3)"),
        (np.array([0, 2**64 - 1], np.uint64), f"label {2**64 - 1}, beyond"),
    ],
)
def test_npz_labels_that_are_not_class_indices_are_refused(tmp_path, y, shown):
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4, 4), np.uint8), y=y)
    assert shown in _error(tmp_path / "d.npz")


# -- through the command line ---------------------------------------------------
def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_info_refuses_an_escaping_parquet_path_with_one_line(world, capsys):
    root, _ = world
    path = _parquet(root / "t.parquet", ["../outside/secret.png"], "struct")
    code, err = _cli(capsys, "info", path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {REFUSED}: ../outside/secret.png")


def test_info_refuses_float_labels_with_one_line(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    png = _png(_noise(0))
    pq.write_table(pa.table({"image": [png, png], "label": [0.0, 1.0]}), path)
    code, err = _cli(capsys, "info", path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: label column 'label'") and "cast it to int" in err


def test_a_damaged_tiff_is_one_error_and_nothing_from_libtiff_on_stderr(tmp_path, capfd):
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(buffer, format="TIFF", compression="tiff_deflate")
    data = bytearray(buffer.getvalue())
    at = data.find(b"\x78")
    stream = zlib.decompressobj()
    while True:  # find the zlib stream: the first offset that decompresses
        try:
            stream.decompress(bytes(data[at:]))
            break
        except zlib.error:
            at, stream = data.find(b"\x78", at + 1), zlib.decompressobj()
    end = len(data) - len(stream.unused_data)
    data[end - 1] ^= 0xFF  # break the Adler-32 checksum: libtiff reports it on fd 2 itself
    (tmp_path / "bad.tiff").write_bytes(bytes(data))
    with pytest.raises(GenaugError, match="cannot decode image"):
        load_images(tmp_path / "bad.tiff")
    assert capfd.readouterr().err == ""
