"""The training backends of ``dpfm train`` and ``dpfm sweep``, registered by name.

A backend is an object with one method ``train(task, spec, progress) -> Trained``, an
optional ``check(spec)`` that validates backend-specific options before anything runs (a
``ValueError`` naming the value), and an optional ``warm_up(spec)`` run before the timer
starts (JIT compilation).  :data:`BACKENDS` holds the four that ``--backend`` names:

``numpy``
    :class:`ReferenceBackend`: :class:`dpfm.reference.MLP` in float64; the definition.
``fixed``
    :class:`ReferenceBackend` in the hardware's fixed-point formats and its ``stream``
    pruning order: bit for bit what the engine computes, with no engine involved.
``verilator``
    :class:`HostBackend` over :class:`~dpfm.host.verilator.VerilatorTransport`: the engine's
    Verilog compiled once per Config into a native library, driven by the host's
    :class:`~dpfm.host.Trainer` through its register map.
``pynq``
    :class:`HostBackend` over :class:`~dpfm.host.pynq.PynqTransport`: the engine on the
    PYNQ-Z2 (bitstream from ``$DPFM_BITSTREAM`` or ``build/pynq-z2/dpfm.bit``).

A :class:`HostBackend` can also run over the ``emulator`` transport
(:class:`~dpfm.host.emulator.EmulatorTransport`, the reference behind the engine's register
rules), which tests use to check the host's protocol without a hardware build.

Host backends implement the engine's ``stream`` pruning policy and refuse any other.
Besides the common result fields they add ``cycles_per_step`` (mean CYCLES of the training
steps; None for the emulator), ``cycles`` (min / max / busy shares), ``hw_config``
(``Config.to_dict()`` and its ``hash``) and ``transport`` (build time and cache use,
simulated cycles per second, the training ``mode`` used and the register ``bus_accesses``:
``total`` since the transport opened, ``fit`` and ``per_epoch`` of the training).  Spec keys
``save`` (a checkpoint after every epoch) and ``resume`` (continue from one) are honoured by
host backends only.  A host backend's ``mode`` (``auto``, ``run``, ``step``; see
:meth:`dpfm.host.Trainer.fit`) picks run mode or the per-step protocol.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from dpfm.config import Config
from dpfm.host.checkpoint import load_checkpoint, save_checkpoint, state_to_dict
from dpfm.host.trainer import MODES, Trainer
from dpfm.reference import MLP, FixedFormat, Formats, resolve_k
from dpfm.reference.estimators import check_estimator
from dpfm.reference.mlp import param_layout
from dpfm.tasks import Task

__all__ = ["Trained", "ReferenceBackend", "HostBackend", "BACKENDS", "BACKEND_HELP",
           "TRANSPORTS", "get_backend", "hw_config", "open_transport", "transport_class",
           "RUN_KEYS", "MODES"]

#: The transports a :class:`HostBackend` opens.
TRANSPORTS = ("emulator", "verilator", "pynq")


@dataclass
class Trained:
    """What a backend's ``train`` returns.

    ``params`` are the final parameters in the public order (float64; in fixed point their
    exact values); ``train_loss``/``val_loss``/``val_accuracy`` one entry per epoch;
    ``formats`` the number formats used (``Formats.to_dict()``) or ``None`` for float;
    ``extra`` backend-specific result fields (cycle counts, hardware config, ...), added to
    the result without replacing any of the common ones; ``setup_s`` the seconds of ``train``
    spent before training began (building and opening a transport), which the run's
    ``train_s`` and ``us_per_step`` leave out.
    """
    params: np.ndarray
    train_loss: list
    val_loss: list
    val_accuracy: list = field(default_factory=list)
    steps: int = 0
    saturations: dict = field(default_factory=dict)
    formats: dict | None = None
    extra: dict = field(default_factory=dict)
    setup_s: float = 0.0


class ReferenceBackend:
    """The golden model, :class:`dpfm.reference.MLP`, in float64 or bit-exact fixed point.

    Parameters
    ----------
    fixed : bool
        Train in fixed point: the default :class:`~dpfm.reference.Formats`, or
        ``Formats.uniform(FixedFormat.parse(spec["fixed"]))`` when the config names one.
    """

    def __init__(self, fixed: bool):
        self.fixed = fixed

    def formats(self, spec):
        if not self.fixed:
            return None
        if spec["fixed"] is None:
            return Formats()
        try:
            return Formats.uniform(FixedFormat.parse(spec["fixed"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad fixed format {spec['fixed']!r} (--fixed BITS.FRAC): {e}") from None

    def check(self, spec):
        for key in ("save", "resume"):
            if spec.get(key) is not None:
                raise ValueError(f"--{key} needs a hardware backend (verilator or pynq), "
                                 f"not {spec['backend']!r}")
        if self.fixed:
            check_estimator(spec["estimator"], fixed=True)
        if not self.fixed and spec["fixed"] is not None:
            raise ValueError(f"fixed={spec['fixed']!r} (--fixed) applies only to the fixed backend, "
                             f"not to {spec['backend']!r}")
        self.formats(spec)          # ValueError on a bad BITS.FRAC

    def warm_up(self, spec):
        """Load the numba kernels for this number type (a 2-step run on a tiny net), so
        the timed run measures training, not JIT compilation or cache loading."""
        fmt = self.formats(spec)
        X = np.full((2, 2), 0.5)
        net = MLP([2, 2, 1], ["sigmoid", "linear"], seed=0)
        net.fit(X, X[:, :1], k=2, epochs=1, batch=1, lr=0.01, update=spec["update"],
                validation=(X, X[:, :1]), fmt=fmt, policy=spec["policy"],
                estimator=spec.get("estimator", "topk"))

    def train(self, task: Task, spec: dict, progress=None) -> Trained:
        fmt = self.formats(spec)
        net = MLP(spec["net"], spec["activations"], seed=spec["seed"])
        with np.errstate(over="ignore", invalid="ignore"):    # a diverging run: see "diverged"
            hist = net.fit(task.X_train, task.y_train, k=spec["k"], epochs=spec["epochs"],
                           batch=spec["batch"], lr=spec["lr"], update=spec["update"],
                           validation=(task.X_val, task.y_val), fmt=fmt, policy=spec["policy"],
                           seed=spec["seed"], progress=progress, classify=task.classify,
                           estimator=spec["estimator"], layer_k=spec["layer_k"])
        return Trained(net.params.copy(), list(hist.train_loss), list(hist.val_loss),
                       list(hist.val_accuracy), hist.steps, dict(hist.saturations),
                       None if fmt is None else fmt.to_dict())


#: Spec keys a checkpoint must agree on to be resumed (``epochs`` may grow).
RUN_KEYS = ("task", "data", "corpus", "net", "activations", "k", "batch", "lr", "update", "seed",
            "fixed")


def hw_config(spec) -> Config:
    """The engine's Config for a resolved run spec (net, activations, k, batch, fixed)."""
    net = tuple(int(n) for n in spec["net"])
    k = resolve_k(spec["k"], param_layout(net)[1])
    fixed = spec.get("fixed")
    formats = Formats() if fixed is None else Formats.uniform(FixedFormat.parse(fixed))
    return Config(net=net, activations=tuple(spec["activations"]), k=k, batch=int(spec["batch"]),
                  formats=formats, policy="stream")


