"""Checkpoints: one `.safetensors` file, tensors plus JSON metadata.

Never pickle and never `torch.load`: a checkpoint is data, and loading one
must not be able to run code. Everything that is not a tensor (family,
constructor arguments, image shape, class names, data fingerprint,
calibration scores) is one JSON document under the metadata key `genaug`.

A checkpoint is untrusted input. Its metadata is checked field by field
(exact types, bounded sizes, finite numbers) before anything is built from
it, its tensor header is readable without reading tensor data, and its
tensors are refused when they hold NaN or infinity. Writing checks the same
rules, so genaug never writes a checkpoint it would refuse to read.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from genaug.atomic import clean_stale, commit, temp_path
from genaug.distributed import main_only
from genaug.errors import GenaugError, first_line

METADATA_KEY = "genaug"
FORMAT_VERSION = 1

# Bounds on what the metadata may ask a loader to build. Generous for real
# data (4096x4096 images, 65,536 classes), small enough that a hostile value
# fails here instead of in an allocation of petabytes.
IMAGE_CHANNELS = (1, 3)
MAX_IMAGE_SIDE = 4096
MAX_CLASSES = 65_536
MAX_IWAE_K = 10_000
# Constructor options are JSON scalars or short flat lists of them (a plug-in
# family may take e.g. per-stage channel multipliers); nothing nested.
MAX_OPTION_LIST = 64
MAX_TEXT = 10_000  # characters of one string option or class name
# Family names as registries spell them ('vae', 'pixelcnn++', 'gated-pixelcnn'):
# nothing that could break an error message over two lines.
_FAMILY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write `tensors` and JSON `metadata` to `path` atomically (temp file, then rename).

    Refused with a GenaugError, before anything is written: metadata that
    `read_metadata` would refuse, and tensors holding NaN or infinity.
    A filesystem error (disk full, no permission) is one GenaugError line
    and leaves neither a temp file nor a changed `path`. Under torchrun only
    rank 0 writes; every rank must call this, and all return (or fail) together.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise GenaugError(f"checkpoint path must end in .safetensors: {path}")
    try:
        text = json.dumps({"format_version": FORMAT_VERSION, **metadata}, allow_nan=False)
        # Check what a reader will see (tuples become lists), not the Python objects.
        _check_metadata(json.loads(text))
    except _BadField as e:
        raise GenaugError(f"refusing to write checkpoint {path}: {e}") from None
    except (TypeError, ValueError) as e:  # a NaN or a non-JSON object anywhere in the metadata
        raise GenaugError(f"refusing to write checkpoint {path}: metadata is not finite JSON ({first_line(e)})") from None
    # safetensors refuses shared or non-contiguous storage; clone keeps it simple.
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    bad = first_non_finite(clean)
    if bad is not None:
        raise GenaugError(
            f"refusing to write checkpoint {path}: tensor '{bad}' holds NaN or infinite values (did training diverge?)"
        )
    # Under torchrun every rank holds the same model and calls this; rank 0 alone writes,
    # and the others wait for it and share its outcome (genaug.distributed.main_only).
    main_only(lambda: _write_checkpoint(path, clean, text), f"writing checkpoint {path}")


def _write_checkpoint(path: Path, clean: dict[str, torch.Tensor], text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(path)
        tmp = temp_path(path)
        try:
            # Serialised here, written by us: safetensors' save_file writes
            # through a temp file of its own naming, which a killed run would
            # leave behind where clean_stale cannot recognise it.
            _write_bytes(tmp, save(clean, metadata={METADATA_KEY: text}))
            commit(tmp, path)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the original error is the one to report
            raise
    except (OSError, SafetensorError) as e:
        reason = getattr(e, "strerror", None) or first_line(e)
        raise GenaugError(f"cannot write checkpoint {path}: {reason}") from None


def _write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` and flush it to disk before the rename."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_metadata(path: str | Path) -> dict:
    """The checked JSON metadata of a genaug checkpoint, without loading its tensors."""
    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise GenaugError(f"not a safetensors checkpoint: {path} ({first_line(e)})") from None
    if raw is None:
        raise GenaugError(f"{path} is a safetensors file but not a genaug checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # bad JSON, or an integer of thousands of digits
        raise GenaugError(f"corrupt genaug metadata in {path}") from None
    try:
        _check_metadata(doc)
    except _BadField as e:
        raise GenaugError(f"checkpoint {path}: {e}") from None
    return doc


def tensor_specs(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{name: (shape, safetensors dtype such as 'F32')} from the file header; reads no tensor data."""
    path = _check_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise GenaugError(f"not a safetensors checkpoint: {path} ({first_line(e)})") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint on the CPU; a GenaugError naming the first one holding NaN or infinity."""
    path = _check_path(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise GenaugError(f"cannot read checkpoint tensors from {path} ({first_line(e)})") from None
    bad = first_non_finite(tensors)
    if bad is not None:
        raise GenaugError(f"checkpoint {path}: tensor {bad!r} holds NaN or infinite values; the model is unusable")
    return tensors


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a genaug checkpoint, both checked; a clear GenaugError for anything else."""
    metadata = read_metadata(path)
    return load_tensors(path), metadata


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or infinity, or None."""
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


# -- the metadata schema ------------------------------------------------------
class _BadField(Exception):
    """One metadata problem; the caller adds which checkpoint it is in."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"field '{field}' {problem}")


