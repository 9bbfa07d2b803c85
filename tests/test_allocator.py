"""glibc's allocator tuning: on where glibc is the C library, off on request."""

import platform
import subprocess
import sys

import pytest

CHECK = "from genaug import allocator; print(allocator.tune(), allocator.tune())"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc only")
def test_the_thresholds_are_set_once_per_process_unless_turned_off(monkeypatch):
    monkeypatch.delenv("GENAUG_TUNE_MALLOC", raising=False)
    on = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert on == ["True", "True"]
    monkeypatch.setenv("GENAUG_TUNE_MALLOC", "0")
    off = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert off == ["False", "False"]
