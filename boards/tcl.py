"""Vivado batch script and constraints of the board build.

:func:`build_tcl` writes ``build.tcl``: a Vivado project for the board's part, a block design
(``processing_system7`` set property by property, ``proc_sys_reset``, an AXI interconnect from
``M_AXI_GP0`` to the engine's AXI4-Lite slave, a second one from the engine's AXI4 master to
``S_AXI_HP0``, which converts AXI4 to the HP port's AXI3, the engine as a module reference),
the engine's address window in the processing system's data space and DDR's in the engine's
master space (each checked: a segment missing or of the wrong size stops the build),
synthesis, implementation, bitstream, a timing check that ends the run with exit code 1 when
any slack is negative, and the outputs copied next to the script under the names
``pynq.Overlay`` looks for (``dpfm.bit`` and ``dpfm.hwh``).

The script depends on no board files and on no particular Vivado release: every IP is taken
at the newest version the running Vivado's catalogue has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["VivadoBuild", "build_tcl", "constraints_xdc", "tcl_size", "parse_tcl_size",
           "TIMING_FILE", "BD_NAME"]

BD_NAME = "system"
TIMING_FILE = "timing.txt"      # "WNS <ns>" ... lines, written by build.tcl after routing


@dataclass(frozen=True)
class VivadoBuild:
    """What ``build.tcl`` builds.

    Members
    -------
    part : str
        Vivado part, e.g. ``xc7z020clg400-1``.
    ps7_settings : tuple
        ``(title, ((property, value), ...))`` groups for ``processing_system7`` (without the
        ``CONFIG.`` prefix), applied in order.
    fclk0_mhz : int
        FCLK_CLK0 in MHz (checked against ``ps7_settings``).
    top : str
        Module referenced as the engine's cell.
    cell : str
        Block-design instance name of the engine (``pynq.Overlay`` names the IP after it).
    bus : str
        The engine's AXI4-Lite interface name on ``top``.
    base : int
        Byte address of the engine's window on ``M_AXI_GP0``.
    size : int
        Size of the window in bytes (the register map's size; a power of two).
    master : str
        The engine's AXI4 master interface name on ``top`` (run mode's memory port).
    mem_port : str
        The processing system's slave port the master reaches memory through (``S_AXI_HP0``).
    mem_segment : str
        That port's DDR segment (``HP0_DDR_LOWOCM``), mapped into the master's address space.
    mem_base, mem_size : int
        Where the DDR lies in the master's address space (a power-of-two size, aligned).
    sources : tuple of str
        Verilog files, relative to the script's folder.
    xdc : str
        Constraints file, relative to the script's folder.
    project : str
        Project name (the project lives in ``vivado/`` next to the script).
    bitstream, hwh : str
        Output names, next to the script.
    """

    part: str
    ps7_settings: tuple
    fclk0_mhz: int
    top: str
    cell: str
    bus: str
    base: int
    size: int
    master: str
    mem_port: str
    mem_segment: str
    mem_base: int
    mem_size: int
    sources: tuple
    xdc: str
    project: str = "dpfm"
    bitstream: str = "dpfm.bit"
    hwh: str = "dpfm.hwh"

    def __post_init__(self):
        if self.size <= 0 or self.size & (self.size - 1) or self.size < 4096:
            raise ValueError(f"address window size {self.size:#x} must be a power of two >= 4 KiB")
        if self.base % self.size:
            raise ValueError(f"base {self.base:#x} is not aligned to the window size {self.size:#x}")
        if self.mem_size <= 0 or self.mem_size & (self.mem_size - 1):
            raise ValueError(f"memory window size {self.mem_size:#x} must be a power of two")
        if self.mem_base % self.mem_size or self.mem_base + self.mem_size > 1 << 32:
            raise ValueError(f"memory window {self.mem_base:#x}+{self.mem_size:#x} must be aligned "
                             f"to its size and below 4 GiB")
        settings = {k: v for _, group in self.ps7_settings for k, v in group}
        if settings.get("PCW_FPGA0_PERIPHERAL_FREQMHZ") != str(self.fclk0_mhz):
            raise ValueError(f"ps7 settings give FCLK0 {settings.get('PCW_FPGA0_PERIPHERAL_FREQMHZ')} "
                             f"MHz, expected {self.fclk0_mhz}")
        port = self.mem_port.removeprefix("S_AXI_")
        if settings.get(f"PCW_USE_S_AXI_{port}") != "1":
            raise ValueError(f"ps7 settings leave {self.mem_port} off (PCW_USE_S_AXI_{port}), but "
                             f"the engine's master {self.master} reaches memory through it")


_UNITS = (("G", 30), ("M", 20), ("K", 10))


def tcl_size(size: int) -> str:
    """A byte count as Vivado writes address ranges: ``262144`` -> ``256K``."""
    for suffix, shift in _UNITS:
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift}{suffix}"
    return str(size)


def parse_tcl_size(text: str) -> int:
    """Inverse of :func:`tcl_size` (also accepts plain and ``0x`` numbers)."""
    m = re.fullmatch(r"\s*(0x[0-9a-fA-F]+|\d+)\s*([KMG]?)\s*", text)
    if not m:
        raise ValueError(f"not an address range: {text!r}")
    shift = dict(_UNITS).get(m[2], 0)
    return int(m[1], 0) << shift


def _tcl_word(value: str) -> str:
    if any(c in value for c in "{}\\"):
        raise ValueError(f"value {value!r} cannot be quoted as a Tcl word")
    return "{" + value + "}"


def _ps7_block(settings) -> str:
    out = []
    for title, group in settings:
        out.append(f"# {title}")
        out.append("set_property -dict [list \\")
        for name, value in group:
            out.append(f"    CONFIG.{name} {_tcl_word(value)} \\")
        out.append("] $ps7")
    return "\n".join(out)


_TEMPLATE = r"""# build.tcl: generated by `python -m dpfm.boards.build` (@@COMMAND@@); edit the generator, not this file.
#
# Vivado batch build of the DPFM engine for @@BOARD@@ (@@PART@@):
#   vivado -mode batch -source build.tcl
# Needs no board files. Writes, next to this script: @@BITSTREAM@@ and @@HWH@@ (the pair pynq.Overlay
# loads), @@TIMING@@, timing_summary.rpt and utilization.rpt. Exits 1 on any error and when timing
# is not met (WNS, TNS, WHS or THS below zero).

