"""cocotb tests of run mode: the engine trains whole runs from an ``AxiRam`` (cocotbext-axi).

The memory behind the engine's AXI4 master is cocotbext-axi's ``AxiRam`` under random idle
and backpressure generators on all five channels, with long stalls, so that every fetch,
snapshot and log write meets latency and backpressure.  Every epoch's log entry and weight
snapshot, and the weights left in the engine, are checked bit for bit against
:func:`dpfm.sim.run_expect.run_expectations` (the reference).  Run by
``tests/test_sim_run.py``; the Config comes from ``DPFM_ENGINE_CONFIG`` as for
:mod:`dpfm.sim.engine_tests`.
"""

from __future__ import annotations

import os
import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles

from dpfm.reference import MLP
from dpfm.rtl.protocol import (RUN_WORD, STOP_WORD, parse_log, pack_run, run_layout,
                               run_setting_words, run_status_fields, snapshot)
from dpfm.rtl.regmap import RunError
from dpfm.sim.engine_bench import EngineTB
from dpfm.sim.engine_expect import config_from_env, sample_batch
from dpfm.sim.run_expect import run_expectations

#: Bytes of the AxiRam; the run buffer sits at :data:`BASE`.
RAM_SIZE = 1 << 22
BASE = 0x10000


def _stalls(seed, p=0.3, long_every=500, long_cycles=60):
    """Pause generator: pauses with probability ``p``, and about every ``long_every`` cycles
    a stall of ``long_cycles``."""
    rng = random.Random(seed)
    while True:
        if rng.random() < 1 / long_every:
            for _ in range(long_cycles):
                yield 1
        yield int(rng.random() < p)


def _memory(tb, seed=1):
    from cocotbext.axi import AxiBus, AxiRam
    ram = AxiRam(AxiBus.from_prefix(tb.dut, "m_axi", bus_separator="__"), tb.dut.clk, tb.dut.rst,
                 size=RAM_SIZE)
    channels = (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
                ram.read_if.ar_channel, ram.read_if.r_channel)
    for n, ch in enumerate(channels):
        ch.set_pause_generator(_stalls(seed * 10 + n))
    for lg in (ram.write_if.log, ram.read_if.log):
        lg.setLevel("WARNING")
    return ram


def _corpus(config, n_train, n_val, seed=0):
    from dpfm.tasks import load_task
    task = load_task(os.environ.get("DPFM_ENGINE_TASK", "sum4"))
    Xq, yq = sample_batch(task.X_train, task.y_train, config, np.arange(n_train))
    Xv, yv = sample_batch(task.X_val, task.y_val, config, np.arange(n_val))
    return Xq, yq, Xv, yv


def _words(ram, layout):
    return np.frombuffer(ram.read(BASE, layout.nbytes), dtype=np.uint32)


async def _start_run(tb, ram, layout, words, update, lr, classify):
    ram.write(BASE, words.tobytes())
    for name, value in run_setting_words(tb.config, layout, BASE, update, lr, classify):
        await tb.write_reg(name, value & 0xFFFFFFFF)
    await tb.write_reg("CTRL", RUN_WORD)


async def _wait_run(tb, poll=2000, limit=20_000_000):
    for _ in range(limit // poll):
        await ClockCycles(tb.dut.clk, poll)
        st = run_status_fields(await tb.read_reg("RUN_STATUS"))
        if not st["running"]:
            return st
    raise AssertionError("the run did not end")


async def _check_run(tb, ram, *, epochs, n_train, n_val, update, lr, classify, seed=0):
    cfg = tb.config
    Xq, yq, Xv, yv = _corpus(cfg, n_train, n_val)
    params, _ = cfg.formats.weight.quantize(MLP(list(cfg.net), list(cfg.activations), seed=seed).params)
    params = params.astype(np.int64)
    await tb.load_weights(params)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n_train) for _ in range(epochs)]
    layout = run_layout(cfg, n_train, n_val, epochs)
    words = np.zeros(layout.nwords, dtype=np.uint32)
    pack_run(layout, words, Xq, yq, Xv, yv, perms)
    await _start_run(tb, ram, layout, words, update, lr, classify)
    st = await _wait_run(tb)
    assert st["done"] and st["error"] == 0 and st["epochs"] == epochs, f"run ended {st}"
    expect = run_expectations(cfg, Xq, yq, Xv, yv, perms, params, update=update, lr=lr,
                              classify=classify)
    mem = _words(ram, layout)
    for e, want in enumerate(expect):
        got = parse_log(mem, layout, e)
        for field in ("train_loss_raw", "val_loss_raw", "val_hits", "sat_value", "sat_grad",
                      "sat_delta", "sat_weight", "steps"):
            assert getattr(got, field) == getattr(want, field), \
                f"epoch {e}: {field} {getattr(got, field)} != reference {getattr(want, field)}"
        assert got.epoch == e
        assert got.cycles_min <= got.cycles_max and got.cycles >= got.steps * got.cycles_min
        snap = snapshot(mem, layout, e)
        assert np.array_equal(snap, want.weights), \
            f"epoch {e}: snapshot differs from the reference at {np.flatnonzero(snap != want.weights)[:8]}"
    final = np.array(await tb.read_weights(), dtype=np.int64)
    assert np.array_equal(final, expect[-1].weights), "the engine's weights after the run differ"
    lo = await tb.read_reg("RUN_CYCLES_LO")
    tb.log.info("run of %d epochs (%s, %d + %d samples): %d cycles; epoch 0 %s", epochs, update,
                n_train, n_val, lo, parse_log(mem, layout, 0))
    return layout


