"""Build the DPFM engine for a board: the Vivado build tree, and Vivado itself when it is there.

::

    python -m dpfm.boards.build [--board pynq-z2] [--k 16] [--net 4,5,5,1] [--act A,A,...]
                                [--batch 10] [--lanes 1] [--config CONFIG.json]
                                [--out build/pynq-z2] [--vivado PATH] [--jobs N] [--tree-only]
    python -m dpfm.boards.build --estimate [the same Config options] [--timing] [--json FILE]

writes into ``--out``:

``dpfm_engine.v``
    the engine (:class:`dpfm.rtl.engine.Engine`) for the Config, from Amaranth;
``dpfm_top.v``
    the Vivado-facing wrapper (:mod:`dpfm.boards.wrapper`): AXI4-Lite slave ``s_axi``, AXI4
    master ``m_axi`` (run mode), ``aclk``, ``aresetn``;
``build.tcl``, ``dpfm.xdc``
    the Vivado batch build (:mod:`dpfm.boards.tcl`);
``dpfm.json``
    what the host needs next to the bitstream: board, base address, Config, Config hash, the
    register map, and ``run_mode``: the memory the engine's master reaches (the DDR window of
    ``S_AXI_HP0``);

then runs ``vivado -mode batch -source build.tcl`` there (log ``vivado.log``) and checks that
``dpfm.bit`` and ``dpfm.hwh`` were written and timing was met.

Vivado is the ``--vivado`` executable; else the ``vivado`` found after sourcing the settings
script named by ``AMARANTH_ENV_VIVADO`` (Amaranth's convention, e.g. ``.../settings64.sh``);
else ``$VIVADO`` or ``vivado`` on ``PATH``.

Exit codes: 0 built (or tree written, with ``--tree-only``); 1 Vivado ran and failed (the
reason in one line, the details in ``vivado.log``); 2 bad options, an engine the wrapper cannot
wire (no run-mode master ``m_axi``; nothing written), or no Vivado: the tree is written and one
line on stderr says how to finish on a machine that has Vivado.

``--estimate`` (``make synth``) builds nothing: it runs the Yosys ``synth_xilinx`` estimate of
the same design (:func:`estimate_design`) and prints LUT, FF, DSP48E1 and BRAM36 against the
XC7Z020 (exit 1 when Yosys fails, 2 when there is none). ``--timing`` adds the static timing
ESTIMATE of the engine's netlist (:mod:`dpfm.rtl.timing`) to the output and the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dpfm
from dpfm.config import Config, ConfigError
from dpfm.files import write_json
from dpfm.rtl import synth
from dpfm.rtl.engine import Engine
from dpfm.rtl.regmap import Resp, register_map
from dpfm.toolchain import component_verilog

from .pynq_z2 import (ENGINE_BASE, FCLK0_HZ, GP0_WINDOW, HP0_DDR, PS7_SETTINGS, PynqZ2Platform,
                      vivado_part)
from .tcl import TIMING_FILE, VivadoBuild, build_tcl, constraints_xdc
from .wrapper import AXI_PREFIX, ENGINE_NAME, MASTER_PREFIX, TOP_NAME, WrapperError, top_verilog

__all__ = ["Board", "BOARDS", "BuildTree", "BuildFailed", "VivadoMissing", "write_tree",
           "find_vivado", "run_vivado", "build_info", "load_build_info", "estimate_design", "board_engine",
           "main"]

PROG = "dpfm.boards.build"
# Block-design instance of the engine: pynq.Overlay exposes it as ``overlay.dpfm``.
ENGINE_CELL = "dpfm"
BUILD_INFO = "dpfm.json"


@dataclass(frozen=True)
class Board:
    """A board the engine can be built for.

    Members
    -------
    name : str
        ``--board`` value and default output folder ``build/<name>``.
    platform : type
        Its Amaranth platform (device, package, speed give the Vivado part).
    ps7_settings : tuple
        ``processing_system7`` configuration (see :data:`dpfm.boards.pynq_z2.PS7_SETTINGS`).
    fclk0_hz : int
        Engine clock.
    engine_base : int
        Byte address of the engine's window on ``M_AXI_GP0``.
    gp0_window : (int, int)
        ``[start, end)`` of the addresses ``M_AXI_GP0`` decodes.
    mem_port, mem_segment : str
        The processing system's slave port the engine's AXI4 master reaches DDR through, and
        that port's DDR segment.
    mem_window : (int, int)
        ``(base, size)`` of the DDR in the master's address space.
    """

    name: str
    platform: type
    ps7_settings: tuple
    fclk0_hz: int
    engine_base: int
    gp0_window: tuple
    mem_port: str
    mem_segment: str
    mem_window: tuple

    @property
    def part(self) -> str:
        return vivado_part(self.platform)


BOARDS = {
    "pynq-z2": Board("pynq-z2", PynqZ2Platform, PS7_SETTINGS, FCLK0_HZ, ENGINE_BASE, GP0_WINDOW,
                     "S_AXI_HP0", "HP0_DDR_LOWOCM", HP0_DDR),
}


class BuildFailed(RuntimeError):
    """Vivado ran and did not produce a bitstream that meets timing (message: one line)."""


class VivadoMissing(RuntimeError):
    """No Vivado to run (message: what was looked for)."""


@dataclass(frozen=True)
class BuildTree:
    """The files :func:`write_tree` wrote (all in ``out``)."""

    out: Path
    engine_verilog: Path
    top_verilog: Path
    tcl: Path
    xdc: Path
    info: Path
    bitstream: Path
    hwh: Path
    log: Path
    timing: Path

    def finish_command(self) -> str:
        """The command that finishes the build on a machine with Vivado."""
        return f"cd {shlex.quote(str(self.out))} && vivado -mode batch -source {self.tcl.name}"


def _write(path: Path, text: str):
    # Leave current files alone: make-style rebuild checks and editors stay quiet.
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


def vivado_build(board: Board, config: Config) -> VivadoBuild:
    """What ``build.tcl`` builds for ``board`` and ``config``."""
    regmap = register_map(config)
    start, end = board.gp0_window
    if not (start <= board.engine_base and board.engine_base + regmap.size <= end):
        raise ValueError(f"engine window {board.engine_base:#x}+{regmap.size:#x} is outside "
                         f"M_AXI_GP0's {start:#x}..{end:#x}")
    return VivadoBuild(
        part=board.part, ps7_settings=board.ps7_settings, fclk0_mhz=board.fclk0_hz // 1_000_000,
        top=TOP_NAME, cell=ENGINE_CELL, bus=AXI_PREFIX, base=board.engine_base, size=regmap.size,
        master=MASTER_PREFIX, mem_port=board.mem_port, mem_segment=board.mem_segment,
        mem_base=board.mem_window[0], mem_size=board.mem_window[1], sources=(f"{ENGINE_NAME}.v", f"{TOP_NAME}.v"), xdc="dpfm.xdc")


def build_info(board: Board, config: Config) -> dict:
    """Contents of ``dpfm.json``: what the host checks and uses next to ``dpfm.bit``."""
    regmap = register_map(config)
    build = vivado_build(board, config)
    return {
        "generator": f"dpfm {dpfm.__version__} ({PROG})",
        "board": board.name,
        "part": board.part,
        "fclk0_hz": board.fclk0_hz,
        "ip_name": ENGINE_CELL,
        "base_address": board.engine_base,
        "address_range": regmap.size,
        "bitstream": build.bitstream,
        "hwh": build.hwh,
        "config": config.to_dict(),
        "config_hash": config.hash,
        "register_map": regmap.to_dict(),
        # Run mode: the engine's AXI4 master and the memory it reaches; the host's buffer must
        # lie in [memory_base, memory_base + memory_range) (dpfm.host.pynq.PynqTransport).
        "run_mode": {
            "master": build.master,
            "port": build.mem_port,
            "memory_base": build.mem_base,
            "memory_range": build.mem_size,
        },
    }


def load_build_info(path) -> tuple[dict, Config]:
    """Read ``dpfm.json``; returns the dict and its Config, checked against the stored hash.

    Raises
    ------
    ValueError
        If the Config does not hash to the stored ``config_hash`` (file edited or written by a
        different Config definition).
    """
    info = json.loads(Path(path).read_text())
    config = Config.from_dict(info["config"])
    if config.hash != info["config_hash"]:
        raise ValueError(f"{path}: Config hash {config.hash:#010x} differs from the stored "
                         f"{info['config_hash']:#010x}")
    return info, config


def write_tree(config: Config, out, *, board: str = "pynq-z2", command: str | None = None,
               engine=None) -> BuildTree:
    """Write the whole Vivado build tree for ``config`` into ``out``; nothing runs.

    Parameters
    ----------
    config : Config
        What to build.
    out : path-like
        Folder of the tree (created).
    board : str
        A key of :data:`BOARDS`.
    command : str, optional
        The command line that asked for it, recorded in ``build.tcl``'s header.
    engine : wiring.Component, optional
        The component written as ``dpfm_engine.v`` (default :func:`board_engine`); it must
        have the members the wrapper wires (:func:`dpfm.boards.wrapper.top_verilog`).

    Raises
    ------
    dpfm.boards.wrapper.WrapperError
        If the engine lacks the AXI4-Lite slave or run mode's AXI4 master; nothing is written.
    """
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; known: {', '.join(BOARDS)}")
    spec = BOARDS[board]
    out = Path(out)
    build = vivado_build(spec, config)
    engine = board_engine(config) if engine is None else engine
    top_text = top_verilog(engine, fclk_hz=spec.fclk0_hz, addr_width=register_map(config).addr_bits)
    engine_text = component_verilog(engine, name=ENGINE_NAME)
    out.mkdir(parents=True, exist_ok=True)
    tree = BuildTree(
        out=out, engine_verilog=out / build.sources[0], top_verilog=out / build.sources[1],
        tcl=out / "build.tcl", xdc=out / build.xdc, info=out / BUILD_INFO,
        bitstream=out / build.bitstream, hwh=out / build.hwh, log=out / "vivado.log",
        timing=out / TIMING_FILE)
    _write(tree.engine_verilog, engine_text)
    _write(tree.top_verilog, top_text)
    _write(tree.tcl, build_tcl(build, board=board, command=command or f"{PROG} --board {board}"))
    _write(tree.xdc, constraints_xdc(board=board, fclk0_mhz=build.fclk0_mhz))
    _write(tree.info, json.dumps(build_info(spec, config), indent=1) + "\n")
    return tree


# -- Vivado -------------------------------------------------------------------------------

def find_vivado(explicit=None, environ=None) -> str:
    """Path of the ``vivado`` executable to run.

    Looks at ``explicit`` (``--vivado``), then sources ``$AMARANTH_ENV_VIVADO`` (a settings
    script, e.g. ``/opt/Xilinx/Vivado/2023.2/settings64.sh``) and looks ``vivado`` up on the
    PATH it leaves, then ``$VIVADO`` or ``vivado`` on ``PATH``.

    Raises
    ------
    VivadoMissing
        Naming what was tried.
    """
    environ = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
        raise VivadoMissing(f"--vivado {explicit} is not an executable file")
    tool = environ.get("VIVADO") or "vivado"
    settings = environ.get("AMARANTH_ENV_VIVADO")
    if settings:
        if not Path(settings).is_file():
            raise VivadoMissing(f"AMARANTH_ENV_VIVADO={settings} is not a file")
        probe = subprocess.run(
            ["bash", "-c", '. "$1" >/dev/null 2>&1; command -v "$2"', "dpfm-find-vivado",
             settings, tool],
            capture_output=True, text=True, env=dict(environ))
        found = probe.stdout.strip().splitlines()
        if probe.returncode == 0 and found:
            return found[-1]
        raise VivadoMissing(f"no {tool} on PATH after sourcing AMARANTH_ENV_VIVADO={settings}")
    found = shutil.which(tool, path=environ.get("PATH"))
    if found:
        return found
    raise VivadoMissing(f"no --vivado, no AMARANTH_ENV_VIVADO, no {tool} on PATH")


def read_timing(path) -> dict:
    """``timing.txt`` as ``{"WNS": ns, ...}``."""
    slack = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            slack[parts[0]] = float(parts[1])
    return slack


def run_vivado(tree: BuildTree, vivado: str, *, jobs: int | None = None, quiet: bool = False) -> dict:
    """Run ``build.tcl`` with ``vivado`` in the tree's folder; returns the timing slacks.

    Raises
    ------
    BuildFailed
        When Vivado exits non-zero, an output is missing, or any slack is negative.
    """
    for stale in (tree.bitstream, tree.hwh, tree.timing):
        stale.unlink(missing_ok=True)
    env = dict(os.environ)
    if jobs:
        env["DPFM_VIVADO_JOBS"] = str(jobs)
    argv = [vivado, "-mode", "batch", "-source", tree.tcl.name, "-log", tree.log.name,
            "-journal", "vivado.jou", "-notrace"]
    done = subprocess.run(argv, cwd=tree.out, env=env,
                          stdout=subprocess.DEVNULL if quiet else None)
    log = f"see {tree.log}"
    if done.returncode != 0:
        reason = _vivado_error(tree.log)
        raise BuildFailed(f"vivado exited with code {done.returncode}"
                          + (f": {reason}" if reason else "") + f"; {log}")
    missing = [p.name for p in (tree.bitstream, tree.hwh, tree.timing) if not p.is_file()]
    if missing:
        raise BuildFailed(f"vivado finished but did not write {', '.join(missing)}; {log}")
    slack = read_timing(tree.timing)
    for name in ("WNS", "WHS"):
        if name not in slack:
            raise BuildFailed(f"{tree.timing.name} has no {name}; {log}")
    negative = {k: v for k, v in slack.items() if v < 0}
    if negative:
        raise BuildFailed("timing not met: " + ", ".join(f"{k} {v} ns" for k, v in negative.items())
                          + f"; see {tree.out / 'timing_summary.rpt'}")
    return slack


def _vivado_error(log: Path) -> str:
    """The script's own failure line, else Vivado's first ERROR line, from the log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for prefix in ("DPFM-ERROR:", "ERROR:"):
        for line in lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip() if prefix == "DPFM-ERROR:" else line.strip()
    return ""


