"""Augmentation recipes: size-preserving, seeded, round-trippable, with one-line errors."""

import hashlib
import random
import subprocess
import sys

import albumentations as A
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genaug.augment import RECIPES, augment, augment_images, load_recipe, recipe_to_yaml
from genaug.data.imageset import ImageSet
from genaug.errors import GenaugError


def blobs(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Images with structure (a bright off-centre rectangle on noise), so geometry visibly moves them."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, c, h, w), dtype=np.uint8)
    x[:, :, h // 4 : h // 2 + 1, w // 5 : w // 2 + 1] = 220
    return torch.from_numpy(x)


def digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()


def write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_recipes_keep_shape_and_dtype_and_change_images(recipe, shape):
    x = blobs(24, *shape)
    y, source = augment_images(x, recipe, seed=0)
    assert y.shape == x.shape and y.dtype == torch.uint8
    np.testing.assert_array_equal(source, np.arange(24))
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert changed >= 0.5, f"{recipe} changed only {changed:.0%} of the images"


@settings(max_examples=12, deadline=None)
@given(
    recipe=st.sampled_from(RECIPES),
    c=st.sampled_from([1, 3]),
    h=st.integers(8, 48),
    w=st.integers(8, 48),
    seed=st.integers(0, 2**31),
)
def test_any_size_keeps_its_shape(recipe, c, h, w, seed):
    x = blobs(3, c, h, w)
    y, _ = augment_images(x, recipe, seed=seed)
    assert y.shape == x.shape and y.dtype == torch.uint8


def test_same_seed_same_bytes_different_seed_different_bytes():
    x = blobs(16, 1, 28, 28)
    first = augment_images(x, "heavy", seed=7)[0]
    # A fresh pipeline, and global RNG state moved: neither may matter.
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    again = augment_images(x, load_recipe("heavy"), seed=7)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, augment_images(x, "heavy", seed=8)[0])


def test_same_seed_same_bytes_in_another_process(tmp_path):
    x = blobs(8, 3, 16, 16)
    np.save(tmp_path / "x.npy", x.numpy())
    here = digest(augment_images(x, "heavy", seed=3)[0])
    code = (
        "import hashlib, random, numpy as np, torch; np.random.seed(99); random.seed(99);"
        "from genaug.augment import augment_images;"
        "x = torch.from_numpy(np.load(__import__('sys').argv[1]));"
        "print(hashlib.sha256(augment_images(x, 'heavy', seed=3)[0].numpy().tobytes()).hexdigest())"
    )
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], capture_output=True, text=True, check=True)
    there = run.stdout.strip()
    assert there == here


def test_output_of_an_image_does_not_depend_on_the_rest_of_the_batch():
    x = blobs(10, 1, 28, 28)
    whole = augment_images(x, "medium", seed=1)[0]
    assert torch.equal(augment_images(x[:4], "medium", seed=1)[0], whole[:4])


def test_transforms_draw_independent_randomness(tmp_path):
    # albumentations 2.0.8's Compose(seed=...) seeds every transform alike, so two
    # transforms with equal p always fire together; ours must not.
    spec = "transforms:\n  - HorizontalFlip: {p: 0.5}\n  - VerticalFlip: {p: 0.5}\n"
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 4, 4).repeat(64, 1, 1, 1)
    y, _ = augment_images(x, write(tmp_path, spec), seed=0)
    only_h = (y == x.flip(3)).flatten(1).all(1)
    only_v = (y == x.flip(2)).flatten(1).all(1)
    assert only_h.any() and only_v.any()


def test_copies_are_copy_major_with_source_indices():
    x = blobs(5, 1, 8, 8)
    y, source = augment_images(x, "light", copies=3, seed=0)
    assert y.shape == (15, 1, 8, 8)
    np.testing.assert_array_equal(source, np.tile(np.arange(5), 3))
    assert source.dtype == np.int64
    # Copy 0 of a 3-copy run is the 1-copy run: more copies only append.
    assert torch.equal(y[:5], augment_images(x, "light", seed=0)[0])
    assert not torch.equal(y[:5], y[5:10])


@pytest.mark.parametrize("recipe", RECIPES)
def test_builtin_recipe_dumped_and_loaded_gives_same_output(tmp_path, recipe):
    x = blobs(12, 3, 16, 16)
    path = write(tmp_path, recipe_to_yaml(recipe))
    assert torch.equal(augment_images(x, path, seed=5)[0], augment_images(x, recipe, seed=5)[0])


def test_compose_dumped_with_every_parameter_loads_back_the_same(tmp_path):
    x = blobs(12, 1, 28, 28)
    text = recipe_to_yaml(load_recipe("heavy"))
    assert "ElasticTransform" in text and "__class_fullname__" not in text
    path = write(tmp_path, text)
    assert torch.equal(augment_images(x, path, seed=2)[0], augment_images(x, "heavy", seed=2)[0])


def test_albumentations_own_yaml_files_are_read(tmp_path):
    x = blobs(12, 1, 28, 28)
    path = tmp_path / "native.yaml"
    A.save(load_recipe("medium"), str(path), data_format="yaml")
    assert torch.equal(augment_images(x, path, seed=4)[0], augment_images(x, "medium", seed=4)[0])


