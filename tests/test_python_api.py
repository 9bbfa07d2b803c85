"""What Python users see: the CLI's warnings as Python warnings, progress where it can be seen,
integer columns that stay integer in pandas, files other users can read."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import genaug
from genaug.errors import GenaugWarning
from genaug.progress import progress_enabled, resolve_console, set_progress
from genaug.train import TrainConfig


@pytest.fixture(scope="module")
def small_model(digits):
    return genaug.fit(digits.subset(np.arange(600)), train_config=TrainConfig(epochs=2, progress=False), llr=False,
                      console=None)  # fmt: skip


def test_a_call_that_cannot_flag_anything_warns(small_model, digits):
    with pytest.warns(UserWarning, match="BH at fdr 0.01 flags nothing unless at least") as caught:
        genaug.detect_outliers(digits.subset(np.arange(100)), model=small_model, fdr=0.01, score="complexity",
                               conformal="exact")  # fmt: skip
    assert all(issubclass(w.category, GenaugWarning) for w in caught)
    assert caught[0].filename == __file__  # attributed to the caller's line, not genaug's


def test_the_cli_prints_each_warning_once(small_model, digits, tmp_path):
    genaug.save_model(small_model, tmp_path / "m.safetensors")
    np.savez(tmp_path / "few.npz", x=digits.images[:100].numpy())
    done = subprocess.run(
        [sys.executable, "-m", "genaug", "detect-outliers", tmp_path / "few.npz", "--model-path", tmp_path / "m.safetensors",
         "--fdr", "0.01", "--score", "complexity", "--conformal", "exact", "-o", tmp_path / "o.parquet", "-q"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("flags nothing unless") == 1 and "GenaugWarning" not in done.stderr


@pytest.mark.parametrize("env, shown", [("1", True), (None, False)])
def test_python_jobs_report_progress_where_it_can_be_seen(env, shown, digits, monkeypatch, capfd):
    monkeypatch.delenv("GENAUG_PROGRESS", raising=False)
    if env is not None:
        monkeypatch.setenv("GENAUG_PROGRESS", env)
    genaug.fit(digits.subset(range(60)), train_config=TrainConfig(epochs=2, batch_size=16), llr=False,
               model_options={"latent_dim": 4})  # fmt: skip
    # Without a terminal (stderr is captured here) the default is silence; GENAUG_PROGRESS=1 turns it on.
    err = capfd.readouterr().err
    assert ("trained vae for 2 epochs" in err) is shown, err


def test_set_progress_overrides_the_default(monkeypatch):
    monkeypatch.setenv("GENAUG_PROGRESS", "0")
    assert not progress_enabled()
    monkeypatch.setenv("GENAUG_PROGRESS", "1")
    try:
        set_progress(False)
        assert not progress_enabled() and resolve_console("auto") is None
        set_progress(True)
        assert resolve_console("auto") is not None
    finally:
        set_progress(None)
    assert progress_enabled()
    with pytest.raises(ValueError, match="console must be"):
        resolve_console("yes")


def test_integer_columns_stay_integer_in_pandas(digits):
    result = genaug.rebalance(digits.subset(np.arange(150)), train_config=TrainConfig(epochs=1, progress=False),
                              synthesize=5, console=None)  # fmt: skip
    df = result.to_pandas()
    assert str(df["index"].dtype) == "Int64" and str(df["rarity"].dtype) == "Int64"
    assert df["index"].isna().sum() == 5 and df["index"].iloc[:150].tolist() == list(range(150))


def test_outputs_are_readable_by_others_as_the_umask_allows(small_model, tmp_path):
    old = os.umask(0o022)
    try:
        genaug.save_model(small_model, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.safetensors").st_mode) == 0o644