set here [file dirname [file normalize [info script]]]

# ---- parameters ---------------------------------------------------------------------------
set dpfm_part       @@PART@@
set dpfm_project    @@PROJECT@@
set dpfm_bd         @@BD@@
set dpfm_top        @@TOP@@
set dpfm_cell       @@CELL@@
set dpfm_bus        @@BUS@@
set dpfm_base       @@BASE@@
set dpfm_range      @@RANGE@@
set dpfm_master     @@MASTER@@
set dpfm_mem_port   @@MEM_PORT@@
set dpfm_mem_seg    @@MEM_SEGMENT@@
set dpfm_mem_base   @@MEM_BASE@@
set dpfm_mem_range  @@MEM_RANGE@@
set dpfm_fclk0_mhz  @@FCLK0@@
set dpfm_sources    [list @@SOURCES@@]
set dpfm_xdc        @@XDC@@
set dpfm_bitstream  @@BITSTREAM@@
set dpfm_hwh        @@HWH@@
set dpfm_timing     @@TIMING@@
# Parallel jobs for synthesis and implementation: DPFM_VIVADO_JOBS, else 4.
set dpfm_jobs 4
if {[info exists ::env(DPFM_VIVADO_JOBS)]} { set dpfm_jobs $::env(DPFM_VIVADO_JOBS) }

proc dpfm_fail {message} {
    puts "DPFM-ERROR: $message"
    exit 1
}

# Newest version of a Xilinx IP in this Vivado's catalogue, e.g. xilinx.com:ip:proc_sys_reset:5.0.
proc dpfm_ipdef {name} {
    set defs [lsort -dictionary [get_ipdefs -quiet xilinx.com:ip:${name}:*]]
    if {[llength $defs] == 0} { dpfm_fail "IP $name is not in this Vivado's catalogue" }
    return [lindex $defs end]
}

