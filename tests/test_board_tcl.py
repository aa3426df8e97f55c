"""The generated Vivado ``build.tcl``, run for real in ``tclsh`` over stub Vivado commands.

``tests/vivado_stubs.tcl`` defines every Vivado command the script calls (and nothing else: an
undefined command stops the run), logs each call with its arguments, and plays a Vivado whose
run succeeds unless the test asks for a failure. The tests check, from that log and from the
files the run leaves:

* the order of the build: project, block design, the PS7 configured as the PYNQ-Z2 has it
  (the values of :data:`dpfm.boards.pynq_z2.PS7_SETTINGS`, several of them checked again
  against PYNQ's own ``boards/Pynq-Z2/base/base.tcl``), the engine cell, the address map, the
  runs up to the bitstream, the timing check, and ``dpfm.bit``/``dpfm.hwh`` copied next to the
  script;
* run mode's memory path: S_AXI_HP0 on, the engine's AXI4 master through its own interconnect
  to it, everything on FCLK_CLK0, and HP0's DDR segment at :data:`dpfm.boards.pynq_z2.HP0_DDR`
  in the master's address space;
* the newest version of each IP the catalogue has, every pin of the engine cell a port (or
  interface) of the wrapper ``dpfm_top.v``, the hold slack taken from the worst timing path
  when the run has no STATS value;
* the failure paths, each ending the run with exit code 1, a ``DPFM-ERROR:`` line that says
  what went wrong, and no ``dpfm.bit``: a negative WNS or WHS, no address segment for the
  engine (and a segment of the wrong size), no DDR segment for its master (HP0 not connected,
  or two segments, or one of the wrong size), an FCLK0 the PS cannot make exactly, an IP
  missing from the catalogue, not exactly one bitstream;
* the same script driven by :func:`dpfm.boards.build.run_vivado` and by ``python -m
  dpfm.boards.build`` (:func:`dpfm.boards.build.main`) through a ``vivado`` on PATH that is a
  shell script around ``tclsh`` and records its arguments and folder.

These stubs are the project's only test double of Vivado. ``tclsh`` is Debian's ``tcl``;
``make test`` installs it (``make systools``). Without it these tests fail rather than skip
(the ``tclsh`` fixture, ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from dpfm.boards import build as board_build
from dpfm.boards.pynq_z2 import ENGINE_BASE, FCLK0_HZ, HP0_DATA_WIDTH, HP0_DDR, PS7_SETTINGS
from dpfm.boards.tcl import parse_tcl_size, tcl_size
from dpfm.boards.wrapper import AXI_PREFIX, MASTER_PREFIX, TOP_NAME
from dpfm.config import Config
from dpfm.rtl.regmap import register_map

from pynq_z2_base import PYNQ_BASE_PS7, run_mode_engine

STUBS = Path(__file__).with_name("vivado_stubs.tcl")
PART = "xc7z020clg400-1"
SMALL = Config(k=2, net=(2, 2, 1), activations=("sigmoid", "linear"), batch=1)
SMALL_ARGS = ["--k", "2", "--net", "2,2,1", "--batch", "1"]
DEFAULT_SLACK = {"WNS": 0.412, "TNS": 0.0, "WHS": 0.051, "THS": 0.0}    # the stubs' defaults
# The IPs the catalogue is asked for, once each, and the cells made of them.
IPDEFS = ["processing_system7", "proc_sys_reset", "axi_interconnect"]
IPS = [("processing_system7", "ps7"), ("proc_sys_reset", "rst_fclk0"),
       ("axi_interconnect", "axi_periph"), ("axi_interconnect", "axi_mem")]
PS7 = "/ps7"
SEGMENT = "/ps7/Data/SEG_dpfm_reg0"
MEM_SEGMENT = f"/dpfm/{MASTER_PREFIX}/SEG_ps7_HP0_DDR_LOWOCM"


# -- running build.tcl ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree_template(tmp_path_factory):
    """A build tree of a small Config (``build.tcl``, the Verilog it adds, ``dpfm.xdc``)."""
    return board_build.write_tree(SMALL, tmp_path_factory.mktemp("template"), board="pynq-z2",
                                  engine=run_mode_engine(SMALL))


class Run:
    """One run of ``build.tcl`` in ``tclsh``: exit code, output, call log and the tree."""

    def __init__(self, done: subprocess.CompletedProcess, calls: list, out: Path):
        self.code = done.returncode
        self.stdout = done.stdout
        self.stderr = done.stderr
        self.calls = calls
        self.out = out

    def errors(self) -> list[str]:
        """The script's own failure lines, without their ``DPFM-ERROR: `` prefix."""
        return [line.removeprefix("DPFM-ERROR: ") for line in self.stdout.splitlines()
                if line.startswith("DPFM-ERROR: ")]

    def named(self, command: str) -> list[list[str]]:
        """Arguments of every call of ``command``, in call order."""
        return [c[1:] for c in self.calls if c[0] == command]

    def index(self, *prefix: str) -> int:
        """Position of the first call that starts with ``prefix`` (fails when there is none)."""
        for i, call in enumerate(self.calls):
            if tuple(call[:len(prefix)]) == prefix:
                return i
        raise AssertionError(f"build.tcl never called {' '.join(prefix)}")

    def properties(self, obj: str) -> list[tuple[str, str]]:
        """``(NAME, value)`` of each property set on ``obj``, in the order they were set."""
        return [(c[2], c[3]) for c in self.calls if c[0] == "property" and c[1] == obj]


