"""The overlay's notebooks, executed with nbclient on the Verilator backend (the same cells
as on the board; only ``$DPFM_BACKEND`` differs).  A cell that raises fails the test.

The Configs are those the other tests build (the seed net at k=4, batch 10) plus k=16 for the
sweep, so the Verilator model cache is shared.  Each notebook's run time is printed (``-s``)
and written to ``build/notebooks/times.json``.
"""

from __future__ import annotations

import json
import time

import pytest

from dpfm.overlay import OVERLAY_DIR
from dpfm.toolchain import build_root

nbformat = pytest.importorskip("nbformat", reason="the dev extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the dev extra installs nbclient")

pytestmark = pytest.mark.sim

NOTEBOOKS = sorted(p.name for p in (OVERLAY_DIR / "notebooks").glob("*.ipynb"))

CI_ENV = {"DPFM_BACKEND": "verilator", "DPFM_K": "4", "DPFM_SWEEP_K": "4,16",
          "DPFM_NB_EPOCHS": "20", "MPLBACKEND": "Agg"}


def test_the_three_notebooks_are_packaged():
    assert NOTEBOOKS == ["1-train-sum4.ipynb", "2-k-sweep.ipynb", "3-gradient-registers.ipynb"]
    for name in NOTEBOOKS:          # committed without outputs
        nb = nbformat.read(OVERLAY_DIR / "notebooks" / name, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_on_verilator(name, tmp_path, monkeypatch):
    for key, value in CI_ENV.items():
        monkeypatch.setenv(key, value)             # the kernel inherits the environment
    nb = nbformat.read(OVERLAY_DIR / "notebooks" / name, as_version=4)
    t0 = time.monotonic()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.monotonic() - t0
    print(f"{name}: {seconds:.1f} s")
    out = build_root() / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    times = out / "times.json"
    record = json.loads(times.read_text()) if times.is_file() else {}
    record[name] = round(seconds, 1)
    times.write_text(json.dumps(record, indent=1, sort_keys=True))
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "Error" not in text
