"""The step protocol: the words a host writes and reads to run one engine step, written once.

The host's :class:`~dpfm.host.Trainer` (over any transport) and the cocotb bench
(:class:`dpfm.sim.engine_bench.EngineTB`, over cocotbext-axi) both drive the engine with these
functions; only the bus that carries the words differs.  Pure Python (no Amaranth), so the
board's Python imports it.

A step is:

1. the samples, :func:`sample_words` (row ``s`` of SAMPLES: ``n_in`` inputs then ``n_out``
   targets, value format, two's complement in 32 bits);
2. the settings, :func:`setting_words` (BATCH_N, UPDATE and the update rule's scale: LR_Q
   for maxnorm, SGD_CQ and SGD_CS for sgd, from :func:`dpfm.reference.lr_quantize` and
   :func:`dpfm.reference.sgd_scale`);
3. CTRL := :data:`START_WORD`, then STATUS polled until busy is clear
   (:func:`status_fields`: an error code in STATUS[15:8] means the start was refused);
4. the results, :data:`RESULT_REGISTERS` (:data:`EVAL_REGISTERS` after a forward-only step),
   with the loss from :func:`loss_raw`; sticky FLAGS are cleared with :data:`CLEAR_FLAGS_WORD`.
"""

from __future__ import annotations

import numpy as np

from dpfm.reference.mlp import lr_quantize, sgd_scale

from .regmap import CTRL, STATUS, STATUS_ERROR_SHIFT, UPDATE

__all__ = ["setting_words", "sample_words", "status_fields", "loss_raw", "word",
           "START_WORD", "CLEAR_FLAGS_WORD", "RESULT_REGISTERS", "EVAL_REGISTERS"]

#: CTRL value that starts a step.
START_WORD = 1 << CTRL["start"]
#: CTRL value that clears the sticky FLAGS.
CLEAR_FLAGS_WORD = 1 << CTRL["clear_flags"]
#: Registers read after a training step, in this order.
RESULT_REGISTERS = ("LOSS_LO", "LOSS_HI", "FLAGS", "CYCLES", "MUL_BUSY", "MERGE_BUSY")
#: Registers read after a forward-only step (``update="none"``).
EVAL_REGISTERS = RESULT_REGISTERS[:3]


def word(value: int) -> int:
    """``value`` as the 32-bit bus word (two's complement for negatives)."""
    return int(value) & 0xFFFFFFFF


def setting_words(config, update: str, lr: float, n: int) -> list:
    """``[(register name, value), ...]`` that set up a step of ``n`` samples.

    ``update`` is ``"maxnorm"``, ``"sgd"`` or ``"none"`` (forward and loss only; ``lr``
    unused).  Values are integers as the registers hold them (SGD_CS may be negative: write
    :func:`word` of it).
    """
    regs = [("BATCH_N", int(n)), ("UPDATE", UPDATE[update])]
    if update == "maxnorm":
        regs.append(("LR_Q", int(lr_quantize(lr, config.formats))))
    elif update == "sgd":
        c_q, cs = sgd_scale(lr, n * config.n_out)
        regs += [("SGD_CQ", int(c_q)), ("SGD_CS", int(cs))]
    return regs


def sample_words(regmap, Xq, yq) -> tuple:
    """``(addresses, words)`` that load raw samples ``Xq`` (n, n_in) and targets ``yq``
    (n, n_out) into the SAMPLES window, row by row."""
    Xq = np.asarray(Xq, dtype=np.int64)
    yq = np.asarray(yq, dtype=np.int64).reshape(len(Xq), -1)
    win = regmap["SAMPLES"]
    rows = np.concatenate([Xq, yq], axis=1)
    addrs = [win.row_addr(s, c) for s in range(rows.shape[0]) for c in range(rows.shape[1])]
    return addrs, (rows.ravel() & 0xFFFFFFFF).tolist()


def status_fields(status: int) -> tuple:
    """``(busy, done, error_code)`` of a STATUS word."""
    return (bool(status >> STATUS["busy"] & 1), bool(status >> STATUS["done"] & 1),
            status >> STATUS_ERROR_SHIFT & 0xFF)


def loss_raw(lo: int, hi: int) -> int:
    """``sum(e**2)`` of the step from LOSS_LO and LOSS_HI (fraction ``2 * value.frac``)."""
    return int(lo) | int(hi) << 32
