"""`genaug run`: run a pipeline file, skipping the steps whose inputs and settings are unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from genaug.cli.app import JsonOutput, Quiet, app, emit, err, handles_errors, out


@app.command("run")
@handles_errors
def run(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file (.yaml): source, model and steps; see examples/.")],
    force: Annotated[
        bool, typer.Option("--force", help="Run every step, even those whose outputs are up to date.")
    ] = False,
    quiet: Quiet = False,
    json_output: JsonOutput = False,
) -> None:
    """Run a pipeline: fit, detect_outliers, rebalance, synthesize, augment, filter and export steps, in order.

    The whole file is checked before any step runs. A step is skipped when its
    outputs record the same input hashes, settings and genaug version; a
    changed setting re-runs that step and the steps that read its output.
    """
    from genaug.pipelines.runner import Pipeline  # torch: only once a pipeline is run, never for --help

    result = Pipeline.from_yaml(pipeline).run(force=force, console=None if quiet else err)
    table = Table(title=f"pipeline {pipeline}", title_justify="left")
    for column in ("step", "kind", "status", "seconds", "why", "outputs"):
        table.add_column(column, justify="right" if column == "seconds" else "left")
    for step in result.steps:
        table.add_row(step.name, step.kind, step.status, f"{step.seconds:.1f}", step.reason,
                      "\n".join(_shorter(path) for path in step.outputs))  # fmt: skip
    out.print(table)
    out.print(f"{len(result.ran)} step(s) ran, {len(result.skipped)} skipped", highlight=False)
    emit(**{k: v for k, v in result.to_dict().items() if k != "seconds"})


def _shorter(path: str) -> str:
    """`path` relative to the working folder when it lies inside it (a table cell has little room)."""
    import os

    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
