"""Hostile inputs against the `genaug` command (issue 7): does each one get the answer it should?

    python benchmarks/hostile_inputs.py /tmp/hostile                  # every case (184)
    python benchmarks/hostile_inputs.py /tmp/hostile --only markup    # cases whose group or name holds 'markup'
    python benchmarks/hostile_inputs.py /tmp/hostile --json           # also write DIR/hostile-*/summary.json
    python benchmarks/hostile_inputs.py /tmp/hostile --list           # the cases, without running them
    python benchmarks/hostile_inputs.py /tmp/hostile --source /tmp/old  # test another checkout's genaug

A full run took 6.5 to 9.6 minutes on the project's 2-core CPU machine with
the default 2 workers (each case is a real `python -m genaug` subprocess, ~4 s
of start-up; the few that train use `--epochs 1` on 24 tiny images or on
`digits`); one group takes 1 to 3 minutes. Everything is built under a new folder
DIR/hostile-<time>/: shared fixtures (one checkpoint made with
`genaug fit digits --epochs 1`, a 12 GiB .npz bomb of ~55 MB) in `fx/`, and
one folder per case in `cases/<name>/` holding its own data (`data/`, the
dataset root), a `secret/` folder outside that root with a sentinel image
of one colour, (13, 37, 251), and whatever it writes. Nothing outside DIR
is read or written; device nodes are made with `os.mknod` inside the case
folder (never the system's /dev/null).

Expected behaviour (`expect` of a case):

* refuse — bad input: exit code 2, exactly one non-empty line on stderr,
  starting with "error:", no traceback, no output file and no temp file
  written, every file in the case folder byte-identical afterwards.
* ok — valid but weird input (markup or ESC in names, a legal 253-char
  name): exit 0, the outputs written and readable, markup text printed
  literally, no raw ESC on stdout/stderr.
* any — either of the above is right (the spec leaves it open; `--list`
  shows each such case's note).
* interrupt — SIGINT at a delay (Ctrl-C at start-up): exit 130, one line,
  no partial output or temp file.

Each run is classified `clean` (as expected), `degraded` (safe but not as
specified: exit 2 with two lines, exit 1 with one line, a valid input
refused, markup swallowed, a file outside the root opened before the
refusal, a raw control character other than ESC) or `failed` (a traceback, a file outside the root read into the
output, an input changed, partial/garbage output, a temp file left, a hang,
a raw ESC sequence on the terminal, exit 0 where refusal was expected).
Reads outside the root are seen two ways: the sentinel colour in any
output Parquet, and inotify IN_OPEN events on the case's `secret/` folder.
Cases that differ only in what sits at an outside path (an image, a text
file, nothing) must refuse with the same text (the case folder's path
aside), or the message reveals whether the target exists. Ctrl-C results
depend on timing (which start-up step the signal lands in), so a single
run may differ from the next.

Each subprocess runs under `prlimit --as` (8 GiB of address space) so a memory
bomb fails instead of exhausting the shared machine, with
OMP_NUM_THREADS=1, COLUMNS=250. Markup/ESC cases run with FORCE_COLOR=1 and
TERM=xterm-256color so rich behaves as on a terminal (SGR colour codes are
then allowed; any other escape is not). The unreadable-file cases drop
CAP_DAC_OVERRIDE with `setpriv` when run as root (root reads mode-000
files otherwise); without setpriv they are skipped with a note.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import print_table  # noqa: E402

SENTINEL = (13, 37, 251)
N_IMAGES = 24
# Address space, not RSS: torch + scipy map ~5 GiB of it at start-up.
MEMORY_LIMIT = 8 * 2**30
DEFAULT_TIMEOUT = 120.0
BOMB_BYTES = 12 * 2**30
GROUPS = (
    "1 outside-root",
    "2 outputs",
    "3 markup",
    "4 checkpoints",
    "5 values+bombs",
    "5 ctrl-c",
    "6 extras",
)
MARKUP = ("[/x]", "[link=https://evil.example]x[/link]", "[bold red]boo")
# A file or folder name cannot hold '/', so names use markup without it.
NAME_MARKUP = ("[bold red]boo", "[link=https:evil.example]x", "[blink]x[i]")
ESCAPES = ("\x1b]0;title\x07", "\x1b[2J")
# A legal name: 253 characters (with the suffix), under the 255-byte NAME_MAX.
NAME_253 = "a" * (253 - len(".parquet")) + ".parquet"


class Skip(Exception):
    """A case that cannot run here (e.g. no setpriv as root); reported, not counted."""


@dataclass
class Fixtures:
    """What several cases share, built once: the checkpoint and the .npz bomb."""

    root: Path
    ckpt: Path | None = None
    ckpt_error: str = ""
    npz_bomb: Path | None = None


Setup = Callable[[Path, Fixtures], None]


@dataclass
class Case:
    """One hostile input: how to build it, the genaug arguments, what should happen."""

    group: str
    name: str
    argv: list[str]
    expect: str = "refuse"  # refuse | ok | any | interrupt
    setup: list[Setup] = field(default_factory=list)
    outputs: tuple[str, ...] = ("out.parquet",)  # relative to the case folder
    literal: tuple[str, ...] = ()  # must appear as typed in stdout+stderr
    terminal: bool = False  # FORCE_COLOR: rich acts as on a terminal
    interrupt_after: float | None = None
    no_dac: bool = False  # drop CAP_DAC_OVERRIDE (mode-000 files must be unreadable)
    allow_outside: bool = False  # reading secret/ is what the user asked for
    same_error_as: str | None = None  # refusal text must not differ from this case's
    timeout: float = DEFAULT_TIMEOUT
    note: str = ""


@dataclass
class Result:
    """How one case went: its status, why, and what the command printed."""

    case: Case
    status: str  # clean | degraded | failed | skipped
    reason: str
    rc: int | None = None
    seconds: float = 0.0
    stdout: str = ""
    stderr: str = ""
    folder: str = ""


# -- data builders ------------------------------------------------------------
def rgb(seed: int, size: int = 8) -> np.ndarray:
    """A random 8x8 RGB image whose blue never reaches 251, so no pixel is the sentinel."""
    return np.random.default_rng(seed).integers(0, 201, (size, size, 3), dtype=np.uint8)


def png_bytes(array: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    """`array` encoded in `fmt` (PNG unless told)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def sentinel_png() -> bytes:
    """An 8x8 image of the sentinel colour only: the file outside the root."""
    return png_bytes(np.broadcast_to(np.array(SENTINEL, np.uint8), (8, 8, 3)).copy())


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height gray pixels (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gif_declaring(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen and frame are width x height."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b"\x3b"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 JPEG with its SOF0 size patched to width x height."""
    data = bytearray(png_bytes(rgb(0), "JPEG"))
    at = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def tiff_bad_checksum() -> bytes:
    """A deflate TIFF whose zlib checksum is wrong: libtiff reports it on fd 2 itself, past Python."""
    data = bytearray(png_bytes(rgb(1), "TIFF", compression="tiff_deflate"))
    for magic in (b"\x78\x9c", b"\x78\xda", b"\x78\x01", b"\x78\x5e"):
        at = data.find(magic)
        if at < 0:
            continue
        stream = zlib.decompressobj()
        try:
            stream.decompress(bytes(data[at:]))
        except zlib.error:
            continue
        end = len(data) - len(stream.unused_data)
        data[end - 1] ^= 0xFF  # the last byte of the Adler-32 checksum
        return bytes(data)
    raise RuntimeError("no zlib stream found in the TIFF")


def write(rel: str, content: bytes | str) -> Setup:
    """Setup: a file at `rel` holding `content`."""

    def setup(d: Path, fx: Fixtures) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return setup


def folder(rel: str = "data", classes: tuple[str, ...] = ("a", "b"), n: int = N_IMAGES, names=None) -> Setup:
    """n 8x8 RGB PNGs under d/rel/<class>/ (or directly under d/rel when classes is empty)."""

    def setup(d: Path, fx: Fixtures) -> None:
        for i in range(n):
            sub = d / rel / classes[i % len(classes)] if classes else d / rel
            sub.mkdir(parents=True, exist_ok=True)
            name = names[i] if names else f"{i:02d}.png"
            (sub / name).write_bytes(png_bytes(rgb(i)))

    return setup


def parquet(
    rel: str = "data/data.parquet",
    kind: str = "struct",
    cells: dict | None = None,
    labels=None,
    ids=None,
    n: int = N_IMAGES,
    image_name: str = "image",
    metadata: dict | None = None,
    label_type=None,
) -> Setup:
    """A Parquet dataset of n 8x8 RGB images; `cells` overrides image cells by row.

    kind: struct (Hugging Face {bytes, path}), binary, or path (the images
    written to imgs/ beside the file, cells are relative paths).
    """

    def setup(d: Path, fx: Fixtures) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        images = [png_bytes(rgb(i)) for i in range(n)]
        if kind == "struct":
            col = [{"bytes": b, "path": None} for b in images]
            typ = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        elif kind == "binary":
            col, typ = list(images), pa.binary()
        elif kind == "path":
            (path.parent / "imgs").mkdir(exist_ok=True)
            for i, b in enumerate(images):
                (path.parent / "imgs" / f"{i:02d}.png").write_bytes(b)
            col, typ = [f"imgs/{i:02d}.png" for i in range(n)], pa.string()
        else:
            raise ValueError(kind)
        for i, cell in (cells or {}).items():
            col[i] = _in(cell, d)
        columns = {image_name: pa.array(col, type=typ)}
        if labels is not None:
            columns["label"] = pa.array(labels, type=label_type)
        if ids is not None:
            columns["id"] = pa.array(ids, type=pa.string())
        table = pa.table(columns)
        if metadata:
            table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
        pq.write_table(table, path)

    return setup


def npz(rel: str = "data/data.npz", **arrays) -> Setup:
    """Setup: an .npz of 24 8x8 RGB images as x, `arrays` added or replacing it."""

    def setup(d: Path, fx: Fixtures) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        defaults = {"x": np.stack([rgb(i) for i in range(N_IMAGES)])}
        np.savez(path, **{**defaults, **arrays})

    return setup


def _in(value, d: Path):
    """`value` with '{dir}' (in a string or a cell's path) replaced by the case folder."""
    if isinstance(value, str):
        return value.replace("{dir}", str(d))
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": value["path"].replace("{dir}", str(d))}
    return value


def symlink(rel: str, target: str) -> Setup:
    """Setup: a symbolic link at `rel` to `target` ('{dir}' is the case folder)."""

    def setup(d: Path, fx: Fixtures) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(_in(target, d), d / rel)

    return setup


def hardlink(rel: str, existing: str) -> Setup:
    """Setup: a second name `rel` for the file `existing`."""

    def setup(d: Path, fx: Fixtures) -> None:
        os.link(d / existing, d / rel)

    return setup


def mknod(rel: str, minor: int = 3) -> Setup:
    """Our own character device node (1, minor): 3 behaves as /dev/null, 5 as /dev/zero."""

    def setup(d: Path, fx: Fixtures) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mknod(d / rel, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        except (PermissionError, OSError) as e:
            raise Skip(f"cannot make a device node here ({e.strerror})") from None

    return setup


def fifo(rel: str) -> Setup:
    """Setup: a named pipe at `rel`."""

    def setup(d: Path, fx: Fixtures) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / rel)

    return setup


def chmod(rel: str, mode: int) -> Setup:
    """Setup: `rel` given permission bits `mode`."""

    def setup(d: Path, fx: Fixtures) -> None:
        os.chmod(d / rel, mode)

    return setup


def mkdir(rel: str) -> Setup:
    """Setup: an empty folder at `rel` (and its parents)."""

    def setup(d: Path, fx: Fixtures) -> None:
        (d / rel).mkdir(parents=True, exist_ok=True)

    return setup


def copy_npz_bomb(rel: str = "data/bomb.npz") -> Setup:
    """Setup: the shared .npz bomb, hard-linked to `rel` (no 55 MB copy per case)."""

    def setup(d: Path, fx: Fixtures) -> None:
        if fx.npz_bomb is None:
            raise Skip("the .npz bomb fixture was not built")
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(fx.npz_bomb, d / rel)

    return setup


def npz_lying_header(rel: str = "data/lie.npz") -> Setup:
    """An .npz whose x.npy header declares 10^12 bytes and holds 100."""

    def setup(d: Path, fx: Fixtures) -> None:
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000000, 1000, 1000), }"
        header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
        npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(100)
        with zipfile.ZipFile(d / rel, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("x.npy", npy)

    return setup


def ckpt(rel: str = "m.safetensors", tensors=None, meta=None, raw: str | None | bool = False) -> Setup:
    """A copy of the shared checkpoint, its tensors and/or metadata rewritten.

    `raw` replaces the metadata JSON text verbatim (None drops the key).
    """

    def setup(d: Path, fx: Fixtures) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        if fx.ckpt is None:
            raise Skip(f"no base checkpoint ({fx.ckpt_error})")
        with safe_open(str(fx.ckpt), framework="numpy") as f:
            arrays = {k: f.get_tensor(k) for k in f.keys()}
            doc = json.loads(f.metadata()["genaug"])
        if tensors is not None:
            arrays = tensors(arrays)
        if meta is not None:
            doc = meta(doc)
        if raw is False:
            md = {"genaug": json.dumps(doc)}
        elif raw is None:
            md = {"other": "x"}
        else:
            md = {"genaug": raw}
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(d / rel), metadata=md)

    return setup


