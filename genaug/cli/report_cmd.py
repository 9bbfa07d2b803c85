"""`genaug report`: a self-contained HTML page of a detect-outliers result."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from genaug.cli.app import JsonOutput, _check_output, app, emit, handles_errors, out


@app.command("report")
@handles_errors
def report(
    scores: Annotated[Path, typer.Argument(help="A Parquet file written by `genaug detect-outliers`.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write.")],
    title: Annotated[Optional[str], typer.Option(help="Page title (default: from the file name).")] = None,
    max_images: Annotated[
        Optional[int],
        typer.Option("--max-images", min=1, help="Most images per grid; the page counts the rest (default: 500)."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Write one HTML page of the flagged images, the score histogram, per-class counts and the settings."""
    from genaug.report import MAX_IMAGES, write_report

    _check_output(output, ("SCORES", scores))
    result = write_report(scores, output, title=title, max_images=max_images or MAX_IMAGES)
    hidden = result.n_flagged - result.n_shown
    more = f" ({hidden:,} not shown; raise --max-images)" if hidden else ""
    out.print(
        f"report of {result.n_flagged:,} flagged of {result.n_images:,} images{more} -> {output}", highlight=False
    )
    emit(output=str(output), n_images=result.n_images, n_flagged=result.n_flagged, n_shown=result.n_shown)
