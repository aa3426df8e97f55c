"""The engine defects of issue 12 (1-5), each checked on Amaranth's simulator against the
reference, on small engines (the seed net at k=4, two sample lanes).

1. SGD_CS takes exactly the exponents :func:`dpfm.reference.sgd_scale` gives
   (``SGD_CS_MIN..SGD_CS_MAX``), refuses every other value, and a sgd step is bit-exact for
   each of them; no adder of the update is wider than the LOSS accumulator.
2. A reset in any phase of a step (the engine's only abort) leaves no dirty delta bank: the
   next step is bit-exact.
3. FLAGS: a flag raised in the cycle of CTRL.clear_flags stays raised.
4. The next layer's issue waits for every lane's write-back of its input, and MERGE_BUSY counts the cycles in
   which the merger of any active lane takes a candidate (lanes made to diverge by wrapping
   one lane's block).
5. The maxnorm reciprocal is ``RECIP_BITS`` wide: steps with the extreme ``max|delta|`` are
   bit-exact, and the update's multiply fits one DSP48E1.

The harness drives the AXI4-Lite port cycle by cycle and reaches the engine's FSM state, its
delta banks (``dmem<s>``) and its :class:`~dpfm.rtl.engine.StickyFlags` through the
elaborated fragment, so events can be timed to the cycle.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from amaranth.hdl import ClockDomain, Elaboratable, Fragment, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

import dpfm.rtl.engine as engine_module
from dpfm.config import Config
from dpfm.reference import MLP
from dpfm.reference.mlp import SGD_CS_MAX, SGD_CS_MIN, fixed_update, lr_quantize
from dpfm.rtl.dual_scale import DualScale
from dpfm.rtl.engine import DIV_CYCLES, RECIP_BITS, Engine
from dpfm.rtl.update import UpdateUnit, delta_bank_shape
from dpfm.rtl.regmap import CTRL, FLAGS, STATUS, UPDATE, Resp
from dpfm.rtl.topk import TopKMerger

CFG = Config(k=4, batch=2)
#: A smaller net for the test that runs 112 steps.
SMALL = Config(net=(3, 3, 1), activations=("tanh", "linear"), k=4, batch=2)
LR = 0.01


# --------------------------------------------------------------------------- harness
class _Top(Elaboratable):
    """The engine under an explicit ``sync`` domain whose reset the testbench drives."""

    def __init__(self, engine):
        self.engine = engine
        self.cd = ClockDomain("sync")

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = self.cd
        m.submodules.engine = self.engine
        return m


def _sub(fragment, name):
    for sub, sub_name, _ in fragment.subfragments:
        if sub_name == name:
            return sub
    raise KeyError(name)


class EngineSim:
    """One engine on Amaranth's simulator, with handles on its FSM, delta banks and flags.

    Parameters
    ----------
    config : Config
        The engine built.
    """

    def __init__(self, config: Config):
        self.config = config
        self.engine = Engine(config)
        self.regmap = self.engine.regmap
        self.top = _Top(self.engine)
        self.fragment = Fragment.get(self.top, None)
        body = _sub(self.fragment, "engine")
        fsm = body.generated["engine"]
        self.state, self.states = fsm.state, dict(fsm.encoding)
        unit_fsm = _sub(body, "upd").generated["update"]     # MAX ... UPD_DRAIN: the UpdateUnit's
        self.unit_state, self.unit_states = unit_fsm.state, dict(unit_fsm.encoding)
        self.banks = [_sub(body, f"dmem{s}").origins[0] for s in range(config.batch)]
        self.flags = _sub(body, "flags").origins[0]
        self.cycle = 0                       # clock cycles since the simulation began

    def run(self, bench, *monitors):
        """Run ``bench(bus)`` to its end, with ``monitor(ctx)`` processes in the background."""
        sim = Simulator(self.fragment)
        sim.add_clock(1e-8)

        async def counter(ctx):
            async for _ in ctx.tick():
                self.cycle += 1

        sim.add_testbench(counter, background=True)
        for mon in monitors:
            sim.add_testbench(mon, background=True)

        async def main(ctx):
            await bench(Bus(ctx, self))

        sim.add_testbench(main)
        sim.run()


class Bus:
    """AXI4-Lite master and register-level helpers of one :class:`EngineSim` testbench."""

    def __init__(self, ctx, sim: EngineSim):
        self.ctx, self.sim, self.cfg = ctx, sim, sim.config
        self.rm = sim.regmap
        self.axi = sim.engine.s_axil

    def _addr(self, name):
        return name if isinstance(name, int) else self.rm[name].offset

    async def write(self, name, value: int) -> int:
        """One write; returns the response code."""
        ctx, bus = self.ctx, self.axi
        ctx.set(bus.awaddr, self._addr(name)); ctx.set(bus.awvalid, 1)
        ctx.set(bus.wdata, value & 0xFFFFFFFF); ctx.set(bus.wstrb, 0xF); ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        aw = w = False
        while not (aw and w):
            _, _, awready, wready = await ctx.tick().sample(bus.awready, bus.wready)
            if awready and not aw:
                aw = True
                ctx.set(bus.awvalid, 0)
            if wready and not w:
                w = True
                ctx.set(bus.wvalid, 0)
        while True:
            _, _, bvalid, bresp = await ctx.tick().sample(bus.bvalid, bus.bresp)
            if bvalid:
                return bresp

    async def read(self, name) -> tuple:
        """One read; returns ``(word, response code)``."""
        ctx, bus = self.ctx, self.axi
        ctx.set(bus.araddr, self._addr(name)); ctx.set(bus.arvalid, 1); ctx.set(bus.rready, 1)
        while True:
            _, _, arready = await ctx.tick().sample(bus.arready)
            if arready:
                ctx.set(bus.arvalid, 0)
                break
        while True:
            _, _, rvalid, rdata, rresp = await ctx.tick().sample(bus.rvalid, bus.rdata, bus.rresp)
            if rvalid:
                return rdata, rresp

    async def write_reg(self, name, value: int):
        resp = await self.write(name, value)
        assert resp == Resp.OKAY, f"write of {value} to {name} answered {Resp(resp).name}"

    async def read_reg(self, name) -> int:
        value, resp = await self.read(name)
        assert resp == Resp.OKAY, f"read of {name} answered {Resp(resp).name}"
        return value

    async def read_signed(self, addr) -> int:
        value = await self.read_reg(addr)
        return value - (1 << 32) if value >> 31 else value

    async def load(self, params, X, y):
        for p, w in enumerate(params):
            await self.write_reg(self.rm["WEIGHTS"].addr(p), int(w))
        win, n_in = self.rm["SAMPLES"], self.cfg.n_in
        for s in range(len(X)):
            for c, v in enumerate(list(X[s]) + list(y[s])):
                await self.write_reg(win.row_addr(s, c), int(v))

    async def read_weights(self) -> np.ndarray:
        win = self.rm["WEIGHTS"]
        return np.array([await self.read_signed(win.addr(p)) for p in range(self.cfg.n_params)])

    async def read_outputs(self, n) -> np.ndarray:
        win = self.rm["OUTPUTS"]
        return np.array([[await self.read_signed(win.row_addr(s, o)) for o in range(self.cfg.n_out)]
                         for s in range(n)])

    async def read_loss(self) -> int:
        return await self.read_reg("LOSS_LO") | await self.read_reg("LOSS_HI") << 32

    async def program(self, update="maxnorm", *, batch_n=None, lr_q=None, sgd_q=None):
        await self.write_reg("BATCH_N", self.cfg.batch if batch_n is None else batch_n)
        await self.write_reg("UPDATE", UPDATE[update])
        if update == "maxnorm":
            await self.write_reg("LR_Q", lr_quantize(LR, self.cfg.formats) if lr_q is None else lr_q)
        if update == "sgd":
            await self.write_reg("SGD_CQ", sgd_q[0])
            await self.write_reg("SGD_CS", sgd_q[1])

    async def start(self):
        await self.write_reg("CTRL", 1 << CTRL["start"])

    async def wait_done(self, limit=20_000) -> int:
        for _ in range(limit):
            status = await self.read_reg("STATUS")
            if not status >> STATUS["busy"] & 1:
                return status
        raise AssertionError("the engine stays busy")

    async def wait_state(self, name, limit=20_000):
        """Tick until the FSM is in state ``name`` (seen after a clock edge)."""
        if name in self.sim.states:
            code, unit_code = self.sim.states[name], None
        else:                               # a state of the UpdateUnit, in the engine's UPDATE
            code, unit_code = self.sim.states["UPDATE"], self.sim.unit_states[name]
        for _ in range(limit):
            if self.ctx.get(self.sim.state) == code and \
                    (unit_code is None or self.ctx.get(self.sim.unit_state) == unit_code):
                return
            await self.ctx.tick()
        raise AssertionError(f"the FSM never reached {name}")

    async def ticks(self, n: int):
        """Wait ``n >= 0`` clock cycles (through a reset too)."""
        for _ in range(n):
            await self.ctx.tick()

    async def reset(self, cycles=2):
        self.ctx.set(self.sim.top.cd.rst, 1)
        await self.ticks(cycles)
        self.ctx.set(self.sim.top.cd.rst, 0)
        await self.ticks(1)

    async def step(self, update="maxnorm", **settings):
        await self.program(update, **settings)
        await self.start()
        return await self.wait_done()


# --------------------------------------------------------------------------- reference side
def _data(config: Config, seed: int, n=None):
    """Raw weights and a batch of raw samples: ``(params, X, y)``."""
    rng = np.random.default_rng(seed)
    fmt = config.formats
    n = config.batch if n is None else n
    net = MLP(list(config.net), list(config.activations), seed=seed)
    params, _ = fmt.weight.quantize(net.params)
    X, _ = fmt.value.quantize(rng.uniform(-1, 1, (n, config.n_in)))
    y, _ = fmt.value.quantize(rng.uniform(-1, 1, (n, config.n_out)))
    return params.astype(np.int64), X.astype(np.int64), y.astype(np.int64)


def _reference(config: Config, params, X, y, update="maxnorm", *, lr_q=None, sgd_q=None):
    """:meth:`MLP.step_raw` with the settings the engine's registers hold."""
    fmt = config.formats
    lr = (lr_quantize(LR, fmt) if lr_q is None else lr_q) / (1 << fmt.weight.frac)
    net = MLP(list(config.net), list(config.activations))
    return net.step_raw(X, y, params, config.k, lr, update, fmt, config.policy, sgd_q=sgd_q)


