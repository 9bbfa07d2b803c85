"""The Parquet writer: exact PNGs, the documented schema, HF metadata, atomic writes."""

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genaug.data.imageset import ImageSet
from genaug.data.parquet import (
    encode_png,
    image_table,
    png_payload_bits,
    read_genaug_metadata,
    write_image_table,
    write_table,
    write_tables,
)
from genaug.data.readers import load_images
from genaug.errors import GenaugError

PNG_CONTAINER_BYTES = 8 + 25 + 12  # signature, IHDR chunk, IEND chunk
IDAT_OVERHEAD_BYTES = 12  # length, type and CRC of each IDAT chunk


def _imageset(n=5, c=1, h=6, w=7, labels=True, seed=0) -> ImageSet:
    x = np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    return ImageSet(
        images=torch.from_numpy(x),
        labels=np.arange(n) % 2 if labels else None,
        class_names=["even", "odd"] if labels else None,
        ids=[f"img-{i}" for i in range(n)],
        paths=[f"/data/{i}.png" for i in range(n)],
        source="test",
    )


def _chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _decoded(png: bytes) -> torch.Tensor:
    # An independent decoder: Pillow straight, not genaug's reader.
    arr = np.asarray(Image.open(io.BytesIO(png)))
    return torch.from_numpy(np.array(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))


def _no_leftovers(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- PNG -------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4), c=st.sampled_from([1, 3]), h=st.integers(1, 20), w=st.integers(1, 20), seed=st.integers(0, 9)
)
def test_png_decodes_back_to_the_exact_pixels(n, c, h, w, seed):
    x = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, size=(n, c, h, w), dtype=np.uint8))
    pngs = encode_png(x)
    assert len(pngs) == n
    for png, img in zip(pngs, x):
        assert torch.equal(_decoded(png), img)


def test_png_encoding_is_deterministic_whatever_the_workers(digits):
    # The complexity score is the PNG length: it must not depend on threading.
    one = encode_png(digits.images[:300], workers=1)
    assert encode_png(digits.images[:300], workers=3) == one
    assert encode_png(digits.images[:300]) == one


def test_payload_bits_are_the_png_minus_its_container():
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, size=(2, 3, 160, 160), dtype=np.uint8))
    small, large = encode_png(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))[0], encode_png(x)[0]
    for png in (small, large):
        n_idat = sum(kind == b"IDAT" for kind, _ in _chunks(png))
        assert png_payload_bits(png) == 8 * (len(png) - PNG_CONTAINER_BYTES - IDAT_OVERHEAD_BYTES * n_idat)
        assert 0 < png_payload_bits(png) < 8 * len(png)
    assert sum(kind == b"IDAT" for kind, _ in _chunks(large)) > 1  # Pillow splits IDAT at 64 KiB


def test_payload_bits_ignore_how_the_stream_is_split_and_ancillary_chunks():
    png = encode_png(torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8))[0]
    chunks = _chunks(png)
    stream = b"".join(data for kind, data in chunks if kind == b"IDAT")
    pieces = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    split = (
        png[:8]
        + _chunk(b"IHDR", chunks[0][1])
        + _chunk(b"tEXt", b"Comment\x00padding that is not pixels")
        + b"".join(_chunk(b"IDAT", p) for p in pieces)
        + _chunk(b"IEND", b"")
    )
    # Still a valid PNG of the same pixels, with the same payload.
    assert torch.equal(_decoded(split), _decoded(png))
    assert len(pieces) > 1
    assert png_payload_bits(split) == png_payload_bits(png) == 8 * len(stream)


