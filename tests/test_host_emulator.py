"""The host driver over the fixed-point transport: the Trainer against the reference.

The reference (``MLP.fit`` in the Config's formats with the hardware's ``stream`` policy)
decides every expected value; the register rules come from ``dpfm.rtl.regmap``.
"""

import json
import os

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.host import (BusError, CheckpointError, EmulatorTransport, HardwareMismatch, StepRefused,
                       Trainer, load_checkpoint, save_checkpoint)
from dpfm.host.checkpoint import state_to_dict
from dpfm import runs
from dpfm.backends import HostBackend, hw_config
from dpfm.reference import MLP, FixedFormat, Formats, weights_sha256
from dpfm.rtl.regmap import CTRL, ERRORS, FLAGS, ID_MAGIC, STATUS, STATUS_ERROR_SHIFT, UPDATE, StartError

CFG = Config(k=4)


def reference_fit(config, data, epochs, lr, update, seed=0, classify=False):
    Xt, yt, Xv, yv = data
    net = MLP(config.net, config.activations, seed=seed)
    hist = net.fit(Xt, yt, k=config.k, epochs=epochs, batch=config.batch, lr=lr, update=update,
                   validation=(Xv, yv), fmt=config.formats, policy="stream", seed=seed,
                   classify=classify)
    return net, hist


def host_fit(config, data, epochs, lr, update, seed=0, transport=None, **kw):
    Xt, yt, Xv, yv = data
    trainer = Trainer(config, transport or EmulatorTransport(config))
    trainer.load_weights(MLP(config.net, config.activations, seed=seed))
    hist = trainer.fit(Xt, yt, epochs=epochs, lr=lr, update=update, validation=(Xv, yv),
                       seed=seed, **kw)
    return trainer, hist


@pytest.mark.parametrize("update, lr", [("maxnorm", 0.01), ("sgd", 0.05)])
def test_fixed_transport_trains_like_the_reference(sum4, update, lr):
    net, ref = reference_fit(CFG, sum4, 3, lr, update)
    # busy_reads: STATUS reads busy twice after each start, so the polling loop runs.
    trainer, hist = host_fit(CFG, sum4, 3, lr, update, transport=EmulatorTransport(CFG, busy_reads=2))
    assert hist.train_loss == ref.train_loss
    assert hist.val_loss == ref.val_loss
    assert hist.steps == ref.steps == 3 * 16
    assert weights_sha256(trainer.weights()) == weights_sha256(net.params)
    assert trainer.cycle_stats.steps == hist.steps


def test_evaluate_equals_reference_loss_and_accuracy():
    rng = np.random.default_rng(3)
    cfg = Config(net=(6, 4, 3), activations=("sigmoid", "sigmoid"), k=4, batch=4)
    X = rng.uniform(0, 1, (23, 6))                      # 23: the last batch is partial
    y = np.eye(3)[rng.integers(0, 3, 23)]
    net = MLP(cfg.net, cfg.activations, seed=5)
    trainer = Trainer(cfg, EmulatorTransport(cfg))
    trainer.load_weights(net)
    loss, acc = trainer.evaluate(X, y, classify=True)
    assert loss == net.loss(X, y, cfg.formats)
    assert acc == net.accuracy(X, y, cfg.formats)
    assert trainer.evaluate(X, y) == loss


def test_step_reports_the_reference_step():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 1, (7, 4))
    y = X.sum(axis=1, keepdims=True)
    net = MLP(CFG.net, CFG.activations, seed=2)
    trainer = Trainer(CFG, EmulatorTransport(CFG))
    trainer.load_weights(net)
    fmt = CFG.formats
    st = net.step_raw(fmt.value.quantize(X)[0], fmt.value.quantize(y)[0],
                      fmt.weight.quantize(net.params)[0], CFG.k, 0.02, "maxnorm", fmt, "stream")
    r = trainer.step(X, y, 0.02, "maxnorm")
    assert r.n == 7 and r.loss == st.loss
    assert r.loss_raw == int(np.sum(st.error.astype(object) ** 2))
    assert np.array_equal(trainer.weights_raw(), st.params)


def test_saturation_flags_are_counted_and_cleared():
    # Inputs of 127 drive pre-activations beyond the 16.8 value format's +-128: they saturate.
    cfg = Config(k=4, formats=Formats.uniform(FixedFormat(16, 8)))
    t = EmulatorTransport(cfg)
    trainer = Trainer(cfg, t)
    trainer.load_weights(MLP(cfg.net, cfg.activations, seed=0))
    X = np.full((10, 4), 127.0)
    y = np.zeros((10, 1))
    r = trainer.step(X, y, 0.01, "maxnorm")
    assert r.flags >> FLAGS["sat_value"] & 1
    assert trainer.saturations["value"] == 1
    assert t.read(t.regmap["FLAGS"].offset) == 0       # the trainer cleared them


def test_identity_registers():
    t = EmulatorTransport(CFG)
    m = t.regmap
    assert t.read(m["ID"].offset) == ID_MAGIC
    assert t.read(m["CONFIG_HASH"].offset) == CFG.hash
    assert t.read(m["K"].offset) == CFG.k
    assert t.read(m["N_PARAMS"].offset) == CFG.n_params
    assert t.read(m["BATCH"].offset) == CFG.batch


def test_wrong_config_hash_is_refused_naming_both():
    wrong = 0x12345678
    with pytest.raises(HardwareMismatch) as e:
        Trainer(CFG, EmulatorTransport(CFG, report_hash=wrong))
    assert f"0x{wrong:08x}" in str(e.value) and f"0x{CFG.hash:08x}" in str(e.value)


def test_a_transport_for_another_config_is_refused():
    with pytest.raises(HardwareMismatch):
        Trainer(CFG, EmulatorTransport(Config(k=8)))


def test_bad_writes_answer_slverr_and_change_nothing():
    t = EmulatorTransport(CFG, busy_reads=3)
    m = t.regmap
    flags = m["FLAGS"].offset
    for name in ("ID", "CONFIG_HASH", "STATUS", "FLAGS", "CYCLES", "LOSS_LO", "K"):
        before = t.read(m[name].offset)
        with pytest.raises(BusError) as e:
            t.write(m[name].offset, 0xDEAD)
        assert e.value.write and e.value.resp == 2
        if name != "FLAGS":
            assert t.read(m[name].offset) == before
    assert t.read(flags) >> FLAGS["bus_error"] & 1
    t.write(m["CTRL"].offset, 1 << CTRL["clear_flags"])
    assert t.read(flags) == 0
    # unmapped register space, beyond the weights, row padding of SAMPLES, the OUTPUTS window
    samples = m["SAMPLES"]
    pad = samples.row_addr(0, CFG.n_in + CFG.n_out)
    for addr in (0x0FC, m["WEIGHTS"].base + 4 * CFG.n_params, pad, m["OUTPUTS"].base):
        with pytest.raises(BusError):
            t.write(addr, 1)
    with pytest.raises(BusError):
        t.read(pad)
    with pytest.raises(BusError):
        t.read(m["CTRL"].offset)                        # write-only
    # while a step runs: windows and read-write registers refuse, STATUS still answers
    w0 = m["WEIGHTS"].addr(0)
    t.write(w0, 7)
    t.write(m["BATCH_N"].offset, 1)
    t.write(m["UPDATE"].offset, UPDATE["none"])
    t.write(m["CTRL"].offset, 1 << CTRL["start"])
    assert t.read(m["STATUS"].offset) & 1 << STATUS["busy"]
    with pytest.raises(BusError):
        t.write(w0, 9)
    with pytest.raises(BusError):
        t.read(w0)
    with pytest.raises(BusError):
        t.write(m["BATCH_N"].offset, 2)
    status = t.wait_idle(ready_mask=1 << STATUS["done"])
    assert status & 1 << STATUS["done"]
    assert t.read(w0) == 7 and t.read(m["BATCH_N"].offset) == 1


