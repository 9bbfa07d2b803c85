"""--json on every command: stdout is one JSON object, for success and for every kind of error."""

import json

import numpy as np
import pytest

from genaug.cli.app import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("json")
    np.savez(folder / "d.npz", x=digits.images[:120].numpy(), y=digits.labels[:120])
    return folder


def run(capsys, *args):
    code = main([*map(str, args), "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)  # the whole of stdout is the one object
    assert out.count("\n") == 1 and isinstance(doc, dict)
    return code, doc


def test_every_command_answers_in_json(capsys, files):
    d, m, o = files / "d.npz", files / "m.safetensors", files / "o.parquet"
    code, doc = run(capsys, "fit", d, "-o", m, "--epochs", "1", "--no-llr", "-q")
    assert code == 0 and doc["ok"] and doc["command"] == "fit" and doc["output"] == str(m) and doc["seconds"] >= 0
    code, doc = run(capsys, "detect-outliers", d, "--model-path", m, "-o", o, "-q")
    assert doc["command"] == "detect-outliers" and doc["n_images"] == 120 and "settings" in doc and doc["warnings"]
    models = {m["family"]: m for m in run(capsys, "info", "--models")[1]["models"]}
    assert models["vae"]["auto"] == "llr" and models["pixelcnn++"]["auto"] == "complexity"
    assert run(capsys, "info", m)[1]["checkpoint"]["family"] == "vae"
    assert run(capsys, "info", o)[1]["dataset"]["n_images"] == 120
    assert run(capsys, "synthesize", "--model-path", m, "-n", 3, "-o", files / "s.parquet", "-q")[1]["n"] == 3
    doc = run(capsys, "rebalance", d, "-o", files / "r.parquet", "--epochs", "1", "-q")[1]
    assert doc["summary"]["n"] == 120 and "upweighted_groups" in doc
    assert run(capsys, "augment", d, "-o", files / "a.parquet", "-q")[1]["n_rows"] == 120
    assert run(capsys, "augment", "--show-recipe")[1]["recipe"].startswith("# genaug recipe \"light\"")  # no DATA, no -o
    doc = run(capsys, "evaluate", o, "--truth", "is_outlier")[1]
    assert doc["n"] == 120 and doc["auroc"] is None  # strict JSON: an undefined metric is null
    assert run(capsys, "report", o, "-o", files / "r.html")[1]["n_images"] == 120
    doc = run(capsys, "env")[1]
    assert doc["packages"]["torch"] and doc["threads"]["torch"] >= 1 and "available" in doc["cuda"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["detect-outliers", "no-such-data", "-o", "x.parquet"], 2, "no such file"),
        (["detect-outliers", "digits"], 2, "Missing option"),
        (["fit", "digits", "-o", "m.safetensors", "--epochs", "abc"], 2, "Invalid value for '--epochs'"),
        (["augment", "digits"], 2, "augment needs -o OUTPUT"),
    ],
)
def test_errors_answer_in_json_too(capsys, args, code, message):
    got, doc = run(capsys, *args)
    assert got == code and doc == {**doc, "ok": False, "exit_code": code} and message in doc["error"]
