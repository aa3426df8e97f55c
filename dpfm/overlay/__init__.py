"""dpfm.overlay: the engine as a PYNQ overlay package, and a driver for notebooks.

This folder is what PYNQ finds through the ``pynq.overlays`` entry point: ``dpfm.bit``,
``dpfm.hwh`` and ``dpfm.json`` go here when built (``make overlay`` copies them from
``build/pynq-z2``; further Configs in subfolders, e.g. ``k4/dpfm.bit``), so that
``pynq.Overlay("dpfm.bit")`` resolves them.  ``notebooks/`` is what ``pynq get-notebooks``
copies (the ``pynq.notebooks`` entry point).

- :class:`DpfmIP` is the ``pynq.DefaultIP`` driver bound to the engine's VLNV (:data:`VLNV`,
  the block design's module reference of ``dpfm_top``): ``overlay.dpfm.engine()``.
- :class:`DpfmOverlay` loads the bitstream and checks that FCLK0 runs at the clock
  ``dpfm.json`` was built for (:func:`check_fclk0`).
- :class:`Dpfm` is the notebook's handle on any engine: load weights, train N epochs in run
  mode with a progress bar, evaluate, the loss log as arrays, flags and cycle counters.  It is
  one :class:`dpfm.host.Trainer` over one transport; :meth:`Dpfm.open` picks the transport from
  ``$DPFM_BACKEND`` (``pynq`` on the board, ``verilator`` in CI, ``emulator``).

Importable without ``pynq``: the two pynq classes then fall back to stand-ins that say pynq
is missing when used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dpfm.config import Config
from dpfm.host.pynq import (BITSTREAM_ENV, BUILD_INFO, PynqTransport, build_description)
from dpfm.host.trainer import Trainer, flag_names
from dpfm.host.transport import HardwareMismatch, TransportUnavailable
from dpfm.reference import MLP

__all__ = ["Dpfm", "DpfmIP", "DpfmOverlay", "ClockMismatch", "check_fclk0", "find_bitstream",
           "sweep_configs", "VLNV", "OVERLAY_DIR", "BACKEND_ENV", "K_ENV", "SWEEP_ENV", "BACKENDS"]

#: The package folder: the overlay's files and its notebooks.
OVERLAY_DIR = Path(__file__).resolve().parent
#: The engine cell's VLNV in the hardware handoff: Vivado names a module reference
#: ``xilinx.com:module_ref:<top>:1.0`` (the top is :data:`dpfm.boards.wrapper.TOP_NAME`).
VLNV = "xilinx.com:module_ref:dpfm_top:1.0"
#: Environment variable choosing :meth:`Dpfm.open`'s transport (default ``pynq``).
BACKEND_ENV = "DPFM_BACKEND"
#: The transports :meth:`Dpfm.open` knows.
BACKENDS = ("pynq", "verilator", "emulator")
#: k of the Config simulated by the ``verilator`` and ``emulator`` backends (default 16,
#: what ``make bitstream`` builds); the board's Config is the bitstream's.
K_ENV = "DPFM_K"
#: Comma-separated ks of :func:`sweep_configs` on the simulated backends (default 4,8,16).
SWEEP_ENV = "DPFM_SWEEP_K"
#: Relative FCLK0 deviation :func:`check_fclk0` accepts (the PS PLL's dividers round).
FCLK_TOLERANCE = 0.01

try:
    import pynq as _pynq
    _DefaultIP, _Overlay = _pynq.DefaultIP, _pynq.Overlay
except ImportError as e:          # a host without PYNQ: the classes exist, using them says why
    _pynq = None
    _why = str(e)

    class _DefaultIP:
        def __init__(self, description):
            raise TransportUnavailable(f"DpfmIP needs the Python package 'pynq' ({_why}; it "
                                       f"comes with the board's PYNQ image)")

    class _Overlay:
        def __init__(self, *args, **kwargs):
            raise TransportUnavailable(f"DpfmOverlay needs the Python package 'pynq' ({_why}; "
                                       f"it comes with the board's PYNQ image)")


class ClockMismatch(HardwareMismatch):
    """FCLK0 does not run at the clock the bitstream was built for."""


def check_fclk0(info: dict, fclk0_mhz: float, *, bitfile="dpfm.bit") -> float:
    """Check ``fclk0_mhz`` (``pynq.Clocks.fclk0_mhz``) against ``dpfm.json``'s ``fclk0_hz``.

    Returns the expected clock in MHz.  :class:`ClockMismatch` naming both clocks and the
    fix when they differ by more than :data:`FCLK_TOLERANCE`.
    """
    want = float(info["fclk0_hz"]) / 1e6
    have = float(fclk0_mhz)
    if abs(have - want) > FCLK_TOLERANCE * want:
        raise ClockMismatch(
            f"FCLK0 runs at {have:.3f} MHz but {bitfile} was built for {want:.3f} MHz "
            f"({BUILD_INFO}: fclk0_hz={int(info['fclk0_hz'])}); the engine's timing closed at "
            f"that clock only.  Load the overlay with download=True (PYNQ then sets FCLK0 "
            f"from the .hwh) or set pynq.Clocks.fclk0_mhz = {want:g}")
    return want


def _bitstreams() -> list[Path]:
    env = os.environ.get(BITSTREAM_ENV)
    if env:
        return [Path(env)]
    return [p for p in [OVERLAY_DIR / "dpfm.bit", *sorted(OVERLAY_DIR.glob("*/dpfm.bit"))]
            if p.is_file()]


def find_bitstream(config: Config | None = None) -> Path:
    """The bitstream for ``config`` (the first found when None): ``$DPFM_BITSTREAM``, else
    ``dpfm.bit`` in this package's folder, else ``<folder>/*/dpfm.bit``, the one whose
    ``dpfm.json`` names ``config``.  :class:`~dpfm.host.TransportUnavailable` when none does."""
    found = _bitstreams()
    for bit in found:
        if config is None or build_description(bit)[1].hash == config.hash:
            return bit
    where = os.environ.get(BITSTREAM_ENV) or f"{OVERLAY_DIR}/dpfm.bit and {OVERLAY_DIR}/*/dpfm.bit"
    what = "no bitstream" if config is None else f"no bitstream for k={config.k} (Config 0x{config.hash:08x})"
    raise TransportUnavailable(
        f"{what} in {where} (found {len(found)}); build it with `make bitstream K=..` and "
        f"`make overlay`, or copy dpfm.bit, dpfm.hwh and dpfm.json there")


def sweep_configs() -> list[Config]:
    """The Configs a k sweep can run on: on the board (``$DPFM_BACKEND`` ``pynq``) those of
    the bitstreams :func:`find_bitstream` sees, in order of k; simulated, ``Config(k=k)`` for
    each k of ``$DPFM_SWEEP_K`` (default ``4,8,16``)."""
    if _backend() == "pynq":
        configs = {c.hash: c for c in (build_description(b)[1] for b in _bitstreams())}
        return sorted(configs.values(), key=lambda c: c.k)
    ks = os.environ.get(SWEEP_ENV, "4,8,16")
    return [Config(k=int(k)) for k in ks.split(",") if k.strip()]


def _backend(backend=None) -> str:
    backend = backend or os.environ.get(BACKEND_ENV) or "pynq"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (${BACKEND_ENV}); known: {', '.join(BACKENDS)}")
    return backend


class Dpfm:
    """A DPFM engine in a notebook: one :class:`~dpfm.host.Trainer` over one transport.

    Parameters
    ----------
    transport : dpfm.host.Transport
        How the engine is reached; its Config is the engine's.
    poll_s : float
        Run mode: seconds between two reads of RUN_STATUS.
    progress : bool
        Draw a tqdm bar (one tick per epoch) in :meth:`train` unless told otherwise.

    Members
    -------
    config, transport, trainer
        The engine's Config, its transport, the trainer that drives it.
    history : list of dpfm.reference.History
        One per :meth:`train`.
    """

    def __init__(self, transport, *, poll_s: float = 0.05, progress: bool = True):
        self.transport = transport
        self.config = transport.config
        self.trainer = Trainer(self.config, transport, poll_s=poll_s)
        self.progress = progress
        self.history = []

    @classmethod
    def open(cls, config: Config | None = None, *, backend: str | None = None, bitfile=None,
             **options) -> "Dpfm":
        """The engine on ``backend`` (default ``$DPFM_BACKEND``, else ``pynq``).

        ``pynq``: the bitstream ``bitfile`` or :func:`find_bitstream(config) <find_bitstream>`,
        loaded with :class:`DpfmOverlay` (FCLK0 checked); ``config`` defaults to the
        bitstream's.  ``verilator`` and ``emulator``: ``config`` defaults to
        ``Config(k=$DPFM_K)`` (16 when unset).  ``options`` go to :class:`Dpfm`.
        """
        backend = _backend(backend)
        if backend == "pynq":
            overlay = DpfmOverlay(bitfile if bitfile is not None else find_bitstream(config))
            if config is not None and overlay.config.hash != config.hash:
                raise HardwareMismatch(f"{overlay.bitfile_name} holds k={overlay.config.k}, "
                                       f"not the requested k={config.k}")
            return overlay.engine(**options)
        if config is None:
            config = Config(k=int(os.environ.get(K_ENV, 16)))
        if backend == "verilator":
            from dpfm.host.verilator import VerilatorTransport

            return cls(VerilatorTransport(config), **options)
        from dpfm.host.emulator import EmulatorTransport

        return cls(EmulatorTransport(config), **options)

    @property
    def backend(self) -> str:
        return self.transport.name

    # -- weights ---------------------------------------------------------------------------
    def load_weights(self, source=None, *, seed: int = 0) -> int:
        """Write the parameters: an :class:`~dpfm.reference.MLP`, a float array in the public
        order, or (None) the reference's initialisation for ``seed``.  Returns the clamps of
        the quantisation."""
        if source is None:
            source = MLP(self.config.net, self.config.activations, seed=seed)
        return self.trainer.load_weights(source)

    def weights(self) -> np.ndarray:
        """The engine's parameters as floats (public order)."""
        return self.trainer.weights()

    # -- training --------------------------------------------------------------------------
    def train(self, X, y, epochs: int, *, lr: float = 0.01, update: str = "maxnorm",
              validation=None, seed: int = 0, mode: str = "run", progress: bool | None = None,
              **fit_options):
        """Train ``epochs`` epochs from the weights in the engine (in run mode unless ``mode``
        says otherwise: the engine trains them all by itself, the host polls); returns the
        :class:`~dpfm.reference.History`, also appended to :attr:`history`."""
        from tqdm import tqdm

        show = self.progress if progress is None else progress
        bar = tqdm(total=int(epochs), unit="epoch", disable=not show,
                   desc=f"{self.backend} k={self.config.k}")

        def tick(epoch, hist):
            bar.update(1)
            bar.set_postfix(loss=f"{hist.train_loss[-1]:.4g}", refresh=False)

        try:
            hist = self.trainer.fit(X, y, epochs=epochs, lr=lr, update=update,
                                    validation=validation, seed=seed, progress=tick, mode=mode,
                                    **fit_options)
        finally:
            bar.close()
        self.history.append(hist)
        return hist

    def evaluate(self, X, y, *, classify: bool = False):
        """MSE over ``X, y`` from forward-only passes (``(loss, accuracy)`` with classify)."""
        return self.trainer.evaluate(X, y, classify=classify)

    def loss_log(self) -> dict:
        """Every epoch trained so far: ``epoch`` (1, 2, ...), ``train`` and ``val`` losses as
        numpy arrays (``val`` NaN where an epoch had no validation set)."""
        train, val = [], []
        for h in self.history:
            train += list(h.train_loss)
            val += list(h.val_loss) if h.val_loss else [np.nan] * len(h.train_loss)
        return {"epoch": np.arange(1, len(train) + 1), "train": np.asarray(train, dtype=float),
                "val": np.asarray(val, dtype=float)}

    # -- status ----------------------------------------------------------------------------
    def flags(self) -> dict:
        """The engine's sticky FLAGS now (name -> bool), and the trainer's saturation counts
        (training steps that raised each flag) under ``saturations``."""
        from dpfm.rtl.regmap import FLAGS

        value = self.transport.read(self.transport.regmap["FLAGS"].offset)
        raised = set(flag_names(value))
        return {**{name: name in raised for name in FLAGS},
                "saturations": dict(self.trainer.saturations)}

    def counters(self) -> dict:
        """Cycle counters: the engine's registers now (``cycles``, ``mul_busy`` and
        ``merge_busy`` of the last training step, ``run_cycles`` of the last run), and the
        trainer's totals over every training step so far (``steps``, ``cycles_per_step``,
        ``min``, ``max``, busy shares)."""
        names = ("CYCLES", "MUL_BUSY", "MERGE_BUSY", "RUN_CYCLES_LO", "RUN_CYCLES_HI")
        m = self.transport.regmap
        cycles, mul, merge, lo, hi = self.transport.read_many([m[n].offset for n in names])
        stats = self.trainer.cycle_stats.to_dict()
        return {"cycles": cycles, "mul_busy": mul, "merge_busy": merge,
                "run_cycles": hi << 32 | lo, "cycles_per_step": stats.pop("mean"), **stats}

    @property
    def bus_accesses(self) -> int:
        """Register accesses the transport made so far."""
        return self.transport.bus_accesses

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<Dpfm {self.backend} k={self.config.k} net={'-'.join(map(str, self.config.net))}>"


