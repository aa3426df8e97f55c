"""Run mode over the emulator: the engine trains whole runs from one buffer, the host polls.

The reference decides every expected value: run mode must give what per-step training and
``--backend fixed`` give (weights, History, saturations, cycle statistics), and the error
codes of docs/engine.md "Run mode" must reach the host as one-line errors with the weights
of the last whole epoch in the engine.
"""

import json

import numpy as np
import pytest

from dpfm import cli, runs
from dpfm.backends import HostBackend
from dpfm.config import Config
from dpfm.host import (BusError, EmulatorTransport, RunFailed, StepRefused, Trainer,
                       TransportError, TransportUnavailable, load_checkpoint, save_checkpoint)
from dpfm.host import trainer as trainer_module
from dpfm.host.checkpoint import state_to_dict
from dpfm.host.trainer import MAX_RUN_EPOCHS, run_plan
from dpfm.reference import MLP, FixedFormat, Formats
from dpfm.rtl.protocol import (RUN_WORD, STOP_WORD, parse_log, run_layout, run_setting_words,
                               run_status_fields, word)
from dpfm.rtl.regmap import CTRL, FLAGS, RUN_ERRORS, STATUS, RunError, StartError

CFG = Config(k=4)


def fit(data, mode, *, config=CFG, epochs=3, lr=0.01, update="maxnorm", transport=None,
        states=None, seed=0, on_epoch=None, **kw):
    """``Trainer.fit`` on a fresh emulator from the seed's weights; returns
    ``(trainer, history)``; ``states`` collects the FitStates (before ``on_epoch`` sees them)."""
    Xt, yt, Xv, yv = data
    t = transport or EmulatorTransport(config)
    trainer = Trainer(config, t)
    trainer.load_weights(MLP(config.net, config.activations, seed=seed))

    def record(state):
        if states is not None:
            states.append(state)
        if on_epoch is not None:
            on_epoch(state)

    hist = trainer.fit(Xt, yt, epochs=epochs, lr=lr, update=update, validation=(Xv, yv),
                       seed=seed, mode=mode, on_epoch=record, **kw)
    return trainer, hist


def step_weights(data, epochs, **kw):
    """The engine's weights after ``epochs`` epochs of per-step training."""
    trainer, _ = fit(data, "step", epochs=epochs, **kw)
    return trainer.weights_raw()


def emulated(args, mode):
    return runs.run(dict(args), backend=HostBackend("emulator", mode=mode))


# -- the same results -----------------------------------------------------------------------

def _npz(tmp_path):
    rng = np.random.default_rng(7)
    X = rng.uniform(-1, 1, (90, 3))
    labels = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    y = np.eye(2)[labels]
    path = tmp_path / "two.npz"
    np.savez(path, X_train=X[:72], y_train=y[:72], X_val=X[72:], y_val=y[72:])
    return str(path)


