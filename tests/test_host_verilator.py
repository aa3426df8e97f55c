"""The compiled Verilator harness, and the host driver over it and over a stand-in board.

Two models are compiled (each once, then taken from the build cache):

- ``StandIn``, a small register file behind the project's AXI4-Lite slave, to test the C++
  harness itself (bus protocol, error responses, polling, timeouts, the build cache);
- the real :class:`dpfm.rtl.engine.Engine` for the seed net at k=4, which must train exactly
  as the fixed-point transport (the reference) and answer its bus exactly as that transport
  models it.  The PYNQ transport is driven against it through a stand-in ``pynq`` module
  whose MMIO forwards to the harness at the same offsets.
"""

import json
import sys
import time
import types

import numpy as np
import pytest
from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In

from dpfm.config import Config
from dpfm.host import (BusError, EmulatorTransport, HardwareMismatch, Trainer, TransportTimeout)
from dpfm import runs
from dpfm.backends import HostBackend
from dpfm.host.verilator import VerilatorTransport, source_digest
from dpfm.reference import MLP, weights_sha256
from dpfm.rtl.axi import AXI4LiteSignature, AXI4LiteSlave
from dpfm.rtl.regmap import ADDR_BITS, CTRL, FLAGS, ID_MAGIC, STATUS, UPDATE, register_map

pytestmark = pytest.mark.sim

CFG = Config(k=4)


class StandIn(wiring.Component):
    """ID, CONFIG_HASH, BATCH_N (read-write), CTRL, STATUS and FLAGS at the engine's offsets,
    plus a WEIGHTS memory.  A start keeps STATUS busy for BATCH_N cycles, then done.  Every
    other access answers SLVERR and raises FLAGS.bus_error."""

    s_axil: In(AXI4LiteSignature(addr_width=ADDR_BITS))

    def __init__(self, config):
        self.config = config
        self.regmap = register_map(config)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.slave = slave = AXI4LiteSlave(addr_width=ADDR_BITS)
        wiring.connect(m, wiring.flipped(self.s_axil), slave.bus)
        reg = slave.reg
        word = {r.name: r.offset >> 2 for r in self.regmap.registers}
        weights = self.regmap["WEIGHTS"]
        m.submodules.mem = mem = Memory(shape=32, depth=weights.length, init=[])
        rd, wr = mem.read_port(domain="comb"), mem.write_port()
        base = weights.base >> 2
        in_weights = (reg.addr >= base) & (reg.addr < base + weights.length)
        m.d.comb += [rd.addr.eq(reg.addr - base), wr.addr.eq(reg.addr - base),
                     wr.data.eq(reg.w_data)]
        batch_n, count = Signal(32), Signal(32)
        done, bus_error = Signal(), Signal()
        r_data, error = Signal(32), Signal()
        m.d.sync += [reg.r_data.eq(r_data), reg.error.eq(error)]
        with m.If(count != 0):
            m.d.sync += count.eq(count - 1)
            with m.If(count == 1):
                m.d.sync += done.eq(1)
        with m.If(reg.r_en):
            with m.If(in_weights):
                m.d.comb += r_data.eq(rd.data)
            with m.Elif(reg.addr == word["ID"]):
                m.d.comb += r_data.eq(ID_MAGIC)
            with m.Elif(reg.addr == word["CONFIG_HASH"]):
                m.d.comb += r_data.eq(self.config.hash)
            with m.Elif(reg.addr == word["BATCH_N"]):
                m.d.comb += r_data.eq(batch_n)
            with m.Elif(reg.addr == word["STATUS"]):
                m.d.comb += r_data.eq(Cat(count != 0, done))
            with m.Elif(reg.addr == word["FLAGS"]):
                m.d.comb += r_data.eq(bus_error << FLAGS["bus_error"])
            with m.Else():
                m.d.comb += error.eq(1)
        with m.If(reg.w_en):
            with m.If(in_weights):
                m.d.comb += wr.en.eq(1)
            with m.Elif(reg.addr == word["BATCH_N"]):
                m.d.sync += batch_n.eq(reg.w_data)
            with m.Elif(reg.addr == word["CTRL"]):
                with m.If(reg.w_data[CTRL["start"]]):
                    m.d.sync += [count.eq(batch_n), done.eq(0)]
                with m.If(reg.w_data[CTRL["clear_flags"]]):
                    m.d.sync += bus_error.eq(0)
            with m.Else():
                m.d.comb += error.eq(1)
        with m.If(error):
            m.d.sync += bus_error.eq(1)
        return m


def open_standin(**kw):
    return VerilatorTransport(CFG, factory=StandIn, name="standin", extra_sources=[__file__], **kw)


