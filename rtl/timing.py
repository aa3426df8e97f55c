"""Static timing ESTIMATE of a Yosys ``synth_xilinx`` netlist for the xc7z020-1 (PYNQ-Z2).

This is not Vivado's timing analysis. It reads the mapped netlist that :mod:`dpfm.rtl.synth`
writes (Yosys ``write_json``: FDRE/FDSE/FDCE/FDPE, LUT1-6, CARRY4, MUXF7/F8, DSP48E1,
RAMB18E1/RAMB36E1, LUTRAM, SRL16E/SRLC32E), builds a timing graph with one arc per
primitive pin pair, finds the longest register-to-register paths by a topological
longest-path pass and names their start and end registers by the RTL signal names Yosys
kept on the nets.

Delay model
-----------
Every path is ``clock-to-out + sum(net + cell) + net + setup``. The numbers are in
:class:`DelayModel`; its docstring says where each comes from. What the model cannot see:

- **routing**: every general-routing hop costs the same :attr:`DelayModel.net_ns`
  (Vivado's real hops range from about 0.1 ns inside a slice to several ns across the die);
- **placement**: no distances, no clock skew, no clock-tree uncertainty, no congestion;
- **fan-out** only through a simple penalty (:attr:`DelayModel.fanout_ns_per_doubling`
  per doubling of the sink count); Vivado may replicate drivers instead;
- **logic optimisation**: Vivado re-maps and retimes; Yosys' LUT mapping (ABC) is what is
  timed here, with all LUT inputs treated alike;
- clock domains, multicycle and false paths: every register is assumed to share one clock.

So the result is an ESTIMATE: good for finding which path is long and by about how much,
not for sign-off. ``make bitstream`` (Vivado) remains the authority on WNS.

Command line: ``python -m dpfm.rtl.timing NETLIST.json [--top N] [--json OUT]``; the usual
entry point is ``dpfm synth --block ... --timing``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass

from dpfm.files import write_json

from .delay_model import XC7Z020_1, DelayModel

__all__ = ["DelayModel", "XC7Z020_1", "TimingPath", "TimingReport", "CombinationalLoop",
           "analyze", "analyze_file", "format_report", "print_estimate", "main"]


@dataclass(frozen=True)
class TimingPath:
    """One register-to-register path of the ESTIMATE.

    Attributes
    ----------
    start, end : str
        RTL names of the start register (the net its output drives) and of the end register
        (the net the register drives, or ``<cell>.<pin>`` for a DSP/BRAM/LUTRAM input).
    delay_ns : float
        Clock-to-out + logic + nets + setup.
    depth : str
        The cells on the path, e.g. ``"13 LUT + 3 CARRY chains (8 CARRY4) + 4 MUXF"``.
    cells : tuple of str
        Cell types along the path, start to end (the start and end elements included).
    start_kind, end_kind : str
        Element types of the start and end (``FDRE``, ``DSP48E1``, ``input`` ...).
    """

    start: str
    end: str
    delay_ns: float
    depth: str
    cells: tuple
    start_kind: str
    end_kind: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cells"] = list(self.cells)
        return d


@dataclass(frozen=True)
class TimingReport:
    """Result of :func:`analyze`: an ESTIMATE, not Vivado's timing.

    Attributes
    ----------
    worst_ns : float
        The longest register-to-register path (0.0 when there is none).
    fmax_mhz : float
        ``1000 / worst_ns`` (``inf`` when there is no path).
    paths : list of TimingPath
        The worst paths, one per distinct end signal, longest first.
    groups : dict
        ``{block: (worst_ns, end)}``: the worst path ending in each top-level part of the
        design (the first component of the end register's hierarchical name).
    port_paths : list of TimingPath
        The worst paths that start at an input port or end at an output port, timed as if a
        register outside drove each input (T_CKO) and captured each output (net + T_DICK).
        Not counted in ``worst_ns``; for a block synthesised alone (``dpfm synth --block``)
        they are the paths its neighbours' registers would see.
    boundary_worst_ns : float
        ``max(worst_ns, port_paths[0].delay_ns)``: the block's worst path with registered
        neighbours.
    unknown_cells : dict
        Cell types the model does not know, with counts (timed as a LUT, all inputs to all
        outputs).
    model : DelayModel
    """

    worst_ns: float
    fmax_mhz: float
    paths: list
    groups: dict
    port_paths: list
    unknown_cells: dict
    model: DelayModel = XC7Z020_1

    @property
    def boundary_worst_ns(self) -> float:
        return max([self.worst_ns] + [p.delay_ns for p in self.port_paths])

    def to_dict(self) -> dict:
        return {"estimate": True, "worst_ns": round(self.worst_ns, 3),
                "fmax_mhz": None if math.isinf(self.fmax_mhz) else round(self.fmax_mhz, 1),
                "boundary_worst_ns": round(self.boundary_worst_ns, 3),
                "paths": [p.to_dict() for p in self.paths],
                "groups": {k: {"worst_ns": round(v[0], 3), "end": v[1]}
                           for k, v in self.groups.items()},
                "port_paths": [p.to_dict() for p in self.port_paths],
                "unknown_cells": dict(self.unknown_cells), "model": self.model.to_dict()}


class CombinationalLoop(ValueError):
    """The netlist has a combinational cycle; ``nets`` names some of the nets on it."""

    def __init__(self, nets):
        self.nets = list(nets)
        super().__init__("combinational loop through " + ", ".join(self.nets[:8])
                         + (" ..." if len(self.nets) > 8 else ""))


# -- netlist helpers --------------------------------------------------------------------------

FF_TYPES = {"FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1",
            "LDCE", "LDPE"}
LUT_TYPES = {f"LUT{n}": n for n in range(1, 7)}
BRAM_TYPES = {"RAMB18E1", "RAMB36E1"}
DSP_TYPES = {"DSP48E1"}
SRL_TYPES = {"SRL16E", "SRLC16E", "SRLC32E", "SRL16"}
#: LUTRAM read ports: output port -> the address ports that select it.
LUTRAM_READ = {
    "RAM32X1S": {"O": ("A0", "A1", "A2", "A3", "A4")},
    "RAM64X1S": {"O": ("A0", "A1", "A2", "A3", "A4", "A5")},
    "RAM128X1S": {"O": ("A0", "A1", "A2", "A3", "A4", "A5", "A6")},
    "RAM32X1D": {"SPO": ("A0", "A1", "A2", "A3", "A4"),
                 "DPO": ("DPRA0", "DPRA1", "DPRA2", "DPRA3", "DPRA4")},
    "RAM64X1D": {"SPO": ("A0", "A1", "A2", "A3", "A4", "A5"),
                 "DPO": ("DPRA0", "DPRA1", "DPRA2", "DPRA3", "DPRA4", "DPRA5")},
    "RAM128X1D": {"SPO": ("A",), "DPO": ("DPRA",)},
    "RAM256X1S": {"O": ("A",)},
    "RAM32M": {f"DO{x}": (f"ADDR{x}",) for x in "ABCD"},
    "RAM64M": {f"DO{x}": (f"ADDR{x}",) for x in "ABCD"},
    "RAM32M16": {f"DO{x}": (f"ADDR{x}",) for x in "ABCDEFGH"},
    "RAM64M8": {f"DO{x}": (f"ADDR{x}",) for x in "ABCDEFGH"},
}
#: Ports ignored as timing pins (clocks).
CLOCK_PINS = {"C", "CLK", "WCLK", "CLKARDCLK", "CLKBWRCLK", "G"}
#: Cells that only buffer clocks or tie constants.
PASSIVE_TYPES = {"BUFG", "BUFGCTRL", "BUFH", "BUFR", "GND", "VCC", "IBUF", "OBUF"}
#: DSP48E1 cascade inputs, which a dedicated wire feeds from the neighbouring DSP.
DSP_CASCADE_IN = {"PCIN", "ACIN", "BCIN", "CARRYCASCIN", "MULTSIGNIN"}


def param_value(value):
    """A cell parameter from Yosys JSON as int (bit strings, numbers) or str."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value and set(value) <= set("01xz"):
        return int(value.replace("x", "0").replace("z", "0"), 2)
    return value.strip() if isinstance(value, str) else value


def _display(name: str) -> str:
    """A Yosys name made readable: no escape, no ``genblk`` chains, memory read registers and
    inferred arithmetic cells named after their RTL memory or Verilog line."""
    name = name[1:] if name.startswith("\\") else name
    name = re.sub(r"^\$\\?([\w.]+)\$rdreg\[(\d+)\]\$q$", r"\1.rdreg\2", name)
    name = re.sub(r"(\.genblk\d+)+", "", name)
    name = re.sub(r"^\$(\w+)\$([\w.]+:\d+)\$\d+", r"$\1@\2", name)
    return name


def _internal(name: str) -> bool:
    """A name Yosys or Amaranth made up (``$69``, ``merger3.$69``)."""
    return name.rsplit(".", 1)[-1].startswith("$")


class _Names:
    """The best RTL name for each net bit (visible names first, then the shortest)."""

    def __init__(self, netnames: dict):
        self.best = {}
        for name, net in netnames.items():
            bits = net.get("bits", [])
            hidden = bool(net.get("hide_name", 0))
            name = _display(name)
            offset = int(net.get("offset", 0))
            upto = bool(net.get("upto", 0))
            internal = hidden or _internal(name)
            for i, bit in enumerate(bits):
                if not isinstance(bit, int):
                    continue
                idx = (offset + len(bits) - 1 - i) if upto else offset + i
                label = name if len(bits) == 1 else f"{name}[{idx}]"
                rank = (internal, len(name))
                old = self.best.get(bit)
                if old is None or rank < old[0]:
                    self.best[bit] = (rank, label, name)

    def of(self, bit, default="?") -> str:
        got = self.best.get(bit)
        return got[1] if got else default

    def signal(self, bit, default="?") -> str:
        got = self.best.get(bit)
        return got[2] if got else default


# -- the timing graph -------------------------------------------------------------------------

class _Graph:
    """Arcs between net bits (and per-cell virtual nodes) with their delays."""

    def __init__(self, model: DelayModel):
        self.model = model
        self.arcs = defaultdict(list)       # dst node -> [(src node, delay, cell)]
        self.starts = {}                    # node -> (arrival, cell)
        self.ends = []                      # (node, extra delay after arrival, cell, pin)

    def start(self, node, arrival, cell):
        old = self.starts.get(node)
        if old is None or arrival > old[0]:
            self.starts[node] = (arrival, cell)

    def arc(self, src, dst, delay, cell):
        self.arcs[dst].append((src, delay, cell))


def _top_module(netlist: dict, top: str | None):
    modules = netlist["modules"]
    if top is not None:
        return top, modules[top]

    def attr(mod, key):
        return int(param_value(mod.get("attributes", {}).get(key, 0)) or 0)

    tops = [n for n, mod in modules.items() if attr(mod, "top")]
    if len(tops) != 1:
        tops = [n for n, mod in modules.items()
                if not attr(mod, "blackbox") and not attr(mod, "whitebox") and mod.get("cells")]
    if len(tops) != 1:
        raise ValueError(f"cannot tell the top module among {sorted(tops)[:5]}; pass top=")
    return tops[0], modules[tops[0]]


def _bits(conn, port):
    return [b for b in conn.get(port, []) if isinstance(b, int)]


def analyze(netlist: dict, *, model: DelayModel = XC7Z020_1, top: str | None = None,
            n_paths: int = 10) -> TimingReport:
    """Estimate the worst register-to-register paths of a mapped Yosys netlist.

    Parameters
    ----------
    netlist : dict
        Yosys ``write_json`` output after ``synth_xilinx``.
    model : DelayModel
        The delays (default :data:`XC7Z020_1`).
    top : str, optional
        The module to time (default: the one with the ``top`` attribute).
    n_paths : int
        How many paths to report (one per distinct end signal).

    Returns
    -------
    TimingReport

    Raises
    ------
    CombinationalLoop
        If the combinational part of the netlist has a cycle.
    """
    top_name, mod = _top_module(netlist, top)
    cells = list(mod.get("cells", {}).items())
    names = _Names(mod.get("netnames", {}))
    m = model

    # Sinks per bit (fan-out) and the driver cell type of each bit.
    fanout = defaultdict(int)
    driver_type = {}
    for cname, cell in cells:
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            d = dirs.get(port, "input")
            for b in bits:
                if not isinstance(b, int):
                    continue
                if d == "output":
                    driver_type[b] = cell["type"]
                elif port not in CLOCK_PINS:
                    fanout[b] += 1
    for pname, port in mod.get("ports", {}).items():
        if port["direction"] == "output":
            for b in port["bits"]:
                if isinstance(b, int):
                    fanout[b] += 1
        else:
            for b in port["bits"]:
                if isinstance(b, int):
                    driver_type[b] = "input"

    g = _Graph(model)
    unknown = defaultdict(int)
    hop_cache = {}

    def hop(bit, dedicated=False):
        if dedicated:
            return 0.0
        h = hop_cache.get(bit)
        if h is None:
            h = hop_cache[bit] = m.hop(fanout[bit])
        return h

    def comb(ci, conn, ins, outs, delay, dedicated=lambda b: False):
        """Arcs from every bit of ports ``ins`` to every bit of ports ``outs``."""
        in_bits = [b for p in ins for b in _bits(conn, p)]
        out_bits = [b for p in outs for b in _bits(conn, p)]
        if not in_bits or not out_bits:
            return
        if len(in_bits) * len(out_bits) > 64:        # through one virtual node
            v = ("v", ci, tuple(ins), tuple(outs))
            for b in in_bits:
                g.arc(b, v, hop(b, dedicated(b)), ci)
            for o in out_bits:
                g.arc(v, o, delay, ci)
        else:
            for b in in_bits:
                h = hop(b, dedicated(b))
                for o in out_bits:
                    g.arc(b, o, h + delay, ci)

    def end(ci, conn, ports, setup, dedicated=lambda b: False):
        for p in ports:
            for b in _bits(conn, p):
                g.ends.append((b, hop(b, dedicated(b)) + setup, ci, p))

    def start(ci, conn, ports, arrival):
        for p in ports:
            for b in _bits(conn, p):
                g.start(b, arrival, ci)

    for ci, (cname, cell) in enumerate(cells):
        t = cell["type"]
        conn = cell.get("connections", {})
        prm = {k: param_value(v) for k, v in cell.get("parameters", {}).items()}
        dirs = cell.get("port_directions", {})
        if t in FF_TYPES:
            start(ci, conn, ["Q"], m.ff_clk_to_q)
            end(ci, conn, ["D"], m.ff_setup_d)
            end(ci, conn, ["CE", "GE"], m.ff_setup_ce)
            end(ci, conn, ["R", "S", "CLR", "PRE"], m.ff_setup_sr)
        elif t in LUT_TYPES:
            n = LUT_TYPES[t]
            comb(ci, conn, [f"I{i}" for i in range(n)], ["O"], m.lut_ns[n - 1])
        elif t == "LUT6_2":
            comb(ci, conn, [f"I{i}" for i in range(6)], ["O6", "O5"], m.lut_ns[5])
        elif t == "INV":
            comb(ci, conn, ["I"], ["O"], m.lut_ns[0])
        elif t in ("MUXF7", "MUXF8"):
            f7 = t == "MUXF7"
            feeder = ("LUT" if f7 else "MUXF7")

            def ded(b, feeder=feeder):
                return str(driver_type.get(b, "")).startswith(feeder)
            comb(ci, conn, ["I0", "I1"], ["O"], m.muxf7_data if f7 else m.muxf8_data, ded)
            comb(ci, conn, ["S"], ["O"], m.muxf7_sel if f7 else m.muxf8_sel)
        elif t == "CARRY4":
            _carry4(g, ci, conn, m, hop, driver_type)
        elif t in DSP_TYPES:
            _dsp48e1(ci, conn, prm, m, comb, end, start, driver_type)
        elif t in BRAM_TYPES:
            _bram(ci, conn, prm, dirs, m, end, start)
        elif t in LUTRAM_READ:
            reads = LUTRAM_READ[t]
            deep = t.startswith(("RAM128", "RAM256"))
            read = m.lutram["read"] + (m.lutram["read_mux"] * (2 if t == "RAM256X1S" else 1)
                                       if deep else 0.0)
            for out, addr in reads.items():
                comb(ci, conn, list(addr), [out], read)
                start(ci, conn, [out], m.lutram["clk_to_out"])
            for p, d in dirs.items():
                if d != "input" or p in CLOCK_PINS:
                    continue
                if p.startswith(("WE",)):
                    end(ci, conn, [p], m.lutram["we"])
                elif p.startswith(("D", "DI")) and not p.startswith("DPRA"):
                    end(ci, conn, [p], m.lutram["d"])
                elif p.startswith(("A", "ADDR")):     # write address (shared or ADDRD/H)
                    end(ci, conn, [p], m.lutram["addr"])
        elif t in SRL_TYPES:
            outs = [p for p in ("Q", "Q15", "Q31") if p in conn]
            start(ci, conn, outs, m.srl["clk_to_out"])
            comb(ci, conn, ["A", "A0", "A1", "A2", "A3"], ["Q"], m.srl["a_q"])
            end(ci, conn, ["D"], m.srl["d"])
            end(ci, conn, ["CE"], m.srl["ce"])
        elif t in PASSIVE_TYPES:
            continue
        else:
            unknown[t] += 1
            ins = [p for p, d in dirs.items() if d == "input" and p not in CLOCK_PINS]
            outs = [p for p, d in dirs.items() if d == "output"]
            comb(ci, conn, ins, outs, m.lut_ns[5])

    # Input ports are start points of port paths, output ports their end points, as if a
    # register outside the netlist drove each input and captured each output.
    port_starts = {}
    for pname, port in mod.get("ports", {}).items():
        if port["direction"] == "input":
            width = len(port["bits"])
            for i, b in enumerate(port["bits"]):
                if isinstance(b, int) and b not in g.starts:
                    port_starts[b] = (m.ff_clk_to_q,
                                      ("port", _display(pname) + (f"[{i}]" if width > 1 else "")))
        elif port["direction"] == "output":
            for b in port["bits"]:
                if isinstance(b, int):
                    g.ends.append((b, hop(b) + m.ff_setup_d, ("port", _display(pname)),
                                   _display(pname)))

    # Two passes, so that a port path cannot hide a register path to the same end point.
    element_starts = dict(g.starts)
    passes = [(element_starts, _longest(g, names, element_starts)),
              (port_starts, _longest(g, names, port_starts))]

    def kind(c):
        if isinstance(c, tuple):
            return "input" if c[0] == "port" else "?"
        return cells[c][1]["type"]

    def trace(node, pred):
        """Cells from the start element to the node, and the start node."""
        chain = []
        while True:
            p = pred.get(node)
            if p is None:
                return list(reversed(chain)), node
            src, c = p
            if src is None:
                return list(reversed(chain)), node
            if not chain or chain[-1][0] != c:
                chain.append((c, node))
            node = src

    def end_name(c, b, pin):
        if isinstance(c, tuple):
            return c[1] if pin == c[1] else names.of(b, c[1])
        cell = cells[c][1]
        if cell["type"] in FF_TYPES:
            q = _bits(cell["connections"], "Q")
            return names.of(q[0], _display(cells[c][0])) if q else _display(cells[c][0])
        return f"{_element_name(cells[c], names)}.{pin}"

    def end_signal(c, b, pin):
        if isinstance(c, tuple):
            return c[1]
        cell = cells[c][1]
        if cell["type"] in FF_TYPES:
            q = _bits(cell["connections"], "Q")
            return names.signal(q[0], _display(cells[c][0])) if q else _display(cells[c][0])
        # one row per memory/DSP group and pin: indices of the element and pin dropped
        return re.sub(r"\.\d+", "", f"{_element_name(cells[c], names)}.{pin}")

    reg_paths, port_paths, groups = [], [], {}
    for starts, (arrival, pred) in passes:
        from_ports = starts is port_starts
        for b, extra, c, pin in g.ends:
            a = arrival.get(b)
            if a is None:
                continue
            total = a + extra
            chain, snode = trace(b, pred)
            s_cell = starts.get(snode, (0.0, None))[1]
            rec = (total, b, c, pin, chain, snode, s_cell)
            if from_ports or isinstance(c, tuple):
                port_paths.append(rec)
            else:
                reg_paths.append(rec)
                ename = end_name(c, b, pin)
                grp = (ename.split(".", 1)[0] if "." in ename and not ename.startswith("$")
                       else "(top)")
                if grp not in groups or total > groups[grp][0]:
                    groups[grp] = (total, ename)

    def build(recs):
        recs.sort(key=lambda r: -r[0])
        out, seen = [], set()
        for total, b, c, pin, chain, snode, s_cell in recs:
            sig = end_signal(c, b, pin)
            if sig in seen:
                continue
            seen.add(sig)
            types = [cells[cc][1]["type"] for cc, _ in chain if not isinstance(cc, tuple)]
            skind = kind(s_cell) if s_cell is not None else "?"
            start_nm = (s_cell[1] if isinstance(s_cell, tuple)
                        else _start_name(cells, s_cell, snode, names))
            out.append(TimingPath(start=start_nm, end=end_name(c, b, pin),
                                  delay_ns=round(total, 3), depth=describe(types),
                                  cells=tuple([skind] + types + [kind(c)]),
                                  start_kind=skind, end_kind=kind(c)))
            if len(out) >= n_paths:
                break
        return out

    paths = build(reg_paths)
    worst = paths[0].delay_ns if paths else 0.0
    return TimingReport(worst_ns=worst, fmax_mhz=(1000.0 / worst) if worst > 0 else math.inf,
                        paths=paths, groups=dict(sorted(groups.items(), key=lambda kv: -kv[1][0])),
                        port_paths=build(port_paths), unknown_cells=dict(unknown), model=model)


def _element_name(cell_item, names):
    """A readable name of a DSP/BRAM/LUTRAM cell: the net of its first output bit."""
    cname, cell = cell_item
    dirs = cell.get("port_directions", {})
    for p, bits in cell.get("connections", {}).items():
        if dirs.get(p) == "output":
            for b in bits:
                if isinstance(b, int) and b in names.best and not names.best[b][0][0]:
                    return names.signal(b)
    return _display(cname)


def _start_name(cells, ci, node, names):
    if ci is None:
        return names.of(node) if isinstance(node, int) else "?"
    cell = cells[ci][1]
    if cell["type"] in FF_TYPES or not isinstance(node, int):
        return names.of(node, _display(cells[ci][0])) if isinstance(node, int) else "?"
    label = names.of(node, "")
    return label if label and not label.startswith("$") else _element_name(cells[ci], names)


def _carry4(g, ci, conn, m, hop, driver_type):
    """CARRY4 arcs: S/DI[i] to CO/O[j >= i], CI and CYINIT to every output."""
    s = conn.get("S", [])
    di = conn.get("DI", [])
    co = conn.get("CO", [])
    o = conn.get("O", [])
    for i in range(4):
        for src in (s[i] if i < len(s) else None, di[i] if i < len(di) else None):
            if not isinstance(src, int):
                continue
            h = hop(src)
            for j in range(i, 4):
                if j < len(co) and isinstance(co[j], int):
                    g.arc(src, co[j], h + m.carry_s_co, ci)
                if j < len(o) and isinstance(o[j], int):
                    g.arc(src, o[j], h + m.carry_s_o, ci)
    for port, to_co, to_co3, to_o in (("CI", m.carry_ci_co, m.carry_ci_co3, m.carry_ci_o),
                                      ("CYINIT", m.carry_cyinit, m.carry_cyinit, m.carry_cyinit)):
        for src in conn.get(port, []):
            if not isinstance(src, int):
                continue
            dedicated = port == "CI" and driver_type.get(src) == "CARRY4"
            h = hop(src, dedicated)
            for j in range(4):
                if j < len(co) and isinstance(co[j], int):
                    g.arc(src, co[j], h + (to_co3 if j == 3 else to_co), ci)
                if j < len(o) and isinstance(o[j], int):
                    g.arc(src, o[j], h + to_o, ci)


def _dsp48e1(ci, conn, prm, m, comb, end, start, driver_type):
    """DSP48E1 arcs from its register attributes (AREG, BREG, CREG, DREG, ADREG, MREG, PREG)."""
    d = m.dsp
    reg = {k: int(prm.get(k, 1) or 0) for k in
           ("AREG", "BREG", "CREG", "DREG", "ADREG", "MREG", "PREG", "OPMODEREG", "ALUMODEREG",
            "INMODEREG", "CARRYINREG", "CARRYINSELREG")}
    mult = str(prm.get("USE_MULT", "MULTIPLY")).upper() != "NONE"
    dport = str(prm.get("USE_DPORT", "FALSE")).upper() == "TRUE"
    preg, mreg = reg["PREG"], reg["MREG"] and mult

    def ded(b):
        return driver_type.get(b) in DSP_TYPES

    outs_p = ["P", "CARRYOUT", "PATTERNDETECT", "PATTERNBDETECT", "OVERFLOW", "UNDERFLOW"]
    outs_c = ["PCOUT", "CARRYCASCOUT", "MULTSIGNOUT"]

    # Clock to P from the last register before it.
    if preg:
        p_clk = d["p_preg"]
    else:
        cands = []
        if mreg:
            cands.append(d["p_mreg"])
        if reg["CREG"]:
            cands.append(d["p_creg"])
        if reg["AREG"] or (dport and (reg["DREG"] or reg["ADREG"])):
            cands.append(d["p_areg"] if mult else d["p_areg_nomult"])
        if reg["BREG"]:
            cands.append(d["p_breg"] if mult else d["p_areg_nomult"])
        p_clk = max(cands) if cands else None
    if p_clk is not None:
        start(ci, conn, outs_p, p_clk)
        start(ci, conn, outs_c, p_clk + d["pcout_extra"])

    def data_input(ports, own_reg, setup_own, later, comb_delay):
        """``later``: [(register on the way, setup)] nearest first."""
        if own_reg:
            end(ci, conn, ports, setup_own, ded)
            return
        for on, setup in later:
            if on:
                end(ci, conn, ports, setup, ded)
                return
        comb(ci, conn, ports, outs_p, comb_delay, ded)
        comb(ci, conn, ports, outs_c, comb_delay + d["pcout_extra"], ded)

    if mult:
        data_input(["A", "ACIN"], reg["AREG"], d["a_areg"],
                   [(dport and reg["ADREG"], d["a_adreg"]), (mreg, d["a_mreg"]),
                    (preg, d["a_preg"])], d["a_p"])
        data_input(["B", "BCIN"], reg["BREG"], d["b_breg"],
                   [(mreg, d["b_mreg"]), (preg, d["b_preg"])], d["b_p"])
        if dport:
            data_input(["D"], reg["DREG"], d["d_dreg"],
                       [(reg["ADREG"], d["d_adreg"]), (mreg, d["d_mreg"]), (preg, d["d_preg"])],
                       d["d_p"])
    else:
        data_input(["A", "ACIN"], reg["AREG"], d["a_areg"], [(preg, d["ab_preg_nomult"])],
                   d["a_p_nomult"])
        data_input(["B", "BCIN"], reg["BREG"], d["b_breg"], [(preg, d["ab_preg_nomult"])],
                   d["a_p_nomult"])
    data_input(["C"], reg["CREG"], d["c_creg"], [(preg, d["c_preg"])], d["c_p"])
    data_input(["PCIN", "CARRYCASCIN", "MULTSIGNIN"], 0, 0.0, [(preg, d["pcin_preg"])],
               d["pcin_p"])
    for ports, r in ((["OPMODE"], "OPMODEREG"), (["ALUMODE"], "ALUMODEREG"),
                     (["INMODE"], "INMODEREG"), (["CARRYIN"], "CARRYINREG"),
                     (["CARRYINSEL"], "CARRYINSELREG")):
        data_input(ports, reg[r], d["ctrl_reg"], [(preg, d["ctrl_preg"])], d["ctrl_p"])
    ce_rst = [p for p in conn if p.startswith(("CE", "RST"))]
    end(ci, conn, ce_rst, d["ce_rst"])


def _bram(ci, conn, prm, dirs, m, end, start):
    """RAMB18E1/RAMB36E1: every input is a setup end point, every output a start point."""
    b = m.bram
    a_reg = int(prm.get("DOA_REG", 0) or 0)
    b_reg = int(prm.get("DOB_REG", 0) or 0)
    for p, direction in dirs.items():
        if p in CLOCK_PINS:
            continue
        if direction == "output":
            on_a = p.startswith(("DOA", "DOPA"))
            start(ci, conn, [p], b["do_reg"] if (a_reg if on_a else b_reg) else b["do"])
        elif p.startswith("ADDR"):
            end(ci, conn, [p], b["addr"])
        elif p.startswith("DI"):
            end(ci, conn, [p], b["di"])
        elif p.startswith("WE"):
            end(ci, conn, [p], b["we"])
        elif p.startswith("EN"):
            end(ci, conn, [p], b["en"])
        else:
            end(ci, conn, [p], b["ctrl"])


def _longest(g: _Graph, names: _Names, starts: dict):
    """Longest arrival per node (Kahn order over the arcs); ``pred`` for backtracking."""
    nodes = set(g.arcs)
    succ = defaultdict(list)
    indeg = defaultdict(int)
    for dst, ins in g.arcs.items():
        for src, delay, cell in ins:
            succ[src].append((dst, delay, cell))
            indeg[dst] += 1
            nodes.add(src)
    arrival = {}
    pred = {}
    for node, (a, c) in starts.items():
        arrival[node] = a
        pred[node] = (None, c)
    ready = [n for n in nodes if indeg[n] == 0]
    done = 0
    while ready:
        n = ready.pop()
        done += 1
        a = arrival.get(n)
        for dst, delay, cell in succ.get(n, ()):
            if a is not None:
                t = a + delay
                if t > arrival.get(dst, -math.inf):
                    arrival[dst] = t
                    pred[dst] = (n, cell)
            indeg[dst] -= 1
            if indeg[dst] == 0:
                ready.append(dst)
    if done < len(nodes):
        stuck = [n for n in nodes if indeg[n] > 0]
        raise CombinationalLoop(sorted({names.of(n, str(n)) for n in stuck if isinstance(n, int)}))
    return arrival, pred


def describe(types) -> str:
    """``"13 LUT + 3 CARRY chains (8 CARRY4) + 4 MUXF + 1 DSP"`` for a list of cell types."""
    luts = sum(1 for t in types if t in LUT_TYPES or t in ("LUT6_2", "INV"))
    carry = sum(1 for t in types if t == "CARRY4")
    chains = sum(1 for i, t in enumerate(types)
                 if t == "CARRY4" and (i == 0 or types[i - 1] != "CARRY4"))
    muxf = sum(1 for t in types if t in ("MUXF7", "MUXF8"))
    parts = []
    if luts:
        parts.append(f"{luts} LUT")
    if carry:
        parts.append(f"{chains} CARRY chain{'s' if chains != 1 else ''} ({carry} CARRY4)")
    if muxf:
        parts.append(f"{muxf} MUXF")
    for label, kinds in (("DSP", DSP_TYPES), ("LUTRAM", set(LUTRAM_READ)), ("SRL", SRL_TYPES),
                         ("BRAM", BRAM_TYPES)):
        n = sum(1 for t in types if t in kinds)
        if n:
            parts.append(f"{n} {label}")
    other = sum(1 for t in types if t not in LUT_TYPES and t not in ("LUT6_2", "INV", "CARRY4",
                "MUXF7", "MUXF8") and t not in DSP_TYPES and t not in LUTRAM_READ
                and t not in SRL_TYPES and t not in BRAM_TYPES)
    if other:
        parts.append(f"{other} other")
    return " + ".join(parts) if parts else "direct"


def analyze_file(path, **kwargs) -> TimingReport:
    """:func:`analyze` on a Yosys ``write_json`` file."""
    with open(path) as f:
        return analyze(json.load(f), **kwargs)


def print_estimate(netlist_path, title: str) -> dict:
    """Analyse a netlist file, print its report under ``title``; the report as a dict (for
    the ``timing`` key of ``dpfm synth --timing`` and ``dpfm.boards.build --estimate``)."""
    report = analyze_file(netlist_path)
    print(format_report(report, title=title))
    return report.to_dict()


def format_report(report: TimingReport, title: str = "") -> str:
    """The report as text; every header says ESTIMATE."""
    fmax = "inf" if math.isinf(report.fmax_mhz) else f"{report.fmax_mhz:.1f}"
    head = (f"ESTIMATE (Yosys netlist, xc7z020-1 delay model, no placement/routing){': ' + title if title else ''}\n"
            f"ESTIMATE worst register-to-register path {report.worst_ns:.2f} ns, fmax ~{fmax} MHz")
    lines = [head]
    if report.paths:
        lines.append(_path_table("ESTIMATE worst paths", report.paths))
    if len(report.groups) > 1:
        lines.append("ESTIMATE worst path per block:")
        for grp, (ns, end) in list(report.groups.items())[:20]:
            lines.append(f"  {ns:7.2f} ns  {grp:<28} {end}")
    if report.port_paths:
        lines.append(f"ESTIMATE with registered neighbours (ports driven/captured by registers "
                     f"outside): worst {report.boundary_worst_ns:.2f} ns, fmax "
                     f"~{1000 / report.boundary_worst_ns:.1f} MHz")
        lines.append(_path_table("ESTIMATE port paths (not in the fmax above)",
                                 report.port_paths[:5]))
    if report.unknown_cells:
        lines.append("ESTIMATE cells timed as a LUT (unknown to the model): "
                     + ", ".join(f"{t} x{n}" for t, n in sorted(report.unknown_cells.items())))
    return "\n".join(lines)


def _path_table(title, paths):
    rows = [(f"{p.delay_ns:.2f}", p.start, p.end, p.depth) for p in paths]
    head = ("ns", "start", "end", "depth")
    w = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    out = [f"{title}:", f"  {head[0]:>{w[0]}}  {head[1]:<{w[1]}}  {head[2]:<{w[2]}}  {head[3]}"]
    out += [f"  {r[0]:>{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    """``python -m dpfm.rtl.timing NETLIST.json``: the ESTIMATE of a netlist written before."""
    p = argparse.ArgumentParser(prog="python -m dpfm.rtl.timing",
                                description="Static timing ESTIMATE of a Yosys synth_xilinx "
                                            "netlist (write_json) for the xc7z020-1.")
    p.add_argument("netlist", help="Yosys write_json netlist")
    p.add_argument("--top", help="module to time (default: the top module)")
    p.add_argument("--paths", type=int, default=10, help="paths to list (default 10)")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON here")
    args = p.parse_args(argv)
    try:
        report = analyze_file(args.netlist, top=args.top, n_paths=args.paths)
    except (OSError, ValueError, KeyError) as exc:
        print(f"dpfm timing: {exc}", file=sys.stderr)
        return 1
    print(format_report(report, title=str(args.netlist)))
    if args.json:
        write_json(args.json, report.to_dict(), make_dirs=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
