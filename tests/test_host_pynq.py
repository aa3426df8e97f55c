"""The PYNQ transport where there is no board: what is missing is named, exactly; and its
bus accesses, bulk MMIO views and run buffers against a stand-in ``pynq`` module whose MMIO
is plain memory and whose ``allocate`` hands out buffers at chosen physical addresses.

(The transport's path to a board is exercised against the Verilator model, through a
stand-in ``pynq`` module, in tests/test_host_verilator.py.)
"""

import json
import sys
import types

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.host import HardwareMismatch, TransportUnavailable
from dpfm.host.pynq import PynqRunBuffer, PynqTransport, check_available
from dpfm.host.transport import RunBuffer
from dpfm.rtl.regmap import register_map

CFG = Config(k=4)


@pytest.fixture
def no_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)      # `import pynq` raises ImportError


@pytest.fixture
def some_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", types.ModuleType("pynq"))


def board_files(folder, config, *, bit=True, hwh=True, info=True, run_mode=True):
    from dpfm.boards.build import BOARDS, build_info

    folder.mkdir(exist_ok=True)
    if bit:
        (folder / "dpfm.bit").write_bytes(b"\0" * 16)
    if hwh:
        (folder / "dpfm.hwh").write_text("<hwh/>")
    if info:
        described = build_info(BOARDS["pynq-z2"], config)
        if not run_mode:                    # a build from before run mode
            del described["run_mode"]
        (folder / "dpfm.json").write_text(json.dumps(described))
    return folder / "dpfm.bit"


def test_without_pynq_the_package_is_named(no_pynq, tmp_path):
    bit = board_files(tmp_path, CFG)
    with pytest.raises(TransportUnavailable) as e:
        PynqTransport(CFG, bit)
    msg = str(e.value)
    assert "'pynq'" in msg and "dpfm.bit" not in msg and "hwh" not in msg
    assert isinstance(e.value, ValueError)               # a command line answers exit code 2


@pytest.mark.parametrize("absent, named", [("bit", "dpfm.bit"), ("hwh", "dpfm.hwh"),
                                           ("info", "dpfm.json")])
def test_each_missing_file_is_named(some_pynq, tmp_path, absent, named):
    bit = board_files(tmp_path, CFG, **{absent: False})
    with pytest.raises(TransportUnavailable) as e:
        check_available(CFG, bit)
    msg = str(e.value)
    assert str(tmp_path / named) in msg and "pynq'" not in msg
    others = {"dpfm.bit", "dpfm.hwh", "dpfm.json"} - {named}
    assert not any(str(tmp_path / o) in msg for o in others)


def test_nothing_there_names_everything(no_pynq, tmp_path):
    with pytest.raises(TransportUnavailable) as e:
        check_available(CFG, tmp_path / "dpfm.bit")
    for what in ("'pynq'", "dpfm.bit", "dpfm.hwh", "dpfm.json", "make bitstream"):
        assert what in str(e.value)


def test_bitstream_for_another_config_is_refused(some_pynq, tmp_path):
    bit = board_files(tmp_path, Config(k=8))
    with pytest.raises(HardwareMismatch) as e:
        check_available(CFG, bit)
    assert f"0x{Config(k=8).hash:08x}" in str(e.value) and f"0x{CFG.hash:08x}" in str(e.value)


def test_bitstream_from_the_environment(some_pynq, tmp_path, monkeypatch):
    bit = board_files(tmp_path, CFG)
    monkeypatch.setenv("DPFM_BITSTREAM", str(bit))
    assert check_available(CFG)[0] == bit


