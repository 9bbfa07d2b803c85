"""Start-up: `import genaug` is light, and Ctrl-C at any moment is one line and exit 130."""

import signal
import subprocess
import sys
import time

import pytest


def test_importing_genaug_does_not_import_torch():
    code = "import sys, genaug; print(genaug.__version__); assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("delay", [0.5, 1.0, 2.0])
def test_ctrl_c_at_start_up_is_one_line_and_exit_130(delay, tmp_path):
    # detect-outliers on digits runs long enough to be interrupted at every delay.
    cmd = [sys.executable, "-m", "genaug", "detect-outliers", "digits", "-o", str(tmp_path / "o.parquet")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == "interrupted", stderr
    assert not (tmp_path / "o.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