def test_read_write_registers_refuse_values_they_cannot_hold():
    t = EmulatorTransport(CFG)
    m = t.regmap
    assert t.read(m["BATCH_N"].offset) == CFG.batch                 # reset values
    assert t.read(m["UPDATE"].offset) == UPDATE["maxnorm"]
    assert t.read(m["SGD_CS"].offset) == m["SGD_CS"].reset == 16
    t.write(m["SGD_CS"].offset, 127)
    assert t.read(m["SGD_CS"].offset) == 127                          # 16..127: sgd_scale's range
    for name, value in (("UPDATE", 6), ("SGD_CS", 200), ("SGD_CS", -200), ("SGD_CS", -3),
                        ("SGD_CS", 15), ("SGD_CS", 128),
                        ("BATCH_N", 1 << m["BATCH_N"].bits), ("LR_Q", 1 << m["LR_Q"].bits)):
        before = t.read(m[name].offset)
        t.write(m["CTRL"].offset, 1 << CTRL["clear_flags"])
        with pytest.raises(BusError, match=f"{name}.*SLVERR"):
            t.write(m[name].offset, value)
        assert t.read(m[name].offset) == before, f"{name} = {value} changed the register"
        assert t.read(m["FLAGS"].offset) >> FLAGS["bus_error"] & 1


def _raw_start(t, **regs):
    m = t.regmap
    for name, value in regs.items():
        t.write(m[name].offset, value)
    return t.run_step()


@pytest.mark.parametrize("regs, code", [
    ({"BATCH_N": 0}, 1),
    ({"BATCH_N": CFG.batch + 1}, 1),
    ({"BATCH_N": 1, "UPDATE": 3}, 2),
    ({"BATCH_N": 1, "UPDATE": UPDATE["maxnorm"], "LR_Q": 0}, 3),
    ({"BATCH_N": 1, "UPDATE": UPDATE["sgd"], "SGD_CQ": 0}, 5),
])
def test_inconsistent_start_is_refused_with_its_code(regs, code):
    t = EmulatorTransport(CFG)
    status = _raw_start(t, **regs)
    assert status >> STATUS_ERROR_SHIFT & 0xFF == code
    assert not status & 1 << STATUS["busy"]
    assert code in ERRORS


class StuckUpdate(EmulatorTransport):
    """An engine whose UPDATE register always receives 3 (no such rule)."""

    def write(self, addr, value):
        super().write(addr, 3 if addr == self.regmap["UPDATE"].offset else value)


def test_trainer_raises_step_refused():
    trainer = Trainer(CFG, StuckUpdate(CFG))
    with pytest.raises(StepRefused) as e:
        trainer.step(np.zeros((1, 4)), np.zeros((1, 1)), 0.01, "maxnorm")
    assert e.value.code == StartError.UPDATE and ERRORS[StartError.UPDATE] in str(e.value)


# -- checkpoints ------------------------------------------------------------------------------

def test_resume_reaches_the_uninterrupted_weights(sum4, tmp_path):
    full, hist_full = host_fit(CFG, sum4, 4, 0.01, "maxnorm")
    ckpt = tmp_path / "run.ckpt"
    saved = []

    class Stop(Exception):
        pass

    def on_epoch(state):
        save_checkpoint(ckpt, state_to_dict(state, config=CFG, run={"lr": 0.01}))
        saved.append(state.epoch)
        if state.epoch == 2:
            raise Stop                               # the run dies after its 2nd epoch

    with pytest.raises(Stop):
        host_fit(CFG, sum4, 4, 0.01, "maxnorm", on_epoch=on_epoch)
    state = load_checkpoint(ckpt, config=CFG, run={"lr": 0.01})
    assert state.epoch == 2 and saved == [1, 2]
    Xt, yt, Xv, yv = sum4
    trainer = Trainer(CFG, EmulatorTransport(CFG))      # a fresh engine: weights from the file
    hist = trainer.fit(Xt, yt, epochs=4, lr=0.01, update="maxnorm", validation=(Xv, yv),
                       seed=0, state=state)
    assert weights_sha256(trainer.weights()) == weights_sha256(full.weights())
    assert hist.train_loss == hist_full.train_loss and hist.val_loss == hist_full.val_loss
    assert hist.steps == hist_full.steps
    with pytest.raises(CheckpointError, match="lr=0.01"):
        load_checkpoint(ckpt, run={"lr": 0.02})
    with pytest.raises(CheckpointError, match="Config"):
        load_checkpoint(ckpt, config=Config(k=8))


def test_failed_checkpoint_write_keeps_the_old_one(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    good = {"format": "dpfm-checkpoint-1", "epoch": 1}
    save_checkpoint(ckpt, good)
    before = ckpt.read_bytes()

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, {**good, "epoch": 2, "weights_raw": list(range(1000))})
    monkeypatch.undo()
    with pytest.raises(TypeError):                  # unserialisable: fails mid-dump
        save_checkpoint(ckpt, {**good, "epoch": 3, "bad": object()})
    assert ckpt.read_bytes() == before
    assert json.loads(before)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.ckpt"]   # no temporary left


