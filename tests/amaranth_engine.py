"""The RTL :class:`~dpfm.rtl.engine.Engine` in Amaranth's simulator, as a host Transport.

Not a test module: a helper the fast engine tests import (``from amaranth_engine import
AmaranthTransport``; pytest puts ``tests/`` on ``sys.path``).  It lets the unchanged
:class:`dpfm.host.Trainer` drive the engine's RTL over AXI4-Lite in seconds, without
Verilator, so bit-exact checks of the datapath against :mod:`dpfm.reference` can run in the
fast suite.
"""

from __future__ import annotations

from collections import deque

from amaranth.sim import Simulator

from dpfm.host.transport import BusError, Transport
from dpfm.rtl.engine import Engine

__all__ = ["AmaranthTransport"]


class AmaranthTransport(Transport):
    """32-bit register access to an :class:`Engine` simulated by :mod:`amaranth.sim`.

    Every :meth:`read` and :meth:`write` is one AXI4-Lite transaction on the engine's
    ``s_axil`` port, driven by a testbench process; the simulator is advanced until the
    response arrives.  An error response (SLVERR) raises :class:`BusError`, as the Verilator
    transport does.

    Parameters
    ----------
    config : dpfm.config.Config
        The engine built and simulated.
    engine : dpfm.rtl.engine.Engine, optional
        The engine to simulate, when not ``Engine(config)`` (e.g. the board's build, whose
        refused accesses answer OKAY).
    """

    name = "amaranth"
    counts_cycles = True

    def __init__(self, config, engine=None):
        super().__init__(config)
        self.engine = Engine(config) if engine is None else engine
        self._todo = deque()          # (op, addr, value) waiting for the bus master
        self._answers = deque()       # (data, resp) of finished transactions
        self._stop = False
        self.cycles = 0
        self.sim = Simulator(self.engine)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._master)

    async def _master(self, ctx):
        bus = self.engine.s_axil
        tick = ctx.tick()
        while not self._stop:
            if not self._todo:
                await tick
                self.cycles += 1
                continue
            op, addr, value = self._todo.popleft()
            if op == "write":
                ctx.set(bus.awaddr, addr)
                ctx.set(bus.wdata, value)
                ctx.set(bus.wstrb, 0b1111)
                ctx.set(bus.awvalid, 1)
                ctx.set(bus.wvalid, 1)
                ctx.set(bus.bready, 1)
                while True:
                    _, _, aw_ready, w_ready, b_valid, b_resp = await tick.sample(
                        bus.awready, bus.wready, bus.bvalid, bus.bresp)
                    self.cycles += 1
                    if aw_ready:
                        ctx.set(bus.awvalid, 0)
                    if w_ready:
                        ctx.set(bus.wvalid, 0)
                    if b_valid:
                        ctx.set(bus.bready, 0)
                        self._answers.append((None, b_resp))
                        break
            else:
                ctx.set(bus.araddr, addr)
                ctx.set(bus.arvalid, 1)
                ctx.set(bus.rready, 1)
                while True:
                    _, _, ar_ready, r_valid, r_data, r_resp = await tick.sample(
                        bus.arready, bus.rvalid, bus.rdata, bus.rresp)
                    self.cycles += 1
                    if ar_ready:
                        ctx.set(bus.arvalid, 0)
                    if r_valid:
                        ctx.set(bus.rready, 0)
                        self._answers.append((r_data, r_resp))
                        break

    def _access(self, op, addr, value=0):
        self._todo.append((op, int(addr) & (self.regmap.size - 1), int(value) & 0xFFFFFFFF))
        while not self._answers:
            self.sim.advance()
        return self._answers.popleft()

    def read(self, addr: int) -> int:
        data, resp = self._access("read", addr)
        if resp:
            raise BusError(addr, resp, write=False)
        return int(data)

    def write(self, addr: int, value: int) -> None:
        _, resp = self._access("write", addr, value)
        if resp:
            raise BusError(addr, resp, write=True)

    @property
    def total_cycles(self) -> int:
        return self.cycles

    def close(self) -> None:
        if not self._closed:
            self._stop = True
            self.sim.run()
        super().close()