async def _check_step(bus, trace, n, what):
    weights = await bus.read_weights()
    assert np.array_equal(weights, trace.params), f"{what}: weights differ from the reference"
    assert np.array_equal(await bus.read_outputs(n), trace.forward.value), f"{what}: outputs differ"
    want_loss = int(np.sum(np.asarray(trace.error, dtype=np.int64) ** 2))
    assert await bus.read_loss() == want_loss, f"{what}: LOSS differs"


# --------------------------------------------------------------------------- 1: SGD_CS
def test_sgd_cs_register_takes_exactly_the_range_of_sgd_scale():
    """Every value outside SGD_CS_MIN..SGD_CS_MAX is refused (SLVERR, register unchanged,
    FLAGS.bus_error); both ends are taken; the reset value is a value the register takes."""
    sim = EngineSim(CFG)
    reg = sim.regmap["SGD_CS"]
    assert reg.value_range == (SGD_CS_MIN, SGD_CS_MAX) == (16, 127)
    refused = [-1 << 31, -128, -1, 0, 1, SGD_CS_MIN - 1, SGD_CS_MAX + 1, 255, 256, (1 << 31) - 1]

    async def bench(bus):
        assert await bus.read_reg("SGD_CS") == reg.reset == SGD_CS_MIN
        await bus.write_reg("SGD_CS", 40)
        for value in refused:
            await bus.write_reg("CTRL", 1 << CTRL["clear_flags"])
            resp = await bus.write("SGD_CS", value)
            assert resp == Resp.SLVERR, f"SGD_CS = {value} answered {Resp(resp).name}"
            assert await bus.read_reg("SGD_CS") == 40, f"SGD_CS = {value} changed the register"
            assert await bus.read_reg("FLAGS") >> FLAGS["bus_error"] & 1
        for value in (SGD_CS_MIN, SGD_CS_MAX):
            await bus.write_reg("SGD_CS", value)
            assert await bus.read_reg("SGD_CS") == value

    sim.run(bench)