def put(key: str, value) -> Callable[[dict], dict]:
    """A metadata edit: set the dotted `key` to `value`."""

    def edit(doc: dict) -> dict:
        *parents, last = key.split(".")
        target = doc
        for p in parents:
            target = target[p]
        target[last] = value
        return doc

    return edit


def nan_all(arrays: dict) -> dict:
    """Every tensor of a checkpoint filled with NaN."""
    return {k: np.full_like(v, np.nan) for k, v in arrays.items()}


def poke(value: float, which: str | None = None) -> Callable[[dict], dict]:
    """One element of one float tensor (the first, or `which`) set to `value`."""

    def edit(arrays: dict) -> dict:
        name = which or sorted(arrays)[0]
        a = arrays[name].copy()
        a.reshape(-1)[0] = value
        return {**arrays, name: a}

    return edit


def truncate(rel: str, keep: int) -> Setup:
    """Setup: the file `rel` cut to its first `keep` bytes."""

    def setup(d: Path, fx: Fixtures) -> None:
        data = (d / rel).read_bytes()
        (d / rel).write_bytes(data[:keep])

    return setup


def build_fixtures(root: Path, need_ckpt: bool, need_bomb: bool) -> Fixtures:
    """The shared checkpoint (the real CLI, so it is what users get) and the .npz bomb."""
    fx = Fixtures(root=root)
    root.mkdir(parents=True, exist_ok=True)
    if need_ckpt:
        _build_checkpoint(fx)
    if need_bomb:
        fx.npz_bomb = _build_npz_bomb(root / "bomb.npz")
    return fx


def _build_checkpoint(fx: Fixtures) -> None:
    root = fx.root
    ckpt_path = root / "m.safetensors"
    cmd = [sys.executable, "-m", "genaug", "fit", "digits", "-o", str(ckpt_path), "--epochs", "1", "--quiet"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env(False), cwd=root)
    if p.returncode == 0 and ckpt_path.is_file():
        fx.ckpt = ckpt_path
    else:
        fx.ckpt_error = f"genaug fit exited {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:150]}"


