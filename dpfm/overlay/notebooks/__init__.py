"""The overlay's notebooks (``pynq get-notebooks dpfm`` copies this folder; the
``pynq.notebooks`` entry point names it).  Each picks its backend from ``$DPFM_BACKEND``:
``pynq`` on the board (the default), ``verilator`` in CI (tests/test_notebooks.py)."""
