"""UpdateUnit in Amaranth's simulator against :func:`dpfm.reference.mlp.fixed_update`.

A harness gives the unit the memories the engine gives it (W and one delta bank per lane, in
words of ``update_lanes`` parameters); each case loads random banks and weights, starts the
unit, and compares the weights it wrote, its saturation events and its cycles per pass with
the reference (``fixed_update``, the delta and weight formats' saturation) and the cycle
formulas of :func:`dpfm.sim.engine_expect.update_phase_cycles`.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from dpfm.config import DEFAULT_UPDATE_LANES, Config, ConfigError
from dpfm.reference.mlp import fixed_update, lr_quantize, sgd_scale
from dpfm.rtl.regmap import UPDATE
from dpfm.rtl.update import UpdateUnit, delta_bank_shape, update_words
from dpfm.sim.engine_expect import update_phase_cycles


class _Harness(Elaboratable):
    """The unit with a word-wide weight memory and ``batch`` word-wide delta banks."""

    def __init__(self, config):
        self.config = config
        self.unit = UpdateUnit(config)
        M, words = config.update_lanes, update_words(config)
        self.wbits = config.formats.weight.bits
        self.dbits = self.unit.delta_shape.width
        self.wmem = Memory(shape=unsigned(M * self.wbits), depth=words, init=[])
        self.dmems = [Memory(shape=unsigned(M * self.dbits), depth=words, init=[])
                      for _ in range(config.batch)]

    def elaborate(self, platform):
        m = Module()
        u = self.unit
        m.submodules.unit = u
        m.submodules.wmem = self.wmem
        wr = self.wmem.write_port(granularity=self.wbits)
        rd = self.wmem.read_port(transparent_for=())
        m.d.comb += [rd.addr.eq(u.w_rd_addr), u.weights.eq(rd.data),
                     wr.addr.eq(u.w_addr), wr.data.eq(u.w_data), wr.en.eq(u.w_en)]
        for s, mem in enumerate(self.dmems):
            m.submodules[f"dmem{s}"] = mem
            drd = mem.read_port(transparent_for=())
            m.d.comb += [drd.addr.eq(u.addr), u.deltas[s].eq(drd.data)]
        return m


def _pack(values, bits, M, words):
    """Values (padded with 0) -> ``words`` raw words of ``M`` two's-complement elements."""
    vals = list(values) + [0] * (M * words - len(values))
    mask = (1 << bits) - 1
    return [sum((int(vals[w * M + e]) & mask) << (e * bits) for e in range(M)) for w in range(words)]


def _unpack(words, bits, M):
    top = 1 << (bits - 1)
    return [((w >> (e * bits)) & ((1 << bits) - 1) ^ top) - top for w in words for e in range(M)]


def _cases(config, rng):
    """(name, banks (batch, P), weights (P,), update, lr) tuples covering the corner cases."""
    fm = config.formats
    P, B = config.n_params, config.batch
    bank_hi = config.n_out * config.k << (fm.value.bits + fm.grad.bits - 2)
    assert delta_bank_shape(config).width == bank_hi.bit_length() + 1
    wlo, whi = fm.weight.min_int, fm.weight.max_int

    def weights():
        return rng.integers(wlo, whi + 1, P)

    def small():
        return rng.integers(-(1 << 30), 1 << 30, (B, P)) * (rng.random((B, P)) < 0.7)

    yield "maxnorm", small(), weights(), "maxnorm", 0.01
    yield "sgd", small(), weights(), "sgd", 0.05
    tiny = rng.integers(-3, 4, (B, P))                       # m < 2**16: sh < 0
    yield "maxnorm tiny", tiny, weights(), "maxnorm", 0.02
    yield "sgd tiny", tiny, weights(), "sgd", 0.2
    yield "zero", np.zeros((B, P), np.int64), weights(), "maxnorm", 0.01
    yield "zero sgd", np.zeros((B, P), np.int64), weights(), "sgd", 0.01
    one = np.zeros((B, P), np.int64)
    one[rng.integers(B), P - 1] = -5                        # only the last parameter moves
    yield "last only", one, weights(), "maxnorm", 0.5
    # every bank near its bound: the sum over the lanes saturates the delta format
    sat = np.where(rng.random(P) < 0.5, -bank_hi, bank_hi)[None, :] * (rng.random((B, P)) < 0.9)
    yield "saturating deltas", sat, weights(), "maxnorm", 0.25
    yield "saturating deltas sgd", sat, weights(), "sgd", 0.4
    # weights at the format's ends and a big rate: w - upd saturates
    edge = rng.choice([wlo, whi, wlo + 1, whi - 1], P)
    yield "saturating weights", small(), edge, "maxnorm", 30.0
    yield "saturating weights sgd", small() * 64, edge, "sgd", 0.45