def test_sgd_step_is_bit_exact_for_every_sgd_cs():
    """One sgd step for every exponent SGD_CS takes (16..127), each from the same weights and
    samples (a 3-3-1 net), bit-exact with the reference.  The old engine held the
    shift ``delta.frac + cs - weight.frac - sh`` in 8 bits cut to 7, so large cs wrapped."""
    sim = EngineSim(SMALL)
    params, X, y = _data(SMALL, seed=3)
    rng = np.random.default_rng(5)

    async def bench(bus):
        await bus.load(params, X, y)
        for cs in range(SGD_CS_MIN, SGD_CS_MAX + 1):
            c_q = int(rng.integers(1 << 16, 1 << 17)) if cs > SGD_CS_MIN else 1 << 16
            trace = _reference(SMALL, params, X, y, "sgd", sgd_q=(c_q, cs))
            for p, w in enumerate(params):       # the same weights every time
                await bus.write_reg(bus.rm["WEIGHTS"].addr(p), int(w))
            await bus.step("sgd", sgd_q=(c_q, cs))
            assert np.array_equal(await bus.read_weights(), trace.params), \
                f"SGD_CS = {cs}, SGD_CQ = {c_q}: weights differ from the reference"

    sim.run(bench)


def _top_cells(config: Config, kind: str, component=None) -> list:
    """``(parameters, connections)`` of the ``$kind`` cells of the engine's own module (or
    of ``component``'s)."""
    from amaranth.back import rtlil
    text = rtlil.convert(Engine(config) if component is None else component, name="engine_top")
    module = next(m for m in text.split("\nmodule ") if m.startswith("\\engine_top\n"))
    cells = []
    for cell in re.finditer(r"cell \$%s \S+\n(.*?)\n\s*end\n" % kind, module, re.S):
        params = {k: int(v) if v.isdigit() else v
                  for k, v in re.findall(r"parameter \\(\w+) (\S+)", cell.group(1))}
        conns = dict(re.findall(r"connect \\(\w+) (.*)", cell.group(1)))
        cells.append((params, conns))
    return cells