def test_containers_take_their_children_under_transforms(tmp_path):
    spec = (
        "transforms:\n"
        "  - OneOf:\n"
        "      p: 1.0\n"
        "      transforms:\n"
        "        - GaussianBlur: {blur_limit: [3, 3], p: 1.0}\n"
        "        - GaussNoise: {std_range: [0.1, 0.2], p: 1.0}\n"
    )
    pipeline = load_recipe(write(tmp_path, spec))
    assert isinstance(pipeline.transforms[0], A.OneOf)
    x = blobs(8, 1, 16, 16)
    assert torch.equal(augment_images(x, pipeline, seed=0)[0], augment_images(x, pipeline, seed=0)[0])


@pytest.mark.parametrize(
    "text, words",
    [
        ("transforms:\n  - NoSuchTransform: {p: 1}\n", ["unknown transform", "NoSuchTransform", "transform 1"]),
        ("transforms:\n  - Affine: {rotate: abc}\n", ["Affine", "rotate"]),
        ("transforms:\n  - Affine: {p: 3}\n", ["Affine", "'p'"]),
        ("transforms:\n  - GaussNoise: {std_rnge: [0.1, 0.2]}\n", ["GaussNoise", "std_rnge"]),
        ("transforms:\n  - OneOf: {transforms: [{Nope: {}}]}\n", ["Nope", "OneOf"]),
        ("transforms:\n  - OneOf: {p: 1}\n", ["OneOf", "transforms"]),
        ("- Affine: {}\n", ["mapping", "list"]),
        ("just a string\n", ["mapping", "str"]),
        ("transforms: []\n", ["non-empty"]),
        ("transform: [\n", ["not valid YAML"]),
        ("transforms:\n  - Affine: 3\n", ["parameters of Affine"]),
        ("transforms:\n  - {Affine: {}, Blur: {}}\n", ["one 'TransformName"]),
        ("transforms:\n  - Affine: {}\nseed: 3\n", ["unknown key", "seed"]),
    ],
)
def test_bad_recipes_give_one_line_errors(tmp_path, text, words):
    with pytest.raises(GenaugError) as info:
        load_recipe(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message and "recipe.yaml" in message
    for word in words:
        assert word in message


def test_missing_recipe_file_and_unknown_name(tmp_path):
    with pytest.raises(GenaugError, match="not found.*nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(GenaugError, match="built-in recipes: light, medium, heavy"):
        load_recipe("extreme")


def test_recipes_that_change_size_or_dtype_or_fail_are_reported(tmp_path):
    x = blobs(2, 1, 8, 8)
    for spec, word in [
        ("transforms:\n  - Resize: {height: 4, width: 4}\n", "keep size"),
        ("transforms:\n  - Normalize: {}\n", "float32"),
        ("transforms:\n  - RandomCrop: {height: 16, width: 16}\n", "failed on image 0"),
    ]:
        with pytest.raises(GenaugError, match=word) as info:
            augment_images(x, write(tmp_path, spec), seed=0)
        assert "\n" not in str(info.value)


def test_bad_arguments_are_errors():
    x = blobs(2, 1, 8, 8)
    with pytest.raises(GenaugError, match="copies"):
        augment_images(x, "light", copies=0)
    with pytest.raises(GenaugError, match="seed"):
        augment_images(x, "light", seed=-1)
    with pytest.raises(GenaugError, match="uint8"):
        augment_images(x.float(), "light")


def test_augment_carries_labels_and_class_names_and_makes_unique_ids():
    data = ImageSet(
        blobs(6, 1, 8, 8),
        labels=np.array([0, 1, 2, 0, 1, 2]),
        class_names=["a", "b", "c"],
        ids=[f"img{i}" for i in range(6)],
        paths=[f"/data/{i}.png" for i in range(6)],
        source="somewhere",
    )
    result = augment(data, "medium", copies=2, seed=0)
    out = result.data
    assert len(out) == 12 and out.shape == data.shape
    np.testing.assert_array_equal(out.labels, np.tile(data.labels, 2))
    assert out.class_names == ["a", "b", "c"]
    assert len(set(out.ids)) == 12
    assert out.ids[0] == "img0#aug0" and out.ids[6] == "img0#aug1"
    assert out.paths is None and out.source == "augment:medium"
    np.testing.assert_array_equal(result.source_index, np.tile(np.arange(6), 2))
    np.testing.assert_array_equal(result.copy, np.repeat([0, 1], 6))
    assert result.columns()["source_id"][7] == "img1"
    assert torch.equal(out.images, augment_images(data.images, "medium", copies=2, seed=0)[0])


def test_augment_without_labels_keeps_none():
    out = augment(ImageSet(blobs(3, 3, 8, 8)), "light").data
    assert out.labels is None and len(out) == 3


def _identity(image, **kwargs):
    return image


def test_pipelines_holding_code_cannot_be_dumped():
    pipeline = A.Compose([A.Lambda(image=_identity)])
    with pytest.raises(GenaugError, match="cannot be written as YAML"):
        recipe_to_yaml(pipeline)