# -- table -----------------------------------------------------------------
def test_table_columns_types_and_order(tmp_path):
    data = _imageset()
    score = np.linspace(0, 1, 5)
    flags = np.array([True, False, True, False, False])
    latents = np.arange(10, dtype=np.float32).reshape(5, 2)
    tags = [["a"], [], ["b", "c"], ["d"], []]
    path = tmp_path / "out.parquet"
    write_image_table(path, data, {"score": score, "is_outlier": flags, "z": latents, "tags": tags}, genaug_metadata={})
    table = pq.read_table(path)
    assert table.column_names == ["index", "id", "image", "label", "score", "is_outlier", "z", "tags"]
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert str(table.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert table.schema.field("index").type == pa.int64() and table.schema.field("label").type == pa.int64()
    assert table["index"].to_pylist() == list(range(5))
    assert table["id"].to_pylist() == data.ids
    assert table["label"].to_pylist() == [0, 1, 0, 1, 0]
    assert table["score"].to_pylist() == score.tolist()
    assert table["is_outlier"].to_pylist() == flags.tolist()
    assert table["z"].to_pylist() == latents.tolist()
    assert table["tags"].to_pylist() == tags
    images = table["image"].to_pylist()
    assert [cell["path"] for cell in images] == data.paths
    for cell, img in zip(images, data.images):  # rows are in input order
        assert torch.equal(_decoded(cell["bytes"]), img)


def test_unlabelled_and_synthetic_rows_have_nulls():
    data = _imageset(n=3, labels=False)
    data.paths = None
    table = image_table(data, index=[None, None, None])
    assert table["index"].null_count == 3 and table["label"].null_count == 3
    assert [cell["path"] for cell in table["image"].to_pylist()] == [None] * 3
    masked = image_table(data, index=np.ma.masked_array([0, 1, 2], mask=[False, True, False]))
    assert masked["index"].to_pylist() == [0, None, 2]


def test_reuses_given_png_bytes():
    data = _imageset(n=2)
    pngs = encode_png(data.images)
    table = image_table(data, png=pngs)
    assert [cell["bytes"] for cell in table["image"].to_pylist()] == pngs
    with pytest.raises(GenaugError, match="1 PNG encodings for 2 images"):
        image_table(data, png=pngs[:1])


def test_bad_columns_are_clear_errors():
    data = _imageset(n=3)
    with pytest.raises(GenaugError, match="column 'score' has 2 values for 3 images"):
        image_table(data, {"score": np.zeros(2)})
    with pytest.raises(GenaugError, match="column 'label' is reserved"):
        image_table(data, {"label": np.zeros(3)})
    with pytest.raises(GenaugError, match="column 'index' has 2 values"):
        image_table(data, index=[0, 1])


# -- metadata --------------------------------------------------------------
def test_huggingface_metadata_describes_every_column(tmp_path):
    path = tmp_path / "out.parquet"
    write_image_table(
        path,
        _imageset(n=4),
        {"score": np.zeros(4), "rank": np.arange(4), "z": np.zeros((4, 3), np.float32), "note": ["a"] * 4},
        genaug_metadata={},
    )
    features = json.loads(pq.read_schema(path).metadata[b"huggingface"])["info"]["features"]
    assert list(features) == ["index", "id", "image", "label", "score", "rank", "z", "note"]
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": ["even", "odd"], "_type": "ClassLabel"}
    assert features["score"] == {"dtype": "float64", "_type": "Value"}
    assert features["rank"] == {"dtype": "int64", "_type": "Value"}
    assert features["note"] == {"dtype": "string", "_type": "Value"}
    assert features["z"] == {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence", "length": 3}


def test_unnamed_labels_are_plain_ints(tmp_path):
    data = _imageset(n=2)
    data.class_names = None
    write_image_table(tmp_path / "o.parquet", data, genaug_metadata={})
    features = json.loads(pq.read_schema(tmp_path / "o.parquet").metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"dtype": "int64", "_type": "Value"}


def test_hf_datasets_reads_an_image_and_classlabel_column(tmp_path, monkeypatch):
    # Local files only: the test must not reach for the Hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "out.parquet"
    data = _imageset(n=4, c=3)
    write_image_table(path, data, {"score": np.arange(4.0), "z": np.ones((4, 2), np.float32)}, genaug_metadata={})
    ds = datasets.load_dataset("parquet", data_files=str(path), cache_dir=str(tmp_path / "cache"))["train"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == ["even", "odd"]
    assert ds.features["score"] == datasets.Value("float64")
    assert ds["id"] == data.ids
    assert np.array_equal(np.asarray(ds[2]["image"]).transpose(2, 0, 1), data.images[2].numpy())


def test_genaug_metadata_round_trips(tmp_path):
    path = tmp_path / "out.parquet"
    meta = {"version": "0.1.0", "command": "genaug detect-outliers x", "fdr": 0.05, "k": np.int64(3)}
    meta["shape"] = (1, 8, 8)
    write_image_table(path, _imageset(), genaug_metadata=meta)
    assert read_genaug_metadata(path) == {**meta, "k": 3, "shape": [1, 8, 8]}


def test_reading_metadata_of_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(GenaugError, match="cannot read Parquet file"):
        read_genaug_metadata(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "foreign.parquet")
    assert read_genaug_metadata(tmp_path / "foreign.parquet") == {}


def test_output_reads_back_as_input(tmp_path):
    # A genaug output is itself a dataset: same pixels, labels, class names and ids.
    data = _imageset(n=6, c=3)
    write_image_table(tmp_path / "out.parquet", data, {"score": np.zeros(6)}, genaug_metadata={})
    back = load_images(tmp_path / "out.parquet")
    assert torch.equal(back.images, data.images)
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.class_names == data.class_names and back.ids == data.ids


def test_unlabelled_output_reads_back_unlabelled(tmp_path):
    data = _imageset(n=3, labels=False)
    write_image_table(tmp_path / "out.parquet", data, genaug_metadata={})
    back = load_images(tmp_path / "out.parquet")
    assert back.labels is None and back.class_names is None
    assert torch.equal(back.images, data.images)


# -- atomic writes ---------------------------------------------------------
def test_write_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.parquet"
    write_image_table(path, _imageset(), genaug_metadata={})
    assert pq.read_table(path).num_rows == 5
    assert _no_leftovers(path.parent)


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.parquet"
    with pytest.raises(GenaugError):
        write_image_table(path, _imageset(), {"score": np.zeros(4)}, genaug_metadata={})
    assert not path.exists() and _no_leftovers(tmp_path)

    def broken(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_table(image_table(_imageset()), path, genaug_metadata={})
    assert not path.exists() and _no_leftovers(tmp_path)

    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        write_table(image_table(_imageset()), path, genaug_metadata={})
    assert path.read_bytes() == b"previous result" and _no_leftovers(tmp_path)


def test_unwritable_target_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(GenaugError, match="taken is a folder") as info:
        write_image_table(tmp_path / "taken", _imageset(), genaug_metadata={})
    assert "\n" not in str(info.value)
    assert (tmp_path / "taken").is_dir() and _no_leftovers(tmp_path)


def test_several_outputs_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    first.write_bytes(b"old a")
    table = image_table(_imageset())
    real_replace = os.replace

    def failing_on_second(src, dst):
        if Path(dst) == second:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_on_second)
    with pytest.raises(GenaugError, match="cannot write .*b.parquet: No space left"):
        write_tables([(table, first, {}, None), (table, second, {}, None)])
    assert first.read_bytes() == b"old a" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]

    monkeypatch.setattr(os, "replace", real_replace)
    write_tables([(table, first, {}, None), (table, second, {}, None)])
    assert pq.read_table(first).num_rows == pq.read_table(second).num_rows == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]
