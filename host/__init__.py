"""dpfm.host

The training driver: one :class:`Trainer` (register programming, sample streaming, readback
and the training loop, written once) over a :class:`Transport` to the engine's AXI4-Lite
register map.  Transports: :class:`~dpfm.host.emulator.EmulatorTransport` (the reference in
the hardware's fixed point, behind the same register rules), :class:`~dpfm.host.verilator.
VerilatorTransport` (the engine's Verilog compiled once per Config into a native library)
and :class:`~dpfm.host.pynq.PynqTransport` (the PYNQ-Z2; ``pynq`` is imported only when it
opens).  :mod:`dpfm.backends` turns them into ``dpfm train`` backends.

This package imports nothing above :mod:`dpfm.rtl` and :mod:`dpfm.reference`, and nothing
outside the standard library and numpy when it is imported, so it runs on the board's Python.

::

    from dpfm.config import Config
    from dpfm.host import Trainer, VerilatorTransport
    from dpfm.reference import MLP

    cfg = Config(k=16)                          # the seed net 4-5-5-1, batch 10
    with VerilatorTransport(cfg) as bus:        # compiled once per Config, then cached
        trainer = Trainer(cfg, bus)             # checks ID and CONFIG_HASH
        trainer.load_weights(MLP(cfg.net, cfg.activations, seed=0))
        history = trainer.fit(X, y, epochs=250, lr=0.01, update="maxnorm",
                              validation=(Xv, yv), seed=0)   # run mode where the engine has it
        weights = trainer.weights()
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .emulator import EmulatorTransport
from .pynq import PynqTransport
from .trainer import CycleStats, FitState, RunFailed, StepRefused, StepResult, Trainer
from .transport import (BusError, HardwareMismatch, RunBuffer, Transport, TransportError,
                        TransportTimeout, TransportUnavailable)
from .verilator import VerilatorTransport

__all__ = ["Trainer", "StepResult", "CycleStats", "FitState", "StepRefused", "RunFailed",
           "Transport", "RunBuffer",
           "TransportError", "BusError", "TransportTimeout", "TransportUnavailable",
           "HardwareMismatch", "EmulatorTransport", "VerilatorTransport", "PynqTransport",
           "save_checkpoint", "load_checkpoint", "CheckpointError"]
