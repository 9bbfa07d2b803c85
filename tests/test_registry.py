"""Model families by name: built-ins, clear errors, and third-party plug-ins via entry points."""

from importlib.metadata import EntryPoint

import pytest
import torch
from torch import nn

import genaug.models.registry as registry
from genaug.errors import GenaugError
from genaug.models import GenerativeModel, build_model, load_model, save_model
from genaug.models.vae import VAE


class ToyModel(GenerativeModel):
    """A stand-in third-party family: a few parameters and one constructor option."""

    name = "toy"
    likelihood = "exact"

    def __init__(self, image_shape, num_classes=0, *, width=3):
        super().__init__(image_shape, num_classes)
        self.width = width
        self.bias = nn.Parameter(torch.full((width,), 0.5))

    def init_args(self):
        return {"width": self.width}


class NotAModel:
    pass


@pytest.fixture
def plugins(monkeypatch):
    found = [
        EntryPoint(name="toy", value=f"{__name__}:ToyModel", group=registry.ENTRY_POINT_GROUP),
        EntryPoint(name="broken", value=f"{__name__}:NotAModel", group=registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [e for e in found if e.group == group])


def test_builtin_families_are_listed_and_built():
    assert "vae" in registry.available_families()
    model = build_model("VAE", (1, 8, 8), latent_dim=4)
    assert isinstance(model, VAE) and model.image_shape == (1, 8, 8)


def test_unknown_family_and_bad_options_are_one_line_errors():
    with pytest.raises(GenaugError, match="unknown model family 'nope'; available: .*vae"):
        build_model("nope", (1, 8, 8))
    with pytest.raises(GenaugError, match="bad options for model 'vae'"):
        build_model("vae", (1, 8, 8), no_such_option=1)


def test_a_plugin_is_listed_built_and_round_trips_through_a_checkpoint(plugins, tmp_path):
    assert {"toy", "vae"} <= set(registry.available_families())
    model = build_model("toy", (1, 4, 4), width=5)
    with torch.no_grad():
        model.bias.fill_(2.0)
    save_model(model, tmp_path / "toy.safetensors")
    loaded = load_model(tmp_path / "toy.safetensors")
    assert isinstance(loaded, ToyModel) and loaded.width == 5
    assert torch.equal(loaded.bias, model.bias)


def test_a_plugin_that_is_not_a_generative_model_is_refused(plugins):
    with pytest.raises(GenaugError, match="not a GenerativeModel subclass"):
        registry.get_family("broken")


def test_missing_capabilities_are_clear_errors():
    # A family declares what it can do; the rest of the contract answers with one line.
    with pytest.raises(GenaugError, match="family 'toy' does not support sample"):
        ToyModel((1, 4, 4)).sample(2)
