"""`genaug evaluate`: metrics are scikit-learn's, undefined ones are null, bad input is one line."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score, roc_curve
from typer.testing import CliRunner

from conftest import with_foreign_images
from genaug.cli.app import app, main
from genaug.data.parquet import write_table
from genaug.detect import detect_outliers
from genaug.errors import GenaugError
from genaug.evaluate import Evaluation, evaluate
from genaug.train import TrainConfig

runner = CliRunner()
KEYS = {
    "n", "n_outliers", "n_flagged", "true_positives", "false_positives", "auroc", "aupr", "fpr_at_95_tpr",
    "precision", "recall", "realised_fdr", "score_column", "truth_source", "source", "flag_rule", "target_fdr", "notes",
}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def scored(score, flags, truth=None, **extra) -> pa.Table:
    columns = {"id": [f"img-{i}" for i in range(len(score))], "score": score, "is_outlier": np.asarray(flags, bool)}
    if truth is not None:
        columns["truth"] = np.asarray(truth, bool)
    return pa.table({**columns, **extra})


def brute_force_fpr_at_95_tpr(truth: np.ndarray, score: np.ndarray) -> float:
    """Flag `score >= t` for every threshold t; the least FPR among those with TPR >= 0.95."""
    best = 1.0
    for t in [*np.unique(score), np.inf]:
        flagged = score >= t
        if (flagged & truth).sum() / truth.sum() >= 0.95:
            best = min(best, (flagged & ~truth).sum() / (~truth).sum())
    return best


rows = st.lists(
    st.tuples(
        # Small integers make ties, which is where ROC bookkeeping goes wrong.
        st.one_of(st.integers(-3, 3).map(float), st.floats(-1e6, 1e6, allow_nan=False)),
        st.booleans(),
        st.booleans(),
    ),
    min_size=2,
    max_size=60,
)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_metrics_match_scikit_learn(data):
    score = np.array([s for s, _, _ in data])
    truth = np.array([t for _, t, _ in data])
    flags = np.array([f for _, _, f in data])
    assume(0 < truth.sum() < len(truth))
    result = evaluate(scored(score, flags, truth), truth="truth")
    assert result.auroc == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
    assert result.aupr == pytest.approx(average_precision_score(truth, score), abs=1e-12)
    assert result.fpr_at_95_tpr == pytest.approx(brute_force_fpr_at_95_tpr(truth, score), abs=1e-12)
    assert result.recall == pytest.approx(recall_score(truth, flags), abs=1e-12)
    assert (result.n, result.n_outliers, result.n_flagged) == (len(score), truth.sum(), flags.sum())
    assert result.true_positives == (flags & truth).sum() and result.false_positives == (flags & ~truth).sum()
    if flags.any():
        assert result.precision == pytest.approx(precision_score(truth, flags), abs=1e-12)
        assert result.realised_fdr == pytest.approx(1 - precision_score(truth, flags), abs=1e-12)
    else:
        assert result.precision is None and result.realised_fdr == 0.0


def test_fpr_at_95_tpr_by_hand():
    # 20 outliers, 10 inliers. Scored from the top: 18 outliers, then two ties of one outlier and one inlier,
    # then the other 8 inliers. Flagging down to the first tie catches 19/20 = 95% of the outliers and
    # 1/10 inliers: FPR 0.1. (roc_curve's default drops that collinear point and would give 0.2.)
    score = np.r_[np.arange(100, 82, -1), 50, 50, 40, 40, np.arange(30, 22, -1)].astype(float)
    truth = np.r_[np.ones(18), 1, 0, 1, 0, np.zeros(8)].astype(bool)
    result = Evaluation.of(score, np.zeros(30, bool), truth)
    assert result.fpr_at_95_tpr == pytest.approx(0.1)
    fpr, tpr, _ = roc_curve(truth, score)
    assert fpr[tpr >= 0.95].min() == pytest.approx(0.2)
    # Perfectly separated scores reach every outlier before any inlier.
    assert Evaluation.of([3.0, 2.0, 1.0, 0.0], np.zeros(4, bool), np.array([1, 1, 0, 0], bool)).fpr_at_95_tpr == 0.0


@pytest.mark.parametrize("all_outliers", [False, True])
def test_one_class_truth_gives_null_ranking_metrics_not_a_crash(all_outliers):
    table = scored([0.5, 0.1, 0.9, 0.3], [True, False, True, False], [all_outliers] * 4)
    result = evaluate(table, truth="truth")
    assert (result.auroc, result.aupr, result.fpr_at_95_tpr) == (None, None, None)
    assert any("undefined" in note for note in result.notes)
    if all_outliers:
        assert (result.precision, result.recall, result.realised_fdr) == (1.0, 0.5, 0.0)
    else:
        assert (result.precision, result.recall, result.realised_fdr) == (0.0, None, 1.0)
    parsed = json.loads(result.to_json())
    assert parsed["auroc"] is None and parsed["fpr_at_95_tpr"] is None and set(parsed) == KEYS


def test_nothing_flagged_has_no_precision_and_zero_fdr():
    result = evaluate(scored([0.2, 0.9, 0.1], [False] * 3, [False, True, False]), truth="truth")
    assert result.precision is None and result.realised_fdr == 0.0 and result.recall == 0.0
    assert result.auroc == 1.0
    assert any("no image is flagged" in note for note in result.notes)


def test_integer_truth_and_arrays_in_row_order_read_like_bools():
    table = scored([0.2, 0.9, 0.1, 0.7], [False, True, False, False], as_int=[0, 1, 0, 1])
    by_column = evaluate(table, truth="as_int").to_dict()
    by_array = evaluate(table, truth=np.array([False, True, False, True])).to_dict()
    by_ids = evaluate(table, outliers=["img-1", "img-3"]).to_dict()
    metrics = ["auroc", "aupr", "fpr_at_95_tpr", "precision", "recall", "realised_fdr", "n_outliers"]
    assert [by_column[k] for k in metrics] == [by_array[k] for k in metrics] == [by_ids[k] for k in metrics]
    assert by_column["auroc"] == 1.0 and by_column["recall"] == 0.5


def test_api_errors_are_genaug_errors():
    table = scored([0.2, 0.9, np.nan], [False, True, False], [False, True, False])
    with pytest.raises(GenaugError, match="length mismatch"):
        evaluate(table.slice(0, 2), truth=np.array([True, False, False]))
    with pytest.raises(GenaugError, match="NaN or infinite for 1 of 3 images .*img-2"):
        evaluate(table, truth="truth")
    with pytest.raises(GenaugError, match="exactly one truth"):
        evaluate(table, truth="truth", outliers=["img-1"])
    with pytest.raises(GenaugError, match="exactly one truth"):
        evaluate(table)


# -- a real detect-outliers output ---------------------------------------------------
@pytest.fixture(scope="module")
def detection(digits, tmp_path_factory):
    """A self-audit of 200 digits, 10% of them foreign, written where the CLI reads it, with the truth beside it."""
    folder = tmp_path_factory.mktemp("evaluate")
    data, foreign = with_foreign_images(digits.subset(np.arange(200)), share=0.1, seed=0)
    result = detect_outliers(data, train_config=TrainConfig(epochs=1, progress=False, seed=0))
    result.write(folder / "scores.parquet")
    pq.write_table(pa.table({"id": data.ids, "foreign": foreign, "label": data.labels}), folder / "truth.parquet")
    (folder / "ids.txt").write_text("\n".join(np.array(data.ids)[foreign]) + "\n")
    pq.write_table(pa.table({"id": np.array(data.ids)[foreign]}), folder / "ids.parquet")
    return folder, result, foreign


def test_cli_json_matches_scikit_learn_on_a_real_detect_outliers_output(detection):
    folder, result, foreign = detection
    table = pq.read_table(folder / "scores.parquet")
    score, flags = np.asarray(table["score"]), np.asarray(table["is_outlier"])
    truth = ["--truth", "foreign", "--truth-file", folder / "truth.parquet"]
    cli = run("evaluate", folder / "scores.parquet", *truth, "--json")
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout)  # the whole of stdout is the one object
    assert set(report) == KEYS | {"ok", "command", "seconds"} and report["ok"] and report["command"] == "evaluate"
    assert (report["n"], report["n_outliers"], report["n_flagged"]) == (200, 20, flags.sum())
    assert report["auroc"] == pytest.approx(roc_auc_score(foreign, score))
    assert report["aupr"] == pytest.approx(average_precision_score(foreign, score))
    assert report["recall"] == pytest.approx(recall_score(foreign, flags))
    assert report["flag_rule"] == "BH at fdr 0.05" and report["target_fdr"] == 0.05
    # The same truth given as outlier ids (text or Parquet), or from the result in memory, gives the same numbers.
    metrics = ["auroc", "aupr", "fpr_at_95_tpr", "precision", "recall", "realised_fdr", "n_outliers"]
    for ids in ("ids.txt", "ids.parquet"):
        again = json.loads(run("evaluate", folder / "scores.parquet", "--outliers", folder / ids, "--json").stdout)
        assert [again[k] for k in metrics] == [report[k] for k in metrics], ids
    in_memory = evaluate(result, truth=foreign).to_dict()
    assert [in_memory[k] for k in metrics] == [report[k] for k in metrics]


def test_truth_column_inside_the_scores_file_and_the_table_output(detection):
    folder, _, foreign = detection
    table = pq.read_table(folder / "scores.parquet")
    path = folder / "with_truth.parquet"
    pq.write_table(table.append_column("foreign", pa.array(foreign)), path)  # keeps the genaug metadata
    cli = run("evaluate", path, "--truth", "foreign")
    assert cli.exit_code == 0, cli.output
    auroc = roc_auc_score(foreign, np.asarray(table["score"]))
    assert "AUROC" in cli.stdout and f"{auroc:.3f}" in cli.stdout and "BH at fdr 0.05" in cli.stdout


def _bad_inputs(folder):
    folder = folder / "bad"
    folder.mkdir(exist_ok=True)
    scores, truth = folder.parent / "scores.parquet", folder.parent / "truth.parquet"
    ids = pq.read_table(scores, columns=["id"])["id"].to_pylist()
    nan = folder / "nan.parquet"
    write_table(scored([0.1, np.nan], [False, False]), nan, genaug_metadata={"job": "detect-outliers"})
    short = folder / "short.parquet"
    pq.write_table(pa.table({"id": ids[:-1], "foreign": [False] * (len(ids) - 1)}), short)
    twice = folder / "twice.parquet"
    pq.write_table(pa.table({"id": ids + ids[:1], "foreign": [False] * (len(ids) + 1)}), twice)
    floats = folder / "floats.parquet"
    pq.write_table(pa.table({"id": ids, "foreign": np.zeros(len(ids))}), floats)
    (folder / "other.txt").write_text("cat/001.png\ncat/002.png\n")
    np.savez(folder / "x.npz", x=np.zeros((2, 8, 8), np.uint8))
    return [
        ("no such file", [folder / "nope.parquet", "--truth", "foreign"]),
        ("not a detect-outliers output", [truth, "--truth", "foreign"]),
        ("column 'nope' not found", [scores, "--truth", "nope"]),
        ("holds 2; it must be bool", [scores, "--truth", "label"]),
        ("is double; it must be bool", [scores, "--truth", "foreign", "--truth-file", floats]),
        ("exactly one truth", [scores, "--truth", "foreign", "--outliers", folder / "other.txt"]),
        ("exactly one truth", [scores]),
        ("--truth-file needs --truth", [scores, "--outliers", folder / "other.txt", "--truth-file", truth]),
        ("are not in", [scores, "--truth", "foreign", "--truth-file", short]),
        ("more than once", [scores, "--truth", "foreign", "--truth-file", twice]),
        ("NaN or infinite", [nan, "--outliers", folder / "other.txt"]),
        ("none of the 2 outlier ids", [scores, "--outliers", folder / "other.txt"]),
        ("not a text file of ids", [scores, "--outliers", folder / "x.npz"]),
        ("is a folder", [scores, "--outliers", folder]),
    ]


def test_bad_input_is_one_line_and_a_nonzero_exit(detection, capsys):
    folder, _, _ = detection
    for expected, args in _bad_inputs(folder):
        code = main(["evaluate", *map(str, args), "--json"])
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        # stdout holds the error as the one JSON object, stderr the one line.
        answer = json.loads(captured.out)
        assert code == 2 and answer == {"ok": False, "command": "evaluate", "error": answer["error"], "exit_code": 2}
        assert expected in answer["error"] and captured.out.count("\n") == 1, (expected, captured)
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (expected, lines)


def test_a_scores_file_rewritten_without_metadata_still_evaluates_with_a_note(detection):
    folder, _, foreign = detection
    table = pq.read_table(folder / "scores.parquet").replace_schema_metadata(None)
    path = folder / "rewritten.parquet"
    pq.write_table(table, path)
    report = evaluate(path, truth="foreign", truth_file=folder / "truth.parquet")
    assert report.auroc == pytest.approx(roc_auc_score(foreign, np.asarray(table["score"])))
    assert report.flag_rule is None and any("no genaug metadata" in note for note in report.notes)
