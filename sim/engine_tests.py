"""cocotb tests of the whole training engine (:class:`dpfm.rtl.engine.Engine`) on Verilator.

Run by ``tests/test_sim_engine.py`` through :func:`dpfm.sim.runner.run_cocotb`, one build per
configuration.  The environment carries what the Verilog cannot tell:

``DPFM_ENGINE_CONFIG``
    JSON of ``Config.to_dict()`` of the engine that was built.
``DPFM_ENGINE_FSM``
    JSON ``{state: code}`` of the engine's FSM (from Amaranth's elaboration), for the
    per-phase cycle counts.
``DPFM_ENGINE_TASK``
    ``sum4`` or ``digits`` (:func:`dpfm.tasks.load_task`): where the training samples come from.
``DPFM_ENGINE_STEPS``
    Training steps of :func:`training_steps` (default 4; the soak runs more).

Every expected value comes from :mod:`dpfm.reference` through :mod:`dpfm.sim.engine_expect`.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np

import cocotb
from cocotb.triggers import ClockCycles

from dpfm.reference import MLP
from dpfm.rtl.regmap import ERR_ADDR_WRITE, FLAGS, ID_MAGIC, STATUS, UPDATE, Resp, StartError
from dpfm.sim.engine_bench import (EngineTB, StreamMonitor, check_block_timing, compare_streams,
                                   cycle_pause, random_pause, timeline)
from dpfm.sim.engine_expect import (FSM_ENV, check_candidates, config_from_env, expected_flags,
                                    expected_streams, loss_drain_cycles, phase_cycles, sample_batch,
                                    step_case, step_counts, step_cycles)

GENERATORS = [None, cycle_pause]
SLVERR = Resp.SLVERR


def _fsm():
    text = os.environ.get(FSM_ENV)
    return json.loads(text) if text else None


def _task_data(config):
    from dpfm.tasks import load_task
    task = load_task(os.environ.get("DPFM_ENGINE_TASK", "sum4"))
    assert task.X_train.shape[1] == config.n_in and task.y_train.shape[1] == config.n_out, \
        f"task {task.name} does not fit net {config.net}"
    return task.X_train, task.y_train


def _initial_weights(config, seed=1):
    net = MLP(list(config.net), list(config.activations), seed=seed)
    q, _ = config.formats.weight.quantize(net.params)
    return q.astype(np.int64)


async def _load_first_batch(tb, seed=1):
    """Load initial weights and the task's first ``batch`` samples; returns ``(params, Xq, yq)``."""
    cfg = tb.config
    X, y = _task_data(cfg)
    params = _initial_weights(cfg, seed=seed)
    await tb.load_weights(params)
    Xq, yq = sample_batch(X, y, cfg, np.arange(cfg.batch))
    await tb.load_samples(Xq, yq)
    return params, Xq, yq


async def _setup(dut, idle=None, backpressure=None):
    config = config_from_env()
    tb = EngineTB(dut, config)
    tb.set_idle_generator(idle)
    tb.set_backpressure_generator(backpressure)
    await tb.cycle_reset()
    return tb


