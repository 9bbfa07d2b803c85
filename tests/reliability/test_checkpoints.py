"""A checkpoint is untrusted input: every hostile variant is one line, before anything is built from it."""

import errno
import json
import os
import resource

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import genaug.checkpoint as checkpoint
import genaug.models.store as store
from genaug.cli.app import main
from genaug.detect import detect_outliers
from genaug.errors import GenaugError
from genaug.fit import fit
from genaug.models import build_model, load_model, save_model
from genaug.train import TrainConfig

TINY = {"latent_dim": 2, "channels": 4, "hidden": 16}


@pytest.fixture(scope="module")
def fitted(digits):
    """A tiny VAE fitted on 300 digits (so it has a calibration record with reconstructions)."""
    return fit(digits.subset(np.arange(300)), model_options=TINY, train_config=TrainConfig(epochs=2, progress=False))


@pytest.fixture(scope="module")
def good(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.safetensors"
    save_model(fitted, path)
    return path


def contents(path):
    """(tensors, metadata) of a checkpoint, read with safetensors directly (no genaug checks)."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["genaug"])
    return load_file(str(path)), meta


def write(path, tensors, meta):
    """A checkpoint with exactly these tensors and metadata (json.dumps writes NaN as NaN)."""
    save_file(tensors, str(path), metadata={"genaug": json.dumps(meta)})
    return path


def test_a_saved_checkpoint_gives_the_same_p_values_as_the_model_that_wrote_it(fitted, good, digits):
    data = digits.subset(np.arange(300, 400))
    loaded = load_model(good)
    x = data.images[:32]
    a = fitted.nll(x, generator=torch.Generator().manual_seed(0))
    b = loaded.nll(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    np.testing.assert_array_equal(detect_outliers(data, model=fitted).p_value, detect_outliers(data, model=good).p_value)
    assert loaded.metadata["calibration"] == fitted.metadata["calibration"]


def _first_float(tensors):
    return next(k for k, v in tensors.items() if v.is_floating_point())


def _set(meta, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        meta = meta[key]
    meta[last] = value


def _poison(tensors, value):
    key = _first_float(tensors)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    return key


# (what is changed, metadata edits {dotted field: value}, the message the refusal must hold)
METADATA_ATTACKS = {
    "NaN calibration score": (
        {"calibration.scores.bits_per_dim": [float("nan"), 1.0]}, "field 'calibration.scores.bits_per_dim'"
    ),
    "inf reconstruction score": (
        {"calibration.reconstruction.png_bits_per_dim": [float("inf")]},
        "field 'calibration.reconstruction.png_bits_per_dim'",
    ),
    "scores as strings": (
        {"calibration.scores.png_bits_per_dim": ["1.0"]}, "field 'calibration.scores.png_bits_per_dim'"
    ),
    "score lists of different lengths": ({"calibration.scores.png_bits_per_dim": [1.0]}, "field 'calibration.scores'"),
    "calibration a list": ({"calibration": [1.0]}, "field 'calibration'"),
    "iwae_k a boolean": ({"calibration.nll_options.iwae_k": True}, "field 'calibration.nll_options.iwae_k'"),
    "image_shape a string": ({"image_shape": "1x8x8"}, "field 'image_shape'"),
    "image_shape of 4 channels": ({"image_shape": [4, 8, 8]}, "field 'image_shape'"),
    "image_shape 10**6 wide": ({"image_shape": [1, 8, 10**6]}, "field 'image_shape'"),
    "num_classes a float": ({"num_classes": 2.0}, "field 'num_classes'"),
    "num_classes a boolean": ({"num_classes": True}, "field 'num_classes'"),
    "num_classes a string": ({"num_classes": "3"}, "field 'num_classes'"),
    "num_classes 10**12": ({"num_classes": 10**12}, "field 'num_classes'"),
    "init_args a list": ({"init_args": [2, 4, 16]}, "field 'init_args'"),
    "init_args nested": ({"init_args": {"latent_dim": {"a": 1}}}, "field 'init_args.latent_dim'"),
    "latent_dim 10**12": ({"init_args.latent_dim": 10**12}, "field 'init_args'.*latent_dim"),
    "latent_dim a string": ({"init_args.latent_dim": "2"}, "field 'init_args'.*latent_dim"),
    "unknown option": ({"init_args.depth": 3}, "field 'init_args'.*depth"),
    "family unknown": ({"family": "nope"}, "field 'family'.*unknown model family 'nope'"),
    "family an int": ({"family": 7}, "field 'family'"),
    "family with a newline": ({"family": "vae\nerror: fake"}, "field 'family'"),
    "class_names not strings": ({"class_names": [1, 2]}, "field 'class_names'"),
    "data a list": ({"data": ["digits"]}, "field 'data'"),
    "training a string": ({"training": "fast"}, "field 'training'"),
    "format_version 2": ({"format_version": 2}, "field 'format_version'"),
    "format_version missing": ({"format_version": None}, "field 'format_version'"),
}


@pytest.mark.parametrize("edits, message", METADATA_ATTACKS.values(), ids=METADATA_ATTACKS.keys())
def test_hostile_metadata_is_one_line_naming_the_field(good, tmp_path, edits, message):
    tensors, meta = contents(good)
    for field, value in edits.items():
        if value is None:
            del meta[field]
        else:
            _set(meta, field, value)
    bad = write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(GenaugError, match=message) as e:
        load_model(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def _nan_weight(tensors):
    return _poison(tensors, float("nan"))


def _inf_weight(tensors):
    return _poison(tensors, float("-inf"))


def _wrong_shape(tensors):
    key = _first_float(tensors)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    return key


def _missing(tensors):
    key = sorted(tensors)[-1]
    del tensors[key]
    return key


def _extra(tensors):
    tensors["extra.weight"] = torch.zeros(3)
    return "extra.weight"


def _wrong_dtype(tensors):
    key = _first_float(tensors)
    tensors[key] = tensors[key].double()
    return key


TENSOR_ATTACKS = {
    "NaN weight": (_nan_weight, "NaN or infinite"),
    "inf weight": (_inf_weight, "NaN or infinite"),
    "wrong shape": (_wrong_shape, "has shape"),
    "missing tensor": (_missing, "is missing"),
    "extra tensor": (_extra, "unexpected tensor"),
    "wrong dtype": (_wrong_dtype, "is F64, but model 'vae' needs F32"),
}


@pytest.mark.parametrize("attack, message", TENSOR_ATTACKS.values(), ids=TENSOR_ATTACKS.keys())
def test_hostile_tensors_are_one_line_naming_the_tensor(good, tmp_path, attack, message):
    tensors, meta = contents(good)
    key = attack(tensors)
    bad = write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(GenaugError, match=message) as e:
        load_model(bad)
    assert f"'{key}'" in str(e.value) and str(bad) in str(e.value) and "\n" not in str(e.value)


def _peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


HUGE = {
    # 3x4096x4096 images and every option at its bound: 2.9e9 weights, over the loader's cap.
    "over the cap": (
        [3, 4096, 4096],
        {"latent_dim": 4096, "channels": 1024, "hidden": 16384},
        "field 'init_args' asks for a 'vae' model of 2,879,801,368 weights",
    ),
    # The same options for 8x8 images: 7.5e8 weights (3 GB), under the cap, and the
    # same tensor names as the file's tiny ones; their shapes alone give it away.
    "under the cap": ([1, 8, 8], {"latent_dim": 4096, "channels": 1024, "hidden": 16384}, "has shape"),
}


@pytest.mark.parametrize("shape, options, message", HUGE.values(), ids=HUGE.keys())
def test_a_huge_model_is_refused_without_being_built(good, tmp_path, shape, options, message):
    tensors, meta = contents(good)
    meta["image_shape"] = shape
    meta["init_args"] = options
    bad = write(tmp_path / "big.safetensors", tensors, meta)
    before = _peak_rss_mib()
    with pytest.raises(GenaugError, match=message):
        load_model(bad)
    assert _peak_rss_mib() - before < 500  # building it would take gigabytes


def test_a_model_over_the_size_cap_is_refused_before_it_is_built(good, monkeypatch):
    n = sum(t.numel() for t in load_model(good).state_dict().values())
    monkeypatch.setattr(store, "MAX_CHECKPOINT_ELEMENTS", n - 1)
    with pytest.raises(GenaugError, match=f"field 'init_args' asks for a 'vae' model of {n:,} weights"):
        load_model(good)


def test_vae_options_are_exact_bounded_integers():
    for bad in ["abc", "8", 8.0, True, None, 0, -1, 4097]:
        with pytest.raises(GenaugError, match="latent_dim must be an integer in 1..4096"):
            build_model("vae", (1, 8, 8), latent_dim=bad)
    with pytest.raises(GenaugError, match="hidden must be an integer in 1..16384"):
        build_model("vae", (1, 8, 8), hidden=16385)
    with pytest.raises(GenaugError, match=r"unknown option\(s\) depth; it takes latent_dim, channels, hidden"):
        build_model("vae", (1, 8, 8), depth=3)
    # A numpy integer is an integer: accepted, and stored as a plain int.
    assert build_model("vae", (1, 8, 8), latent_dim=np.int64(3)).init_args()["latent_dim"] == 3
    assert type(build_model("vae", (1, 8, 8), latent_dim=np.int64(3)).init_args()["latent_dim"]) is int


def test_a_family_value_error_is_a_genaug_error(monkeypatch):
    from genaug.models.vae import VAE

    def picky(self, image_shape, num_classes=0, **options):
        raise ValueError("invalid literal for int() with base 10: 'abc'")

    monkeypatch.setattr(VAE, "__init__", picky)
    with pytest.raises(GenaugError, match="bad options for model 'vae': invalid literal"):
        build_model("vae", (1, 8, 8))


BAD_FOR_CLI = {
    "NaN weight": lambda t, m: _nan_weight(t),
    "NaN calibration": lambda t, m: m["calibration"]["scores"]["bits_per_dim"].__setitem__(0, float("nan")),
    "image_shape a string": lambda t, m: _set(m, "image_shape", "8x8"),
    "num_classes 10**12": lambda t, m: _set(m, "num_classes", 10**12),
    "latent_dim 10**12": lambda t, m: _set(m, "init_args", {**m["init_args"], "latent_dim": 10**12}),
    "missing tensor": lambda t, m: _missing(t),
}


@pytest.mark.parametrize("attack", BAD_FOR_CLI.values(), ids=BAD_FOR_CLI.keys())
def test_the_cli_refuses_a_hostile_checkpoint_in_one_line_and_touches_nothing(good, tmp_path, capsys, attack):
    tensors, meta = contents(good)
    attack(tensors, meta)
    bad = write(tmp_path / "bad.safetensors", tensors, meta)
    before = bad.read_bytes()
    out = tmp_path / "out.parquet"
    code = main(["detect-outliers", "digits", "-o", str(out), "--model-path", str(bad), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "bad.safetensors" in lines[0], err
    assert not out.exists() and bad.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]  # no temp file either


@pytest.mark.parametrize("value", ["abc", "2.5", "true", "0", "100000"])
def test_a_bad_model_option_exits_2(tmp_path, capsys, value):
    out = tmp_path / "m.safetensors"
    code = main(["fit", "digits", "-o", str(out), "--model-option", f"latent_dim={value}", "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "latent_dim" in err
    assert not out.exists()


def test_a_full_disk_is_one_line_and_leaves_the_old_checkpoint_and_no_temp_file(fitted, good, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    path.write_bytes(good.read_bytes())

    def full(filename, data):
        with open(filename, "wb") as f:  # a partial write, then the disk is full
            f.write(data[:7])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    with pytest.raises(GenaugError, match="cannot write checkpoint .*m.safetensors: No space left on device") as e:
        save_model(fitted, path)
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["m.safetensors"] and path.read_bytes() == good.read_bytes()


def test_a_failed_rename_leaves_no_temp_file(fitted, tmp_path, monkeypatch):
    def refused(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint.os, "replace", refused)
    with pytest.raises(GenaugError, match="Permission denied"):
        save_model(fitted, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_fit_on_a_full_disk_exits_2(tmp_path, capsys, monkeypatch):
    def full(filename, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write_bytes", full)
    out = tmp_path / "m.safetensors"
    opts = [a for k, v in TINY.items() for a in ("--model-option", f"{k}={v}")]
    code = main(["fit", "digits", "-o", str(out), "--epochs", "1", "--quiet", *opts])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "No space left" in err, err
    assert os.listdir(tmp_path) == []


def test_a_model_with_nan_weights_is_never_saved(tmp_path):
    model = build_model("vae", (1, 8, 8), **TINY)
    with torch.no_grad():
        model.to_posterior.bias[0] = float("nan")
    with pytest.raises(GenaugError, match="tensor 'to_posterior.bias' holds NaN"):
        save_model(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_nan_in_saved_metadata_is_refused(tmp_path):
    model = build_model("vae", (1, 8, 8), **TINY)
    model.metadata = {"calibration": {"bits_per_dim": [float("nan")], "png_bits_per_dim": [1.0]}}
    with pytest.raises(GenaugError, match="refusing to write checkpoint"):
        save_model(model, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []
