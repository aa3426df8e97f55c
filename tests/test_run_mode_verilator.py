"""Run mode on the compiled Verilator model (the harness's C++ memory behind the engine's AXI4
master, with latency, backpressure and long stalls): whole runs through ``Trainer.fit`` equal
per-step training and the fixed-point reference bit for bit, bus accesses stay per run, and a
memory error ends the run with its code and the last whole epoch's weights.

The model is the k=4 engine that tests/test_host_verilator.py builds (one build, cached).
"""

from __future__ import annotations

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.host import RunFailed, Trainer
from dpfm.reference import MLP
from dpfm.rtl.protocol import (RUN_WORD, pack_run, run_layout, run_setting_words,
                               run_status_fields, snapshot, word)
from dpfm.rtl.regmap import RunError

pytestmark = pytest.mark.sim

CFG = Config(k=4)


@pytest.fixture(scope="module")
def transport():
    from dpfm.host.verilator import VerilatorTransport
    with VerilatorTransport(CFG) as t:
        t.memory_config(latency=24, stall_pct=25, long_stall_ppm=300, long_stall_cycles=150, seed=5)
        yield t


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (64, 4))
    y = X.sum(axis=1, keepdims=True) / 2
    return X[:43], y[:43], X[43:], y[43:]          # 4 full batches and one of 3; 21 to validate


def _fit(t, data, mode, epochs=3, update="maxnorm", lr=0.05, **kw):
    Xt, yt, Xv, yv = data
    tr = Trainer(CFG, t)
    tr.load_weights(MLP(CFG.net, CFG.activations, seed=1))
    a0 = t.bus_accesses
    hist = tr.fit(Xt, yt, epochs=epochs, lr=lr, update=update, validation=(Xv, yv), seed=4,
                  mode=mode, **kw)
    return tr, hist, t.bus_accesses - a0


@pytest.mark.parametrize("update,lr", [("maxnorm", 0.05), ("sgd", 0.5)])
def test_run_mode_equals_per_step_and_the_reference(transport, data, update, lr):
    run_tr, run_hist, run_acc = _fit(transport, data, "run", update=update, lr=lr)
    step_tr, step_hist, step_acc = _fit(transport, data, "step", update=update, lr=lr)
    assert np.array_equal(run_tr.weights_raw(), step_tr.weights_raw())
    assert run_hist.train_loss == step_hist.train_loss and run_hist.val_loss == step_hist.val_loss
    assert run_hist.saturations == step_hist.saturations and run_hist.steps == step_hist.steps
    assert run_tr.cycle_stats.to_dict() == step_tr.cycle_stats.to_dict()
    Xt, yt, Xv, yv = data
    ref = MLP(CFG.net, CFG.activations, seed=1)
    ref_hist = ref.fit(Xt, yt, k=CFG.k, epochs=3, batch=CFG.batch, lr=lr, update=update,
                       validation=(Xv, yv), fmt=CFG.formats, policy="stream", seed=4)
    assert np.array_equal(run_tr.weights(), ref.params)
    assert run_hist.train_loss == ref_hist.train_loss
    # the run's accesses: the settings, CTRL.run and a few RUN_STATUS polls, not per step
    assert run_acc < 40 < step_acc


