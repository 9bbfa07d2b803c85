"""`OutlierDetector`: genaug's detection as a scikit-learn / PyOD style estimator.

    detector = genaug.OutlierDetector(family="vae", fdr=0.05, epochs=30)
    detector.fit(clean_images)                 # genaug.fit: model + calibration split
    detector.decision_function(new_images)     # higher = more anomalous (PyOD's convention)
    detector.predict(new_images)               # 1 = outlier, 0 = inlier (PyOD's labels)
    detector.p_values(new_images)              # conformal p-values against the calibration split
    detector.save("detector.safetensors"); genaug.OutlierDetector.load("detector.safetensors")

It is backed by the same code as `genaug detect-outliers` (`genaug.fit` and
`genaug.detect_outliers` in reference mode), so the flags are BH at `fdr`
over the images passed to `predict` (or the top `contamination` share of
them), exactly as the CLI flags a batch. `audit(X)` is the self-audit
(out-of-fold scores of X, no reference) and returns the full result.

Conventions, where scikit-learn and PyOD differ: `decision_function` and
`predict` follow PyOD (higher = more anomalous; 1 = outlier);
`score_samples` follows scikit-learn (higher = more normal: minus the
score). X is anything `genaug.load_images` reads: a path or URI, an
ImageSet, a uint8 array or tensor, a Hugging Face or torch dataset.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

from genaug.data.readers import as_imageset
from genaug.detect import DEFAULT_CONFORMAL, DEFAULT_FDR
from genaug.errors import GenaugError
from genaug.fit import DEFAULT_CALIBRATION_FRACTION
from genaug.progress import AUTO

ESTIMATOR_KEY = "estimator"  # the estimator's parameters in the checkpoint's metadata


class OutlierDetector(OutlierMixin, BaseEstimator):
    """Fit a generative model on trusted images, then score and flag new ones (see the module docstring).

    Parameters are those of `genaug fit` and `genaug detect-outliers`:
    `family`, `score` (auto, llr, complexity, nll, typicality, ensemble, or
    the family's raw scores), `fdr`, `contamination` (flag a share instead
    of BH), `conformal` ("extended" or "exact" p-values), training
    `epochs`, `time_limit` (minutes), `batch_size`, `lr`, `device`, `seed`,
    `model_options` (constructor options, e.g. {"latent_dim": 32}), `llr` (train the background model; None: where
    `auto` uses it, i.e. for vae), `calibration_fraction`, and `progress`
    (True, False or "auto": a terminal or notebook).
    """

    def __init__(
        self,
        family: str = "vae",
        *,
        score: str = "auto",
        fdr: float = DEFAULT_FDR,
        contamination: float | None = None,
        conformal: str = DEFAULT_CONFORMAL,
        epochs: int | None = None,
        time_limit: float | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        device: str = "auto",
        seed: int = 0,
        model_options: dict | None = None,
        llr: bool | None = None,
        calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION,
        progress: bool | str = AUTO,
    ) -> None:
        # scikit-learn's rule: store the parameters as given; check them in `fit`.
        self.family = family
        self.score = score
        self.fdr = fdr
        self.contamination = contamination
        self.conformal = conformal
        self.epochs = epochs
        self.time_limit = time_limit
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.seed = seed
        self.model_options = model_options
        self.llr = llr
        self.calibration_fraction = calibration_fraction
        self.progress = progress

    # -- fitting -----------------------------------------------------------------
    def fit(self, X, y=None):
        """Train on X (labels are not used), hold out `calibration_fraction` to calibrate p-values."""
        from genaug.fit import fit

        data = as_imageset(X)
        self.model_ = fit(
            data, family=self.family, model_options=self.model_options, calibration_fraction=self.calibration_fraction,
            llr=self.llr, train_config=self._train_config(), console=self._console(),
        )  # fmt: skip
        self.model_.metadata[ESTIMATOR_KEY] = self.get_params()
        self.n_features_in_ = int(np.prod(data.shape))
        result = self.detect(data)
        # PyOD's fitted attributes: the training images' own scores (in-sample: optimistic) and flags.
        self.decision_scores_ = result.score
        self.labels_ = result.is_outlier.astype(np.int64)
        self.threshold_ = float(result.score[result.is_outlier].min()) if result.is_outlier.any() else float("inf")
        return self

    def _train_config(self):
        from genaug.train import TrainConfig

        given = {"epochs": self.epochs, "time_limit": self.time_limit, "batch_size": self.batch_size, "lr": self.lr}
        return TrainConfig(device=self.device, seed=self.seed, progress=self.progress is not False,
                           **{k: v for k, v in given.items() if v is not None})  # fmt: skip

    def _console(self):
        if self.progress is True:
            from genaug.terminal import SafeConsole

            return SafeConsole(stderr=True)
        return None if self.progress is False else AUTO

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise GenaugError("this OutlierDetector is not fitted yet; call fit(X) first (or OutlierDetector.load)")

    # -- scoring -----------------------------------------------------------------
    def detect(self, X):
        """The full `DetectionResult` of X against the fitted model: scores, p-values, flags, rarity, table()."""
        from genaug.detect import detect_outliers

        self._check_fitted()
        return detect_outliers(as_imageset(X), model=self.model_, score=self.score, fdr=self.fdr,
                               contamination=self.contamination, conformal=self.conformal,
                               console=self._console())  # fmt: skip

    def decision_function(self, X) -> np.ndarray:
        """[N] anomaly scores of X, higher = more anomalous (PyOD's convention)."""
        return self.detect(X).score

    def score_samples(self, X) -> np.ndarray:
        """[N] scikit-learn's convention: higher = more normal (minus `decision_function`)."""
        return -self.decision_function(X)

    def p_values(self, X) -> np.ndarray:
        """[N] conformal p-values of X against the calibration split (small = unlike the training data;
        extended beyond the largest calibration score unless `conformal="exact"`)."""
        return self.detect(X).p_value

    def predict(self, X) -> np.ndarray:
        """[N] 1 for an outlier, 0 for an inlier: BH at `fdr` over X (or the top `contamination` of X)."""
        return self.detect(X).is_outlier.astype(np.int64)

    def audit(self, X, *, refit: float | None = None):
        """Self-audit X (no reference: each image scored by a model trained on the other fold),
        with this detector's settings; returns the `DetectionResult`. Needs no fit. `refit`: a
        second round without the first round's top share, as `detect_outliers(..., refit=...)`."""
        from genaug.detect import detect_outliers

        return detect_outliers(as_imageset(X), family=self.family, model_options=self.model_options,
                               score=self.score, fdr=self.fdr, contamination=self.contamination, refit=refit,
                               train_config=self._train_config(), console=self._console())  # fmt: skip

    # -- persistence ---------------------------------------------------------------
    def save(self, path) -> None:
        """The fitted model and these parameters as one safetensors checkpoint."""
        from genaug.models.store import save_model

        self._check_fitted()
        self.model_.metadata[ESTIMATOR_KEY] = self.get_params()
        save_model(self.model_, path)

    @classmethod
    def load(cls, path, *, device: str = "auto") -> OutlierDetector:
        """A fitted detector from a checkpoint written by `save` (or any `genaug fit` checkpoint,
        which gets the default parameters for its family)."""
        from genaug.models.store import load_model
        from genaug.train import resolve_device

        model = load_model(path, device=resolve_device(device))
        params = model.metadata.get(ESTIMATOR_KEY)
        known = cls().get_params()
        params = {k: v for k, v in params.items() if k in known} if isinstance(params, dict) else {"family": model.name}
        detector = cls(**{**params, "device": device})
        detector.model_ = model
        detector.n_features_in_ = model.num_dims
        return detector

    def __sklearn_tags__(self):  # scikit-learn >= 1.6 reads these; older versions ignore the method
        tags = super().__sklearn_tags__()
        # X is images in any form genaug reads, not a 2-D float array.
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        return tags
