"""dpfm.boards: the boards the engine is built for.

:mod:`dpfm.boards.pynq_z2` holds the PYNQ-Z2's Amaranth platform and processing-system settings;
``python -m dpfm.boards.build`` (:mod:`dpfm.boards.build`) writes the Vivado build tree and runs
Vivado; :mod:`dpfm.boards.wrapper` and :mod:`dpfm.boards.tcl` generate its Verilog top level and
its Tcl.
"""

from .pynq_z2 import ENGINE_BASE, FCLK0_HZ, PS7_SETTINGS, PynqZ2Platform

__all__ = ["PynqZ2Platform", "PS7_SETTINGS", "FCLK0_HZ", "ENGINE_BASE"]
