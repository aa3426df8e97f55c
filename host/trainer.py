"""``Trainer``: training over any :class:`~dpfm.host.transport.Transport`, written once.

Everything register-level lives here: the hardware check (ID and CONFIG_HASH), weight load
and readback, sample streaming, the step protocol, loss and flag readback, and the training
loop with the reference's batch order.  The same code drives the fixed-point reference
model, the Verilator simulation and the board.

One training step (register names from :func:`dpfm.rtl.regmap.register_map`): the batch's
``n`` rows go into SAMPLES (row ``s``: inputs then targets, value format), then BATCH_N=n,
UPDATE, and the learning rate (LR_Q for ``maxnorm``, SGD_CQ/SGD_CS for ``sgd``); CTRL.start;
STATUS is polled until busy is clear and done (or an error code) is set; then LOSS, FLAGS and
(for a training step) CYCLES, MUL_BUSY and MERGE_BUSY are read.  A raised sticky flag is
counted and cleared.  BATCH_N, UPDATE and the learning-rate registers are written only when
their value changes: the trainer assumes it is the engine's only writer
(:meth:`Trainer.forget_registers` after anything else wrote them or reset the engine).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from dpfm.reference import MLP, History
from dpfm.rtl.protocol import (CLEAR_FLAGS_WORD, EVAL_REGISTERS, RESULT_REGISTERS, loss_raw,
                               sample_words, setting_words, status_fields, word)
from dpfm.rtl.regmap import ERR_ADDR_WRITE, ERRORS, FLAGS, ID_MAGIC, UPDATE

from .transport import BusError, HardwareMismatch, TransportError, sign_extend

__all__ = ["Trainer", "StepResult", "CycleStats", "FitState", "HardwareMismatch", "StepRefused",
           "flag_names"]

_SAT_KINDS = {"sat_value": "value", "sat_grad": "grad", "sat_delta": "delta", "sat_weight": "weight"}


class StepRefused(TransportError):
    """The engine refused to start a step; ``code`` is its error code (see ``ERRORS``)."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        reason = ERRORS.get(code, "unknown error code")
        super().__init__(f"the engine refused the step: error {code} ({reason}){detail}")


def flag_names(flags: int) -> list[str]:
    """Names of the FLAGS bits set in ``flags``."""
    return [name for name, bit in FLAGS.items() if flags >> bit & 1]


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What the engine reports after one step.

    ``loss_raw`` is the sum over the batch of squared saturated errors (value format squared,
    ``2 * value.frac`` fractional bits); ``loss`` the mean over samples and outputs as a float
    (equal to the reference's ``StepTrace.loss``).  ``flags`` is FLAGS after the step.
    ``cycles``, ``mul_busy`` and ``merge_busy`` are the engine's counters of a training step
    (None for a forward-only pass, whose counters are not read).
    """
    n: int
    update: str
    loss_raw: int
    loss: float
    cycles: int | None
    mul_busy: int | None
    merge_busy: int | None
    flags: int


@dataclasses.dataclass
class CycleStats:
    """Clock cycles of the training steps (from the engine's CYCLES register)."""
    steps: int = 0
    total: int = 0
    min: int | None = None
    max: int | None = None
    mul_busy: int = 0
    merge_busy: int = 0

    def add(self, r: StepResult):
        self.steps += 1
        self.total += r.cycles
        self.mul_busy += r.mul_busy
        self.merge_busy += r.merge_busy
        self.min = r.cycles if self.min is None else min(self.min, r.cycles)
        self.max = r.cycles if self.max is None else max(self.max, r.cycles)

    @property
    def mean(self) -> float | None:
        return self.total / self.steps if self.steps else None

    def to_dict(self) -> dict:
        busy = (lambda x: x / self.total if self.total else None)
        return {"steps": self.steps, "total": self.total, "mean": self.mean, "min": self.min,
                "max": self.max, "mul_busy_share": busy(self.mul_busy),
                "merge_busy_share": busy(self.merge_busy)}


@dataclasses.dataclass
class FitState:
    """Where a :meth:`Trainer.fit` run stands after a whole epoch (what a checkpoint holds).

    ``weights_raw`` are the parameters as weight-format integers, ``rng_state`` the batch
    order generator's ``bit_generator.state``, ``epoch`` the number of epochs done.
    """
    epoch: int
    weights_raw: list
    rng_state: dict
    history: History
    cycles: CycleStats = dataclasses.field(default_factory=CycleStats)


class Trainer:
    """Trains the engine behind ``transport``: the host side of DPFM, written once.

    Parameters
    ----------
    config : dpfm.config.Config
        The engine expected; its formats quantize samples and weights.
    transport : Transport
        How the engine is reached.
    check : bool
        Check ID and CONFIG_HASH now (default); :class:`HardwareMismatch` if they differ.
    timeout : float
        Seconds a step may take before :class:`~dpfm.host.transport.TransportTimeout`.

    Members
    -------
    cycle_stats : CycleStats
        Cycles of every training step (not of evaluation passes) since construction.
    saturations : dict
        Per kind (``value``, ``grad``, ``delta``, ``weight``): training steps that raised the
        engine's sticky saturation flag; plus ``input`` and ``weight`` clamps of the host's
        own quantization.
    """

    def __init__(self, config, transport, *, check: bool = True, timeout: float = 60.0):
        self.config = config
        self.transport = transport
        self.regmap = transport.regmap
        if transport.config != config:
            raise HardwareMismatch(f"the transport was opened for Config hash "
                                   f"0x{transport.config.hash:08x}, the trainer expects "
                                   f"0x{config.hash:08x}")
        self.timeout = timeout
        self.cycle_stats = CycleStats()
        self.saturations: dict = {}
        self._load_clamps = 0
        m = self.regmap
        self._off = {r.name: r.offset for r in m.registers}
        cfg = config
        rows = np.arange(cfg.batch)
        outputs = m["OUTPUTS"]
        self._output_addr = outputs.base + 4 * (rows[:, None] * outputs.row_words
                                                + np.arange(cfg.n_out)[None, :])
        self._weight_addr = m["WEIGHTS"].base + 4 * np.arange(cfg.n_params)
        self._result_addr = [self._off[n] for n in RESULT_REGISTERS]
        self._eval_addr = [self._off[n] for n in EVAL_REGISTERS]
        self._written: dict = {}        # control register offset -> value last written
        self._net = MLP(cfg.net, cfg.activations)
        if check:
            self.check_hardware()

    # -- identity ---------------------------------------------------------------------------
    def forget_registers(self) -> None:
        """Write every control register again at the next step (after something other than
        this trainer wrote them, or reset the engine)."""
        self._written.clear()

    def check_hardware(self) -> None:
        """Read ID and CONFIG_HASH; :class:`HardwareMismatch` naming expected and found."""
        self._written.clear()
        t = self.transport
        found_id = t.read(self._off["ID"])
        if found_id != ID_MAGIC:
            raise HardwareMismatch(f"{t.name}: no DPFM engine answers: ID register reads "
                                   f"0x{found_id:08x}, expected 0x{ID_MAGIC:08x} ('DPFM')")
        found = t.read(self._off["CONFIG_HASH"])
        if found != self.config.hash:
            raise HardwareMismatch(
                f"{t.name}: the engine was built for another configuration: CONFIG_HASH reads "
                f"0x{found:08x}, expected 0x{self.config.hash:08x} for k={self.config.k}, "
                f"net={'-'.join(map(str, self.config.net))}, batch={self.config.batch}, "
                f"formats {self.config.formats.to_dict()}; rebuild the engine for this Config "
                f"or ask for the Config it was built for")

    # -- weights ----------------------------------------------------------------------------
    def load_weights(self, source) -> int:
        """Quantize and write the parameters: an :class:`~dpfm.reference.MLP` or a float
        array in the public order.  Returns the number of clamps of the quantization."""
        params = source.params if isinstance(source, MLP) else np.asarray(source, dtype=np.float64)
        if params.shape != (self.config.n_params,):
            raise ValueError(f"expected {self.config.n_params} parameters for net "
                             f"{self.config.net}, got shape {params.shape}")
        if isinstance(source, MLP) and (list(source.sizes) != list(self.config.net)
                                        or list(source.activations) != list(self.config.activations)):
            raise ValueError(f"the MLP {source.sizes} {source.activations} is not the Config's "
                             f"net {self.config.net} {self.config.activations}")
        q, clamps = self.config.formats.weight.quantize(params)
        self.load_weights_raw(q)
        self._load_clamps = clamps
        return clamps

    def load_weights_raw(self, q) -> None:
        """Write weight-format integers (public order)."""
        q = np.asarray(q, dtype=np.int64)
        fmt = self.config.formats.weight
        if q.shape != (self.config.n_params,):
            raise ValueError(f"expected {self.config.n_params} parameters, got shape {q.shape}")
        if q.size and (q.min() < fmt.min_int or q.max() > fmt.max_int):
            raise ValueError(f"weights outside the {fmt} format's integer range")
        self.transport.write_many(self._weight_addr, (q & 0xFFFFFFFF).tolist())

    def weights_raw(self) -> np.ndarray:
        """The engine's parameters as weight-format integers (public order)."""
        words = self.transport.read_many(self._weight_addr)
        return np.array([sign_extend(w, 32) for w in words], dtype=np.int64)

    def weights(self) -> np.ndarray:
        """The engine's parameters as floats (public order)."""
        return self.config.formats.weight.to_float(self.weights_raw())

    # -- one step ---------------------------------------------------------------------------
    def step_raw(self, Xq, yq, lr: float = 0.0, update: str = "none") -> StepResult:
        """One step on integers of the value format (``Xq`` (n, n_in), ``yq`` (n, n_out))."""
        cfg = self.config
        if update not in UPDATE:
            raise ValueError(f"unknown update {update!r}; known: {', '.join(UPDATE)}")
        if update != "none" and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        Xq = np.asarray(Xq, dtype=np.int64)
        yq = np.asarray(yq, dtype=np.int64).reshape(len(Xq), -1)
        n = len(Xq)
        if not 1 <= n <= cfg.batch or Xq.shape[1] != cfg.n_in or yq.shape[1] != cfg.n_out:
            raise ValueError(f"a step takes 1..{cfg.batch} rows of {cfg.n_in} inputs and "
                             f"{cfg.n_out} targets, not X {Xq.shape} and y {yq.shape}")
        addrs, values = sample_words(self.regmap, Xq, yq)
        # Control registers are written only when they change (the engine keeps them).
        regs = [(self._off[name], word(v)) for name, v in setting_words(cfg, update, lr, n)]
        regs = [(a, v) for a, v in regs if self._written.get(a) != v]
        addrs += [a for a, _ in regs]
        values += [v for _, v in regs]
        t = self.transport
        try:
            t.write_many(addrs, values)
            self._written.update(regs)
            status = t.run_step(self.timeout)
        except BaseException:
            self._written.clear()
            raise
        _, done, code = status_fields(status)
        if code:
            self._written.clear()
            raise StepRefused(code, f" (STATUS=0x{status:08x}; BATCH_N={n}, UPDATE={update})")
        if not done:
            raise TransportError(f"{t.name}: the step ended without done (STATUS=0x{status:08x})")
        if update == "none":            # a forward-only pass: its cycles are not wanted
            lo, hi, flags = t.read_many(self._eval_addr)
            cycles = mul = merge = None
        else:
            lo, hi, flags, cycles, mul, merge = t.read_many(self._result_addr)
        if flags:
            bus_error = flags >> FLAGS["bus_error"] & 1
            err = t.read(self._off["ERR_ADDR"]) if bus_error else 0
            t.write(self._off["CTRL"], CLEAR_FLAGS_WORD)
            if bus_error:
                addr = err & ~ERR_ADDR_WRITE
                raise BusError(addr, None, write=bool(err & ERR_ADDR_WRITE),
                               name=f"{self.regmap.name_of(addr)}, the first refused since the "
                                    f"last step")
        raw = loss_raw(lo, hi)
        loss = raw / float(1 << 2 * cfg.formats.value.frac) / (n * cfg.n_out)
        return StepResult(n, update, raw, loss, cycles, mul, merge, flags)

    def _quantize(self, X, y):
        fmt = self.config.formats.value
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        if X.ndim != 2 or X.shape[1] != self.config.n_in or y.shape != (len(X), self.config.n_out):
            raise ValueError(f"expected X (N, {self.config.n_in}) and y (N, {self.config.n_out}), "
                             f"got {X.shape} and {y.shape}")
        Xq, c1 = fmt.quantize(X)
        yq, c2 = fmt.quantize(y)
        return Xq, yq, c1 + c2

    def step(self, X_batch, y_batch, lr: float, update: str = "maxnorm") -> StepResult:
        """One training step on floats (quantized to the value format here)."""
        Xq, yq, clamps = self._quantize(X_batch, y_batch)
        if clamps:
            self._count("input", clamps)
        r = self.step_raw(Xq, yq, lr, update)
        self._record(r)
        return r

    def _count(self, kind, n):
        self.saturations[kind] = self.saturations.get(kind, 0) + int(n)

    def _record(self, r: StepResult):
        if r.update != "none":
            self.cycle_stats.add(r)
            for flag, kind in _SAT_KINDS.items():
                if r.flags >> FLAGS[flag] & 1:
                    self._count(kind, 1)

    # -- whole sets -------------------------------------------------------------------------
    def _evaluate_raw(self, Xq, yq, classify=False):
        cfg = self.config
        total, hits = 0, 0
        for start in range(0, len(Xq), cfg.batch):
            r = self.step_raw(Xq[start:start + cfg.batch], yq[start:start + cfg.batch])
            total += r.loss_raw
            if classify:
                n = r.n
                out = np.array([sign_extend(w, 32) for w in
                                self.transport.read_many(self._output_addr[:n].ravel().tolist())],
                               dtype=np.int64).reshape(n, cfg.n_out)
                hits += int(np.sum(np.argmax(out, axis=1)
                                   == np.argmax(yq[start:start + n], axis=1)))
        frac = cfg.formats.value.frac
        loss = float(total) / float(1 << 2 * frac) / (len(Xq) * cfg.n_out) if len(Xq) else float("nan")
        return loss, (hits / len(Xq) if classify and len(Xq) else None)

    def evaluate(self, X, y, *, classify: bool = False):
        """MSE over the whole set from forward-only passes (UPDATE=none), equal to the
        reference's ``MLP.loss(X, y, fmt)``.  With ``classify``: ``(loss, accuracy)``."""
        Xq, yq, _ = self._quantize(X, y)
        loss, acc = self._evaluate_raw(Xq, yq, classify)
        return (loss, acc) if classify else loss

    def fit(self, X, y, epochs: int = 250, lr: float = 0.01, update: str = "maxnorm",
            validation=None, seed: int = 0, progress: Callable | None = None,
            classify: bool = False, state: FitState | None = None,
            on_epoch: Callable[[FitState], None] | None = None) -> History:
        """Train from the weights in the engine; returns a reference :class:`History`.

        Same batch order as :meth:`dpfm.reference.MLP.fit`: a fresh
        ``numpy.random.default_rng(seed).permutation`` each epoch, batches of
        ``config.batch``, the last one possibly smaller.  After each epoch the train (and
        ``validation=(Xv, yv)``) loss is measured by forward-only passes.
        ``progress(epoch, history)`` is called after every epoch, and ``on_epoch(state)`` with
        a :class:`FitState` to checkpoint.  ``state`` resumes a run: its weights are loaded,
        its generator state and history continue (``seed`` is then unused).
        """
        if update not in ("sgd", "maxnorm"):
            raise ValueError(f"unknown update {update!r}; known: sgd, maxnorm")
        if not (isinstance(epochs, (int, np.integer)) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative integer, not {epochs!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        Xq, yq, clamps = self._quantize(X, y)
        Xv = yv = None
        if validation is not None:
            Xv, yv, _ = self._quantize(*validation)
        rng = np.random.default_rng(seed)
        if state is None:
            # The reference's keys: host quantization clamps, then the engine's flags.
            hist = History(saturations={"input": clamps, "weight": self._load_clamps,
                                        "value": 0, "grad": 0, "delta": 0})
            start_epoch = 0
        else:
            hist = state.history
            rng.bit_generator.state = state.rng_state
            self.load_weights_raw(state.weights_raw)
            self.cycle_stats = dataclasses.replace(state.cycles)
            start_epoch = state.epoch
        self.saturations = hist.saturations
        cfg, n = self.config, len(Xq)
        for epoch in range(start_epoch, epochs):
            order = rng.permutation(n)
            for start in range(0, n, cfg.batch):
                sel = order[start:start + cfg.batch]
                r = self.step_raw(Xq[sel], yq[sel], lr, update)
                self._record(r)
                hist.steps += 1
            hist.train_loss.append(self._evaluate_raw(Xq, yq)[0])
            if Xv is not None:
                loss, acc = self._evaluate_raw(Xv, yv, classify)
                hist.val_loss.append(loss)
                if classify:
                    hist.val_accuracy.append(acc)
            if on_epoch is not None:
                on_epoch(FitState(epoch + 1, self.weights_raw().tolist(), rng.bit_generator.state,
                                  hist, dataclasses.replace(self.cycle_stats)))
            if progress is not None:
                progress(epoch, hist)
        return hist
