"""Fuzz the readers and the checkpoint loader in-process: anything but a GenaugError is a crash (issue 7).

    python benchmarks/fuzz_io.py                          # 2000 inputs or 120 s, seed 0
    python benchmarks/fuzz_io.py /tmp/fuzz --n 20000 --seconds 600 --seed 3
    python benchmarks/fuzz_io.py /tmp/fuzz --replay /tmp/fuzz/crashes/<file>   # one input, with its traceback
    python benchmarks/fuzz_io.py /tmp/fuzz --source /tmp/old    # fuzz another checkout's genaug

Takes `--seconds` at most (default 120 s). On the project's 2-core machine
(one core used) the default 2000 inputs take about 15 to 20 s, 20,000 about
30 s and 60,000 about 110 s, so `--n 60000 --seconds 300` is a deeper run. Repeatable: input i is built from
`random.Random(f"{seed}-{i}")` alone, so `--seed S --start i --n 1`
rebuilds it.

Seeds: valid 8x8 images in every format the readers take (PNG gray, RGB,
RGBA, palette, 16-bit; JPEG, GIF, TIFF, BMP, WEBP), Parquet files (the
Hugging Face {bytes, path} struct, raw bytes, relative paths; labels and
ids), .npz files (uint8 x, int y), and genaug checkpoints (small VAEs
fitted for one epoch with `genaug.fit`, saved with `genaug.save_model`). Mutations, one to three per input: bit
flips, interesting bytes (0, 0xff, 0x7f, 0x80, 0xfffffff), truncation,
splices of two seeds of one format, deleted/duplicated/inserted chunks,
random bytes; format-aware ones rewrite a safetensors header as other JSON
(huge or negative offsets and shapes, wrong dtypes, non-dict metadata), an
.npy header inside an .npz (huge shape, object or float dtype), and the
Parquet footer (where its schema lives).

Each input goes to `genaug.data.readers.load_images(path)` (images,
Parquet, .npz) or `genaug.models.store.load_model(path)` (.safetensors).
Anything raised other than `genaug.errors.GenaugError` is a crash, and so
is running past `--timeout` seconds (SIGALRM) or a MemoryError under the
8 GiB address-space limit this process sets for itself. Distinct crashes
(exception type + the innermost frame) are listed with a reproducer and
their inputs saved under DIR/crashes/. A hard crash (a segfault in a
decoder) ends the run: the input being tried is always in
DIR/crashes/last-input.* with its seed and index in last-input.txt, and
faulthandler prints the native stack.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import io
import json
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import print_table  # noqa: E402

MEMORY_LIMIT = 8 * 2**30
IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "tiff": "TIFF", "bmp": "BMP", "webp": "WEBP"}
INTERESTING = [0, 0xFF, 0x7F, 0x80, 0x01, 0xFE]
INTERESTING32 = [0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFF, 0x10000]


class Hang(Exception):
    """Raised by SIGALRM when one input runs past --timeout."""


# -- seeds ----------------------------------------------------------------------------
def _img(seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (8, 8), dtype=np.uint16))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (8, 8, 4), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return rgb.convert("P") if mode == "P" else rgb


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def image_seeds() -> dict[str, list[bytes]]:
    """Valid 8x8 images per extension, in the modes each format stores."""
    seeds = {ext: [] for ext in IMAGE_FORMATS}
    for i, mode in enumerate(("L", "RGB", "RGBA", "P", "I;16")):
        seeds["png"].append(_encode(_img(i, mode), "PNG"))
    for i, mode in enumerate(("L", "RGB")):
        seeds["jpg"].append(_encode(_img(i, mode), "JPEG", quality=90))
        seeds["bmp"].append(_encode(_img(i, mode), "BMP"))
        seeds["webp"].append(_encode(_img(i, mode), "WEBP", lossless=bool(i)))
        seeds["tiff"].append(_encode(_img(i, mode), "TIFF", compression="tiff_deflate" if i else None))
    frames = [_img(i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    seeds["gif"] += [_encode(_img(0, "P"), "GIF"), buf.getvalue()]
    return seeds


def parquet_seeds() -> list[bytes]:
    """Valid Parquet datasets: the Hugging Face struct with labels and ids, raw bytes, relative paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pngs = [_encode(_img(i), "PNG") for i in range(6)]
    struct_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    tables = [
        pa.table({"image": pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(pngs)], struct_type),
                  "label": pa.array([0, 1, 2, 0, 1, 2]), "id": pa.array([f"r{i}" for i in range(6)])}),
        pa.table({"image": pa.array(pngs, pa.binary()), "label": pa.array(["a", "b"] * 3)}),
        pa.table({"image": pa.array([f"imgs/{i}.png" for i in range(6)])}),
    ]
    meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"_type": "ClassLabel", "names": ["a", "b", "c"]}}}}).encode()}
    tables[0] = tables[0].replace_schema_metadata(meta)
    out = []
    for table in tables:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        out.append(buf.getvalue())
    return out


