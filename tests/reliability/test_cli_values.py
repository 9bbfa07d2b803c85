"""Option values a slip of the keyboard produces are one line and exit 2, before any work."""

import numpy as np
import pytest

from genaug.cli.app import main
from genaug.errors import GenaugError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("values") / "m.safetensors"
    assert main(["fit", "digits", "-o", str(path), "--epochs", "1", "--quiet"]) == 0
    return path


BAD = {
    "lr nan": ["fit", "digits", "--lr", "nan"],
    "lr inf": ["fit", "digits", "--lr", "inf"],
    "lr negative": ["fit", "digits", "--lr", "-1"],
    "epochs 0": ["fit", "digits", "--epochs", "0"],
    "seed 1e23": ["fit", "digits", "--seed", "1e23"],
    "seed 10**23": ["fit", "digits", "--seed", str(10**23)],
    "seed negative": ["detect-outliers", "digits", "--seed", "-1"],
    "iwae-k 0 in fit": ["fit", "digits", "--iwae-k", "0"],
    "iwae-k 0 in detect": ["detect-outliers", "digits", "--iwae-k", "0"],
    "fdr 1.5": ["detect-outliers", "digits", "--fdr", "1.5"],
    "fdr nan": ["detect-outliers", "digits", "--fdr", "nan"],
    "copies 10**9": ["augment", "digits", "--copies", str(10**9)],
    "max-pixels 0": ["info", "digits", "--max-pixels", "0"],
    "model option not a number": ["fit", "digits", "--model-option", "latent_dim=abc", "--epochs", "1"],
}


@pytest.mark.parametrize("args", BAD.values(), ids=BAD.keys())
def test_bad_values_are_one_line_and_exit_2(args, capsys, tmp_path):
    out = tmp_path / ("o.safetensors" if args[0] == "fit" else "o.parquet")
    full = args + (["-o", str(out)] if args[0] != "info" else []) + ["--quiet"] * (args[0] != "info")
    code = main(full)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


SYNTH_BAD = {"temperature nan": ["--temperature", "nan"], "temperature 0": ["--temperature", "0"],
             "n 10**12": ["-n", str(10**12)], "n 0": ["-n", "0"]}


@pytest.mark.parametrize("extra", SYNTH_BAD.values(), ids=SYNTH_BAD.keys())
def test_bad_synthesis_values_are_one_line_and_exit_2(extra, ckpt, capsys, tmp_path):
    args = ["synthesize", "--model-path", str(ckpt), "-o", str(tmp_path / "s.parquet"), "--quiet"]
    if "-n" not in extra:
        args += ["-n", "4"]
    code = main(args + extra)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_iwae_k_zero_is_refused_in_python_too(digits):
    import genaug

    with pytest.raises(GenaugError, match="iwae-k"):
        genaug.detect_outliers(digits.subset(np.arange(40)), iwae_k=0)
