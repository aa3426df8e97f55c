"""Layer0Unit in Amaranth's simulator against the reference's first layer.

A harness joins the unit with a weight memory of ``word``-weight words (the flat parameters
packed as the unit documents) and one :class:`TopKMerger` per lane, fed the ``n_in + 1``
candidates of ``L*`` (index = input number, ``n_in`` = the bias) exactly once per sample.
Producers (inputs, candidates) stall at random and the consumer of ``o`` applies random
backpressure.  Every neuron's ``z`` (stream ``z``) and register list (streams ``regs[s]``, consumed
independently) must equal the reference's layer 0
``z`` and ``merged_idx``/``merged_val`` of :meth:`dpfm.reference.MLP.step_raw` (policy
``stream``), and ``zsat`` must be raised exactly where the reference's ``z`` is clamped.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import connect
from amaranth.sim import Simulator

from dpfm.config import Config
from dpfm.reference import MLP, new_entry
from dpfm.reference.fixed import round_shift
from dpfm.rtl.layer0 import Layer0Unit
from dpfm.rtl.topk import TopKMerger



class Harness(Elaboratable):
    """The unit, the weight memory (``init``: the packed words) and the lanes' mergers."""

    def __init__(self, config, word, mults, words):
        self.unit = Layer0Unit(config, word=word, mults=mults)
        self.mergers = [TopKMerger(config) for _ in range(config.batch)]
        self.words = words
        self.word = word

    def elaborate(self, platform):
        m = Module()
        u = self.unit
        m.submodules.unit = u
        wb = u.config.formats.weight.bits
        m.submodules.wmem = wmem = Memory(shape=unsigned(self.word * wb), depth=len(self.words),
                                          init=self.words)
        rp = wmem.read_port()
        m.d.comb += [rp.addr.eq(u.w_addr), rp.en.eq(u.w_en), u.w_data.eq(rp.data)]
        for s, mg in enumerate(self.mergers):
            m.submodules[f"merger{s}"] = mg
            connect(m, mg.o, u.lists[s])
        return m