def _run(config, cases):
    h = _Harness(config)
    u = h.unit
    M, words, P = config.update_lanes, update_words(config), config.n_params
    fm = config.formats
    sim = Simulator(h)
    sim.add_clock(1e-8)
    results = []

    async def bench(ctx):
        for name, banks, w, update, lr in cases:
            for s, mem in enumerate(h.dmems):
                for a, word in enumerate(_pack(banks[s], h.dbits, M, words)):
                    ctx.set(mem.data[a], word)
            # the last word's elements past n_params: weights the update must not touch
            tail_w = list(w) + [fm.weight.max_int] * (M * words - P)
            for a, word in enumerate(_pack(tail_w, h.wbits, M, words)):
                ctx.set(h.wmem.data[a], word)
            if isinstance(lr, tuple):           # sgd with the SGD_CQ and SGD_CS registers given
                (cq, cs), lr = lr, 0.01
            else:
                cq, cs = sgd_scale(lr, config.batch * config.n_out) if update == "sgd" else (1 << 16, 16)
            ctx.set(u.mode, UPDATE[update])
            ctx.set(u.lr_q, int(lr_quantize(lr, fm)))
            ctx.set(u.sgd_cq, cq)
            ctx.set(u.sgd_cs, cs)
            ctx.set(u.start, 1)
            await ctx.tick()
            ctx.set(u.start, 0)
            cycles, sat_d, sat_w = 0, 0, 0
            while True:
                cycles += 1
                sat_d += ctx.get(u.sat_delta)
                sat_w += ctx.get(u.sat_weight)
                done = ctx.get(u.done)
                await ctx.tick()
                if done:
                    break
            got = _unpack([ctx.get(h.wmem.data[a]) for a in range(words)], h.wbits, M)
            results.append((name, banks, w, update, lr, (cq, cs), got, cycles, sat_d, sat_w))

    sim.add_testbench(bench)
    sim.run()
    return results


def _check(config, results):
    fm = config.formats
    P, M, words = config.n_params, config.update_lanes, update_words(config)
    for name, banks, w, update, lr, sgd_q, got, cycles, sat_d, sat_w in results:
        D, n_delta = fm.delta.saturate(np.sum(banks, axis=0, dtype=np.int64))
        lr = 0.01 if isinstance(lr, tuple) else lr
        upd = fixed_update(D, lr, update, config.batch * config.n_out, fm, sgd_q=sgd_q)
        new, n_weight = fm.weight.saturate(np.asarray(w, np.int64) - upd)
        assert got[:P] == [int(v) for v in new], f"{name}: weights differ"
        assert got[P:] == [fm.weight.max_int] * (M * words - P), f"{name}: the last word's tail changed"
        assert (sat_d > 0) == (n_delta > 0), f"{name}: sat_delta {sat_d} vs {n_delta} clamps"
        assert (sat_w > 0) == (n_weight > 0), f"{name}: sat_weight {sat_w} vs {n_weight} clamps"
        want = update_phase_cycles(config, update=update, delta_zero=not np.any(D))
        assert cycles == sum(want.values()), f"{name}: {cycles} cycles, formula {want}"


@pytest.mark.parametrize("net,batch,M", [
    ((4, 5, 5, 1), 10, 1),
    ((4, 5, 5, 1), 10, 4),
    ((4, 5, 5, 1), 10, 8),      # 61 parameters: the last word holds 5
    ((4, 5, 5, 1), 3, 16),
    ((4, 5, 5, 1), 1, 2),
    ((3, 2, 2), 4, 2),          # 14 parameters: a multiple of M
])
def test_update_unit_matches_fixed_update(net, batch, M):
    acts = ("sigmoid",) * (len(net) - 2) + ("linear",)
    config = Config(net=net, activations=acts, k=min(16, Config(net=net, activations=acts, k=1).n_params),
                    batch=batch, update_lanes=M)
    rng = np.random.default_rng(zlib.crc32(repr((net, batch, M)).encode()))
    cases = list(_cases(config, rng))
    _check(config, _run(config, cases))


def _sweep_cases(config, rng):
    """Every bit length of ``max|D|`` (so every place of the ``Dn`` window and every shift
    ``sh``), under maxnorm and under sgd scales from the largest (``cs = 16``, the sgd
    window overflows and w saturates) to ones that round every update to 0."""
    fm = config.formats
    P, B = config.n_params, config.batch
    bank_hi = config.n_out * config.k << (fm.value.bits + fm.grad.bits - 2)
    wlo, whi = fm.weight.min_int, fm.weight.max_int
    for bl in range(1, fm.delta.bits + 3):
        top = 1 << (bl - 1)
        D = rng.integers(-2 * top, 2 * top, P)
        D[rng.integers(P)] = rng.choice([top, -top, 2 * top - 1, -2 * top])    # bit length bl
        banks = np.zeros((B, P), np.int64)
        rest = D.copy()
        for s in range(B):                 # spread D over the lanes, each within its bank
            part = rest if s == B - 1 else np.clip(rng.integers(-bank_hi, bank_hi + 1, P), -np.abs(rest), np.abs(rest))
            part = np.clip(part, -bank_hi, bank_hi)
            banks[s] = part
            rest = rest - part
        w = rng.integers(wlo, whi + 1, P)
        yield f"maxnorm bl={bl}", banks, w, "maxnorm", float(rng.choice([0.01, 0.3, 20.0]))
        cq = int(rng.choice([1 << 16, int(rng.integers(1 << 16, 1 << 17)), (1 << 17) - 1, (1 << 18) - 1]))
        cs = int(rng.choice([16, 17, 18, 20, 24, 30, 40, 60]))
        yield f"sgd bl={bl} cs={cs}", banks, w, "sgd", (cq, cs)


@pytest.mark.parametrize("M", [1, 4, 8])
def test_update_unit_shift_sweep(M):
    config = Config(k=16, batch=10, update_lanes=M)
    rng = np.random.default_rng(zlib.crc32(repr(("sweep", M)).encode()))
    _check(config, _run(config, list(_sweep_cases(config, rng))))


def test_update_lanes_setting():
    assert Config().update_lanes == DEFAULT_UPDATE_LANES
    assert Config(update_lanes=8).update_lanes == 8
    for bad in (0, 3, 12, 128, 2.0, True):
        with pytest.raises(ConfigError, match="update_lanes"):
            Config(update_lanes=bad)
