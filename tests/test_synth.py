"""`dpfm synth` (Yosys synth_xilinx estimates), its log check, and Verilator lint of each block."""

import json
import os
import shutil
import stat

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config
from dpfm.rtl import synth
from dpfm.rtl.activation import ActivationUnit
from dpfm.rtl.dual_scale import DualScale


def need_yosys():
    if shutil.which(os.environ.get("DPFM_YOSYS", "yosys")) is None:
        message = "no yosys on PATH: run tools/install-yosys.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def dual_scale_k4(tmp_path_factory):
    """`dpfm synth --block dual_scale --k 4 --lanes 5 --json ...`: (exit status, JSON, log text)."""
    need_yosys()
    d = tmp_path_factory.mktemp("synth")
    out = d / "out.json"
    rc = synth.main(["--block", "dual_scale", "--k", "4", "--lanes", "5", "--json", str(out),
                     "--workdir", str(d / "work")])
    res = json.loads(out.read_text())
    return rc, res, (d / "work" / "yosys.log").read_text()


def test_dual_scale_k4_every_multiply_on_a_dsp(dual_scale_k4, capsys):
    rc, res, _ = dual_scale_k4
    assert rc == 0
    assert res["DSP48E1"] == 5 and res["soft_mul"] == 0
    assert res["block"] == "dual_scale" and res["k"] == 4 and res["lanes"] == 5
    assert res["config"]["k"] == 4 and res["device"]["part"] == "xc7z020"
    assert res["util_pct"]["DSP48E1"] == round(100 * 5 / 220, 2)
    assert res["LUT"] > 0 and res["FF"] > 0 and res["BRAM36"] == 0


class TinyMultiply(wiring.Component):
    """A 4 x 4 multiply: below the DSP mapping's minimum width, so it stays in the fabric."""
    a: In(signed(4))
    b: In(signed(4))
    p: Out(signed(8))

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.p.eq(self.a * self.b)
        return m


def test_soft_multiply_is_counted(tmp_path):
    need_yosys()
    res = synth.estimate(TinyMultiply(), "tiny_mul", tmp_path)
    assert res["soft_mul"] == 1 and res["DSP48E1"] == 0
    assert res["yosys"].startswith("Yosys ")


def test_truncated_log_is_refused(dual_scale_k4):
    """The yowasp failure mode: the log stops inside ABC; also a log cut after the stat."""
    _, res, text = dual_scale_k4
    assert synth.parse_log(text)["cells"]["DSP48E1"] == 5
    cut = text[:text.index("Executing ABC")]
    with pytest.raises(RuntimeError, match="incomplete.*no final statistics section"):
        synth.parse_log(cut)
    no_end = text[:text.rindex("End of script.")]
    with pytest.raises(RuntimeError, match="no 'End of script.' after the statistics"):
        synth.parse_log(no_end)
    with pytest.raises(RuntimeError, match="no soft-multiply count"):
        synth.parse_log(text[:text.index("DPFM-SOFT-MUL-BEGIN")])
    broken = text.replace('"num_cells_by_type"', '"num_cells_by_tpye"')
    with pytest.raises(RuntimeError, match="not the JSON of 'stat -json'"):
        synth.parse_log(broken)


def fake_yosys(tmp_path, log_text, status):
    """A stand-in `yosys` that writes ``log_text`` to its -l log and exits with ``status``."""
    script = tmp_path / "fake-yosys"
    (tmp_path / "fake.log").write_text(log_text)
    script.write_text(f"#!/bin/sh\ncp '{tmp_path / 'fake.log'}' \"$3\"\nexit {status}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_silent_crash_with_exit_0_is_refused(dual_scale_k4, tmp_path):
    _, _, text = dual_scale_k4
    exe = fake_yosys(tmp_path, text[:text.index("Executing ABC") + 40], 0)
    with pytest.raises(RuntimeError, match="Yosys stopped before the final statistics"):
        synth.estimate(DualScale(Config(k=1)), "ds", tmp_path / "w1", yosys=exe)
    exe = fake_yosys(tmp_path, text, 3)
    with pytest.raises(RuntimeError, match="yosys exited with status 3"):
        synth.estimate(DualScale(Config(k=1)), "ds", tmp_path / "w2", yosys=exe)


def test_bad_flags_exit_2_with_one_line(capsys, tmp_path):
    for argv in (["--block", "alu", "--k", "4"], ["--k", "4"], ["--block", "topk", "--k", "x"]):
        with pytest.raises(SystemExit) as exc:
            synth.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("dpfm synth: "), err
    for argv, message in ((["--block", "dual_scale", "--k", "0"], "k=0 is below the minimum"),
                          (["--block", "dual_scale", "--k", "4", "--lanes", "6"], "lanes=6")):
        assert synth.main(argv + ["--json", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.json").exists()


def test_missing_yosys_is_reported(tmp_path, capsys):
    rc = synth.main(["--block", "dual_scale", "--k", "1", "--yosys", "no-such-yosys",
                     "--workdir", str(tmp_path)])
    assert rc == 1
    assert "tools/install-yosys.sh" in capsys.readouterr().err


# -- Verilator lint ----------------------------------------------------------------------------

def blocks():
    cfg = Config(k=4, net=(4, 5, 5, 5, 1), activations=("sigmoid", "tanh", "relu", "linear"))
    yield "dual_scale_l5", lambda: DualScale(cfg, lanes=5)
    yield "dual_scale_l2", lambda: DualScale(cfg, lanes=2, scalar_fmt=cfg.formats.deriv)
    yield "dual_scale_l1", lambda: DualScale(cfg, lanes=1)
    yield "activation", lambda: ActivationUnit(cfg)

    def topk():
        from dpfm.rtl.topk import TopKMerger
        return TopKMerger(cfg)
    yield "topk", topk


@pytest.mark.parametrize("name,make", list(blocks()), ids=[n for n, _ in blocks()])
def test_verilator_lint_clean(name, make, tmp_path):
    remaining = synth.lint(make(), name, tmp_path)
    assert remaining == [], "\n".join(remaining)


def test_lint_waivers_have_reasons():
    assert all(len(reason) > 20 for reason in synth.LINT_WAIVED.values())
