"""Every register's access, pinned: the register map written out by hand, and enforced.

The tables below are deliberate literals, not generated: a change to the register map
(:func:`dpfm.rtl.regmap.register_map`) -- a register added, moved, widened, or a read-only one
made writable -- must change this file too, by hand.  Against the tables, not against the
map itself (which a fault would change along with it):

- the map of the default :class:`~dpfm.config.Config` equals the tables;
- :class:`~dpfm.host.EmulatorTransport` answers every write to a read-only register or window
  with :class:`~dpfm.host.BusError` and keeps the value, refuses reads of the write-only
  CTRL, and accepts the read-write ones;
- the engine's RTL (:class:`~dpfm.rtl.engine.Engine` in Amaranth's simulator) does the same.
"""

from __future__ import annotations

import pytest
from amaranth_engine import AmaranthTransport

from dpfm.config import Config
from dpfm.host import BusError, EmulatorTransport
from dpfm.rtl.regmap import CTRL, ERR_ADDR_WRITE, FLAGS, Resp, register_map

#: ``(name, byte offset, access, bits, signed, values a write may store, reset)`` of every
#: register of ``Config()``, in map order (resets: BATCH_N = batch, UPDATE = maxnorm).  Access: ``ro`` read-only, ``rw`` read-write, ``wo``
#: write-only.  BATCH_N holds 1..batch (batch 10: 4 bits; 0 is held and refused at start), LR_Q
#: a weight-format integer (18.12: 18 bits), SGD_CS exactly the exponents sgd_scale gives.
R32 = (0, (1 << 32) - 1)
REGISTERS = [
    ("ID",          0x000, "ro", 32, False, R32, 0),
    ("CONFIG_HASH", 0x004, "ro", 32, False, R32, 0),
    ("CTRL",        0x008, "wo", 32, False, R32, 0),
    ("STATUS",      0x00C, "ro", 32, False, R32, 0),
    ("FLAGS",       0x010, "ro", 32, False, R32, 0),
    ("CYCLES",      0x014, "ro", 32, False, R32, 0),
    ("BATCH_N",     0x018, "rw", 4, False, (0, 15), 10),
    ("UPDATE",      0x01C, "rw", 2, False, (0, 3), 1),
    ("LR_Q",        0x020, "rw", 18, False, (0, (1 << 18) - 1), 0),
    ("SGD_CQ",      0x024, "rw", 18, False, (0, (1 << 18) - 1), 0),
    ("SGD_CS",      0x028, "rw", 7, False, (16, 127), 16),
    ("LOSS_LO",     0x02C, "ro", 32, False, R32, 0),
    ("LOSS_HI",     0x030, "ro", 32, False, R32, 0),
    ("MUL_BUSY",    0x034, "ro", 32, False, R32, 0),
    ("MERGE_BUSY",  0x038, "ro", 32, False, R32, 0),
    ("K",           0x03C, "ro", 32, False, R32, 0),
    ("N_PARAMS",    0x040, "ro", 32, False, R32, 0),
    ("BATCH",       0x044, "ro", 32, False, R32, 0),
    ("ERR_ADDR",    0x048, "ro", 32, False, R32, 0),
    ("RUN_TRAIN_ADDR", 0x04C, "rw", 32, False, R32, 0),
    ("RUN_VAL_ADDR",   0x050, "rw", 32, False, R32, 0),
    ("RUN_PERM_ADDR",  0x054, "rw", 32, False, R32, 0),
    ("RUN_LOG_ADDR",   0x058, "rw", 32, False, R32, 0),
    ("RUN_SNAP_ADDR",  0x05C, "rw", 32, False, R32, 0),
    ("RUN_TRAIN_N",    0x060, "rw", 24, False, (1, (1 << 24) - 1), 1),
    ("RUN_VAL_N",      0x064, "rw", 24, False, (0, (1 << 24) - 1), 0),
    ("RUN_EPOCHS",     0x068, "rw", 16, False, (0, (1 << 16) - 1), 0),
    ("RUN_OPTS",       0x06C, "rw", 1, False, (0, 1), 0),
    ("SGD_CQ_LAST",    0x070, "rw", 18, False, (0, (1 << 18) - 1), 0),
    ("SGD_CS_LAST",    0x074, "rw", 7, False, (16, 127), 16),
    ("RUN_STATUS",     0x078, "ro", 32, False, R32, 0),
    ("RUN_CYCLES_LO",  0x07C, "ro", 32, False, R32, 0),
    ("RUN_CYCLES_HI",  0x080, "ro", 32, False, R32, 0),
    ("RUN_ERR_ADDR",   0x084, "ro", 32, False, R32, 0),
]