def _build_npz_bomb(bomb: Path) -> Path:
    """12 GiB of zeros as x (3,145,728 images of 64x64), deflated to ~55 MB in ~15 s.

    Over genaug's 8 GiB in-memory cap and over the 8 GiB address-space limit
    the cases run under, so a reader that trusts the header fails fast.
    """
    n = BOMB_BYTES // 4096
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, 64, 64), }}"
    header = header + " " * (63 - (10 + len(header)) % 64) + "\n"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, zf.open("x.npy", "w", force_zip64=True) as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        zeros = bytes(2**24)
        for _ in range(BOMB_BYTES // len(zeros)):
            f.write(zeros)
    return bomb


# -- the cases ------------------------------------------------------------------
def _args(text: str) -> list[str]:
    return shlex.split(text)


AUG = "augment {data} -o out.parquet --keep-originals --quiet"
DETECT_CKPT = "detect-outliers digits -o out.parquet --model-path m.safetensors --quiet"
SYNTH = "synthesize --model-path m.safetensors -n 8 -o out.parquet --quiet"


def cases() -> list[Case]:
    """Every hostile case, grouped by the findings of issue 7."""
    out: list[Case] = []

    def add(group, name, argv, expect="refuse", setup=(), **kw):
        argv = _args(argv) if isinstance(argv, str) else argv
        out.append(Case(group, name, argv, expect, list(setup), **kw))

    pq_data = "data/data.parquet"
    aug_pq = AUG.format(data=pq_data)
    aug_dir = AUG.format(data="data")

    # 1. Reads outside the dataset root -------------------------------------------
    g = GROUPS[0]
    outside = {
        "pq-path-dotdot": {3: "../secret/target.png"},
        "pq-path-sub-dotdot": {3: "imgs/../../secret/target.png"},
        "pq-path-absolute": {3: "{dir}/secret/target.png"},
        "pq-path-dotdot-deep": {3: "../../" * 12 + "{dir}/secret/target.png"},
    }
    for name, cells in outside.items():
        add(g, name, aug_pq, setup=[parquet(kind="path", cells=cells)])
        if name in ("pq-path-dotdot", "pq-path-absolute"):  # the Hugging Face struct's path, too
            struct_cells = {i: {"bytes": None, "path": p} for i, p in cells.items()}
            add(g, name.replace("pq-path", "pq-struct"), aug_pq, setup=[parquet(cells=struct_cells)])
    add(g, "pq-path-symlink-file-out", aug_pq,
        setup=[parquet(kind="path", cells={3: "link.png"}), symlink("data/link.png", "../secret/target.png")])
    add(g, "pq-path-symlink-dir-out", aug_pq,
        setup=[parquet(kind="path", cells={3: "sec/target.png"}), symlink("data/sec", "../secret")])
    add(g, "pq-path-info", f"info {pq_data}", setup=[parquet(kind="path", cells={3: "../secret/target.png"})],
        outputs=())
    add(g, "pq-path-detect", f"detect-outliers {pq_data} -o out.parquet --epochs 1 --quiet",
        setup=[parquet(kind="path", cells={3: "../secret/target.png"})])
    add(g, "pq-path-dev-zero", aug_pq, setup=[parquet(kind="path", cells={3: "/dev/zero"})], timeout=60)
    add(g, "pq-path-nul-byte", aug_pq, setup=[parquet(kind="path", cells={3: "imgs/03.png\x00../../x"})])
    add(g, "pq-path-url", aug_pq, setup=[parquet(kind="path", cells={3: "http://evil.example/x.png"})])
    add(g, "pq-path-inside (control)", aug_pq, "ok", setup=[parquet(kind="path")])
    add(g, "pq-path-inside-dotdot (control)", aug_pq, "ok",
        setup=[parquet(kind="path", cells={3: "imgs/../imgs/03.png"})])
    add(g, "pq-path-absolute-inside", aug_pq, "any",
        setup=[parquet(kind="path", cells={3: "{dir}/data/imgs/03.png"})],
        note="an absolute path that resolves inside the root: refusing or reading are both defensible")
    add(g, "pq-path-outside-allowed", aug_pq + " --allow-outside-root", "ok", allow_outside=True,
        setup=[parquet(kind="path", cells={3: "../secret/target.png"})])
    # Existence must not leak: the refusal reads the same whether the target exists or not.
    add(g, "pq-exists-image", aug_pq, setup=[parquet(kind="path", cells={3: "../secret/probe.png"}),
                                             write("secret/probe.png", sentinel_png())])
    add(g, "pq-exists-text", aug_pq, same_error_as="pq-exists-image",
        setup=[parquet(kind="path", cells={3: "../secret/probe.png"}), write("secret/probe.png", "not an image\n")])
    add(g, "pq-exists-missing", aug_pq, same_error_as="pq-exists-image",
        setup=[parquet(kind="path", cells={3: "../secret/probe.png"})])
    # Folders.
    add(g, "dir-symlink-file-out", aug_dir, setup=[folder(), symlink("data/a/zz.png", "../../secret/target.png")])
    add(g, "dir-symlink-class-out", aug_dir, setup=[folder(), symlink("data/c", "../secret")])
    add(g, "dir-symlink-loop-parent", aug_dir, setup=[folder(), symlink("data/a/loop", "..")], timeout=90)
    add(g, "dir-symlink-self", aug_dir, setup=[folder(), symlink("data/a/self.png", "self.png")])
    add(g, "dir-symlink-dev-zero", aug_dir, setup=[folder(), symlink("data/a/z.png", "/dev/zero")], timeout=60)
    add(g, "dir-symlink-info", "info data", setup=[folder(), symlink("data/a/zz.png", "../../secret/target.png")],
        outputs=())
    add(g, "dir-symlink-detect", "detect-outliers data -o out.parquet --epochs 1 --quiet",
        setup=[folder(), symlink("data/a/zz.png", "../../secret/target.png")])
    add(g, "dir-exists-image", aug_dir, setup=[folder(), symlink("data/a/zz.png", "../../secret/probe.png"),
                                               write("secret/probe.png", sentinel_png())])
    add(g, "dir-exists-missing", aug_dir, same_error_as="dir-exists-image",
        setup=[folder(), symlink("data/a/zz.png", "../../secret/probe.png")])
    add(g, "dir-exists-text", aug_dir, same_error_as="dir-exists-image",
        setup=[folder(), symlink("data/a/zz.png", "../../secret/probe.png"), write("secret/probe.png", "text\n")])
    add(g, "dir-symlink-inside", aug_dir, "any", setup=[folder(), symlink("data/a/zz.png", "00.png")],
        note="a symlink that stays inside the root: not a read outside it")
    add(g, "dir-root-is-symlink", AUG.format(data="datalink"), "ok", setup=[folder(), symlink("datalink", "data")],
        note="DATA itself is a link the user typed; its target is the root")
    add(g, "dir-symlink-out-allowed", aug_dir + " --allow-outside-root", "ok", allow_outside=True,
        setup=[folder(), symlink("data/a/zz.png", "../../secret/target.png")])

    # 2. Outputs destroying inputs ---------------------------------------------------
    g = GROUPS[1]
    model = [ckpt()]
    add(g, "detect-o-is-model", "detect-outliers digits -o m.safetensors --model-path m.safetensors --quiet",
        setup=model, outputs=())
    add(g, "augment-o-is-model", "augment digits -o m.safetensors --synthetic-ratio 0.5 --model-path m.safetensors --quiet",
        setup=model, outputs=())
    add(g, "synth-o-is-model", "synthesize --model-path m.safetensors -n 8 -o m.safetensors --quiet",
        setup=model, outputs=())
    add(g, "augment-o-is-data", f"augment {pq_data} -o {pq_data} --quiet", setup=[parquet()], outputs=())
    add(g, "detect-o-is-data", f"detect-outliers {pq_data} -o {pq_data} --epochs 1 --quiet", setup=[parquet()],
        outputs=())
    add(g, "rebalance-o-is-data", f"rebalance {pq_data} -o {pq_data} --epochs 1 --quiet", setup=[parquet()],
        outputs=())
    add(g, "augment-o-is-data-spelled", f"augment data/../data/data.parquet -o ./{pq_data} --quiet",
        setup=[parquet()], outputs=())
    add(g, "augment-o-is-data-hardlink", f"augment {pq_data} -o hard.parquet --quiet",
        setup=[parquet(), hardlink("hard.parquet", pq_data)], outputs=())
    add(g, "augment-o-is-image-in-data", "augment data -o data/a/00.png --quiet", setup=[folder()], outputs=())
    add(g, "augment-o-is-recipe", "augment data -o r.yaml --recipe r.yaml --quiet",
        setup=[folder(), write("r.yaml", "transform:\n  __class_fullname__: Compose\n  transforms: []\n")],
        outputs=())
    add(g, "rebalance-resampled-is-o", "rebalance digits -o out.parquet --resampled out.parquet --model-path m.safetensors --quiet",
        setup=model)
    add(g, "rebalance-resampled-is-data", f"rebalance {pq_data} -o out.parquet --resampled {pq_data} --epochs 1 --quiet",
        setup=[parquet()])
    add(g, "rebalance-resampled-is-folder", "rebalance digits -o out.parquet --resampled sub --model-path m.safetensors --quiet",
        setup=model + [mkdir("sub")], note="both or neither: -o must not be written either")
    add(g, "rebalance-o-is-device", "rebalance digits -o dev.parquet --resampled res.parquet --model-path m.safetensors --quiet",
        setup=model + [mknod("dev.parquet")], outputs=("res.parquet",))
    add(g, "augment-o-device", aug_dir, setup=[folder(), mknod("out.parquet")])
    add(g, "fit-o-device", "fit digits -o dev.safetensors --epochs 1 --quiet", setup=[mknod("dev.safetensors")],
        outputs=())
    add(g, "augment-o-folder", "augment data -o sub --quiet", setup=[folder(), mkdir("sub")], outputs=())
    add(g, "augment-o-symlink-victim", aug_dir,
        setup=[folder(), parquet("secret/victim.parquet"), symlink("out.parquet", "secret/victim.parquet")])
    add(g, "augment-o-symlink-dangling", aug_dir, setup=[folder(), symlink("out.parquet", "secret/new.parquet")])
    add(g, "augment-o-fifo", aug_dir, setup=[folder(), fifo("out.parquet")], timeout=60)
    add(g, "augment-o-empty", ["augment", "data", "-o", "", "--quiet"], setup=[folder()], outputs=())
    add(g, "augment-o-253-chars", f"augment data -o {NAME_253} --quiet", "ok", setup=[folder()], outputs=(NAME_253,))
    name255 = "b" * (255 - len(".parquet")) + ".parquet"
    name256 = "c" * (256 - len(".parquet")) + ".parquet"
    name253s = "d" * (253 - len(".safetensors")) + ".safetensors"
    add(g, "fit-o-253-chars", f"fit digits -o {name253s} --epochs 1 --quiet", "ok", outputs=(name253s,))
    add(g, "rebalance-253-chars-both", f"rebalance digits -o {NAME_253} --resampled {name253s[:-12]}.parquet "
        "--model-path m.safetensors --quiet", "ok", setup=model, outputs=(NAME_253, f"{name253s[:-12]}.parquet"))
    add(g, "augment-o-overwrite-previous (control)", aug_dir, "ok", setup=[folder(), parquet("out.parquet")])
    add(g, "augment-o-readonly-folder", "augment data -o ro/out.parquet --quiet", setup=[folder(), mkdir("ro"),
        chmod("ro", 0o555)], outputs=("ro/out.parquet",), no_dac=True)

    # 3. User text as markup ----------------------------------------------------------
    g = GROUPS[2]
    for i, text in enumerate(NAME_MARKUP[:2] + ESCAPES):
        lit = (text,) if text in NAME_MARKUP else ()
        kind = "markup" if text in NAME_MARKUP else "esc"
        add(g, f"class-name-{kind}{i}-info", "info data", "ok", setup=[folder(classes=(text, "b"))], outputs=(),
            literal=lit, terminal=True)
    for i, text in enumerate(MARKUP[:2] + ESCAPES):
        lit = (text,) if text in MARKUP else ()
        kind = "markup" if text in MARKUP else "esc"
        target = f"{text}.parquet"  # '/' in the markup makes folders: they are made first
        # A path prints normalised ('//' as '/'): that, not the typed text, is what must show literally.
        add(g, f"o-name-{kind}{i}", ["augment", "data", "-o", target, "--quiet"], "ok",
            setup=[folder(), mkdir(os.path.dirname(target) or ".")], outputs=(target,),
            literal=tuple(str(Path(t)) for t in lit), terminal=True)
    for kind, texts in (("markup", MARKUP), ("esc", ESCAPES)):
        lit = texts if kind == "markup" else ()
        add(g, f"pq-ids-{kind}-detect", f"detect-outliers {pq_data} -o out.parquet --epochs 1 --quiet --top 30",
            "ok", setup=[parquet(ids=[f"{texts[j % len(texts)]}{j}" for j in range(N_IMAGES)])],
            literal=tuple(f"{t}{j}" for j, t in enumerate(lit)), terminal=True)
        add(g, f"pq-labels-{kind}-info", f"info {pq_data}", "ok",
            setup=[parquet(labels=[texts[j % len(texts)] for j in range(N_IMAGES)])],
            outputs=(), literal=lit, terminal=True)
        add(g, f"missing-data-{kind}", ["info", f"{texts[0]}nothing"], outputs=(), terminal=True)
    names = NAME_MARKUP + ESCAPES
    add(g, "class-names-all-detect", "detect-outliers data -o out.parquet --epochs 1 --quiet --top 30", "ok",
        setup=[folder(classes=names)], literal=tuple(f"{t}/" for t in NAME_MARKUP), terminal=True)
    add(g, "file-names-all-detect", "detect-outliers data -o out.parquet --epochs 1 --quiet --top 30", "ok",
        setup=[folder(classes=(), names=[f"{names[i % len(names)]}{i}.png" for i in range(N_IMAGES)])],
        literal=tuple(f"{t}{i}.png" for i, t in enumerate(NAME_MARKUP)), terminal=True)
    add(g, "empty-folder-markup-name", ["info", "[/x]"], setup=[mkdir("[/x]")], outputs=(), terminal=True)
    add(g, "corrupt-image-esc-name", "info data", setup=[folder(), write("data/a/\x1b[2Jbad.png", b"not a png")],
        outputs=(), terminal=True)
    add(g, "corrupt-image-newline-name", "info data",
        setup=[folder(), write("data/a/bad\nerror: all good.png", b"not a png")], outputs=(), terminal=True,
        note="a newline in a name must not split the one-line error")
    add(g, "pq-genaug-command-esc-info", f"info {pq_data}", "ok",
        setup=[parquet(metadata={"genaug": json.dumps({"version": "0", "command": "genaug \x1b]0;title\x07 \x1b[2J"})})],
        outputs=(), terminal=True)
    add(g, "pq-hf-classlabel-markup-info", f"info {pq_data}", "ok",
        setup=[parquet(labels=[0, 1] * 12, metadata={"huggingface": json.dumps(
            {"info": {"features": {"label": {"_type": "ClassLabel", "names": ["[/x]", "\x1b[2J"]}}}})})],
        outputs=(), literal=("[/x]",), terminal=True)
    add(g, "ckpt-class-names-info", "info m.safetensors", "ok",
        setup=[ckpt(meta=put("class_names", ["[/x]", "\x1b]0;title\x07", "[link=https://evil.example]x[/link]"] + list("3456789")))],
        outputs=(), literal=("[/x]",), terminal=True)
    add(g, "synth-label-esc", ["synthesize", "--model-path", "m.safetensors", "-n", "8", "-o", "out.parquet",
                               "--label", "\x1b[2J[/x]", "--quiet"], setup=model, terminal=True)
    add(g, "model-option-key-markup", ["fit", "digits", "-o", "x.safetensors", "--epochs", "1", "--quiet",
                                       "--model-option", "[/x]\x1b[2J=1"], outputs=("x.safetensors",), terminal=True)
    add(g, "image-column-esc", ["info", pq_data, "--image-column", "\x1b[2J[/x]"], setup=[parquet()], outputs=(),
        terminal=True)
    add(g, "recipe-path-esc", ["augment", "data", "-o", "out.parquet", "--recipe", "\x1b[2J[/x].yaml", "--quiet"],
        setup=[folder()], terminal=True)

    # 4. Checkpoints -------------------------------------------------------------------
    g = GROUPS[3]
    bad = {
        "nan-all-weights-detect": (DETECT_CKPT, dict(tensors=nan_all)),
        "nan-all-weights-synth": (SYNTH, dict(tensors=nan_all)),
        "nan-one-weight-detect": (DETECT_CKPT, dict(tensors=poke(np.nan))),
        "inf-one-weight-synth": (SYNTH, dict(tensors=poke(np.inf, "from_latent.weight"))),
        "nan-weights-augment-synth": ("augment digits -o out.parquet --synthetic-ratio 0.5 --model-path m.safetensors --quiet",
                                      dict(tensors=nan_all)),
        "nan-calibration-detect": (DETECT_CKPT, dict(meta=_cal([float("nan")] * 50))),
        "str-calibration-detect": (DETECT_CKPT, dict(meta=_cal(["a"] * 50))),
        "empty-calibration-detect": (DETECT_CKPT, dict(meta=_cal([]))),
        "meta-list-info": ("info m.safetensors", dict(raw="[1, 2]")),
        "meta-not-json-info": ("info m.safetensors", dict(raw="{not json")),
        "meta-missing-info": ("info m.safetensors", dict(raw=None)),
        "family-int-detect": (DETECT_CKPT, dict(meta=put("family", 5))),
        "family-unknown-detect": (DETECT_CKPT, dict(meta=put("family", "os.system"))),
        "image-shape-str-detect": (DETECT_CKPT, dict(meta=put("image_shape", "abc"))),
        "image-shape-zero-detect": (DETECT_CKPT, dict(meta=put("image_shape", [0, 8, 8]))),
        "image-shape-huge-synth": (SYNTH, dict(meta=put("image_shape", [1, 10**6, 10**6]))),
        "num-classes-str-detect": (DETECT_CKPT, dict(meta=put("num_classes", "ten"))),
        "num-classes-1e12-synth": (SYNTH, dict(meta=put("num_classes", 10**12))),
        "latent-dim-1e12-synth": (SYNTH, dict(meta=put("init_args.latent_dim", 10**12))),
        "latent-dim-str-detect": (DETECT_CKPT, dict(meta=put("init_args.latent_dim", "abc"))),
        "init-args-list-detect": (DETECT_CKPT, dict(meta=put("init_args", [32]))),
        "class-names-int-info": ("info m.safetensors", dict(meta=put("class_names", 7))),
        "training-str-info": ("info m.safetensors", dict(meta=put("training", "x"))),
        "format-version-999-detect": (DETECT_CKPT, dict(meta=put("format_version", 999))),
        "missing-tensor-detect": (DETECT_CKPT, dict(tensors=lambda a: {k: v for k, v in a.items() if k != "up.0.bias"})),
    }
    for name, (argv, kw) in bad.items():
        add(g, name, argv, setup=[ckpt(**kw)], outputs=("out.parquet",) if "-o" in argv else ())
    add(g, "shape-mismatch-detect", "detect-outliers data -o out.parquet --model-path m.safetensors --quiet",
        setup=model + [folder()])
    add(g, "truncated-detect", DETECT_CKPT, setup=model + [truncate("m.safetensors", 5000)])
    add(g, "header-len-huge-info", "info m.safetensors",
        setup=[write("m.safetensors", struct.pack("<Q", 2**63) + b"{}")], outputs=())
    add(g, "zero-byte-detect", DETECT_CKPT, setup=[write("m.safetensors", b"")])
    add(g, "ckpt-is-folder-detect", DETECT_CKPT, setup=[mkdir("m.safetensors")])
    add(g, "ckpt-is-fifo-detect", DETECT_CKPT, setup=[fifo("m.safetensors")], timeout=60)
    add(g, "good-ckpt-detect (control)", DETECT_CKPT, "ok", setup=model)

    # 5. Smaller: bombs, labels, numbers --------------------------------------------------
    g = GROUPS[4]
    bombs = {
        "png-bomb-400Mpx": png_declaring(20000, 20000),
        "png-bomb-100Mpx": png_declaring(10000, 10000),
        "gif-bomb-4Gpx": gif_declaring(65535, 65535),
        "jpeg-bomb-4Gpx": jpeg_declaring(65500, 65500),
    }
    for name, data in bombs.items():
        ext = name.split("-")[0].replace("jpeg", "jpg")
        add(g, name, "info data", setup=[folder(), write(f"data/a/bomb.{ext}", data)], outputs=())
    add(g, "npz-bomb-12GiB", "info data/bomb.npz", setup=[copy_npz_bomb()], outputs=(), timeout=180)
    add(g, "npz-header-1TB", "info data/lie.npz", setup=[mkdir("data"), npz_lying_header()], outputs=())
    add(g, "npz-y-nan", "info data/data.npz", setup=[npz(y=np.array([np.nan, 1.0] * 12))], outputs=())
    add(g, "npz-y-1e6-fit", "fit data/data.npz -o x.safetensors --conditional --epochs 1 --quiet",
        setup=[npz(y=np.array([0, 10**6] * 12))], outputs=("x.safetensors",))
    add(g, "pq-label-nan", f"info {pq_data}", setup=[parquet(labels=[float("nan"), 1.0] * 12)], outputs=())
    add(g, "pq-label-float", f"info {pq_data}", setup=[parquet(labels=[0.5, 1.5] * 12)], outputs=())
    add(g, "pq-label-bool", f"info {pq_data}", setup=[parquet(labels=[True, False] * 12)], outputs=())
    add(g, "pq-label-1e6-fit", f"fit {pq_data} -o x.safetensors --conditional --epochs 1 --quiet",
        setup=[parquet(labels=[0, 10**6] * 12)], outputs=("x.safetensors",))
    add(g, "pq-label-float-integral", f"info {pq_data}", "any", setup=[parquet(labels=[0.0, 1.0] * 12)], outputs=(),
        note="0.0/1.0 (what pandas writes for ints with a gap): reading them as classes 0, 1 is defensible")
    fit = "fit digits -o x.safetensors --epochs 1 --quiet"
    values = {
        "lr-1e10": f"{fit} --lr 1e10",
        "lr-nan": f"{fit} --lr nan",
        "model-option-abc": f"{fit} --model-option latent_dim=abc",
        "model-option-1e12-int": f"{fit} --model-option latent_dim=1000000000000",
        "model-option-unknown": f"{fit} --model-option evil=1",
        "seed-1e23": f"{fit} --seed 1e23",
        "image-size-100000": f"{fit} --image-size 100000",
    }
    for name, argv in values.items():
        add(g, name, argv, outputs=("x.safetensors",))
    add(g, "seed-negative", f"{fit} --seed -1", "any", outputs=("x.safetensors",),
        note="a negative seed: accept (mod 2^64) or refuse")
    detect = "detect-outliers digits -o out.parquet --model-path m.safetensors --quiet"
    synth = "synthesize --model-path m.safetensors -o out.parquet --quiet"
    reb = "rebalance digits -o out.parquet --model-path m.safetensors --quiet"
    with_model = {
        "iwae-k-0": f"{detect} --iwae-k 0",
        "iwae-k-1e9": f"{detect} --iwae-k 1000000000",
        "fdr-1.5": f"{detect} --fdr 1.5",
        "fdr-nan": f"{detect} --fdr nan",
        "contamination-1.5": f"{detect} --contamination 1.5",
        "temperature-nan": f"{synth} -n 8 --temperature nan",
        "temperature-negative": f"{synth} -n 8 --temperature -1",
        "synth-n-1e12": f"{synth} -n 1000000000000",
        "synth-n-negative": f"{synth} -n -5",
        "copies-negative": "augment digits -o out.parquet --quiet --copies -1",
        "copies-1e9": "augment digits -o out.parquet --quiet --copies 1000000000",
        "synthetic-ratio-nan": "augment digits -o out.parquet --quiet --synthetic-ratio nan --model-path m.safetensors",
        "rebalance-size-negative": f"{reb} --size -1",
        "rebalance-alpha-nan": f"{reb} --alpha nan",
        "rebalance-synthesize-1e12": f"{reb} --synthesize 1000000000000",
    }
    for name, argv in with_model.items():
        add(g, name, argv, setup=model)
    add(g, "folds-1", f"detect-outliers {pq_data} -o out.parquet --epochs 1 --quiet --folds 1", setup=[parquet()])

    # 5. Ctrl-C at start-up -----------------------------------------------------------------
    g = GROUPS[5]
    for delay in (0.1, 0.3, 0.6, 1.0, 2.0, 3.0):
        add(g, f"sigint-fit-{delay}s", "fit digits -o m.safetensors --epochs 5 --quiet", "interrupt",
            outputs=("m.safetensors",), interrupt_after=delay)
    for delay in (2.0,):
        add(g, f"sigint-detect-{delay}s", "detect-outliers digits -o out.parquet --epochs 2 --quiet", "interrupt",
            interrupt_after=delay)
    add(g, "sigint-augment-2.5s", "augment digits -o out.parquet --copies 4 --quiet", "interrupt", interrupt_after=2.5)

    # 6. Extras a hostile user tries ----------------------------------------------------------
    g = GROUPS[6]
    add(g, "unicode-rtl-class", "info data", "ok", setup=[folder(classes=("\u202eevil", "b"))], outputs=(),
        terminal=True)
    add(g, "unicode-emoji-cjk-detect", "detect-outliers data -o out.parquet --epochs 1 --quiet", "ok",
        setup=[folder(classes=("\U0001f4a9", "\u732b"))], terminal=True)
    add(g, "invalid-utf8-file-name", AUG.format(data="data"), "any",
        setup=[folder(), write(os.fsdecode(b"data/a/\xff\xfe.png"), png_bytes(rgb(99)))],
        note="a name that is not UTF-8 (Linux allows it): read it or refuse, never crash")
    add(g, "tiff-native-stderr", "info data", setup=[folder(), write("data/a/bad.tiff", tiff_bad_checksum())],
        outputs=(), note="libtiff prints its own line on fd 2; the user must still see one line")
    add(g, "zero-byte-parquet", f"info {pq_data}", setup=[write(pq_data, b"")], outputs=())
    add(g, "zero-byte-npz", "info data/data.npz", setup=[write("data/data.npz", b"")], outputs=())
    add(g, "zero-byte-png-in-folder", "info data", setup=[folder(), write("data/a/empty.png", b"")], outputs=())
    add(g, "zero-row-parquet", f"info {pq_data}", setup=[parquet(n=0)], outputs=())
    add(g, "empty-folder", "info data", setup=[mkdir("data")], outputs=())
    add(g, "npz-zero-images", "info data/data.npz", setup=[npz(x=np.zeros((0, 8, 8), np.uint8))], outputs=())
    add(g, "pq-image-bytes-garbage", f"info {pq_data}", setup=[parquet(cells={3: {"bytes": b"\x89PNG garbage",
                                                                                 "path": None}})], outputs=())
    add(g, "fifo-as-data", "info data/x.parquet", setup=[fifo("data/x.parquet")], outputs=(), timeout=60)
    add(g, "fifo-in-folder", "info data", setup=[folder(), fifo("data/a/zz.png")], outputs=(), timeout=60)
    add(g, "device-in-folder", "info data", setup=[folder(), mknod("data/a/zz.png", 5)], outputs=(), timeout=60)
    add(g, "unreadable-image", "info data", setup=[folder(), chmod("data/a/00.png", 0)], outputs=(), no_dac=True)
    add(g, "unreadable-checkpoint", DETECT_CKPT, setup=model + [chmod("m.safetensors", 0)], no_dac=True)
    add(g, "mixed-formats-info", "info data", "ok", setup=[folder(), *_odd_formats()], outputs=())
    add(g, "recipe-python-tag", "augment data -o out.parquet --recipe r.yaml --quiet",
        setup=[folder(), write("r.yaml", "!!python/object/apply:os.system ['touch pwned']\n")])
    add(g, "recipe-billion-laughs", "augment data -o out.parquet --recipe r.yaml --quiet",
        setup=[folder(), write("r.yaml", _billion_laughs())], timeout=60)
    add(g, "recipe-unknown-transform", "augment data -o out.parquet --recipe r.yaml --quiet",
        setup=[folder(), write("r.yaml", "transform:\n  __class_fullname__: os.system\n  command: touch pwned\n")])
    add(g, "recipe-missing", "augment data -o out.parquet --recipe nope.yaml --quiet", setup=[folder()])
    add(g, "recipe-is-fifo", "augment data -o out.parquet --recipe r.yaml --quiet", setup=[folder(), fifo("r.yaml")],
        timeout=60)
    return out


def _cal(scores: list) -> Callable[[dict], dict]:
    return put("calibration.bits_per_dim", scores)


def _billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    return "\n".join(lines) + "\ntransform: *j\n"


def _odd_formats() -> list[Setup]:
    """Valid images in every format the readers claim (all 8x8, so they stack)."""
    img = rgb(7)
    pal = Image.fromarray(img).convert("P")
    pal_buf = io.BytesIO()
    pal.save(pal_buf, format="PNG", transparency=0)
    gray16 = io.BytesIO()
    Image.fromarray((np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)).save(gray16, format="PNG")
    cmyk = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(cmyk, format="JPEG")
    frames = [Image.fromarray(rgb(i)) for i in range(50)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    return [
        write("data/b/x.bmp", png_bytes(img, "BMP")),
        write("data/b/x.webp", png_bytes(img, "WEBP", lossless=True)),
        write("data/b/x.tiff", png_bytes(img, "TIFF")),
        write("data/b/x.gif", png_bytes(img, "GIF")),
        write("data/b/anim.gif", anim.getvalue()),
        write("data/b/pal.png", pal_buf.getvalue()),
        write("data/b/gray16.png", gray16.getvalue()),
        write("data/b/cmyk.jpg", cmyk.getvalue()),
        write("data/b/UPPER.PNG", png_bytes(img)),
    ]


# -- running one case ---------------------------------------------------------------------
def _env(terminal: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GENAUG_DEBUG", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="250", LINES="50", PYTHONUNBUFFERED="1")
    if terminal:
        env.update(FORCE_COLOR="1", TERM="xterm-256color")
    return env


class OpenWatch:
    """inotify on a folder: which files in it were opened (IN_OPEN), by anyone, since start."""

    IN_OPEN, IN_ISDIR, IN_NONBLOCK = 0x20, 0x40000000, 0o4000

    def __init__(self, folder: Path) -> None:
        self.fd = -1
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            fd = libc.inotify_init1(self.IN_NONBLOCK)
            if fd >= 0 and libc.inotify_add_watch(fd, os.fsencode(folder), self.IN_OPEN) >= 0:
                self.fd = fd
            elif fd >= 0:
                os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    def opened(self) -> list[str]:
        if self.fd < 0:
            return []
        names = []
        try:
            while True:
                try:
                    buf = os.read(self.fd, 65536)
                except BlockingIOError:
                    break
                at = 0
                while at + 16 <= len(buf):
                    _, mask, _, length = struct.unpack_from("iIII", buf, at)
                    name = buf[at + 16 : at + 16 + length].rstrip(b"\0")
                    if not mask & self.IN_ISDIR and name:
                        names.append(os.fsdecode(name))
                    at += 16 + length
        finally:
            os.close(self.fd)
            self.fd = -1
        return names


def snapshot(d: Path) -> dict[str, tuple]:
    """Every entry under d: content hash for files, link target, or device numbers; nothing opened but files."""
    state = {}
    for folder_, dirs, files in os.walk(d):
        for name in dirs + files:
            path = os.path.join(folder_, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, d)
            if stat.S_ISLNK(st.st_mode):
                state[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                state[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                state[rel] = ("file", h.hexdigest())
            else:
                state[rel] = ("special", stat.S_IFMT(st.st_mode), st.st_rdev)
    return state


def _apply_setup(case: Case, d: Path, fx: Fixtures) -> None:
    for step in case.setup:
        step(d, fx)


def run_case(case: Case, root: Path, fx: Fixtures) -> Result:
    """Build the case in its own folder, run genaug on it, and classify what happened."""
    d = root / "cases" / re.sub(r"[^A-Za-z0-9_.^-]+", "_", case.name)
    d.mkdir(parents=True)
    try:
        (d / "secret").mkdir()
        (d / "secret" / "target.png").write_bytes(sentinel_png())
        (d / "secret" / "notes.txt").write_text("private\n")
        (d / "data").mkdir(exist_ok=True)
        _apply_setup(case, d, fx)
    except Skip as e:
        return Result(case, "skipped", str(e), folder=str(d))
    cmd = [sys.executable, "-m", "genaug", *[a.replace("{dir}", str(d)) for a in case.argv]]
    if shutil.which("prlimit"):
        cmd = ["prlimit", f"--as={MEMORY_LIMIT}", "--", *cmd]
    if case.no_dac:
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                return Result(case, "skipped", "running as root without setpriv: mode-000 files stay readable")
            caps = "-dac_override,-dac_read_search"
            cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *cmd]
    before = snapshot(d)
    watch = OpenWatch(d / "secret")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         env=_env(case.terminal), start_new_session=True)
    finished_early = timed_out = False
    if case.interrupt_after is not None:
        try:
            p.wait(timeout=case.interrupt_after)
            finished_early = True
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGINT)
    try:
        out_b, err_b = p.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out_b, err_b = p.communicate()
        timed_out = True
    seconds = time.perf_counter() - t0
    opened = watch.opened()
    after = snapshot(d)
    out_s = out_b.decode("utf-8", "backslashreplace")
    err_s = err_b.decode("utf-8", "backslashreplace")
    result = Result(case, "clean", "", p.returncode, seconds, out_s, err_s, str(d))
    if finished_early and case.expect == "interrupt":
        result.status, result.reason = "skipped", f"finished (exit {p.returncode}) before the SIGINT at {case.interrupt_after}s"
        return result
    classify(result, d, before, after, opened, timed_out)
    return result


_SGR = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f]")


def classify(r: Result, d: Path, before: dict, after: dict, opened: list[str], timed_out: bool) -> None:
    """Set r.status and r.reason from what the run did."""
    case, rc = r.case, r.rc
    failed: list[str] = []
    degraded: list[str] = []
    err_text = _SGR.sub("", r.stderr) if case.terminal else r.stderr
    out_text = _SGR.sub("", r.stdout) if case.terminal else r.stdout
    lines = [ln for ln in err_text.splitlines() if ln.strip()]
    first = lines[0][:160] if lines else ""
    outputs = {os.path.normpath(o) for o in case.outputs}

    if timed_out:
        failed.append(f"hang: still running after {case.timeout:.0f}s (killed)")
    elif rc is not None and rc < 0:
        failed.append(f"killed by signal {signal.Signals(-rc).name}")
    if "Traceback (most recent call last)" in r.stderr + r.stdout:
        failed.append(f"Python traceback ({_last_line(err_text)})")
    for stream, text in (("stdout", out_text), ("stderr", err_text)):
        bad = _CONTROL.search(text)
        if bad:
            around = text[max(0, bad.start() - 20) : bad.end() + 20]
            if bad.group() in "\x1b\x9b\x9d":  # ESC, 8-bit CSI and OSC: they drive the terminal
                failed.append(f"raw ESC on {stream}: {around!r}")
            else:
                degraded.append(f"raw control character {bad.group()!r} on {stream}: {around!r}")

    may_change = outputs if case.expect in ("ok", "any") and rc == 0 else set()
    if case.expect == "interrupt":
        may_change = outputs  # a run interrupted after its rename leaves a complete new file
    changed = [p for p in before if p not in may_change and after.get(p) != before[p]]
    if changed:
        failed.append(f"input changed or removed: {changed[0]!r} ({_kind(before[changed[0]])} -> {_kind(after.get(changed[0]))})")
    new = [p for p in after if p not in before]
    hidden = [p for p in new if os.path.basename(p).startswith(".")]
    if hidden:
        failed.append(f"temp file left: {hidden[0][:80]!r}")
    if "pwned" in after:
        failed.append("a recipe ran a shell command (pwned file created)")
    written = [p for p in new + [p for p in outputs if p in before and after.get(p) != before[p]]
               if after.get(p, ("",))[0] == "file" and not os.path.basename(p).startswith(".")]
    if not case.allow_outside:
        for p in written:
            if p.endswith((".parquet", ".pq")) and _has_sentinel(d / p):
                failed.append(f"pixels of a file outside the root are in {p[:60]!r}")
                break

    refused_ok = rc == 2 and len(lines) == 1 and first.startswith("error:")
    expect = case.expect
    if expect == "any":
        expect = "ok" if rc == 0 else "refuse"

    if expect == "refuse":
        if rc == 0:
            failed.append("exit 0 where refusal was expected")
        if written:
            failed.append(f"output written despite the refusal: {written[0][:80]!r}")
        if rc in (1, 2) and not refused_ok:
            if rc == 1:
                degraded.append(f"exit 1 instead of 2 ({len(lines)} lines): {first}")
            elif len(lines) != 1:
                degraded.append(f"exit 2 with {len(lines)} lines on stderr: {' | '.join(lines)[:200]}")
            else:
                degraded.append(f"exit 2 but the line does not start with 'error:': {first}")
        elif rc not in (0, 1, 2) and not timed_out and (rc or 0) >= 0:
            degraded.append(f"exit {rc}: {first}")
        outside = [n for n in opened if not case.allow_outside]
        if outside:
            degraded.append(f"opened {outside[0]!r} outside the root before refusing")
    elif expect == "ok":
        if rc != 0 and not timed_out:
            if refused_ok:
                degraded.append(f"valid input refused: {first}")
            else:
                failed.append(f"crashed on valid input (exit {rc}): {first}")
        if rc == 0:
            for o in outputs:
                problem = _check_output(d / o) if after.get(o, ("",))[0] == "file" else "missing"
                if problem:
                    failed.append(f"exit 0 but output {o[:40]!r} {problem}")
            shown = out_text + err_text
            missing = [t for t in case.literal if t not in shown]
            if missing:
                degraded.append(f"markup not printed literally: {missing[0]!r}")
        if opened and not case.allow_outside:
            failed.append(f"opened {opened[0]!r} outside the root")
    elif expect == "interrupt":
        if rc == 130 and len(lines) == 1:
            pass
        elif rc == 130:
            degraded.append(f"exit 130 with {len(lines)} lines on stderr: {' | '.join(lines)[:200]}")
        elif rc == 0:
            degraded.append("exit 0 after SIGINT (interrupt ignored or arrived at exit)")
        elif rc is not None and rc > 0:
            degraded.append(f"exit {rc} instead of 130: {first}")
        for o in outputs:
            if after.get(o, ("",))[0] == "file" and before.get(o) != after.get(o):
                problem = _check_output(d / o)
                if problem:
                    failed.append(f"partial output after SIGINT: {o} {problem}")

    if failed:
        r.status, r.reason = "failed", "; ".join(failed[:2])
    elif degraded:
        r.status, r.reason = "degraded", "; ".join(degraded[:2])
    else:
        r.status, r.reason = "clean", ""


def _kind(entry) -> str:
    if entry is None:
        return "gone"
    return {"file": "file", "link": "symlink", "dir": "folder", "special": "device/fifo"}[entry[0]]


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:120] if lines else ""


