"""Model families by name, built-in and third-party.

Third-party packages register a family with an entry point in the group
`genaug.models` whose value is the `GenerativeModel` subclass.
"""

from __future__ import annotations

import inspect
from importlib import import_module
from importlib.metadata import entry_points

from genaug.errors import GenaugError
from genaug.models.base import GenerativeModel

ENTRY_POINT_GROUP = "genaug.models"

# name -> "module:Class"; imported lazily so `genaug --help` stays fast.
_BUILTIN = {
    "ae": "genaug.models.ae:Autoencoder",
    "gated-pixelcnn": "genaug.models.gated_pixelcnn:GatedPixelCNN",
    "pixelcnn": "genaug.models.pixelcnn:PixelCNN",
    "pixelcnn++": "genaug.models.pixelcnnpp:PixelCNNPlusPlus",
    "pixelrnn": "genaug.models.pixelrnn:PixelRNN",
    "vae": "genaug.models.vae:VAE",
}


def available_families() -> list[str]:
    """Names of every family: built-in and from installed plug-ins."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def get_family(name: str) -> type[GenerativeModel]:
    """The class registered under `name`."""
    key = name.lower()
    if key in _BUILTIN:
        module, cls = _BUILTIN[key].split(":")
        return getattr(import_module(module), cls)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == key:
            family = ep.load()
            if not (isinstance(family, type) and issubclass(family, GenerativeModel)):
                raise GenaugError(f"plug-in '{key}' is not a GenerativeModel subclass")
            return family
    raise GenaugError(f"unknown model family '{name}'; available: {', '.join(available_families())}")


def build_model(
    family: str, image_shape: tuple[int, int, int], num_classes: int = 0, **init_args
) -> GenerativeModel:
    """A fresh model of `family` for images of `image_shape`.

    Options the family does not take are named in one GenaugError line, and
    so is a TypeError or ValueError its constructor raises for a bad value
    (e.g. `--model-option latent_dim=abc`): both are the user's input.
    """
    cls = get_family(family)
    unknown, known = _unknown_options(cls, init_args)
    if unknown:
        raise GenaugError(
            f"bad options for model '{family}': unknown option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(known) or 'none'}"
        )
    try:
        return cls(image_shape=tuple(image_shape), num_classes=num_classes, **init_args)
    except (TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GenaugError(f"bad options for model '{family}': {first}") from None


def _unknown_options(cls: type[GenerativeModel], init_args: dict) -> tuple[list[str], list[str]]:
    """(options `cls` does not take, the options it does); none unknown when it takes **kwargs."""
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        return [], []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [], []
    known = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    known = [n for n in known if n not in ("image_shape", "num_classes")]
    return sorted(set(init_args) - set(known)), known