def zip_members(members: dict[str, bytes], compress: bool = False) -> bytes:
    """An .npz (zip) of `members` with a fixed timestamp, so the same members give the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            zf.writestr(info, data)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray], compress: bool = False) -> bytes:
    """What np.savez writes, minus its clock-dependent timestamps."""
    members = {}
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.asanyarray(a), allow_pickle=False)
        members[f"{name}.npy"] = buf.getvalue()
    return zip_members(members, compress)


def npz_seeds() -> list[bytes]:
    """Valid .npz datasets: [N,H,W] with labels, [N,H,W,C] compressed, [N,C,H,W] floats in [0, 1]."""
    rng = np.random.default_rng(0)
    arrays = [
        {"x": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), "y": np.arange(6) % 3},
        {"x": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)},
        {"x": rng.random((6, 1, 8, 8)).astype(np.float32)},
    ]
    return [npz_bytes(a, compress=bool(i % 2)) for i, a in enumerate(arrays)]


def checkpoint_seeds(folder: Path) -> list[bytes]:
    """Real genaug checkpoints: small VAEs fitted for one epoch (gray unconditional, RGB conditional)."""
    import genaug
    from genaug.data.imageset import ImageSet

    digits = genaug.load_images("digits").subset(np.arange(200))
    rgb = ImageSet(digits.images.expand(-1, 3, -1, -1).contiguous(), digits.labels, digits.class_names,
                   source="digits-rgb")
    out = []
    for i, (data, conditional) in enumerate(((digits, False), (rgb, True))):
        model = genaug.fit(data, conditional=conditional, model_options={"latent_dim": 4, "hidden": 16},
                           train_config=genaug.TrainConfig(epochs=1, progress=False))
        model.metadata = _without_clock(model.metadata)
        path = folder / f"seed{i}.safetensors"
        genaug.save_model(model, path)
        out.append(path.read_bytes())
    return out


def _without_clock(value):
    """Metadata with timings zeroed: the seeds, and so every input, must not depend on the clock."""
    if isinstance(value, dict):
        return {k: (0.0 if ("second" in k or k.endswith("_s")) else "" if k == "summary" else _without_clock(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_without_clock(v) for v in value]
    return value


# -- mutations --------------------------------------------------------------------------
def m_bitflip(rng: random.Random, data: bytes, peers: list[bytes]) -> tuple[bytes, str]:
    """Flip one to eight random bits."""
    b = bytearray(data)
    if not b:
        return data, "bitflip(empty)"
    spots = [rng.randrange(len(b)) for _ in range(rng.randint(1, 8))]
    for at in spots:
        b[at] ^= 1 << rng.randrange(8)
    return bytes(b), f"bitflip{spots[:3]}"


def m_interesting(rng, data, peers):
    """Overwrite a byte or a 32-bit word with a boundary value."""
    b = bytearray(data)
    if len(b) < 4:
        return data, "interesting(short)"
    at = rng.randrange(len(b) - 3)
    if rng.random() < 0.5:
        b[at] = rng.choice(INTERESTING)
        return bytes(b), f"byte@{at}"
    struct.pack_into(rng.choice(("<I", ">I")), b, at, rng.choice(INTERESTING32))
    return bytes(b), f"u32@{at}"


def m_truncate(rng, data, peers):
    """Cut the input short at a random length."""
    keep = rng.randrange(len(data) + 1) if data else 0
    return data[:keep], f"truncate({keep})"


def m_splice(rng, data, peers):
    """The head of this input followed by the tail of another seed of the same format."""
    other = rng.choice(peers)
    a, b = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
    return data[:a] + other[b:], f"splice({a},{b})"


def m_chunk(rng, data, peers):
    """Delete, repeat or insert a run of up to 256 bytes."""
    if len(data) < 2:
        return data, "chunk(short)"
    a = rng.randrange(len(data))
    n = rng.randint(1, min(256, len(data) - a))
    op = rng.choice(("delete", "duplicate", "insert"))
    if op == "delete":
        return data[:a] + data[a + n :], f"delete({a},{n})"
    if op == "duplicate":
        return data[:a] + data[a : a + n] * rng.randint(2, 50) + data[a + n :], f"duplicate({a},{n})"
    junk = bytes(rng.randrange(256) for _ in range(n))
    return data[:a] + junk + data[a:], f"insert({a},{n})"


def m_random(rng, data, peers):
    """Replace the input by random bytes of a typical length."""
    n = rng.choice((0, 1, 8, 64, 1024, len(data)))
    return bytes(rng.randrange(256) for _ in range(n)), f"random({n})"


def m_tail(rng, data, peers):
    """Flip bytes in the last 1 KiB: a Parquet footer, a zip central directory."""
    b = bytearray(data)
    if not b:
        return data, "tail(empty)"
    lo = max(0, len(b) - 1024)
    spots = [rng.randrange(lo, len(b)) for _ in range(rng.randint(1, 6))]
    for at in spots:
        b[at] = rng.randrange(256)
    return bytes(b), f"tail{spots[:3]}"


GENERIC = [m_bitflip, m_interesting, m_truncate, m_splice, m_chunk, m_random, m_tail]


def _weird_value(rng: random.Random):
    return rng.choice([0, -1, 1, 2**31, 2**63, 2**64 + 1, 10**12, -(10**12), 1.5, float("nan"), None, True, "x",
                       "", [], {}, [1], [2**40, 2**40], ["a"], {"a": 1}, "F32", "F64", "I8", "BOOL", "U8"])


def m_safetensors_header(rng, data, peers):
    """Rewrite the JSON header: a tensor's dtype, shape or offsets, or the metadata, made wrong."""
    if len(data) < 8:
        return data, "st-header(short)"
    (n,) = struct.unpack_from("<Q", data)
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        return m_random(rng, data, peers)
    body = data[8 + n :]
    if not isinstance(header, dict):
        return m_random(rng, data, peers)
    names = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    choice = rng.randrange(6)
    if choice == 0 and names:
        k = rng.choice(names)
        field = rng.choice(("dtype", "shape", "data_offsets"))
        header[k][field] = _weird_value(rng)
        what = f"{k}.{field}={header[k][field]!r}"
    elif choice == 1 and names:
        k = rng.choice(names)
        header[k]["data_offsets"] = [rng.choice((0, 2**62, len(body))), rng.choice((0, 2**62, len(body) + 10, -1))]
        what = f"{k}.data_offsets={header[k]['data_offsets']}"
    elif choice == 2:
        meta, doc = _genaug_doc(header)
        key = rng.choice(["family", "image_shape", "num_classes", "init_args", "class_names", "calibration",
                          "format_version", "data"])
        doc[key] = _weird_value(rng)
        meta["genaug"] = json.dumps(doc)
        header["__metadata__"] = meta
        what = f"meta.{key}={doc[key]!r}"
    elif choice == 3:
        header["__metadata__"] = _weird_value(rng)
        what = f"__metadata__={header['__metadata__']!r}"
    elif choice == 4:
        new_n = rng.choice((0, 1, n - 1, n + 1, 2**32, 2**63, 2**64 - 1))
        return struct.pack("<Q", new_n) + data[8:], f"header_len={new_n}"
    else:
        meta, doc = _genaug_doc(header)
        ia = doc.get("init_args") if isinstance(doc.get("init_args"), dict) else {}
        key = rng.choice(["latent_dim", "channels", "hidden", "evil"])
        ia[key] = _weird_value(rng)
        doc["init_args"] = ia
        meta["genaug"] = json.dumps(doc)
        header["__metadata__"] = meta
        what = f"init_args.{key}={ia[key]!r}"
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body, f"st-header({what})"