def test_update_datapath_widths():
    """No adder of the engine or its UpdateUnit is wider than the 64-bit LOSS accumulator's
    (the sgd rounding shift was a 129-bit add), and the update's multiplies ``Dn * (recip |
    c_q)``, one per parameter of a word, each fit one signed 25 x 18 DSP48E1 (it was 19 x 37
    with the 36-bit reciprocal)."""
    unit = UpdateUnit(CFG)
    widest = max(p["Y_WIDTH"] for p, _ in _top_cells(CFG, "add") + _top_cells(CFG, "add", unit))
    assert widest <= 66, f"an adder of {widest} bits"
    update_mul = [p for p, c in _top_cells(CFG, "mul", unit) if c["A"].startswith("\\dn2")]
    assert len(update_mul) == CFG.update_lanes, update_mul
    for mul in update_mul:
        a, b = sorted((mul["A_WIDTH"], mul["B_WIDTH"]))
        assert a <= 18 and b <= 25, f"the update multiply is {a} x {b} bits"
    assert RECIP_BITS == 20 and DIV_CYCLES == 10


# --------------------------------------------------------------------------- 2: reset mid-step
PHASES = ["FWD", "FWD_WAIT", "LOSS", "LOSS_DRAIN", "MAX", "MAX_DRAIN", "NORM", "DIV", "UPD",
          "UPD_DRAIN", "DONE"]


