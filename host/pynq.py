"""``PynqTransport``: the engine on a PYNQ-Z2, through ``pynq.Overlay`` and MMIO.

The board flow (:mod:`dpfm.boards.build`) leaves three files side by side: ``dpfm.bit`` (the
bitstream), ``dpfm.hwh`` (the Vivado hardware handoff ``pynq.Overlay`` needs to load it and
to set the fabric clock FCLK0) and ``dpfm.json`` (the Config and the engine's base address).
This transport loads the overlay, finds the engine's AXI4-Lite window in ``overlay.ip_dict``
(``phys_addr``, ``addr_range`` of the ``dpfm`` cell; ``dpfm.json``'s ``base_address`` when the
handoff does not list it) and reads and writes words there with ``pynq.MMIO``: one word per
:meth:`~PynqTransport.read`/:meth:`~PynqTransport.write`, and one slice of the MMIO's numpy
view ``mmio.array`` per run of consecutive addresses in
:meth:`~PynqTransport.write_many`/:meth:`~PynqTransport.read_many` (a window of samples or
weights, a block of run registers), instead of a Python call per word.
:attr:`~dpfm.host.Transport.bus_accesses` counts 32-bit words either way.

Run mode (``dpfm.json`` has ``run_mode``: the bitstream's engine has the AXI4 master on
``S_AXI_HP0``): :meth:`~PynqTransport.allocate` takes the run buffer from ``pynq.allocate``
(contiguous memory of the kernel's CMA pool), whose physical address is the engine master's
bus address; the buffer must lie in the DDR window the block design maps (``run_mode``'s
``memory_base``/``memory_range``) and start at a multiple of 4096.  The CPU's caches are not
coherent with HP0: :meth:`PynqRunBuffer.flush` after the host writes the buffer,
:meth:`PynqRunBuffer.invalidate` before it reads what the engine wrote.

``pynq`` is imported only when this transport is opened; it exists on the board's PYNQ image.
An MMIO access gets no AXI response code back, and an error response would not come back
as one either: a Zynq CPU takes SLVERR/DECERR to a load or store as an external abort, and
the process dies of SIGBUS.  So the board's engine (:func:`dpfm.boards.build.board_engine`)
answers every access OKAY, and :attr:`reports_bus_errors` is False: a refused access shows up
in the engine's sticky FLAGS.bus_error and in ERR_ADDR, which the trainer reads after every
step and turns into a :class:`~dpfm.host.BusError` naming the access.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dpfm.rtl.protocol import RUN_ALIGN

from .transport import HardwareMismatch, RunBuffer, Transport, TransportUnavailable

__all__ = ["PynqTransport", "PynqRunBuffer", "default_bitstream", "build_description",
           "BITSTREAM_ENV", "BUILD_INFO"]

#: Environment variable naming the bitstream when none is given.
BITSTREAM_ENV = "DPFM_BITSTREAM"
#: The file next to the bitstream that describes it.
BUILD_INFO = "dpfm.json"


def default_bitstream() -> Path:
    """``$DPFM_BITSTREAM``, else ``dpfm.bit`` of the installed overlay package
    (:mod:`dpfm.overlay`, where ``make overlay`` puts it and the wheel carries it) when there
    is one, else of the board flow's default output folder (``build/pynq-z2``)."""
    env = os.environ.get(BITSTREAM_ENV)
    if env:
        return Path(env)
    import dpfm

    packaged = Path(dpfm.__file__).resolve().parent / "overlay" / "dpfm.bit"
    if packaged.is_file():
        return packaged
    from dpfm.toolchain import build_root

    return build_root() / "pynq-z2" / "dpfm.bit"


def _missing_files(bitfile: Path) -> list[str]:
    missing = []
    if not bitfile.is_file():
        missing.append(f"the bitstream {bitfile}")
    hwh = bitfile.with_suffix(".hwh")
    if not hwh.is_file():
        missing.append(f"its hardware handoff {hwh} (pynq.Overlay needs the .hwh next to the .bit)")
    info = bitfile.parent / BUILD_INFO
    if not info.is_file():
        missing.append(f"its build description {info}")
    return missing