async def run_checked_step(tb: EngineTB, monitor: StreamMonitor | None, case, *, label=""):
    """Run one step whose samples and weights are already loaded and check everything the
    reference and the cycle formulas say about it: STATUS, the counters, LOSS, FLAGS (cleared
    before the step), OUTPUTS, WEIGHTS, and with a monitor every lane-0 stream transfer, the
    blocks' latencies and the cycles per FSM state.  Returns the counters read.

    The engine ends blocks of layer 1 early, so the forward pass's cycles and counters depend
    on the data: CYCLES, FWD, FWD + FWD_WAIT and MERGE_BUSY must stay within the formulas'
    bounds (every block whole); with a monitor the observed candidate stream gives the blocks'
    lengths, and the counters and every state's cycles must equal the formulas for them."""
    cfg = tb.config
    await tb.program(case)
    await tb.clear_flags()
    cycles_before = await tb.read_reg("CYCLES")
    if monitor:
        monitor.begin()
    await tb.start()
    status = await tb.wait_done()
    record = monitor.end() if monitor else None
    problems = []
    if status & 0xFFFF != 1 << STATUS["done"]:
        problems.append(f"STATUS {status:#x} after the step, want done and no error")
    got = {name: await tb.read_reg(name) for name in ("CYCLES", "MUL_BUSY", "MERGE_BUSY", "FLAGS")}
    got["LOSS"] = await tb.read_loss()
    bound_counts = step_counts(case)
    for name, bound in bound_counts.items():
        if got[name] > bound:
            problems.append(f"{name} = {got[name]}, above its bound {bound}")
    # MUL_BUSY: every candidate but the biases, and the loss pass's products
    want_mul = step_counts(case, candidates=got["MERGE_BUSY"])["MUL_BUSY"]
    if got["MUL_BUSY"] != want_mul:
        problems.append(f"MUL_BUSY = {got['MUL_BUSY']}, want {want_mul} for MERGE_BUSY = "
                        f"{got['MERGE_BUSY']}")
    if got["LOSS"] != case.loss_raw:
        problems.append(f"LOSS = {got['LOSS']}, reference sum(e**2) = {case.loss_raw}")
    want_flags = expected_flags(case)
    if got["FLAGS"] != want_flags:
        problems.append(f"FLAGS = {got['FLAGS']:#x}, reference saturations "
                        f"{case.trace.saturations} give {want_flags:#x}")
    outputs = await tb.read_outputs(case.batch_n)
    want_out = np.asarray(case.trace.forward.value, dtype=np.int64)
    if not np.array_equal(outputs, want_out):
        bad = np.argwhere(outputs != want_out)[0]
        problems.append(f"OUTPUTS[{tuple(bad)}] = {outputs[tuple(bad)]}, reference {want_out[tuple(bad)]}")
    weights = await tb.read_weights()
    if not np.array_equal(weights, case.trace.params):
        bad = np.flatnonzero(weights != case.trace.params)
        problems.append(f"{len(bad)} weights differ from the reference, first W[{bad[0]}] = "
                        f"{weights[bad[0]]}, reference {case.trace.params[bad[0]]} (was "
                        f"{case.params[bad[0]]})")
    drain = loss_drain_cycles(case)
    delta_zero = case.update != "none" and not np.any(case.trace.delta)
    lengths = None
    if record is not None:
        expected = expected_streams(case, lane=0)
        cands = [t.payload for t in record.transfers["cand"]]
        cand_problems, lengths = check_candidates(case, cands, expected.pop("cand"))
        problems += cand_problems
        problems += compare_streams(record, expected)
        problems += check_block_timing(record, cfg)
        if got["MERGE_BUSY"] != len(cands):
            problems.append(f"MERGE_BUSY = {got['MERGE_BUSY']}, the monitor saw {len(cands)} candidates")
        states = monitor.state_cycles()
        want_states = phase_cycles(cfg, update=case.update, loss_drain=drain, delta_zero=delta_zero,
                                   lengths=lengths)
        if states != want_states:
            problems.append(f"cycles per state {states}, formula {want_states}; timeline "
                            "(offered/taken, step cycles):\n    " + "\n    ".join(timeline(record)))
        bound = phase_cycles(cfg, update=case.update, loss_drain=drain, delta_zero=delta_zero)
        fw_got = states.get("FWD", 0), states.get("FWD", 0) + states.get("FWD_WAIT", 0)
        fw_bound = bound["FWD"], bound["FWD"] + bound["FWD_WAIT"]
        if fw_got[0] > fw_bound[0] or fw_got[1] > fw_bound[1]:
            problems.append(f"FWD, FWD + FWD_WAIT = {fw_got}, above their bounds {fw_bound}")
        if got["CYCLES"] != 1 + len(record.states):
            problems.append(f"CYCLES = {got['CYCLES']} but the FSM was busy {len(record.states)} cycles")
        want_cycles = step_cycles(cfg, update=case.update, loss_drain=drain, delta_zero=delta_zero,
                                  lengths=lengths)
        if got["CYCLES"] != want_cycles:
            problems.append(f"CYCLES = {got['CYCLES']}, formula {want_cycles} for the blocks seen")
    bound_cycles = step_cycles(cfg, update=case.update, loss_drain=drain, delta_zero=delta_zero)
    if got["CYCLES"] > bound_cycles:
        problems.append(f"CYCLES = {got['CYCLES']}, above the bound {bound_cycles}")
    tb.log.info("%s: %s cycles (before %s, bound %d), MUL_BUSY %d, MERGE_BUSY %d, LOSS %d, FLAGS %#x%s",
                label, got["CYCLES"], cycles_before, bound_cycles, got["MUL_BUSY"], got["MERGE_BUSY"],
                got["LOSS"], got["FLAGS"], f"; states {monitor.state_cycles()}" if record else "")
    assert not problems, f"{label}:\n  " + "\n  ".join(problems)
    return got


