"""Start-up: `import genaug` is light, and Ctrl-C at any moment is one line and exit 130."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_importing_genaug_does_not_import_torch():
    code = "import sys, genaug; print(genaug.__version__); assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _wait_for(pid: int, library: str, timeout: float = 60.0) -> None:
    """Wait until process `pid` has mapped a shared library whose path contains `library`."""
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if library in maps.read_text():
                return
        except OSError:
            return  # the process is gone; the assertions below say why
        time.sleep(0.01)


# Points in the run: while the CLI imports typer and rich (the first to map
# `_uuid`), while torch loads, and during training and scoring.
POINTS = [("_uuid.cpython", 0.0), ("libtorch", 0.0), ("libtorch", 1.0), ("libtorch", 3.0)]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to time the interrupt")
@pytest.mark.parametrize("library, delay", POINTS, ids=[f"{lib}+{d}s" for lib, d in POINTS])
def test_ctrl_c_is_one_line_and_exit_130(library, delay, tmp_path):
    # NOTE: not before the interpreter has started: a Ctrl-C while Python
    # itself imports `site` is answered by Python, before any genaug code runs.
    cmd = [sys.executable, "-m", "genaug", "detect-outliers", "digits", "-o", str(tmp_path / "o.parquet")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(proc.pid, library)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    # Progress lines may come first; the interrupt is the last line, once, with no traceback.
    assert stderr.endswith("\ninterrupted\n") or stderr == "interrupted\n", stderr
    assert stderr.count("interrupted") == 1 and "Traceback" not in stderr, stderr
    assert [p.name for p in tmp_path.iterdir()] == []


# A library that catches the KeyboardInterrupt and carries on, as mpmath's
# `try: import gmpy2 except:` does while torch's first optimizer imports it.
SWALLOWING_RUN = """
import os, signal, sys, time
import genaug.train
from genaug.cli import main

real_train = genaug.train.train

def train(*args, **kwargs):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except:  # noqa: E722  (the library's bare except)
        pass
    return real_train(*args, **kwargs)

genaug.train.train = train
import genaug.fit
genaug.fit.train = train
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_that_a_library_swallows_still_stops_the_job(tmp_path):
    out = tmp_path / "o.parquet"
    cmd = [sys.executable, "-c", SWALLOWING_RUN, "detect-outliers", "digits", "-o", str(out), "--epochs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.endswith("interrupted\n") and done.stderr.count("interrupted") == 1, done.stderr
    assert "trained" not in done.stderr, "training went on after the interrupt"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["detect-outliers", "--help"]])
def test_version_and_help_import_no_torch(args):
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "genaug", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "numpy" not in imported and "genaug.cli.app" in imported


def test_the_cli_choices_are_the_jobs_own():
    from genaug.cli import app
    from genaug.data.readers import _MODES
    from genaug.detect import DEFAULT_CONFORMAL, CONFORMAL
    from genaug.rebalance import AGGREGATES, METHODS

    assert set(app.DENSITIES) == set(METHODS) and app.AGGREGATES == AGGREGATES
    from genaug.pipelines import spec

    assert (app.CONFORMAL, app.DEFAULT_CONFORMAL) == (CONFORMAL, DEFAULT_CONFORMAL) and spec.CONFORMAL == CONFORMAL
    assert {_MODES[m] for m in app.MODES} == {"L", "RGB"}
