"""Classic augmentation: seeded albumentations 2.0 pipelines behind named recipes.

A *recipe* is a built-in name (`light`, `medium`, `heavy`: the commented
YAML files in `genaug/recipes/`), the path of a YAML file, or an
`albumentations.Compose`. `recipe_to_yaml("light")` prints a built-in recipe
so a user can copy and edit it.

Recipe YAML
-----------
A mapping with one key, `transforms`: a list of one-key mappings
`TransformName: {parameter: value, ...}`, where the name is any albumentations
transform and the parameters are its constructor's. Containers (`OneOf`,
`SomeOf`, `Sequential`, ...) list their children under `transforms`::

    transforms:
      - Affine: {translate_percent: [-0.1, 0.1], rotate: [-15, 15], p: 0.9}
      - OneOf:
          p: 0.3
          transforms:
            - GaussianBlur: {blur_limit: [3, 3]}
            - GaussNoise: {std_range: [0.02, 0.06]}

Files written by albumentations itself (`A.save(t, path, data_format="yaml")`,
the `transform: {__class_fullname__: ...}` layout) are read too. Transforms
are built with albumentations' `strict=True`, so an unknown parameter is an
error rather than a warning (and a parameter its validators reject is an
error rather than a silent fall-back to all defaults, which is what 2.0.8
does without it). A recipe must keep the image size and dtype; one that
does not is reported when it is applied.

Seeding
-------
NOTE: `Compose(seed=s)` in albumentations 2.0.8 gives every transform its
own generator seeded with the same `s`, so their random draws are equal: two
transforms with the same `p` are always applied together or not at all.
Instead, every output image gets one fresh generator, seeded from
`(seed, copy, image index)` and shared by the whole pipeline through
`Compose.set_random_state`. So the same seed gives byte-identical output in
any process, independent of global `random`/`numpy` state, and each image's
augmentation does not depend on which other images are in the batch.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml
from rich.console import Console

from genaug.data.imageset import ImageSet
from genaug.data.readers import as_imageset
from genaug.errors import GenaugError, first_line
from genaug.limits import check_fits_in_memory
from genaug.progress import progress_bar
from genaug.terminal import SafeConsole

# albumentations asks PyPI for a newer version on import (a network call of up
# to 2 s and a warning, or a warning when offline); genaug never goes online.
# A user's own setting of the variable wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
from albumentations.core.composition import BaseCompose  # noqa: E402
from albumentations.core.serialization import SERIALIZABLE_REGISTRY  # noqa: E402
from albumentations.core.transforms_interface import BasicTransform  # noqa: E402

RECIPES = ("light", "medium", "heavy")

Recipe = Union[str, os.PathLike, A.Compose]


# ---------------------------------------------------------------- recipes


def load_recipe(recipe: Recipe) -> A.Compose:
    """The pipeline for a built-in recipe name, a YAML file path, or a `Compose` (returned as is)."""
    if isinstance(recipe, A.Compose):
        return recipe
    text, where = _recipe_text(recipe)
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GenaugError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', None) or first_line(e)}") from None
    return _build_compose(spec, where)


def recipe_to_yaml(recipe: Recipe) -> str:
    """YAML text of a recipe that `load_recipe` reads back to the same pipeline.

    For a built-in name or a file, the file itself (its comments explain each
    transform); for a `Compose`, every parameter spelled out.
    """
    if not isinstance(recipe, A.Compose):
        return _recipe_text(recipe)[0]
    try:
        top = A.to_dict(recipe)["transform"]
    except (NotImplementedError, ValueError) as e:  # e.g. Lambda: code, not parameters
        raise GenaugError(f"this pipeline cannot be written as YAML: {first_line(e)}") from None
    spec = {"transforms": [_from_native(t, "Compose") for t in top["transforms"]]}
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=None)


def recipe_label(recipe: Recipe) -> str:
    """A short name for provenance: the built-in name, the file path, or 'custom'."""
    if isinstance(recipe, A.Compose):
        return "custom"
    return os.fspath(recipe)


def _recipe_text(recipe: str | os.PathLike) -> tuple[str, str]:
    """(YAML text, description for error messages) of a built-in name or a file path."""
    if isinstance(recipe, str) and recipe in RECIPES:
        return resources.files("genaug.recipes").joinpath(f"{recipe}.yaml").read_text("utf-8"), f"recipe '{recipe}'"
    path = Path(recipe)
    if not path.is_file():
        hint = "" if path.suffix else f" (built-in recipes: {', '.join(RECIPES)})"
        raise GenaugError(f"recipe file not found: {path}{hint}")
    try:
        return path.read_text("utf-8"), f"recipe {path}"
    except (OSError, UnicodeDecodeError) as e:
        raise GenaugError(f"cannot read recipe {path}: {e}") from None


def _build_compose(spec: Any, where: str) -> A.Compose:
    if isinstance(spec, dict) and isinstance(spec.get("transform"), dict):
        # albumentations' own layout: translate, then build the same strict way. The
        # top Compose's own settings (p, bbox_params, ...) do not apply to images alone.
        top = spec["transform"]
        if top.get("__class_fullname__") in ("Compose", "ReplayCompose"):
            spec = {"transforms": [_from_native(t, where) for t in top.get("transforms") or []]}
        else:
            spec = {"transforms": [_from_native(top, where)]}
    if not isinstance(spec, dict):
        raise GenaugError(f"{where}: must be a mapping with a 'transforms' list, got {type(spec).__name__}")
    unknown = set(spec) - {"transforms"}
    if unknown:
        keys = ", ".join(map(repr, sorted(map(str, unknown))))
        raise GenaugError(f"{where}: unknown key(s) {keys}; only 'transforms' is allowed")
    items = spec.get("transforms")
    if not isinstance(items, list) or not items:
        raise GenaugError(f"{where}: 'transforms' must be a non-empty list")
    return A.Compose([_build(item, f"{where}, transform {i + 1}") for i, item in enumerate(items)], p=1.0)


def _build(item: Any, where: str) -> BasicTransform | BaseCompose:
    """One transform from its `{Name: {params}}` entry, children built recursively."""
    if not isinstance(item, dict) or len(item) != 1:
        raise GenaugError(f"{where}: expected one 'TransformName: {{params}}' entry, got {item!r:.80}")
    (name, params), = item.items()
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise GenaugError(f"{where}: parameters of {name} must be a mapping, got {params!r:.80}")
    cls = SERIALIZABLE_REGISTRY.get(str(name))
    if not (isinstance(cls, type) and issubclass(cls, (BasicTransform, BaseCompose))):
        raise GenaugError(f"{where}: unknown transform '{name}' (not an albumentations {A.__version__} transform)")
    where = f"{where} ({name})"
    params = dict(params)
    try:
        if issubclass(cls, BaseCompose):
            children = params.pop("transforms", None)
            if not isinstance(children, list) or not children:
                raise GenaugError(f"{where}: needs a non-empty 'transforms' list")
            built = [_build(c, f"{where}, transform {i + 1}") for i, c in enumerate(children)]
            return cls(built, **params)
        return cls(**params, strict=True)
    except GenaugError:
        raise
    except (TypeError, ValueError) as e:
        raise GenaugError(f"{where}: {_param_error(e)}") from None


def _from_native(node: dict, where: str) -> dict:
    """An albumentations `to_dict` node as our `{Name: {params}}` entry."""
    if not isinstance(node, dict) or "__class_fullname__" not in node:
        raise GenaugError(f"{where}: transform without '__class_fullname__': {node!r:.80}")
    params = {k: v for k, v in node.items() if k not in ("__class_fullname__", "id")}
    if "transforms" in params:
        params["transforms"] = [_from_native(c, where) for c in params["transforms"]]
    return {node["__class_fullname__"]: _plain(params)}


def _plain(value: Any) -> Any:
    """Tuples as lists, so `yaml.safe_dump` writes plain YAML sequences."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _param_error(e: Exception) -> str:
    """One line from a constructor error; pydantic's multi-line report cut to its first problem."""
    cause = e.__cause__
    if hasattr(cause, "errors"):  # pydantic.ValidationError, re-raised by albumentations as ValueError
        err = cause.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else ""  # the parameter; the rest names union members
        got = f" (got {err['input']!r:.60})" if "input" in err and not isinstance(err["input"], dict) else ""
        return f"bad parameter '{loc}': {err['msg']}{got}" if loc else f"{err['msg']}{got}"
    return first_line(e)


