"""A real headless browser for tests: Debian's `chromium`, installed when missing.

`render(page)` opens an HTML file in `chromium --headless` and returns the
DOM as the browser built it, after layout, image decoding and scripts. When
chromium is missing it is installed with apt-get (as root; `.ci/run` does
the same); only when that is impossible or fails does the calling test
skip, with apt-get's own words as the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PACKAGES = ("chromium", "chromium-driver")
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
# Enough for a cold start of chromium in a container; a page renders in about a second.
RENDER_TIMEOUT_SECONDS = 120

_install_failure: str | None = None


def chromium() -> str:
    """The chromium executable, installed first when missing; skips the test when it cannot be installed."""
    global _install_failure
    found = _find()
    if found:
        return found
    if _install_failure is None:
        _install_failure = _install() or "apt-get succeeded but installed no chromium executable"
        found = _find()
        if found:
            _install_failure = None
            return found
    pytest.skip(f"needs chromium, which is missing and could not be installed: {_install_failure}")


def _find() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install() -> str | None:
    """Install PACKAGES with apt-get; None on success, else why it failed."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine; install chromium by hand"
    if os.geteuid() != 0:
        return f"not root; run: sudo {' '.join(INSTALL)}"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    failure = None
    # The package lists may be missing or stale: update once and try again.
    for commands in ([INSTALL], [["apt-get", "update"], INSTALL]):
        for cmd in commands:
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                failure = f"{' '.join(cmd)}: {e}"
                break
            if done.returncode != 0:
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                failure = f"{' '.join(cmd)} exited {done.returncode}: {tail}"
                break
        else:
            return None
    return failure


def render(page: str | os.PathLike, *, budget_ms: int = 5000) -> str:
    """The DOM of `page` after chromium loaded it (and `budget_ms` of virtual time passed), serialised."""
    executable = chromium()
    with tempfile.TemporaryDirectory(prefix="genaug-chromium-") as profile:
        cmd = [
            executable,
            "--headless=new",
            "--no-sandbox",  # root in a container has no user namespaces for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            Path(page).resolve().as_uri(),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_SECONDS)
    if done.returncode != 0 or "<html" not in done.stdout:
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise AssertionError(f"chromium failed on {page} (exit {done.returncode}):\n{tail}")
    return done.stdout
