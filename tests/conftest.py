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


@pytest.fixture(scope="module")
def sum4():
    """A small sum4-like split, (X_train, y_train, X_val, y_val): 160 + 40 rows of 4 uniform
    inputs and their sum (the emulator and run-mode tests; a module may define its own)."""
    import numpy as np
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (200, 4))
    y = X.sum(axis=1, keepdims=True)
    return X[:160], y[:160], X[160:], y[160:]