#: ``(name, base, access, words, row_words)`` of every window of ``Config()`` (net 4-5-5-1:
#: 61 parameters; batch 10; rows of 4 inputs + 1 target padded to 8 words).
WINDOWS = [
    ("WEIGHTS", 0x10000, "rw", 61, 1),
    ("SAMPLES", 0x20000, "rw", 80, 8),
    ("OUTPUTS", 0x30000, "ro", 10, 1),
]

READ_ONLY = [name for name, _, access, *_ in REGISTERS if access == "ro"]
READ_WRITE = [name for name, _, access, *_ in REGISTERS if access == "rw"]
WRITE_ONLY = [name for name, _, access, *_ in REGISTERS if access == "wo"]
OFFSET = {name: offset for name, offset, *_ in REGISTERS}
BUS_ERROR = 1 << FLAGS["bus_error"]

#: A small engine for the RTL checks: offsets and access do not depend on the Config.
SMALL = Config(net=(2, 1), activations=("linear",), k=2, batch=2)


def test_register_map_is_pinned():
    """Name, offset, access, width and signedness of every register, and every window, of
    the default Config's map are exactly the tables (nothing added, dropped or reordered)."""
    m = register_map(Config())
    assert [(r.name, r.offset, r.access, r.bits, r.signed, r.value_range, r.reset)
            for r in m.registers] == REGISTERS
    assert [(w.name, w.base, w.access, w.length, w.row_words) for w in m.windows] == WINDOWS


def test_offsets_and_access_do_not_depend_on_the_config():
    m = register_map(SMALL)
    assert [(r.name, r.offset, r.access) for r in m.registers] == [r[:3] for r in REGISTERS]
    assert [(w.name, w.base, w.access) for w in m.windows] == [w[:3] for w in WINDOWS]


def _check_read_only(t, name, addr):
    """A refused write: BusError (SLVERR, a write), the value kept, bus_error raised."""
    t.write(OFFSET["CTRL"], 1 << CTRL["clear_flags"])
    before = t.read(addr)
    try:
        t.write(addr, ~before & 0xFFFFFFFF)
    except BusError as e:
        assert e.write and e.resp == Resp.SLVERR and e.addr == addr
    else:
        pytest.fail(f"{t.name}: a write to the read-only {name} at {addr:#07x} was accepted")
    flags = t.read(OFFSET["FLAGS"])
    assert flags & BUS_ERROR, f"{name}: a refused write must raise FLAGS.bus_error"
    if name == "FLAGS":
        assert flags == before | BUS_ERROR, f"FLAGS took the written value: {flags:#x}"
    elif name == "ERR_ADDR":            # it records the refused write itself, nothing else
        assert t.read(addr) == addr | ERR_ADDR_WRITE, f"ERR_ADDR took {t.read(addr):#x}"
    else:
        assert t.read(addr) == before, f"{name} changed from {before:#x} to {t.read(addr):#x}"


def _check_access(t, config):
    m = register_map(config)
    for name in READ_ONLY:
        _check_read_only(t, name, OFFSET[name])
    for name, base, access, *_ in WINDOWS:
        if access == "ro":
            _check_read_only(t, name, base)
            _check_read_only(t, name, m[name].addr(m[name].length - 1))
    for name in WRITE_ONLY:
        try:
            t.read(OFFSET[name])
        except BusError as e:
            assert not e.write and e.resp == Resp.SLVERR
        else:
            pytest.fail(f"{t.name}: a read of the write-only {name} was answered")
    for name in READ_WRITE:            # the lowest value each takes, other than its reset
        lo = next(r[5][0] for r in REGISTERS if r[0] == name)
        value = lo + 1 if lo == m[name].reset else lo
        t.write(OFFSET[name], value)
        assert t.read(OFFSET[name]) == value, name
    for name, base, access, *_ in WINDOWS:
        if access == "rw":
            t.write(base, 0x123)
            assert t.read(base) == 0x123, name


@pytest.mark.parametrize("config", [Config(), SMALL], ids=["default", "small"])
def test_fixed_transport_enforces_the_pinned_access(config):
    """EmulatorTransport: BusError on a write to every read-only register and window (value
    kept), on a read of the write-only CTRL; the read-write ones take a value."""
    _check_access(EmulatorTransport(config), config)


def test_engine_rtl_enforces_the_pinned_access():
    """The engine's RTL, over AXI4-Lite in Amaranth's simulator: SLVERR on a write to every
    read-only register and window (value kept), on a read of CTRL; the read-write ones take
    a value."""
    with AmaranthTransport(SMALL) as t:
        _check_access(t, SMALL)
