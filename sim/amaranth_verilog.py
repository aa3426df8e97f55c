"""Amaranth components to Verilog for the cocotb/Verilator testbenches.

A ``wiring.Component`` converts with its ports taken from its signature, flattened with ``__``
separators: member ``i: In(stream.Signature(8))`` becomes ports ``i__payload``, ``i__valid`` and
``i__ready``; the clock domain adds ``clk`` and ``rst``.
"""

from __future__ import annotations

import os
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

__all__ = ["component_verilog", "write_component_verilog"]


def component_verilog(component: wiring.Component, *, name: str) -> str:
    """Verilog text of ``component`` as top-level module ``name``.

    Source-location attributes are left out, so the text (and with it the simulation build
    directory's hash) changes only when the hardware does.
    """
    if not isinstance(component, wiring.Component):
        raise TypeError(f"expected an amaranth.lib.wiring.Component, got {component!r}")
    if not name.isidentifier():
        raise ValueError(f"module name must be a Verilog identifier, got {name!r}")
    return verilog.convert(component, name=name, emit_src=False)


def write_component_verilog(
    component: wiring.Component, *, name: str, build_dir: str | os.PathLike
) -> Path:
    """Write ``component``'s Verilog to ``<build_dir>/<name>.v`` and return that path.

    The file is left untouched when its text is already current (keeps make-style rebuild
    checks quiet).
    """
    text = component_verilog(component, name=name)
    path = Path(build_dir) / f"{name}.v"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path
