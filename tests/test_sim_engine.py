"""The training engine on Verilator (cocotb 2.1), checked against the reference.

One Verilator build per configuration (``build/sim/engine-<name>-<hash>``); the cocotb tests
live in :mod:`dpfm.sim.engine_tests`.  The non-``sim`` tests below check, without a simulator,
that the testbench's expected streams reproduce the reference's merged lists and that
docs/engine.md's register table is the one the code generates.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.reference.kernels import topk_insert
from dpfm.rtl.regmap import register_map
from dpfm.sim.engine_expect import (CONFIG_ENV, FSM_ENV, UNIT_FSM_KEY, check_candidates,
                                    expected_streams, forward_cycles, forward_slots, phase_cycles,
                                    sample_batch, step_case, step_counts, step_cycles)

REPO = Path(__file__).resolve().parents[1]
DIGITS = dict(net=(64, 16, 10), activations=("sigmoid", "sigmoid"))

#: name -> (Config, task, cocotb tests to run); None runs every test of the module.
CONFIGS = {
    "seed-k4": (Config(k=4, batch=10), "sum4", None),
    "seed-k16": (Config(k=16, batch=10), "sum4", ["training_steps", "forward_only_step", "identity"]),
    "digits-k16": (Config(**DIGITS, k=16, batch=10), "digits", ["training_steps", "identity"]),
}
#: Longer runs behind ``make soak``: the other k of the cycle table, and many steps.
SOAK_CONFIGS = {
    "seed-k8": (Config(k=8, batch=10), "sum4", ["training_steps"]),
    "seed-k32": (Config(k=32, batch=10), "sum4", ["training_steps"]),
    # the Config of docs/board.md with more than half of the DSP48E1 at batch 10
    "seed-k16-l8": (Config(k=16, batch=10, lanes=8), "sum4", ["training_steps"]),
}

def _source_digest() -> str:
    """Hash of everything the engine's Verilog depends on (RTL, reference, Config, Amaranth)."""
    import amaranth
    h = hashlib.sha256(amaranth.__version__.encode())
    for folder in ("rtl", "reference"):
        for path in sorted((REPO / folder).glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    h.update((REPO / "dpfm" / "config.py").read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def engine_design(name: str, config: Config) -> tuple[str, dict]:
    """Verilog text of ``Engine(config)`` and its FSM encoding, cached on disk by source hash
    (converting the engine takes tens of seconds)."""
    from dpfm.toolchain import build_root
    key = hashlib.sha256((_source_digest() + json.dumps(config.to_dict(), sort_keys=True))
                         .encode()).hexdigest()[:16]
    cache = build_root() / "sim" / "verilog-cache"
    vpath, fpath = cache / f"engine-{name}-{key}.v", cache / f"engine-{name}-{key}.fsm.json"
    if vpath.is_file() and fpath.is_file():
        return vpath.read_text(), json.loads(fpath.read_text())
    from amaranth.hdl import Fragment
    from dpfm.rtl.engine import Engine
    from dpfm.rtl.update import UpdateUnit
    from dpfm.toolchain import component_verilog
    text = component_verilog(Engine(config), name="dpfm_engine")
    fsm = dict(Fragment.get(Engine(config), None).generated["engine"].encoding)
    fsm[UNIT_FSM_KEY] = dict(Fragment.get(UpdateUnit(config), None).generated["update"].encoding)
    cache.mkdir(parents=True, exist_ok=True)
    vpath.write_text(text)
    fpath.write_text(json.dumps(fsm))
    return text, fsm


def run_engine(name: str, config: Config, task: str, testcase=None, steps: int | None = None,
               waves: bool | None = None):
    """Build (once) and run the engine's cocotb tests for one configuration."""
    from dpfm.sim.runner import run_cocotb
    text, fsm = engine_design(name, config)
    env = {CONFIG_ENV: json.dumps(config.to_dict()), FSM_ENV: json.dumps(fsm),
           "DPFM_ENGINE_TASK": task}
    if steps is not None:
        env["DPFM_ENGINE_STEPS"] = str(steps)
    t0 = time.monotonic()
    result = run_cocotb(source_text=text, toplevel="dpfm_engine",
                        test_module="dpfm.sim.engine_tests", name=f"engine-{name}",
                        extra_env=env, testcase=testcase, seed=1, waves=waves)
    print(f"{name}: {result.tests} cocotb tests in {time.monotonic() - t0:.1f} s ({result.build_dir})")
    return result


@pytest.mark.sim
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_on_verilator(name):
    config, task, tests = CONFIGS[name]
    result = run_engine(name, config, task, testcase=tests)
    assert result.passed


@pytest.mark.soak
@pytest.mark.parametrize("name", list(SOAK_CONFIGS))
def test_engine_other_k_on_verilator(name):
    config, task, tests = SOAK_CONFIGS[name]
    assert run_engine(name, config, task, testcase=tests).passed


@pytest.mark.soak
@pytest.mark.parametrize("name", ["seed-k16", "digits-k16"])
def test_engine_many_steps_on_verilator(name):
    config, task, _ = CONFIGS[name]
    assert run_engine(name, config, task, testcase="training_steps", steps=40).passed


@pytest.mark.soak
def test_engine_waves():
    """WAVES=1 (here: waves=True) traces the engine to dump.fst (dump.vcd without FST support)."""
    config, task, _ = CONFIGS["seed-k4"]
    result = run_engine("seed-k4", config, task, testcase="identity", waves=True)
    assert result.passed and result.waves is not None and result.waves.is_file()
    assert result.waves.stat().st_size > 0


# ----------------------------------------------------------------------------- no simulator
def _seed_case(k, update="maxnorm", batch_n=10):
    from dpfm.reference import MLP
    from dpfm.tasks import load_task
    cfg = Config(k=k, batch=10)
    task = load_task("sum4")
    Xq, yq = sample_batch(task.X_train, task.y_train, cfg, np.arange(batch_n))
    params, _ = cfg.formats.weight.quantize(MLP(list(cfg.net), list(cfg.activations), seed=1).params)
    return cfg, step_case(cfg, Xq, yq, params, update=update)


@pytest.mark.parametrize("k", [4, 16])
@pytest.mark.parametrize("lane", [0, 6])
def test_expected_candidates_merge_to_reference_lists(k, lane):
    """Inserting the expected candidate stream one by one (the reference's topk_insert)
    gives the reference's merged lists: the stream the monitor expects is the one the
    reference's stream policy consumes."""
    cfg, case = _seed_case(k)
    streams = expected_streams(case, lane=lane)
    fmt = cfg.formats.grad
    cands = iter(streams["cand"])
    for want in streams["merged"]:
        L_idx = np.full(cfg.k, -1, np.int64)
        L_val = np.zeros(cfg.k, np.int64)
        n = 0
        while True:
            c = next(cands)
            if c["val"] != 0:
                n, _ = topk_insert(L_idx, L_val, n, cfg.k, c["idx"], c["val"], fmt.min_int, fmt.max_int)
            if c["last"]:
                break
        got = [(int(i) if v else None, int(v)) for i, v in zip(L_idx, L_val)]
        assert got == want["regs"]
    assert next(cands, None) is None


def test_expected_stream_lengths():
    cfg, case = _seed_case(16)
    streams = expected_streams(case)
    counts = step_counts(case)
    # L* (4 inputs + bias) once, then 5 x (5 x 6 + 1) and 1 x (5 x 17 + 1)
    assert len(streams["cand"]) == counts["MERGE_BUSY"] == 5 + 155 + 86
    # one merged list per merger list (L* for layer 0), every other stream per neuron
    assert len(streams["merged"]) == 1 + sum(cfg.net[2:])
    assert all(len(streams[s]) == sum(cfg.net[1:]) for s in streams if s not in ("cand", "merged"))


def _drop_rejectable_tails(case, lane=0):
    """The lane's expected candidate stream with every block of layer 1 cut after the first
    4 register slots where the reference's list (fed the stream so far) rejects the rest:
    a stream the engine may produce.  Returns ``(stream, cuts)``."""
    cfg = case.config
    fmt = cfg.formats.grad
    want = expected_streams(case, lane=lane)["cand"]
    slots = forward_slots(cfg)
    L_idx, L_val, n = np.full(cfg.k, -1, np.int64), np.zeros(cfg.k, np.int64), 0
    out, cuts, s = [], {}, 0
    while s < len(slots):
        lst, last, _, layer, i, r = slots[s]
        c = want[s]
        if layer == 1 and r == 0 and not last:
            k_in = cfg.registers(0)
            block = want[s:s + 1 + k_in]
            keep = 1 + k_in
            for t in range(1 + min(4, k_in), 1 + k_in):
                rest = block[t:]
                li, lv = L_idx.copy(), L_val.copy()
                m = n
                for x in block[:t]:
                    if x["val"]:
                        m, _ = topk_insert(li, lv, m, cfg.k, x["idx"], x["val"], fmt.min_int, fmt.max_int)
                if m == cfg.k and all(abs(x["val"]) < abs(lv[-1]) for x in rest):
                    keep = t
                    break
            for x in block[:keep]:
                out.append({**x, "idx": x.get("idx", 0)})
                if x["val"]:
                    n, _ = topk_insert(L_idx, L_val, n, cfg.k, x["idx"], x["val"], fmt.min_int, fmt.max_int)
            cuts[(lst, i)] = keep - 1
            s += 1 + k_in
            continue
        out.append({**c, "idx": c.get("idx", 0)})
        if c["val"]:
            n, _ = topk_insert(L_idx, L_val, n, cfg.k, c["idx"], c["val"], fmt.min_int, fmt.max_int)
        if last:
            L_idx[:], L_val[:], n = -1, 0, 0
        s += 1
    return out, cuts


def test_check_candidates_accepts_rejected_tails_only():
    """The monitor's candidate check: the whole stream passes with every block whole; a
    stream with rejectable block tails of layer 1 dropped passes and reports those lengths;
    dropping a tail that holds a candidate the list takes is a problem, and so is dropping
    a candidate outside layer 1."""
    cfg, case = _seed_case(16)
    want = expected_streams(case)["cand"]
    full = [{**c, "idx": c.get("idx", 0)} for c in want]
    problems, lengths = check_candidates(case, full, want)
    assert not problems and set(lengths.values()) == {cfg.registers(0)}
    cut, cuts = _drop_rejectable_tails(case)
    assert len(cut) < len(full), "no block tail of layer 1 is rejectable in this step"
    problems, lengths = check_candidates(case, cut, want)
    assert not problems and lengths == cuts
    # a tail whose first candidate enters the list: the first block of layer 1 (its list
    # is not full yet, every non-zero candidate enters)
    first = next(n for n, s in enumerate(forward_slots(cfg)) if s[3] == 1)
    bad = full[:first + 2] + full[first + 1 + cfg.registers(0):]
    problems, _ = check_candidates(case, bad, want)
    assert problems and "would change the list" in problems[0]
    # a dropped candidate in layer 2
    last_layer = [n for n, s in enumerate(forward_slots(cfg)) if s[3] == 2 and s[5] == 1][0]
    problems, _ = check_candidates(case, full[:last_layer] + full[last_layer + 1:], want)
    assert problems


def test_forward_cycles_bound_holds_for_shortened_blocks():
    """FWD and FWD + FWD_WAIT with layer-1 blocks shortened (random lengths, seed and digits
    nets) stay within the whole-block values: the bound the testbench asserts."""
    rng = np.random.default_rng(3)
    for cfg in (Config(k=16, batch=10), Config(k=4, batch=10),
                Config(net=(12, 6, 3), activations=("sigmoid", "sigmoid"), k=8, batch=10)):
        fwd, wait = forward_cycles(cfg)
        k_in = cfg.registers(0)
        blocks = {(s[0], s[4]) for s in forward_slots(cfg) if s[3] == 1 and not s[1]}
        for _ in range(20):
            # the probe skips whole blocks (0 register slots), the early end cuts after 5+
            lengths = {b: int(rng.choice([0, int(rng.integers(min(4, k_in), k_in + 1))]))
                       for b in blocks}
            f, w = forward_cycles(cfg, lengths)
            assert f <= fwd and f + w <= fwd + wait, (cfg.net, cfg.k, f, w, fwd, wait)


def test_cycle_formula_parts():
    cfg = Config(k=16, batch=10, update_lanes=4)
    phases = phase_cycles(cfg, update="maxnorm")
    assert phases["MAX"] == phases["UPD"] == -(-cfg.n_params // 4) == 16
    assert phase_cycles(cfg.replace(update_lanes=1), update="maxnorm")["MAX"] == cfg.n_params
    assert "DIV" not in phase_cycles(cfg, update="sgd")
    assert set(phase_cycles(cfg, update="none")) == {"FWD", "FWD_WAIT", "LOSS", "LOSS_DRAIN", "DONE"}
    assert step_cycles(cfg, update="sgd") < step_cycles(cfg, update="maxnorm")


def test_docs_register_table_matches_code():
    """docs/engine.md's register table is generated from register_map(Config())."""
    text = (REPO / "docs" / "engine.md").read_text()
    table = register_map(Config()).to_markdown()
    assert table in text, ("docs/engine.md's register table is out of date; regenerate it with "
                           "`python -m dpfm.rtl.regmap --markdown`")


def test_docs_cycle_table_matches_formula():
    """The formula column of docs/engine.md's cycle table is what step_cycles computes."""
    text = (REPO / "docs" / "engine.md").read_text()
    rows = re.findall(r"^\| (seed|digits) \| (\d+) \| (\d+) \| (\d+) \|", text, re.M)
    assert len(rows) >= 5, "cycle table not found in docs/engine.md"
    stale = []
    for net, k, batch, formula in rows:
        extra = DIGITS if net == "digits" else {}
        want = step_cycles(Config(**extra, k=int(k), batch=int(batch)), update="maxnorm")
        if int(formula) != want:
            stale.append(f"{net} k={k}: table {formula}, formula now {want}")
    assert not stale, ("docs/engine.md's cycle table is stale (re-measure with `make sim`, "
                       "the CYCLES of step 0 in build/sim/engine-*/test.log): " + "; ".join(stale))