@cocotb.test(timeout_time=200, timeout_unit="ms")
async def training_steps(dut):
    """Consecutive steps (maxnorm, sgd, fewer samples than lanes), each under other bus
    generators; after every step weights, outputs, loss, flags, counters, cycles and every
    lane-0 stream transfer are checked against the reference."""
    tb = await _setup(dut)
    cfg = tb.config
    X, y = _task_data(cfg)
    params = _initial_weights(cfg)
    await tb.load_weights(params)
    monitor = StreamMonitor(dut, cfg, lane=0, fsm=_fsm())
    monitor.start()
    B = cfg.batch
    few = max(1, B - 3)
    plan = [("maxnorm", B, None, None), ("sgd", B, cycle_pause, None),
            ("maxnorm", few, None, cycle_pause), ("sgd", few, cycle_pause, cycle_pause)]
    n_steps = int(os.environ.get("DPFM_ENGINE_STEPS", len(plan)))
    rng = np.random.default_rng(7)
    summary = []
    for n in range(n_steps):
        update, batch_n, idle, bp = plan[n % len(plan)]
        tb.set_idle_generator(idle)
        tb.set_backpressure_generator(bp)
        rows = rng.choice(len(X), size=batch_n, replace=False)
        Xq, yq = sample_batch(X, y, cfg, rows)
        case = step_case(cfg, Xq, yq, params, update=update, lr=0.05 if update == "maxnorm" else 0.5)
        await tb.load_samples(Xq, yq)
        got = await run_checked_step(tb, monitor, case, label=f"step {n} ({update}, BATCH_N={batch_n})")
        summary.append((update, batch_n, got["CYCLES"], got["MUL_BUSY"], got["MERGE_BUSY"]))
        params = case.trace.params
    monitor.stop()
    for row in summary:
        tb.log.info("step %s BATCH_N=%d: CYCLES=%d MUL_BUSY=%d MERGE_BUSY=%d", *row)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def forward_only_step(dut):
    """UPDATE = none: forward pass and loss only, weights unchanged, no delta/weight flags."""
    tb = await _setup(dut, random_pause, random_pause)
    cfg = tb.config
    params, Xq, yq = await _load_first_batch(tb, seed=3)
    monitor = StreamMonitor(dut, cfg, lane=0, fsm=_fsm())
    monitor.start()
    await run_checked_step(tb, monitor, step_case(cfg, Xq, yq, params, update="none"),
                           label="update none")
    monitor.stop()


def saturating_case(config, tries=50):
    """A step that overflows: full-range random weights, inputs and targets at the limits
    of the value format, lr 1; the first seed whose reference step clamps values, gradients
    and weights (the default formats' 48-bit delta cannot overflow with these batch sizes)."""
    fmt = config.formats
    for seed in range(tries):
        rng = np.random.default_rng(seed)
        params = rng.integers(fmt.weight.min_int, fmt.weight.max_int + 1, config.n_params)
        Xq = rng.choice([fmt.value.min_int, fmt.value.max_int], size=(config.batch, config.n_in))
        yq = rng.choice([fmt.value.min_int, fmt.value.max_int], size=(config.batch, config.n_out))
        case = step_case(config, Xq, yq, params, update="maxnorm", lr=1.0)
        sats = case.trace.saturations
        if sats["value"] and sats["grad"] and sats["weight"]:
            return case
    raise AssertionError(f"no saturating step found in {tries} seeds for {config.net}")


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def saturation_flags(dut):
    """Weights and data chosen to overflow: the sticky flags match the reference's clamp
    counts (value, grad and weight set), stay set through a clean step, are readable, and
    CTRL.clear_flags clears them."""
    tb = await _setup(dut)
    cfg = tb.config
    case = saturating_case(cfg)
    await tb.load_weights(case.params)
    await tb.load_samples(case.X, case.y)
    await run_checked_step(tb, None, case, label="saturating step")
    flags = await tb.read_reg("FLAGS")
    for kind in ("sat_value", "sat_grad", "sat_weight"):
        assert flags & 1 << FLAGS[kind], f"FLAGS {flags:#x}: {kind} not set"
    # sticky: a clean step (no clear before it) leaves the flags set
    clean = _initial_weights(cfg)
    X, y = _task_data(cfg)
    Xc, yc = sample_batch(X, y, cfg, np.arange(cfg.batch))
    clean_case = step_case(cfg, Xc, yc, clean, update="maxnorm")
    assert expected_flags(clean_case) == 0
    await tb.load_weights(clean)
    await tb.load_samples(Xc, yc)
    await tb.program(clean_case)
    await tb.start()
    await tb.wait_done()
    assert await tb.read_reg("FLAGS") == flags, "flags did not stay set through a clean step"
    assert np.array_equal(await tb.read_weights(), clean_case.trace.params)
    await tb.clear_flags()
    assert await tb.read_reg("FLAGS") == 0, "CTRL.clear_flags did not clear FLAGS"


