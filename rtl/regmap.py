"""The engine's AXI4-Lite register map: one Python description, exported for the host.

Every offset the RTL decodes, the host driver uses and the board's Tcl address map spans
comes from :func:`register_map`.  Words are 32 bits; addresses are byte addresses.

Windows hold one word per element: WEIGHTS (the parameters in the public order, weight
format, sign-extended), SAMPLES (``batch`` rows of ``n_in`` inputs then ``n_out`` targets,
value format; each row starts at a multiple of ``row_words``, a power of two) and OUTPUTS
(``batch`` rows of ``n_out`` predictions of the last step, same row layout).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import IntEnum

from dpfm.reference.mlp import NORM_BITS, SGD_CS_MAX, SGD_CS_MIN

__all__ = ["Register", "Window", "RegisterMap", "register_map", "ID_MAGIC", "ADDR_BITS",
           "WINDOW_BITS", "CTRL", "STATUS", "FLAGS", "ERR_ADDR_WRITE", "UPDATE", "StartError", "ERRORS", "Resp",
           "RUN_STATUS", "RUN_OPTS", "RunError", "RUN_ERRORS", "SAT_FLAGS"]

ID_MAGIC = 0x4450464D          # "DPFM"
ADDR_BITS = 18                 # 256 KiB of address space
WINDOW_BITS = 16               # a window spans 2**16 bytes: word address bits [14:16] pick it

# CTRL bits (write 1): a step, clear FLAGS, a run (run mode), stop the run at the next epoch end
CTRL = {"start": 0, "clear_flags": 1, "run": 2, "stop": 3}
# STATUS bits
STATUS = {"busy": 0, "done": 1}
STATUS_ERROR_SHIFT = 8        # STATUS[15:8]: error code of the last refused start
#: ERR_ADDR bit set when the refused access was a write.
ERR_ADDR_WRITE = 1 << 31
# sticky FLAGS bits (cleared by CTRL.clear_flags; a flag raised in the clearing cycle stays)
FLAGS = {"sat_value": 0, "sat_grad": 1, "sat_delta": 2, "sat_weight": 3, "bus_error": 4}
#: The saturation flags (the run sequencer counts and clears these after every step; it
#: leaves bus_error to the host).
SAT_FLAGS = ("sat_value", "sat_grad", "sat_delta", "sat_weight")
# RUN_STATUS bits and fields
RUN_STATUS = {"running": 0, "done": 1, "stopped": 2, "error_shift": 8, "epoch_shift": 16}
# RUN_OPTS bits
RUN_OPTS = {"classify": 0}
# UPDATE register values
UPDATE = {"sgd": 0, "maxnorm": 1, "none": 2}


class StartError(IntEnum):
    """Why the engine refused a start: the code in STATUS[15:8] (0 = none)."""
    NONE = 0
    BATCH_N = 1            #: batch count is 0 or larger than the configured batch
    UPDATE = 2             #: unknown update rule
    LR_ZERO = 3            #: maxnorm learning rate is 0
    BUSY = 4               #: start while busy
    SGD_SCALE_ZERO = 5     #: sgd scale is 0


#: Error code -> what the host reports (``StartError`` codes 1..5).
ERRORS = {
    StartError.BATCH_N: "batch count is 0 or larger than the configured batch",
    StartError.UPDATE: "unknown update rule",
    StartError.LR_ZERO: "maxnorm learning rate is 0",
    StartError.BUSY: "start while busy",
    StartError.SGD_SCALE_ZERO: "sgd scale is 0",
}


class RunError(IntEnum):
    """Why a run (CTRL.run) ended early: the code in RUN_STATUS[15:8] (0 = none).

    Codes 1..5 are the :class:`StartError` of a step the engine refused inside the run.
    """
    NONE = 0
    BATCH_N = 1
    UPDATE = 2
    LR_ZERO = 3
    BUSY = 4               #: CTRL.run while a step or a run is going on
    SGD_SCALE_ZERO = 5
    MISALIGNED = 16        #: a RUN_*_ADDR is not a multiple of 4096
    ADDRESS = 17           #: an access would run past the 32-bit address space
    MEM_SLVERR = 18        #: the memory answered SLVERR (address in RUN_ERR_ADDR)
    MEM_DECERR = 19        #: the memory answered DECERR (address in RUN_ERR_ADDR)
    BAD_INDEX = 20         #: a batch-order entry is not below RUN_TRAIN_N


#: Run error code -> what the host reports.
RUN_ERRORS = {
    **{RunError(int(code)): f"a step was refused: {text}" for code, text in ERRORS.items()},
    RunError.BUSY: "run started while a step or a run is going on",
    RunError.MISALIGNED: "a run buffer address is not a multiple of 4096 bytes",
    RunError.ADDRESS: "the run buffer runs past the end of the 32-bit address space",
    RunError.MEM_SLVERR: "the memory answered SLVERR",
    RunError.MEM_DECERR: "the memory answered DECERR (no memory at that address)",
    RunError.BAD_INDEX: "a batch-order entry is not a training sample's index",
}


class Resp(IntEnum):
    """AXI response codes (RRESP/BRESP), as the engine's slave and the transports use them."""
    OKAY = 0b00
    EXOKAY = 0b01
    SLVERR = 0b10
    DECERR = 0b11


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: str            # "ro", "rw" or "wo"
    doc: str
    bits: int = 32         # width of the value held; a wider write to a "rw" register is refused
    signed: bool = False   # two's complement (the bus word is sign-extended on read)
    min_value: int | None = None   # smallest value a "rw" register takes (None: what ``bits`` hold)
    reset: int = 0         # value after reset

    @property
    def value_range(self) -> tuple:
        """``(lo, hi)``: the values a write may store (both included); others are refused."""
        lo, hi = (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.signed \
            else (0, (1 << self.bits) - 1)
        return (lo if self.min_value is None else max(lo, self.min_value)), hi

    def fits(self, value: int) -> bool:
        """True when ``value`` is a value this register takes (:attr:`value_range`)."""
        lo, hi = self.value_range
        return lo <= value <= hi


@dataclass(frozen=True)
class Window:
    name: str
    base: int
    length: int            # words
    access: str
    doc: str
    row_words: int = 1     # words from one row to the next (a power of two); 1 = no rows

    def addr(self, i: int) -> int:
        if not 0 <= i < self.length:
            raise IndexError(f"{self.name}[{i}] is outside 0..{self.length - 1}")
        return self.base + 4 * i

    def row_addr(self, row: int, col: int) -> int:
        """Byte address of element ``col`` of row ``row``."""
        return self.addr(row * self.row_words + col)


@dataclass(frozen=True)
class RegisterMap:
    registers: tuple
    windows: tuple
    addr_bits: int = ADDR_BITS

    def window_index(self, window) -> int:
        """The value of word-address bits ``[WINDOW_BITS-2:ADDR_BITS-2]`` that selects
        ``window`` (0 is the register file)."""
        return window.base >> WINDOW_BITS

    def name_of(self, addr: int) -> str:
        """What byte address ``addr`` is: a register's name, ``WINDOW[index]``, or ``unmapped``."""
        addr = int(addr) & (self.size - 1) & ~3
        for r in self.registers:
            if r.offset == addr:
                return r.name
        for w in self.windows:
            if w.base <= addr < w.base + 4 * w.length:
                return f"{w.name}[{(addr - w.base) // 4}]"
        return "unmapped"

    def __getitem__(self, name):
        for r in self.registers + self.windows:
            if r.name == name:
                return r
        raise KeyError(name)

    @property
    def size(self) -> int:
        return 1 << self.addr_bits

    def to_dict(self) -> dict:
        return {"addr_bits": self.addr_bits, "registers": [asdict(r) for r in self.registers],
                "windows": [asdict(w) for w in self.windows], "ctrl": CTRL, "status": STATUS,
                "flags": FLAGS, "update": UPDATE,
                "errors": {int(code): text for code, text in ERRORS.items()},
                "run_status": RUN_STATUS, "run_opts": RUN_OPTS,
                "run_errors": {int(code): text for code, text in RUN_ERRORS.items()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_markdown(self) -> str:
        """The map as the Markdown table docs/engine.md carries (generated, not typed)."""
        lines = ["| name | offset | access | bits | description |", "| --- | --- | --- | --- | --- |"]
        for r in self.registers:
            bits = f"{r.bits}{' signed' if r.signed else ''}"
            lines.append(f"| {r.name} | 0x{r.offset:05X} | {r.access} | {bits} | {r.doc} |")
        for w in self.windows:
            rows = f"; row stride {w.row_words} words" if w.row_words > 1 else ""
            lines.append(f"| {w.name} | 0x{w.base:05X} (+4 per word, {w.length} words) | "
                         f"{w.access} | 32 | {w.doc}{rows} |")
        return "\n".join(lines)


def register_map(config) -> RegisterMap:
    """The register map of the engine built for ``config`` (a :class:`dpfm.config.Config`)."""
    regs = (
        Register("ID", 0x000, "ro", "0x4450464D ('DPFM')"),
        Register("CONFIG_HASH", 0x004, "ro", "Config.hash of the configuration built"),
        Register("CTRL", 0x008, "wo", "bit 0 start a step, bit 1 clear FLAGS, bit 2 start a run, "
                 "bit 3 stop the run after the current epoch"),
        Register("STATUS", 0x00C, "ro", "bit 0 busy, bit 1 done; [15:8] error code of the last refused start"),
        Register("FLAGS", 0x010, "ro", "sticky (a flag raised in the cycle of a clear stays): bit 0..3 saturation of value/grad/delta/weight, bit 4 bus error"),
        Register("CYCLES", 0x014, "ro", "clock cycles of the last step"),
        Register("BATCH_N", 0x018, "rw", "samples in the next step (1..batch)",
                 bits=config.batch.bit_length(), reset=config.batch),
        Register("UPDATE", 0x01C, "rw", "0 sgd, 1 maxnorm, 2 none (forward and loss only)", bits=2,
                 reset=UPDATE["maxnorm"]),
        Register("LR_Q", 0x020, "rw", "maxnorm learning rate in weight-format integers",
                 bits=config.formats.weight.bits),
        Register("SGD_CQ", 0x024, "rw", "sgd scale mantissa c_q (2*lr/count = c_q * 2**-cs)",
                 bits=NORM_BITS + 1),
        Register("SGD_CS", 0x028, "rw", f"sgd scale exponent cs, {SGD_CS_MIN}..{SGD_CS_MAX} (the range of sgd_scale)",
                 bits=SGD_CS_MAX.bit_length(), min_value=SGD_CS_MIN, reset=SGD_CS_MIN),
        Register("LOSS_LO", 0x02C, "ro", "sum of squared errors of the last step, bits 31..0 (frac 2*value.frac)"),
        Register("LOSS_HI", 0x030, "ro", "same, bits 63..32"),
        Register("MUL_BUSY", 0x034, "ro", "cycles of the last step with the lane multipliers busy"),
        Register("MERGE_BUSY", 0x038, "ro", "cycles of the last step in which the merger of at least one active lane takes a candidate"),
        Register("K", 0x03C, "ro", "registers per activation"),
        Register("N_PARAMS", 0x040, "ro", "parameters"),
        Register("BATCH", 0x044, "ro", "configured batch (sample lanes)"),
        Register("ERR_ADDR", 0x048, "ro", "the first access refused since FLAGS were cleared "
                 "(valid while FLAGS.bus_error): byte offset, bit 31 set for a write"),
        # run mode (docs/engine.md "Run mode"): the corpus, batch order, log and weight
        # snapshots in one memory buffer that the engine reads and writes over its AXI4 master
        Register("RUN_TRAIN_ADDR", 0x04C, "rw", "run: bus address of the training rows (multiple of 4096)"),
        Register("RUN_VAL_ADDR", 0x050, "rw", "run: bus address of the validation rows (multiple of 4096)"),
        Register("RUN_PERM_ADDR", 0x054, "rw", "run: bus address of the batch order (multiple of 4096)"),
        Register("RUN_LOG_ADDR", 0x058, "rw", "run: bus address of the epoch log (multiple of 4096)"),
        Register("RUN_SNAP_ADDR", 0x05C, "rw", "run: bus address of the weight snapshots (multiple of 4096)"),
        Register("RUN_TRAIN_N", 0x060, "rw", "run: training samples", bits=24, min_value=1, reset=1),
        Register("RUN_VAL_N", 0x064, "rw", "run: validation samples (0: none)", bits=24),
        Register("RUN_EPOCHS", 0x068, "rw", "run: epochs", bits=16),
        Register("RUN_OPTS", 0x06C, "rw", "run: bit 0 count the validation hits (argmax)", bits=1),
        Register("SGD_CQ_LAST", 0x070, "rw", "run, sgd: SGD_CQ of the epoch's last, smaller batch",
                 bits=NORM_BITS + 1),
        Register("SGD_CS_LAST", 0x074, "rw", "run, sgd: SGD_CS of the epoch's last, smaller batch",
                 bits=SGD_CS_MAX.bit_length(), min_value=SGD_CS_MIN, reset=SGD_CS_MIN),
        Register("RUN_STATUS", 0x078, "ro", "bit 0 running, bit 1 done, bit 2 stopped; [15:8] "
                 "run error code; [31:16] epochs finished"),
        Register("RUN_CYCLES_LO", 0x07C, "ro", "clock cycles of the run, bits 31..0"),
        Register("RUN_CYCLES_HI", 0x080, "ro", "same, bits 63..32"),
        Register("RUN_ERR_ADDR", 0x084, "ro", "run: the bus address of the memory access that failed"),
    )
    n_in, n_out = config.net[0], config.net[-1]
    srow = 1 << (n_in + n_out - 1).bit_length()
    orow = 1 << (n_out - 1).bit_length()
    wins = (
        Window("WEIGHTS", 0x10000, config.n_params, "rw", "parameters, public order, weight format"),
        Window("SAMPLES", 0x20000, config.batch * srow, "rw",
               "row s: n_in inputs then n_out targets, value format", srow),
        Window("OUTPUTS", 0x30000, config.batch * orow, "ro", "predictions of the last step, value format", orow),
    )
    span = 1 << (WINDOW_BITS - 2)
    for w in wins:
        if w.base % (1 << WINDOW_BITS) or w.base >> ADDR_BITS:
            raise ValueError(f"{w.name} base {w.base:#x} is not a window boundary")
        if w.length > span:
            raise ValueError(f"{w.name} needs {w.length} words; the window holds {span}")
    return RegisterMap(regs, wins)


def main(argv=None) -> int:
    """``python -m dpfm.rtl.regmap --markdown``: docs/engine.md's register table for the
    default Config."""
    import argparse

    from dpfm.config import Config

    parser = argparse.ArgumentParser(prog="python -m dpfm.rtl.regmap",
                                     description=main.__doc__.split(":")[0])
    parser.add_argument("--markdown", action="store_true",
                        help="print the register table of the default Config as Markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(register_map(Config()).to_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
