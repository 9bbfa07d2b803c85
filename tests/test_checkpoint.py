"""Checkpoints: safetensors + JSON, exact round trip, and nothing else is ever loaded."""

import pytest
import torch
from safetensors.torch import save_file

from genaug.errors import GenaugError
from genaug.models import build_model, load_model, model_hash, save_model


def test_round_trip_scores_identically(tmp_path):
    model = build_model("vae", (1, 8, 8), 3, latent_dim=8)
    model.metadata = {"class_names": ["a", "b", "c"], "calibration": {"bits_per_dim": [1.5, 2.5], "png_bits_per_dim": [3.0, 4.0]}}
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.arange(16) % 3
    a = model.eval().nll(x, y, generator=torch.Generator().manual_seed(0))
    b = loaded.nll(x, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert loaded.metadata["class_names"] == ["a", "b", "c"]
    assert loaded.metadata["calibration"]["bits_per_dim"] == [1.5, 2.5]
    assert loaded.config.latent_dim == 8 and model_hash(loaded) == model_hash(model)


def test_a_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(GenaugError, match="not a safetensors") as e:
        load_model(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content", [b"hello", b""])
def test_other_files_are_refused(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(GenaugError):
        load_model(path)


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(GenaugError, match="not a genaug checkpoint"):
        load_model(path)


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(GenaugError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(GenaugError, match=".safetensors"):
        save_model(build_model("vae", (1, 8, 8)), tmp_path / "m.pt")