def _check_output(path: Path) -> str:
    """'' when the output reads back whole; else what is wrong with it."""
    try:
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return "" if table.num_columns else "has no columns"
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                json.loads((f.metadata() or {})["genaug"])
                for k in f.keys():
                    t = f.get_tensor(k)
                    if t.dtype.kind == "f" and not np.isfinite(t).all():
                        return f"holds non-finite weights ({k})"
        return ""
    except Exception as e:  # noqa: BLE001 - any failure to read back is the finding
        return f"unreadable ({type(e).__name__}: {str(e)[:80]})"


def _has_sentinel(path: Path) -> bool:
    """Whether any image cell of a Parquet output holds a pixel of the sentinel colour."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception:  # noqa: BLE001 - unreadable outputs are judged elsewhere
        return False
    for column in table.columns:
        t = column.type
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            blobs = [c.get("bytes") if c else None for c in column.to_pylist()]
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
            blobs = column.to_pylist()
        else:
            continue
        for blob in blobs:
            if not blob:
                continue
            try:
                with Image.open(io.BytesIO(blob)) as im:
                    arr = np.asarray(im.convert("RGB"))
            except Exception:  # noqa: BLE001
                continue
            if (arr == np.array(SENTINEL, np.uint8)).all(-1).any():
                return True
    return False


def compare_errors(results: dict[str, Result]) -> None:
    """A refusal whose text depends on whether a file outside the root exists leaks that fact.

    Siblings (a case and those naming it in `same_error_as`) differ only in
    what sits at the outside path; every one that refused must say the same.
    A sibling that exited 0 read the file: it is failed on its own already.
    """
    families: dict[str, list[Result]] = {}
    for r in results.values():
        if r.case.same_error_as:
            families.setdefault(r.case.same_error_as, []).append(r)
    for head, members in families.items():
        family = [results[head], *members] if head in results else members
        refused = [r for r in family if r.status != "skipped" and r.rc not in (0, None)]
        texts = {r.case.name: _normalised_error(r) for r in refused}
        if len(set(texts.values())) <= 1:
            continue
        (a_name, a_text), (b_name, b_text) = _two_different(texts)
        for r in refused:
            if r.status != "failed":
                r.status = "failed"
                r.reason = f"error text reveals what is outside the root: {a_name}: {a_text[:80]!r} vs {b_name}: {b_text[:80]!r}"


def _two_different(texts: dict[str, str]) -> tuple[tuple[str, str], tuple[str, str]]:
    items = list(texts.items())
    first = items[0]
    return first, next(item for item in items if item[1] != first[1])


def _normalised_error(r: Result) -> str:
    text = _SGR.sub("", r.stderr).replace(r.folder, "<dir>")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines) + f" (exit {r.rc})"


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    """Parse the arguments, run the selected cases on `--workers` threads, print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="where to build the cases (a new sub-folder is made)")
    parser.add_argument("--only", action="append", default=[], help="run cases whose group or name holds this text")
    parser.add_argument("--json", action="store_true", help="also write summary.json in the run folder")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--keep", action="store_true", help="keep the case folders (default: kept only for non-clean)")
    parser.add_argument("--source", type=Path,
                        help="test the genaug package in this folder (e.g. `git archive` of an older commit) "
                             "instead of the installed one")
    args = parser.parse_args()
    if args.source is not None:
        # Every subprocess inherits it: PYTHONPATH comes before the editable install.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.source.resolve()), os.environ.get("PYTHONPATH")]))

    selected = [c for c in cases() if not args.only or any(s in f"{c.group} {c.name}" for s in args.only)]
    names = [c.name for c in cases()]
    assert len(names) == len(set(names)), "duplicate case names"
    if args.list:
        for c in selected:
            print(f"{c.group:16} {c.expect:9} {c.name}" + (f"  -- {c.note}" if c.note else ""))
        print(f"{len(selected)} cases")
        return
    # A referenced case must run for the comparison to mean anything.
    wanted = {c.same_error_as for c in selected if c.same_error_as}
    have = {c.name for c in selected}
    selected += [c for c in cases() if c.name in wanted and c.name not in have]

    args.dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=time.strftime("hostile-%Y%m%d-%H%M%S-"), dir=args.dir)).resolve()
    t0 = time.perf_counter()
    fx = build_fixtures(
        root / "fx",
        need_ckpt=any(_uses(c, "ckpt") for c in selected),
        need_bomb=any(_uses(c, "copy_npz_bomb") for c in selected),
    )
    if fx.ckpt_error:
        print(f"note: checkpoint cases are skipped: {fx.ckpt_error}", file=sys.stderr)
    results: dict[str, Result] = {}
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = {pool.submit(_run_safely, c, root, fx): c for c in selected}
        for i, fut in enumerate(as_completed(futures), 1):
            r = fut.result()
            with lock:
                results[r.case.name] = r
                print(f"[{i}/{len(selected)}] {r.status:8} {r.seconds:5.1f}s {r.case.group} / {r.case.name}",
                      file=sys.stderr, flush=True)
    compare_errors(results)
    if not args.keep:
        for r in results.values():
            if r.status == "clean" and r.folder:
                shutil.rmtree(r.folder, ignore_errors=True)
        if fx.npz_bomb is not None:
            fx.npz_bomb.unlink(missing_ok=True)
    report(selected, results, root, time.perf_counter() - t0, args.json)