# -- the host backend over the emulator ------------------------------------------------------

def emulated_run(args) -> dict:
    """``runs.run`` on a :class:`HostBackend` over the emulator (``save``/``resume`` honoured)."""
    return runs.run(dict(args), backend=HostBackend("emulator"))


def test_host_backend_emulator_json(tmp_path):
    args = {"task": "sum4", "k": 4, "epochs": 2, "batch": 10, "lr": 0.01, "update": "maxnorm",
            "seed": 0, "corpus": 100}
    r = emulated_run(args)
    for key in ("backend", "task", "net", "k", "epochs", "batch", "update", "final_train_loss",
                "final_val_loss", "history", "weights_sha256", "saturations", "wall_s",
                "cycles_per_step", "hw_config"):
        assert key in r, key
    assert r["backend"] == "emulator" and r["policy"] == "stream"
    assert r["hw_config"]["hash"] == Config(k=4).hash
    assert r["cycles_per_step"] is None                # the emulator counts no cycles
    json.dumps(r, allow_nan=False)
    # equal to the reference in fixed point with the hardware's policy
    ref = runs.run({**args, "backend": "fixed", "policy": "stream"})
    assert r["weights_sha256"] == ref["weights_sha256"]
    assert r["history"] == ref["history"]


def test_host_backend_resume(tmp_path):
    args = {"task": "sum4", "k": 4, "epochs": 3, "batch": 10, "lr": 0.01, "update": "maxnorm",
            "seed": 1, "corpus": 60}
    full = emulated_run(args)
    ckpt = tmp_path / "c.json"
    part = emulated_run({**args, "epochs": 1, "save": str(ckpt)})
    assert part["history"] == full["history"][:1]
    with pytest.raises(CheckpointError, match="seed"):
        emulated_run({**args, "resume": str(ckpt), "seed": 2})
    rest = emulated_run({**args, "resume": str(ckpt)})
    assert rest["resumed_from_epoch"] == 1
    assert rest["weights_sha256"] == full["weights_sha256"]
    assert rest["history"] == full["history"]


def test_hw_config_from_spec():
    spec = {"net": [64, 16, 10], "activations": ["sigmoid", "sigmoid"], "k": "full", "batch": 10,
            "fixed": None}
    cfg = hw_config(spec)
    assert cfg.k == cfg.n_params and cfg.policy == "stream"
    backend = HostBackend("emulator")
    backend.check({**spec, "k": 16, "policy": "stream"})
    with pytest.raises(ValueError, match="'stream' order only"):     # never run silently
        backend.check({**spec, "k": 16, "policy": "exact"})


@pytest.mark.parametrize("mode", ["run", "step"])
def test_sigint_keeps_the_last_checkpoint_and_resume_finishes_the_run(tmp_path, mode):
    import signal
    import subprocess
    import sys
    import time

    # far more epochs than can finish before the interrupt, however fast the machine
    args = {"task": "sum4", "k": 4, "epochs": 100_000, "batch": 10, "lr": 0.01, "update": "maxnorm",
            "seed": 3, "corpus": 60}
    ckpt = tmp_path / "run.ckpt"
    code = ("import sys, json; from dpfm import runs; from dpfm.backends import HostBackend; "
            "runs.run({**json.loads(sys.argv[1]), 'save': sys.argv[2]}, "
            "backend=HostBackend('emulator', mode=sys.argv[3]))")
    # A shell's background job starts with SIGINT ignored, and Python keeps an inherited
    # SIG_IGN: give the child the default disposition so it raises KeyboardInterrupt.
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args), str(ckpt), mode],
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)                              # a few more epochs, then interrupt
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    state = load_checkpoint(ckpt)                    # whole, readable: the last epoch written
    assert 1 <= state.epoch < args["epochs"]
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
    # resume to a nearby end; equal to the same run uninterrupted
    end = {**args, "epochs": state.epoch + 2}
    rest = emulated_run({**end, "resume": str(ckpt)})
    full = emulated_run(end)
    assert rest["weights_sha256"] == full["weights_sha256"]
    assert rest["history"] == full["history"]