# ---------------------------------------------------------------- applying


@dataclass
class Augmented:
    """Augmented images and where each came from."""

    data: ImageSet
    source_index: np.ndarray  # int64 [len(data)]: position of the source image in the input
    copy: np.ndarray  # int64 [len(data)]: which copy of its source (0..copies-1)
    source_ids: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def columns(self) -> dict:
        """Output columns after the image struct and label."""
        return {"source_index": self.source_index, "source_id": self.source_ids, "copy": self.copy}


def augment_images(
    images: torch.Tensor,
    recipe: Recipe,
    *,
    copies: int = 1,
    seed: int = 0,
    progress: bool | Console = False,
) -> tuple[torch.Tensor, np.ndarray]:
    """Augment uint8 `[N, C, H, W]` images `copies` times each.

    Returns uint8 `[N * copies, C, H, W]` and `source_index` (int64
    `[N * copies]`, the input each output came from). Copy-major order:
    output `c * N + i` is copy `c` of image `i`, so the first N outputs are
    one augmented pass in input order. Output `c * N + i` depends only on
    (`seed`, `c`, `i`, image `i`, recipe): byte-identical across calls and
    processes. `progress`: True draws a bar on stderr; a rich `Console` draws it there.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        got = f"{images.dtype} {tuple(images.shape)}"
        raise GenaugError(f"images must be uint8 [N, C, H, W] with 1 or 3 channels, got {got}")
    if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
        raise GenaugError(f"copies must be a positive integer, got {copies!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise GenaugError(f"seed must be a non-negative integer, got {seed!r}")
    n, c, h, w = images.shape
    check_fits_in_memory(copies * n, (c, h, w), "--copies")
    pipeline = load_recipe(recipe)
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty((copies * n, h, w, c), dtype=np.uint8)
    console = progress if isinstance(progress, Console) else SafeConsole(stderr=True) if progress else None
    with progress_bar(console, f"augmenting ({recipe_label(recipe)})", copies * n) as advance:
        for k in range(copies):
            for i in range(n):
                rng = np.random.default_rng([seed, k, i])
                pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
                out[k * n + i] = _apply(pipeline, hwc[i], recipe, i)
            advance(n)
    source_index = np.tile(np.arange(n, dtype=np.int64), copies)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), source_index


def _apply(pipeline: A.Compose, image: np.ndarray, recipe: Recipe, i: int) -> np.ndarray:
    """One image through the pipeline, checked to come out as the same shape and dtype."""
    try:
        result = pipeline(image=image)["image"]
    except Exception as e:  # a transform unfit for this image (e.g. needs 3 channels) is the recipe's fault
        raise GenaugError(f"recipe {recipe_label(recipe)} failed on image {i} {image.shape}: {first_line(e)}") from e
    if result.ndim == 2 and image.shape[2] == 1:  # some OpenCV ops drop a single channel axis
        result = result[:, :, None]
    if result.shape != image.shape or result.dtype != np.uint8:
        raise GenaugError(
            f"recipe {recipe_label(recipe)} turned a {image.shape} uint8 image into {result.shape} {result.dtype}; "
            "recipes must keep size, channels and uint8 (end with Resize or a crop back to the input size)"
        )
    return result


def augment(
    imageset: ImageSet, recipe: Recipe, *, copies: int = 1, seed: int = 0, progress: bool | Console = False
) -> Augmented:
    """`imageset` augmented `copies` times (see `augment_images` for order and seeding).

    Labels and class names are carried from the source images; ids are
    `<source id>#aug<copy>`; `paths` is None (the pixels are new); `source` is
    `augment:<recipe>`.
    """
    imageset = as_imageset(imageset)
    images, source_index = augment_images(imageset.images, recipe, copies=copies, seed=seed, progress=progress)
    n = len(imageset)
    data = ImageSet(
        images=images,
        labels=None if imageset.labels is None else imageset.labels[source_index],
        class_names=imageset.class_names,
        ids=[f"{imageset.ids[i]}#aug{j // n}" for j, i in enumerate(source_index)],  # copy-major
        paths=None,
        source=f"augment:{recipe_label(recipe)}",
    )
    settings = {"recipe": recipe_label(recipe), "copies": copies, "seed": seed}
    copy = np.repeat(np.arange(copies, dtype=np.int64), n)
    return Augmented(data, source_index, copy, [imageset.ids[i] for i in source_index], settings)