class DpfmIP(_DefaultIP):
    """``overlay.dpfm``: PYNQ's driver for the engine cell, bound by its VLNV.

    :meth:`engine` opens a :class:`Dpfm` over this IP's MMIO window; the Config comes from
    ``dpfm.json`` beside the loaded bitstream (``pynq.PL.bitfile_name``).
    """

    bindto = [VLNV]

    def engine(self, bitfile=None, **options) -> Dpfm:
        bitfile = bitfile if bitfile is not None else _pynq.PL.bitfile_name
        _, config = build_description(bitfile)
        return Dpfm(PynqTransport(config, bitfile, mmio=self.mmio), **options)


class DpfmOverlay(_Overlay):
    """``pynq.Overlay`` of the engine's bitstream, FCLK0 checked after loading.

    Parameters
    ----------
    bitfile : path, optional
        Default :func:`find_bitstream`.
    download : bool
        Program the fabric (PYNQ also sets FCLK0 from the ``.hwh``).
    check_clock : bool
        Compare ``pynq.Clocks.fclk0_mhz`` with ``dpfm.json`` (:class:`ClockMismatch`).

    Members
    -------
    info, config
        ``dpfm.json`` and its Config.
    """

    def __init__(self, bitfile=None, *, download: bool = True, check_clock: bool = True, **kwargs):
        if _pynq is None:
            _Overlay.__init__(self)         # says that pynq is missing
        bitfile = Path(bitfile) if bitfile is not None else find_bitstream()
        super().__init__(str(bitfile), download=download, **kwargs)
        self.info, self.config = build_description(bitfile)
        self.dpfm_bitfile = bitfile
        if check_clock:
            check_fclk0(self.info, _pynq.Clocks.fclk0_mhz, bitfile=bitfile)

    def engine(self, **options) -> Dpfm:
        """A :class:`Dpfm` over this overlay (nothing is downloaded again)."""
        return Dpfm(PynqTransport(self.config, self.dpfm_bitfile, overlay=self), **options)
