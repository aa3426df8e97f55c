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

import dataclasses

import numpy as np

from dpfm.reference.mlp import lr_quantize, sgd_scale

from .regmap import CTRL, RUN_OPTS, RUN_STATUS, STATUS, STATUS_ERROR_SHIFT, UPDATE

__all__ = ["setting_words", "sample_words", "status_fields", "loss_raw", "word",
           "START_WORD", "CLEAR_FLAGS_WORD", "RESULT_REGISTERS", "EVAL_REGISTERS",
           "RUN_WORD", "STOP_WORD", "RUN_ALIGN", "LOG_WORDS", "LOG_FIELDS", "SNAP_BURST", "MAX_BURST",
           "RunLayout", "run_layout", "pack_run", "run_setting_words", "EpochLog", "parse_log",
           "snapshot", "run_status_fields"]

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


# ------------------------------------------------------------------------------ run mode
#: CTRL value that starts a run.
RUN_WORD = 1 << CTRL["run"]
#: CTRL value that asks a run to stop after the current epoch.
STOP_WORD = 1 << CTRL["stop"]
#: Every area of the run buffer starts at a multiple of this many bytes (so no burst crosses
#: a 4 KiB boundary, as AXI forbids).
RUN_ALIGN = 4096
#: Words of one epoch's log entry (one 16-beat burst); see :data:`LOG_FIELDS`.
LOG_WORDS = 16
#: Word of the log entry -> what it holds (``_lo``/``_hi``: the two halves of a 64-bit sum).
LOG_FIELDS = ("epoch_flags", "train_loss_lo", "train_loss_hi", "val_loss_lo", "val_loss_hi",
              "val_hits", "sat_value_grad", "sat_delta_weight", "steps", "cycles", "cycles_min",
              "cycles_max", "mul_busy", "merge_busy", "eval_cycles", "stamp")