def _unescape(word: str) -> str:
    out, i = [], 0
    while i < len(word):
        if word[i] == "\\" and i + 1 < len(word):
            out.append({"\\": "\\", "t": "\t", "n": "\n"}[word[i + 1]])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out)


@pytest.fixture
def run_build(tclsh, tree_template, tmp_path):
    """Runs a fresh copy of the tree's ``build.tcl`` in ``tclsh`` over the stubs.

    Keyword arguments become the stubs' ``STUB_*`` environment variables (``wns=-0.25`` sets
    ``STUB_WNS``). ``stale=True`` leaves a ``dpfm.bit``/``dpfm.hwh`` of an earlier build in the
    tree first; ``prepare(out)`` may change the copied tree before the run.
    """

    def run(*, stale: bool = False, prepare=None, **stub) -> Run:
        out = tmp_path / "tree"
        shutil.copytree(tree_template.out, out)
        if prepare is not None:
            prepare(out)
        if stale:
            (out / "dpfm.bit").write_text("an earlier bitstream\n")
            (out / "dpfm.hwh").write_text("an earlier handoff\n")
        log = tmp_path / "calls.log"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STUB_") and k != "DPFM_VIVADO_JOBS"}
        env["STUB_LOG"] = str(log)
        env.update({f"STUB_{k.upper()}": str(v) for k, v in stub.items()})
        done = subprocess.run([tclsh, str(STUBS), "build.tcl"], cwd=out, env=env,
                              capture_output=True, text=True, timeout=60)
        calls = [[_unescape(w) for w in line.split("\t")]
                 for line in log.read_text().splitlines() if line]
        return Run(done, calls, out)

    return run


# -- the build ------------------------------------------------------------------------------