@pytest.mark.parametrize("update", ["maxnorm", "sgd"])
def test_reset_in_every_phase_then_a_bit_exact_step(update):
    """For every phase (and 3 cycles into it) a step is interrupted by a reset; the host
    reloads the weights (an interrupted UPD may have written some) and other samples and
    programs the settings again; the next step is bit-exact with the reference.  The old
    engine cleared its delta banks only in UPD, so an interrupted LOSS..UPD left them dirty."""
    sim = EngineSim(CFG)
    params, X, y = _data(CFG, seed=11)
    _, Xa, ya = _data(CFG, seed=12)          # the interrupted step's samples: other deltas
    sgd_q = (98304, 20) if update == "sgd" else None
    trace = _reference(CFG, params, X, y, update, sgd_q=sgd_q)
    phases = [p for p in PHASES if not (update == "sgd" and p == "DIV")]

    wrong = []

    async def bench(bus):
        for phase in phases:
            for delay in (0, 3):
                await bus.load(params, Xa, ya)
                await bus.program(update, sgd_q=sgd_q)
                await bus.start()
                await bus.wait_state(phase)
                await bus.ticks(delay)
                await bus.reset()
                assert bus.ctx.get(sim.state) == sim.states["IDLE"]
                await bus.load(params, X, y)
                await bus.step(update, sgd_q=sgd_q)
                try:
                    await _check_step(bus, trace, CFG.batch, f"{phase} + {delay}")
                except AssertionError as e:
                    wrong.append(str(e).splitlines()[0])

    sim.run(bench)
    assert not wrong, f"steps after a reset (phase + cycles into it) that differ: {wrong}"


# --------------------------------------------------------------------------- 3: FLAGS
def test_flag_raised_in_the_cycle_of_a_clear_stays():
    """A step on saturating data raises sat_value in known cycles; a second, identical step
    gets CTRL.clear_flags timed so that the clear meets the last of those cycles: the flag
    must stay raised (the saturation happened, and after the clear)."""
    sim = EngineSim(CFG)
    params, X, y = _data(CFG, seed=2)
    X = X * 100                                 # |x| up to 100 and |w| up to ~5: z saturates
    params = np.clip(params * 6, CFG.formats.weight.min_int, CFG.formats.weight.max_int)
    bit = FLAGS["sat_value"]
    trace = _reference(CFG, params, X, y)
    assert trace.saturations["value"] > 0
    events = {"set": [], "clear": [], "start": []}

    async def monitor(ctx):
        idle = sim.states["IDLE"]
        was_idle = True
        async for _, _, setv, clear, state in ctx.tick().sample(sim.flags.set, sim.flags.clear, sim.state):
            cyc = sim.cycle          # this edge's cycle (the counter runs before it)
            if setv >> bit & 1:
                events["set"].append(cyc)
            if clear:
                events["clear"].append(cyc)
            if was_idle and state != idle:
                events["start"].append(cyc)
            was_idle = state == idle

    async def bench(bus):
        await bus.load(params, X, y)
        # the clear's delay through the bus: from the write's first cycle to the strobe
        t0 = sim.cycle
        await bus.write_reg("CTRL", 1 << CTRL["clear_flags"])
        delay = events["clear"][-1] - t0
        # step 1: where the flag is raised, relative to the step's first cycle
        await bus.step()
        first = [c - events["start"][-1] for c in events["set"]]
        assert first, "the data raised no sat_value"
        last = max(first)
        await bus.write_reg("CTRL", 1 << CTRL["clear_flags"])
        # step 2, the same: the clear lands on the flag's last event
        await bus.load(params, X, y)
        await bus.program()
        await bus.start()
        target = events["start"][-1] + last
        await bus.ticks(target - delay - sim.cycle)
        await bus.write_reg("CTRL", 1 << CTRL["clear_flags"])
        assert events["clear"][-1] == target and target in events["set"], \
            f"clear at {events['clear'][-1]}, flag raised at {events['set'][-3:]}: the timing missed"
        await bus.wait_done()
        flags = await bus.read_reg("FLAGS")
        assert flags >> bit & 1, f"FLAGS {flags:#x}: sat_value raised in the clearing cycle was lost"
        await _check_step(bus, trace, CFG.batch, "the step with the clear")

    sim.run(bench, monitor)


