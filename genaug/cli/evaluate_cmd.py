"""`genaug evaluate`: detection metrics of a scored Parquet file against the truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from genaug.cli.app import app, emit, err, handles_errors, out
from genaug.terminal import inert


@app.command("evaluate")
@handles_errors
def evaluate(
    scores: Annotated[Path, typer.Argument(help="A `genaug detect-outliers` output (.parquet).")],
    truth: Annotated[
        Optional[str],
        typer.Option(
            help="Column marking the true outliers (bool, or 0/1 with 1 = outlier), in SCORES unless --truth-file."
        ),
    ] = None,
    truth_file: Annotated[
        Optional[Path], typer.Option(help="Parquet file holding the --truth column, joined to SCORES on 'id'.")
    ] = None,
    outliers: Annotated[
        Optional[Path],
        typer.Option(
            help="The known outliers' ids: a .parquet with an 'id' column, or a text file with one id per line."
        ),
    ] = None,
    score_column: Annotated[str, typer.Option(help="Column to rank by (higher = more anomalous).")] = "score",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """AUROC, AUPR, FPR at 95% TPR and the flags' precision, recall and FDR against the truth."""
    from genaug.evaluate import evaluate as run_evaluation

    result = run_evaluation(scores, truth=truth, truth_file=truth_file, outliers=outliers, score_column=score_column)
    for note in result.notes:
        err.print(Text.assemble(("note:", "yellow"), " ", inert(note)))
    if json_output:
        emit(**result.to_dict())
    else:
        _print_table(result)


def _print_table(result) -> None:
    prevalence = result.n_outliers / result.n
    title = f"{result.score_column} of {result.source or 'the scores'} vs {result.truth_source}"
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    target = f" (target {result.target_fdr:g})" if result.target_fdr is not None else ""
    rows = {
        "images": str(result.n),
        "true outliers": f"{result.n_outliers} ({prevalence:.1%})",
        "AUROC": _number(result.auroc),
        "AUPR": _number(result.aupr) + (f" (chance {prevalence:.3f})" if result.aupr is not None else ""),
        "FPR at 95% TPR": _number(result.fpr_at_95_tpr),
        "flagged": f"{result.n_flagged}" + (f" ({result.flag_rule})" if result.flag_rule else ""),
        "precision": _number(result.precision),
        "recall": _number(result.recall),
        "realised FDR": _number(result.realised_fdr) + target,
    }
    for name, value in rows.items():
        table.add_row(name, value)
    out.print(table)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