def test_tcl_build_sequence(run_build):
    run = run_build(stale=True)
    assert run.code == 0, run.stdout + run.stderr
    assert run.errors() == [] and run.stderr == ""

    # Milestones in the order a build must pass them.
    milestones = [
        ("file", "delete", "-force", str(run.out / "dpfm.bit")),
        ("create_project",),
        ("add_files", "-norecurse", "-fileset", "sources_1"),
        ("create_bd_design", "system"),
        ("create_bd_cell", "-type", "ip", "-vlnv", "xilinx.com:ip:processing_system7:5.10", "ps7"),
        ("set_property", "-dict"),
        ("create_bd_cell", "-type", "module", "-reference", TOP_NAME, "dpfm"),
        ("connect_bd_intf_net", "/axi_periph/M00_AXI", f"/dpfm/{AXI_PREFIX}"),
        ("connect_bd_intf_net", f"/dpfm/{MASTER_PREFIX}", "/axi_mem/S00_AXI"),
        ("connect_bd_intf_net", "/axi_mem/M00_AXI", "/ps7/S_AXI_HP0"),
        ("assign_bd_address",),
        ("set_property", "range", tcl_size(register_map(SMALL).size), SEGMENT),
        ("set_property", "offset", f"0x{ENGINE_BASE:08X}", SEGMENT),
        ("set_property", "range", tcl_size(HP0_DDR[1]), MEM_SEGMENT),
        ("set_property", "offset", f"0x{HP0_DDR[0]:08X}", MEM_SEGMENT),
        ("validate_bd_design",),
        ("get_property", "CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ", PS7),
        ("save_bd_design",),
        ("generate_target", "all"),
        ("make_wrapper",),
        ("launch_runs", "synth_1"),
        ("wait_on_run", "synth_1"),
        ("launch_runs", "impl_1", "-to_step", "write_bitstream"),
        ("wait_on_run", "impl_1"),
        ("open_run", "impl_1"),
        ("report_timing_summary",),
        ("get_property", "-quiet", "STATS.WNS", "impl_1"),
        ("file", "copy", "-force"),
        ("exit", "0"),
    ]
    positions = [run.index(*m) for m in milestones]
    assert positions == sorted(positions), [m for _, m in sorted(zip(positions, milestones))]
    assert run.calls[-1] == ["exit", "0"]

    # The project: the board's part, the two Verilog sources and the constraints.
    (project,) = run.named("create_project")
    assert project == ["-force", "dpfm", str(run.out / "vivado"), "-part", PART]
    sources = [c[-1] for c in run.named("add_files")]
    assert sources[:2] == [f"{run.out / 'dpfm_engine.v'} {run.out / 'dpfm_top.v'}",
                           str(run.out / "dpfm.xdc")]

    # The bitstream of impl_1 and the block design's hardware handoff, copied side by side.
    copies = run.named("file")
    copies = [c[2:] for c in copies if c[0] == "copy"]
    bit_src = run.out / "vivado" / "dpfm.runs" / "impl_1" / "system_wrapper.bit"
    hwh_src = run.out / "vivado" / "dpfm.gen" / "sources_1" / "bd" / "system" / "hw_handoff" / "system.hwh"
    assert copies == [[str(bit_src), str(run.out / "dpfm.bit")],
                      [str(hwh_src), str(run.out / "dpfm.hwh")]]
    assert (run.out / "dpfm.bit").read_text() == "stub bitstream\n"
    assert (run.out / "dpfm.hwh").read_text() == '<EDKSYSTEM stub="hwh"/>\n'
    assert board_build.read_timing(run.out / "timing.txt") == DEFAULT_SLACK
    # The run has every STATS slack: no timing path is asked for.
    assert not run.named("get_timing_paths")
    assert (run.out / "timing_summary.rpt").is_file() and (run.out / "utilization.rpt").is_file()
    assert f"DPFM: wrote {run.out / 'dpfm.bit'} and {run.out / 'dpfm.hwh'}" in run.stdout


