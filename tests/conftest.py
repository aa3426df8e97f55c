"""Fixtures shared by several test modules."""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="session")
def tclsh() -> str:
    """Path of ``tclsh`` (Debian's tcl, ``make systools``); a failure, not a skip, when missing."""
    path = shutil.which("tclsh")
    if path is None:
        pytest.fail("no tclsh on PATH: `make systools` (tools/install-systools.sh) installs "
                    "Debian's tcl")
    version = subprocess.run([path], input="puts [info tclversion]\n", capture_output=True,
                             text=True, check=True).stdout.strip()
    assert tuple(map(int, version.split("."))) >= (8, 6), f"tclsh {version}: need Tcl 8.6"
    return path