CASES = {
    "sum4-k4": {"task": "sum4", "k": 4, "epochs": 3, "corpus": 120},
    "sum4-k16": {"task": "sum4", "k": 16, "epochs": 3, "corpus": 120},
    # 76 training rows: 7 batches of 10 and a last one of 6 (SGD_CQ_LAST / SGD_CS_LAST)
    "sum4-sgd-last-batch": {"task": "sum4", "k": 4, "epochs": 3, "corpus": 95, "update": "sgd",
                            "lr": 0.05},
    "digits-classify": {"task": "digits", "k": 16, "epochs": 2, "corpus": 150},
    "data-file": {"data": "FILE", "k": 8, "epochs": 3},
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_mode_equals_step_mode_and_fixed(case, tmp_path):
    args = {"batch": 10, "seed": 0, **CASES[case]}
    if args.get("data") == "FILE":
        args["data"] = _npz(tmp_path)
    run = emulated(args, "run")
    step = emulated(args, "step")
    ref = runs.run({**args, "backend": "fixed", "policy": "stream"})
    assert run["transport"]["mode"] == "run" and step["transport"]["mode"] == "step"
    assert run["weights_sha256"] == step["weights_sha256"] == ref["weights_sha256"]
    assert run["history"] == step["history"] == ref["history"]
    assert run["saturations"] == step["saturations"] == ref["saturations"]
    assert run["steps"] == step["steps"] == ref["steps"]
    if case.startswith(("digits", "data")):
        assert "val_accuracy" in run["history"][0]
        assert run["accuracy"] == ref["accuracy"]
    # the host is out of the step loop: a handful of accesses per epoch
    per_epoch = run["transport"]["bus_accesses"]["per_epoch"]
    assert per_epoch <= 20
    assert step["transport"]["bus_accesses"]["per_epoch"] > 20 * per_epoch


def test_every_fit_state_and_statistic_equals_per_step_training(sum4):
    run_states, step_states = [], []
    tr_run, h_run = fit(sum4, "run", epochs=4, states=run_states)
    tr_step, h_step = fit(sum4, "step", epochs=4, states=step_states)
    assert h_run == h_step
    assert tr_run.cycle_stats == tr_step.cycle_stats
    assert tr_run.cycle_stats.steps == 4 * 16
    assert tr_run.saturations == tr_step.saturations
    assert [s.epoch for s in run_states] == [1, 2, 3, 4]
    for a, b in zip(run_states, step_states, strict=True):
        assert (a.epoch, a.weights_raw, a.rng_state) == (b.epoch, b.weights_raw, b.rng_state)
        assert a.cycles == b.cycles
    assert np.array_equal(tr_run.weights_raw(), tr_step.weights_raw())


def test_saturations_are_counted_per_step_as_the_step_protocol_counts_them():
    # Inputs near 127 drive pre-activations beyond the 16.8 value format's +-128.
    cfg = Config(k=4, formats=Formats.uniform(FixedFormat(16, 8)))
    rng = np.random.default_rng(2)
    X = rng.uniform(0, 1, (50, 4))
    X[[3, 17]] = 127.0                      # two rows saturate: some batches do, some do not
    y = rng.uniform(-1, 1, (50, 1))
    data = (X[:40], y[:40], X[40:], y[40:])
    tr_run, h_run = fit(data, "run", config=cfg, epochs=3)
    tr_step, h_step = fit(data, "step", config=cfg, epochs=3)
    assert 0 < tr_run.saturations["value"] < h_run.steps
    assert tr_run.saturations == tr_step.saturations
    assert h_run == h_step
    assert np.array_equal(tr_run.weights_raw(), tr_step.weights_raw())
    # the sequencer cleared the saturation flags after every step
    t = tr_run.transport
    assert t.read(t.regmap["FLAGS"].offset) == 0


def test_bus_accesses_per_epoch_do_not_depend_on_the_steps_per_epoch():
    counts = {}
    for corpus in (40, 400):            # 4 and 32 training steps per epoch
        args = {"task": "sum4", "k": 4, "epochs": 5, "batch": 10, "seed": 0, "corpus": corpus}
        r = emulated(args, "run")
        counts[corpus] = r["transport"]["bus_accesses"]["fit"]
        assert r["transport"]["bus_accesses"]["per_epoch"] <= 20
    assert counts[40] == counts[400]
    # setup (the run registers and CTRL.run) plus one RUN_STATUS read per epoch
    assert counts[40] <= 20 + 5


def test_a_fit_longer_than_one_buffer_runs_as_several_runs(sum4, monkeypatch):
    Xt, _, Xv, _ = sum4
    two = run_layout(CFG, len(Xt), len(Xv), 2).nbytes
    monkeypatch.setattr(trainer_module, "RUN_BUFFER_BUDGET", two)
    per_run = run_plan(CFG, len(Xt), len(Xv), 5)
    assert 2 <= per_run < 5
    assert run_layout(CFG, len(Xt), len(Xv), per_run + 1).nbytes > two
    t = EmulatorTransport(CFG)
    tr_run, h_run = fit(sum4, "run", epochs=5, transport=t)
    _, h_step = fit(sum4, "step", epochs=5)
    assert h_run == h_step
    assert np.array_equal(tr_run.weights_raw(), step_weights(sum4, 5))
    assert run_plan(CFG, 10, 0, 10 * MAX_RUN_EPOCHS) <= MAX_RUN_EPOCHS


# -- stop, checkpoint, resume -------------------------------------------------------------------

def test_interrupt_stops_at_an_epoch_boundary_and_resume_is_bit_exact(sum4, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    saved = []

    def on_epoch(state):
        save_checkpoint(ckpt, state_to_dict(state, config=CFG, run={"lr": 0.01}))
        saved.append(state.epoch)
        if state.epoch == 2:
            raise KeyboardInterrupt             # Ctrl-C while the engine runs

    t = EmulatorTransport(CFG)
    trainer = Trainer(CFG, t)
    trainer.load_weights(MLP(CFG.net, CFG.activations, seed=0))
    Xt, yt, Xv, yv = sum4
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(Xt, yt, epochs=6, lr=0.01, validation=(Xv, yv), mode="run", on_epoch=on_epoch)
    assert run_status_fields(t.read(t.regmap["RUN_STATUS"].offset))["stopped"]
    state = load_checkpoint(ckpt, config=CFG, run={"lr": 0.01})
    assert saved == [1, 2] and state.epoch == 2
    # the engine holds the checkpoint's weights and answers the host again
    assert trainer.weights_raw().tolist() == state.weights_raw
    assert state.weights_raw == step_weights(sum4, 2).tolist()
    for mode in ("run", "step"):
        fresh = Trainer(CFG, EmulatorTransport(CFG))
        hist = fresh.fit(Xt, yt, epochs=6, lr=0.01, validation=(Xv, yv), mode=mode,
                         state=load_checkpoint(ckpt))
        full_trainer, full = fit(sum4, "step", epochs=6)
        assert hist == full, mode
        assert np.array_equal(fresh.weights_raw(), full_trainer.weights_raw()), mode
        assert fresh.cycle_stats == full_trainer.cycle_stats


class InterruptedMidEpoch(EmulatorTransport):
    """KeyboardInterrupt inside ``poll_run`` while the model computes an epoch's 5th step."""

    def __init__(self, config, at_step):
        super().__init__(config)
        self.calls, self.at_step = 0, at_step

    def _step(self, *args):
        self.calls += 1
        if self.calls == self.at_step:
            raise KeyboardInterrupt
        return super()._step(*args)


def test_interrupt_inside_an_epoch_finishes_that_epoch(sum4):
    # 16 steps + 20 passes per epoch: step call 2 * 36 + 5 is in the third epoch
    t = InterruptedMidEpoch(CFG, 2 * 36 + 5)
    states = []
    with pytest.raises(KeyboardInterrupt):
        fit(sum4, "run", epochs=10, transport=t, states=states)
    assert [s.epoch for s in states] == [1, 2, 3]
    assert states[-1].weights_raw == step_weights(sum4, 3).tolist()
    status = run_status_fields(t.read(t.regmap["RUN_STATUS"].offset))
    assert status["stopped"] and status["epochs"] == 3


def test_stop_between_epochs_at_the_register_level(sum4):
    t, layout, buf = _started_run(sum4, epochs=5)
    ctrl = t.regmap["CTRL"].offset
    assert run_status_fields(t.poll_run())["epochs"] == 1
    t.write(ctrl, STOP_WORD)
    f = run_status_fields(t.poll_run())
    assert f == {"running": False, "done": False, "stopped": True, "error": 0, "epochs": 1}
    assert parse_log(buf.words, layout, 0).steps == layout.steps


# -- errors ----------------------------------------------------------------------------------

class ShiftedRegister(EmulatorTransport):
    """An engine that receives ``shift`` added to every write of register ``name``."""

    def __init__(self, config, name, shift):
        super().__init__(config)
        self.target, self.shift = self.regmap[name].offset, shift

    def write(self, addr, value):
        super().write(addr, value + self.shift if addr == self.target else value)


def _expect_run_failed(data, transport, code, epochs, **kw):
    states = []
    with pytest.raises(RunFailed) as e:
        fit(data, "run", epochs=4, transport=transport, states=states, **kw)
    err = e.value
    assert err.code == code and err.epochs == epochs
    assert RUN_ERRORS[RunError(code)] in str(err) and "\n" not in str(err)
    assert [s.epoch for s in states] == list(range(1, epochs + 1))   # the finished ones reported
    return err


def test_area_outside_the_buffer_answers_decerr(sum4):
    Xt, _, Xv, _ = sum4
    layout = run_layout(CFG, len(Xt), len(Xv), 4)
    # the engine's snapshot area moved to the first page past the buffer
    t = ShiftedRegister(CFG, "RUN_SNAP_ADDR", layout.nbytes - layout.snap)
    err = _expect_run_failed(sum4, t, RunError.MEM_DECERR, 0)
    assert err.addr == t.base_address + layout.nbytes and f"0x{err.addr:08x}" in str(err)
    # the engine holds the weights the run started from
    assert np.array_equal(Trainer(CFG, t).weights_raw(), step_weights(sum4, 0))


def test_memory_ending_inside_the_run_answers_decerr_after_whole_epochs(sum4):
    Xt, _, Xv, _ = sum4
    layout = run_layout(CFG, len(Xt), len(Xv), 4)
    base = EmulatorTransport(CFG).base_address
    end = base + layout.snap + 4 * 2 * layout.snap_words        # snapshot 2 cannot be written
    t = EmulatorTransport(CFG, memory_end=end)
    err = _expect_run_failed(sum4, t, RunError.MEM_DECERR, 2)
    assert err.addr == end
    # the engine holds the weights of the last whole epoch
    assert np.array_equal(Trainer(CFG, t).weights_raw(), step_weights(sum4, 2))


def test_misaligned_area_is_refused(sum4):
    t = ShiftedRegister(CFG, "RUN_VAL_ADDR", 4)
    _expect_run_failed(sum4, t, RunError.MISALIGNED, 0)
    assert np.array_equal(Trainer(CFG, t).weights_raw(), step_weights(sum4, 0))


class BadIndex(EmulatorTransport):
    """Writes a perm entry of ``n_train`` into epoch 1 when the run starts."""

    def write(self, addr, value):
        if addr == self.regmap["CTRL"].offset and value & RUN_WORD:
            buf = self._regions[-1]
            perm = (self._rw["RUN_PERM_ADDR"] - buf.address) // 4
            layout = run_layout(self.config, self._rw["RUN_TRAIN_N"], self._rw["RUN_VAL_N"],
                                self._rw["RUN_EPOCHS"])
            buf.words[perm + layout.steps * layout.perm_stride + 3] = layout.n_train
        super().write(addr, value)


def test_bad_batch_order_entry_is_refused(sum4):
    t = BadIndex(CFG)
    _expect_run_failed(sum4, t, RunError.BAD_INDEX, 1)
    assert np.array_equal(Trainer(CFG, t).weights_raw(), step_weights(sum4, 1))


class ForcedRegister(EmulatorTransport):
    """An engine whose register ``name`` receives ``value`` whatever is written."""

    def __init__(self, config, name, value):
        super().__init__(config)
        self.target, self.value = self.regmap[name].offset, value

    def write(self, addr, value):
        super().write(addr, self.value if addr == self.target else value)


@pytest.mark.parametrize("name, value, code", [("LR_Q", 0, RunError.LR_ZERO),
                                               ("UPDATE", 3, RunError.UPDATE)])
def test_refused_step_ends_the_run_with_its_start_error(sum4, name, value, code):
    t = ForcedRegister(CFG, name, value)
    _expect_run_failed(sum4, t, code, 0)
    assert int(code) == int(StartError[code.name])
    with pytest.raises(StepRefused) as e:            # as per-step training is refused
        fit(sum4, "step", transport=ForcedRegister(CFG, name, value))
    assert e.value.code == code


def test_last_smaller_batch_with_a_zero_sgd_scale_is_refused_after_the_full_ones(sum4):
    Xt, yt, Xv, yv = sum4
    data = (Xt[:95], yt[:95], Xv, yv)               # 9 full batches, then 5 rows
    t = ForcedRegister(CFG, "SGD_CQ_LAST", 0)
    _expect_run_failed(data, t, RunError.SGD_SCALE_ZERO, 0, update="sgd", lr=0.05)


def test_run_or_step_while_running_is_refused_and_the_run_goes_on(sum4):
    t, layout, buf = _started_run(sum4)
    m = t.regmap
    t.poll_run()
    for ctrl in (RUN_WORD, 1 << CTRL["start"]):
        with pytest.raises(BusError):
            t.write(m["CTRL"].offset, ctrl)
    statuses = [run_status_fields(t.poll_run()) for _ in range(2)]
    assert statuses[-1]["done"] and statuses[-1]["epochs"] == 3 and statuses[-1]["error"] == 0


def test_run_while_a_step_is_busy_is_refused():
    t = EmulatorTransport(CFG, busy_reads=3)
    m = t.regmap
    t.write(m["BATCH_N"].offset, 1)
    t.write(m["UPDATE"].offset, 2)                       # forward only: the step starts
    t.write(m["CTRL"].offset, 1 << CTRL["start"])
    assert t.read(m["STATUS"].offset) & 1 << STATUS["busy"]
    t.write(m["CTRL"].offset, RUN_WORD)
    f = run_status_fields(t.read(m["RUN_STATUS"].offset))
    assert f["error"] == RunError.BUSY and not f["running"]


def _sum4_rows(n):
    from dpfm.tasks import load_task
    task = load_task("sum4", corpus=2 * n)
    return task.X_train[:n], task.y_train[:n], task.X_val[:10], task.y_val[:10]


def _started_run(data, epochs=3, transport=None, hold=False):
    """A run started by hand over ``data`` (register level); ``(transport, layout, buffer)``."""
    from dpfm.rtl.protocol import pack_run

    Xt, yt, Xv, yv = data
    t = transport or EmulatorTransport(CFG)
    fmt = CFG.formats.value
    Xq, yq, Xvq, yvq = (fmt.quantize(a)[0] for a in (Xt, yt, Xv, yv))
    layout = run_layout(CFG, len(Xq), len(Xvq), epochs)
    buf = t.allocate(layout.nwords)
    rng = np.random.default_rng(0)
    pack_run(layout, buf.words, Xq, yq, Xvq, yvq, [rng.permutation(len(Xq)) for _ in range(epochs)])
    m = t.regmap
    for name, value in run_setting_words(CFG, layout, buf.address, "maxnorm", 0.01):
        t.write(m[name].offset, word(value))
    if not hold:
        t.write(m["CTRL"].offset, RUN_WORD)
    return t, layout, buf


def test_while_running_writes_and_windows_are_refused_and_start_is_busy(sum4):
    t, layout, buf = _started_run(sum4)
    m = t.regmap
    assert run_status_fields(t.read(m["RUN_STATUS"].offset))["running"]
    for addr, write in ((m["LR_Q"].offset, True), (m["WEIGHTS"].addr(0), True),
                        (m["WEIGHTS"].addr(0), False), (m["OUTPUTS"].base, False)):
        with pytest.raises(BusError):
            t.write(addr, 1) if write else t.read(addr)
    assert t.read(m["FLAGS"].offset) >> FLAGS["bus_error"] & 1
    with pytest.raises(BusError):
        t.write(m["CTRL"].offset, 1 << CTRL["start"])
    statuses = [run_status_fields(t.poll_run()) for _ in range(3)]
    assert [s["epochs"] for s in statuses] == [1, 2, 3] and statuses[-1]["done"]
    # the refused accesses of the run show in the log (FLAGS.bus_error is left to the host)
    assert parse_log(buf.words, layout, 0).flags >> FLAGS["bus_error"] & 1
    assert t.read(m["RUN_CYCLES_LO"].offset) == 0       # the emulator counts no cycles
    t.write(m["LR_Q"].offset, 1)                          # accepted again after the run


def test_access_past_the_32_bit_end_ends_the_run():
    """The training rows moved to the top of the address space: the first step's first row
    (index 399 put first in the batch order) lies past 4 GiB, so the engine never issues it."""
    t = EmulatorTransport(CFG)
    m = t.regmap
    data = _sum4_rows(400)
    t, layout, buf = _started_run(data, transport=t, hold=True)
    slot = layout.perm_slot(0, 0)
    rest = [i for i in range(400) if i != 399]
    buf.words[slot:slot + CFG.batch] = [399] + rest[:CFG.batch - 1]
    t.write(m["RUN_TRAIN_ADDR"].offset, 0xFFFFF000)
    t.write(m["CTRL"].offset, RUN_WORD)
    f = run_status_fields(t.poll_run())
    assert f["error"] == RunError.ADDRESS and not f["running"] and f["epochs"] == 0
    assert t.read(m["RUN_ERR_ADDR"].offset) == (0xFFFFF000 + 399 * 4 * layout.row_words) & 0xFFFFFFFF


class SilentEmulator(EmulatorTransport):
    """The board's bus: a refused access raises no exception (only FLAGS.bus_error)."""
    reports_bus_errors = False

    def write(self, addr, value):
        try:
            super().write(addr, value)
        except BusError:
            pass


def test_refused_access_during_a_run_is_reported_as_a_bus_error(sum4):
    t = SilentEmulator(CFG)
    weight0 = t.regmap["WEIGHTS"].addr(0)

    def on_epoch(state):
        if state.epoch == 1:
            t.write(weight0, 0)                 # refused: the engine runs

    with pytest.raises(BusError, match="WEIGHTS"):
        fit(sum4, "run", epochs=4, transport=t, on_epoch=on_epoch)
    trainer = Trainer(CFG, t)
    assert np.array_equal(trainer.weights_raw(), step_weights(sum4, 1))
    assert t.read(t.regmap["FLAGS"].offset) == 0


class StaleLog(EmulatorTransport):
    """A host view of the buffer that misses the engine's write of epoch 1's log entry."""

    def poll_run(self, poll_s=0.2):
        status = super().poll_run(poll_s)
        if run_status_fields(status)["epochs"] == 2:
            buf = self._regions[-1]
            log = (self._rw["RUN_LOG_ADDR"] - buf.address) // 4
            buf.words[log + 16] = 0                  # what the memory held before
        return status


def test_stale_log_entry_is_an_error_not_a_wrong_history(sum4):
    states = []
    with pytest.raises(TransportError, match="stale"):
        fit(sum4, "run", epochs=4, transport=StaleLog(CFG), states=states)
    assert [s.epoch for s in states] == [1]


# -- corpora that do not fit --------------------------------------------------------------------

def test_too_large_corpus_is_refused_before_anything_is_written(sum4):
    t = EmulatorTransport(CFG, memory_bytes=16 << 10)
    trainer = Trainer(CFG, t)
    trainer.load_weights(MLP(CFG.net, CFG.activations, seed=0))
    before = t.bus_accesses
    Xt, yt, Xv, yv = sum4
    with pytest.raises(ValueError) as e:
        trainer.fit(Xt, yt, epochs=3, validation=(Xv, yv), mode="run")
    assert isinstance(e.value, TransportUnavailable)
    assert "bytes" in str(e.value) and "\n" not in str(e.value)
    assert t.bus_accesses == before                      # nothing written, nothing read
    assert t.allocate(1024).address == t.base_address    # the failed buffer was not kept


def test_corpus_beyond_the_32_bit_address_space_is_refused():
    wide = Config(net=(1000, 1), activations=("linear",), k=4)
    with pytest.raises(ValueError, match="4 GiB"):
        run_plan(wide, 1 << 20, 0, 1)
    with pytest.raises(ValueError, match="rows"):
        run_plan(CFG, 1 << 24, 0, 1)


def test_run_mode_on_a_transport_without_it_is_refused(sum4):
    class NoRun(EmulatorTransport):
        supports_run = False

    with pytest.raises(TransportUnavailable, match="no run mode"):
        fit(sum4, "run", transport=NoRun(CFG))
    trainer, _ = fit(sum4, "auto", transport=NoRun(CFG), epochs=1)
    assert trainer.resolve_mode("auto") == "step"


# -- command line -------------------------------------------------------------------------------

def test_cli_mode_run_without_run_mode_exits_2(capsys, monkeypatch):
    from dpfm.host.verilator import VerilatorTransport

    monkeypatch.setattr(VerilatorTransport, "supports_run", False)
    assert cli.main(["train", "--backend", "verilator", "--mode", "run", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run mode" in err
    assert cli.main(["train", "--backend", "fixed", "--mode", "step", "--epochs", "1"]) == 2
    assert "hardware backends" in capsys.readouterr().err


def test_result_names_the_mode_and_counts_bus_accesses():
    args = {"task": "sum4", "k": 4, "epochs": 2, "batch": 10, "seed": 0, "corpus": 60}
    r = emulated(args, "auto")
    info = r["transport"]
    assert info["mode"] == "run"
    acc = info["bus_accesses"]
    assert acc["total"] > acc["fit"] > 0 and acc["per_epoch"] == acc["fit"] / 2
    json.dumps(r, allow_nan=False)
