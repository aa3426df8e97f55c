"""The engine's cocotb bench: bus access, stream monitor and timing checks.

:class:`EngineTB` gives clock, reset and an ``AxiLiteMaster`` (cocotbext-axi) under
idle/backpressure generators, with register and window access through
:func:`dpfm.rtl.regmap.register_map` and the step protocol of :mod:`dpfm.rtl.protocol` (the one
the host's Trainer uses).  :class:`StreamMonitor` samples the DUT on every clock edge, records
every transfer on a lane's internal streams (reached through the Verilator hierarchy:
``dut.merger0.i__valid`` ...) and the FSM state; :func:`compare_streams` compares them in
order with :func:`dpfm.sim.engine_expect.expected_streams`, reporting the first mismatch with
its cycle.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from dpfm.config import Config
from dpfm.rtl.activation import PIPELINE_STAGES as ACT_LATENCY
from dpfm.rtl.dual_scale import PIPELINE_STAGES as SCALE_LATENCY
from dpfm.rtl.protocol import (CLEAR_FLAGS_WORD, START_WORD, loss_raw, sample_words, setting_words,
                               status_fields, word)
from dpfm.rtl.regmap import register_map

from .engine_expect import (STREAMS, UNIT_FSM_KEY, StepCase, dual_scale_ii, merger_latency, normalise_payload,
                            payload_matches, stream_layouts, unpack)

__all__ = ["Transfer", "StepRecord", "StreamMonitor", "EngineTB", "compare_streams",
           "check_block_timing", "timeline", "cycle_pause", "random_pause"]


# --------------------------------------------------------------------------- pause generators
def cycle_pause():
    """Pause 1 cycle in 4 (as the cocotbext-axi tests do)."""
    return itertools.cycle([1, 1, 1, 0])


def random_pause(seed=1, p=0.4):
    import random
    rng = random.Random(seed)
    while True:
        yield int(rng.random() < p)


# --------------------------------------------------------------------------- cocotb side
@dataclass
class Transfer:
    """One handshake: the cycle it happened in, the cycle its data was first offered, the
    payload (normalised), and the step cycle (cycles since the step's start)."""
    cycle: int
    offered: int
    payload: dict
    step_cycle: int


@dataclass
class StepRecord:
    transfers: dict = field(default_factory=dict)
    states: list = field(default_factory=list)   # FSM state code per cycle of the step
    start: int = -1
    end: int = -1


class StreamMonitor:
    """Samples the DUT once per clock cycle (in the settled read-only phase before each
    rising edge) and records every transfer of lane ``lane``'s streams and the FSM state.

    A transfer is recorded in the cycle whose ``valid`` and ``ready`` are both high: the data
    moves on the rising edge that ends that cycle.  ``offered`` is the first cycle the
    producer held that data on the stream.  Recording is per step: :meth:`begin` and
    :meth:`end` bracket it (the monitor itself runs from :meth:`start` on).
    """

    def __init__(self, dut, config: Config, *, lane: int = 0, fsm: dict | None = None):
        self.dut = dut
        self.config = config
        self.layouts = stream_layouts(config)
        self.cycle = 0
        fsm = dict(fsm or {})
        # the UpdateUnit's own FSM (its states stand for the engine's UPDATE state)
        self.unit_fsm = fsm.pop(UNIT_FSM_KEY, {})
        self.fsm = fsm
        self.idle_code = self.fsm.get("IDLE", 0)
        self.update_code = self.fsm.get("UPDATE")
        self.state = getattr(dut, "engine_state", None)
        self.unit_state = getattr(getattr(dut, "upd", None), "update_state", None) \
            if self.unit_fsm else None
        self.probes = {}
        for name, (inst, side) in STREAMS.items():
            block = getattr(dut, f"{inst}{lane}")
            valid = getattr(block, f"{side}__valid")
            ready = getattr(block, f"{side}__ready", None)
            payload = getattr(block, f"{side}__payload")
            self.probes[name] = (valid, ready, payload)
        self.record = StepRecord()
        self._recording = False
        self._offered = {name: None for name in STREAMS}
        self._task = None

    def start(self):
        import cocotb
        self._task = cocotb.start_soon(self._run())

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def begin(self):
        self.record = StepRecord(transfers={name: [] for name in STREAMS})
        self._recording = True

    def end(self) -> StepRecord:
        self._recording = False
        return self.record

    async def _run(self):
        from cocotb.triggers import ReadOnly, RisingEdge
        clk = self.dut.clk
        while True:
            await RisingEdge(clk)
            self.cycle += 1
            await ReadOnly()
            if not self._recording:
                continue
            rec = self.record
            if self.state is not None:
                code = int(self.state.value)
                if code != self.idle_code:
                    if rec.start < 0:
                        rec.start = self.cycle
                    if code == self.update_code and self.unit_state is not None:
                        code = (UNIT_FSM_KEY, int(self.unit_state.value))
                    rec.states.append(code)
                    rec.end = self.cycle
            step_cycle = self.cycle - rec.start if rec.start >= 0 else -1
            for name, (valid, ready, payload) in self.probes.items():
                if not int(valid.value):
                    self._offered[name] = None
                    continue
                if self._offered[name] is None:
                    self._offered[name] = self.cycle
                if ready is not None and not int(ready.value):
                    continue
                raw = payload.value.to_unsigned()
                rec.transfers[name].append(Transfer(
                    self.cycle, self._offered[name],
                    normalise_payload(name, unpack(self.layouts[name], raw)), step_cycle))
                self._offered[name] = None

    def state_cycles(self) -> dict:
        """Cycles spent in each FSM state during the recorded step."""
        names = {code: name for name, code in self.fsm.items()}
        names.update({(UNIT_FSM_KEY, code): name for name, code in self.unit_fsm.items()})
        counts = {}
        for code in self.record.states:
            key = names.get(code, code)
            counts[key] = counts.get(key, 0) + 1
        return counts


def compare_streams(record: StepRecord, expected: dict) -> list:
    """Compare recorded transfers with :func:`expected_streams`, in order.

    Returns a list of problems (empty when all match); each names the stream, the transfer
    number, the cycle (absolute and within the step) and both values of the first mismatch,
    or a count that differs (nothing missing, nothing left over).
    """
    problems = []
    for name, want in expected.items():
        got = record.transfers.get(name, [])
        for n, (t, w) in enumerate(zip(got, want)):
            if not payload_matches(t.payload, w):
                problems.append(f"{name}: transfer {n} at cycle {t.cycle} (step cycle "
                                f"{t.step_cycle}) is {t.payload}, the reference says {w}")
                break
        if len(got) != len(want):
            problems.append(f"{name}: {len(got)} transfers, the reference says {len(want)}")
    return problems


def check_block_timing(record: StepRecord, config: Config) -> list:
    """Latency and initiation interval of the lane's blocks against their documented timing.

    - TopKMerger: a list is offered on ``o`` :func:`merger_latency` cycles after its ``last``
      candidate's handshake (when its output register is free).
    - ActivationUnit: ``(a, d)`` is offered :data:`~dpfm.rtl.activation.PIPELINE_STAGES`
      cycles after ``z``'s handshake.
    - DualScale: the output is offered :data:`~dpfm.rtl.dual_scale.PIPELINE_STAGES` cycles
      after the input handshake; input handshakes are at least ``ceil((k+1)/lanes)`` apart
      and the input is offered to an idle unit ``ceil((k+1)/lanes) - 1`` cycles before it is
      taken.
    """
    problems = []
    tr = record.transfers
    lasts = [t for t in tr["cand"] if t.payload["last"]]
    pairs = [("merger", lasts, tr["merged"], merger_latency(config)),
             ("activation", tr["act_in"], tr["act_out"], ACT_LATENCY),
             ("dual_scale", tr["scale_in"], tr["scale_out"], SCALE_LATENCY)]
    for block, ins, outs, latency in pairs:
        for n, (a, b) in enumerate(zip(ins, outs)):
            # an output register still holding the previous item delays the next one
            free = outs[n - 1].cycle + 1 if n else 0
            want = max(a.cycle + latency, free)
            if b.offered != want:
                problems.append(f"{block}: item {n} taken at cycle {a.cycle} was offered at "
                                f"cycle {b.offered}, documented {want} (latency {latency}, "
                                f"output register free from {free})")
                break
    C = dual_scale_ii(config)
    ins = tr["scale_in"]
    for n, t in enumerate(ins):
        if t.cycle - t.offered != C - 1:
            problems.append(f"dual_scale: input {n} offered at cycle {t.offered} was taken at "
                            f"{t.cycle}, documented C - 1 = {C - 1} cycles later")
            break
        if n and t.cycle - ins[n - 1].cycle < C:
            problems.append(f"dual_scale: inputs {n - 1} and {n} taken at cycles "
                            f"{ins[n - 1].cycle} and {t.cycle}, closer than C = {C}")
            break
    return problems


def timeline(record: StepRecord) -> list:
    """One line per neuron (all layers in order) with the step cycles of its transfers:
    the ``last`` candidate's handshake, then offered/taken of the merged list, the
    activation in/out and the DualScale in/out."""
    tr = record.transfers
    lasts = [t for t in tr["cand"] if t.payload["last"]]
    lines = []
    base = record.start
    for n, group in enumerate(zip(lasts, tr["merged"], tr["act_in"], tr["act_out"],
                                  tr["scale_in"], tr["scale_out"])):
        cells = [f"{name} {t.offered - base}/{t.cycle - base}" for name, t in
                 zip(("last", "merged", "act_in", "act_out", "scale_in", "scale_out"), group)]
        lines.append(f"neuron {n}: " + ", ".join(cells))
    return lines


class EngineTB:
    """Clock, reset and host access (AXI4-Lite through cocotbext-axi) of the engine.

    Parameters
    ----------
    dut : the cocotb handle of ``dpfm_engine``.
    config : the :class:`~dpfm.config.Config` the engine was built for.
    """

    def __init__(self, dut, config: Config):
        import cocotb
        from cocotb.clock import Clock
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        self.dut = dut
        self.config = config
        self.regmap = register_map(config)
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                  dut.clk, dut.rst)
        for lg in (self.axil.write_if.log, self.axil.read_if.log):
            lg.setLevel(logging.WARNING)

    # -- generators ---------------------------------------------------------------------
    def set_idle_generator(self, generator=None):
        """Pause the master's AW, W and AR channels (valid gaps)."""
        self._set_pause((self.axil.write_if.aw_channel, self.axil.write_if.w_channel,
                         self.axil.read_if.ar_channel), generator)

    def set_backpressure_generator(self, generator=None):
        """Pause the master's B and R channels (ready low)."""
        self._set_pause((self.axil.write_if.b_channel, self.axil.read_if.r_channel), generator)

    @staticmethod
    def _set_pause(channels, generator):
        for ch in channels:
            if generator:
                ch.set_pause_generator(generator())
            else:
                # clear_pause_generator() stops the generator but keeps its last value: a
                # channel left paused would hang every later transfer.
                ch.clear_pause_generator()
                ch.pause = False

    async def cycle_reset(self):
        from cocotb.triggers import ClockCycles, RisingEdge
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    # -- bus access ---------------------------------------------------------------------
    def addr(self, name) -> int:
        return name if isinstance(name, int) else self.regmap[name].offset

    async def read(self, name) -> tuple:
        """``(value, resp)`` of one read (resp 0 OKAY, 2 SLVERR)."""
        r = await self.axil.read(self.addr(name), 4)
        return int.from_bytes(r.data, "little"), int(r.resp)

    async def write(self, name, value: int, *, length: int = 4) -> int:
        """Write ``value`` (``length`` bytes, so ``length < 4`` is a partial strobe); the resp."""
        data = (value & 0xFFFFFFFF).to_bytes(4, "little")[:length]
        r = await self.axil.write(self.addr(name), data)
        return int(r.resp)

    async def read_reg(self, name) -> int:
        value, resp = await self.read(name)
        assert resp == 0, f"read of {name} answered resp {resp}"
        return value

    async def write_reg(self, name, value: int):
        resp = await self.write(name, value)
        assert resp == 0, f"write of {value:#x} to {name} answered resp {resp}"

    async def read_signed(self, addr) -> int:
        value, resp = await self.read(addr)
        assert resp == 0, f"read of {addr:#x} answered resp {resp}"
        return value - (1 << 32) if value >> 31 else value

    # -- windows ------------------------------------------------------------------------
    async def load_weights(self, params):
        win = self.regmap["WEIGHTS"]
        for p, w in enumerate(params):
            await self.write_reg(win.addr(p), int(w))

    async def read_weights(self) -> np.ndarray:
        win = self.regmap["WEIGHTS"]
        return np.array([await self.read_signed(win.addr(p)) for p in range(self.config.n_params)],
                        dtype=np.int64)

    async def load_samples(self, X, y):
        for addr, value in zip(*sample_words(self.regmap, X, y)):
            await self.write_reg(addr, value)

    async def read_outputs(self, n: int) -> np.ndarray:
        win = self.regmap["OUTPUTS"]
        flat = [await self.read_signed(win.row_addr(s, o))
                for s in range(n) for o in range(self.config.n_out)]
        return np.array(flat, dtype=np.int64).reshape(n, self.config.n_out)

    async def read_loss(self) -> int:
        return loss_raw(await self.read_reg("LOSS_LO"), await self.read_reg("LOSS_HI"))

    # -- steps --------------------------------------------------------------------------
    async def program(self, case: StepCase):
        """Write the step's settings (BATCH_N, UPDATE, LR_Q / SGD_CQ / SGD_CS)."""
        for name, value in setting_words(self.config, case.update, case.lr, case.batch_n):
            await self.write_reg(name, word(value))

    async def start(self):
        await self.write_reg("CTRL", START_WORD)

    async def clear_flags(self):
        await self.write_reg("CTRL", CLEAR_FLAGS_WORD)

    async def wait_done(self, *, timeout_cycles: int = 200_000, poll: int = 20) -> int:
        """Poll STATUS until busy drops; returns STATUS."""
        from cocotb.triggers import ClockCycles
        waited = 0
        while True:
            status = await self.read_reg("STATUS")
            if not status_fields(status)[0]:
                return status
            assert waited < timeout_cycles, f"engine still busy after {waited} cycles"
            await ClockCycles(self.dut.clk, poll)
            waited += poll

    @staticmethod
    def error_code(status: int) -> int:
        return status_fields(status)[2]
