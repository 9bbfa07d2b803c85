"""genaug: generative models as data-quality tools for image datasets.

The Python API mirrors the CLI::

    import genaug
    data = genaug.load_images("digits")
    result = genaug.detect_outliers(data)          # self-audit, out-of-fold
    result.to_pandas().sort_values("rank").head()

    model = genaug.fit(clean)                      # train + calibration split
    genaug.save_model(model, "model.safetensors")
    genaug.detect_outliers(new_data, model=model).write("outliers.parquet")
"""

__version__ = "0.1.0"

# NOTE: the job functions share their modules' names (genaug.fit is the
# function, genaug.fit's module is importable as usual); importing them here,
# after __version__, keeps `genaug.fit(...)` the function however the
# submodules are imported later.
from genaug.augment import augment  # noqa: E402
from genaug.data.imageset import ImageSet  # noqa: E402
from genaug.data.readers import load_images  # noqa: E402
from genaug.detect import DetectionResult, detect_outliers  # noqa: E402
from genaug.errors import GenaugError  # noqa: E402
from genaug.fit import fit  # noqa: E402
from genaug.models.store import load_model, save_model  # noqa: E402
from genaug.rebalance import RebalanceResult, rebalance  # noqa: E402
from genaug.synthesize import synthesize  # noqa: E402
from genaug.train import TrainConfig  # noqa: E402

__all__ = [
    "DetectionResult",
    "RebalanceResult",
    "GenaugError",
    "ImageSet",
    "TrainConfig",
    "__version__",
    "augment",
    "detect_outliers",
    "fit",
    "load_images",
    "load_model",
    "rebalance",
    "save_model",
    "synthesize",
]