def test_tcl_ps7_is_the_pynq_z2(run_build):
    run = run_build()
    assert run.code == 0, run.stdout
    ps7 = run.properties(PS7)
    # Every setting of PS7_SETTINGS, once, in its order (the DDR part becomes "Custom" before
    # its geometry is set), and nothing else.
    expected = [(f"CONFIG.{k}", v) for _, group in PS7_SETTINGS for k, v in group]
    assert ps7 == expected
    got = {k.removeprefix("CONFIG."): v for k, v in ps7}
    assert {k: got.get(k) for k in PYNQ_BASE_PS7} == PYNQ_BASE_PS7
    assert got["PCW_FPGA0_PERIPHERAL_FREQMHZ"] == str(FCLK0_HZ // 1_000_000)
    # The engine's port is on, the ports it does not use are off.
    assert got["PCW_FPGA_FCLK0_ENABLE"] == "1" and got["PCW_EN_RST0_PORT"] == "1"
    assert [got[f"PCW_FPGA_FCLK{i}_ENABLE"] for i in (1, 2, 3)] == ["0", "0", "0"]


@pytest.mark.parametrize("catalogue", ["1.10 1.9", "1.9 1.10 1.2", "5.9 5.10"])
def test_tcl_newest_ip_of_the_catalogue(run_build, catalogue):
    # Dictionary order, whatever order the catalogue lists them in: 1.10 after 1.9.
    run = run_build(ipdefs=catalogue)
    assert run.code == 0, run.stdout + run.stderr
    newest = "5.10" if "5.10" in catalogue else "1.10"
    assert run.named("get_ipdefs") == [["-quiet", f"xilinx.com:ip:{name}:*"] for name in IPDEFS]
    assert [c for c in run.named("create_bd_cell") if c[:2] == ["-type", "ip"]] == \
        [["-type", "ip", "-vlnv", f"xilinx.com:ip:{name}:{newest}", cell] for name, cell in IPS]


def test_tcl_ip_missing_from_catalogue_fails(run_build):
    run = run_build(ipdefs="")
    _stopped_before_outputs(run)
    assert run.errors() == ["IP processing_system7 is not in this Vivado's catalogue"]


def test_tcl_engine_cell_and_address_map(run_build, tree_template):
    run = run_build()
    assert run.code == 0, run.stdout
    # The engine is a module reference to the wrapper, which the project's sources define.
    cells = run.named("create_bd_cell")
    assert [c for c in cells if "-reference" in c] == [["-type", "module", "-reference", TOP_NAME, "dpfm"]]
    assert {c[-1] for c in cells} == {"ps7", "rst_fclk0", "axi_periph", "axi_mem", "dpfm"}
    # Its clock, reset and AXI4-Lite port.
    nets = run.named("connect_bd_net")
    assert any(n[0] == "/ps7/FCLK_CLK0" and "/dpfm/aclk" in n for n in nets)
    assert any(n[0] == "/rst_fclk0/peripheral_aresetn" and "/dpfm/aresetn" in n for n in nets)
    assert ["/ps7/M_AXI_GP0", "/axi_periph/S00_AXI"] in run.named("connect_bd_intf_net")
    # The address map: after assign_bd_address, the engine's one segment in the PS's data
    # space gets the host's base address and the register map's size.
    assert run.index("assign_bd_address") < run.index("get_bd_addr_segs")
    assert run.named("get_bd_addr_segs")[0] == ["-quiet", "ps7/Data/SEG_dpfm_*"]
    segment = dict(run.properties(SEGMENT))
    assert int(segment["OFFSET"], 16) == ENGINE_BASE
    assert parse_tcl_size(segment["RANGE"]) == register_map(SMALL).size
    info = board_build.load_build_info(tree_template.info)[0]
    assert (info["base_address"], info["address_range"]) == (ENGINE_BASE, register_map(SMALL).size)
    assert f"DPFM: dpfm at 0x{ENGINE_BASE:08X}, range {segment['RANGE']}" in run.stdout


def test_tcl_engine_pins_are_ports_of_the_wrapper(run_build):
    # The stubs give the module reference the ports of dpfm_top and the interfaces its
    # X_INTERFACE_INFO attributes name, and refuse any other pin of the cell.
    run = run_build()
    assert run.code == 0, run.stdout + run.stderr
    pins = {c[-1] for c in run.named("get_bd_pins") if c[-1].startswith("dpfm/")}
    assert pins == {"dpfm/aclk", "dpfm/aresetn"}
    intf = {c[-1] for c in run.named("get_bd_intf_pins") if c[-1].startswith("dpfm/")}
    assert intf == {f"dpfm/{AXI_PREFIX}", f"dpfm/{MASTER_PREFIX}"}


def test_tcl_master_reaches_ddr_through_hp0(run_build, tree_template):
    run = run_build()
    assert run.code == 0, run.stdout + run.stderr
    # The PS7's HP0 on, at the engine's data width.
    ps7 = dict(run.properties(PS7))
    assert ps7["CONFIG.PCW_USE_S_AXI_HP0"] == "1"
    assert ps7["CONFIG.PCW_S_AXI_HP0_DATA_WIDTH"] == str(HP0_DATA_WIDTH) == "32"
    # The master -> its own 1x1 interconnect (AXI4 -> AXI3) -> S_AXI_HP0.
    assert dict(run.properties("/axi_mem")) == {"CONFIG.NUM_SI": "1", "CONFIG.NUM_MI": "1"}
    nets = run.named("connect_bd_intf_net")
    assert [f"/dpfm/{MASTER_PREFIX}", "/axi_mem/S00_AXI"] in nets
    assert ["/axi_mem/M00_AXI", "/ps7/S_AXI_HP0"] in nets
    # One clock: FCLK_CLK0 drives the HP port, the interconnect and the engine; the
    # interconnect's resets come from the same proc_sys_reset as the engine's.
    (clock,) = [n for n in run.named("connect_bd_net") if n[0] == "/ps7/FCLK_CLK0"]
    assert {"/ps7/S_AXI_HP0_ACLK", "/axi_mem/ACLK", "/axi_mem/S00_ACLK", "/axi_mem/M00_ACLK",
            "/dpfm/aclk"} <= set(clock)
    resets = {n[0]: set(n[1:]) for n in run.named("connect_bd_net") if n[0].startswith("/rst_fclk0/")}
    assert "/axi_mem/ARESETN" in resets["/rst_fclk0/interconnect_aresetn"]
    assert {"/axi_mem/S00_ARESETN", "/axi_mem/M00_ARESETN", "/dpfm/aresetn"} <= \
        resets["/rst_fclk0/peripheral_aresetn"]
    # HP0's DDR segment in the master's address space: the whole 512 MiB at 0, after the
    # engine's own window, and the same window in dpfm.json for the host.
    assert run.named("get_bd_addr_segs")[1] == ["-quiet", f"dpfm/{MASTER_PREFIX}/SEG_ps7_HP0_DDR_LOWOCM*"]
    segment = dict(run.properties(MEM_SEGMENT))
    assert (int(segment["OFFSET"], 16), parse_tcl_size(segment["RANGE"])) == HP0_DDR == (0, 512 << 20)
    info = board_build.load_build_info(tree_template.info)[0]
    assert info["run_mode"] == {"master": MASTER_PREFIX, "port": "S_AXI_HP0",
                                "memory_base": HP0_DDR[0], "memory_range": HP0_DDR[1]}
    assert f"DPFM: dpfm/{MASTER_PREFIX} reaches HP0_DDR_LOWOCM at 0x00000000, range 512M" in run.stdout


@pytest.mark.parametrize("pattern,replacement,message", [
    (r"wire(\s+)aclk,", r"wire\1clk,", "no port aclk on module reference /dpfm"),
    (r"wire(\s+)aresetn,", r"wire\1aresetn_i,", "no port aresetn on module reference /dpfm"),
    (rf"(aximm:1\.0 ){AXI_PREFIX} ", r"\1s_axil ",
     f"no interface {AXI_PREFIX} on module reference /dpfm"),
    (rf"(aximm:1\.0 ){MASTER_PREFIX} ", r"\1m_axi_mem ",
     f"no interface {MASTER_PREFIX} on module reference /dpfm"),
])
def test_tcl_engine_pin_not_on_the_wrapper_fails(run_build, pattern, replacement, message):
    def rename(out: Path):
        top = out / "dpfm_top.v"
        text, count = re.subn(pattern, replacement, top.read_text())
        assert count >= 1, pattern
        top.write_text(text)

    run = run_build(prepare=rename)
    assert run.code == 1, run.stdout + run.stderr
    assert message in run.stderr
    assert not run.named("launch_runs") and not (run.out / "dpfm.bit").exists()


# -- failure paths --------------------------------------------------------------------------

def _stopped_before_outputs(run: Run):
    """The run failed with exit code 1 and left no bitstream or handoff next to the script."""
    assert run.code == 1, run.stdout + run.stderr
    assert run.calls[-1] == ["exit", "1"]
    assert not (run.out / "dpfm.bit").exists() and not (run.out / "dpfm.hwh").exists()
    assert not [c for c in run.named("file") if c[0] == "copy"]


def test_tcl_negative_wns_fails(run_build):
    run = run_build(wns="-0.250", tns="-3.125", stale=True)
    _stopped_before_outputs(run)
    assert run.errors() == ["timing not met: WNS = -0.250 ns (see timing_summary.rpt)"]
    # The slacks are still written for the Python side to report.
    assert board_build.read_timing(run.out / "timing.txt")["WNS"] == -0.25


def test_tcl_negative_hold_slack_fails(run_build):
    run = run_build(whs="-0.020")
    _stopped_before_outputs(run)
    assert run.errors() == ["timing not met: WHS = -0.020 ns (see timing_summary.rpt)"]


@pytest.mark.parametrize("path_slack", ["0.031", "-0.020"])
def test_tcl_hold_slack_from_timing_paths(run_build, path_slack):
    # A run without a STATS.WHS value falls back to the worst hold path's slack.
    run = run_build(whs="", hold_slack=path_slack)
    assert run.named("get_timing_paths") == [["-quiet", "-max_paths", "1", "-nworst", "1", "-hold"]]
    assert board_build.read_timing(run.out / "timing.txt") == {**DEFAULT_SLACK, "WHS": float(path_slack)}
    if path_slack.startswith("-"):
        _stopped_before_outputs(run)
        assert run.errors() == [f"timing not met: WHS = {path_slack} ns (see timing_summary.rpt)"]
    else:
        assert run.code == 0, run.stdout + run.stderr


def test_tcl_no_hold_slack_at_all_fails(run_build):
    run = run_build(whs="", hold_slack="")
    _stopped_before_outputs(run)
    assert run.errors() == ["no WHS: the design has no constrained timing paths"]


def test_tcl_unreadable_slack_fails(run_build):
    # Tcl's `<` compares words as strings: "N/A" < 0 is false, and would have passed.
    run = run_build(wns="N/A")
    _stopped_before_outputs(run)
    assert run.errors() == ["WNS is 'N/A', not a slack in ns"]


@pytest.mark.parametrize("count,found", [(0, ""), (2, f"{SEGMENT} /ps7/Data/SEG_dpfm_reg1")])
def test_tcl_address_segment_missing_fails(run_build, count, found):
    run = run_build(segments=count)
    _stopped_before_outputs(run)
    assert run.errors() == [f"expected one address segment of dpfm in ps7/Data, found '{found}'"]
    assert not run.named("launch_runs")


_NO_MEM_SEGMENT = (f"expected one address segment of ps7/S_AXI_HP0/HP0_DDR_LOWOCM in dpfm/{MASTER_PREFIX} "
                   f"(run mode's DDR), found '{{found}}': is S_AXI_HP0 enabled and connected to "
                   f"dpfm/{MASTER_PREFIX}?")


@pytest.mark.parametrize("count,found", [(0, ""), (2, f"{MEM_SEGMENT} {MEM_SEGMENT}_1")])
def test_tcl_memory_segment_missing_fails(run_build, count, found):
    run = run_build(mem_segments=count)
    _stopped_before_outputs(run)
    assert run.errors() == [_NO_MEM_SEGMENT.format(found=found)]
    assert not run.named("launch_runs")


@pytest.mark.parametrize("pattern,replacement", [
    # HP0 left off in the PS7 (Vivado then has no HP0_DDR_LOWOCM to map) ...
    (r"CONFIG\.PCW_USE_S_AXI_HP0 \{1\}", "CONFIG.PCW_USE_S_AXI_HP0 {0}"),
    # ... or the interconnect not joined to it.
    (r"connect_bd_intf_net \[get_bd_intf_pins axi_mem/M00_AXI\] \[get_bd_intf_pins ps7/\$dpfm_mem_port\]\n", ""),
], ids=["hp0-off", "hp0-unconnected"])
def test_tcl_memory_segment_missing_when_hp0_is_not_reached(run_build, pattern, replacement):
    def edit(out: Path):
        tcl = out / "build.tcl"
        text, count = re.subn(pattern, replacement, tcl.read_text())
        assert count == 1, pattern
        tcl.write_text(text)

    run = run_build(prepare=edit)
    _stopped_before_outputs(run)
    assert run.errors() == [_NO_MEM_SEGMENT.format(found="")]


def test_tcl_memory_segment_wrong_range_fails(run_build):
    run = run_build(mem_segment_range="256M")
    _stopped_before_outputs(run)
    assert run.errors() == [f"DDR segment of dpfm/{MASTER_PREFIX} is 0x00000000/256M, expected "
                            f"0x00000000/512M"]
    assert not run.named("launch_runs")


def test_tcl_address_segment_wrong_range_fails(run_build):
    run = run_build(segment_range="4K")
    _stopped_before_outputs(run)
    size = register_map(SMALL).size
    assert run.errors() == [f"address segment is 0x{ENGINE_BASE:08X}/4K, expected "
                            f"0x{ENGINE_BASE:08X}/{size >> 10}K"]
    assert not run.named("launch_runs")


@pytest.mark.parametrize("actual,message", [
    ("90.909088", "FCLK0 is 90.909088 MHz, expected 100"),
    ("100.100000", "FCLK0 is 100.100000 MHz, expected 100"),
    ("unknown", "FCLK0 is 'unknown', not a frequency in MHz (expected 100)"),
])
def test_tcl_wrong_fclk0_fails(run_build, actual, message):
    run = run_build(fclk0_act=actual)
    _stopped_before_outputs(run)
    assert run.errors() == [message]
    assert not run.named("launch_runs")


def test_tcl_fclk0_within_rounding_passes(run_build):
    run = run_build(fclk0_act="100.000500")
    assert run.code == 0, run.stdout


@pytest.mark.parametrize("count", [0, 2])
def test_tcl_not_one_bitstream_fails(run_build, count):
    run = run_build(bitstreams=count, stale=True)
    _stopped_before_outputs(run)
    bits = sorted(str(p) for p in (run.out / "vivado" / "dpfm.runs" / "impl_1").glob("*.bit"))
    assert len(bits) == count
    (error,) = run.errors()
    found = re.fullmatch(r"expected one bitstream in impl_1, found '(.*)'", error)
    assert found and sorted(found.group(1).split()) == bits, error


# -- through run_vivado ---------------------------------------------------------------------

def _vivado_over_tclsh(path: Path, tclsh: str) -> Path:
    """A ``vivado`` that runs ``-source SCRIPT`` in tclsh over the stubs, output to ``-log``
    and then, as Vivado's console, to stdout.

    Each call writes its folder and then its arguments, one a line, to ``argv`` next to it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        "# vivado -mode batch -source SCRIPT -log LOG ...: SCRIPT in tclsh, output to LOG and stdout\n"
        '{ pwd -P; printf "%s\\n" "$@"; } >"$(dirname "$0")/argv"\n'
        'while [ $# -gt 0 ]; do case "$1" in -source) src=$2; shift;; -log) log=$2; shift;; esac; shift; done\n'
        f'"{tclsh}" "{STUBS}" "$src" >"$log" 2>&1; code=$?\n'
        'cat "$log"; exit $code\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_run_vivado_over_tclsh(tclsh, tmp_path, monkeypatch):
    tree = board_build.write_tree(SMALL, tmp_path / "tree", board="pynq-z2",
                                  engine=run_mode_engine(SMALL))
    vivado = _vivado_over_tclsh(tmp_path / "bin" / "vivado", tclsh)
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "calls.log"))
    assert board_build.run_vivado(tree, str(vivado), jobs=2, quiet=True)["WNS"] == 0.412
    assert "launch_runs\tsynth_1\t-jobs\t2" in (tmp_path / "calls.log").read_text()
    assert tree.bitstream.is_file() and tree.hwh.is_file()

    monkeypatch.setenv("STUB_WNS", "-1.5")
    with pytest.raises(board_build.BuildFailed, match=r"timing not met: WNS = -1.5 ns"):
        board_build.run_vivado(tree, str(vivado), quiet=True)
    assert not tree.bitstream.exists()

    monkeypatch.delenv("STUB_WNS")
    monkeypatch.setenv("STUB_BITSTREAMS", "0")
    with pytest.raises(board_build.BuildFailed, match=r"expected one bitstream in impl_1, found ''"):
        board_build.run_vivado(tree, str(vivado), quiet=True)
    assert not tree.bitstream.exists()


@pytest.fixture
def vivado_on_path(tclsh, tmp_path, monkeypatch):
    """The ``vivado`` over tclsh as the first ``vivado`` on PATH; the stubs' log in calls.log."""
    vivado = _vivado_over_tclsh(tmp_path / "bin" / "vivado", tclsh)
    for name in [*(k for k in os.environ if k.startswith("STUB_")), "VIVADO",
                 "AMARANTH_ENV_VIVADO", "DPFM_VIVADO_JOBS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(vivado.parent), os.environ.get("PATH", "")]))
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "calls.log"))
    # main() builds the board's engine itself: with its run-mode master.
    monkeypatch.setattr(board_build, "board_engine", run_mode_engine)
    return vivado


