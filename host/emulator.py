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
"""

from __future__ import annotations

import numpy as np

from dpfm.reference import MLP
from dpfm.rtl.regmap import (CTRL, ERR_ADDR_WRITE, FLAGS, ID_MAGIC, STATUS, STATUS_ERROR_SHIFT, UPDATE,
                             Resp, StartError)

from .transport import BusError, Transport, sign_extend

__all__ = ["EmulatorTransport"]

_UPDATE_NAMES = {v: k for k, v in UPDATE.items()}


def _rw_reset(regmap) -> dict:
    return {r.name: r.reset for r in regmap.registers if r.access == "rw"}


class _Refused(Exception):
    """An access the engine answers with SLVERR."""


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
    """

    name = "emulator"
    counts_cycles = False

    def __init__(self, config, *, busy_reads: int = 0, report_hash: int | None = None):
        super().__init__(config)
        self.busy_reads = int(busy_reads)
        self.report_hash = config.hash if report_hash is None else int(report_hash)
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
                    "MERGE_BUSY": 0, "K": cfg.k, "N_PARAMS": cfg.n_params, "BATCH": cfg.batch}
        self.steps = 0

    def _busy(self) -> bool:
        return self._busy_left > 0

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
        try:
            return self._read(addr) & 0xFFFFFFFF
        except _Refused:
            self._record_refusal(addr, write=False)
            raise BusError(addr, Resp.SLVERR, write=False, name=self._name(addr)) from None

    def write(self, addr: int, value: int) -> None:
        try:
            self._write(addr, int(value) & 0xFFFFFFFF)
        except _Refused:
            self._record_refusal(addr, write=True)
            raise BusError(addr, Resp.SLVERR, write=True, name=self._name(addr)) from None

    def _record_refusal(self, addr, *, write):
        """FLAGS.bus_error, and ERR_ADDR when it is the first refusal since the last clear."""
        if not self._flags >> FLAGS["bus_error"] & 1:
            self._err_addr = (int(addr) & self._mask & ~3) | (ERR_ADDR_WRITE if write else 0)
        self._flags |= 1 << FLAGS["bus_error"]

    def _name(self, addr):
        return self.regmap.name_of(addr) if self._locate(addr)[0] is not None else "unmapped"

    def _read(self, addr):
        target, index = self._locate(addr)
        if target is None:
            raise _Refused
        if index is not None:
            if self._busy():
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
        if name in self._rw:
            return self._rw[name] & 0xFFFFFFFF
        if name in self._ro:
            return self._ro[name]
        raise _Refused                            # write-only (CTRL)

    def _write(self, addr, value):
        target, index = self._locate(addr)
        if target is None or target.access == "ro":
            raise _Refused
        if index is not None:
            if self._busy():
                raise _Refused
            self._store[target.name][index] = sign_extend(value, self._element_bits(target))
            return
        if target.name == "CTRL":
            if value >> CTRL["clear_flags"] & 1:
                self._flags = 0
            if value >> CTRL["start"] & 1:
                self._start()
            return
        if self._busy():
            raise _Refused
        if target.signed:
            value = sign_extend(value, 32)
        if not target.fits(value):
            raise _Refused                     # the engine refuses, never truncates
        self._rw[target.name] = value

    # -- a step ---------------------------------------------------------------------------
    def _refuse(self, code):
        done = self._status & (1 << STATUS["done"])
        self._status = done | code << STATUS_ERROR_SHIFT

    def _start(self):
        cfg, rw = self.config, self._rw
        if self._busy():
            self._refuse(StartError.BUSY)
            return
        n = rw["BATCH_N"]
        if not 1 <= n <= cfg.batch:
            self._refuse(StartError.BATCH_N)
            return
        update = _UPDATE_NAMES.get(rw["UPDATE"])
        if update is None:
            self._refuse(StartError.UPDATE)
            return
        fmt = cfg.formats
        count = n * cfg.n_out
        if update == "maxnorm":
            if rw["LR_Q"] == 0:
                self._refuse(StartError.LR_ZERO)
                return
            # lr_quantize(lr_q / 2**weight.frac) == lr_q: the reference sees the register.
            lr = rw["LR_Q"] / float(1 << fmt.weight.frac)
        elif update == "sgd":
            if rw["SGD_CQ"] == 0:
                self._refuse(StartError.SGD_SCALE_ZERO)
                return
            # the reference takes the registers' scale (c_q, cs) as they are
            lr = rw["SGD_CQ"] * 2.0 ** -rw["SGD_CS"] * count / 2.0
        else:
            lr = 1.0
        self._compute(n, update, lr)
        self._status = 1 << STATUS["done"]
        self._busy_left = self.busy_reads
        self.steps += 1

    def _compute(self, n, update, lr):
        cfg = self.config
        rows = self.regmap["SAMPLES"].row_words
        samples = self._store["SAMPLES"].reshape(cfg.batch, rows)[:n]
        Xq = samples[:, :cfg.n_in].copy()
        yq = samples[:, cfg.n_in:cfg.n_in + cfg.n_out].copy()
        params = self._store["WEIGHTS"]
        sgd_q = (self._rw["SGD_CQ"], self._rw["SGD_CS"]) if update == "sgd" else None
        st = self._net.step_raw(Xq, yq, params, cfg.k, lr, "maxnorm" if update == "none" else update,
                                cfg.formats, cfg.policy, sgd_q=sgd_q)
        sats = st.saturations
        raised = {"sat_value": sats.get("value", 0), "sat_grad": sats.get("grad", 0)}
        if update != "none":
            raised.update(sat_delta=sats.get("delta", 0), sat_weight=sats.get("weight", 0))
            self._store["WEIGHTS"] = np.asarray(st.params, dtype=np.int64).copy()
        for flag, events in raised.items():
            if events:
                self._flags |= 1 << FLAGS[flag]
        err = np.asarray(st.error, dtype=np.int64)
        self._loss = int(sum(int(e) * int(e) for e in err.ravel()))
        orows = self.regmap["OUTPUTS"].row_words
        out = self._store["OUTPUTS"].reshape(cfg.batch, orows)
        out[:n, :cfg.n_out] = np.asarray(st.forward.value, dtype=np.int64)
