"""dpfm.host

The training driver: one :class:`Trainer` (register programming, sample streaming, readback
and the training loop, written once) over a :class:`Transport` to the engine's AXI4-Lite
register map.  Transports: :class:`~dpfm.host.fixed.FixedTransport` (the reference in the
hardware's fixed point, behind the same register rules), :class:`~dpfm.host.verilator.
VerilatorTransport` (the engine's Verilog compiled once per Config into a native library)
and :class:`~dpfm.host.pynq.PynqTransport` (the PYNQ-Z2; ``pynq`` is imported only there).
:mod:`dpfm.host.cli_backend` turns them into ``dpfm train`` backends.

::

    from dpfm.config import Config
    from dpfm.host import Trainer, VerilatorTransport
    from dpfm.reference import MLP

    cfg = Config(k=16)                          # the seed net 4-5-5-1, batch 10
    with VerilatorTransport(cfg) as bus:        # compiled once per Config, then cached
        trainer = Trainer(cfg, bus)             # checks ID and CONFIG_HASH
        trainer.load_weights(MLP(cfg.net, cfg.activations, seed=0))
        history = trainer.fit(X, y, epochs=250, lr=0.01, update="maxnorm",
                              validation=(Xv, yv), seed=0)
        weights = trainer.weights()
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .fixed import FixedTransport
from .trainer import CycleStats, FitState, StepRefused, StepResult, Trainer
from .transport import (BusError, HardwareMismatch, Transport, TransportError, TransportTimeout,
                        TransportUnavailable)

__all__ = ["Trainer", "StepResult", "CycleStats", "FitState", "StepRefused", "Transport",
           "TransportError", "BusError", "TransportTimeout", "TransportUnavailable",
           "HardwareMismatch", "FixedTransport", "VerilatorTransport", "PynqTransport",
           "save_checkpoint", "load_checkpoint", "CheckpointError"]


def __getattr__(name):
    # The Verilator and PYNQ transports load on first use (ctypes / pynq stay unimported).
    if name == "VerilatorTransport":
        from .verilator import VerilatorTransport

        return VerilatorTransport
    if name == "PynqTransport":
        from .pynq import PynqTransport

        return PynqTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
