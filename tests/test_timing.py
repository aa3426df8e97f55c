"""dpfm.rtl.timing: the static timing ESTIMATE on hand-made netlists and on one Yosys run."""

import json
import math
import os
import shutil

import pytest
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dpfm.rtl import synth, timing
from dpfm.rtl.timing import XC7Z020_1 as M


class Netlist:
    """A Yosys-``write_json``-shaped netlist built cell by cell (net bits are ints from 10)."""

    def __init__(self):
        self.cells, self.netnames, self.ports = {}, {}, {}
        self.next_bit = 10
        self.clk = self.port("clk", "input")[0]

    def bits(self, n=1):
        out = list(range(self.next_bit, self.next_bit + n))
        self.next_bit += n
        return out

    def port(self, name, direction, n=1):
        b = self.bits(n)
        self.ports[name] = {"direction": direction, "bits": b}
        self.netnames[name] = {"hide_name": 0, "bits": b}
        return b

    def name(self, name, bits, hidden=False):
        self.netnames[name] = {"hide_name": int(hidden), "bits": list(bits)}

    def cell(self, type_, ins, outs, **params):
        cname = f"$c{len(self.cells)}"
        conn = {**ins, **outs}
        dirs = {**{p: "input" for p in ins}, **{p: "output" for p in outs}}
        self.cells[cname] = {"type": type_, "parameters": params, "port_directions": dirs,
                             "connections": {p: (b if isinstance(b, list) else [b])
                                             for p, b in conn.items()}}
        return cname

    def ff(self, d, name=None):
        q = self.bits()[0]
        self.cell("FDRE", {"C": self.clk, "CE": "1", "R": "0", "D": d}, {"Q": q})
        if name:
            self.name(name, [q])
        return q

    def lut(self, *ins):
        o = self.bits()[0]
        self.cell(f"LUT{len(ins)}", {f"I{i}": b for i, b in enumerate(ins)}, {"O": o},
                  INIT="0" * (1 << len(ins)))
        return o

    def json(self):
        return {"modules": {"top": {"attributes": {"top": "1".zfill(32)}, "ports": self.ports,
                                    "cells": self.cells, "netnames": self.netnames}}}


def hop(fanout=1):
    return M.net_ns + M.fanout_ns_per_doubling * math.log2(fanout)


def test_three_luts_between_registers():
    n = Netlist()
    a = n.ff("0", "acc_q")
    x = n.lut(n.lut(n.lut(a)))
    n.ff(x, "result")
    r = timing.analyze(n.json())
    expect = M.ff_clk_to_q + 3 * (hop() + M.lut_ns[0]) + hop() + M.ff_setup_d
    assert r.worst_ns == pytest.approx(expect, abs=1e-3)
    assert r.fmax_mhz == pytest.approx(1000 / r.worst_ns)
    p = r.paths[0]
    assert (p.start, p.end, p.depth) == ("acc_q", "result", "3 LUT")
    assert p.cells == ("FDRE", "LUT1", "LUT1", "LUT1", "FDRE")


def test_fanout_penalty_and_register_names_per_bit():
    n = Netlist()
    src = n.ff("0", "stall")
    outs = [n.lut(src) for _ in range(16)]
    q = [n.ff(o) for o in outs]
    n.name("enables", q)
    r = timing.analyze(n.json())
    assert r.worst_ns == pytest.approx(M.ff_clk_to_q + hop(16) + M.lut_ns[0] + hop()
                                       + M.ff_setup_d, abs=1e-3)
    # one row per distinct end signal: the 16 bits of `enables` give one path
    assert len(r.paths) == 1
    assert r.paths[0].start == "stall" and r.paths[0].end.startswith("enables[")


