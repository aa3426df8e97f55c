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

Run mode (docs/engine.md "Run mode"), used by :meth:`Trainer.fit` whenever the transport
has it: the quantized corpus and every epoch's batch order (the same permutations) go into
one buffer (:func:`~dpfm.rtl.protocol.pack_run`), the run registers and CTRL.run are written
at once, and the host only polls RUN_STATUS a few times a second; each finished epoch's log
entry and weight snapshot are read from the buffer, not over the register bus.  The
History, saturation counts, cycle statistics and checkpoints are the ones per-step training
gives, bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np

from dpfm.reference import MLP, History
from dpfm.rtl.protocol import (CLEAR_FLAGS_WORD, EVAL_REGISTERS, RESULT_REGISTERS, RUN_WORD,
                               STOP_WORD, loss_raw, pack_run, parse_log, run_layout,
                               run_setting_words, run_status_fields, sample_words, setting_words,
                               snapshot, status_fields, word)
from dpfm.rtl.regmap import (ERR_ADDR_WRITE, ERRORS, FLAGS, ID_MAGIC, RUN_ERRORS, SAT_FLAGS, UPDATE,
                             RunError)

from .transport import (BusError, HardwareMismatch, TransportError, TransportTimeout,
                        TransportUnavailable, sign_extend)

__all__ = ["Trainer", "StepResult", "CycleStats", "FitState", "HardwareMismatch", "StepRefused",
           "RunFailed", "flag_names", "run_plan", "MODES", "MAX_RUN_EPOCHS", "RUN_BUFFER_BUDGET",
           "MAX_POLL_S"]

#: ``Trainer.fit(mode=...)``: ``auto`` (run mode when the transport has it), ``run``, ``step``.
MODES = ("auto", "run", "step")
#: Epochs one run can hold (RUN_EPOCHS is 16 bits); longer fits are split into several runs.
MAX_RUN_EPOCHS = (1 << 16) - 1
#: Bytes of run buffer above which a fit is split into several runs of fewer epochs (each
#: needs its batch orders, log and snapshots in the buffer); a corpus alone may need more.
RUN_BUFFER_BUDGET = 16 << 20
_MEMORY_ERRORS = (RunError.MEM_SLVERR, RunError.MEM_DECERR)

_SAT_KINDS = {"sat_value": "value", "sat_grad": "grad", "sat_delta": "delta", "sat_weight": "weight"}