def _genaug_doc(header: dict) -> tuple[dict, dict]:
    """The safetensors `__metadata__` dict and the genaug JSON in it, as dicts (empty when an earlier mutation broke them)."""
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    try:
        doc = json.loads(meta.get("genaug", "{}"))
    except (TypeError, ValueError):
        doc = {}
    return meta, doc if isinstance(doc, dict) else {}


def m_npy_header(rng, data, peers):
    """Rewrite the .npy header of one array inside the .npz."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, NotImplementedError, zlib.error):
        return m_bitflip(rng, data, peers)
    if not members:
        return data, "npy-header(empty)"
    name = rng.choice(sorted(members))
    shape = rng.choice(["(10000000000, 8, 8)", "(-1, 8, 8)", "(6, 8, 8)", "()", "(0, 8, 8)", "(6, 8, 8, 8, 8)",
                        "(2**62,)", "(6, 0, 0)", "(1000000, 1000000)"])
    dtype = rng.choice(["|u1", "<f8", "|O", "<i8", "|b1", "<U10", "|V8", ">f4"])
    fortran = rng.choice(["False", "True"])
    header = f"{{'descr': '{dtype}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    old = members[name]
    body = old[10 + struct.unpack_from("<H", old, 8)[0] :] if old[:6] == b"\x93NUMPY" and len(old) > 10 else old
    members[name] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body
    return zip_members(members, rng.random() < 0.5), f"npy-header({name}: {dtype} {shape} fortran={fortran})"


def png_fix_crc(data: bytes) -> bytes:
    """Recompute every chunk CRC, so a mutated PNG gets past the CRC check into the decoder."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, at = bytearray(data[:8]), 8
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if len(body) < length:
            out += data[at:]
            break
        out += struct.pack(">I", length) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        at += 12 + length
    return bytes(out)


