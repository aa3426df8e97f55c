"""DualScale in Amaranth's simulator against :func:`dpfm.reference.ops.dual_scale`.

One simulator per configuration serves every hypothesis example of that configuration: a
producer and a consumer testbench (separate, random valid stalls and ready backpressure) take
their work from queues, and a monitor counts cycles and transfers.  Expected values come only
from ``dpfm.reference``.
"""

from __future__ import annotations

import random
import zlib
from collections import deque

import numpy as np
import pytest
from amaranth.hdl import Shape
from amaranth.lib import data
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpfm.config import Config
from dpfm.reference import FixedFormat, Formats, dual_scale
from dpfm.rtl.dual_scale import DualScale


def packer(shape):
    """Python value -> the raw integer of ``shape`` (a layout of dicts/lists, or an int)."""
    if isinstance(shape, data.StructLayout):
        parts = [(name, f.offset, packer(f.shape)) for name, f in shape]
        return lambda v: sum(pack(v[name]) << off for name, off, pack in parts)
    if isinstance(shape, data.ArrayLayout):
        size, pack = Shape.cast(shape.elem_shape).width, packer(shape.elem_shape)
        return lambda v: sum(pack(e) << (n * size) for n, e in enumerate(v))
    mask = (1 << Shape.cast(shape).width) - 1
    return lambda v: int(v) & mask


def unpacker(shape):
    """The raw integer of ``shape`` -> Python value (dicts, lists and ints)."""
    if isinstance(shape, data.StructLayout):
        parts = [(name, f.offset, unpacker(f.shape)) for name, f in shape]
        return lambda x: {name: unpack(x >> off) for name, off, unpack in parts}
    if isinstance(shape, data.ArrayLayout):
        size, unpack = Shape.cast(shape.elem_shape).width, unpacker(shape.elem_shape)
        return lambda x: [unpack(x >> (n * size)) for n in range(shape.length)]
    sh = Shape.cast(shape)
    mask, top = (1 << sh.width) - 1, 1 << (sh.width - 1)
    if sh.signed:
        return lambda x: ((x & mask) ^ top) - top
    return lambda x: x & mask


class StreamBench:
    """A component with streams ``i`` and ``o`` in one long-lived simulator.

    Payloads go in and come out as Python values (dicts, lists, ints) packed to and from the
    raw payload bits.

    Parameters
    ----------
    dut : wiring.Component
    stall, backpressure : float
        Probability that the producer waits a cycle before offering a payload, and that the
        consumer holds ``o.ready`` low in a cycle.
    watch : tuple of Signal
        Sampled with every output transfer (``delivered[n][1]``) and counted when high in any
        cycle (``pulses``).
    """

    def __init__(self, dut, *, seed=0, stall=0.3, backpressure=0.3, watch=()):
        self.dut, self.watch = dut, tuple(watch)
        self.i, self.o = dut.i, dut.o
        self.pack = packer(self.i.payload.shape())
        self.unpack = unpacker(self.o.payload.shape())
        self.rng = random.Random(seed)
        self.stall, self.backpressure = stall, backpressure
        self.todo = deque()
        self.got = []
        self.offered = []         # cycle in which each payload was first offered (i.valid)
        self.accepted = []        # cycle of each input transfer
        self.delivered = []       # (cycle, watched values) of each output transfer
        self.pulses = [0] * len(self.watch)
        self.cycle = 0
        self.stop = False
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._producer)
        self.sim.add_testbench(self._consumer)

    async def _producer(self, ctx):
        valid, ready, payload = self.i.valid, self.i.ready, self.i.payload.as_value()
        tick = ctx.tick()
        while not self.stop:
            if not self.todo:
                await tick
                continue
            raw = self.pack(self.todo.popleft())
            while self.rng.random() < self.stall:
                await tick
            ctx.set(payload, raw)
            ctx.set(valid, 1)
            await tick.until(ready)
            ctx.set(valid, 0)

    async def _consumer(self, ctx):
        """Drives ``o.ready``; also counts cycles and records every transfer on both sides."""
        ready = self.o.ready
        trigger = ctx.tick().sample(self.o.valid, self.o.payload.as_value(),
                                    self.i.valid, self.i.ready, *self.watch)
        waiting = False
        while not self.stop:
            r = self.rng.random() >= self.backpressure
            ctx.set(ready, r)
            _, _, ov, raw, iv, ir, *w = await trigger
            if iv and not waiting:
                self.offered.append(self.cycle)
                waiting = True
            if iv and ir:
                self.accepted.append(self.cycle)
                waiting = False
            if r and ov:
                self.got.append(self.unpack(raw))
                self.delivered.append((self.cycle, tuple(w)))
            for n, v in enumerate(w):
                self.pulses[n] += bool(v)
            self.cycle += 1

    def run(self, payloads, *, max_cycles):
        """Push ``payloads`` through; return their outputs (in order)."""
        assert not self.todo and len(self.got) == len(self.accepted), "bench left dirty"
        start, want = len(self.got), len(self.got) + len(payloads)
        limit = self.cycle + max_cycles
        self.todo.extend(payloads)
        while len(self.got) < want:
            self.sim.advance()
            if self.cycle > limit:
                raise AssertionError(f"only {len(self.got) - start} of {len(payloads)} outputs "
                                     f"after {max_cycles} cycles")
        return self.got[start:]

    def close(self):
        self.stop = True
        self.sim.run()