def _check_metadata(doc) -> None:
    """Raise `_BadField` (one line naming the field) unless `doc` is valid genaug metadata.

    Checked: the fields genaug reads back (format, family, image shape,
    classes, constructor options, class names, calibration record, data and
    training records). Other keys are kept as they are and not read.
    """
    if not isinstance(doc, dict):
        raise _BadField("(metadata)", f"must be a JSON object, got {_kind(doc)}")
    version = _required(doc, "format_version")
    if not _is_int(version) or version != FORMAT_VERSION:
        raise _BadField("format_version", f"is {_show(version)}; this genaug reads version {FORMAT_VERSION}")
    family = _required(doc, "family")
    if not (isinstance(family, str) and _FAMILY_NAME.fullmatch(family)):
        raise _BadField("family", f"must be a family name such as 'vae', got {_show(family)}")
    shape = _required(doc, "image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) for s in shape)):
        raise _BadField("image_shape", f"must be a list of 3 integers [C, H, W], got {_show(shape)}")
    if shape[0] not in IMAGE_CHANNELS or not all(1 <= s <= MAX_IMAGE_SIDE for s in shape[1:]):
        raise _BadField(
            "image_shape", f"must have C in {IMAGE_CHANNELS} and H, W in 1..{MAX_IMAGE_SIDE}, got {_show(shape)}"
        )
    num_classes = doc.get("num_classes", 0)
    if not _is_int(num_classes) or not 0 <= num_classes <= MAX_CLASSES:
        raise _BadField("num_classes", f"must be an integer in 0..{MAX_CLASSES}, got {_show(num_classes)}")
    _check_init_args(doc.get("init_args", {}))
    _check_class_names(doc.get("class_names"), num_classes)
    _check_calibration(doc.get("calibration"))
    for key in ("data", "training"):
        if doc.get(key) is not None and not isinstance(doc[key], dict):
            raise _BadField(key, f"must be a JSON object, got {_kind(doc[key])}")
    for key in ("command", "genaug_version"):
        if doc.get(key) is not None and not isinstance(doc[key], str):
            raise _BadField(key, f"must be a string, got {_kind(doc[key])}")


def _check_init_args(args) -> None:
    if not isinstance(args, dict):
        raise _BadField("init_args", f"must be a JSON object of options, got {_kind(args)}")
    for key, value in args.items():
        items = value if isinstance(value, list) and len(value) <= MAX_OPTION_LIST else [value]
        if not all(_is_scalar(v) for v in items):
            raise _BadField(
                f"init_args.{key}",
                f"must be a JSON scalar or a list of at most {MAX_OPTION_LIST} of them, got {_show(value)}",
            )


def _check_class_names(names, num_classes: int) -> None:
    if names is None:
        return
    if not (isinstance(names, list) and all(isinstance(n, str) and len(n) <= MAX_TEXT for n in names)):
        raise _BadField("class_names", f"must be a list of strings or null, got {_show(names)}")
    if len(names) > MAX_CLASSES or (num_classes > 0 and len(names) != num_classes):
        raise _BadField("class_names", f"has {len(names)} names for a model of {num_classes} classes")


def _check_calibration(cal) -> None:
    """The calibration record (see `genaug.scoring.record`): nested objects of
    finite score lists of equal length, and scalar options. Its layout is
    read in one place, the record; here only what could hurt is refused."""
    if cal is None or cal == {}:
        return  # no record: the jobs that need one say so
    if not isinstance(cal, dict):
        raise _BadField("calibration", f"must be a JSON object, got {_kind(cal)}")
    _check_record("calibration", cal, depth=0)


def _check_record(where: str, doc: dict, depth: int) -> None:
    lengths = {}
    for key, value in doc.items():
        field = f"{where}.{key}"
        if isinstance(value, dict):
            if depth >= 2:
                raise _BadField(field, "is nested too deeply")
            _check_record(field, value, depth + 1)
        elif isinstance(value, list):
            if not all(_is_number(v) for v in value):
                raise _BadField(field, f"must be a list of numbers, got {_show(value)}")
            if not all(_finite(v) for v in value):
                raise _BadField(field, "holds NaN or infinite scores; refit the model")
            lengths[key] = len(value)
        elif key == "iwae_k" and not (_is_int(value) and 1 <= value <= MAX_IWAE_K):
            raise _BadField(field, f"must be an integer in 1..{MAX_IWAE_K}, got {_show(value)}")
        elif not _is_scalar(value):
            raise _BadField(field, f"must be a number, string, boolean or null, got {_show(value)}")
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{n} {k}" for k, n in lengths.items())
        raise _BadField(where, f"has score lists of different lengths ({shown})")


def _required(doc: dict, key: str, field: str | None = None):
    if key not in doc:
        raise _BadField(field or key, "is missing")
    return doc[key]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is no count


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: int | float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an integer beyond float range
        return False


def _is_scalar(v) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return _finite(v)
    if isinstance(v, str):
        return len(v) <= MAX_TEXT
    return v is None or isinstance(v, (bool, int))


def _kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__
    )


def _show(v) -> str:
    """A short one-line rendering of a hostile value (repr escapes newlines)."""
    if isinstance(v, (list, dict)) and len(v) > 8:
        return f"{_kind(v)} of {len(v)} items"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise GenaugError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise GenaugError(f"checkpoint is not a file: {path}")
    return path
