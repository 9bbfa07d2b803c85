"""Generative model families behind one contract (see `base.GenerativeModel`)."""

from genaug.models.base import GenerativeModel, bits_per_dim
from genaug.models.registry import available_families, build_model, get_family
from genaug.models.store import load_model, model_hash, save_model

__all__ = [
    "GenerativeModel",
    "available_families",
    "bits_per_dim",
    "build_model",
    "get_family",
    "load_model",
    "model_hash",
    "save_model",
]