# Address ranges come back as 4K, 256K, 1M, ...
proc dpfm_bytes {text} {
    if {[regexp {^(0x[0-9a-fA-F]+|[0-9]+)([KMG]?)$} $text -> number unit]} {
        set shift [dict get {"" 0 K 10 M 20 G 30} $unit]
        return [expr {wide($number) << $shift}]
    }
    dpfm_fail "unexpected address range '$text'"
}

puts "DPFM: Vivado [version -short], part $dpfm_part"
foreach stale [list $dpfm_bitstream $dpfm_hwh $dpfm_timing] {
    file delete -force [file join $here $stale]
}

# ---- project --------------------------------------------------------------------------------
create_project -force $dpfm_project [file join $here vivado] -part $dpfm_part
set_property target_language Verilog [current_project]
set source_paths {}
foreach source $dpfm_sources { lappend source_paths [file join $here $source] }
add_files -norecurse -fileset sources_1 $source_paths
add_files -norecurse -fileset constrs_1 [file join $here $dpfm_xdc]
update_compile_order -fileset sources_1

# ---- block design ---------------------------------------------------------------------------
create_bd_design $dpfm_bd
current_bd_design $dpfm_bd

set ps7 [create_bd_cell -type ip -vlnv [dpfm_ipdef processing_system7] ps7]
@@PS7@@

create_bd_intf_port -mode Master -vlnv xilinx.com:interface:ddrx_rtl:1.0 DDR
create_bd_intf_port -mode Master -vlnv xilinx.com:display_processing_system7:fixedio_rtl:1.0 FIXED_IO
connect_bd_intf_net [get_bd_intf_ports DDR] [get_bd_intf_pins ps7/DDR]
connect_bd_intf_net [get_bd_intf_ports FIXED_IO] [get_bd_intf_pins ps7/FIXED_IO]

set rst [create_bd_cell -type ip -vlnv [dpfm_ipdef proc_sys_reset] rst_fclk0]
set interconnect_vlnv [dpfm_ipdef axi_interconnect]
# Registers: M_AXI_GP0 (AXI3) -> the engine's AXI4-Lite slave.
set interconnect [create_bd_cell -type ip -vlnv $interconnect_vlnv axi_periph]
set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {1}] $interconnect
# Run mode's memory: the engine's AXI4 master (bursts up to 256 beats) -> S_AXI_HP0 (AXI3,
# bursts up to 16); the interconnect's protocol converter splits the bursts.
set mem_interconnect [create_bd_cell -type ip -vlnv $interconnect_vlnv axi_mem]
set_property -dict [list CONFIG.NUM_SI {1} CONFIG.NUM_MI {1}] $mem_interconnect
set engine [create_bd_cell -type module -reference $dpfm_top $dpfm_cell]

connect_bd_intf_net [get_bd_intf_pins ps7/M_AXI_GP0] [get_bd_intf_pins axi_periph/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins axi_periph/M00_AXI] [get_bd_intf_pins $dpfm_cell/$dpfm_bus]
connect_bd_intf_net [get_bd_intf_pins $dpfm_cell/$dpfm_master] [get_bd_intf_pins axi_mem/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins axi_mem/M00_AXI] [get_bd_intf_pins ps7/$dpfm_mem_port]

# One clock for everything: FCLK_CLK0.
connect_bd_net [get_bd_pins ps7/FCLK_CLK0] \
    [get_bd_pins ps7/M_AXI_GP0_ACLK] \
    [get_bd_pins ps7/${dpfm_mem_port}_ACLK] \
    [get_bd_pins rst_fclk0/slowest_sync_clk] \
    [get_bd_pins axi_periph/ACLK] [get_bd_pins axi_periph/S00_ACLK] [get_bd_pins axi_periph/M00_ACLK] \
    [get_bd_pins axi_mem/ACLK] [get_bd_pins axi_mem/S00_ACLK] [get_bd_pins axi_mem/M00_ACLK] \
    [get_bd_pins $dpfm_cell/aclk]
connect_bd_net [get_bd_pins ps7/FCLK_RESET0_N] [get_bd_pins rst_fclk0/ext_reset_in]
connect_bd_net [get_bd_pins rst_fclk0/interconnect_aresetn] \
    [get_bd_pins axi_periph/ARESETN] [get_bd_pins axi_mem/ARESETN]