@pytest.fixture(scope="module")
def standin():
    t = open_standin()
    yield t
    t.close()


# -- the harness, against the stand-in ----------------------------------------------------------

def test_standin_identity_and_registers(standin):
    m = standin.regmap
    assert standin.read(m["ID"].offset) == ID_MAGIC
    assert standin.read(m["CONFIG_HASH"].offset) == CFG.hash
    standin.write(m["BATCH_N"].offset, 0xFFFF_FFFF)
    assert standin.read(m["BATCH_N"].offset) == 0xFFFF_FFFF
    addrs = [m["WEIGHTS"].addr(i) for i in range(CFG.n_params)]
    values = [(i * 0x9E3779B9) & 0xFFFF_FFFF for i in range(CFG.n_params)]
    standin.write_many(addrs, values)
    assert standin.read_many(addrs) == values
    assert standin.read_many(addrs[::-1]) == values[::-1]


def test_standin_error_responses(standin):
    m = standin.regmap
    with pytest.raises(BusError) as e:
        standin.write(m["ID"].offset, 1)
    assert e.value.addr == m["ID"].offset and e.value.resp == 2 and e.value.write
    with pytest.raises(BusError) as e:
        standin.read(0x100)
    assert e.value.addr == 0x100 and not e.value.write
    # a batch stops at its first refused word, naming it; the words before it are written
    w = [m["WEIGHTS"].addr(i) for i in range(3)]
    with pytest.raises(BusError) as e:
        standin.write_many([w[0], w[1], m["K"].offset, w[2]], [11, 12, 13, 14])
    assert e.value.addr == m["K"].offset
    assert standin.read_many(w[:2]) == [11, 12]
    assert standin.bus_write(m["K"].offset, 0) == 2          # the raw response, no exception
    assert standin.bus_read(m["ID"].offset) == (ID_MAGIC, 0)


def test_standin_step_is_polled_in_cxx(standin):
    m = standin.regmap
    standin.write(m["BATCH_N"].offset, 500)
    c0 = standin.total_cycles
    status = standin.run_step()
    cycles = standin.total_cycles - c0
    assert status & 1 << STATUS["done"] and not status & 1 << STATUS["busy"]
    assert 500 <= cycles < 520                               # polling adds only a bus read
    standin.write(m["BATCH_N"].offset, 1_000_000)
    saved = standin.max_step_cycles
    standin.max_step_cycles = 2000
    try:
        with pytest.raises(TransportTimeout):
            standin.run_step()
    finally:
        standin.max_step_cycles = saved
    standin.reset()
    assert standin.read(m["STATUS"].offset) == 0            # reset ends the long step


def test_build_is_cached_and_keyed_by_sources(tmp_path):
    first = open_standin()          # built now only if a source changed since the fixture's
    t0 = time.perf_counter()
    again = open_standin()
    opened = time.perf_counter() - t0
    try:
        assert again.build.cached and again.build.library == first.build.library
        assert again.build.build_s == first.build.build_s > 0     # as recorded when built
        assert opened < 5.0, f"a cached model took {opened:.1f} s to open"
        first.write(first.regmap["BATCH_N"].offset, 5)
        again.write(again.regmap["BATCH_N"].offset, 6)
        assert first.read(first.regmap["BATCH_N"].offset) == 5    # independent instances
    finally:
        first.close()
        again.close()
    source = tmp_path / "generator.py"
    source.write_text("A = 1\n")
    digest = source_digest([source])
    assert source_digest([source]) == digest
    source.write_text("A = 2\n")
    assert source_digest([source]) != digest
    assert source_digest([source], waves=True) != source_digest([source], waves=False)


def test_a_source_edit_that_keeps_the_verilog_reuses_the_model(standin, tmp_path):
    notes = tmp_path / "notes.py"
    opened = []
    for text in ("# one\n", "# two\n"):
        notes.write_text(text)
        t = VerilatorTransport(CFG, factory=StandIn, name="standin",
                               extra_sources=[__file__, notes])
        opened.append(t.build)
        t.close()
    assert all(b.cached and b.library == standin.build.library for b in opened)


def test_standin_waves(tmp_path):
    from dpfm.toolchain import waves_enabled

    if not waves_enabled():
        pytest.skip("set WAVES=1 to build the models with FST tracing")
    trace = tmp_path / "standin.fst"
    t = open_standin(trace_path=trace)
    assert t.build.trace and t.trace_path == trace
    t.write(t.regmap["BATCH_N"].offset, 20)
    t.run_step()
    t.close()                                    # the FST writer completes the file on close
    assert trace.stat().st_size > 0


