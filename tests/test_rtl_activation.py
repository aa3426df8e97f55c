"""ActivationUnit in Amaranth's simulator against :func:`dpfm.reference.activations.act_fixed`.

Same bench as the DualScale tests (one simulator per configuration, producer and consumer
separate, random valid stalls and ready backpressure); expected values only from
``dpfm.reference``.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpfm.config import Config
from dpfm.reference import ACT_CODES, FixedFormat, Formats, act_fixed
from dpfm.reference.activations import TABLE_Z_FRAC
from dpfm.rtl.activation import ActivationUnit
from test_rtl_dual_scale import StreamBench

ALL4 = dict(net=(4, 5, 5, 5, 1), activations=("sigmoid", "tanh", "relu", "linear"))
CONFIGS = {
    "default": Config(),                                                   # sigmoid, linear
    "all4": Config(**ALL4),
    # value frac 6 < 8: the table address is z shifted left; narrow derivative format
    "narrow": Config(**ALL4, formats=Formats(value=FixedFormat(12, 6), weight=FixedFormat(10, 6),
                                             grad=FixedFormat(12, 8), deriv=FixedFormat(10, 8))),
    # value frac 20: shift right by 12; z spans +-16
    "wide": Config(**ALL4, formats=Formats(value=FixedFormat(25, 20))),
}

CHECKED = {"inputs": 0}


@pytest.fixture(scope="module")
def benches():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = StreamBench(ActivationUnit(CONFIGS[name]), seed=zlib.crc32(name.encode()))
        return cache[name]

    yield get
    for b in cache.values():
        b.close()
    print(f"\nActivationUnit: {CHECKED['inputs']} pre-activations checked against the reference")


def check(bench, cases):
    cfg = bench.dut.config
    f = cfg.formats
    got = bench.run([{"z": z, "act": ACT_CODES[a]} for z, a in cases],
                    max_cycles=40 * (len(cases) + 4))
    for name in set(a for _, a in cases):
        sel = [n for n, (_, a) in enumerate(cases) if a == name]
        z = np.array([cases[n][0] for n in sel], dtype=np.int64)
        ra, rd = act_fixed(name, z, f.value, f.deriv)
        for m, n in enumerate(sel):
            assert (got[n]["a"], got[n]["d"]) == (int(ra[m]), int(rd[m])), \
                f"{name}(z={z[m]}): hardware (a, d) = ({got[n]['a']}, {got[n]['d']}), " \
                f"reference ({int(ra[m])}, {int(rd[m])})"
    CHECKED["inputs"] += len(cases)


def zs(fmt: FixedFormat):
    """Pre-activations: anywhere, the corners, around 0 and around the table's ends."""
    shift = fmt.frac - TABLE_Z_FRAC
    edges = [e << shift if shift >= 0 else e >> -shift for e in (-2048, -2049, 2047, 2048)]
    near = st.sampled_from(edges).flatmap(
        lambda e: st.integers(max(fmt.min_int, e - 300), min(fmt.max_int, e + 300)))
    return st.one_of(st.integers(fmt.min_int, fmt.max_int),
                     st.sampled_from([fmt.min_int, fmt.min_int + 1, -1, 0, 1, fmt.max_int]),
                     st.integers(-(1 << (fmt.frac + 1)), 1 << (fmt.frac + 1)),
                     near)


HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("name", sorted(CONFIGS))
@settings(max_examples=40, **HYP)
@given(data=st.data())
def test_matches_reference(benches, name, data):
    bench = benches(name)
    cfg = bench.dut.config
    acts = sorted(set(cfg.activations) | {"linear", "relu"})
    case = st.tuples(zs(cfg.formats.value), st.sampled_from(acts))
    check(bench, data.draw(st.lists(case, min_size=1, max_size=40)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_table_entry(benches, name):
    """All 4096 addresses of every table built, with random bits below the address."""
    bench = benches(name)
    fmt = bench.dut.config.formats.value
    shift = fmt.frac - TABLE_Z_FRAC
    rng = random.Random(name)
    for act in bench.dut.tables:
        cases = []
        for addr in range(4096):
            z = (addr - 2048) << shift if shift >= 0 else (addr - 2048) >> -shift
            if shift > 0:
                z += rng.randrange(1 << shift)
            cases.append((max(fmt.min_int, min(fmt.max_int, z)), act))
        check(bench, cases)


def test_tables_only_for_used_activations(benches):
    assert ActivationUnit(CONFIGS["default"]).tables == ("sigmoid",)
    assert ActivationUnit(CONFIGS["all4"]).tables == ("sigmoid", "tanh")
    # a tanh code without a tanh table reads as (0, 0), as documented
    got = benches("default").run([{"z": 1 << 16, "act": ACT_CODES["tanh"]}], max_cycles=100)
    assert got == [{"a": 0, "d": 0}]


@pytest.mark.parametrize("name", ["default", "narrow"])
def test_latency_and_initiation_interval(name):
    """Measured without stalls: one input per cycle, input transfer to output transfer 2."""
    dut = ActivationUnit(CONFIGS[name])
    bench = StreamBench(dut, stall=0.0, backpressure=0.0)
    n = 16
    check(bench, [(z * 100 - 800, "sigmoid" if z % 2 else "linear") for z in range(n)])
    bench.close()
    acc, out = bench.accepted, [t for t, _ in bench.delivered]
    assert dut.ii == 1 and dut.latency == 2
    assert [b - a for a, b in zip(acc, acc[1:])] == [1] * (n - 1), f"accepts at {acc}"
    assert [b - a for a, b in zip(out, out[1:])] == [1] * (n - 1), f"outputs at {out}"
    assert [o - a for a, o in zip(acc, out)] == [2] * n, f"accepts {acc}, outputs {out}"
    assert out[0] - bench.offered[0] == 2


def test_parameters_are_validated():
    with pytest.raises(TypeError, match="needs a dpfm.config.Config"):
        ActivationUnit(None)