class StepRefused(TransportError):
    """The engine refused to start a step; ``code`` is its error code (see ``ERRORS``)."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        reason = ERRORS.get(code, "unknown error code")
        super().__init__(f"the engine refused the step: error {code} ({reason}){detail}")


#: Longest wait between two RUN_STATUS reads of a run (seconds).
MAX_POLL_S = 10.0


class RunFailed(TransportError):
    """A run (run mode) ended with an error code in RUN_STATUS (see ``RUN_ERRORS``).

    Members
    -------
    code : int
        The :class:`~dpfm.rtl.regmap.RunError` code.
    epochs : int
        Epochs of the run that finished whole (reported, and the engine holds the weights of
        the last of them, or the run's start weights when none).
    addr : int or None
        The bus address of the failed memory access (RUN_ERR_ADDR) for memory errors.
    """

    def __init__(self, code: int, epochs: int, addr: int | None = None):
        self.code, self.epochs, self.addr = int(code), int(epochs), addr
        try:
            reason = RUN_ERRORS[RunError(self.code)]
        except ValueError:
            reason = "unknown error code"
        where = "" if addr is None else f" at bus address 0x{addr:08x}"
        super().__init__(f"the engine's run stopped with error {self.code} ({reason}{where}) "
                         f"after {self.epochs} whole epoch(s) of the run")


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
        self.add_steps(1, r.cycles, r.cycles, r.cycles, r.mul_busy, r.merge_busy)

    def add_steps(self, steps: int, total: int, cmin: int, cmax: int, mul_busy: int,
                  merge_busy: int):
        """Add ``steps`` training steps of ``total`` cycles (smallest ``cmin``, largest
        ``cmax``) and their busy counts (e.g. one epoch's log entry in run mode)."""
        if not steps:
            return
        self.steps += int(steps)
        self.total += int(total)
        self.mul_busy += int(mul_busy)
        self.merge_busy += int(merge_busy)
        self.min = int(cmin) if self.min is None else min(self.min, int(cmin))
        self.max = int(cmax) if self.max is None else max(self.max, int(cmax))

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
        Seconds a step may take before :class:`~dpfm.host.transport.TransportTimeout` (in run
        mode: per step and pass of an epoch, for the epoch counter to move on).
    poll_s : float
        Run mode: seconds between two reads of RUN_STATUS (default 0.2).

    Members
    -------
    cycle_stats : CycleStats
        Cycles of every training step (not of evaluation passes) since construction.
    saturations : dict
        Per kind (``value``, ``grad``, ``delta``, ``weight``): training steps that raised the
        engine's sticky saturation flag; plus ``input`` and ``weight`` clamps of the host's
        own quantization.
    """

    def __init__(self, config, transport, *, check: bool = True, timeout: float = 60.0,
                 poll_s: float = 0.2):
        self.config = config
        self.transport = transport
        self.regmap = transport.regmap
        if transport.config != config:
            raise HardwareMismatch(f"the transport was opened for Config hash "
                                   f"0x{transport.config.hash:08x}, the trainer expects "
                                   f"0x{config.hash:08x}")
        self.timeout = timeout
        self.poll_s = poll_s
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
        self._known_weights = None      # the engine's weights when the host knows them
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
        self._known_weights = None
        self.transport.write_many(self._weight_addr, (q & 0xFFFFFFFF).tolist())
        self._known_weights = q.copy()

    def weights_raw(self) -> np.ndarray:
        """The engine's parameters as weight-format integers (public order)."""
        words = self.transport.read_many(self._weight_addr)
        q = np.array([sign_extend(w, 32) for w in words], dtype=np.int64)
        self._known_weights = q.copy()
        return q

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
        if update != "none":
            self._known_weights = None
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

    def _count_saturations(self, steps_by_flag: dict):
        """Add, per saturation flag (``sat_value``, ...), the training steps that raised it."""
        for flag, steps in steps_by_flag.items():
            if steps:
                self._count(_SAT_KINDS[flag], steps)

    def _record(self, r: StepResult):
        if r.update != "none":
            self.cycle_stats.add(r)
            self._count_saturations({flag: r.flags >> FLAGS[flag] & 1 for flag in SAT_FLAGS})

    # -- whole sets -------------------------------------------------------------------------
    def _mean_loss(self, total: int, n: int) -> float:
        """The MSE of ``n`` samples whose squared errors sum to ``total`` (raw)."""
        if not n:
            return float("nan")
        cfg = self.config
        return float(total) / float(1 << 2 * cfg.formats.value.frac) / (n * cfg.n_out)

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
        return self._mean_loss(total, len(Xq)), (hits / len(Xq) if classify and len(Xq) else None)

    def evaluate(self, X, y, *, classify: bool = False):
        """MSE over the whole set from forward-only passes (UPDATE=none), equal to the
        reference's ``MLP.loss(X, y, fmt)``.  With ``classify``: ``(loss, accuracy)``."""
        Xq, yq, _ = self._quantize(X, y)
        loss, acc = self._evaluate_raw(Xq, yq, classify)
        return (loss, acc) if classify else loss

    def resolve_mode(self, mode: str = "auto") -> str:
        """``"run"`` or ``"step"``: what :meth:`fit` with ``mode`` uses on this transport.
        :class:`~dpfm.host.transport.TransportUnavailable` for ``"run"`` on a transport
        without run mode."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        if mode == "step":
            return "step"
        if self.transport.supports_run:
            return "run"
        if mode == "run":
            raise TransportUnavailable(f"{self.transport.name}: this transport has no run mode "
                                       f"(use mode 'step' or 'auto')")
        return "step"

    def fit(self, X, y, epochs: int = 250, lr: float = 0.01, update: str = "maxnorm",
            validation=None, seed: int = 0, progress: Callable | None = None,
            classify: bool = False, state: FitState | None = None,
            on_epoch: Callable[[FitState], None] | None = None, mode: str = "auto") -> History:
        """Train from the weights in the engine; returns a reference :class:`History`.

        Same batch order as :meth:`dpfm.reference.MLP.fit`: a fresh
        ``numpy.random.default_rng(seed).permutation`` each epoch, batches of
        ``config.batch``, the last one possibly smaller.  After each epoch the train (and
        ``validation=(Xv, yv)``) loss is measured by forward-only passes.
        ``progress(epoch, history)`` is called after every epoch, and ``on_epoch(state)`` with
        a :class:`FitState` to checkpoint.  ``state`` resumes a run: its weights are loaded,
        its generator state and history continue (``seed`` is then unused).

        ``mode``: ``"auto"`` trains in run mode when the transport has it (the engine runs
        whole epochs by itself, see the module docstring), ``"run"`` insists on it,
        ``"step"`` drives every step over the register bus.  Both give the same weights,
        history and statistics.  In run mode a ``KeyboardInterrupt`` stops the engine at the
        end of the epoch in progress; the finished epochs are reported (``on_epoch``), then
        it is raised again.

        Raises
        ------
        ValueError
            Bad arguments; in run mode also a corpus whose buffer the transport cannot
            allocate or the engine's 32-bit addresses cannot reach (before anything is
            written).
        RunFailed
            The engine's run ended with an error code; the epochs that finished are
            reported and the engine holds the weights of the last of them.
        """
        if update not in ("sgd", "maxnorm"):
            raise ValueError(f"unknown update {update!r}; known: sgd, maxnorm")
        if not (isinstance(epochs, (int, np.integer)) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative integer, not {epochs!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        use_run = self.resolve_mode(mode) == "run"
        Xq, yq, clamps = self._quantize(X, y)
        Xv = yv = None
        if validation is not None:
            Xv, yv, _ = self._quantize(*validation)
        plan = None
        if use_run:             # the corpus fits the engine's memory: checked before any write
            plan = run_plan(self.config, len(Xq), 0 if Xv is None else len(Xv), int(epochs))
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
        job = _FitJob(Xq, yq, Xv, yv, int(epochs), lr, update, classify, rng, hist, on_epoch,
                      progress)
        if use_run:
            self._fit_runs(job, start_epoch, plan)
        else:
            self._fit_steps(job, start_epoch)
        return hist

    def _epoch_done(self, job, epoch: int, train_loss: float, val, weights: Callable,
                    rng_state: dict):
        """Record epoch ``epoch``'s losses (``val``: ``(loss, accuracy)`` or None) in the
        History, then call ``on_epoch`` (``weights()``: the weights after it) and
        ``progress``."""
        hist = job.hist
        hist.train_loss.append(train_loss)
        if val is not None:
            hist.val_loss.append(val[0])
            if job.classify:
                hist.val_accuracy.append(val[1])
        if job.on_epoch is not None:
            job.on_epoch(FitState(epoch + 1, list(weights()), rng_state, hist,
                                  dataclasses.replace(self.cycle_stats)))
        if job.progress is not None:
            job.progress(epoch, hist)

    def _fit_steps(self, job, start_epoch: int):
        """The per-step protocol: every step and pass over the register bus."""
        cfg, n = self.config, len(job.Xq)
        for epoch in range(start_epoch, job.epochs):
            order = job.rng.permutation(n)
            for start in range(0, n, cfg.batch):
                sel = order[start:start + cfg.batch]
                r = self.step_raw(job.Xq[sel], job.yq[sel], job.lr, job.update)
                self._record(r)
                job.hist.steps += 1
            train = self._evaluate_raw(job.Xq, job.yq)[0]
            val = None if job.Xv is None else self._evaluate_raw(job.Xv, job.yv, job.classify)
            self._epoch_done(job, epoch, train, val, lambda: self.weights_raw().tolist(),
                             job.rng.bit_generator.state)

    # -- run mode ---------------------------------------------------------------------------
    def _fit_runs(self, job, start_epoch: int, per_run: int):
        """The remaining epochs as runs of at most ``per_run`` epochs, in one buffer."""
        if start_epoch >= job.epochs:
            return
        t, n = self.transport, len(job.Xq)
        n_val = 0 if job.Xv is None else len(job.Xv)
        per_run = min(per_run, job.epochs - start_epoch)
        size = run_layout(self.config, n, n_val, per_run)
        try:
            buf = t.allocate(size.nwords)
        except TransportUnavailable as e:
            raise TransportUnavailable(
                f"the run needs a buffer of {size.nbytes} bytes ({n} training and {n_val} "
                f"validation rows, {per_run} epochs); {e}") from None
        with buf:
            first = start_epoch
            while first < job.epochs:
                count = min(per_run, job.epochs - first)
                self._run(job, buf, first, count)
                first += count

    def _run(self, job, buf, first: int, count: int):
        """Epochs ``first .. first + count - 1`` as one run of the engine."""
        cfg, t = self.config, self.transport
        n = len(job.Xq)
        n_val = 0 if job.Xv is None else len(job.Xv)
        layout = run_layout(cfg, n, n_val, count)
        regs = run_setting_words(cfg, layout, buf.address, job.update, job.lr, job.classify)
        perms, states = [], []
        for _ in range(count):
            perms.append(job.rng.permutation(n))
            states.append(job.rng.bit_generator.state)
        pack_run(layout, buf.words, job.Xq, job.yq, job.Xv, job.yv, perms)
        buf.flush()
        start_weights = self._known_weights
        if start_weights is None:
            start_weights = self.weights_raw()
        # the run rewrites BATCH_N, UPDATE and the sgd scale: nothing written is known any more
        self.forget_registers()
        self._known_weights = None
        ctrl = self._off["CTRL"]
        t.write_many([self._off[name] for name, _ in regs] + [ctrl],
                     [word(v) for _, v in regs] + [RUN_WORD])
        passes = -(-n // cfg.batch) + -(-n_val // cfg.batch)
        patience = self.timeout * (layout.steps + passes)
        done = 0                        # epochs of this run reported
        interrupted = False
        last_move = time.monotonic()
        # RUN_STATUS is read about twice per epoch however long an epoch takes: the wait
        # doubles while no epoch ends, up to half the last epoch's time (and MAX_POLL_S)
        interval, epoch_s = self.poll_s, None
        try:
            while True:
                try:
                    status = t.poll_run(interval)
                    fields = run_status_fields(status)
                    if fields["epochs"] > done:
                        buf.invalidate()
                        now = time.monotonic()
                        epoch_s = (now - last_move) / (fields["epochs"] - done)
                        last_move = now
                        interval = max(self.poll_s, min(interval, epoch_s / 2))
                    else:
                        cap = MAX_POLL_S if epoch_s is None else min(MAX_POLL_S, epoch_s / 2)
                        interval = max(self.poll_s, min(2 * interval, cap))
                    while done < min(fields["epochs"], count):
                        log = parse_log(buf.words, layout, done)
                        if log.epoch != done & 0xFFFF:
                            raise TransportError(
                                f"{t.name}: the log entry of the run's epoch {done} reads epoch "
                                f"{log.epoch}: the host sees a stale buffer")
                        if log.flags >> FLAGS["bus_error"] & 1:
                            raise self._run_bus_error()
                        weights = snapshot(buf.words, layout, done)
                        done += 1
                        self._epoch_from_log(job, first + done - 1, log, weights, states[done - 1])
                    if not fields["running"]:
                        break
                    if time.monotonic() - last_move > patience:
                        raise TransportTimeout(
                            f"{t.name}: the run did not finish an epoch in {patience:.0f} s "
                            f"(RUN_STATUS=0x{status:08x})")
                except KeyboardInterrupt:
                    if interrupted:
                        raise
                    interrupted = True          # stop at the epoch's end, report, re-raise
                    t.write(ctrl, STOP_WORD)
                    interval = self.poll_s
        except BaseException:
            self._abandon_run(buf, layout, done, start_weights, patience)
            raise
        self.forget_registers()
        if fields["error"]:
            code = fields["error"]
            addr = t.read(self._off["RUN_ERR_ADDR"]) if code in _MEMORY_ERRORS else None
            self._restore_epoch(buf, layout, done, start_weights)
            raise RunFailed(code, done, addr)
        self._known_weights = snapshot(buf.words, layout, done - 1) if done else start_weights
        if interrupted:
            raise KeyboardInterrupt
        if done != count:
            raise TransportError(f"{t.name}: the run ended after {done} of its {count} epochs "
                                 f"without an error code (RUN_STATUS=0x{status:08x})")

    def _epoch_from_log(self, job, epoch: int, log, weights, rng_state: dict):
        """Book an epoch the engine ran (its log entry and weight snapshot) as
        :meth:`_fit_steps` books one it drove."""
        n = len(job.Xq)
        self.cycle_stats.add_steps(log.steps, log.cycles, log.cycles_min, log.cycles_max,
                                   log.mul_busy, log.merge_busy)
        self._count_saturations({"sat_value": log.sat_value, "sat_grad": log.sat_grad,
                                 "sat_delta": log.sat_delta, "sat_weight": log.sat_weight})
        job.hist.steps += log.steps
        val = None
        if job.Xv is not None:
            n_val = len(job.Xv)
            val = (self._mean_loss(log.val_loss_raw, n_val),
                   log.val_hits / n_val if job.classify and n_val else None)
        self._epoch_done(job, epoch, self._mean_loss(log.train_loss_raw, n), val,
                         weights.tolist, rng_state)

    def _run_bus_error(self) -> BusError:
        """The refused access the engine recorded while a run went on (FLAGS.bus_error in a
        log entry), as :meth:`step_raw` reports it; FLAGS are cleared."""
        t = self.transport
        err = t.read(self._off["ERR_ADDR"])
        t.write(self._off["CTRL"], CLEAR_FLAGS_WORD)
        addr = err & ~ERR_ADDR_WRITE
        return BusError(addr, None, write=bool(err & ERR_ADDR_WRITE),
                        name=f"{self.regmap.name_of(addr)}, refused while the run went on")

    def _restore_epoch(self, buf, layout, done: int, start_weights):
        """Load the weights after the last reported epoch of the run (the start weights when
        none) back into the engine."""
        self.load_weights_raw(snapshot(buf.words, layout, done - 1) if done else start_weights)

    def _abandon_run(self, buf, layout, done: int, start_weights, patience: float):
        """After an exception while a run went on: stop it at the end of its epoch and load
        the last reported epoch's weights back, as far as the engine answers."""
        t = self.transport
        self.forget_registers()
        try:
            t.write(self._off["CTRL"], STOP_WORD)
            deadline = time.monotonic() + patience
            while run_status_fields(t.poll_run(self.poll_s))["running"]:
                if time.monotonic() > deadline:
                    return
            buf.invalidate()
            self._restore_epoch(buf, layout, done, start_weights)
        except TransportError:
            pass


@dataclasses.dataclass
class _FitJob:
    """The arguments of one :meth:`Trainer.fit`, quantized."""
    Xq: np.ndarray
    yq: np.ndarray
    Xv: np.ndarray | None
    yv: np.ndarray | None
    epochs: int
    lr: float
    update: str
    classify: bool
    rng: np.random.Generator
    hist: History
    on_epoch: Callable | None
    progress: Callable | None


def run_plan(config, n_train: int, n_val: int, epochs: int) -> int:
    """Epochs per run for a run-mode fit of ``epochs`` over ``n_train`` training and
    ``n_val`` validation samples (at least 1: longer fits are split into runs that need at
    most :data:`RUN_BUFFER_BUDGET` bytes, or the corpus' own size, and at most
    :data:`MAX_RUN_EPOCHS` epochs).

    Raises
    ------
    ValueError
        The corpus cannot be a run's: more rows than RUN_TRAIN_N / RUN_VAL_N hold, or a
        buffer the engine's 32-bit addresses cannot reach.
    """
    limit = (1 << 24) - 1       # RUN_TRAIN_N and RUN_VAL_N are 24 bits
    if n_train > limit or n_val > limit:
        raise ValueError(f"run mode takes at most {limit} training and {limit} validation "
                         f"rows, not {n_train} and {n_val}")
    one = run_layout(config, n_train, n_val, 1)
    if one.nbytes > 1 << 32:
        raise ValueError(f"the corpus ({n_train} training and {n_val} validation rows of "
                         f"{one.row_words} words) needs a run buffer of {one.nbytes} bytes, more "
                         f"than the 4 GiB the engine's 32-bit addresses reach")
    budget = max(RUN_BUFFER_BUDGET, one.nbytes)
    lo, hi = 1, max(1, min(int(epochs), MAX_RUN_EPOCHS))
    while lo < hi:                  # the most epochs whose buffer stays within the budget
        mid = (lo + hi + 1) // 2
        if run_layout(config, n_train, n_val, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