def _last_call(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()[-1].split("\t")


def test_main_builds_over_tclsh(vivado_on_path, tmp_path, capfd):
    out = tmp_path / "pynq-z2"
    assert board_build.main([*SMALL_ARGS, "--out", str(out), "--quiet"]) == 0
    printed = capfd.readouterr()
    assert f"built {out / 'dpfm.bit'} and {out / 'dpfm.hwh'}" in printed.out and printed.err == ""
    # --quiet: Vivado's console stays out of the output (it is in the log).
    assert "DPFM: wrote" not in printed.out and "DPFM: wrote" in (out / "vivado.log").read_text()
    # Vivado in batch mode on build.tcl, run in the tree.
    cwd, *argv = (vivado_on_path.parent / "argv").read_text().splitlines()
    assert cwd == str(out.resolve())
    assert argv[:4] == ["-mode", "batch", "-source", "build.tcl"]
    assert board_build.load_build_info(out / "dpfm.json")[1] == SMALL
    assert (out / "dpfm.bit").read_text() == "stub bitstream\n"
    assert (out / "dpfm.hwh").read_text() == '<EDKSYSTEM stub="hwh"/>\n'
    assert board_build.read_timing(out / "timing.txt") == DEFAULT_SLACK
    assert _last_call(tmp_path) == ["exit", "0"]


def test_main_timing_failure_over_tclsh(vivado_on_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STUB_WNS", "-0.250")
    out = tmp_path / "pynq-z2"
    assert board_build.main([*SMALL_ARGS, "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "timing not met: WNS = -0.250 ns" in err[0], err
    assert not (out / "dpfm.bit").exists() and not (out / "dpfm.hwh").exists()
    assert _last_call(tmp_path) == ["exit", "1"]