def _read_only_names(tb):
    return [r.name for r in tb.regmap.registers if r.access == "ro"]


def _generator_pairs():
    """Every (idle, backpressure) combination of :data:`GENERATORS`."""
    return itertools.product(GENERATORS, GENERATORS)


async def _each_generator_pair(tb):
    """Yield once per generator combination, with the DUT freshly reset under it."""
    for idle, backpressure in _generator_pairs():
        tb.set_idle_generator(idle)
        tb.set_backpressure_generator(backpressure)
        await tb.cycle_reset()
        tb.log.info("bus generators: idle %s, backpressure %s", getattr(idle, "__name__", None),
                    getattr(backpressure, "__name__", None))
        yield idle, backpressure


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def identity(dut):
    """ID, CONFIG_HASH and the configuration registers read what the Config says (under every
    idle/backpressure combination)."""
    tb = await _setup(dut)
    async for _ in _each_generator_pair(tb):
        await _check_identity(tb)


async def _check_identity(tb):
    cfg = tb.config
    assert await tb.read_reg("ID") == ID_MAGIC
    assert await tb.read_reg("CONFIG_HASH") == cfg.hash
    assert await tb.read_reg("K") == cfg.k
    assert await tb.read_reg("N_PARAMS") == cfg.n_params
    assert await tb.read_reg("BATCH") == cfg.batch
    assert await tb.read_reg("STATUS") == 0
    assert await tb.read_reg("BATCH_N") == cfg.batch
    assert await tb.read_reg("UPDATE") == UPDATE["maxnorm"]


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def refused_writes(dut):
    """Writes to read-only and unmapped registers, to OUTPUTS, past the end of a window, and
    with a partial strobe answer SLVERR and change nothing; reads of unmapped addresses answer
    SLVERR; each refusal raises the sticky bus_error flag (under every idle/backpressure
    combination)."""
    tb = await _setup(dut)
    async for _ in _each_generator_pair(tb):
        await _check_refused_writes(tb)