# -- the real engine ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    t = VerilatorTransport(CFG)
    print(f"\nengine k={CFG.k}: {'cached' if t.build.cached else 'built'} "
          f"({t.build.build_s:.1f} s when built) in {t.build.directory}")
    yield t
    t.close()


@pytest.fixture(scope="module")
def sum4():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (100, 4))
    y = X.sum(axis=1, keepdims=True)
    return X[:80], y[:80], X[80:], y[80:]


def _fit(transport, data, epochs=1, lr=0.01, update="maxnorm"):
    Xt, yt, Xv, yv = data
    trainer = Trainer(CFG, transport)
    trainer.load_weights(MLP(CFG.net, CFG.activations, seed=0))
    hist = trainer.fit(Xt, yt, epochs=epochs, lr=lr, update=update, validation=(Xv, yv), seed=0)
    return trainer, hist


@pytest.mark.parametrize("update, lr", [("maxnorm", 0.01), ("sgd", 0.05)])
def test_engine_trains_like_the_fixed_transport(engine, sum4, update, lr):
    engine.reset()
    hw, hw_hist = _fit(engine, sum4, 2, lr, update)
    ref, ref_hist = _fit(EmulatorTransport(CFG), sum4, 2, lr, update)
    assert hw_hist.train_loss == ref_hist.train_loss
    assert hw_hist.val_loss == ref_hist.val_loss
    assert hw_hist.saturations == ref_hist.saturations
    assert weights_sha256(hw.weights()) == weights_sha256(ref.weights())
    stats = hw.cycle_stats
    assert stats.steps == hw_hist.steps and stats.min > 0
    assert 0 < stats.mul_busy <= stats.total and 0 < stats.merge_busy <= stats.total


def _bus_script(t):
    """A fixed sequence of accesses; returns every answer (value or error response)."""
    m = t.regmap
    out = []

    def rd(addr):
        try:
            out.append(("r", addr, t.read(addr)))
        except BusError as e:
            out.append(("r", addr, f"resp{e.resp}"))

    def wr(addr, value):
        try:
            t.write(addr, value)
            out.append(("w", addr, "ok"))
        except BusError as e:
            out.append(("w", addr, f"resp{e.resp}"))

    skip = {"CYCLES", "MUL_BUSY", "MERGE_BUSY"}            # the emulator counts no cycles
    for r in m.registers:
        if r.name not in skip:
            rd(r.offset)
    for r in m.registers:
        if r.access == "ro":
            wr(r.offset, 0x5A5A_5A5A)
    rd(m["FLAGS"].offset)
    wr(m["CTRL"].offset, 1 << CTRL["clear_flags"])
    rd(m["FLAGS"].offset)
    for addr in (0x0FC, 0x4000, m["WEIGHTS"].base + 4 * CFG.n_params,
                 m["SAMPLES"].row_addr(0, CFG.n_in + CFG.n_out)):
        wr(addr, 3)
        rd(addr)
    wr(m["OUTPUTS"].addr(0), 3)                            # read-only window
    for name, value in (("BATCH_N", 0xFFFF_FFFF), ("UPDATE", 7), ("LR_Q", 0xFFFF_FFFF),
                        ("SGD_CQ", 0xFFFF_FFFF), ("SGD_CS", 0x1FF)):
        wr(m[name].offset, value)
        rd(m[name].offset)
    # refused starts, each with its code
    for regs in ({"BATCH_N": 0}, {"BATCH_N": CFG.batch + 1}, {"BATCH_N": 2, "UPDATE": 3},
                 {"UPDATE": UPDATE["maxnorm"], "LR_Q": 0}, {"UPDATE": UPDATE["sgd"], "SGD_CQ": 0}):
        for name, value in regs.items():
            wr(m[name].offset, value)
        out.append(("step", t.run_step()))
    # a real step: weights, two samples, maxnorm
    rng = np.random.default_rng(7)
    w = rng.integers(-4096, 4096, CFG.n_params)
    for i, v in enumerate(w):
        wr(m["WEIGHTS"].addr(i), int(v) & 0xFFFF_FFFF)
    for s in range(2):
        for c in range(CFG.n_in + CFG.n_out):
            wr(m["SAMPLES"].row_addr(s, c), int(rng.integers(0, 1 << 17)))
    rd(m["SAMPLES"].row_addr(1, 2))
    for name, value in (("BATCH_N", 2), ("UPDATE", UPDATE["maxnorm"]), ("LR_Q", 41)):
        wr(m[name].offset, value)
    out.append(("step", t.run_step()))
    for name in ("LOSS_LO", "LOSS_HI", "FLAGS", "STATUS"):
        rd(m[name].offset)
    for s in range(2):
        rd(m["OUTPUTS"].row_addr(s, 0))
    for i in range(CFG.n_params):
        rd(m["WEIGHTS"].addr(i))
    return out


