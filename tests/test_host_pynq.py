"""The PYNQ transport where there is no board: what is missing is named, exactly.

(The transport's path to a board is exercised against the Verilator model, through a
stand-in ``pynq`` module, in tests/test_host_verilator.py.)
"""

import json
import sys
import types

import pytest

from dpfm.config import Config
from dpfm.host import HardwareMismatch, TransportUnavailable
from dpfm.host.pynq import PynqTransport, check_available

CFG = Config(k=4)


@pytest.fixture
def no_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", None)      # `import pynq` raises ImportError


@pytest.fixture
def some_pynq(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynq", types.ModuleType("pynq"))


def board_files(folder, config, *, bit=True, hwh=True, info=True):
    from dpfm.boards.build import BOARDS, build_info

    folder.mkdir(exist_ok=True)
    if bit:
        (folder / "dpfm.bit").write_bytes(b"\0" * 16)
    if hwh:
        (folder / "dpfm.hwh").write_text("<hwh/>")
    if info:
        (folder / "dpfm.json").write_text(json.dumps(build_info(BOARDS["pynq-z2"], config)))
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
