"""genaug: generative models as data-quality tools for image datasets.

The Python API mirrors the CLI::

    import genaug
    data = genaug.load_images("digits")
    result = genaug.detect_outliers(data)          # self-audit, out-of-fold
    result.to_pandas().sort_values("rank").head()

    model = genaug.fit(clean)                      # train + calibration split
    genaug.save_model(model, "model.safetensors")
    genaug.detect_outliers(new_data, model=model).write("outliers.parquet")

Names are imported on first use: `import genaug` (and so `genaug --version`
or a Ctrl-C at start-up) does not wait for torch.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module

from genaug._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "augment": "genaug.augment",
    "complete": "genaug.completion",
    "ImageSet": "genaug.data.imageset",
    "load_images": "genaug.data.readers",
    "DetectionResult": "genaug.detect",
    "detect_outliers": "genaug.detect",
    "GenaugError": "genaug.errors",
    "GenaugWarning": "genaug.errors",
    "Evaluation": "genaug.evaluate",
    "evaluate": "genaug.evaluate",
    "fit": "genaug.fit",
    "OutlierDetector": "genaug.estimator",
    "load_model": "genaug.models.store",
    "save_model": "genaug.models.store",
    "set_progress": "genaug.progress",
    "RebalanceResult": "genaug.rebalance",
    "rebalance": "genaug.rebalance",
    "synthesize": "genaug.synthesize",
    "TrainConfig": "genaug.train",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


class _Package(types.ModuleType):
    """The package module: job functions keep their names when their modules are imported.

    NOTE: `genaug.fit` (like `genaug.evaluate`) is both a function and a module. Importing a
    submodule sets it as an attribute of the package, which would replace
    the function; here the function wins (import the module with
    `importlib.import_module("genaug.fit")`).
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        if name not in _EXPORTS:
            raise AttributeError(f"module 'genaug' has no attribute '{name}'")
        value = getattr(import_module(_EXPORTS[name]), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_EXPORTS))


sys.modules[__name__].__class__ = _Package
