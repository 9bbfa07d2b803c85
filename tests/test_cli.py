"""The command line as a user meets it: results on stdout, one-line errors, no partial output."""

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genaug.cli.app import app, main

runner = CliRunner()
FAST = ["--epochs", "2", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "digits.safetensors"
    result = run("fit", "digits", "-o", path, *FAST)
    assert result.exit_code == 0, result.output
    return path


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("genaug ")


def test_self_audit_writes_one_row_per_image(tmp_path):
    out = tmp_path / "outliers.parquet"
    result = run("detect-outliers", "digits", "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "flagged" in result.output and "top 10 outliers" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 1797
    assert table["index"].to_pylist() == list(range(1797))


def test_reference_mode_and_info(tmp_path, model_path):
    out = tmp_path / "scored.parquet"
    result = run("detect-outliers", "digits", "-o", out, "--model-path", model_path, "--fdr", "0.1", "--quiet")
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    p = np.asarray(table["p_value"])
    assert ((p > 0) & (p <= 1)).all()
    info = run("info", model_path)
    assert info.exit_code == 0 and "vae" in info.output and "calibration scores" in info.output
    info = run("info", out)
    assert info.exit_code == 0 and "1797 images" in info.output and "written by genaug" in info.output


def _bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt" / "a"
    corrupt.mkdir(parents=True)
    (corrupt / "x.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    mixed = tmp_path / "mixed"
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 8, 8), np.uint8))
    import torch
    from PIL import Image

    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(mixed / "b.png")
    pickle = tmp_path / "model.safetensors"
    torch.save({"w": torch.zeros(2)}, pickle)
    np.savez(tmp_path / "three.npz", x=np.zeros((3, 8, 8), np.uint8))
    return {
        "too few to self-audit": ["detect-outliers", tmp_path / "three.npz"],
        "missing file": ["detect-outliers", tmp_path / "nope.npz"],
        "empty folder": ["detect-outliers", tmp_path / "empty"],
        "corrupt image": ["detect-outliers", tmp_path / "corrupt"],
        "mixed sizes": ["detect-outliers", mixed],
        "wrong column": ["detect-outliers", tmp_path / "ok.npz", "--model-path", pickle],
        "pickle checkpoint": ["detect-outliers", tmp_path / "ok.npz", "--model-path", pickle],
        "bad fdr": ["detect-outliers", "digits", "--fdr", "3"],
    }


def _other_commands_bad_inputs(tmp_path):
    """Bad input to the commands other than detect-outliers (each also takes -o)."""
    np.savez(tmp_path / "ok.npz", x=np.zeros((4, 8, 8), np.uint8))
    (tmp_path / "not_a_model.safetensors").write_bytes(b"not safetensors at all")
    return {
        "fit wrong suffix": ["fit", "digits", *FAST],
        "fit missing data": ["fit", tmp_path / "nope", *FAST],
        "rebalance bad density": ["rebalance", "digits", "--density", "histogramm", *FAST],
        "rebalance bad alpha": ["rebalance", "digits", "--alpha", "-1", *FAST],
        "rebalance per-class without labels": ["rebalance", tmp_path / "ok.npz", "--per-class", *FAST],
        "synthesize foreign checkpoint": ["synthesize", "--model-path", tmp_path / "not_a_model.safetensors", "-n", "4"],
        "synthesize missing checkpoint": ["synthesize", "--model-path", tmp_path / "nope.safetensors", "-n", "4"],
        "augment missing recipe file": ["augment", "digits", "--recipe", tmp_path / "nope.yaml", "--quiet"],
        "augment synthetic without model": ["augment", "digits", "--synthetic-ratio", "0.5", "--quiet"],
    }


def test_bad_input_is_one_line_nonzero_and_leaves_no_output(tmp_path, capsys):
    cases = _bad_inputs(tmp_path)
    cases["wrong column"] = ["detect-outliers", _parquet(tmp_path), "--image-column", "pixels"]
    cases = {name: [*args, *FAST] for name, args in cases.items()}
    cases.update(_other_commands_bad_inputs(tmp_path))
    cases["unknown option"] = ["detect-outliers", "digits", "--bogus"]
    cases["not a number"] = ["detect-outliers", "digits", "--fdr", "abc"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for name, args in cases.items():
        out = tmp_path / f"{name.replace(' ', '_')}.parquet"
        code = main([*map(str, args), "-o", str(out)])
        captured = capsys.readouterr()
        assert code == 2, (name, captured.err)
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, captured.err)
        assert not out.exists(), name
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.suffix == ".tmp"], name
    # The inputs are untouched.
    assert {p: p.read_bytes() for p in before} == before


def test_a_missing_output_option_is_one_line(capsys):
    assert main(["detect-outliers", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--output" in err and len(err.splitlines()) == 1


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    # The in-process runner above cannot see what the interpreter itself prints.
    out = tmp_path / "out.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "genaug", "detect-outliers", str(tmp_path / "nope.npz"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:") and proc.stdout == ""
    assert not out.exists()


def _parquet(tmp_path):
    import pyarrow as pa

    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"label": [0, 1]}), path)
    return path


def test_output_never_overwrites_the_input(tmp_path):
    src = tmp_path / "data.npz"
    np.savez(src, x=np.zeros((20, 8, 8), np.uint8))
    before = src.read_bytes()
    result = run("detect-outliers", src, "-o", src, *FAST)
    assert result.exit_code == 2
    assert src.read_bytes() == before