# -- resource estimate --------------------------------------------------------------------

def board_engine(config: Config) -> Engine:
    """The engine as the board builds it: refused accesses answer OKAY (an SLVERR to the Zynq
    CPU is an external abort, SIGBUS, and kills the Python process) and are recorded in
    FLAGS.bus_error and ERR_ADDR, which the host's Trainer reads after every step."""
    return Engine(config, error_response=Resp.OKAY)


def estimate_design(config: Config, workdir=None) -> dict:
    """Yosys ``synth_xilinx`` estimate of the programmable logic this build puts on the chip.

    The logic the build adds around the engine is its wrapper: wires and one inverter
    (``aresetn`` to ``rst``) that Vivado folds into the flip-flops' reset; the AXI interconnect
    and ``proc_sys_reset`` are Xilinx IP outside any Yosys estimate. So the estimate is the
    engine's (with its AXI4-Lite slave), as :func:`dpfm.rtl.synth.estimate` gives it, with
    utilisation against the XC7Z020 (:data:`dpfm.rtl.synth.DEVICE`).
    """
    workdir = Path(workdir) if workdir is not None else Path("build") / "synth" / "pynq-z2"
    return synth.estimate(board_engine(config), ENGINE_NAME, workdir)


# -- command line -------------------------------------------------------------------------