def check_available(config, bitfile=None) -> tuple[Path, dict]:
    """What :class:`PynqTransport` needs, checked without touching the board.

    Returns ``(bitstream path, dpfm.json contents)``.

    Raises
    ------
    TransportUnavailable
        Naming every missing piece: the ``pynq`` package, the bitstream, the ``.hwh``,
        ``dpfm.json``.
    HardwareMismatch
        When ``dpfm.json`` says the bitstream was built for another Config.
    """
    bitfile = Path(bitfile) if bitfile is not None else default_bitstream()
    missing = []
    try:
        import pynq  # noqa: F401
    except ImportError as e:
        missing.append(f"the Python package 'pynq' ({e}; it comes with the board's PYNQ image)")
    files = _missing_files(bitfile)
    if missing or files:
        hint = ("; build them with `make bitstream` (needs Vivado), copy dpfm.bit, dpfm.hwh and "
                f"dpfm.json to the board, or name the bitstream with ${BITSTREAM_ENV}") if files else ""
        raise TransportUnavailable("the pynq backend cannot run here: missing "
                                   + "; ".join(missing + files) + hint)
    info, built = build_description(bitfile)
    if built.hash != config.hash:
        raise HardwareMismatch(
            f"{bitfile} was built for Config 0x{built.hash:08x} (k={built.k}, "
            f"net={'-'.join(map(str, built.net))}, batch={built.batch}), but the request is "
            f"0x{config.hash:08x} (k={config.k}, net={'-'.join(map(str, config.net))}, "
            f"batch={config.batch}); rebuild with `make bitstream` for this Config")
    return bitfile, info