def _uses(case: Case, builder: str) -> bool:
    """Whether one of the case's setup steps was made by `builder` (a function of this module)."""
    return any(getattr(step, "__qualname__", "").startswith(builder + ".") for step in case.setup)


def _run_safely(case: Case, root: Path, fx: Fixtures) -> Result:
    try:
        return run_case(case, root, fx)
    except Exception as e:  # noqa: BLE001 - a broken case must not hide the others
        return Result(case, "skipped", f"harness error: {type(e).__name__}: {e}")


def report(selected: list[Case], results: dict[str, Result], root: Path, seconds: float, as_json: bool) -> None:
    """Print the per-group table and every case that was not clean (and write the JSON)."""
    rows = []
    for group in GROUPS:
        rs = [results[c.name] for c in selected if c.group == group and c.name in results]
        if not rs:
            continue
        count = {s: sum(r.status == s for r in rs) for s in ("clean", "degraded", "failed", "skipped")}
        rows.append({"group": group, "tried": len(rs) - count["skipped"], **count})
    total = {k: sum(r[k] for r in rows) for k in ("tried", "clean", "degraded", "failed", "skipped")}
    rows.append({"group": "total", **total})
    print(f"\nhostile inputs: {total['tried']} cases in {seconds:.0f} s; case folders under {root}\n")
    print_table(rows)
    bad = [results[c.name] for c in selected if c.name in results and results[c.name].status != "clean"]
    if bad:
        print("\nnot clean:\n")
        for r in sorted(bad, key=lambda r: (r.status != "failed", r.case.group, r.case.name)):
            print(f"- {r.status:8} {r.case.group} / {r.case.name}: {r.reason}")
    notes = [c for c in selected if c.note and c.expect == "any"]
    if as_json:
        doc = {
            "seconds": round(seconds, 1),
            "folder": str(root),
            "table": rows,
            "cases": [
                {"group": r.case.group, "name": r.case.name, "expect": r.case.expect, "status": r.status,
                 "reason": r.reason, "exit": r.rc, "seconds": round(r.seconds, 2),
                 "argv": r.case.argv, "note": r.case.note,
                 "stderr": r.stderr[-600:], "stdout": r.stdout[-600:]}
                for r in (results[c.name] for c in selected if c.name in results)
            ],
        }
        path = root / "summary.json"
        path.write_text(json.dumps(doc, indent=2))
        print(f"\nJSON summary: {path}")
    if notes:
        print(f"\n{len(notes)} cases accept either exit 0 or a refusal (their notes are in --list and the JSON).")


if __name__ == "__main__":
    main()