class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=f"python -m {PROG}",
                description="Write the Vivado build tree of the DPFM engine for a board and run "
                            "Vivado on it when it is installed.")
    p.add_argument("--board", default="pynq-z2", choices=list(BOARDS), help="default pynq-z2")
    p.add_argument("--config", metavar="FILE.json",
                   help="a Config as JSON (Config.to_dict(), or a dpfm.json); the options "
                        "below override its fields")
    p.add_argument("--k", type=int, help="gradient registers per activation (default 16)")
    p.add_argument("--net", metavar="W,W,...", help="layer widths, inputs first (default 4,5,5,1)")
    p.add_argument("--act", metavar="A,A,...",
                   help="one activation per layer (default: sigmoid, linear for the output)")
    p.add_argument("--batch", type=int, help="sample lanes (default 10)")
    p.add_argument("--lanes", type=int, help="multipliers per DualScale (default min(4, k+1))")
    p.add_argument("--update-lanes", type=int, dest="update_lanes",
                   help="parameters per cycle of the update passes, a power of two (default: the Config's)")
    p.add_argument("--out", metavar="DIR",
                   help="build folder (default build/<board>; with --estimate "
                        "build/synth/<board>-k<K>-b<BATCH>-l<LANES>)")
    p.add_argument("--vivado", metavar="PATH", help="the vivado executable")
    p.add_argument("--jobs", type=int, help="Vivado's parallel jobs (default 4)")
    p.add_argument("--tree-only", action="store_true",
                   help="write the build tree and stop, without looking for Vivado")
    p.add_argument("--estimate", action="store_true",
                   help="instead of building: the Yosys resource estimate of the design for "
                        "the board's part (`make synth`)")
    p.add_argument("--json", metavar="FILE", help="with --estimate: write the estimate here")
    p.add_argument("--timing", action="store_true",
                   help="with --estimate: also the static timing ESTIMATE of the engine "
                        "(dpfm.rtl.timing), printed and added to the JSON as 'timing'")
    p.add_argument("--quiet", action="store_true", help="hide Vivado's console output")
    return p


