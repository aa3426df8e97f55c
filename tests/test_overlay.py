"""The overlay package's driver (:mod:`dpfm.overlay`) on the board's code path.

The engine behind the MMIO window is the emulator (the reference behind the engine's register
rules, run mode included): a read of RUN_STATUS lets it train one more epoch, as the fabric
would meanwhile.  Twice:

- a stand-in ``pynq`` module (Overlay, MMIO, allocate, Clocks, DefaultIP, PL): the whole
  notebook path, ``DpfmOverlay`` -> ``Dpfm`` -> ``PynqTransport``, and the MMIO accesses per
  epoch;
- pynq's own code where it runs on x86 (``pynq.MMIO``, ``pynq.allocate`` and ``PynqBuffer``,
  ``DefaultIP`` and its VLNV registry) over a memory-mapped stand-in ``Device``; skipped
  when pynq is not installed.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.host import EmulatorTransport, Trainer, TransportUnavailable
from dpfm.reference import MLP, weights_sha256
from dpfm.tasks import sum4

CFG = Config(k=4)
BASE = 0x4000_0000


def board_files(folder, config):
    from dpfm.boards.build import BOARDS, build_info

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dpfm.bit").write_bytes(b"\0" * 16)
    (folder / "dpfm.hwh").write_text("<hwh/>")
    info = build_info(BOARDS["pynq-z2"], config)
    (folder / "dpfm.json").write_text(json.dumps(info))
    return folder / "dpfm.bit", info


class EngineWindow:
    """The engine's register window as a memory-mapped array: word ``i`` is the register at
    byte offset ``4 * i`` of an :class:`EmulatorTransport`.  Reading RUN_STATUS lets a run
    go on by one epoch.  ``calls`` counts Python-level accesses (an int index or a slice)."""

    def __init__(self, engine):
        self.engine = engine
        self.run_status = engine.regmap["RUN_STATUS"].offset >> 2
        self.calls = 0

    def _read(self, i):
        if i == self.run_status:
            return self.engine.poll_run(0)
        return self.engine.read(4 * i)

    def __getitem__(self, key):
        self.calls += 1
        if isinstance(key, slice):
            return np.array([self._read(i) for i in range(*key.indices(1 << 30))], dtype=np.uint32)
        return np.uint32(self._read(int(key)))

    def __setitem__(self, key, value):
        self.calls += 1
        if isinstance(key, slice):
            for i, v in zip(range(*key.indices(1 << 30)), np.asarray(value).ravel(), strict=True):
                self.engine.write(4 * i, int(v))
        else:
            self.engine.write(4 * int(key), int(value))


def stand_in_pynq(engine, *, fclk0_mhz=100.0):
    """A ``pynq`` module over ``engine`` (see the module docstring)."""
    pynq = types.ModuleType("pynq")
    pynq.window = EngineWindow(engine)
    pynq.loaded = []

    class Overlay:
        def __init__(self, bitfile_name, download=True, **kwargs):
            pynq.loaded.append((bitfile_name, download))
            self.bitfile_name = bitfile_name
            self.ip_dict = {"dpfm": {"phys_addr": BASE, "addr_range": engine.regmap.size,
                                     "type": "xilinx.com:module_ref:dpfm_top:1.0"}}

    class MMIO:
        def __init__(self, base_addr, length=4):
            self.base_addr, self.length, self.array = base_addr, length, pynq.window

        def read(self, offset=0, length=4):
            return int(self.array[offset >> 2])

        def write(self, offset, data):
            self.array[offset >> 2] = data

    class Buffer(np.ndarray):
        def flush(self):
            pass

        def invalidate(self):
            pass

        def freebuffer(self):
            self.region.close()

    def allocate(shape, dtype="u4", **kwargs):
        region = engine.allocate(int(np.prod(shape)))
        buffer = region.words.view(Buffer)          # the host writes what the engine reads
        buffer.region, buffer.device_address = region, region.address
        buffer.physical_address = region.address
        return buffer

    class DefaultIP:
        def __init__(self, description):
            self.mmio = MMIO(description["phys_addr"], description["addr_range"])

    pynq.Overlay, pynq.MMIO, pynq.allocate, pynq.DefaultIP = Overlay, MMIO, allocate, DefaultIP
    pynq.Clocks = types.SimpleNamespace(fclk0_mhz=fclk0_mhz)
    pynq.PL = types.SimpleNamespace(bitfile_name=None)
    return pynq


@pytest.fixture
def overlay_with(monkeypatch):
    """``dpfm.overlay`` imported again over a given ``pynq`` module (restored after)."""
    import dpfm.overlay

    def load(pynq_module):
        monkeypatch.setitem(sys.modules, "pynq", pynq_module)
        return importlib.reload(dpfm.overlay)

    yield load
    monkeypatch.undo()
    importlib.reload(dpfm.overlay)


def reference_fit(epochs):
    task = sum4()
    with EmulatorTransport(CFG) as direct:
        trainer = Trainer(CFG, direct)
        trainer.load_weights(MLP(CFG.net, CFG.activations, seed=0))
        hist = trainer.fit(task.X_train, task.y_train, epochs=epochs, lr=0.01,
                           validation=(task.X_val, task.y_val), seed=0, mode="run")
        return hist, weights_sha256(trainer.weights())


# -- without pynq ------------------------------------------------------------------------------

def test_imports_without_pynq_and_says_what_is_missing():
    code = ("import sys\nsys.modules['pynq'] = None\n"
            "import dpfm.overlay as o\n"
            "assert o.DpfmIP.bindto == [o.VLNV]\n"
            "for cls in (o.DpfmOverlay, o.DpfmIP):\n"
            "    try:\n        cls({})\n    except o.TransportUnavailable as e:\n"
            "        assert \"'pynq'\" in str(e), e\n"
            "    else:\n        raise SystemExit('no error')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_vlnv_is_the_block_designs_module_reference():
    from dpfm.boards.wrapper import TOP_NAME
    from dpfm.overlay import VLNV

    assert VLNV == f"xilinx.com:module_ref:{TOP_NAME}:1.0"


def test_fclk0_check(tmp_path):
    from dpfm.overlay import ClockMismatch, check_fclk0

    _, info = board_files(tmp_path, CFG)
    want = info["fclk0_hz"] / 1e6
    assert check_fclk0(info, want * 0.9999) == want           # the PLL's rounding passes
    with pytest.raises(ClockMismatch) as e:
        check_fclk0(info, want / 2)
    msg = str(e.value)
    assert f"{want / 2:.3f} MHz" in msg and f"{want:.3f} MHz" in msg
    assert "download=True" in msg and f"pynq.Clocks.fclk0_mhz = {want:g}" in msg


def test_find_bitstream_by_config(tmp_path, monkeypatch):
    import dpfm.overlay as o

    monkeypatch.setattr(o, "OVERLAY_DIR", tmp_path)
    with pytest.raises(TransportUnavailable, match="make overlay"):
        o.find_bitstream()
    k16, _ = board_files(tmp_path, Config(k=16))
    k4, _ = board_files(tmp_path / "k4", CFG)
    assert o.find_bitstream() == k16 and o.find_bitstream(CFG) == k4
    with pytest.raises(TransportUnavailable, match="no bitstream for k=8"):
        o.find_bitstream(Config(k=8))
    monkeypatch.setenv("DPFM_BACKEND", "pynq")
    monkeypatch.setitem(sys.modules, "pynq", types.ModuleType("pynq"))
    assert [c.k for c in o.sweep_configs()] == [4, 16]
    monkeypatch.setenv("DPFM_BACKEND", "verilator")
    monkeypatch.setenv("DPFM_SWEEP_K", "2,8")
    assert [c.k for c in o.sweep_configs()] == [2, 8]
    monkeypatch.setenv("DPFM_BACKEND", "board")
    with pytest.raises(ValueError, match="unknown backend 'board'"):
        o.Dpfm.open()


def test_install_copies_the_build(tmp_path):
    from dpfm.overlay.install import install

    build, _ = board_files(tmp_path / "build", CFG)
    with pytest.raises(FileNotFoundError, match="make bitstream"):
        install(tmp_path / "nothing", dest=tmp_path / "pkg")
    out = install(build.parent, "k4", dest=tmp_path / "pkg")
    assert sorted(p.name for p in out.iterdir()) == ["dpfm.bit", "dpfm.hwh", "dpfm.json"]


# -- a stand-in pynq -----------------------------------------------------------------------------

def test_notebook_path_on_a_stand_in_board(overlay_with, tmp_path, capsys):
    engine = EmulatorTransport(CFG)
    pynq = stand_in_pynq(engine)
    o = overlay_with(pynq)
    bit, info = board_files(tmp_path, CFG)
    task = sum4()

    ol = o.DpfmOverlay(bit)
    assert pynq.loaded == [(str(bit), True)] and ol.config == CFG
    dpfm = ol.engine(poll_s=0)
    dpfm.load_weights(seed=0)
    before = dpfm.bus_accesses
    hist = dpfm.train(task.X_train, task.y_train, 3, validation=(task.X_val, task.y_val))
    assert "pynq k=4" in capsys.readouterr().err                  # the progress bar
    ref, sha = reference_fit(3)
    log = dpfm.loss_log()
    assert np.array_equal(log["epoch"], [1, 2, 3])
    assert log["train"].tolist() == ref.train_loss and log["val"].tolist() == ref.val_loss
    assert hist.train_loss == ref.train_loss
    assert weights_sha256(dpfm.weights()) == sha
    assert dpfm.evaluate(task.X_val, task.y_val) == ref.val_loss[-1]
    flags = dpfm.flags()
    assert flags["bus_error"] is False and set(flags["saturations"]) >= {"value", "grad"}
    counters = dpfm.counters()
    assert counters["steps"] == hist.steps and counters["run_cycles"] == 0   # the emulator has no clock
    assert dpfm.transport.bus_accesses - before > 0

    # the IP driver bound by VLNV reaches the same engine through its own MMIO
    pynq.PL.bitfile_name = str(bit)
    ip = o.DpfmIP({"phys_addr": BASE, "addr_range": engine.regmap.size})
    assert weights_sha256(ip.engine().weights()) == sha

    # a wrong fabric clock is refused when loading
    pynq.Clocks.fclk0_mhz = info["fclk0_hz"] / 2e6
    with pytest.raises(o.ClockMismatch, match="FCLK0 runs at"):
        o.DpfmOverlay(bit)


def test_mmio_accesses_per_epoch(overlay_with, tmp_path):
    """Register accesses (32-bit words) and Python MMIO calls of a run-mode fit, on the
    stand-in board: a fixed part per run plus a few per epoch (one RUN_STATUS poll per epoch
    here, where every poll finds one more epoch done; a board's sum4 epoch takes well under
    one poll interval, so it polls less)."""
    task = sum4()
    words, calls = {}, {}
    for epochs in (1, 5):
        engine = EmulatorTransport(CFG)
        pynq = stand_in_pynq(engine)
        o = overlay_with(pynq)
        dpfm = o.DpfmOverlay(board_files(tmp_path / str(epochs), CFG)[0]).engine(poll_s=0,
                                                                                  progress=False)
        dpfm.load_weights(seed=0)
        w0, c0 = dpfm.bus_accesses, pynq.window.calls
        dpfm.train(task.X_train, task.y_train, epochs, validation=(task.X_val, task.y_val))
        words[epochs], calls[epochs] = dpfm.bus_accesses - w0, pynq.window.calls - c0
    per_epoch = (words[5] - words[1]) / 4
    per_epoch_calls = (calls[5] - calls[1]) / 4
    print(f"MMIO per run: {words[1] - per_epoch:.0f} words + {per_epoch:.0f} per epoch; "
          f"Python MMIO calls: {calls[1] - per_epoch_calls:.0f} + {per_epoch_calls:.0f} per epoch")
    assert per_epoch <= 2 and words[5] <= 80       # issue 13's goal: at most 20 per epoch


# -- pynq's own code -----------------------------------------------------------------------------

@pytest.fixture
def real_pynq(monkeypatch):
    pynq = pytest.importorskip(
        "pynq", reason="pynq is not installed (it is the board's; `pip install pynq` puts "
                       "pynq 4.0 on x86 for this test)")
    from pynq.pl_server.device import Device

    had = Device.__dict__.get("_active_device")
    yield pynq, Device
    if had is None:
        if "_active_device" in Device.__dict__:
            del Device._active_device
    else:
        Device._active_device = had


class MappedDevice:
    """A pynq ``Device`` whose memory map is the engine's register window (capability
    ``MEMORY_MAPPED``, as the board's /dev/mem device) and whose ``allocate`` hands out
    pynq's own ``PynqBuffer`` over the engine's run memory."""

    def __init__(self, engine):
        self.engine = engine
        self.window = EngineWindow(engine)
        self.cache_ops = []

    def has_capability(self, cap):
        return cap == "MEMORY_MAPPED"

    def mmap(self, base_addr, length):
        assert base_addr == BASE and length == self.engine.regmap.size
        return self.window

    def allocate(self, shape, dtype, **kwargs):
        from pynq.buffer import PynqBuffer

        region = self.engine.allocate(int(np.prod(shape)))
        return PynqBuffer(shape, dtype, buffer=region.words, device=self,
                          device_address=region.address, bo=region)

    def flush(self, bo, offset, vaddr, nbytes):
        self.cache_ops.append(("flush", nbytes))

    def invalidate(self, bo, offset, vaddr, nbytes):
        self.cache_ops.append(("invalidate", nbytes))


def _pynq_engine(real_pynq, tmp_path):
    pynq, Device = real_pynq
    import dpfm.overlay as o

    o = importlib.reload(o)                 # DpfmIP over pynq's own DefaultIP
    engine = EmulatorTransport(CFG)
    device = MappedDevice(engine)
    Device.active_device = device           # pynq.MMIO and pynq.allocate use it
    return pynq, o, engine, device, board_files(tmp_path, CFG)[0]


def test_pynq_mmio_and_default_ip(real_pynq, tmp_path):
    """pynq's MMIO (word reads and writes, the ``array`` view for blocks) and DefaultIP with
    its VLNV registry, per-step training (run mode needs pynq.allocate, next test)."""
    from pynq.overlay import _ip_drivers

    from dpfm.host.pynq import PynqTransport

    pynq, o, engine, device, bit = _pynq_engine(real_pynq, tmp_path)
    assert issubclass(o.DpfmIP, pynq.DefaultIP) and _ip_drivers[o.VLNV] is o.DpfmIP
    task = sum4()
    mmio = pynq.MMIO(BASE, engine.regmap.size)
    dpfm = o.Dpfm(PynqTransport(CFG, bit, mmio=mmio), poll_s=0, progress=False)
    assert dpfm.transport._array is device.window          # bulk blocks through mmio.array
    dpfm.load_weights(seed=0)
    hist = dpfm.train(task.X_train, task.y_train, 2, validation=(task.X_val, task.y_val),
                      mode="step")
    ref, sha = reference_fit(2)
    assert hist.train_loss == ref.train_loss and hist.val_loss == ref.val_loss
    assert weights_sha256(dpfm.weights()) == sha
    # pynq's DefaultIP maps the window itself; the driver bound by the VLNV reaches it too
    ip = o.DpfmIP({"phys_addr": BASE, "addr_range": engine.regmap.size, "device": device})
    assert isinstance(ip.mmio, pynq.MMIO)
    assert weights_sha256(ip.engine(bit).weights()) == sha


@pytest.mark.skipif(int(np.__version__.split(".")[0]) >= 2,
                    reason="pynq 4.0's PynqBuffer assigns ndarray.device, read-only since "
                           "numpy 2 (pynq requires numpy<2; the board's image has numpy 1.x)")
def test_pynq_allocate_run_mode(real_pynq, tmp_path):
    """Run mode over pynq.allocate's PynqBuffer: flushed once, invalidated per epoch."""
    pynq, o, engine, device, bit = _pynq_engine(real_pynq, tmp_path)
    from dpfm.host.pynq import PynqTransport

    task = sum4()
    dpfm = o.Dpfm(PynqTransport(CFG, bit, mmio=pynq.MMIO(BASE, engine.regmap.size)), poll_s=0,
                  progress=False)
    dpfm.load_weights(seed=0)
    hist = dpfm.train(task.X_train, task.y_train, 3, validation=(task.X_val, task.y_val))
    ref, sha = reference_fit(3)
    assert hist.train_loss == ref.train_loss and weights_sha256(dpfm.weights()) == sha
    assert device.cache_ops[0][0] == "flush"
    assert [op for op, _ in device.cache_ops].count("invalidate") == 3


def test_entry_points_and_default_bitstream(tmp_path, monkeypatch):
    """pyproject names the package folder for pynq; the pynq backend's default bitstream is
    the packaged one when there is one."""
    import tomllib
    from pathlib import Path

    import dpfm.host.pynq as hp
    from dpfm.overlay import OVERLAY_DIR

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    eps = project["project"]["entry-points"]
    assert eps["pynq.overlays"] == {"dpfm": "dpfm.overlay"}
    assert eps["pynq.notebooks"] == {"dpfm": "dpfm.overlay.notebooks"}
    monkeypatch.delenv("DPFM_BITSTREAM", raising=False)
    packaged = OVERLAY_DIR / "dpfm.bit"
    if not packaged.exists():
        assert hp.default_bitstream().parent.name == "pynq-z2"
        packaged.write_bytes(b"")
        try:
            assert hp.default_bitstream() == packaged
        finally:
            packaged.unlink()