def test_engine_bus_answers_as_the_fixed_transport_models_it(engine):
    engine.reset()
    hw = _bus_script(engine)
    ref = _bus_script(EmulatorTransport(CFG))
    for a, b in zip(hw, ref, strict=True):
        assert a == b, f"engine {a} != emulator {b}"


def test_verilator_backend_equals_emulator(engine):
    args = {"task": "sum4", "k": CFG.k, "epochs": 2, "batch": CFG.batch, "lr": 0.01,
            "update": "maxnorm", "seed": 0}
    hw = runs.run({**args, "backend": "verilator"})
    ref = runs.run(args, backend=HostBackend("emulator"))
    assert hw["weights_sha256"] == ref["weights_sha256"]
    assert hw["history"] == ref["history"]
    assert hw["saturations"] == ref["saturations"]
    assert hw["hw_config"] == ref["hw_config"] == {**CFG.to_dict(), "hash": CFG.hash}
    assert hw["transport"]["build_dir"].startswith(str(engine.build.directory.parent))
    assert hw["cycles_per_step"] > 0 and hw["transport"]["sim_cycles_per_s"] > 0
    json.dumps(hw, allow_nan=False)


# -- the board's code path, against the engine ------------------------------------------------

class FakePynq:
    """A stand-in ``pynq`` module: ``Overlay`` lists the engine at ``base``; ``MMIO`` forwards
    every word to the Verilator harness at the same offset, dropping the response code as a
    CPU's load and store do."""

    def __init__(self, target, base=0x4000_0000):
        self.target, self.base, self.loaded = target, base, []
        fake = self

        class Overlay:
            def __init__(self, bitfile, download=True):
                fake.loaded.append((bitfile, download))
                self.ip_dict = {"dpfm": {"phys_addr": fake.base, "addr_range": 1 << ADDR_BITS,
                                         "type": "user.org:user:dpfm_top:1.0"}}

        class MMIO:
            def __init__(self, base_addr, length=4):
                assert base_addr == fake.base and length <= 1 << ADDR_BITS
                self.length = length

            def read(self, offset=0, length=4):
                assert 0 <= offset < self.length and length == 4
                return fake.target.bus_read(offset)[0]

            def write(self, offset, data):
                assert 0 <= offset < self.length and 0 <= data < 1 << 32
                fake.target.bus_write(offset, data)

        self.module = types.ModuleType("pynq")
        self.module.Overlay, self.module.MMIO = Overlay, MMIO


def _board(tmp_path, config):
    from dpfm.boards.build import BOARDS, build_info

    (tmp_path / "dpfm.bit").write_bytes(b"\0" * 16)
    (tmp_path / "dpfm.hwh").write_text("<hwh/>")
    (tmp_path / "dpfm.json").write_text(json.dumps(build_info(BOARDS["pynq-z2"], config)))
    return tmp_path / "dpfm.bit"


def test_pynq_transport_trains_like_the_fixed_transport(engine, sum4, tmp_path, monkeypatch):
    from dpfm.host.pynq import PynqTransport

    fake = FakePynq(engine)
    monkeypatch.setitem(sys.modules, "pynq", fake.module)
    engine.reset()
    board = PynqTransport(CFG, _board(tmp_path, CFG))
    assert fake.loaded == [(str(tmp_path / "dpfm.bit"), True)]
    assert not board.reports_bus_errors
    hw, hw_hist = _fit(board, sum4, 1)
    ref, ref_hist = _fit(EmulatorTransport(CFG), sum4, 1)
    assert hw_hist.train_loss == ref_hist.train_loss and hw_hist.val_loss == ref_hist.val_loss
    assert weights_sha256(hw.weights()) == weights_sha256(ref.weights())
    # a refused store gives the CPU no error; the engine's sticky flag makes the next step fail
    board.write(board.regmap["ID"].offset, 0)
    with pytest.raises(BusError, match="bus_error"):
        hw.step(sum4[0][:10], sum4[1][:10], 0.01, "maxnorm")
    board.close()


def test_pynq_stale_build_description_is_caught_by_the_config_hash(engine, tmp_path, monkeypatch):
    from dpfm.host.pynq import PynqTransport

    other = Config(k=8)        # dpfm.json claims k=8, but the fabric holds the k=4 engine
    monkeypatch.setitem(sys.modules, "pynq", FakePynq(engine).module)
    board = PynqTransport(other, _board(tmp_path, other))
    with pytest.raises(HardwareMismatch) as e:
        Trainer(other, board)
    assert f"0x{CFG.hash:08x}" in str(e.value) and f"0x{other.hash:08x}" in str(e.value)