# -- configurations ---------------------------------------------------------------------------

NARROW = Formats(value=FixedFormat(12, 6), weight=FixedFormat(8, 0), grad=FixedFormat(10, 8),
                 deriv=FixedFormat(10, 8))


def make_config(k, lanes, formats=None):
    return Config(k=k, lanes=lanes, **({"formats": formats} if formats else {}))


# every lane count for small k, both scalar formats; the narrow formats (scalar frac 0, lots
# of saturation); two large k
SMALL = [(k, lanes, s) for k in (1, 2, 3, 4) for lanes in range(1, k + 2) for s in ("weight", "deriv")]
NARROW_CASES = [(3, lanes, s) for lanes in (1, 2, 4) for s in ("weight", "deriv")]
LARGE = [(16, 17, "weight"), (16, 5, "deriv"), (16, 1, "weight"), (32, 33, "deriv"), (32, 4, "weight")]

CHECKED = {"duals": 0, "saturating": 0}


@pytest.fixture(scope="module")
def benches():
    cache = {}

    def get(k, lanes, scalar, narrow=False):
        key = (k, lanes, scalar, narrow)
        if key not in cache:
            cfg = make_config(k, lanes, NARROW if narrow else None)
            dut = DualScale(cfg, scalar_fmt=getattr(cfg.formats, scalar))
            cache[key] = StreamBench(dut, seed=zlib.crc32(repr(key).encode()), watch=(dut.sat,))
        return cache[key]

    yield get
    for b in cache.values():
        b.close()
    print(f"\nDualScale: {CHECKED['duals']} duals checked against the reference, "
          f"{CHECKED['saturating']} of them saturating")


def ints(fmt: FixedFormat):
    """Integers of a format, the corners often."""
    corners = [fmt.min_int, fmt.min_int + 1, -1, 0, 1, fmt.max_int]
    return st.one_of(st.integers(fmt.min_int, fmt.max_int), st.sampled_from(corners))


def duals(cfg: Config, sfmt: FixedFormat):
    f = cfg.formats
    entry = st.tuples(st.integers(0, (1 << cfg.idx_bits) - 1), ints(f.grad))
    return st.tuples(ints(f.value), st.lists(entry, min_size=cfg.k, max_size=cfg.k), ints(sfmt))


def check(bench, cfg, sfmt, cases):
    payloads = [{"value": v, "grads": [{"idx": i, "val": g} for i, g in regs], "scalar": s}
                for v, regs, s in cases]
    d0 = len(bench.delivered)
    got = bench.run(payloads, max_cycles=(len(cases) + 4) * 40 * (cfg.k + 2))
    sats = [w[0] for _, w in bench.delivered[d0:]]
    f = cfg.formats
    for n, ((v, regs, s), out, hsat) in enumerate(zip(cases, got, sats)):
        hv, hregs = out["value"], [(e["idx"], e["val"]) for e in out["grads"]]
        idx = np.array([i for i, _ in regs])
        val = np.array([g for _, g in regs])
        rv, ridx, rval, count = dual_scale(v, idx, val, s, sfmt, f.value, f.grad)
        where = f"dual {n}: value={v} scalar={s} regs={regs}"
        assert hv == int(rv), f"{where}: value {hv} != reference {int(rv)}"
        for j, (hi, hg) in enumerate(hregs):
            assert hg == int(rval[j]), f"{where}: register {j} val {hg} != reference {int(rval[j])}"
            if ridx[j] >= 0:
                assert hi == int(ridx[j]), f"{where}: register {j} idx {hi} != reference {int(ridx[j])}"
            assert hi == regs[j][0], f"{where}: register {j} idx must pass through"
        assert bool(hsat) == (count > 0), f"{where}: sat pulse {hsat}, reference count {count}"
        CHECKED["saturating"] += count > 0
    CHECKED["duals"] += len(cases)


HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("k,lanes,scalar", SMALL)
@settings(max_examples=20, **HYP)
@given(data=st.data())
def test_small_k_every_lane_count(benches, k, lanes, scalar, data):
    bench = benches(k, lanes, scalar)
    cfg, sfmt = bench.dut.config, bench.dut.scalar_fmt
    check(bench, cfg, sfmt, data.draw(st.lists(duals(cfg, sfmt), min_size=1, max_size=16)))


@pytest.mark.parametrize("k,lanes,scalar", NARROW_CASES)
@settings(max_examples=20, **HYP)
@given(data=st.data())
def test_narrow_formats(benches, k, lanes, scalar, data):
    bench = benches(k, lanes, scalar, narrow=True)
    cfg, sfmt = bench.dut.config, bench.dut.scalar_fmt
    check(bench, cfg, sfmt, data.draw(st.lists(duals(cfg, sfmt), min_size=1, max_size=16)))


@pytest.mark.parametrize("k,lanes,scalar", LARGE)
@settings(max_examples=6, **HYP)
@given(data=st.data())
def test_large_k(benches, k, lanes, scalar, data):
    bench = benches(k, lanes, scalar)
    cfg, sfmt = bench.dut.config, bench.dut.scalar_fmt
    check(bench, cfg, sfmt, data.draw(st.lists(duals(cfg, sfmt), min_size=1, max_size=8)))


@pytest.mark.parametrize("k,lanes,scalar", [(4, 5, "weight")])
def test_most_negative_and_zero_corners(benches, k, lanes, scalar):
    """Every pairing of corner operands, value and registers alike."""
    bench = benches(k, lanes, scalar)
    cfg, sfmt = bench.dut.config, bench.dut.scalar_fmt
    f = cfg.formats
    vs = [f.value.min_int, f.value.min_int + 1, -1, 0, 1, f.value.max_int]
    gs = [f.grad.min_int, f.grad.min_int + 1, -1, 0, 1, f.grad.max_int]
    ss = [sfmt.min_int, sfmt.min_int + 1, -(1 << sfmt.frac), -1, 0, 1, 1 << sfmt.frac,
          (1 << sfmt.frac) - 1, sfmt.max_int]
    cases = []
    for s in ss:
        for n, v in enumerate(vs):
            regs = [(j + 1, gs[(n + j) % len(gs)]) for j in range(k)]
            cases.append((v, regs, s))
    check(bench, cfg, sfmt, cases)


@pytest.mark.parametrize("k,lanes", [(k, lanes) for k in (1, 2, 3, 4) for lanes in range(1, k + 2)]
                         + [(16, 17), (16, 5), (16, 1), (32, 33), (32, 4)])
