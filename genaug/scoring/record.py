"""The calibration record: the scores of a held-out clean split, stored in a checkpoint.

`genaug.fit` writes it (`CalibrationRecord.measure(...).to_metadata()`),
and every job that calibrates reads it back through `CalibrationRecord.of`:
one format, read in one place. It holds the raw material of every score the
family offers (bits/dim, PNG bits/dim, raw scores such as `recon`, and the
background model's bits/dim where the model has one, for `llr`, and the
distances to the nearest training images where it has a feature bank, for
`knn`), the
scoring options they were computed with (e.g. `iwae_k`), and optionally the
same for the model's reconstructions of that split (the reference for
decoder samples, see `genaug.synthesize`). Records written before a field
existed read back with it None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from genaug.errors import GenaugError
from genaug.scoring import RawScores

_LIKELIHOOD_KEYS = ("bits_per_dim", "png_bits_per_dim")


@dataclass
class CalibrationRecord:
    """Calibration scores of one held-out split (and of its reconstructions, where the family decodes)."""

    nll_options: dict
    scores: RawScores
    reconstruction: RawScores | None = None

    @property
    def size(self) -> int:
        """How many calibration images."""
        return len(self.scores.png_bits_per_dim)

    def to_metadata(self) -> dict:
        """The JSON document stored under `calibration` in a checkpoint."""
        doc = {"nll_options": dict(self.nll_options), "scores": _to_json(self.scores)}
        if self.reconstruction is not None:
            doc["reconstruction"] = _to_json(self.reconstruction)
        return doc

    @classmethod
    def of(cls, model) -> CalibrationRecord:
        """The record stored in `model.metadata`; one GenaugError line when it is missing or malformed."""
        doc = model.metadata.get("calibration")
        if not doc:
            raise GenaugError("the model has no calibration scores: fit it with `genaug fit` / genaug.fit()")
        if not isinstance(doc, dict):
            raise GenaugError("the model's calibration record is not a JSON object; refit the model")
        if "scores" not in doc and "bits_per_dim" in doc:
            # genaug 0.1 checkpoints: flat lists and `iwae_k` at the top.
            doc = {
                "nll_options": {"iwae_k": doc.get("iwae_k", 1)},
                "scores": {k: doc[k] for k in _LIKELIHOOD_KEYS if k in doc},
                **({"reconstruction": doc["reconstruction"]} if "reconstruction" in doc else {}),
            }
        options = doc.get("nll_options", {})
        if not isinstance(options, dict):
            raise GenaugError("calibration.nll_options must be a JSON object; refit the model")
        rec = doc.get("reconstruction")
        return cls(
            nll_options=options,
            scores=_from_json(doc.get("scores"), "calibration.scores"),
            reconstruction=None if rec is None else _from_json(rec, "calibration.reconstruction"),
        )


def _to_json(raw: RawScores) -> dict:
    doc = {"png_bits_per_dim": raw.png_bits_per_dim.tolist(), **{k: v.tolist() for k, v in raw.extra.items()}}
    if raw.bits_per_dim is not None:
        doc["bits_per_dim"] = raw.bits_per_dim.tolist()
    if raw.background_bits_per_dim is not None:
        doc["background_bits_per_dim"] = raw.background_bits_per_dim.tolist()
    if raw.knn_distance is not None:
        doc["knn_distance"] = raw.knn_distance.tolist()
    return doc


def _from_json(doc, where: str) -> RawScores:
    if not isinstance(doc, dict) or "png_bits_per_dim" not in doc:
        raise GenaugError(f"{where} must hold png_bits_per_dim and the model's scores; refit the model")
    arrays = {}
    for key, values in doc.items():
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
        ):
            raise GenaugError(f"{where}.{key} must be a list of finite numbers; refit the model")
        arrays[key] = np.asarray(values, dtype=np.float64)
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise GenaugError(f"{where} holds score lists of different lengths or none; refit the model")
    bpd = arrays.pop("bits_per_dim", None)
    png = arrays.pop("png_bits_per_dim")
    background = arrays.pop("background_bits_per_dim", None)
    knn = arrays.pop("knn_distance", None)
    return RawScores(bpd, png, [], arrays, background, knn_distance=knn)
