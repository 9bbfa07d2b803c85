"""Save and load a model as a genaug checkpoint.

Loading checks before it allocates: the metadata is checked by
`genaug.checkpoint`, then the model the metadata describes is built on the
meta device (shapes and dtypes, no memory) and compared with the file's
tensor header; only a checkpoint that matches, within the size cap, with
finite weights, is built for real and loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from genaug.checkpoint import load_tensors, read_metadata, save_checkpoint, tensor_specs
from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel
from genaug.models.registry import build_model, get_family

# Most tensor elements (parameters and buffers) a checkpoint may ask for:
# 8 GiB of float32, far past any family genaug trains, and refused before
# anything of that size is allocated.
MAX_CHECKPOINT_ELEMENTS = 2**31

# torch dtype -> the dtype name in a safetensors header.
_HEADER_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_NOT_MODEL_FIELDS = {"family", "image_shape", "num_classes", "init_args", "format_version"}


def save_model(model: GenerativeModel, path: str | Path) -> None:
    """Write weights, constructor arguments and `model.metadata` to one .safetensors file
    (refused, as one GenaugError line, when a weight is NaN or infinite)."""
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
    """Rebuild the model saved at `path` (no pickle, no code from the file).

    Every problem with the file is one GenaugError line naming the
    checkpoint and the field or tensor at fault; nothing the file asks for
    is allocated before it has been checked.
    """
    meta = read_metadata(path)
    family = meta["family"]
    shape, num_classes, init_args = meta["image_shape"], meta.get("num_classes", 0), meta.get("init_args", {})
    try:
        get_family(family)  # also imports the family's module here, not under the meta device below
    except GenaugError as e:
        raise GenaugError(f"checkpoint {path}: field 'family': {e}") from None
    expected = _expected_tensors(path, family, shape, num_classes, init_args)
    _check_header(path, family, expected, tensor_specs(path))
    tensors = load_tensors(path)
    model = build_model(family, shape, num_classes, **init_args)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:  # the meta build matched, so only a family built differently twice lands here
        raise GenaugError(f"checkpoint {path} does not match model '{family}': {str(e).splitlines()[0]}") from None
    model.metadata = {k: v for k, v in meta.items() if k not in _NOT_MODEL_FIELDS}
    return model.to(device).eval()


def _expected_tensors(path, family: str, shape, num_classes: int, init_args: dict) -> dict[str, tuple[tuple, str]]:
    """{name: (shape, header dtype)} of the model the metadata describes, built without memory."""
    try:
        with torch.device("meta"):
            skeleton = build_model(family, shape, num_classes, **init_args)
    except GenaugError as e:
        raise GenaugError(f"checkpoint {path}: field 'init_args': {e}") from None
    except (RuntimeError, NotImplementedError):
        # A plug-in whose constructor computes with tensor values cannot be
        # built on the meta device; its checkpoint is still checked, after a
        # real build. (The metadata checks have bounded shape and classes.)
        skeleton = build_model(family, shape, num_classes, **init_args)
    state = skeleton.state_dict()
    elements = sum(t.numel() for t in state.values())
    if elements > MAX_CHECKPOINT_ELEMENTS:
        raise GenaugError(
            f"checkpoint {path}: field 'init_args' asks for a '{family}' model of {elements:,} weights; "
            f"genaug loads at most {MAX_CHECKPOINT_ELEMENTS:,}"
        )
    return {k: (tuple(t.shape), _HEADER_DTYPES.get(t.dtype, str(t.dtype))) for k, t in state.items()}


def _check_header(path, family: str, expected: dict, found: dict) -> None:
    """One GenaugError line for the first missing, unexpected, mis-shaped or mis-typed tensor."""
    missing = [k for k in expected if k not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise GenaugError(f"checkpoint {path}: tensor '{missing[0]}' of model '{family}' is missing{more}")
    extra = [k for k in found if k not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise GenaugError(f"checkpoint {path}: unexpected tensor {extra[0][:100]!r} for model '{family}'{more}")
    for name, (want_shape, want_dtype) in expected.items():
        got_shape, got_dtype = found[name]
        if got_shape != want_shape:
            raise GenaugError(
                f"checkpoint {path}: tensor '{name}' has shape {list(got_shape)}, "
                f"but model '{family}' with its stored options needs {list(want_shape)}"
            )
        if got_dtype != want_dtype:
            raise GenaugError(f"checkpoint {path}: tensor '{name}' is {got_dtype}, but model '{family}' needs {want_dtype}")


def model_hash(model: GenerativeModel) -> str:
    """Short sha256 of the family, constructor arguments and weights: names the model in outputs."""
    h = hashlib.sha256()
    h.update(json.dumps([model.name, list(model.image_shape), model.num_classes, model.init_args()]).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