# --------------------------------------------------------------------------- 4: all lanes
class _LateLaneScale(wiring.Component):
    """A :class:`DualScale` whose output comes ``delay`` cycles late (``o.ready`` must be 1,
    as in the engine)."""

    def __init__(self, config, *, scalar_fmt, delay):
        self.inner = DualScale(config, scalar_fmt=scalar_fmt)
        self.delay = delay
        super().__init__(dict(self.inner.signature.members))

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        m.d.comb += [inner.i.valid.eq(self.i.valid), inner.i.payload.eq(self.i.payload),
                     self.i.ready.eq(inner.i.ready), inner.o.ready.eq(1), self.sat.eq(inner.sat)]
        valid, payload = inner.o.valid, inner.o.payload.as_value()
        for n in range(self.delay):
            v, d = Signal(name=f"late_valid{n}"), Signal(len(payload), name=f"late_payload{n}")
            m.d.sync += [v.eq(valid), d.eq(payload)]
            valid, payload = v, d
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.eq(payload)]
        return m


class _GatedMerger(wiring.Component):
    """A :class:`TopKMerger` that takes a candidate only every other cycle it is offered one
    (``gated``), or is transparent; ``take`` is high in the cycles it takes one."""

    def __init__(self, config, *, gated):
        self.inner = TopKMerger(config)
        self.gated = gated
        super().__init__(dict(self.inner.signature.members))
        self.take = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.inner = inner = self.inner
        gate = Signal(init=1)
        if self.gated:
            with m.If(self.i.valid):
                m.d.sync += gate.eq(~gate)
        m.d.comb += [inner.i.valid.eq(self.i.valid & gate), inner.i.payload.eq(self.i.payload),
                     self.i.ready.eq(inner.i.ready & gate),
                     self.o.valid.eq(inner.o.valid), self.o.payload.eq(inner.o.payload),
                     inner.o.ready.eq(self.o.ready), self.sat.eq(inner.sat),
                     self.take.eq(self.i.valid & self.i.ready)]
        return m


def test_layer_waits_for_every_lane(monkeypatch):
    """Lane 1's DualScale answers 12 cycles after lane 0's: its write-back must still land at
    the right neuron, and the next layer must not read an input before lane 1 has written
    it back; the step is bit-exact for both lanes.  The old engine counted lane 0's
    write-backs only."""
    made = []

    def scale(config, *, scalar_fmt):
        made.append(_LateLaneScale(config, scalar_fmt=scalar_fmt, delay=12 if len(made) == 1 else 0))
        return made[-1]

    monkeypatch.setattr(engine_module, "DualScale", scale)
    sim = EngineSim(CFG)
    assert len(made) == CFG.batch
    params, X, y = _data(CFG, seed=4)
    trace = _reference(CFG, params, X, y)

    async def bench(bus):
        await bus.load(params, X, y)
        await bus.step()
        await _check_step(bus, trace, CFG.batch, "lane 1 late")

    sim.run(bench)


@pytest.mark.parametrize("batch_n", [2, 1])
def test_merge_busy_counts_the_cycles_any_active_lane_merges(monkeypatch, batch_n):
    """Lane 1's merger takes a candidate only every other cycle, so lane 0 takes each one a
    cycle earlier than lane 1 when they differ.  MERGE_BUSY counts the cycles in which at least
    one active lane's merger takes a candidate (counted here from the mergers' handshakes);
    with BATCH_N = 1 lane 1 is inactive and not counted.  The step is bit-exact."""
    made = []

    def merger(config):
        made.append(_GatedMerger(config, gated=len(made) == 1))
        return made[-1]

    monkeypatch.setattr(engine_module, "TopKMerger", merger)
    sim = EngineSim(CFG)
    assert len(made) == CFG.batch
    params, X, y = _data(CFG, seed=6, n=batch_n)
    trace = _reference(CFG, params, X, y)
    counts = {"any": 0, "lane0": 0}

    async def monitor(ctx):
        async for _, _, *takes in ctx.tick().sample(*(mg.take for mg in made)):
            active = takes[:batch_n]
            counts["any"] += any(active)
            counts["lane0"] += takes[0]

    async def bench(bus):
        await bus.load(params, X, y)
        await bus.program(batch_n=batch_n)
        counts.update(any=0, lane0=0)
        await bus.start()
        await bus.wait_done()
        await _check_step(bus, trace, batch_n, "lane 1 gated")
        merge_busy = await bus.read_reg("MERGE_BUSY")
        if batch_n > 1:
            assert counts["any"] > counts["lane0"], "the lanes did not diverge"
        assert merge_busy == counts["any"], \
            f"MERGE_BUSY {merge_busy}, cycles with an active merger taking {counts['any']}"

    sim.run(bench, monitor)