def test_memory_error_ends_the_run_with_its_code(transport, data):
    """The log area moved past the end of the buffer: the first epoch's log write answers
    DECERR, the run ends with error 19, RUN_ERR_ADDR names the burst, no epoch counts."""
    Xt, yt, Xv, yv = data
    fmt = CFG.formats.value
    Xq, yq, Xvq, yvq = (fmt.quantize(a)[0] for a in (Xt, yt, Xv, yv))
    layout = run_layout(CFG, len(Xq), len(Xvq), 2)
    buf = transport.allocate(layout.nwords)
    pack_run(layout, buf.words, Xq, yq, Xvq, yvq,
             [np.random.default_rng(0).permutation(len(Xq)) for _ in range(2)])
    m = transport.regmap
    outside = buf.address + layout.nbytes + 4096
    for name, value in run_setting_words(CFG, layout, buf.address, "maxnorm", 0.05):
        transport.write(m[name].offset, word(outside if name == "RUN_LOG_ADDR" else value))
    transport.write(m["CTRL"].offset, RUN_WORD)
    for _ in range(200):
        st = run_status_fields(transport.poll_run(0.05))
        if not st["running"]:
            break
    assert st["error"] == RunError.MEM_DECERR and st["epochs"] == 0 and not st["done"], st
    assert transport.read(m["RUN_ERR_ADDR"].offset) == outside
    # the snapshot of epoch 0 went out before the log entry: whole in the buffer
    assert np.any(snapshot(buf.words, layout, 0) != 0)


def test_trainer_reports_a_memory_error_in_one_line(transport, data, monkeypatch):
    """Through Trainer.fit: RunFailed names the code; the engine holds the weights the run
    started from (no epoch finished)."""
    from dpfm.host import trainer as trainer_module
    real = trainer_module.run_setting_words

    def broken(config, layout, base, *a, **kw):
        return [(n, base + layout.nbytes + 8192 if n == "RUN_SNAP_ADDR" else v)
                for n, v in real(config, layout, base, *a, **kw)]

    monkeypatch.setattr(trainer_module, "run_setting_words", broken)
    Xt, yt, Xv, yv = data
    tr = Trainer(CFG, transport)
    tr.load_weights(MLP(CFG.net, CFG.activations, seed=1))
    before = tr.weights_raw()
    with pytest.raises(RunFailed) as e:
        tr.fit(Xt, yt, epochs=2, lr=0.05, validation=(Xv, yv), mode="run")
    assert e.value.code == RunError.MEM_DECERR and "DECERR" in str(e.value)
    assert "\n" not in str(e.value)
    assert np.array_equal(tr.weights_raw(), before)


@pytest.mark.parametrize("text,err", [("latency=5,stall_pct=x", "stall_pct=x"), ("speed=3", "speed=3"),
                                      ("latency", "latency")])
def test_memory_setting_from_the_environment_is_checked(text, err):
    from dpfm.host.verilator import parse_memory_setting
    with pytest.raises(ValueError, match=err):
        parse_memory_setting(text)
    assert parse_memory_setting("latency=24, stall_pct=20,seed=7") == \
        {"latency": 24, "stall_pct": 20, "seed": 7}


def test_slverr_from_memory_ends_the_run_with_its_code(transport, data):
    """The batch order of epoch 1 lies in a window the memory refuses (SLVERR): epoch 0
    finishes whole, the run ends with error 18 and the address of the refused beat."""
    Xt, yt, Xv, yv = data
    fmt = CFG.formats.value
    Xq, yq, Xvq, yvq = (fmt.quantize(a)[0] for a in (Xt, yt, Xv, yv))
    layout = run_layout(CFG, len(Xq), len(Xvq), 3)
    buf = transport.allocate(layout.nwords)
    rng = np.random.default_rng(0)
    pack_run(layout, buf.words, Xq, yq, Xvq, yvq, [rng.permutation(len(Xq)) for _ in range(3)])
    bad = buf.address + 4 * layout.perm_slot(1, 0)
    transport.memory_slverr(bad, bad + 4 * layout.perm_stride * layout.steps)
    m = transport.regmap
    try:
        for name, value in run_setting_words(CFG, layout, buf.address, "maxnorm", 0.05):
            transport.write(m[name].offset, word(value))
        transport.write(m["CTRL"].offset, RUN_WORD)
        for _ in range(400):
            st = run_status_fields(transport.poll_run(0.05))
            if not st["running"]:
                break
    finally:
        transport.memory_slverr()
    assert st["error"] == RunError.MEM_SLVERR and st["epochs"] == 1 and not st["done"], st
    assert transport.read(m["RUN_ERR_ADDR"].offset) == bad