def test_carry_chain_entry_and_further_carry4():
    n = Netlist()
    a = n.ff("0", "a_q")
    s = n.lut(a)
    co1, co2, o3 = n.bits(4), n.bits(4), n.bits(4)
    n.cell("CARRY4", {"CI": "0", "CYINIT": "0", "DI": ["0"] * 4, "S": [s, "0", "0", "0"]},
           {"CO": co1, "O": n.bits(4)})
    n.cell("CARRY4", {"CI": co1[3], "CYINIT": "0", "DI": ["0"] * 4, "S": ["0"] * 4},
           {"CO": co2, "O": n.bits(4)})
    n.cell("CARRY4", {"CI": co2[3], "CYINIT": "0", "DI": ["0"] * 4, "S": ["0"] * 4},
           {"CO": n.bits(4), "O": o3})
    n.ff(o3[3], "sum_msb")
    r = timing.analyze(n.json())
    expect = (M.ff_clk_to_q + hop() + M.lut_ns[0] + hop() + M.carry_s_co   # entry
              + M.carry_ci_co3                                            # CO[3] -> CI, no net
              + M.carry_ci_o + hop() + M.ff_setup_d)
    assert r.worst_ns == pytest.approx(expect, abs=1e-3)
    assert r.paths[0].depth == "1 LUT + 1 CARRY chain (3 CARRY4)"
    assert (r.paths[0].start, r.paths[0].end) == ("a_q", "sum_msb")


def test_muxf7_from_lut_is_a_dedicated_wire():
    n = Netlist()
    a = n.ff("0", "sel_q")
    l0, l1 = n.lut(a), n.lut(a)
    o = n.bits()[0]
    n.cell("MUXF7", {"I0": l0, "I1": l1, "S": "0"}, {"O": o})
    n.ff(o, "picked")
    r = timing.analyze(n.json())
    assert r.worst_ns == pytest.approx(M.ff_clk_to_q + hop(2) + M.lut_ns[0] + M.muxf7_data
                                       + hop() + M.ff_setup_d, abs=1e-3)
    assert r.paths[0].depth == "1 LUT + 1 MUXF"


def dsp_netlist(**regs):
    n = Netlist()
    a = [n.ff("0") for _ in range(4)]
    n.name("mul_a", a)
    p = n.bits(48)
    params = {"AREG": 0, "BREG": 0, "CREG": 0, "MREG": 0, "PREG": 0, "ADREG": 0, "DREG": 0,
              "OPMODEREG": 0, "ALUMODEREG": 0, "INMODEREG": 0, "CARRYINREG": 0,
              "CARRYINSELREG": 0, "USE_MULT": "MULTIPLY", "USE_DPORT": "FALSE"}
    params.update({k: v for k, v in regs.items()})
    params = {k: (format(v, "032b") if isinstance(v, int) else v) for k, v in params.items()}
    n.cell("DSP48E1", {"CLK": n.clk, "A": a + ["0"] * 26, "B": ["0"] * 18},
           {"P": p, "PCOUT": n.bits(48)}, **params)
    q = [n.ff(b) for b in p[:8]]
    n.name("product", q)
    return n


def test_dsp_combinational_when_unregistered():
    r = timing.analyze(dsp_netlist().json())
    d = M.dsp
    assert r.worst_ns == pytest.approx(M.ff_clk_to_q + hop() + d["a_p"] + hop()
                                       + M.ff_setup_d, abs=1e-3)
    assert r.paths[0].depth == "1 DSP"
    assert r.paths[0].start.startswith("mul_a[") and r.paths[0].end.startswith("product[")


def test_dsp_with_registers_splits_the_path():
    r = timing.analyze(dsp_netlist(AREG=1, BREG=1, MREG=1, PREG=1).json())
    d = M.dsp
    into_a = M.ff_clk_to_q + hop() + d["a_areg"]
    out_of_p = d["p_preg"] + hop() + M.ff_setup_d
    assert r.worst_ns == pytest.approx(max(into_a, out_of_p), abs=1e-3)
    ends = {p.end_kind for p in r.paths}
    assert ends == {"DSP48E1", "FDRE"}
    # MREG only: A has a long setup to the M register, P leaves from it
    r = timing.analyze(dsp_netlist(MREG=1).json())
    assert r.worst_ns == pytest.approx(max(M.ff_clk_to_q + hop() + d["a_mreg"],
                                           d["p_mreg"] + hop() + M.ff_setup_d), abs=1e-3)