def m_png_ihdr(rng, data, peers):
    """Weird IHDR fields (size, bit depth, colour type, interlace), CRC fixed."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 29:
        return m_bitflip(rng, data, peers)
    b = bytearray(data)
    field = rng.choice(("width", "height", "depth", "colour", "interlace"))
    if field in ("width", "height"):
        value = rng.choice((0, 1, 7, 9, 65535, 30000, 2**31 - 1))
        struct.pack_into(">I", b, 16 if field == "width" else 20, value)
    else:
        value = rng.choice({"depth": (0, 1, 2, 3, 4, 8, 16, 255), "colour": (0, 1, 2, 3, 4, 5, 6, 7),
                            "interlace": (0, 1, 2)}[field])
        b[{"depth": 24, "colour": 25, "interlace": 28}[field]] = value
    return png_fix_crc(bytes(b)), f"ihdr.{field}={value}"


def m_zip_members(rng, data, peers):
    """Mutate the bytes of one member of an .npz and zip it again (valid CRCs, so numpy reads on)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, NotImplementedError, zlib.error):
        return m_bitflip(rng, data, peers)
    if not members:
        return data, "zip(empty)"
    name = rng.choice(sorted(members))
    members[name], what = rng.choice((m_bitflip, m_interesting, m_truncate, m_chunk))(rng, members[name], [])
    if rng.random() < 0.2:
        members[rng.choice(("y.npy", "x.npy", "z.npy", "../x.npy"))] = members[name]
    return zip_members(members), f"member({name}: {what})"


