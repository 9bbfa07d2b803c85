"""The score arrays `bench_ood.py --save-scores` writes, read back for the offline analyses."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_saved_scores(paths: list[Path]) -> dict[str, np.ndarray]:
    """Every array of every file, by key (`seed|task|direction|...`).

    Keys start with the seed, so runs of different seeds pool; a key two files
    share (the same seed twice) stops the analysis instead of one run silently
    replacing the other's scores.
    """
    saved: dict[str, np.ndarray] = {}
    for path in paths:
        with np.load(path) as run:
            if clash := next((k for k in run.files if k in saved), None):
                raise SystemExit(f"{path}: '{clash}' is in an earlier file too; pool runs of different seeds")
            saved.update({k: run[k] for k in run.files})
    return saved