connect_bd_net [get_bd_pins rst_fclk0/peripheral_aresetn] \
    [get_bd_pins axi_periph/S00_ARESETN] [get_bd_pins axi_periph/M00_ARESETN] \
    [get_bd_pins axi_mem/S00_ARESETN] [get_bd_pins axi_mem/M00_ARESETN] \
    [get_bd_pins $dpfm_cell/aresetn]

# ---- address map: the engine's window, as dpfm.rtl.regmap.register_map describes it --------
assign_bd_address
set segment [get_bd_addr_segs -quiet ps7/Data/SEG_${dpfm_cell}_*]
if {[llength $segment] != 1} { dpfm_fail "expected one address segment of $dpfm_cell in ps7/Data, found '$segment'" }
set_property range $dpfm_range $segment
set_property offset $dpfm_base $segment
set got_offset [get_property offset $segment]
set got_range [get_property range $segment]
if {[expr {$got_offset}] != [expr {$dpfm_base}] || [dpfm_bytes $got_range] != [dpfm_bytes $dpfm_range]} {
    dpfm_fail "address segment is $got_offset/$got_range, expected $dpfm_base/$dpfm_range"
}
puts "DPFM: $dpfm_cell at $got_offset, range $got_range"

# ---- address map: DDR through the HP port, in the engine master's address space -------------
# The run buffer's physical address (pynq.allocate) is its bus address: DDR at the same place.
set mem_segment [get_bd_addr_segs -quiet $dpfm_cell/$dpfm_master/SEG_ps7_${dpfm_mem_seg}*]
if {[llength $mem_segment] != 1} {
    dpfm_fail "expected one address segment of ps7/$dpfm_mem_port/$dpfm_mem_seg in $dpfm_cell/$dpfm_master (run mode's DDR), found '$mem_segment': is $dpfm_mem_port enabled and connected to $dpfm_cell/$dpfm_master?"
}
set_property range $dpfm_mem_range $mem_segment
set_property offset $dpfm_mem_base $mem_segment
set got_offset [get_property offset $mem_segment]
set got_range [get_property range $mem_segment]
if {[expr {$got_offset}] != [expr {$dpfm_mem_base}] || [dpfm_bytes $got_range] != [dpfm_bytes $dpfm_mem_range]} {
    dpfm_fail "DDR segment of $dpfm_cell/$dpfm_master is $got_offset/$got_range, expected $dpfm_mem_base/$dpfm_mem_range"
}
puts "DPFM: $dpfm_cell/$dpfm_master reaches $dpfm_mem_seg at $got_offset, range $got_range"

validate_bd_design
# The PS7 rounds FCLK0 to what its PLL and dividers can make: the engine's clock must come out exact.
set fclk0 [get_property CONFIG.PCW_ACT_FPGA0_PERIPHERAL_FREQMHZ $ps7]
if {![string is double -strict $fclk0]} { dpfm_fail "FCLK0 is '$fclk0', not a frequency in MHz (expected $dpfm_fclk0_mhz)" }
if {abs($fclk0 - $dpfm_fclk0_mhz) > 0.001} { dpfm_fail "FCLK0 is $fclk0 MHz, expected $dpfm_fclk0_mhz" }
save_bd_design

# ---- synthesis, implementation, bitstream ---------------------------------------------------
set bd_file [get_files $dpfm_bd.bd]
set_property synth_checkpoint_mode None $bd_file
generate_target all $bd_file
set wrapper [make_wrapper -files $bd_file -top]
add_files -norecurse -fileset sources_1 $wrapper
set_property top ${dpfm_bd}_wrapper [get_filesets sources_1]
update_compile_order -fileset sources_1

launch_runs synth_1 -jobs $dpfm_jobs
wait_on_run synth_1
if {[get_property PROGRESS [get_runs synth_1]] ne "100%"} {
    dpfm_fail "synthesis failed: [get_property STATUS [get_runs synth_1]] (log: [get_property DIRECTORY [get_runs synth_1]]/runme.log)"
}
launch_runs impl_1 -to_step write_bitstream -jobs $dpfm_jobs
wait_on_run impl_1
if {[get_property PROGRESS [get_runs impl_1]] ne "100%"} {
    dpfm_fail "implementation failed: [get_property STATUS [get_runs impl_1]] (log: [get_property DIRECTORY [get_runs impl_1]]/runme.log)"
}

