"""Checkpoints: one `.safetensors` file, tensors plus JSON metadata.

Never pickle and never `torch.load`: a checkpoint is data, and loading one
must not be able to run code. Everything that is not a tensor (family,
constructor arguments, image shape, class names, data fingerprint,
calibration scores) is one JSON document under the metadata key `genaug`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genaug.errors import GenaugError

METADATA_KEY = "genaug"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write `tensors` and JSON `metadata` to `path` atomically (temp file, then rename)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise GenaugError(f"checkpoint path must end in .safetensors: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format_version": FORMAT_VERSION, **metadata}
    # safetensors refuses shared or non-contiguous storage; clone keeps it simple.
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(clean, tmp, metadata={METADATA_KEY: json.dumps(doc)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metadata(path: str | Path) -> dict:
    """The JSON metadata of a genaug checkpoint, without loading its tensors."""
    path = _check_path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise GenaugError(f"not a safetensors checkpoint: {path} ({_first_line(e)})") from None
    if raw is None:
        raise GenaugError(f"{path} is a safetensors file but not a genaug checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise GenaugError(f"corrupt genaug metadata in {path}") from None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a genaug checkpoint; a clear GenaugError for anything else."""
    metadata = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise GenaugError(f"cannot read checkpoint tensors from {path} ({_first_line(e)})") from None
    return tensors, metadata


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise GenaugError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise GenaugError(f"checkpoint is not a file: {path}")
    return path


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