async def _check_refused_writes(tb):
    cfg = tb.config
    rm = tb.regmap
    params = _initial_weights(cfg)
    await tb.load_weights(params)
    before = {name: await tb.read_reg(name) for name in _read_only_names(tb)}
    for name in _read_only_names(tb):
        await tb.clear_flags()
        assert await tb.write(name, 0x5A5A5A5A) == SLVERR, f"write to read-only {name} accepted"
        flags = await tb.read_reg("FLAGS")
        assert flags == 1 << FLAGS["bus_error"], f"FLAGS {flags:#x} after refused write to {name}"
        err_addr = await tb.read_reg("ERR_ADDR")
        assert err_addr == rm[name].offset | ERR_ADDR_WRITE, f"ERR_ADDR {err_addr:#x} after {name}"
    after = {name: await tb.read_reg(name) for name in _read_only_names(tb)}
    after["FLAGS"] = before["FLAGS"]   # bus_error was raised on purpose
    # ERR_ADDR holds the last write refused after a clear: the one to ERR_ADDR itself
    last = _read_only_names(tb)[-1]
    assert after["ERR_ADDR"] == rm[last].offset | ERR_ADDR_WRITE, f"ERR_ADDR {after['ERR_ADDR']:#x}"
    after["ERR_ADDR"] = before["ERR_ADDR"]
    assert after == before, f"read-only registers changed: {before} -> {after}"
    mapped = {r.offset for r in rm.registers}
    unmapped = [a for a in range(0, 0x100, 4) if a not in mapped] + [0x1000, 0xFFFC]
    w_win, s_win, o_win = rm["WEIGHTS"], rm["SAMPLES"], rm["OUTPUTS"]
    unmapped += [w_win.base + 4 * cfg.n_params, w_win.base + 0xFFFC,
                 s_win.row_addr(0, cfg.n_in + cfg.n_out) if s_win.row_words > cfg.n_in + cfg.n_out else s_win.base + 4 * s_win.length,
                 s_win.base + 4 * s_win.length, o_win.base + 4 * o_win.length]
    for addr in unmapped:
        assert await tb.write(addr, 0x1234) == SLVERR, f"write to unmapped {addr:#x} accepted"
        value, resp = await tb.read(addr)
        assert resp == SLVERR, f"read of unmapped {addr:#x} answered resp {resp} ({value:#x})"
    # OUTPUTS is read-only
    assert await tb.write(o_win.row_addr(0, 0), 0x1234) == SLVERR
    # CTRL is write-only: a read is refused
    assert (await tb.read("CTRL"))[1] == SLVERR
    # partial strobes: refused, nothing written
    assert await tb.write("BATCH_N", 1, length=2) == SLVERR
    assert await tb.read_reg("BATCH_N") == cfg.batch
    assert await tb.write(w_win.addr(0), 7, length=1) == SLVERR
    # nothing above touched the weights or the registers
    assert np.array_equal(await tb.read_weights(), params)
    assert await tb.read_reg("STATUS") == 0 and await tb.read_reg("CYCLES") == 0
    assert await tb.read_reg("FLAGS") == 1 << FLAGS["bus_error"]
    await tb.clear_flags()
    assert await tb.read_reg("FLAGS") == 0


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def busy_access(dut):
    """While a step runs: window reads and writes and register-file writes answer SLVERR and
    change nothing, a second start is refused with error code 4, and the step's result is
    still the reference's."""
    tb = await _setup(dut, cycle_pause, cycle_pause)
    cfg = tb.config
    rm = tb.regmap
    params, Xq, yq = await _load_first_batch(tb)
    case = step_case(cfg, Xq, yq, params, update="maxnorm")
    await tb.program(case)
    await tb.start()
    status = await tb.read_reg("STATUS")
    assert status & 1 << STATUS["busy"], f"STATUS {status:#x} right after start: not busy"
    accesses = [
        ("read", rm["WEIGHTS"].addr(0)), ("write", rm["WEIGHTS"].addr(0)),
        ("read", rm["SAMPLES"].row_addr(0, 0)), ("write", rm["SAMPLES"].row_addr(0, 0)),
        ("read", rm["OUTPUTS"].row_addr(0, 0)),
        ("write", rm["BATCH_N"].offset), ("write", rm["UPDATE"].offset),
        ("write", rm["LR_Q"].offset), ("write", rm["SGD_CQ"].offset), ("write", rm["SGD_CS"].offset),
    ]
    for kind, addr in accesses:
        if kind == "read":
            _, resp = await tb.read(addr)
        else:
            resp = await tb.write(addr, 1)
        assert await tb.read_reg("STATUS") & 1 << STATUS["busy"], \
            f"step ended before the busy checks ({kind} {addr:#x}); the test needs a longer step"
        assert resp == SLVERR, f"{kind} of {addr:#x} while busy answered resp {resp}"
    await tb.start()     # a second start while busy
    status = await tb.wait_done()
    assert EngineTB.error_code(status) == StartError.BUSY, f"STATUS {status:#x}: start while busy not refused"
    assert status & 1 << STATUS["done"]
    assert await tb.read_reg("BATCH_N") == cfg.batch and await tb.read_reg("LR_Q") == case.lr_q
    assert await tb.read_reg("UPDATE") == UPDATE["maxnorm"]
    assert np.array_equal(await tb.read_weights(), case.trace.params)
    assert np.array_equal(await tb.read_outputs(cfg.batch), case.trace.forward.value)


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def refused_starts(dut):
    """Starting with an inconsistent configuration is refused with its error code in
    STATUS[15:8]; no step runs (CYCLES, outputs and weights unchanged); under every
    idle/backpressure combination."""
    tb = await _setup(dut)
    async for _ in _each_generator_pair(tb):
        await _check_refused_starts(tb)


