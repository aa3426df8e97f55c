"""The hardware backends of ``dpfm train``: ``fixed``, ``verilator`` and ``pynq``.

Each is a :class:`HostBackend` (the protocol of :mod:`dpfm.runs`: ``check(spec)`` and
``train(task, spec, progress) -> Trained``) that builds the :class:`~dpfm.config.Config`
of the requested network, opens the transport, and trains with :class:`~dpfm.host.Trainer`:

``fixed``
    :class:`~dpfm.host.fixed.FixedTransport`, the reference in the hardware's fixed formats
    and pruning order behind the engine's register map (no cycle counts);
``verilator``
    :class:`~dpfm.host.verilator.VerilatorTransport`, the engine's Verilog compiled once per
    Config into a native library;
``pynq``
    :class:`~dpfm.host.pynq.PynqTransport`, the board (bitstream from ``$DPFM_BITSTREAM`` or
    ``build/pynq-z2/dpfm.bit``).

The engine implements the ``stream`` pruning policy, so these backends run it whatever the
spec asks (the spec's ``policy`` is set to ``stream``).  Besides the reference backends'
fields, a result carries ``cycles_per_step`` (mean CYCLES of the training steps; None for
``fixed``), ``cycles`` (min / max / busy shares), ``hw_config`` (``Config.to_dict()`` and
its ``hash``) and ``transport`` (build time and cache use, simulated cycles per second).

Spec keys ``save`` (write a checkpoint after every epoch) and ``resume`` (continue from one)
are honoured when present; :func:`train_backend` runs one training from a plain argument set.
"""

from __future__ import annotations

import time

import numpy as np

from dpfm.config import Config
from dpfm.reference import MLP, FixedFormat, Formats, resolve_k
from dpfm.reference.mlp import param_layout

from .checkpoint import load_checkpoint, save_checkpoint, state_to_dict
from .trainer import Trainer
from .transport import TransportUnavailable

__all__ = ["HostBackend", "BACKENDS", "train_backend", "hw_config", "open_transport",
           "RUN_KEYS"]

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


def open_transport(name: str, config, **options):
    """Open the transport ``name`` (``fixed``, ``verilator``, ``pynq``) for ``config``."""
    if name == "fixed":
        from .fixed import FixedTransport

        return FixedTransport(config, **options)
    if name == "verilator":
        from .verilator import VerilatorTransport

        return VerilatorTransport(config, **options)
    if name == "pynq":
        from .pynq import PynqTransport

        return PynqTransport(config, **options)
    raise ValueError(f"unknown transport {name!r}; known: fixed, verilator, pynq")


class HostBackend:
    """Training on the engine through one transport (see the module docstring).

    Parameters
    ----------
    transport : str
        ``fixed``, ``verilator`` or ``pynq``.
    save, resume : path, optional
        Checkpoint written after every epoch / run resumed (the spec's ``save`` and
        ``resume`` keys take precedence).
    options : dict
        Keyword arguments of the transport's constructor.

    Members
    -------
    last_extra : dict
        The hardware fields of the last :meth:`train` (also set as ``Trained.extra``).
    """

    def __init__(self, transport: str, *, save=None, resume=None, **options):
        if transport not in ("fixed", "verilator", "pynq"):
            raise ValueError(f"unknown transport {transport!r}; known: fixed, verilator, pynq")
        self.transport = transport
        self.save, self.resume, self.options = save, resume, options
        self.last_extra: dict = {}

    def __repr__(self):
        return f"HostBackend({self.transport!r})"

    def check(self, spec) -> None:
        """Validate what this backend needs before anything runs (ValueError, naming it)."""
        spec["policy"] = "stream"               # what the engine implements
        config = hw_config(spec)                # ConfigError (a ValueError) names the value
        if self.transport == "pynq":
            from .pynq import check_available

            check_available(config, self.options.get("bitfile"))
        if self.transport == "verilator":
            try:
                from dpfm.rtl.engine import Engine  # noqa: F401
            except ImportError as e:
                raise TransportUnavailable(f"the verilator backend needs dpfm.rtl.engine: {e}") from None
        resume = spec.get("resume") or self.resume
        if resume is not None:
            load_checkpoint(resume, config=config, run=_run_settings(spec))

    def train(self, task, spec, progress=None):
        from dpfm.runs import Trained

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

            cycles0 = transport.total_cycles
            t1 = time.perf_counter()
            hist = trainer.fit(task.X_train, task.y_train, epochs=spec["epochs"], lr=spec["lr"],
                               update=spec["update"], validation=(task.X_val, task.y_val),
                               seed=spec["seed"], progress=progress, classify=task.classify,
                               state=state, on_epoch=None if save is None else on_epoch)
            fit_s = time.perf_counter() - t1
            params = trainer.weights()
            extra = {
                "cycles_per_step": trainer.cycle_stats.mean if transport.counts_cycles else None,
                "cycles": trainer.cycle_stats.to_dict() if transport.counts_cycles else None,
                "hw_config": {**config.to_dict(), "hash": config.hash},
                "transport": _transport_info(transport, open_s, fit_s, cycles0),
                "resumed_from_epoch": None if state is None else state.epoch,
            }
        tr = Trained(np.asarray(params, dtype=np.float64), list(hist.train_loss),
                     list(hist.val_loss), list(hist.val_accuracy), hist.steps,
                     dict(hist.saturations), config.formats.to_dict())
        tr.extra = extra
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


#: One backend object per transport, for a registry of backends by name.
BACKENDS = {name: HostBackend(name) for name in ("fixed", "verilator", "pynq")}


def train_backend(name: str, task_data, args, progress=None) -> dict:
    """Train one run on a hardware backend; returns the result dict of :func:`dpfm.runs.execute`
    plus the hardware fields (``cycles_per_step``, ``hw_config``, ...).

    Parameters
    ----------
    name : str
        ``fixed``, ``verilator`` or ``pynq``.
    task_data : dpfm.tasks.Task or None
        The data; ``None`` loads the task the arguments name.
    args : dict or argparse.Namespace
        Run settings with the names of :data:`dpfm.runs.DEFAULT_CONFIG` (``act`` is accepted
        for ``activations``), plus optional ``save`` and ``resume`` checkpoint paths.
    progress : callable, optional
        ``progress(epoch, history)`` after every epoch.
    """
    from dpfm import runs

    values = dict(args) if isinstance(args, dict) else dict(vars(args))
    if "activations" not in values and "act" in values:
        values["activations"] = values["act"]
    config = {k: values[k] for k in runs.DEFAULT_CONFIG
              if values.get(k) is not None and k not in ("save", "resume")}
    config["backend"] = "fixed"         # validation (incl. --fixed) only; the backend is ours
    prep = runs.prepare(config)
    spec = {**prep.spec, "backend": name}
    task = prep.task if task_data is None else task_data
    backend = HostBackend(name, save=values.get("save"), resume=values.get("resume"))
    backend.check(spec)
    result = runs.execute(runs.Prepared(spec, task, backend), progress)
    result.update(backend.last_extra)
    return result
