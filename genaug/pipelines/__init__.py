"""Pipelines: `genaug run PIPELINE.yaml`, and the same in Python.

    from genaug.pipelines import Pipeline
    Pipeline.from_yaml("examples/clean_dataset.yaml").run()

`Pipeline` is imported on first use, so importing this package (or a
module inside it) stays light.
"""

from __future__ import annotations

__all__ = ["Pipeline"]


def __getattr__(name: str):
    if name == "Pipeline":
        from genaug.pipelines.runner import Pipeline

        return Pipeline
    raise AttributeError(f"module 'genaug.pipelines' has no attribute '{name}'")
