"""Save and load a model as a genaug checkpoint.

Loading checks before it allocates: the metadata is checked by
`genaug.checkpoint`, then the model the metadata describes is built on the
meta device (shapes and dtypes, no memory) and compared with the file's
tensor header; only a checkpoint that matches, within the size cap, with
finite weights, is built for real and loaded.

A model may carry a **background model** (the likelihood-ratio score's, see
`genaug.scoring.llr`): a second model of the same family and constructor
arguments, stored in the same file with its tensor names prefixed
`background.` and described by the metadata entry `background` (mutation
rate, training report). It is checked against the header like the model.
In memory it is a plain attribute (`attach_background`, `background_of`),
deliberately not an `nn.Module` child: the training loop, `parameters()`,
`state_dict()` and `.to()` of the model do not reach it, so training the
model never trains it and the model's weights stay the model's alone.

A model may also carry a **feature bank** (the `knn` score's, see
`genaug.scoring.knn`): the features of its training images, projected, and
the projection, as float32 tensors prefixed `knn.` and described by the
metadata entry `knn` (sizes and neighbour count). Attached the same way
(`attach_feature_bank`, `feature_bank_of`); the layout is checked on save
and on load like the model's tensors.
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
_NOT_MODEL_FIELDS = {"family", "image_shape", "num_classes", "init_args", "format_version", "background", "knn"}
BACKGROUND_PREFIX = "background."
_BACKGROUND_ATTR = "_genaug_background"
BANK_PREFIX = "knn."
_BANK_ATTR = "_genaug_feature_bank"
# Most reference rows a feature bank may hold (genaug.scoring.knn keeps at most 20,000).
MAX_BANK_ROWS = 1_000_000


def attach_background(model: GenerativeModel, background: GenerativeModel | None, info: dict | None = None) -> None:
    """Give `model` the background model of its likelihood ratio (None removes it).

    `background` must be of the same family, shape, classes and constructor
    arguments; `info` (JSON: `mutation_rate` in (0, 1), optionally the
    background's `training` report) becomes its `metadata` and is stored
    with it. Set with `object.__setattr__` so that it is not registered as
    a submodule (see the module docstring).
    """
    if background is None:
        object.__setattr__(model, _BACKGROUND_ATTR, None)
        return
    same = (background.name, background.image_shape, background.num_classes, background.init_args())
    if same != (model.name, model.image_shape, model.num_classes, model.init_args()):
        raise GenaugError(f"a background model must be built like the model ('{model.name}', same options)")
    problem = _background_problem(info)
    if problem is not None:
        raise GenaugError(f"background model: {problem}")
    background.metadata = dict(info)
    object.__setattr__(model, _BACKGROUND_ATTR, background)


def background_of(model: GenerativeModel) -> GenerativeModel | None:
    """The model's background model, on the model's device; None when it has none."""
    background = model.__dict__.get(_BACKGROUND_ATTR)
    if background is not None and model.device != background.device:
        background.to(model.device)
    return background


def attach_feature_bank(model: GenerativeModel, tensors: dict[str, torch.Tensor] | None, info: dict | None = None) -> None:
    """Give `model` the feature bank of its `knn` score (None removes it): `tensors` as
    `bank_layout(info)` describes them, `info` the JSON description stored with them."""
    if tensors is None:
        object.__setattr__(model, _BANK_ATTR, None)
        return
    problem = _bank_problem(info)
    if problem is None:
        found = {k: (tuple(v.shape), _HEADER_DTYPES.get(v.dtype, str(v.dtype))) for k, v in tensors.items()}
        if found != bank_layout(info):
            problem = f"tensors {found} do not match the layout {bank_layout(info)}"
    if problem is not None:
        raise GenaugError(f"feature bank: {problem}")
    object.__setattr__(model, _BANK_ATTR, ({k: v.detach().cpu() for k, v in tensors.items()}, dict(info)))


def feature_bank_of(model: GenerativeModel) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The model's feature bank as (tensors on the CPU, description); None when it has none."""
    return model.__dict__.get(_BANK_ATTR)


def bank_layout(info: dict) -> dict[str, tuple[tuple, str]]:
    """{tensor name: (shape, header dtype)} of a feature bank of `info`'s sizes: the standardisation
    (`mean`, `scale`, [dims]), the projection (`centre` [dims], `components` [components, dims]) and
    the projected training features (`reference` [size, components])."""
    d, c, m = info["dims"], info["components"], info["size"]
    shapes = {"mean": (d,), "scale": (d,), "centre": (d,), "components": (c, d), "reference": (m, c)}
    return {k: (shape, "F32") for k, shape in shapes.items()}


def _bank_problem(info) -> str | None:
    """What is wrong with a feature bank description (one line), or None; checked on save and on load."""
    if not isinstance(info, dict):
        return "field 'knn' must be a JSON object"
    for key, top in (("neighbours", 10_000), ("dims", 1_000_000), ("components", 1_000_000), ("size", MAX_BANK_ROWS)):
        value = info.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            return f"field 'knn.{key}' must be a whole number from 1 to {top:,}, got {value!r:.60}"
    if info["components"] > info["dims"]:
        return "field 'knn.components' must not exceed 'knn.dims'"
    if info["neighbours"] > info["size"]:
        return "field 'knn.neighbours' must not exceed 'knn.size'"
    return None


def save_model(model: GenerativeModel, path: str | Path) -> None:
    """Write weights, constructor arguments and `model.metadata` to one .safetensors file
    (refused, as one GenaugError line, when a weight is NaN or infinite), with
    the background model's weights and description when it has one."""
    tensors = dict(model.state_dict())
    meta = {k: v for k, v in model.metadata.items() if k != "background"}
    background = background_of(model)
    if background is not None:
        tensors.update({BACKGROUND_PREFIX + k: v for k, v in background.state_dict().items()})
        meta["background"] = dict(background.metadata)
    bank = feature_bank_of(model)
    if bank is not None:
        tensors.update({BANK_PREFIX + k: v for k, v in bank[0].items()})
        meta["knn"] = dict(bank[1])
    save_checkpoint(
        path,
        tensors,
        {
            "family": model.name,
            "image_shape": list(model.image_shape),
            "num_classes": model.num_classes,
            "init_args": model.init_args(),
            **meta,
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
    info = _background_info(path, meta)
    expected = _expected_tensors(path, family, shape, num_classes, init_args)
    if info is not None:
        # The background is built like the model, so its tensors are the model's, prefixed.
        expected.update({BACKGROUND_PREFIX + k: v for k, v in expected.items()})
    bank_info = meta.get("knn")
    if bank_info is not None:
        problem = _bank_problem(bank_info)
        if problem is not None:
            raise GenaugError(f"checkpoint {path}: {problem}")
        expected.update({BANK_PREFIX + k: v for k, v in bank_layout(bank_info).items()})
    _check_header(path, family, expected, tensor_specs(path))
    tensors = load_tensors(path)
    background_tensors = {
        k[len(BACKGROUND_PREFIX) :]: tensors.pop(k) for k in list(tensors) if k.startswith(BACKGROUND_PREFIX)
    }
    bank_tensors = {k[len(BANK_PREFIX) :]: tensors.pop(k) for k in list(tensors) if k.startswith(BANK_PREFIX)}
    model = _build_loaded(path, family, shape, num_classes, init_args, tensors)
    model.metadata = {k: v for k, v in meta.items() if k not in _NOT_MODEL_FIELDS}
    model.to(device).eval()
    if info is not None:
        background = _build_loaded(path, family, shape, num_classes, init_args, background_tensors)
        attach_background(model, background.to(device).eval(), info)
    if bank_info is not None:  # finite: load_tensors refuses NaN and infinity in any tensor
        attach_feature_bank(model, bank_tensors, bank_info)
    return model


def _build_loaded(path, family: str, shape, num_classes: int, init_args: dict, tensors: dict) -> GenerativeModel:
    model = build_model(family, shape, num_classes, **init_args)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:  # the meta build matched, so only a family built differently twice lands here
        raise GenaugError(f"checkpoint {path} does not match model '{family}': {str(e).splitlines()[0]}") from None
    return model


def _background_info(path, meta: dict) -> dict | None:
    """The checked `background` metadata entry, or None when the checkpoint has no background model."""
    info = meta.get("background")
    if info is None:
        return None
    problem = _background_problem(info)
    if problem is not None:
        raise GenaugError(f"checkpoint {path}: {problem}")
    return info


def _background_problem(info) -> str | None:
    """What is wrong with a background description (one line), or None; checked on save and on load."""
    if not isinstance(info, dict):
        return "field 'background' must be a JSON object"
    rate = info.get("mutation_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
        return f"field 'background.mutation_rate' must be a number between 0 and 1, got {rate!r:.60}"
    if info.get("training") is not None and not isinstance(info["training"], dict):
        return "field 'background.training' must be a JSON object"
    return None


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
    tensors = dict(model.state_dict())
    background = background_of(model)
    if background is not None:  # the llr score depends on it; a model without one hashes as before
        tensors.update({BACKGROUND_PREFIX + k: v for k, v in background.state_dict().items()})
    bank = feature_bank_of(model)
    if bank is not None:  # the knn score depends on it
        tensors.update({BANK_PREFIX + k: v for k, v in bank[0].items()})
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
