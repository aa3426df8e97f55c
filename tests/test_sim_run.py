"""Run mode on Verilator under cocotb: the engine trains whole runs from cocotbext-axi's
``AxiRam`` (stalls on every channel), checked epoch by epoch against the reference
(:mod:`dpfm.sim.run_tests`)."""

from __future__ import annotations

import json
import time

import pytest

from dpfm.config import Config
from dpfm.sim.engine_expect import CONFIG_ENV, FSM_ENV

from test_sim_engine import engine_design

CONFIGS = {"seed-k4": (Config(k=4, batch=10), "sum4")}


def run_runs(name, testcase=None):
    from dpfm.sim.runner import run_cocotb
    config, task = CONFIGS[name]
    text, fsm = engine_design(name, config)
    env = {CONFIG_ENV: json.dumps(config.to_dict()), FSM_ENV: json.dumps(fsm),
           "DPFM_ENGINE_TASK": task}
    t0 = time.monotonic()
    result = run_cocotb(source_text=text, toplevel="dpfm_engine", test_module="dpfm.sim.run_tests",
                        name=f"engine-{name}", extra_env=env, testcase=testcase, seed=1)
    print(f"{name}: {result.tests} cocotb tests in {time.monotonic() - t0:.1f} s ({result.build_dir})")
    return result


@pytest.mark.sim
@pytest.mark.parametrize("name", list(CONFIGS))
def test_run_mode_on_verilator(name):
    assert run_runs(name).passed