def pack_words(params, word, wbits):
    """Flat raw parameters -> words of ``word`` weights, ``W[p]`` in lane ``p % word``."""
    mask = (1 << wbits) - 1
    n = -(-len(params) // word)
    out = []
    for q in range(n):
        v = 0
        for lane, p in enumerate(params[q * word:(q + 1) * word]):
            v |= (int(p) & mask) << (lane * wbits)
        out.append(v)
    return out


def make_case(config, rng, saturate):
    """Raw samples and parameters: inputs with zeros and ties; ``saturate`` drives ``z`` and
    the new entries into their clamps."""
    fm = config.formats
    n_in = config.net[0]
    N = config.batch
    if saturate:
        X = rng.integers(fm.value.min_int, fm.value.max_int + 1, size=(N, n_in))
        params = rng.integers(fm.weight.min_int, fm.weight.max_int + 1, size=config.n_params)
    else:
        X = rng.integers(0, fm.value.one, size=(N, n_in))
        params = rng.integers(-fm.weight.one, fm.weight.one + 1, size=config.n_params)
    X[rng.random((N, n_in)) < 0.15] = 0                      # zero inputs are never inserted
    if n_in > 2:                                               # equal values: ties by index
        X[:, n_in - 1] = X[:, 0]
        X[0, 1] = -X[0, 0]
    y = np.zeros((N, config.net[-1]), dtype=np.int64)
    return X.astype(np.int64), y, params.astype(np.int64)


def reference_layer0(config, X, y, params):
    trace = MLP(list(config.net), list(config.activations)).step_raw(
        X, y, params, config.k, 0.01, "maxnorm", config.formats, config.policy)
    fm = config.formats
    W = params[:config.net[0] * config.net[1]].reshape(config.net[1], config.net[0])
    b = params[config.net[0] * config.net[1]:config.net[0] * config.net[1] + config.net[1]]
    zfull = X @ W.T + (b << fm.value.frac)
    r = round_shift(zfull, fm.weight.frac)
    clamped = (r < fm.value.min_int) | (r > fm.value.max_int)
    return trace.forward.layers[0], clamped


def run_steps(config, word, mults, cases, *, seed=0, stall=0.3, backpressure=0.3):
    """Simulate one step per case; returns (outputs per step: ``{"z": [per neuron: per lane
    (z, zsat)], "regs": [per lane: [per neuron: list]]}``, cycles from start to the end of
    ``busy`` per step)."""
    fm = config.formats
    n_in, n_out, B, K = config.net[0], config.net[1], config.batch, config.k
    params = cases[0][2]
    assert all((c[2] == params).all() for c in cases)
    h = Harness(config, word, mults, pack_words(params, word, fm.weight.bits))
    u = h.unit
    one_g = min(fm.grad.one, fm.grad.max_int)
    rng = random.Random(seed)
    got = [{"z": [], "regs": [[] for _ in range(B)]} for _ in cases]
    cycles = []
    state = {"step": -1}

    async def control(ctx):
        for n, (X, _, _) in enumerate(cases):
            await ctx.tick().until(~u.busy)
            ctx.set(u.start, 1)
            await ctx.tick()
            ctx.set(u.start, 0)
            t0 = 0
            state["step"] = n
            while ctx.get(u.busy):
                await ctx.tick()
                t0 += 1
            cycles.append(t0)

    async def feed_inputs(ctx):
        for n, (X, _, _) in enumerate(cases):
            while state["step"] != n:
                await ctx.tick()
            for i in range(n_in):
                while rng.random() < stall:
                    await ctx.tick()
                ctx.set(u.a.payload, [int(X[s, i]) for s in range(B)])
                ctx.set(u.a.valid, 1)
                await ctx.tick().until(u.a.ready)
                ctx.set(u.a.valid, 0)

    def feed_merger(s):
        async def tb(ctx):
            mg = h.mergers[s]
            for n, (X, _, _) in enumerate(cases):
                await ctx.tick().until(u.busy)
                while state["step"] != n:
                    await ctx.tick()
                newv, _ = new_entry(X[s], fm.value, fm.grad)
                cands = [(i, int(newv[i]), 0) for i in range(n_in)] + [(n_in, one_g, 1)]
                for idx, val, last in cands:
                    while rng.random() < stall:
                        await ctx.tick()
                    ctx.set(mg.i.payload, {"idx": idx, "val": val, "last": last})
                    ctx.set(mg.i.valid, 1)
                    await ctx.tick().until(mg.i.ready)
                    ctx.set(mg.i.valid, 0)
                while state["step"] == n:
                    await ctx.tick()
        return tb

    async def consume_z(ctx):
        for n in range(len(cases)):
            for j in range(n_out):
                while rng.random() < backpressure:
                    ctx.set(u.z.ready, 0)
                    await ctx.tick()
                ctx.set(u.z.ready, 1)
                payload, = await ctx.tick().sample(u.z.payload).until(u.z.valid)
                got[n]["z"].append([(payload[s].z, payload[s].zsat) for s in range(B)])
                ctx.set(u.z.ready, 0)

    def consume_regs(s):
        async def tb(ctx):
            ro = u.regs[s]
            for n in range(len(cases)):
                for j in range(n_out):
                    while rng.random() < backpressure:
                        ctx.set(ro.ready, 0)
                        await ctx.tick()
                    ctx.set(ro.ready, 1)
                    regs, = await ctx.tick().sample(ro.payload).until(ro.valid)
                    got[n]["regs"][s].append([(regs[t].idx, regs[t].val) for t in range(K)])
                    ctx.set(ro.ready, 0)
        return tb

    sim = Simulator(h)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(feed_inputs)
    for s in range(B):
        sim.add_testbench(feed_merger(s))
    sim.add_testbench(consume_z)
    for s in range(B):
        sim.add_testbench(consume_regs(s))
    sim.run_until(1e-8 * 200 * (len(cases) + 1) * (n_in + 10) * max(1, n_out))
    assert len(cycles) == len(cases), "the unit did not finish every step"
    return got, cycles


def check(config, cases, got):
    n_out, B, K = config.net[1], config.batch, config.k
    zsats = 0
    for (X, y, params), outs in zip(cases, got):
        tr, clamped = reference_layer0(config, X, y, params)
        assert len(outs["z"]) == n_out
        for s in range(B):
            assert len(outs["regs"][s]) == n_out
            for j in range(n_out):
                where = f"lane {s} neuron {j}"
                z, zsat = outs["z"][j][s]
                assert z == tr.z[s, j], where
                assert zsat == int(clamped[s, j]), where
                zsats += zsat
                R = tr.merged_val.shape[2]
                want = [(int(tr.merged_idx[s, j, t]), int(tr.merged_val[s, j, t])) for t in range(R)]
                want += [(None, 0)] * (K - R)
                regs = outs["regs"][s][j]
                for t, ((gi, gv), (wi, wv)) in enumerate(zip(regs, want)):
                    assert gv == wv, f"{where} register {t}: {regs} != {want}"
                    if wv != 0:
                        assert gi == wi, f"{where} register {t}: {regs} != {want}"
    return zsats


CASES = [
    # (net, k, batch, word, mults)
    ((4, 5, 5, 1), 16, 10, 8, 8),        # the seed, the default Config
    ((4, 5, 5, 1), 16, 3, 16, 4),
    ((4, 5, 5, 1), 2, 3, 8, 1),          # k < n_in + 1: L* truncated
    ((13, 7, 3), 6, 3, 8, 8),            # awkward n_in: rows and biases cross words
    ((13, 7, 3), 16, 2, 8, 2),
    ((13, 7, 3), 16, 2, 16, 16),
    ((13, 7, 3), 4, 2, 16, 4),
    ((64, 32, 10), 16, 2, 8, 8),
    ((64, 32, 10), 16, 1, 16, 16),
]


#: The Amaranth simulator takes minutes per case: `make soak` runs these.
@pytest.mark.soak
@pytest.mark.parametrize("net,k,batch,word,mults", CASES)
def test_layer0_matches_reference(net, k, batch, word, mults):
    acts = ("sigmoid",) * (len(net) - 2) + ("linear",)
    config = Config(net=net, activations=acts, k=k, batch=batch)
    rng = np.random.default_rng(hash((net, k, batch, word, mults)) & 0xFFFF)
    plain = make_case(config, rng, saturate=False)
    sat = make_case(config, rng, saturate=True)
    sat = (sat[0], sat[1], plain[2])          # one weight memory per simulation
    cases = [plain, sat]
    got, cycles = run_steps(config, word, mults, cases, seed=k + batch)
    check(config, cases, got)


@pytest.mark.soak
def test_layer0_saturates():
    """Full-range weights and inputs clamp ``z`` and the new entries, and the unit agrees."""
    config = Config(net=(13, 7, 3), activations=("sigmoid", "linear"), k=8, batch=3)
    rng = np.random.default_rng(7)
    cases = [make_case(config, rng, saturate=True) for _ in range(2)]
    cases[1] = (cases[1][0], cases[1][1], cases[0][2])
    got, _ = run_steps(config, 8, 4, cases, seed=3)
    zsats = check(config, cases, got)
    assert zsats > 0, "the case does not saturate any z"
    fm = config.formats
    newv, nsat = new_entry(cases[0][0], fm.value, fm.grad)
    assert nsat > 0, "the case does not saturate any new entry"


def test_layer0_parameters():
    config = Config()
    with pytest.raises(ValueError, match="power of two"):
        Layer0Unit(config, word=6)
    with pytest.raises(ValueError, match="exceeds"):
        Layer0Unit(config, word=8, mults=16)
    with pytest.raises(TypeError):
        Layer0Unit(config, word=8.0)
    with pytest.raises(TypeError):
        Layer0Unit("config")
    u = Layer0Unit(config, word=16)
    assert (u.mults, u.chunks, u.latency) == (16, 1, 22)
