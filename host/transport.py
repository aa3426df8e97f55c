"""The one interface every way of reaching the engine's AXI4-Lite bus implements.

A :class:`Transport` reads and writes 32-bit words at byte offsets of the engine's register
map (:func:`dpfm.rtl.regmap.register_map`).  Everything above it (register programming,
sample streaming, readback, the training loop) lives once, in :class:`dpfm.host.Trainer`.
The transports are the fixed-point reference model of the bus
(:class:`~dpfm.host.emulator.EmulatorTransport`), the compiled Verilator model
(:class:`~dpfm.host.verilator.VerilatorTransport`) and the board
(:class:`~dpfm.host.pynq.PynqTransport`).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence

import numpy as np

from dpfm.rtl.protocol import START_WORD
from dpfm.rtl.regmap import STATUS, STATUS_ERROR_SHIFT, Resp, register_map

__all__ = ["Transport", "RunBuffer", "TransportError", "BusError", "TransportTimeout", "TransportUnavailable",
           "HardwareMismatch",
           "BUSY_MASK", "READY_MASK", "sign_extend"]

#: STATUS bits that say a step is running.
BUSY_MASK = 1 << STATUS["busy"]
#: STATUS bits of which one is set when a started step has ended: done, or an error code.
READY_MASK = (1 << STATUS["done"]) | (0xFF << STATUS_ERROR_SHIFT)


class TransportError(RuntimeError):
    """Base of the errors a transport raises."""


class BusError(TransportError):
    """The engine answered an access with an error response (SLVERR or DECERR).

    Members
    -------
    addr : int or None
        Byte offset of the access (None when only the engine's ``bus_error`` flag tells).
    resp : int or None
        AXI response code; None when the access was answered OKAY and refused all the same
        (the board build, see :class:`dpfm.rtl.engine.Engine`), known from FLAGS.bus_error
        and ERR_ADDR.
    write : bool
        True for a write.
    """

    def __init__(self, addr: int | None, resp: int, *, write: bool, name: str | None = None):
        self.addr, self.resp, self.write = addr, resp, write
        if addr is None:            # known only from the engine's sticky bus_error flag
            what = name or "an access"
        else:
            what = f"{'write to' if write else 'read of'} 0x{addr:05x}" + (f" ({name})" if name else "")
        how = ("was refused (the engine's FLAGS.bus_error and ERR_ADDR)" if resp is None
               else f"answered {_resp_name(resp)}")
        super().__init__(f"{what} {how}")


def sign_extend(word: int, bits: int) -> int:
    """The low ``bits`` of ``word`` as a two's complement integer."""
    word &= (1 << bits) - 1
    return word - (1 << bits) if word >> (bits - 1) else word


def _resp_name(resp) -> str:
    try:
        return Resp(resp).name
    except ValueError:
        return str(resp)


class TransportTimeout(TransportError):
    """The engine did not finish (or the bus did not answer) in time."""


class TransportUnavailable(TransportError, ValueError):
    """The transport cannot be opened here; the message names exactly what is missing.

    A ValueError too, so command lines report it as a bad request (one line, exit code 2).
    """


class HardwareMismatch(TransportError, ValueError):
    """The engine reached is not the one the Config describes (the message names the expected
    and the found identity).  A ValueError too, as :class:`TransportUnavailable`."""


class RunBuffer:
    """Memory the engine reads and writes over its AXI4 master in run mode.

    Members
    -------
    words : numpy.ndarray
        The buffer as uint32 words (writable; the host's view of it).
    address : int
        Bus address of ``words[0]`` as the engine's master sees it (a multiple of 4096).

    A transport returns a subclass from :meth:`Transport.allocate`; this base keeps a plain
    numpy array, for models whose memory is the host's own.
    """

    def __init__(self, words: np.ndarray, address: int):
        self.words = words
        self.address = int(address)

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)

    def flush(self) -> None:
        """Make the host's writes visible to the engine (the board flushes its data cache)."""

    def invalidate(self) -> None:
        """Make the engine's writes visible to the host (the board invalidates its cache)."""

    def close(self) -> None:
        """Release the memory; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Transport(abc.ABC):
    """32-bit register access to one engine.

    Parameters
    ----------
    config : dpfm.config.Config
        The configuration the caller expects the engine to be built for; it fixes the register
        map the transport's helpers use.  Whether the engine really is that one is checked by
        :class:`dpfm.host.Trainer` (ID and CONFIG_HASH registers), not here.

    Members
    -------
    config, regmap
        The configuration and its :class:`~dpfm.rtl.regmap.RegisterMap`.
    name : str
        Short name of the transport (``fixed``, ``verilator``, ``pynq``).
    reports_bus_errors : bool
        True when :meth:`write` and :meth:`read` see the bus response and raise
        :class:`BusError`.  A memory-mapped board access cannot (the CPU gets no response
        code); the trainer then relies on the engine's sticky ``bus_error`` flag.
    counts_cycles : bool
        True when the engine's CYCLES, MUL_BUSY and MERGE_BUSY registers count clock cycles.
    supports_run : bool
        True when the engine behind it has run mode (an AXI4 master reaching memory the host
        can :meth:`allocate`); :class:`dpfm.host.Trainer` then trains whole runs with it.
    bus_accesses : int
        32-bit register accesses made so far (reads and writes, STATUS polls included),
        counted by every transport the same way.
    """

    name = "abstract"
    reports_bus_errors = True
    counts_cycles = True
    supports_run = False

    def __init__(self, config):
        self.config = config
        self.regmap = register_map(config)
        self._closed = False
        self._bus_accesses = 0

    @property
    def bus_accesses(self) -> int:
        """32-bit register accesses made so far (see the class docstring)."""
        return self._bus_accesses

    @bus_accesses.setter
    def bus_accesses(self, value: int) -> None:
        self._bus_accesses = int(value)

    # -- the two primitives --------------------------------------------------------------
    @abc.abstractmethod
    def read(self, addr: int) -> int:
        """The 32-bit word at byte offset ``addr`` (unsigned); :class:`BusError` on an error
        response."""

    @abc.abstractmethod
    def write(self, addr: int, value: int) -> None:
        """Write the low 32 bits of ``value`` at byte offset ``addr``; :class:`BusError` on an
        error response."""

    # -- helpers a transport may speed up --------------------------------------------------
    def write_many(self, addrs: Sequence[int], values: Sequence[int]) -> None:
        """Write ``values[i]`` at ``addrs[i]`` in order; stops at the first error."""
        for addr, value in zip(addrs, values, strict=True):
            self.write(int(addr), int(value))

    def read_many(self, addrs: Sequence[int]) -> list[int]:
        """Read every address in order."""
        return [self.read(int(addr)) for addr in addrs]

    def wait_idle(self, timeout: float = 30.0, *, ready_mask: int = 0) -> int:
        """Poll STATUS until busy is clear (and, unless ``ready_mask`` is 0, one of its bits
        is set); returns STATUS.  :class:`TransportTimeout` after ``timeout`` seconds."""
        addr = self.regmap["STATUS"].offset
        deadline = time.monotonic() + timeout
        while True:
            status = self.read(addr)
            if not status & BUSY_MASK and (ready_mask == 0 or status & ready_mask):
                return status
            if time.monotonic() > deadline:
                raise TransportTimeout(f"{self.name}: engine still busy after {timeout} s "
                                       f"(STATUS=0x{status:08x})")

    def run_step(self, timeout: float = 30.0) -> int:
        """Start a step (CTRL.start) and wait until it has ended; returns STATUS.

        The step has ended when busy is clear and done or an error code is set.
        """
        self.write(self.regmap["CTRL"].offset, START_WORD)
        return self.wait_idle(timeout, ready_mask=READY_MASK)

    # -- run mode ----------------------------------------------------------------------------
    def allocate(self, nwords: int) -> RunBuffer:
        """A buffer of ``nwords`` uint32 words that the engine's AXI4 master reaches, at an
        address that is a multiple of 4096.  :class:`TransportUnavailable` when the transport
        has no run mode or the memory cannot be had."""
        raise TransportUnavailable(f"{self.name}: this transport has no run mode")

    def advance_run(self, poll_s: float = 0.2) -> None:
        """Let a started run go on for about ``poll_s`` seconds, without a bus access (the
        board waits; a model simulates)."""
        time.sleep(poll_s)

    def poll_run(self, poll_s: float = 0.2) -> int:
        """:meth:`advance_run`, then read RUN_STATUS once and return it."""
        self.advance_run(poll_s)
        return self.read(self.regmap["RUN_STATUS"].offset)

    def reset(self) -> None:
        """Return the engine to its state after power-up, where the transport can."""

    @property
    def total_cycles(self) -> int | None:
        """Clock cycles simulated so far (bus traffic included), where known."""
        return None

    def close(self) -> None:
        """Release the connection; idempotent."""
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return f"<{type(self).__name__} k={self.config.k} net={self.config.net} hash=0x{self.config.hash:08x}>"