async def _check_refused_starts(tb):
    dut = tb.dut
    cfg = tb.config
    params, Xq, yq = await _load_first_batch(tb)
    good = step_case(cfg, Xq, yq, params, update="maxnorm")
    # one good step first, so CYCLES and OUTPUTS hold something a refused start must keep
    await tb.program(good)
    await tb.start()
    await tb.wait_done()
    cycles = await tb.read_reg("CYCLES")
    outputs = await tb.read_outputs(cfg.batch)
    weights = await tb.read_weights()
    assert np.array_equal(weights, good.trace.params)
    bad_settings = [
        ("BATCH_N = 0", {"BATCH_N": 0}, StartError.BATCH_N),
        ("BATCH_N > batch", {"BATCH_N": cfg.batch + 1}, StartError.BATCH_N),
        ("UPDATE = 3", {"UPDATE": 3}, StartError.UPDATE),
        ("maxnorm with LR_Q = 0", {"UPDATE": UPDATE["maxnorm"], "LR_Q": 0}, StartError.LR_ZERO),
        ("sgd with SGD_CQ = 0", {"UPDATE": UPDATE["sgd"], "SGD_CQ": 0}, StartError.SGD_SCALE_ZERO),
    ]
    for label, settings, code in bad_settings:
        await tb.program(good)
        for name, value in settings.items():
            await tb.write_reg(name, value)
        await tb.start()
        status = await tb.read_reg("STATUS")
        assert not status & 1 << STATUS["busy"], f"{label}: the step started (STATUS {status:#x})"
        assert EngineTB.error_code(status) == code, \
            f"{label}: error code {EngineTB.error_code(status)}, want {code}"
        await ClockCycles(dut.clk, 20)
        assert await tb.read_reg("CYCLES") == cycles, f"{label}: CYCLES changed"
    assert np.array_equal(await tb.read_weights(), weights), "weights changed"
    assert np.array_equal(await tb.read_outputs(cfg.batch), outputs), "outputs changed"
    # a consistent start afterwards runs and clears the error code
    await tb.program(good)
    await tb.start()
    status = await tb.wait_done()
    assert EngineTB.error_code(status) == StartError.NONE


@cocotb.test(timeout_time=20, timeout_unit="ms")
async def out_of_range_settings(dut):
    """A value a setting register does not take (its ``value_range`` in the register map) is refused at
    the write: SLVERR, the register keeps its value, FLAGS.bus_error rises.  Never truncated:
    BATCH_N = 2**bits + 1 must not become a 1-sample step, UPDATE = 5 not maxnorm."""
    tb = await _setup(dut)
    cfg = tb.config
    for reg in (r for r in tb.regmap.registers if r.access == "rw"):
        lo, hi = reg.value_range
        before = await tb.read_reg(reg.name)
        wide = [hi + 2] + ([lo - 2] if reg.signed else []) + ([lo - 1] if lo > 0 else [])
        for value in wide:
            if reg.bits >= 32 and not reg.signed:
                continue                                  # every word fits
            await tb.clear_flags()
            resp = await tb.write(reg.name, value)
            assert resp == SLVERR, f"{reg.name} = {value} ({reg.bits} bits) answered resp {resp}, want SLVERR"
            after = await tb.read_reg(reg.name)
            assert after == before, f"{reg.name} = {value} changed the register: {before:#x} -> {after:#x}"
            assert await tb.read_reg("FLAGS") >> FLAGS["bus_error"] & 1, \
                f"{reg.name} = {value}: FLAGS.bus_error not raised"
        # the extremes that fit are stored exactly
        for value in (lo, hi):
            await tb.write_reg(reg.name, value)
            got = await tb.read_reg(reg.name)
            want = value & 0xFFFFFFFF
            assert got == want, f"{reg.name} = {value} reads back {got:#x}, want {want:#x}"
        await tb.write_reg(reg.name, before)
    # a start after the refused writes runs with the settings in place
    await tb.write_reg("BATCH_N", cfg.batch)
    await tb.write_reg("UPDATE", UPDATE["maxnorm"])
    await tb.write_reg("LR_Q", 1)
    await tb.start()
    status = await tb.wait_done()
    assert EngineTB.error_code(status) == StartError.NONE, f"start after refused writes: STATUS {status:#x}"