async def _setup(dut):
    tb = EngineTB(dut, config_from_env())
    ram = _memory(tb)
    await tb.cycle_reset()
    return tb, ram


@cocotb.test(timeout_time=2000, timeout_unit="ms")
async def run_epochs(dut):
    """Two runs under stalls on every channel: maxnorm with validation and hits, then sgd
    with a smaller last batch and no validation; logs, snapshots and weights bit-exact."""
    tb, ram = await _setup(dut)
    B = tb.config.batch
    await _check_run(tb, ram, epochs=2, n_train=3 * B, n_val=B + 3, update="maxnorm", lr=0.05,
                     classify=True)
    await _check_run(tb, ram, epochs=2, n_train=2 * B + 3, n_val=0, update="sgd", lr=0.5,
                     classify=False, seed=2)


@cocotb.test(timeout_time=2000, timeout_unit="ms")
async def run_stop_and_errors(dut):
    """CTRL.stop ends the run at the epoch boundary; a misaligned address, a bad batch-order
    entry and a step the engine refuses end it with their codes; a step or a second run
    while a run goes on is refused on the bus."""
    tb, ram = await _setup(dut)
    cfg = tb.config
    B = cfg.batch
    Xq, yq, Xv, yv = _corpus(cfg, 2 * B, B)
    params, _ = cfg.formats.weight.quantize(MLP(list(cfg.net), list(cfg.activations), seed=0).params)
    await tb.load_weights(params.astype(np.int64))
    perms = [np.random.default_rng(0).permutation(2 * B) for _ in range(5)]
    layout = run_layout(cfg, 2 * B, B, 5)
    words = np.zeros(layout.nwords, dtype=np.uint32)
    pack_run(layout, words, Xq, yq, Xv, yv, perms)
    # stop: requested during epoch 0, the run ends after it, snapshot and log whole
    await _start_run(tb, ram, layout, words, "maxnorm", 0.05, False)
    await ClockCycles(tb.dut.clk, 50)
    assert await tb.write("CTRL", 1) != 0, "CTRL.start during a run was accepted"
    assert await tb.write("CTRL", RUN_WORD) != 0, "a second CTRL.run during a run was accepted"
    assert await tb.write(tb.regmap["WEIGHTS"].base, 0) != 0, "a weight write during a run was accepted"
    await tb.write_reg("CTRL", STOP_WORD)
    st = await _wait_run(tb)
    assert st["stopped"] and not st["done"] and st["error"] == 0 and st["epochs"] == 1, st
    expect = run_expectations(cfg, Xq, yq, Xv, yv, perms[:1], params, lr=0.05)
    assert np.array_equal(snapshot(_words(ram, layout), layout, 0), expect[0].weights)
    assert np.array_equal(np.array(await tb.read_weights(), dtype=np.int64), expect[0].weights)
    await tb.write_reg("CTRL", 1 << 1)               # clear the bus_error of the refusals
    # misaligned: nothing runs
    await tb.write_reg("RUN_LOG_ADDR", BASE + layout.log + 4)
    await tb.write_reg("CTRL", RUN_WORD)
    st = await _wait_run(tb, poll=20)
    assert st["error"] == RunError.MISALIGNED and st["epochs"] == 0 and not st["done"], st
    await tb.write_reg("RUN_LOG_ADDR", BASE + layout.log)
    # a batch-order entry outside the training rows
    bad = words.copy()
    bad[layout.perm_slot(0, 1) + 2] = 2 * B
    await _start_run(tb, ram, layout, bad, "maxnorm", 0.05, False)
    st = await _wait_run(tb)
    assert st["error"] == RunError.BAD_INDEX and st["epochs"] == 0, st
    assert await tb.read_reg("RUN_ERR_ADDR") == BASE + 4 * (layout.perm_slot(0, 1) + 2)
    # a refused step: maxnorm with LR_Q = 0
    await _start_run(tb, ram, layout, words, "maxnorm", 0.05, False)
    st = await _wait_run(tb)   # (the run is fine; now break it)
    assert st["done"]
    await tb.write_reg("LR_Q", 0)
    await tb.write_reg("CTRL", RUN_WORD)
    st = await _wait_run(tb, poll=50)
    assert st["error"] == RunError.LR_ZERO and st["epochs"] == 0, st