def test_latency_and_initiation_interval(k, lanes):
    """Measured without stalls: II = ceil((k+1)/lanes), 3 cycles input to output transfer,
    ceil((k+1)/lanes) + 2 from the first offer to an idle unit."""
    cfg = make_config(k, lanes)
    dut = DualScale(cfg)
    bench = StreamBench(dut, stall=0.0, backpressure=0.0, watch=(dut.sat,))
    n = 8
    cases = [(v, [(j, 100 * j - 7) for j in range(k)], 4096) for v in range(n)]
    check(bench, cfg, dut.scalar_fmt, cases)
    bench.close()
    c = -(-(k + 1) // lanes)
    assert dut.ii == c and dut.latency == 3 and dut.first_latency == c + 2
    acc, out = bench.accepted, [t for t, _ in bench.delivered]
    assert [b - a for a, b in zip(acc, acc[1:])] == [c] * (n - 1), f"II: accepts at {acc}"
    assert [o - a for a, o in zip(acc, out)] == [dut.latency] * n, f"accepts {acc}, outputs {out}"
    assert out[0] - bench.offered[0] == dut.first_latency
    assert [b - a for a, b in zip(out, out[1:])] == [c] * (n - 1)


def test_sat_pulses_only_with_transfers():
    """The sat pulse rides on the output transfer: pulses == saturating duals delivered."""
    cfg = make_config(2, 3)
    dut = DualScale(cfg)
    bench = StreamBench(dut, stall=0.5, backpressure=0.7, watch=(dut.sat,))
    w = cfg.formats.weight
    cases = [(cfg.formats.value.max_int, [(0, 5), (1, -5)], w.max_int),     # value saturates
             (5, [(0, 5), (1, cfg.formats.grad.min_int)], w.min_int),        # a register saturates
             (5, [(0, 5), (1, 6)], 1 << w.frac)] * 5                         # none
    check(bench, cfg, dut.scalar_fmt, cases)
    bench.close()
    assert bench.pulses == [10]


# -- construction ----------------------------------------------------------------------------

def test_parameters_are_validated():
    cfg = Config(k=4)
    with pytest.raises(ValueError, match=r"lanes=0 must be in 1..k\+1=5"):
        DualScale(cfg, lanes=0)
    with pytest.raises(ValueError, match=r"lanes=6 must be in 1..k\+1=5"):
        DualScale(cfg, lanes=6)
    with pytest.raises(TypeError, match="lanes must be an integer, not True"):
        DualScale(cfg, lanes=True)
    with pytest.raises(TypeError, match="scalar_fmt must be a FixedFormat"):
        DualScale(cfg, scalar_fmt="18.12")
    with pytest.raises(TypeError, match="needs a dpfm.config.Config"):
        DualScale({"k": 4})
    with pytest.raises(ValueError, match=r"value x scalar: 24 x 26 bits exceeds the DSP48E1's 25 x 18"):
        DualScale(cfg, scalar_fmt=FixedFormat(26, 12))
    with pytest.raises(ValueError, match=r"value x scalar: 24 x 20 bits exceeds"):
        DualScale(cfg, scalar_fmt=FixedFormat(20, 12))
    DualScale(cfg.replace(use_dsp=False), scalar_fmt=FixedFormat(26, 12))   # soft multiplies allowed


def test_defaults_and_read_only_parameters():
    cfg = Config(k=4, lanes=2)
    ds = DualScale(cfg)
    assert ds.lanes == 2 and ds.scalar_fmt == cfg.formats.weight and ds.config is cfg
    assert ds.phases == 3
    with pytest.raises(AttributeError):
        ds.lanes = 3
    assert DualScale(cfg, scalar_fmt=cfg.formats.deriv, lanes=5).phases == 1


# -- rounding ties ---------------------------------------------------------------------------

def tie_products(sfmt: FixedFormat, limit: int):
    """``(operand, scalar)`` pairs whose product drops exactly one half LSB when shifted
    right by ``sfmt.frac``, and one below and one above, each with positive and negative
    products; operands within ``+-limit``.

    Odd scalars (both signs, small and near the format's ends) reach every residue through
    their inverse modulo ``2**frac``; ``+-2**(frac-1)`` times an odd operand is a tie by itself.
    """
    s = sfmt.frac
    mod, half = 1 << s, 1 << (s - 1)
    pairs = []
    odd = [1, -1, 3, -3, 4097, -4097, 12345, -12345, sfmt.max_int, sfmt.min_int + 1]
    for scalar in odd:
        inv = pow(scalar, -1, mod)
        for want in (half, half - 1, half + 1):
            r0 = want * inv % mod
            for op in (r0, r0 - mod):          # same dropped bits, opposite signs
                if -limit <= op <= limit:
                    pairs.append((op, scalar))
    for scalar in (half, -half):
        pairs += [(op, scalar) for op in (1, -1, 3, -3, 7, -7)]
    return pairs


@pytest.mark.parametrize("k,lanes,scalar", [(4, 5, "weight"), (4, 5, "deriv"), (3, 2, "weight"),
                                            (3, 2, "deriv")])
def test_rounding_ties_and_neighbours(benches, k, lanes, scalar):
    """Products whose dropped bits are exactly one half round toward plus infinity, as the
    reference's ``round_shift`` (``(x + 2**(s-1)) >> s``): ``+2.5 -> 3`` and ``-2.5 -> -2``,
    never down; one below and one above a tie round to the nearer neighbour.

    Directed, not drawn: every pair from :func:`tie_products` goes through the value slot and
    every register slot at once, in both scalar formats (frac 12 and 16), with one multiplier
    per product and with time-shared lanes.  Compared with :func:`dpfm.reference.dual_scale`.
    """
    bench = benches(k, lanes, scalar)
    cfg, sfmt = bench.dut.config, bench.dut.scalar_fmt
    f = cfg.formats
    s, half = sfmt.frac, 1 << (sfmt.frac - 1)
    pairs = tie_products(sfmt, f.grad.max_int)
    # the inputs' placement: ties and their neighbours, products of both signs, not clamped
    low = [(op * sc) & ((1 << s) - 1) for op, sc in pairs]
    assert {half - 1, half, half + 1} <= set(low)
    ties = [op * sc for (op, sc), lo in zip(pairs, low) if lo == half]
    inside = [p for p in ties if abs(p) >> s < f.grad.max_int]     # rounded, not clamped
    assert sum(p > 0 for p in inside) >= 8 and sum(p < 0 for p in inside) >= 8
    # every pair in the value slot and in every register slot
    cases = [(op, [(j + 1, op) for j in range(k)], sc) for op, sc in pairs]
    check(bench, cfg, sfmt, cases)