def m_npz_arrays(rng, data, peers):
    """A new .npz of small arrays with odd dtypes, shapes and labels."""
    shape = rng.choice([(6, 8, 8), (0, 8, 8), (6,), (6, 8, 8, 2), (6, 3, 8, 8), (6, 8, 8, 4), (1, 1, 1),
                        (6, 1, 8, 8, 1), (6, 8, 1), (2, 300, 300)])
    dtype = rng.choice(["u1", "i8", "f4", "f8", "?", "f2", "c8", "u2", "i1", "U3", "V2"])
    x = np.zeros(shape, dtype=dtype)
    if x.dtype.kind == "f" and x.size:
        x.flat[0] = rng.choice([-1.0, 256.0, 1.5, float("nan"), float("inf")])
    elif x.dtype.kind in "iu" and x.size:
        x.flat[0] = rng.choice([0, 1, 100])
    arrays = {"x": x}
    y = rng.choice([None, np.arange(shape[0] if shape else 1), np.array([-1] * 6), np.array([1.5] * 6),
                    np.array([True] * 6), np.array(["a"] * 6), np.zeros((6, 2), np.int64), np.array([2**62] * 6),
                    np.arange(7)])
    if y is not None:
        arrays["y"] = y
    return npz_bytes(arrays), f"npz(x {dtype} {shape}, y {None if y is None else (y.dtype.str, y.shape)})"


_PATHS = ["imgs/0.png", "imgs/../imgs/1.png", "../nope.png", "", "imgs", "imgs/\x00.png", "nope.png", "imgs/0.png/"]