#: Snapshot slots are padded to a multiple of this many words (one 16-beat burst each).
SNAP_BURST = 16
#: Longest AXI4 burst the engine issues (beats); a row longer than this is read in pieces of
#: this many words, each at a multiple of ``4 * MAX_BURST`` bytes.
MAX_BURST = 256


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _align(n: int, a: int = RUN_ALIGN) -> int:
    return -(-int(n) // a) * a


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """Where everything of one run lies in its memory buffer (byte offsets from its start).

    ``train`` and ``val``: one row per sample, ``row_words`` apart (the SAMPLES window's row
    layout: ``n_in`` inputs then ``n_out`` targets, value format, two's complement).
    ``perm``: per epoch and per training step, a slot of ``perm_stride`` words holding the
    indices (rows of ``train``) of that step's samples.  ``log``: :data:`LOG_WORDS` words per
    epoch, written by the engine.  ``snap``: per epoch, the weights after it (``n_params``
    words in the public order, weight format, sign-extended; slots ``snap_words`` apart),
    written by the engine before that epoch's log entry.  Every area starts at a multiple of
    :data:`RUN_ALIGN`; the buffer's own address must be one too.
    """
    n_train: int
    n_val: int
    epochs: int
    batch: int
    steps: int              # training steps per epoch
    row_words: int
    perm_stride: int
    n_params: int
    snap_words: int
    train: int
    val: int
    perm: int
    log: int
    snap: int
    nbytes: int

    @property
    def nwords(self) -> int:
        return self.nbytes // 4

    def perm_slot(self, epoch: int, step: int) -> int:
        """Word offset of the batch order of training step ``step`` of ``epoch``."""
        return (self.perm + 4 * (epoch * self.steps + step) * self.perm_stride) // 4

    def log_entry(self, epoch: int) -> int:
        """Word offset of ``epoch``'s log entry."""
        return (self.log + 4 * epoch * LOG_WORDS) // 4

    def snap_slot(self, epoch: int) -> int:
        """Word offset of the weights after ``epoch``."""
        return (self.snap + 4 * epoch * self.snap_words) // 4


def run_layout(config, n_train: int, n_val: int, epochs: int) -> RunLayout:
    """The buffer layout of a run of ``epochs`` over ``n_train`` training and ``n_val``
    validation samples on the engine built for ``config``."""
    n_train, n_val, epochs = int(n_train), int(n_val), int(epochs)
    if n_train < 1 or n_val < 0 or epochs < 0:
        raise ValueError(f"a run needs at least one training sample and no negative count "
                         f"(n_train={n_train}, n_val={n_val}, epochs={epochs})")
    row = _pow2(config.n_in + config.n_out)
    steps = -(-n_train // config.batch)
    stride = _pow2(config.batch)
    snap_words = -(-config.n_params // SNAP_BURST) * SNAP_BURST
    train = 0
    val = _align(train + 4 * n_train * row)
    perm = _align(val + 4 * n_val * row)
    log = _align(perm + 4 * epochs * steps * stride)
    snap = _align(log + 4 * epochs * LOG_WORDS)
    end = _align(snap + 4 * epochs * snap_words)
    return RunLayout(n_train, n_val, epochs, config.batch, steps, row, stride, config.n_params,
                     snap_words, train, val, perm, log, snap, max(end, RUN_ALIGN))


def pack_run(layout: RunLayout, words, Xq, yq, Xvq=None, yvq=None, perms=()) -> None:
    """Write the corpus and batch order of a run into ``words`` (a uint32 array of at least
    ``layout.nwords``): rows of ``Xq``/``yq`` (and the validation ``Xvq``/``yvq``), value-format
    integers, and ``perms[e]``, epoch ``e``'s permutation of the training rows."""
    words = np.asarray(words)
    if words.dtype != np.uint32 or words.size < layout.nwords:
        raise ValueError(f"the run needs a uint32 buffer of {layout.nwords} words, not "
                         f"{words.dtype} x {words.size}")

    def rows(at, X, y, n):
        if n == 0:
            return
        X = np.asarray(X, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64).reshape(len(X), -1)
        block = np.zeros((n, layout.row_words), dtype=np.uint32)
        block[:, :X.shape[1] + y.shape[1]] = (np.concatenate([X, y], axis=1) & 0xFFFFFFFF)
        words[at // 4:at // 4 + n * layout.row_words] = block.ravel()

    rows(layout.train, Xq, yq, layout.n_train)
    if layout.n_val:
        rows(layout.val, Xvq, yvq, layout.n_val)
    if len(perms) != layout.epochs:
        raise ValueError(f"{layout.epochs} epochs need {layout.epochs} permutations, not {len(perms)}")
    B = layout.batch
    for e, perm in enumerate(perms):
        perm = np.asarray(perm, dtype=np.int64)
        if sorted(perm.tolist()) != list(range(layout.n_train)):
            raise ValueError(f"epoch {e}: the batch order is not a permutation of the "
                             f"{layout.n_train} training rows")
        slots = np.zeros((layout.steps, layout.perm_stride), dtype=np.uint32)
        padded = np.zeros(layout.steps * B, dtype=np.uint32)
        padded[:layout.n_train] = perm
        slots[:, :B] = padded.reshape(layout.steps, B)
        at = layout.perm_slot(e, 0)
        words[at:at + slots.size] = slots.ravel()


def run_setting_words(config, layout: RunLayout, base: int, update: str, lr: float,
                      classify: bool = False) -> list:
    """``[(register name, value), ...]`` that set up a run whose buffer starts at bus address
    ``base`` (the step settings of a full batch, the sgd scale of the last smaller batch, the
    areas, the counts and RUN_OPTS).  Write them, then CTRL := :data:`RUN_WORD`."""
    if update not in ("maxnorm", "sgd"):
        raise ValueError(f"a run trains with maxnorm or sgd, not {update!r}")
    base = int(base)
    if base % RUN_ALIGN or base < 0 or base + layout.nbytes > 1 << 32:
        raise ValueError(f"the run buffer's bus address 0x{base:x} must be a multiple of "
                         f"{RUN_ALIGN} with its {layout.nbytes} bytes below 4 GiB")
    regs = setting_words(config, update, lr, config.batch)
    last = layout.n_train % config.batch
    if update == "sgd":
        c_q, cs = sgd_scale(lr, (last or config.batch) * config.n_out)
        regs += [("SGD_CQ_LAST", int(c_q)), ("SGD_CS_LAST", int(cs))]
    regs += [("RUN_TRAIN_ADDR", base + layout.train), ("RUN_VAL_ADDR", base + layout.val),
             ("RUN_PERM_ADDR", base + layout.perm), ("RUN_LOG_ADDR", base + layout.log),
             ("RUN_SNAP_ADDR", base + layout.snap), ("RUN_TRAIN_N", layout.n_train),
             ("RUN_VAL_N", layout.n_val), ("RUN_EPOCHS", layout.epochs),
             ("RUN_OPTS", int(bool(classify)) << RUN_OPTS["classify"])]
    return regs


@dataclasses.dataclass(frozen=True)
class EpochLog:
    """One epoch's log entry as the engine wrote it (see :data:`LOG_FIELDS`).

    Loss sums are raw (``2 * value.frac`` fractional bits) over the forward-only passes of
    the epoch's end; ``sat_*`` count the training steps that raised that flag; ``flags`` is the
    OR of the FLAGS the epoch's steps left; cycles are those of the training steps (CYCLES),
    ``eval_cycles`` those of the forward-only passes; ``stamp`` is RUN_CYCLES (low 32 bits)
    when the entry was written.
    """
    epoch: int
    flags: int
    train_loss_raw: int
    val_loss_raw: int
    val_hits: int
    sat_value: int
    sat_grad: int
    sat_delta: int
    sat_weight: int
    steps: int
    cycles: int
    cycles_min: int
    cycles_max: int
    mul_busy: int
    merge_busy: int
    eval_cycles: int
    stamp: int


def parse_log(words, layout: RunLayout, epoch: int) -> EpochLog:
    """``epoch``'s log entry from the run buffer ``words``."""
    at = layout.log_entry(epoch)
    w = [int(x) for x in np.asarray(words[at:at + LOG_WORDS], dtype=np.uint64)]
    f = dict(zip(LOG_FIELDS, w))
    return EpochLog(
        epoch=f["epoch_flags"] & 0xFFFF, flags=f["epoch_flags"] >> 16 & 0xFF,
        train_loss_raw=f["train_loss_lo"] | f["train_loss_hi"] << 32,
        val_loss_raw=f["val_loss_lo"] | f["val_loss_hi"] << 32, val_hits=f["val_hits"],
        sat_value=f["sat_value_grad"] & 0xFFFF, sat_grad=f["sat_value_grad"] >> 16,
        sat_delta=f["sat_delta_weight"] & 0xFFFF, sat_weight=f["sat_delta_weight"] >> 16,
        steps=f["steps"], cycles=f["cycles"], cycles_min=f["cycles_min"],
        cycles_max=f["cycles_max"], mul_busy=f["mul_busy"], merge_busy=f["merge_busy"],
        eval_cycles=f["eval_cycles"], stamp=f["stamp"])


def snapshot(words, layout: RunLayout, epoch: int) -> np.ndarray:
    """The weights (weight-format integers, public order) the engine saved after ``epoch``."""
    at = layout.snap_slot(epoch)
    w = np.asarray(words[at:at + layout.n_params], dtype=np.int64) & 0xFFFFFFFF
    return np.where(w >= 1 << 31, w - (1 << 32), w)


def run_status_fields(status: int) -> dict:
    """RUN_STATUS as ``{"running", "done", "stopped", "error", "epochs"}``."""
    return {"running": bool(status >> RUN_STATUS["running"] & 1),
            "done": bool(status >> RUN_STATUS["done"] & 1),
            "stopped": bool(status >> RUN_STATUS["stopped"] & 1),
            "error": status >> RUN_STATUS["error_shift"] & 0xFF,
            "epochs": status >> RUN_STATUS["epoch_shift"] & 0xFFFF}