# --------------------------------------------------------------------------- 5: reciprocal
#: The largest |sum| one delta bank holds at CFG (:func:`~dpfm.rtl.update.delta_bank_shape`).
BANK_HI = CFG.n_out * CFG.k << (CFG.formats.value.bits + CFG.formats.grad.bits - 2)
assert delta_bank_shape(CFG).width == BANK_HI.bit_length() + 1


def _bank_words(values, config=CFG):
    """Per-parameter bank values -> the bank's words of ``update_lanes`` deltas."""
    M, bits = config.update_lanes, delta_bank_shape(config).width
    vals = list(values) + [0] * (-len(values) % M)
    return [sum((int(vals[a + e]) & ((1 << bits) - 1)) << (e * bits) for e in range(M))
            for a in range(0, len(vals), M)]


DELTA_CASES = {
    # name: bank contents per lane, per parameter (None: zero)
    "max |D| = 1": lambda P: ([1, -1] + [0] * (P - 2), [0] * P),
    "max |D| = 1, negative": lambda P: ([0] * P, [-1] + [0] * (P - 1)),
    # the banks hold exactly what a lane can sum (|D_s| <= BANK_HI, 2**42 here); the sums
    # that saturate the 48-bit delta format need more lanes (tests/test_rtl_update.py)
    "max |D| = 2 * BANK_HI, negative": lambda P: ([-BANK_HI] + list(range(1, P)), [-BANK_HI] + [0] * (P - 1)),
    "max |D| = 2 * BANK_HI - 1": lambda P: ([BANK_HI] * P, [BANK_HI - 1] + [3] * (P - 1)),
    "max |D| = 2**16 (mn = 2**16)": lambda P: ([1 << 16] + [-7] * (P - 1), [0] * P),
    "max |D| = 2**17 - 1 (mn = 2**17 - 1)": lambda P: ([(1 << 17) - 1] + [5] * (P - 1), [0] * P),
    "banks at their bounds": lambda P: ([BANK_HI] * P, [-BANK_HI] * (P - 1) + [BANK_HI]),
    "random": lambda P: (list(np.random.default_rng(1).integers(-(1 << 40), 1 << 40, P)),
                         list(np.random.default_rng(2).integers(-(1 << 40), 1 << 40, P))),
}


@pytest.mark.parametrize("update, sgd_q", [("maxnorm", None), ("sgd", (1 << 16, SGD_CS_MIN)),
                                           ("sgd", ((1 << 17) - 1, 17)), ("sgd", (1 << 16, SGD_CS_MAX))])
def test_update_with_extreme_deltas_is_bit_exact(update, sgd_q):
    """The delta banks are overwritten when MAX begins, with the extreme sums the update can
    see at this Config (``max|D|`` from 1 to both banks at their bounds, the normalised
    maximum at both ends of [2**16, 2**17)); the updated weights are the reference's :func:`fixed_update` of the
    saturated sums.  maxnorm exercises the 20-bit reciprocal, sgd the ends of SGD_CS."""
    sim = EngineSim(CFG)
    fmt, P = CFG.formats, CFG.n_params
    params, X, y = _data(CFG, seed=8)
    count = CFG.batch * CFG.n_out

    async def bench(bus):
        for name, banks in DELTA_CASES.items():
            contents = banks(P)
            await bus.load(params, X, y)
            await bus.program(update, sgd_q=sgd_q)
            await bus.start()
            await bus.wait_state("MAX")
            for mem, values in zip(sim.banks, contents):
                for a, word in enumerate(_bank_words(values)):
                    bus.ctx.set(mem.data[a], word)
            await bus.wait_done()
            D, _ = fmt.delta.saturate(np.sum(np.array(contents, dtype=np.int64), axis=0))
            upd = fixed_update(D, LR, update, count, fmt, sgd_q=sgd_q)
            want, _ = fmt.weight.saturate(params - upd)
            got = await bus.read_weights()
            assert np.array_equal(got, want), f"{update} {sgd_q} with {name}: weights differ"

    sim.run(bench)
