"""Save and load a model as a genaug checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from genaug.checkpoint import load_checkpoint, save_checkpoint
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.models.registry import build_model


def save_model(model: GenerativeModel, path: str | Path) -> None:
    """Write weights, constructor arguments and `model.metadata` to one .safetensors file."""
    save_checkpoint(
        path,
        model.state_dict(),
        {
            "family": model.name,
            "image_shape": list(model.image_shape),
            "num_classes": model.num_classes,
            "init_args": model.init_args(),
            **model.metadata,
        },
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild the model saved at `path` (no pickle, no code from the file)."""
    tensors, meta = load_checkpoint(path)
    try:
        family = meta["family"]
        model = build_model(family, meta["image_shape"], meta.get("num_classes", 0), **meta.get("init_args", {}))
    except KeyError as e:
        raise GenaugError(f"checkpoint {path} lacks metadata field {e}") from None
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise GenaugError(f"checkpoint {path} does not match model '{family}': {str(e).splitlines()[0]}") from None
    skip = {"family", "image_shape", "num_classes", "init_args", "format_version"}
    model.metadata = {k: v for k, v in meta.items() if k not in skip}
    return model.to(device).eval()


def model_hash(model: GenerativeModel) -> str:
    """Short sha256 of the family, constructor arguments and weights: names the model in outputs."""
    h = hashlib.sha256()
    h.update(json.dumps([model.name, list(model.image_shape), model.num_classes, model.init_args()]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