def test_dsp_cascade_pcout_to_pcin():
    n = Netlist()
    a = n.ff("0", "x")
    pc = n.bits(48)
    regs = {k: format(1, "032b") for k in ("AREG", "BREG", "MREG", "PREG", "CREG")}
    n.cell("DSP48E1", {"CLK": n.clk, "A": [a] + ["0"] * 29}, {"PCOUT": pc, "P": n.bits(48)},
           USE_MULT="MULTIPLY", **regs)
    n.cell("DSP48E1", {"CLK": n.clk, "PCIN": pc}, {"P": n.bits(48)}, USE_MULT="MULTIPLY",
           **regs)
    r = timing.analyze(n.json())
    d = M.dsp
    assert r.worst_ns == pytest.approx(d["p_preg"] + d["pcout_extra"] + d["pcin_preg"], abs=1e-3)
    assert r.paths[0].end.endswith(".PCIN")


@pytest.mark.parametrize("do_reg, key", [(0, "do"), (1, "do_reg")])
def test_bram_clock_to_out(do_reg, key):
    n = Netlist()
    do = n.bits(16)
    n.cell("RAMB18E1", {"CLKARDCLK": n.clk, "ADDRARDADDR": ["0"] * 14},
           {"DOADO": do}, DOA_REG=format(do_reg, "032b"), DOB_REG=format(0, "032b"))
    n.name("table_rd", do)
    n.ff(n.lut(do[0]), "looked_up")
    r = timing.analyze(n.json())
    assert r.worst_ns == pytest.approx(M.bram[key] + hop() + M.lut_ns[0] + hop()
                                       + M.ff_setup_d, abs=1e-3)
    assert r.paths[0].start == "table_rd[0]" and r.paths[0].start_kind == "RAMB18E1"


def test_lutram_read_path():
    n = Netlist()
    addr = [n.ff("0") for _ in range(6)]
    n.name("rd_addr", addr)
    do = n.bits()[0]
    n.cell("RAM64M", {"WCLK": n.clk, "ADDRA": addr, "ADDRD": addr, "DIA": "0", "WE": "0"},
           {"DOA": do})
    n.ff(do, "banked")
    r = timing.analyze(n.json())
    read = M.ff_clk_to_q + hop(2) + M.lutram["read"] + hop() + M.ff_setup_d
    write_addr = M.ff_clk_to_q + hop(2) + M.lutram["addr"]
    assert r.worst_ns == pytest.approx(max(read, write_addr), abs=1e-3)
    assert r.paths[0].depth == "1 LUTRAM" and r.paths[0].end == "banked"


def test_combinational_loop_is_refused():
    n = Netlist()
    a = n.ff("0", "seed")
    x, y = n.bits()[0], n.bits()[0]
    n.cell("LUT2", {"I0": a, "I1": y}, {"O": x})
    n.cell("LUT1", {"I0": x}, {"O": y})
    n.name("ring_a", [x])
    n.name("ring_b", [y])
    n.ff(x, "out")
    with pytest.raises(timing.CombinationalLoop) as exc:
        timing.analyze(n.json())
    assert set(exc.value.nets) == {"ring_a", "ring_b"}


def test_port_paths_do_not_set_fmax():
    n = Netlist()
    i = n.port("i_data", "input")[0]
    q = n.ff(n.lut(n.lut(n.lut(n.lut(i)))), "captured")
    n.ff(q, "copy")
    r = timing.analyze(n.json())
    assert r.worst_ns == pytest.approx(M.ff_clk_to_q + hop() + M.ff_setup_d, abs=1e-3)
    assert r.port_paths[0].start == "i_data" and r.port_paths[0].end == "captured"
    assert r.port_paths[0].depth == "4 LUT"
    # a register outside drives the port
    assert r.port_paths[0].delay_ns == pytest.approx(M.ff_clk_to_q + 4 * (hop() + M.lut_ns[0])
                                                     + hop() + M.ff_setup_d, abs=1e-3)
    assert r.boundary_worst_ns == r.port_paths[0].delay_ns