def _int_list(text, what):
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated whole numbers, not {text!r}") from None


def config_from_args(args) -> Config:
    """The Config the options describe (``--config`` first, then the single options)."""
    fields = {}
    if args.config:
        data = json.loads(Path(args.config).read_text())
        fields = dict(data.get("config", data))
        base = Config.from_dict(fields)
        fields = {"net": base.net, "activations": base.activations, "k": base.k,
                  "batch": base.batch, "formats": base.formats, "idx_bits": base.idx_bits,
                  "lanes": base.lanes, "update_lanes": base.update_lanes, "use_dsp": base.use_dsp,
                  "policy": base.policy}
    if args.net is not None:
        fields["net"] = _int_list(args.net, "--net")
        fields.pop("idx_bits", None)
        if args.act is None:
            fields["activations"] = ["sigmoid"] * (len(fields["net"]) - 2) + ["linear"]
    if args.act is not None:
        fields["activations"] = [a.strip() for a in args.act.split(",")]
    for name in ("k", "batch", "lanes", "update_lanes"):
        if getattr(args, name, None) is not None:
            fields[name] = getattr(args, name)
    if "k" not in fields:
        fields["k"] = 16
    return Config(**fields)


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def fail(message, code):
        print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
        return code

    try:
        args = _parser().parse_args(argv)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, not {args.jobs}")
        config = config_from_args(args)
    except (_UsageError, ValueError, TypeError, OSError, ConfigError, KeyError) as e:
        return fail(e, 2)

    if args.estimate:
        return _estimate_main(config, args, fail)
    if args.json or args.timing:
        return fail("--json and --timing go with --estimate", 2)

    out = Path(args.out) if args.out else Path("build") / args.board
    command = " ".join(["python -m", PROG, *map(shlex.quote, argv)])
    try:
        tree = write_tree(config, out, board=args.board, command=command)
    except WrapperError as e:
        return fail(e, 2)
    wrote = (f"wrote {out}/ ({tree.engine_verilog.name}, {tree.top_verilog.name}, {tree.tcl.name}, "
             f"{tree.xdc.name}, {tree.info.name}) for k={config.k} net={','.join(map(str, config.net))} "
             f"batch={config.batch}, Config hash {config.hash:#010x}")
    if args.tree_only:
        print(f"{PROG}: {wrote}")
        return 0
    try:
        vivado = find_vivado(args.vivado)
    except VivadoMissing as e:
        return fail(f"Vivado not found ({e}); the build tree is written to {out}/; to finish "
                    f"on a machine with Vivado: {tree.finish_command()}", 2)
    print(f"{PROG}: {wrote}; running {vivado} (log {tree.log})", flush=True)
    try:
        slack = run_vivado(tree, vivado, jobs=args.jobs, quiet=args.quiet)
    except BuildFailed as e:
        return fail(e, 1)
    print(f"{PROG}: built {tree.bitstream} and {tree.hwh} "
          f"(WNS {slack['WNS']} ns, WHS {slack['WHS']} ns); copy them with {tree.info.name} to the board")
    return 0


def _estimate_main(config, args, fail) -> int:
    workdir = Path(args.out) if args.out else (
        Path("build") / "synth" / f"{args.board}-k{config.k}-b{config.batch}-l{config.lanes}")
    print(f"{PROG}: Yosys estimate of the {args.board} design for k={config.k} "
          f"net={','.join(map(str, config.net))} batch={config.batch} lanes={config.lanes} "
          f"(in {workdir})", flush=True)
    try:
        res = estimate_design(config, workdir)
    except FileNotFoundError as e:
        return fail(e, 2)
    except RuntimeError as e:
        return fail(e, 1)
    row = {"block": "engine", "k": config.k, "lanes": config.lanes, **res}
    print(synth.format_table([row]))
    extra = {}
    if args.timing:
        from dpfm.rtl.timing import print_estimate
        extra["timing"] = print_estimate(res["netlist"], f"{args.board} engine k={config.k}")
    if args.json:
        write_json(args.json, make_dirs=True, obj={
            **{k: v for k, v in row.items() if k != "cells"}, "cells": res.get("cells"), **extra,
            "board": args.board, "batch": config.batch, "net": list(config.net),
            "device": synth.DEVICE, "config": config.to_dict(), "config_hash": config.hash})
        print(f"{PROG}: wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