def m_parquet_table(rng, data, peers):
    """A new Parquet file whose image, label and id columns hold odd types and values."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = rng.choice((0, 1, 3, 6))
    pngs = [_encode(_img(j), "PNG") for j in range(n)]
    kind = rng.choice(("struct", "binary", "string", "int", "list", "struct-odd"))
    if kind == "struct":
        image = pa.array([{"bytes": rng.choice((b, None, b"", b"\x89PNG")), "path": rng.choice([None] + _PATHS)}
                          for b in pngs], pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    elif kind == "binary":
        image = pa.array([rng.choice((b, None, b"", b[: len(b) // 2])) for b in pngs], pa.binary())
    elif kind == "string":
        image = pa.array([rng.choice(_PATHS) for _ in range(n)], pa.string())
    elif kind == "int":
        image = pa.array(list(range(n)), pa.int64())
    elif kind == "list":
        image = pa.array([[1, 2]] * n)
    else:
        image = pa.array([{"bytes": 1, "other": "x"}] * n)
    columns = {rng.choice(("image", "img", "pixels")): image}
    labels = rng.choice([None, [0, 1], [-1, 1], [float("nan"), 1.0], [True, False], ["\x1b[2J", "[/x]"],
                         [2**62, 0], [None, 1], [1.5, 2.5], [[1], [2]]])
    if labels is not None and n:
        columns[rng.choice(("label", "labels"))] = pa.array([labels[j % 2] for j in range(n)])
    ids = rng.choice([None, ["a", "b"], [1, 2], [None, "x"], ["\n", "\x1b]0;t\x07"]])
    if ids is not None and n:
        columns["id"] = pa.array([ids[j % 2] for j in range(n)])
    table = pa.table(columns)
    hf = rng.choice([None, "{", json.dumps({"info": {"features": {"label": {"_type": "ClassLabel", "names": 3}}}}),
                     json.dumps({"info": {"features": {"label": {"_type": "ClassLabel", "names": []}}}}),
                     json.dumps({"info": {"features": {"label": {"_type": "ClassLabel", "names": ["a"]}}}}),
                     json.dumps([1])])
    if hf is not None:
        table = table.replace_schema_metadata({b"huggingface": hf.encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue(), f"parquet({kind} x{n}, labels {labels}, ids {ids}, hf {str(hf)[:30]})"


SPECIFIC = {
    "safetensors": [m_safetensors_header] * 4,
    "npz": [m_npy_header, m_zip_members, m_zip_members, m_npz_arrays, m_npz_arrays],
    "parquet": [m_tail, m_parquet_table, m_parquet_table, m_parquet_table],
    "png": [m_png_ihdr, m_png_ihdr],
}


# -- running ----------------------------------------------------------------------------
@dataclass
class Crash:
    """One distinct crash: where it escaped, how to rebuild its first input, how often it recurred."""

    key: str
    message: str
    reproducer: str
    saved: Path
    count: int = 1


def make_input(seed: int, i: int, corpus: dict[str, list[bytes]]) -> tuple[str, bytes, str]:
    """Input i: (extension, bytes, description of its mutations); depends only on (seed, i)."""
    rng = random.Random(f"{seed}-{i}")
    ext = rng.choices(list(corpus), weights=[3 if e in ("parquet", "npz", "safetensors", "png") else 1 for e in corpus])[0]
    peers = corpus[ext]
    k = rng.randrange(len(peers))
    data = peers[k]
    steps = [f"{ext} seed #{k}"]
    ops = GENERIC + SPECIFIC.get(ext, [])
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.choice(ops)
        try:
            data, what = op(rng, data, peers)
        except Exception as e:  # noqa: BLE001 - a format-aware mutator met an input an earlier step broke
            data, what = m_bitflip(rng, data, peers)
            what = f"{what} ({op.__name__} gave up: {type(e).__name__})"
        steps.append(what)
    if ext == "png" and rng.random() < 0.5:
        data = png_fix_crc(data)
        steps.append("crc fixed")
    return ext, data, " -> ".join(steps)


def target_of(ext: str):
    """The function an input of this extension is fed to."""
    if ext == "safetensors":
        from genaug.models.store import load_model

        return load_model
    from genaug.data.readers import load_images

    return load_images


def try_one(path: Path, ext: str, timeout: float) -> tuple[str, BaseException | None, list[str], str]:
    """(accepted | refused | crashed, the exception that is a crash, warning categories, native stderr text).

    C libraries (libtiff, libpng) may write to file descriptor 2 directly,
    past Python: in the CLI that is a second stderr line. It is captured
    here by pointing fd 2 at a temp file for the call.
    """
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            outcome, error, categories = _call(path, ext, timeout)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        native = sink.read(400).decode("utf-8", "backslashreplace")
    return outcome, error, categories, native


def _call(path: Path, ext: str, timeout: float) -> tuple[str, BaseException | None, list[str]]:
    from genaug.errors import GenaugError

    fn = target_of(ext)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome, error = "accepted", None
        try:
            fn(str(path))
        except GenaugError:
            outcome = "refused"
        except Exception as e:  # noqa: BLE001 - every other exception (Hang, MemoryError too) is the finding
            outcome, error = "crashed", e
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    return outcome, error, [w.category.__name__ for w in caught]


def crash_key(e: BaseException, ext: str) -> str:
    """What makes two crashes the same: the exception type and the innermost genaug frame."""
    frames = traceback.extract_tb(e.__traceback__)
    # The innermost frame in genaug, else the innermost at all: where the bad input escaped.
    ours = [f for f in frames if f"{os.sep}genaug{os.sep}" in f.filename]
    f = (ours or frames or [None])[-1]
    where = f"{Path(f.filename).name}:{f.lineno} {f.name}" if f else "?"
    return f"{'model' if ext == 'safetensors' else 'images'} {type(e).__name__} @ {where}"


def main() -> None:
    """Parse the arguments, then replay one input or fuzz until --n inputs or --seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", nargs="?", type=Path, default=Path(tempfile.gettempdir()) / "genaug-fuzz")
    parser.add_argument("--n", type=int, default=2000, help="inputs to try (at most)")
    parser.add_argument("--seconds", type=float, default=120, help="stop after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first input (with --n 1: one reproducer)")
    parser.add_argument("--timeout", type=float, default=20, help="seconds one input may take")
    parser.add_argument("--replay", type=Path, help="run one saved input and print its traceback")
    parser.add_argument("--source", type=Path, help="fuzz the genaug package in this folder instead of the installed one")
    args = parser.parse_args()
    if args.source is not None:
        sys.path.insert(0, str(args.source.resolve()))

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    # A copy of stderr: fd 2 itself is pointed at a sink during each call (see try_one).
    crash_log = os.fdopen(os.dup(2), "w")
    faulthandler.enable(file=crash_log)
    signal.signal(signal.SIGALRM, _alarm)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

    if args.replay is not None:
        if not args.replay.is_file():
            sys.exit(f"no such file: {args.replay}")
        ext = args.replay.suffix.lstrip(".")
        _, error, warned, native = try_one(args.replay, ext, args.timeout)
        if native:
            print(f"written to stderr by native code: {native.strip()!r}")
        if error is None:
            print(f"no crash: {target_of(ext).__name__} raised a GenaugError or nothing (warnings: {warned or 'none'})")
        else:
            traceback.print_exception(error)
        return

    crashes_dir = args.dir / "crashes"
    crashes_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="inputs-", dir=args.dir))
    (work / "imgs").mkdir()
    for j in range(6):  # what the path-based Parquet seed points at
        (work / "imgs" / f"{j}.png").write_bytes(_encode(_img(j), "PNG"))
    corpus: dict[str, list[bytes]] = {**image_seeds(), "parquet": parquet_seeds(), "npz": npz_seeds(),
                                      "safetensors": checkpoint_seeds(work)}

    crashes: dict[str, Crash] = {}
    by_type: Counter = Counter()
    warned: Counter = Counter()
    outcomes: dict[str, Counter] = {ext: Counter() for ext in corpus}
    native_lines: Counter = Counter()
    tried = 0
    t0 = time.perf_counter()
    for i in range(args.start, args.start + args.n):
        if time.perf_counter() - t0 > args.seconds:
            break
        ext, data, how = make_input(args.seed, i, corpus)
        path = work / f"input.{ext}"
        path.write_bytes(data)
        (crashes_dir / "last-input.txt").write_text(f"--seed {args.seed} --start {i} --n 1: {how}\n")
        (crashes_dir / f"last-input.{ext}").write_bytes(data)
        outcome, error, categories, native = try_one(path, ext, args.timeout)
        if native:
            native_lines[native.strip().splitlines()[0][:100] if native.strip() else "(blank)"] += 1
        tried += 1
        outcomes[ext][outcome] += 1
        warned.update(categories)
        if error is None:
            continue
        key = crash_key(error, ext)
        by_type[type(error).__name__] += 1
        if key in crashes:
            crashes[key].count += 1
            continue
        digest = hashlib.sha256(data).hexdigest()[:10]
        saved = crashes_dir / f"{type(error).__name__}-{digest}.{ext}"
        saved.write_bytes(data)
        message = (str(error).strip().splitlines() or [""])[0][:120]
        crashes[key] = Crash(key, message, f"--seed {args.seed} --start {i} --n 1 ({how})", saved)
    for stale in crashes_dir.glob("last-input.*"):
        stale.unlink()
    elapsed = time.perf_counter() - t0

    print(f"fuzz_io: {tried} inputs in {elapsed:.0f} s (seed {args.seed}); "
          f"{sum(by_type.values())} crashed, {len(crashes)} distinct; inputs under {crashes_dir}")
    print()
    print_table([{"format": ext, "tried": sum(c.values()), "accepted": c["accepted"], "refused": c["refused"],
                  "crashed": c["crashed"]} for ext, c in outcomes.items()])
    if by_type:
        print("\ncrashes by exception type: " + ", ".join(f"{k} {v}" for k, v in by_type.most_common()))
    if warned:
        quiet = {"ResourceWarning", "DeprecationWarning", "PendingDeprecationWarning", "ImportWarning"}
        shown = [f"{k} {v}" for k, v in warned.most_common() if k not in quiet]
        hidden = [f"{k} {v}" for k, v in warned.most_common() if k in quiet]
        if shown:
            print("warnings Python shows by default (each an extra stderr line in the CLI): " + ", ".join(shown))
        if hidden:
            print("warnings ignored by default: " + ", ".join(hidden))
    if native_lines:
        print(f"inputs whose decoding wrote to stderr from native code (past Python; an extra line in the CLI): "
              f"{sum(native_lines.values())}, e.g. " + "; ".join(f"{k!r} x{v}" for k, v in native_lines.most_common(3)))
    for c in sorted(crashes.values(), key=lambda c: -c.count):
        print(f"\n- {c.key} (x{c.count}): {c.message}\n  reproduce: python benchmarks/fuzz_io.py {args.dir} {c.reproducer}"
              f"\n  replay:    python benchmarks/fuzz_io.py --replay {c.saved}")


def _alarm(signum, frame):
    raise Hang("input took longer than --timeout")


if __name__ == "__main__":
    main()