# ---- timing check ---------------------------------------------------------------------------
open_run impl_1
report_timing_summary -max_paths 10 -file [file join $here timing_summary.rpt]
report_utilization -file [file join $here utilization.rpt]
# Worst and total negative slack of setup (WNS, TNS) and hold (WHS, THS) from the routed run;
# the worst slacks fall back to the worst timing path. No worst slack = nothing constrained.
set slack [dict create]
foreach {name kind required} {WNS setup 1 TNS setup 0 WHS hold 1 THS hold 0} {
    set value [get_property -quiet STATS.$name [get_runs impl_1]]
    if {$value eq "" && $required} {
        set value [get_property -quiet SLACK [get_timing_paths -quiet -max_paths 1 -nworst 1 -$kind]]
    }
    if {$value eq ""} {
        if {$required} { dpfm_fail "no $name: the design has no constrained timing paths" }
        continue
    }
    if {![string is double -strict $value]} { dpfm_fail "$name is '$value', not a slack in ns" }
    dict set slack $name $value
}
set report [open [file join $here $dpfm_timing] w]
dict for {name value} $slack { puts $report "$name $value" }
close $report
puts "DPFM: timing $slack"
dict for {name value} $slack {
    if {$value < 0} { dpfm_fail "timing not met: $name = $value ns (see timing_summary.rpt)" }
}

# ---- outputs --------------------------------------------------------------------------------
set bits [glob -nocomplain [file join [get_property DIRECTORY [get_runs impl_1]] *.bit]]
if {[llength $bits] != 1} { dpfm_fail "expected one bitstream in impl_1, found '$bits'" }
set hwh [lindex [get_files -quiet -all -of_objects $bd_file */hw_handoff/$dpfm_bd.hwh] 0]
if {$hwh eq "" || ![file exists $hwh]} {
    set hwh [lindex [glob -nocomplain [file join $here vivado * sources_1 bd $dpfm_bd hw_handoff $dpfm_bd.hwh]] 0]
}
if {$hwh eq "" || ![file exists $hwh]} { dpfm_fail "no $dpfm_bd.hwh in the project (hw_handoff)" }
file copy -force [lindex $bits 0] [file join $here $dpfm_bitstream]
file copy -force $hwh [file join $here $dpfm_hwh]
puts "DPFM: wrote [file join $here $dpfm_bitstream] and [file join $here $dpfm_hwh]"
exit 0
"""


def build_tcl(build: VivadoBuild, *, board: str, command: str) -> str:
    """Text of ``build.tcl`` for ``build`` (``board`` and ``command`` go into its header)."""
    values = {
        "COMMAND": command, "BOARD": board, "PART": build.part, "PROJECT": build.project,
        "BD": BD_NAME, "TOP": build.top, "CELL": build.cell, "BUS": build.bus,
        "BASE": f"0x{build.base:08X}", "RANGE": tcl_size(build.size), "FCLK0": str(build.fclk0_mhz),
        "MASTER": build.master, "MEM_PORT": build.mem_port, "MEM_SEGMENT": build.mem_segment,
        "MEM_BASE": f"0x{build.mem_base:08X}", "MEM_RANGE": tcl_size(build.mem_size),
        "SOURCES": " ".join(build.sources), "XDC": build.xdc, "BITSTREAM": build.bitstream,
        "HWH": build.hwh, "TIMING": TIMING_FILE, "PS7": _ps7_block(build.ps7_settings),
    }
    text = _TEMPLATE
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.findall(r"@@\w+@@", text)
    if leftover:
        raise AssertionError(f"unfilled template fields {leftover}")
    return text


def constraints_xdc(*, board: str, fclk0_mhz: int) -> str:
    """``dpfm.xdc``: the design has no PL pins; the PS drives its clock and reset."""
    return (
        f"# dpfm.xdc: generated by dpfm.boards.build for {board}.\n"
        f"# The programmable logic uses no package pins: the engine is clocked by the processing\n"
        f"# system's FCLK_CLK0 ({fclk0_mhz} MHz; the processing_system7 IP constrains that clock\n"
        f"# itself), reached over M_AXI_GP0 and reaches DDR over S_AXI_HP0. Only bitstream\n"
        f"# settings here.\n"
        f"set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]\n"
    )
