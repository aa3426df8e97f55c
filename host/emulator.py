"""``EmulatorTransport``: the engine's bus, register by register, computing with the reference.

The transport answers the engine's register map (:func:`dpfm.rtl.regmap.register_map`) with
the engine's access rules: writes to read-only, unmapped or padding words answer SLVERR and
change nothing, and so do reads of unmapped, padding and write-only (CTRL) words; the windows
and the read-write registers answer SLVERR while a step runs; every refused access raises the
sticky ``bus_error`` flag; a start with an inconsistent configuration is refused with an
error code in STATUS[15:8] (done keeps its value); a read-write register takes only the
values of its ``value_range`` (others answer SLVERR, as in the engine) and resets to its
``reset`` value.

What a step computes is not modelled here: it is :meth:`dpfm.reference.MLP.step_raw` in the
Config's fixed formats with the hardware's pruning policy, the project's single oracle.  So
the :class:`~dpfm.host.Trainer` code that drives the board and the Verilator model is
exercised unchanged against the reference.

Clock cycles are not modelled: CYCLES, MUL_BUSY and MERGE_BUSY read 0.

Run mode (docs/engine.md "Run mode") is modelled too: :meth:`EmulatorTransport.allocate`
hands out buffers of host memory at fake bus addresses (from ``base_address``, a multiple of
4096), CTRL.run latches the run registers, and every :meth:`~EmulatorTransport.poll_run`
runs one more epoch of the sequencer (training steps over the perm slots, forward-only
passes over the training then the validation rows, snapshot, log entry) with the same
reference step, then reads RUN_STATUS.  RUN_CYCLES and the cycle words of the log stay 0.
An epoch is computed on copies and committed at its end, so an exception (a
``KeyboardInterrupt``) inside :meth:`~EmulatorTransport.poll_run` leaves the model as if
the epoch were still going on.  The model checks the area addresses once at CTRL.run
(alignment, then the 32-bit end of every area) and answers DECERR for any access outside
the allocated buffers.  :attr:`~EmulatorTransport.bus_accesses` counts every register read
and write (refused ones included).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dpfm.reference import MLP
from dpfm.rtl.protocol import LOG_WORDS, RUN_ALIGN, run_layout
from dpfm.rtl.regmap import (CTRL, ERR_ADDR_WRITE, FLAGS, ID_MAGIC, RUN_OPTS, RUN_STATUS, SAT_FLAGS,
                             STATUS, STATUS_ERROR_SHIFT, UPDATE, Resp, RunError, StartError)

from .transport import BusError, RunBuffer, Transport, TransportUnavailable, sign_extend

__all__ = ["EmulatorTransport"]

_UPDATE_NAMES = {v: k for k, v in UPDATE.items()}
_SAT_BITS = {flag: 1 << FLAGS[flag] for flag in SAT_FLAGS}
_SAT_MASK = sum(_SAT_BITS.values())
_BUS_ERROR = 1 << FLAGS["bus_error"]
_AREAS = ("TRAIN", "VAL", "PERM", "LOG", "SNAP")


def _rw_reset(regmap) -> dict:
    return {r.name: r.reset for r in regmap.registers if r.access == "rw"}


class _Refused(Exception):
    """An access the engine answers with SLVERR."""


class _RunStop(Exception):
    """The run ends with error ``code`` (the memory address in ``addr`` for memory errors)."""

    def __init__(self, code, addr=0):
        super().__init__(code)
        self.code, self.addr = int(code), int(addr)


@dataclasses.dataclass(frozen=True)
class _StepOut:
    """What one step computed: the new weights (None for a forward-only pass), the loss sum,
    the FLAGS bits it raised and the OUTPUTS rows."""
    params: np.ndarray | None
    loss: int
    flags: int
    outputs: np.ndarray


@dataclasses.dataclass
class _Run:
    """The sequencer's copy of the run registers (latched at CTRL.run) and where it stands."""
    addr: dict                # area name -> bus address
    layout: object            # dpfm.rtl.protocol.RunLayout of the counts (its sizes only)
    classify: bool
    update: int               # UPDATE register value
    lr_q: int
    sgd: tuple                # (c_q, cs) of a full batch
    sgd_last: tuple           # (c_q, cs) of the epoch's last, smaller batch
    settings: dict            # BATCH_N, UPDATE, SGD_CQ, SGD_CS before the run (restored after)
    epoch: int = 0            # epochs finished
    stop: bool = False        # CTRL.stop seen
    in_progress: bool = False  # an epoch was begun and not committed


class _EmulatedBuffer(RunBuffer):
    """Host memory the emulated AXI4 master reaches at ``address``."""

    def __init__(self, words, address, owner):
        super().__init__(words, address)
        self._owner = owner

    def close(self) -> None:
        if self._owner is not None:
            self._owner._regions.remove(self)
            self._owner = None


class EmulatorTransport(Transport):
    """A register-level model of the engine's bus whose steps are the reference's.

    Parameters
    ----------
    config : dpfm.config.Config
        The engine modelled: register map, formats, k, pruning policy, batch lanes.
    busy_reads : int
        After a start, STATUS reads busy this many times before the step is seen done (the
        result is computed at once): lets tests exercise the polling loop and the
        while-busy rules.  Default 0.
    report_hash : int, optional
        Value of the CONFIG_HASH register; defaults to ``config.hash`` (tests use another
        value to model a mismatched engine).
    memory_bytes : int
        Run mode: the memory :meth:`allocate` may hand out in all (default 256 MiB); more
        is refused with :class:`~dpfm.host.transport.TransportUnavailable`.
    base_address : int
        Run mode: the bus address of the first buffer (a multiple of 4096; default
        0x1000_0000); the next ones follow it.
    memory_end : int, optional
        Run mode: the bus address where the memory behind the engine's master ends; the
        engine's accesses at or past it answer DECERR even inside a buffer (models memory
        that ends before the host's buffer does).  Default: no such end.
    """

    name = "emulator"
    counts_cycles = False
    supports_run = True

    def __init__(self, config, *, busy_reads: int = 0, report_hash: int | None = None,
                 memory_bytes: int = 256 << 20, base_address: int = 0x1000_0000,
                 memory_end: int | None = None):
        super().__init__(config)
        if int(base_address) % RUN_ALIGN or not 0 <= int(base_address) < 1 << 32:
            raise ValueError(f"base_address 0x{int(base_address):x} must be a multiple of "
                             f"{RUN_ALIGN} below 4 GiB")
        self.busy_reads = int(busy_reads)
        self.report_hash = config.hash if report_hash is None else int(report_hash)
        self.memory_bytes = int(memory_bytes)
        self.base_address = int(base_address)
        self.memory_end = 1 << 32 if memory_end is None else int(memory_end)
        self._regions: list = []
        self._net = MLP(config.net, config.activations)
        m = self.regmap
        self._regs_by_offset = {r.offset: r for r in m.registers}
        self._windows = m.windows
        self._row_used = {"WEIGHTS": 1, "SAMPLES": config.n_in + config.n_out, "OUTPUTS": config.n_out}
        self._mask = m.size - 1
        self.reset()

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        cfg = self.config
        self._rw = _rw_reset(self.regmap)
        self._status = 0
        self._busy_left = 0
        self._flags = 0
        self._err_addr = 0
        self._loss = 0
        self._store = {w.name: np.zeros(w.length, dtype=np.int64) for w in self._windows}
        self._ro = {"ID": ID_MAGIC, "CONFIG_HASH": self.report_hash, "CYCLES": 0, "MUL_BUSY": 0,
                    "MERGE_BUSY": 0, "K": cfg.k, "N_PARAMS": cfg.n_params, "BATCH": cfg.batch,
                    "RUN_CYCLES_LO": 0, "RUN_CYCLES_HI": 0}
        self._run = None
        self._run_status = 0
        self._run_err_addr = 0
        self.steps = 0

    def _busy(self) -> bool:
        return self._busy_left > 0

    def _running(self) -> bool:
        return self._run is not None

    def _locate(self, addr):
        """``(register, None)``, ``(window, index)`` or ``(None, None)`` for a byte address."""
        addr = (int(addr) & self._mask) & ~3
        reg = self._regs_by_offset.get(addr)
        if reg is not None:
            return reg, None
        for w in self._windows:
            if w.base <= addr < w.base + 4 * w.length:
                index = (addr - w.base) // 4
                if index % w.row_words >= self._row_used[w.name]:
                    return None, None            # padding at the end of a row
                return w, index
        return None, None

    def _element_bits(self, window) -> int:
        f = self.config.formats
        return f.weight.bits if window.name == "WEIGHTS" else f.value.bits

    # -- bus ------------------------------------------------------------------------------
    def read(self, addr: int) -> int:
        self.bus_accesses += 1
        try:
            return self._read(addr) & 0xFFFFFFFF
        except _Refused:
            self._record_refusal(addr, write=False)
            raise BusError(addr, Resp.SLVERR, write=False, name=self._name(addr)) from None

    def write(self, addr: int, value: int) -> None:
        self.bus_accesses += 1
        try:
            self._write(addr, int(value) & 0xFFFFFFFF)
        except _Refused:
            self._record_refusal(addr, write=True)
            raise BusError(addr, Resp.SLVERR, write=True, name=self._name(addr)) from None

    def _record_refusal(self, addr, *, write):
        """FLAGS.bus_error, and ERR_ADDR when it is the first refusal since the last clear."""
        if not self._flags & _BUS_ERROR:
            self._err_addr = (int(addr) & self._mask & ~3) | (ERR_ADDR_WRITE if write else 0)
        self._flags |= _BUS_ERROR

    def _name(self, addr):
        return self.regmap.name_of(addr) if self._locate(addr)[0] is not None else "unmapped"

    def _read(self, addr):
        target, index = self._locate(addr)
        if target is None:
            raise _Refused
        if index is not None:
            if self._busy() or self._running():
                raise _Refused
            return int(self._store[target.name][index])
        name = target.name
        if name == "STATUS":
            status = self._status
            if self._busy_left > 0:
                self._busy_left -= 1
                status = (status & ~(1 << STATUS["done"])) | (1 << STATUS["busy"])
            return status
        if name == "FLAGS":
            return self._flags
        if name == "ERR_ADDR":
            return self._err_addr
        if name == "LOSS_LO":
            return self._loss & 0xFFFFFFFF
        if name == "LOSS_HI":
            return (self._loss >> 32) & 0xFFFFFFFF
        if name == "RUN_STATUS":
            return self._run_status
        if name == "RUN_ERR_ADDR":
            return self._run_err_addr
        if name in self._rw:
            return self._rw[name] & 0xFFFFFFFF
        if name in self._ro:
            return self._ro[name]
        raise _Refused                            # write-only (CTRL)

    def _write(self, addr, value):
        target, index = self._locate(addr)
        if target is None or target.access == "ro":
            raise _Refused
        if target.name == "CTRL":
            self._control(value)
            return
        if self._busy() or self._running():
            raise _Refused
        if index is not None:
            self._store[target.name][index] = sign_extend(value, self._element_bits(target))
            return
        if target.signed:
            value = sign_extend(value, 32)
        if not target.fits(value):
            raise _Refused                     # the engine refuses, never truncates
        self._rw[target.name] = value

    def _control(self, value):
        if self._running() and value & (1 << CTRL["start"] | 1 << CTRL["run"]):
            raise _Refused                     # a step or a second run while a run goes on
        if value >> CTRL["clear_flags"] & 1:
            self._flags = 0
        if value >> CTRL["start"] & 1:
            self._start()
        if value >> CTRL["run"] & 1:
            self._start_run()
        if value >> CTRL["stop"] & 1 and self._running():
            self._run.stop = True

    # -- a step ---------------------------------------------------------------------------
    def _refuse(self, code):
        done = self._status & (1 << STATUS["done"])
        self._status = done | code << STATUS_ERROR_SHIFT

    def _check_step(self, n, update, lr_q, sgd_cq) -> int:
        """The StartError code of a step of ``n`` samples with these settings (0: none)."""
        if not 1 <= n <= self.config.batch:
            return StartError.BATCH_N
        name = _UPDATE_NAMES.get(update)
        if name is None:
            return StartError.UPDATE
        if name == "maxnorm" and lr_q == 0:
            return StartError.LR_ZERO
        if name == "sgd" and sgd_cq == 0:
            return StartError.SGD_SCALE_ZERO
        return StartError.NONE

    def _start(self):
        rw = self._rw
        if self._busy():
            self._refuse(StartError.BUSY)
            return
        n, update = rw["BATCH_N"], rw["UPDATE"]
        code = self._check_step(n, update, rw["LR_Q"], rw["SGD_CQ"])
        if code:
            self._refuse(code)
            return
        rows = self.regmap["SAMPLES"].row_words
        samples = self._store["SAMPLES"].reshape(self.config.batch, rows)[:n]
        out = self._step(samples, update, rw["LR_Q"], (rw["SGD_CQ"], rw["SGD_CS"]),
                         self._store["WEIGHTS"])
        self._commit_step(out)
        self._busy_left = self.busy_reads

    def _step(self, rows, update, lr_q, sgd_q, params) -> _StepOut:
        """One step of ``len(rows)`` samples (rows of the SAMPLES layout, value-format
        integers) from weights ``params``: the reference's ``step_raw`` as the engine's
        registers set it up (``update``: the UPDATE value, ``lr_q`` the LR_Q, ``sgd_q`` the
        SGD_CQ and SGD_CS)."""
        cfg = self.config
        n = len(rows)
        Xq = np.array(rows[:, :cfg.n_in], dtype=np.int64)
        yq = np.array(rows[:, cfg.n_in:cfg.n_in + cfg.n_out], dtype=np.int64)
        name = _UPDATE_NAMES[update]
        count = n * cfg.n_out
        if name == "maxnorm":
            # lr_quantize(lr_q / 2**weight.frac) == lr_q: the reference sees the register.
            lr = lr_q / float(1 << cfg.formats.weight.frac)
        elif name == "sgd":
            # the reference takes the registers' scale (c_q, cs) as they are
            lr = sgd_q[0] * 2.0 ** -sgd_q[1] * count / 2.0
        else:
            lr = 1.0
        st = self._net.step_raw(Xq, yq, params, cfg.k, lr, "maxnorm" if name == "none" else name,
                                cfg.formats, cfg.policy, sgd_q=sgd_q if name == "sgd" else None)
        sats = st.saturations
        raised = {"sat_value": sats.get("value", 0), "sat_grad": sats.get("grad", 0)}
        new = None
        if name != "none":
            raised.update(sat_delta=sats.get("delta", 0), sat_weight=sats.get("weight", 0))
            new = np.asarray(st.params, dtype=np.int64).copy()
        flags = 0
        for flag, events in raised.items():
            if events:
                flags |= _SAT_BITS[flag]
        err = np.asarray(st.error, dtype=np.int64)
        loss = int(sum(int(e) * int(e) for e in err.ravel()))
        return _StepOut(new, loss, flags, np.asarray(st.forward.value, dtype=np.int64))

    def _commit_step(self, out: _StepOut):
        """The registers and windows after a step: weights, FLAGS, LOSS, OUTPUTS, STATUS."""
        cfg = self.config
        if out.params is not None:
            self._store["WEIGHTS"] = out.params
        self._flags |= out.flags
        self._loss = out.loss
        orows = self.regmap["OUTPUTS"].row_words
        window = self._store["OUTPUTS"].reshape(cfg.batch, orows)
        window[:len(out.outputs), :cfg.n_out] = out.outputs
        self._status = 1 << STATUS["done"]
        self.steps += 1

    # -- run mode: memory -------------------------------------------------------------------
    def allocate(self, nwords: int) -> RunBuffer:
        nwords = int(nwords)
        if nwords < 1:
            raise ValueError(f"a run buffer needs at least one word, not {nwords}")
        nbytes = -(-4 * nwords // RUN_ALIGN) * RUN_ALIGN
        used = sum(-(-r.nbytes // RUN_ALIGN) * RUN_ALIGN for r in self._regions)
        if used + nbytes > self.memory_bytes:
            raise TransportUnavailable(
                f"{self.name}: a run buffer of {4 * nwords} bytes does not fit the "
                f"{self.memory_bytes - used} bytes of memory left (memory_bytes={self.memory_bytes})")
        address = max([self.base_address] + [r.address + -(-r.nbytes // RUN_ALIGN) * RUN_ALIGN
                                             for r in self._regions])
        if address + nbytes > 1 << 32:
            raise TransportUnavailable(f"{self.name}: a run buffer of {4 * nwords} bytes at "
                                       f"0x{address:x} would pass the 32-bit address space")
        buf = _EmulatedBuffer(np.zeros(nwords, dtype=np.uint32), address, self)
        self._regions.append(buf)
        return buf

    def _memory(self, addr: int, nwords: int) -> np.ndarray:
        """The ``nwords`` words at bus address ``addr`` (a view); ADDRESS when the access
        begins past the 32-bit address space (the engine does not issue it), DECERR outside
        the buffers."""
        if addr >= 1 << 32:
            raise _RunStop(RunError.ADDRESS, addr & 0xFFFFFFFF)
        for r in self._regions:
            if r.address <= addr < min(r.address + r.nbytes, self.memory_end):
                end = min(r.address + r.nbytes, self.memory_end)
                if addr + 4 * nwords > end:
                    raise _RunStop(RunError.MEM_DECERR, end)
                at = (addr - r.address) // 4
                return r.words[at:at + nwords]
        raise _RunStop(RunError.MEM_DECERR, addr)

    def _rows(self, addr: int, indices) -> np.ndarray:
        """Rows ``indices`` of the sample area at ``addr`` as value-format integers."""
        cfg, row = self.config, self._run.layout.row_words
        used = cfg.n_in + cfg.n_out
        bits = cfg.formats.value.bits
        words = np.stack([self._memory(addr + 4 * int(i) * row, used) for i in indices])
        w = words.astype(np.int64) & ((1 << bits) - 1)
        return w - ((w >> (bits - 1)) << bits)

    # -- run mode: the sequencer ----------------------------------------------------------------
    def _start_run(self):
        if self._busy():
            self._run_status = RunError.BUSY << RUN_STATUS["error_shift"]
            return
        rw, cfg = self._rw, self.config
        addr = {area: rw[f"RUN_{area}_ADDR"] for area in _AREAS}
        layout = run_layout(cfg, rw["RUN_TRAIN_N"], rw["RUN_VAL_N"], rw["RUN_EPOCHS"])
        self._run_err_addr = 0
        if any(a % RUN_ALIGN for a in addr.values()):
            self._run_status = RunError.MISALIGNED << RUN_STATUS["error_shift"]
            return
        if rw["UPDATE"] not in (UPDATE["sgd"], UPDATE["maxnorm"]):
            self._run_status = RunError.UPDATE << RUN_STATUS["error_shift"]
            return
        self._flags &= ~_SAT_MASK               # steps count the saturations they raise
        self._run = _Run(addr, layout, bool(rw["RUN_OPTS"] >> RUN_OPTS["classify"] & 1),
                         rw["UPDATE"], rw["LR_Q"], (rw["SGD_CQ"], rw["SGD_CS"]),
                         (rw["SGD_CQ_LAST"], rw["SGD_CS_LAST"]),
                         {k: rw[k] for k in ("BATCH_N", "UPDATE", "SGD_CQ", "SGD_CS")})
        self._run_status = 1 << RUN_STATUS["running"]
        if layout.epochs == 0:
            self._end_run()

    def _end_run(self, code=0, addr=None, *, stopped=False):
        epochs = self._run.epoch
        self._rw.update(self._run.settings)     # the settings the host wrote before the run
        if code:
            state = code << RUN_STATUS["error_shift"]
            if addr is not None:
                self._run_err_addr = addr
        else:
            state = 1 << RUN_STATUS["stopped" if stopped else "done"]
        self._run_status = state | epochs << RUN_STATUS["epoch_shift"]
        self._run = None

    def advance_run(self, poll_s: float = 0.2) -> None:
        """Run one more epoch of the run in progress (none when it has ended or a stop is
        pending between epochs); no waiting, no bus access (the model has no clock)."""
        if self._running():
            self._advance_run()

    def _advance_run(self):
        run = self._run
        if run.stop and not run.in_progress:
            self._end_run(stopped=True)
            return
        run.in_progress = True
        params, flags, error = self._epoch(run)
        # commit (the epoch above changed nothing of the model but the run buffers)
        self._store["WEIGHTS"] = params
        self._flags = flags
        run.in_progress = False
        if error is not None:
            self._end_run(error.code, error.addr)
            return
        run.epoch += 1
        self._run_status = 1 << RUN_STATUS["running"] | run.epoch << RUN_STATUS["epoch_shift"]
        if run.epoch == run.layout.epochs:
            self._end_run()
        elif run.stop:
            self._end_run(stopped=True)

    def _epoch(self, run):
        """Epoch ``run.epoch`` of the run on copies: ``(weights, FLAGS, _RunStop or None)``;
        the snapshot and the log entry are written into the buffer when it ends whole."""
        cfg, lay, e = self.config, run.layout, run.epoch
        B = cfg.batch
        params = self._store["WEIGHTS"].copy()
        flags = self._flags
        epoch_flags = 0
        sats = dict.fromkeys(SAT_FLAGS, 0)
        last = None
        try:
            for t in range(lay.steps):
                n = min(B, lay.n_train - t * B)
                cq, cs = run.sgd if n == B else run.sgd_last
                code = self._check_step(n, run.update, run.lr_q, cq)
                if code:
                    raise _RunStop(code)
                slot = run.addr["PERM"] + 4 * (e * lay.steps + t) * lay.perm_stride
                index = self._memory(slot, n).astype(np.int64)
                if np.any(index >= lay.n_train):
                    raise _RunStop(RunError.BAD_INDEX)
                out = self._step(self._rows(run.addr["TRAIN"], index), run.update, run.lr_q,
                                 (cq, cs), params)
                params, last = out.params, out
                self._rw.update(BATCH_N=n, UPDATE=run.update, SGD_CQ=cq, SGD_CS=cs)
                flags |= out.flags
                epoch_flags |= flags
                for flag in SAT_FLAGS:
                    sats[flag] += bool(flags & _SAT_BITS[flag])
                flags &= ~_SAT_MASK
            losses, hits = [], 0
            for area, count in (("TRAIN", lay.n_train), ("VAL", lay.n_val)):
                total = 0
                for start in range(0, count, B):
                    index = range(start, min(count, start + B))
                    rows = self._rows(run.addr[area], index)
                    out = self._step(rows, UPDATE["none"], run.lr_q, run.sgd, params)
                    last = out
                    self._rw.update(BATCH_N=len(rows))
                    total += out.loss
                    flags = (flags | out.flags) & ~_SAT_MASK
                    if area == "VAL" and run.classify:
                        target = rows[:, cfg.n_in:cfg.n_in + cfg.n_out]
                        hits += int(np.sum(np.argmax(out.outputs, axis=1)
                                           == np.argmax(target, axis=1)))
                losses.append(total)
            snap = self._memory(run.addr["SNAP"] + 4 * e * lay.snap_words, cfg.n_params)
            entry = self._memory(run.addr["LOG"] + 4 * e * LOG_WORDS, LOG_WORDS)
            snap[:] = (params & 0xFFFFFFFF).astype(np.uint32)
            entry[:] = np.array(
                [e & 0xFFFF | (epoch_flags & 0xFF) << 16,
                 losses[0] & 0xFFFFFFFF, losses[0] >> 32 & 0xFFFFFFFF,
                 losses[1] & 0xFFFFFFFF, losses[1] >> 32 & 0xFFFFFFFF, hits,
                 sats["sat_value"] | sats["sat_grad"] << 16,
                 sats["sat_delta"] | sats["sat_weight"] << 16,
                 lay.steps, 0, 0, 0, 0, 0, 0, 0], dtype=np.uint64).astype(np.uint32)
            error = None
        except _RunStop as stop:
            error = stop
        if last is not None:                # the registers the last step left
            self._loss = last.loss
            orows = self.regmap["OUTPUTS"].row_words
            window = self._store["OUTPUTS"].reshape(cfg.batch, orows)
            window[:len(last.outputs), :cfg.n_out] = last.outputs
            self._status = 1 << STATUS["done"]
        return params, flags, error