def test_report_text_and_json_say_estimate():
    n = Netlist()
    n.ff(n.lut(n.ff("0", "a")), "b")
    r = timing.analyze(n.json())
    text = timing.format_report(r, title="tiny")
    assert all(line.startswith(("ESTIMATE", " ")) for line in text.splitlines())
    d = json.loads(json.dumps(r.to_dict()))
    assert d["estimate"] is True and d["paths"][0]["start"] == "a"
    assert d["model"]["net_ns"] == M.net_ns


def test_no_register_paths():
    r = timing.analyze(Netlist().json())
    assert r.worst_ns == 0.0 and math.isinf(r.fmax_mhz) and r.paths == []


# -- one real Yosys run ----------------------------------------------------------------------

def need_yosys():
    if shutil.which(os.environ.get("DPFM_YOSYS", "yosys")) is None:
        message = "no yosys on PATH: run tools/install-yosys.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class RegisteredAdder(wiring.Component):
    """``total <= addend_a + addend_b`` on 16 bits, both operands registered."""
    a: In(unsigned(16))
    b: In(unsigned(16))
    total: Out(unsigned(16))

    def elaborate(self, platform):
        m = Module()
        addend_a = Signal(16)
        addend_b = Signal(16)
        m.d.sync += [addend_a.eq(self.a), addend_b.eq(self.b),
                     self.total.eq(addend_a + addend_b)]
        return m


def test_yosys_netlist_of_a_registered_adder(tmp_path):
    need_yosys()
    res = synth.estimate(RegisteredAdder(), "reg_adder", tmp_path)
    r = timing.analyze_file(res["netlist"])
    assert 0 < r.worst_ns < 10 and math.isfinite(r.fmax_mhz)
    p = r.paths[0]
    assert p.start.split("[")[0] in ("addend_a", "addend_b")
    assert p.end.startswith("total[")
    assert "CARRY4" in p.depth and p.start_kind == "FDRE" and p.end_kind == "FDRE"
    # the sum's top bit rides the whole chain: 16 bits are 4 CARRY4
    assert p.depth.endswith("1 CARRY chain (4 CARRY4)")
    assert not r.unknown_cells


def test_synth_cli_timing_flag(tmp_path, capsys):
    need_yosys()
    out = tmp_path / "act.json"
    rc = synth.main(["--block", "activation", "--k", "4", "--timing", "--json", str(out),
                     "--workdir", str(tmp_path / "w")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ESTIMATE worst register-to-register path" in text
    t = json.loads(out.read_text())["timing"]
    assert t["estimate"] is True and t["fmax_mhz"] > 0 and len(t["paths"]) >= 1
    names = [p["start"] for p in t["paths"]] + [p["end"] for p in t["paths"]]
    assert not any(n.startswith("$") for n in names[:2]), names


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_board_estimate_includes_engine_timing(monkeypatch, tmp_path, capsys):
    """`make synth` (boards.build --estimate --timing): the engine's ESTIMATE in the JSON.

    Yosys is faked (the whole engine takes minutes); the netlist is a hand-made one.
    """
    import gc

    from dpfm.boards import build as board_build
    n = Netlist()
    n.ff(n.lut(n.lut(n.ff("0", "lane0.acc"))), "lane0.sum")
    netlist = tmp_path / "engine.netlist.json"
    netlist.write_text(json.dumps(n.json()))
    cells = {"LUT2": 2, "FDRE": 2}
    fake = dict(synth.summarize(cells, 0), cells=cells, yosys="Yosys 0.23", log="yosys.log",
                netlist=str(netlist))
    monkeypatch.setattr(synth, "estimate", lambda c, top, workdir: fake)
    out = tmp_path / "est.json"
    assert board_build.main(["--k", "2", "--batch", "1", "--estimate", "--timing", "--json",
                             str(out), "--out", str(tmp_path / "work")]) == 0
    assert "ESTIMATE worst register-to-register path" in capsys.readouterr().out
    t = json.loads(out.read_text())["timing"]
    assert t["paths"][0]["start"] == "lane0.acc" and t["paths"][0]["end"] == "lane0.sum"
    assert t["groups"]["lane0"]["end"] == "lane0.sum"
    assert board_build.main(["--timing"]) == 2
    gc.collect()