def test_cli_pynq_backend_exits_2_naming_pynq(no_pynq, tmp_path, monkeypatch, capsys):
    from dpfm.cli import main

    monkeypatch.setenv("DPFM_BITSTREAM", str(board_files(tmp_path, Config(k=4))))
    rc = main(["train", "--backend", "pynq", "--task", "sum4", "--k", "4", "--epochs", "1",
               "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pynq" in err and "Traceback" not in err


# -- against a stand-in pynq: MMIO over memory, allocate with physical addresses ----------------

class _Recorded(np.ndarray):
    """A uint32 array that logs every slice it is read or written through."""

    def __setitem__(self, key, value):
        self.log.append(("set", key))
        np.ndarray.__setitem__(self.view(np.ndarray), key, value)

    def __getitem__(self, key):
        if isinstance(key, slice):
            self.log.append(("get", key))
        return np.ndarray.__getitem__(self.view(np.ndarray), key)


class FakePynq:
    """A stand-in ``pynq``: ``Overlay`` lists the engine; ``MMIO`` is memory with pynq's
    ``read``/``write``/``array``; ``allocate`` returns buffers at ``next_address``."""

    def __init__(self, config):
        self.regmap = register_map(config)
        self.memory = np.zeros(self.regmap.size // 4, dtype=np.uint32).view(_Recorded)
        self.memory.log = []
        self.calls = []                 # ("read"/"write", offset) of the MMIO's word methods
        self.buffers = []
        self.next_address = 0x1680_0000
        self.allocate_error = None
        fake = self

        class Overlay:
            def __init__(self, bitfile, download=True):
                self.ip_dict = {"dpfm": {"phys_addr": 0x4000_0000, "addr_range": fake.regmap.size}}

        class MMIO:
            def __init__(self, base_addr, length=4):
                self.array = fake.memory

            def read(self, offset=0, length=4):
                fake.calls.append(("read", offset))
                return int(np.ndarray.__getitem__(fake.memory, offset >> 2))

            def write(self, offset, data):
                fake.calls.append(("write", offset))
                np.ndarray.__setitem__(fake.memory, offset >> 2, data)

        class Buffer(np.ndarray):
            """pynq.buffer.PynqBuffer's surface: addresses, cache maintenance, freebuffer."""

            def flush(self):
                self.events.append("flush")

            def invalidate(self):
                self.events.append("invalidate")

            def freebuffer(self):
                self.events.append("free")

            @property
            def physical_address(self):
                return self.device_address

        def allocate(shape, dtype="u4", **kwargs):
            if fake.allocate_error is not None:
                raise fake.allocate_error
            buffer = np.zeros(shape, dtype=dtype).view(Buffer)
            buffer.device_address, buffer.events = fake.next_address, []
            fake.buffers.append(buffer)
            return buffer

        self.module = types.ModuleType("pynq")
        self.module.Overlay, self.module.MMIO, self.module.allocate = Overlay, MMIO, allocate


@pytest.fixture
def fake(monkeypatch):
    fake = FakePynq(CFG)
    monkeypatch.setitem(sys.modules, "pynq", fake.module)
    return fake


@pytest.fixture
def board(fake, tmp_path):
    transport = PynqTransport(CFG, board_files(tmp_path, CFG))
    yield transport
    transport.close()


def test_run_mode_from_the_build_description(fake, tmp_path):
    with PynqTransport(CFG, board_files(tmp_path / "new", CFG)) as board:
        assert board.supports_run and board.memory_window == (0, 512 << 20)
    with PynqTransport(CFG, board_files(tmp_path / "old", CFG, run_mode=False)) as old:
        assert not old.supports_run
        with pytest.raises(TransportUnavailable, match="built without run mode.*make bitstream"):
            old.allocate(1024)
    del fake.module.allocate                # a pynq before 2.5
    with PynqTransport(CFG, board_files(tmp_path / "new", CFG)) as board:
        assert not board.supports_run
        with pytest.raises(TransportUnavailable, match="no pynq.allocate"):
            board.allocate(1024)
    assert fake.buffers == []


def test_single_words_count_one_access_each(board, fake):
    status = board.regmap["STATUS"].offset
    np.ndarray.__setitem__(fake.memory, status >> 2, 0x0002)
    assert board.read(status) == 2
    board.write(board.regmap["LR_Q"].offset, -1)
    assert int(np.ndarray.__getitem__(fake.memory, board.regmap["LR_Q"].offset >> 2)) == 0xFFFFFFFF
    assert fake.calls == [("read", status), ("write", board.regmap["LR_Q"].offset)]
    assert board.bus_accesses == 2


def test_blocks_go_through_one_array_slice_each(board, fake):
    weights = board.regmap["WEIGHTS"]
    addrs = [weights.base + 4 * i for i in range(weights.length)]
    values = [(7 * i - 20) & 0xFFFFFFFF for i in range(weights.length)]
    board.write_many(addrs, values)
    # one slice for the whole window, no per-word MMIO call
    assert fake.calls == [] and fake.memory.log == [("set", slice(weights.base >> 2,
                                                                    (weights.base >> 2) + weights.length))]
    assert board.read_many(addrs) == values
    assert fake.memory.log[1:] == [("get", slice(weights.base >> 2, (weights.base >> 2) + weights.length))]
    assert board.bus_accesses == 2 * weights.length


def test_scattered_block_keeps_its_order_one_slice_per_run(board, fake):
    # Samples then two setting registers that are not neighbours: three runs, in order.
    off = {name: board.regmap[name].offset for name in ("UPDATE", "LR_Q", "RUN_TRAIN_ADDR", "RUN_VAL_ADDR")}
    samples = board.regmap["SAMPLES"]
    addrs = [samples.base, samples.base + 4, samples.base + 8, off["UPDATE"], off["LR_Q"],
             off["RUN_TRAIN_ADDR"], off["RUN_VAL_ADDR"]]
    values = [1, 2, 3, 1, 9, 0x1000_0000, 0x1000_1000]
    board.write_many(addrs, values)
    s = samples.base >> 2
    assert [k for _, k in fake.memory.log] == [
        slice(s, s + 3), slice(off["UPDATE"] >> 2, (off["LR_Q"] >> 2) + 1),
        slice(off["RUN_TRAIN_ADDR"] >> 2, (off["RUN_VAL_ADDR"] >> 2) + 1)]
    assert board.read_many(addrs) == values
    assert board.bus_accesses == 2 * len(addrs) and fake.calls == []
    with pytest.raises(ValueError, match="0x2"):
        board.write_many([2], [0])


def test_poll_run_sleeps_then_reads_once(board, fake, monkeypatch):
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    run_status = board.regmap["RUN_STATUS"].offset
    np.ndarray.__setitem__(fake.memory, run_status >> 2, (3 << 16) | 0b10)
    assert board.poll_run(0.25) == (3 << 16) | 0b10
    assert slept == [0.25] and fake.calls == [("read", run_status)] and board.bus_accesses == 1


def test_allocate_is_pynq_allocate(board, fake):
    buf = board.allocate(3000)
    (given,) = fake.buffers
    assert isinstance(buf, PynqRunBuffer) and isinstance(buf, RunBuffer)
    assert buf.words is given and buf.words.dtype == np.uint32 and buf.words.shape == (3000,)
    assert buf.address == given.physical_address == 0x1680_0000 and buf.nbytes == 12000
    buf.words[:4] = [1, 2, 3, 4]
    buf.flush()
    buf.invalidate()
    assert given.events == ["flush", "invalidate"]
    with buf:
        pass
    buf.close()                                      # idempotent: freed once
    assert given.events == ["flush", "invalidate", "free"] and buf.closed
    with pytest.raises(ValueError, match="closed"):
        buf.flush()
    assert board.bus_accesses == 0                   # the buffer is memory, not the bus


def test_allocate_takes_device_address_without_physical_address(board, fake):
    # Some pynq buffers name it device_address only.
    original = fake.module.allocate

    def allocate(shape, dtype="u4"):
        buf = original(shape, dtype)
        return types.SimpleNamespace(device_address=buf.device_address, freebuffer=lambda: None)

    fake.module.allocate = allocate
    assert board.allocate(16).address == 0x1680_0000


@pytest.mark.parametrize("address,nwords,problem", [
    (0x1680_0040, 1024, "does not start at a multiple of 4096 bytes"),
    (0xFFFF_F000, 2048, "ends above 4 GiB"),
    (0x1FFF_F000, 2048, "is not inside the DDR the engine's master reaches (0x0..0x20000000)"),
    (0x3000_0000, 1024, "is not inside the DDR the engine's master reaches (0x0..0x20000000)"),
])
def test_allocate_refuses_a_buffer_the_engine_cannot_use(board, fake, address, nwords, problem):
    fake.next_address = address
    with pytest.raises(TransportUnavailable) as e:
        board.allocate(nwords)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and problem in msg
    assert f"physical 0x{address:x}..0x{address + 4 * nwords:x}" in msg
    assert fake.buffers[-1].events == ["free"]


def test_allocate_failure_names_the_size_and_cma(board, fake):
    fake.allocate_error = RuntimeError("Failed to allocate buffer")
    with pytest.raises(TransportUnavailable) as e:
        board.allocate(3 << 20)
    msg = str(e.value)
    assert "12582912 bytes (12.0 MiB)" in msg and "Failed to allocate buffer" in msg
    assert "CMA" in msg and "docs/board.md" in msg
    with pytest.raises(ValueError, match="at least one word"):
        board.allocate(0)