def transport_class(name: str):
    """The :class:`~dpfm.host.transport.Transport` subclass of ``name`` (one of
    :data:`TRANSPORTS`), imported only now."""
    if name == "emulator":
        from dpfm.host.emulator import EmulatorTransport

        return EmulatorTransport
    if name == "verilator":
        from dpfm.host.verilator import VerilatorTransport

        return VerilatorTransport
    if name == "pynq":
        from dpfm.host.pynq import PynqTransport

        return PynqTransport
    raise ValueError(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}")


def open_transport(name: str, config, **options):
    """Open the transport ``name`` (one of :data:`TRANSPORTS`) for ``config``."""
    return transport_class(name)(config, **options)


class HostBackend:
    """Training on the engine through one transport (see the module docstring).

    Parameters
    ----------
    transport : str
        One of :data:`TRANSPORTS`: ``emulator``, ``verilator`` or ``pynq``.
    save, resume : path, optional
        Checkpoint written after every epoch / run resumed (the spec's ``save`` and
        ``resume`` keys take precedence).
    mode : str
        ``auto`` (default: run mode when the transport has it), ``run`` or ``step``
        (:meth:`dpfm.host.Trainer.fit`).
    options : dict
        Keyword arguments of the transport's constructor.

    Members
    -------
    last_extra : dict
        The hardware fields of the last :meth:`train` (also set as ``Trained.extra``).
    """

    def __init__(self, transport: str, *, save=None, resume=None, mode: str = "auto", **options):
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; known: {', '.join(TRANSPORTS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.transport = self.name = transport
        self.save, self.resume, self.mode, self.options = save, resume, mode, options
        self.last_extra: dict = {}

    def __repr__(self):
        return f"HostBackend({self.transport!r}, mode={self.mode!r})"

    def with_mode(self, mode: str) -> "HostBackend":
        """The same backend training in ``mode``."""
        return HostBackend(self.transport, save=self.save, resume=self.resume, mode=mode,
                           **self.options)

    def check(self, spec) -> None:
        """Validate what this backend needs before anything runs (ValueError, naming it)."""
        check_estimator(spec.get("estimator", "topk"), fixed=True)
        if spec["policy"] != "stream":
            raise ValueError(f"policy={spec['policy']!r} (--policy): the engine prunes in the "
                             f"'stream' order only; use --backend numpy or fixed for "
                             f"{spec['policy']!r}")
        config = hw_config(spec)                # ConfigError (a ValueError) names the value
        if self.mode == "run" and not transport_class(self.transport).supports_run:
            raise ValueError(f"--mode run: the {self.transport} transport has no run mode "
                             f"(use --mode step or auto)")
        if self.transport == "pynq":
            from dpfm.host.pynq import check_available

            check_available(config, self.options.get("bitfile"))
        resume = spec.get("resume") or self.resume
        if resume is not None:
            load_checkpoint(resume, config=config, run=_run_settings(spec))

    def train(self, task, spec, progress=None):
        config = hw_config(spec)
        save = spec.get("save") or self.save
        resume = spec.get("resume") or self.resume
        run = _run_settings(spec)
        t0 = time.perf_counter()
        with open_transport(self.transport, config, **self.options) as transport:
            open_s = time.perf_counter() - t0
            trainer = Trainer(config, transport)
            state = None
            if resume is not None:
                state = load_checkpoint(resume, config=config, run=run)
            else:
                trainer.load_weights(MLP(spec["net"], spec["activations"], seed=spec["seed"]))

            def on_epoch(fs):
                save_checkpoint(save, state_to_dict(fs, config=config, run=run))

            mode = trainer.resolve_mode(self.mode)
            cycles0 = transport.total_cycles
            accesses0 = transport.bus_accesses
            t1 = time.perf_counter()
            hist = trainer.fit(task.X_train, task.y_train, epochs=spec["epochs"], lr=spec["lr"],
                               update=spec["update"], validation=(task.X_val, task.y_val),
                               seed=spec["seed"], progress=progress, classify=task.classify,
                               state=state, on_epoch=None if save is None else on_epoch,
                               mode=mode)
            fit_s = time.perf_counter() - t1
            fit_accesses = transport.bus_accesses - accesses0
            params = trainer.weights()
            epochs_run = spec["epochs"] - (0 if state is None else state.epoch)
            info = _transport_info(transport, open_s, fit_s, cycles0)
            info.update(mode=mode, bus_accesses={
                "total": transport.bus_accesses, "fit": fit_accesses,
                "per_epoch": fit_accesses / epochs_run if epochs_run > 0 else None})
            extra = {
                "cycles_per_step": trainer.cycle_stats.mean if transport.counts_cycles else None,
                "cycles": trainer.cycle_stats.to_dict() if transport.counts_cycles else None,
                "hw_config": {**config.to_dict(), "hash": config.hash},
                "transport": info,
                "resumed_from_epoch": None if state is None else state.epoch,
            }
        tr = Trained(np.asarray(params, dtype=np.float64), list(hist.train_loss),
                     list(hist.val_loss), list(hist.val_accuracy), hist.steps,
                     dict(hist.saturations), config.formats.to_dict())
        tr.extra = extra
        tr.setup_s = open_s
        self.last_extra = extra
        return tr


def _run_settings(spec) -> dict:
    return {k: spec.get(k) for k in RUN_KEYS}


def _transport_info(transport, open_s, fit_s, cycles0) -> dict:
    info = {"name": transport.name, "open_s": open_s, "fit_s": fit_s}
    build = getattr(transport, "build", None)
    if build is not None:
        info.update(build_dir=str(build.directory), build_cached=build.cached,
                    build_s=build.build_s, verilog_s=build.verilog_s)
    if cycles0 is not None and transport.total_cycles is not None:
        cycles = transport.total_cycles - cycles0
        info.update(sim_cycles=cycles, sim_cycles_per_s=cycles / fit_s if fit_s > 0 else None)
        steps = getattr(transport, "step_cycles", None)
        if steps is not None and cycles:
            info["bus_cycles_share"] = 1 - steps / cycles
    return info


#: Backend name -> backend, the names of ``--backend``.
BACKENDS = {
    "numpy": ReferenceBackend(fixed=False),
    "fixed": ReferenceBackend(fixed=True),
    "verilator": HostBackend("verilator"),
    "pynq": HostBackend("pynq"),
}

#: One line per backend, for help texts.
BACKEND_HELP = {
    "numpy": "float64 reference (the definition)",
    "fixed": "the reference in the hardware's fixed point and pruning order, bit-exact with "
             "the engine",
    "verilator": "the engine's Verilog compiled with Verilator (first build takes minutes)",
    "pynq": "the engine on a PYNQ-Z2 board",
}


def get_backend(name):
    """The backend registered as ``name``; ValueError listing the known ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name]
