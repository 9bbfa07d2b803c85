"""User text is inert: markup and control sequences in file names, ids, labels,
class names and paths print literally, and the error path itself cannot fail."""

import io
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from genaug.cli import app as cli
from genaug.cli.app import main
from genaug.terminal import SafeConsole, inert

HOSTILE = ["[/x]", "[link=https://evil.example]x[/link]", "\x1b]0;owned\x07", "\x1b[2J", ":smile:", "[bold]b"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@given(st.text())
def test_inert_text_holds_no_control_characters(text):
    shown = inert(text)
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in shown)
    assert "\u202e" not in shown


@given(st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cf"))))
def test_inert_leaves_printable_text_alone(text):
    assert inert(text) == text


def test_safe_console_prints_markup_literally_and_escapes_esc():
    buffer = io.StringIO()
    console = SafeConsole(file=buffer, force_terminal=True, width=200)
    console.print("id " + " ".join(HOSTILE))
    shown = buffer.getvalue()
    assert "[/x]" in shown and "[link=https://evil.example]x[/link]" in shown and ":smile:" in shown
    assert "\x1b" not in shown and "\x07" not in shown
    assert "\\x1b]0;owned\\x07" in shown


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """Class folders and file names made of markup and escape sequences (valid, if odd, names)."""
    root = tmp_path_factory.mktemp("hostile") / "data[/x]"
    rng = np.random.default_rng(0)
    # "/" cannot be part of a file name; "[/x]" stands in the root's path instead.
    for c, name in enumerate(["cls[bold]b", "[link=https:evil.example]x", "esc\x1b]0;owned\x07"]):
        (root / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img{i}[red]\x1b[2J.png")
    return root


def test_hostile_names_print_literally_and_the_job_succeeds(hostile_folder, capsys, tmp_path):
    out = tmp_path / "out[/x]\x1b[2J.parquet"
    code, stdout, stderr = run_cli(capsys, "detect-outliers", hostile_folder, "-o", out, "--epochs", "1", "--top", "30")
    assert code == 0, stderr
    assert out.exists()
    shown = stdout + stderr
    assert "\x1b" not in shown and "\x07" not in shown
    assert "out[/x]\\x1b[2J.parquet" in stdout  # the output path, literally
    ids = pq.read_table(out)["id"].to_pylist()
    assert "cls[bold]b/img0[red]\x1b[2J.png" in ids  # the data keeps its real names
    code, stdout, stderr = run_cli(capsys, "info", hostile_folder)
    assert code == 0, stderr
    assert "[link=https:evil.example]x (10)" in stdout and "\x1b" not in stdout


def test_string_labels_with_markup_print_literally(capsys, tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(png, format="PNG")
    labels = ["[red]a", "\x1b[31mb", "[/x]"]
    table = pa.table({"image": [png.getvalue()] * 3, "label": labels})
    pq.write_table(table, tmp_path / "t.parquet")
    code, stdout, stderr = run_cli(capsys, "info", tmp_path / "t.parquet")
    assert code == 0, stderr
    assert "[red]a (1)" in stdout and "[/x] (1)" in stdout and "\\x1b[31mb (1)" in stdout
    assert "\x1b" not in stdout


def test_errors_quoting_user_text_are_one_literal_line(capsys, tmp_path):
    missing = tmp_path / "no[/x]such\x1b[2J\nfile.npz"
    code, stdout, stderr = run_cli(capsys, "info", missing)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "no[/x]such\\x1b[2J\\x0afile.npz" in lines[0]
    code, _, stderr = run_cli(capsys, "detect-outliers", "digits", "--bogus[/x]", "-o", tmp_path / "o.parquet")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "--bogus[/x]" in stderr


def test_the_error_path_cannot_raise(monkeypatch, capfd, tmp_path):
    def broken_print(*args, **kwargs):
        raise UnicodeEncodeError("ascii", "é", 0, 1, "stderr cannot take this")

    monkeypatch.setattr(cli.err, "print", broken_print)
    code, _, stderr = run_cli(capfd, "info", tmp_path / "missing-é.npz")  # the fallback writes to fd 2
    assert code == 2
    assert stderr.startswith("error: ") and "missing-\\xe9.npz" in stderr and len(stderr.splitlines()) == 1
