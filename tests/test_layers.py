"""The package's layers, checked by import-linter's contracts in pyproject.toml.

reference < config, tasks < rtl < sim, boards, host < app (cli, runs, spec, sweep, backends,
bench, experiments, plots), with the file writer and the toolchain at the bottom: a module
imports only from its own layer or below.

The repository maps ``dpfm.rtl`` to ``rtl/`` and so on (pyproject's ``package-dir``), which
import-linter cannot follow, so the check runs on a copy of the sources laid out as the
installed package is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path) -> Path:
    """Copy every package's ``.py`` files to ``dest`` as ``dest/dpfm/...``; returns ``dest``."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = setup["package-dir"]
    for package in setup["packages"]:
        parent = package
        while parent not in dirs:           # dpfm.experiments lives inside dpfm/
            parent = parent.rpartition(".")[0]
        src = REPO / dirs[parent] / Path(*package.split(".")[len(parent.split(".")):])
        out = dest / Path(*package.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, out / f.name)
    return dest


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter with the repository's contracts, on the package laid out under ``root``."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), str(REPO / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=600)


def test_layers_hold(tmp_path):
    done = lint_imports(installed_layout(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The check can fail: the reference importing the host breaks the contract."""
    root = installed_layout(tmp_path)
    ops = root / "dpfm" / "reference" / "ops.py"
    ops.write_text(ops.read_text() + "\nimport dpfm.host  # planted\n")
    done = lint_imports(root)
    assert done.returncode != 0 and "dpfm.reference.ops -> dpfm.host" in done.stdout, \
        done.stdout[-3000:]