def build_description(bitfile) -> tuple[dict, "Config"]:
    """``dpfm.json`` next to ``bitfile``: its contents and the Config it names.

    Raises
    ------
    TransportUnavailable
        When the file is missing or not a DPFM build description.
    """
    from dpfm.config import Config

    info_path = Path(bitfile).parent / BUILD_INFO
    try:
        info = json.loads(info_path.read_text())
        return info, Config.from_dict(info["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TransportUnavailable(f"{info_path} is not a readable DPFM build description: {e}") from None


def _runs(addrs) -> list[tuple[int, int, int]]:
    """``(first word index, position in addrs, length)`` of each run of consecutive words."""
    runs = []
    for i, addr in enumerate(addrs):
        word = int(addr) >> 2
        if runs and word == runs[-1][0] + runs[-1][2]:
            start, at, n = runs[-1]
            runs[-1] = (start, at, n + 1)
        else:
            runs.append((word, i, 1))
    return runs


class PynqRunBuffer(RunBuffer):
    """A run buffer from ``pynq.allocate``: ``words`` is the pynq buffer itself (a numpy
    uint32 array over CMA memory), ``address`` its physical address.

    :meth:`flush` and :meth:`invalidate` are the buffer's own (cache maintenance over its whole
    length); :meth:`close` frees it (``freebuffer``) once.
    """

    def __init__(self, buffer, address: int):
        super().__init__(buffer, address)
        self._buffer = buffer

    def flush(self) -> None:
        self._live().flush()

    def invalidate(self) -> None:
        self._live().invalidate()

    def close(self) -> None:
        buffer, self._buffer = self._buffer, None
        if buffer is not None:
            buffer.freebuffer()

    @property
    def closed(self) -> bool:
        return self._buffer is None

    def _live(self):
        if self._buffer is None:
            raise ValueError("the run buffer is closed")
        return self._buffer


def _physical_address(buffer) -> int:
    """The bus address of a pynq buffer: ``physical_address`` (PYNQ 2.x and 3.x; in 3.x an
    alias of ``device_address``), else ``device_address``."""
    for name in ("physical_address", "device_address"):
        value = getattr(buffer, name, None)
        if value is not None:
            return int(value)
    raise TransportUnavailable(f"pynq.allocate returned {type(buffer).__name__}, which has no "
                               f"physical_address or device_address")


class PynqTransport(Transport):
    """The engine in the PYNQ-Z2's programmable logic.

    Parameters
    ----------
    config : dpfm.config.Config
        The engine expected (``dpfm.json`` must name the same Config).
    bitfile : path, optional
        ``dpfm.bit``; default :func:`default_bitstream`.
    download : bool
        Program the fabric (default True; False attaches to an overlay already loaded).
    overlay : pynq.Overlay, optional
        An overlay of ``bitfile`` already loaded (:class:`dpfm.overlay.DpfmOverlay`): its
        ``ip_dict`` is used, nothing is downloaded.
    mmio : pynq.MMIO, optional
        The engine's register window already mapped (the ``mmio`` of the IP driver
        :class:`dpfm.overlay.DpfmIP`); then neither an overlay nor ``ip_dict`` is consulted.

    Members
    -------
    supports_run : bool
        True when ``dpfm.json`` describes run mode's memory path (``run_mode``; bitstreams
        built before run mode have none, and their engine no RUN_* registers) and ``pynq``
        has ``allocate`` (PYNQ 2.5 and later).
    memory_window : (int, int) or None
        ``[start, end)`` of the bus addresses the engine's master reaches (the DDR through
        ``S_AXI_HP0``), from ``dpfm.json``.

    Raises
    ------
    TransportUnavailable, HardwareMismatch
        See :func:`check_available`.
    """

    name = "pynq"
    #: A board build may have run mode; whether this one has is known once it is opened.
    supports_run = True
    reports_bus_errors = False

    def __init__(self, config, bitfile=None, *, download: bool = True, overlay=None, mmio=None):
        super().__init__(config)
        self.bitfile, self.info = check_available(config, bitfile)
        import pynq

        self._pynq = pynq
        if mmio is None and overlay is None:
            overlay = pynq.Overlay(str(self.bitfile), download=download)
        self.overlay = overlay
        ip_name = self.info.get("ip_name", "dpfm")
        ips = {} if mmio is not None else getattr(overlay, "ip_dict", {}) or {}
        ip = ips.get(ip_name) or next((v for k, v in ips.items() if "dpfm" in k.lower()), None)
        if mmio is not None:
            self.base = int(mmio.base_addr)
            size = int(getattr(mmio, "length", self.regmap.size))
        elif ip is not None:
            self.base = int(ip["phys_addr"])
            size = int(ip.get("addr_range") or self.regmap.size)
        elif "base_address" in self.info:
            self.base = int(self.info["base_address"])
            size = int(self.info.get("address_range", self.regmap.size))
        else:
            raise TransportUnavailable(f"{self.bitfile}: the overlay lists no {ip_name!r} IP "
                                       f"(found: {', '.join(ips) or 'none'}) and {BUILD_INFO} "
                                       f"has no base_address")
        if size < self.regmap.size:
            raise HardwareMismatch(f"the engine's window at 0x{self.base:08x} spans {size:#x} "
                                   f"bytes; the register map needs {self.regmap.size:#x}")
        self.mmio = mmio if mmio is not None else pynq.MMIO(self.base, self.regmap.size)
        # pynq.MMIO's numpy view of the window (every pynq since 2.0 has it); a stand-in
        # without one gets a Python call per word.
        self._array = getattr(self.mmio, "array", None)
        run = self.info.get("run_mode")
        if run:
            start = int(run["memory_base"])
            self.memory_window = (start, start + int(run["memory_range"]))
        else:
            self.memory_window = None
        # Run mode needs the bitstream's master (dpfm.json) and pynq.allocate (PYNQ >= 2.5).
        self.supports_run = self.memory_window is not None and hasattr(pynq, "allocate")

    # -- registers ---------------------------------------------------------------------------
    def read(self, addr: int) -> int:
        self.bus_accesses += 1
        return int(self.mmio.read(int(addr))) & 0xFFFFFFFF

    def write(self, addr: int, value: int) -> None:
        self.bus_accesses += 1
        self.mmio.write(int(addr), int(value) & 0xFFFFFFFF)

    def write_many(self, addrs, values) -> None:
        """Each run of consecutive addresses as one slice assignment to ``mmio.array``, in order."""
        if self._array is None:
            return super().write_many(addrs, values)
        addrs = [int(a) for a in addrs]
        words = np.asarray([int(v) & 0xFFFFFFFF for v in values], dtype=np.uint32)
        if len(words) != len(addrs):
            raise ValueError(f"{len(addrs)} addresses but {len(words)} values")
        self._check_aligned(addrs)
        for start, at, n in _runs(addrs):
            self.bus_accesses += n
            self._array[start:start + n] = words[at:at + n]

    def read_many(self, addrs) -> list[int]:
        """Each run of consecutive addresses as one slice of ``mmio.array``, in order."""
        if self._array is None:
            return super().read_many(addrs)
        addrs = [int(a) for a in addrs]
        self._check_aligned(addrs)
        out = []
        for start, _, n in _runs(addrs):
            self.bus_accesses += n
            out += np.array(self._array[start:start + n], dtype=np.uint32).tolist()
        return out

    def _check_aligned(self, addrs) -> None:
        bad = [a for a in addrs if a % 4 or not 0 <= a < self.regmap.size]
        if bad:
            raise ValueError(f"byte offset 0x{bad[0]:x} is not a word of the engine's "
                             f"{self.regmap.size:#x}-byte window")

    # -- run mode ----------------------------------------------------------------------------
    def allocate(self, nwords: int) -> PynqRunBuffer:
        """``nwords`` uint32 words from ``pynq.allocate`` (CMA memory), checked to be where the
        engine's master can reach them: a physical address that is a multiple of 4096, and
        the whole buffer inside the DDR window of ``dpfm.json`` (below 4 GiB).

        Raises
        ------
        TransportUnavailable
            Without run mode, when the memory cannot be had (CMA too small or fragmented), or
            when the buffer lies where the engine cannot use it (the buffer is freed).
        """
        if self.memory_window is None:
            raise TransportUnavailable(
                f"{self.bitfile} was built without run mode ({BUILD_INFO} has no run_mode: no "
                f"AXI4 master on S_AXI_HP0); rebuild it with `make bitstream`")
        if not self.supports_run:
            raise TransportUnavailable("this pynq has no pynq.allocate (PYNQ 2.5 or later has it)")
        nwords = int(nwords)
        if nwords < 1:
            raise ValueError(f"a run buffer needs at least one word, not {nwords}")
        nbytes = 4 * nwords
        try:
            buffer = self._pynq.allocate(shape=(nwords,), dtype=np.uint32)
        except (RuntimeError, MemoryError, OSError, ValueError) as e:
            raise TransportUnavailable(
                f"pynq.allocate could not give a run buffer of {nbytes} bytes "
                f"({nbytes / (1 << 20):.1f} MiB): {e}; it comes from the kernel's contiguous "
                f"memory (CMA), see docs/board.md 'Troubleshooting'") from None
        address = _physical_address(buffer)
        start, end = self.memory_window
        if address % RUN_ALIGN:
            problem = f"does not start at a multiple of {RUN_ALIGN} bytes"
        elif address + nbytes > 1 << 32:
            problem = "ends above 4 GiB, past the master's 32-bit addresses"
        elif not start <= address <= end - nbytes:
            problem = f"is not inside the DDR the engine's master reaches (0x{start:x}..0x{end:x})"
        else:
            return PynqRunBuffer(buffer, address)
        buffer.freebuffer()
        raise TransportUnavailable(
            f"the run buffer pynq.allocate gave, physical 0x{address:x}..0x{address + nbytes:x}, "
            f"{problem}; the engine cannot use it")

    def close(self) -> None:
        self.mmio = None
        self._array = None
        super().close()
