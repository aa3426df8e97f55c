"""A mistaken access from the board's Python must not kill it (issue 12, defect 6).

On a Zynq an SLVERR or DECERR answered to a CPU load or store is an external abort: Linux
sends SIGBUS and the Python process dies ("Bus error").  So the board build answers every
access OKAY; a refused one changes nothing, raises FLAGS.bus_error and, when it is the first
since FLAGS were cleared, lands in ERR_ADDR (byte offset, bit 31 for a write).  The Trainer
reads both after every step and raises :class:`BusError` naming the access.  Simulation keeps
the SLVERR answer (the cocotb testbench checks it).  The engine runs in Amaranth's simulator
here; the emulator follows the same rules.
"""

from __future__ import annotations

import numpy as np
import pytest

from amaranth_engine import AmaranthTransport
from dpfm.boards.build import board_engine
from dpfm.config import Config
from dpfm.host import BusError, EmulatorTransport, Trainer
from dpfm.reference import MLP
from dpfm.rtl.engine import Engine
from dpfm.rtl.regmap import CTRL, ERR_ADDR_WRITE, FLAGS, Resp

SMALL = Config(net=(2, 1), activations=("linear",), k=2, batch=2)
BUS_ERROR = 1 << FLAGS["bus_error"]


def _board(config=SMALL):
    return AmaranthTransport(config, engine=board_engine(config))


def test_the_board_build_answers_okay_and_simulation_slverr():
    assert board_engine(SMALL).error_response == Resp.OKAY
    assert Engine(SMALL).error_response == Resp.SLVERR
    with AmaranthTransport(SMALL) as sim:
        with pytest.raises(BusError) as e:
            sim.write(sim.regmap["CYCLES"].offset, 1)
        assert e.value.resp == Resp.SLVERR


@pytest.mark.parametrize("make", [_board, lambda: EmulatorTransport(SMALL)], ids=["board", "emulator"])
def test_err_addr_keeps_the_first_refusal_until_flags_are_cleared(make):
    t = make()
    m = t.regmap
    cycles = m["CYCLES"].offset
    unmapped = 0x0FF0

    def refuse(op, addr):
        try:
            t.write(addr, 5) if op == "write" else t.read(addr)
        except BusError:                    # the emulator answers SLVERR, as simulation does
            assert t.name == "emulator"

    try:
        assert t.read(m["FLAGS"].offset) == 0
        refuse("write", cycles)                           # read-only: refused, unchanged
        assert t.read(cycles) == 0
        assert t.read(m["FLAGS"].offset) & BUS_ERROR
        assert t.read(m["ERR_ADDR"].offset) == cycles | ERR_ADDR_WRITE
        refuse("read", unmapped)                          # a second refusal: the first stays
        assert t.read(m["ERR_ADDR"].offset) == cycles | ERR_ADDR_WRITE
        t.write(m["CTRL"].offset, 1 << CTRL["clear_flags"])
        assert t.read(m["FLAGS"].offset) == 0
        refuse("read", unmapped)                          # after a clear: recorded again
        assert t.read(m["ERR_ADDR"].offset) == unmapped
    finally:
        t.close()


def test_trainer_names_a_refused_access_on_the_board_and_goes_on():
    """The process survives: the next step raises BusError naming the access, and the
    engine trains on afterwards, bit-exact with the emulator."""
    X = np.array([[0.5, -0.25], [0.125, 0.75]])
    y = np.array([[0.25], [0.5]])
    net = MLP(SMALL.net, SMALL.activations, seed=0)
    with _board() as board, EmulatorTransport(SMALL) as emulator:
        trainers = [Trainer(SMALL, board), Trainer(SMALL, emulator)]
        for tr in trainers:
            tr.load_weights(net)
        board.write(board.regmap["K"].offset, 7)          # a mistaken write: answered OKAY
        with pytest.raises(BusError, match=r"write to 0x0003c \(K, the first refused") as e:
            trainers[0].step(X, y, 0.01, "maxnorm")       # the step ran; then the flag tells
        assert e.value.resp is None and e.value.write
        trainers[1].step(X, y, 0.01, "maxnorm")
        for tr in trainers:
            tr.forget_registers()
            tr.step(X, y, 0.01, "maxnorm")
        assert np.array_equal(trainers[0].weights_raw(), trainers[1].weights_raw())
