"""``PynqTransport``: the engine on a PYNQ-Z2, through ``pynq.Overlay`` and MMIO.

The board flow (:mod:`dpfm.boards.build`) leaves three files side by side: ``dpfm.bit`` (the
bitstream), ``dpfm.hwh`` (the Vivado hardware handoff ``pynq.Overlay`` needs to load it and
to set the fabric clock FCLK0) and ``dpfm.json`` (the Config and the engine's base address).
This transport loads the overlay, finds the engine's AXI4-Lite window in ``overlay.ip_dict``
(``phys_addr``, ``addr_range`` of the ``dpfm`` cell; ``dpfm.json``'s ``base_address`` when the
handoff does not list it) and reads and writes words there with ``pynq.MMIO``.

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

from .transport import HardwareMismatch, Transport, TransportUnavailable

__all__ = ["PynqTransport", "default_bitstream", "BITSTREAM_ENV", "BUILD_INFO"]

#: Environment variable naming the bitstream when none is given.
BITSTREAM_ENV = "DPFM_BITSTREAM"
#: The file next to the bitstream that describes it.
BUILD_INFO = "dpfm.json"


def default_bitstream() -> Path:
    """``$DPFM_BITSTREAM``, else ``dpfm.bit`` of the board flow's default output folder
    (``build/pynq-z2``)."""
    env = os.environ.get(BITSTREAM_ENV)
    if env:
        return Path(env)
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
    from dpfm.config import Config

    info_path = bitfile.parent / BUILD_INFO
    try:
        info = json.loads(info_path.read_text())
        built = Config.from_dict(info["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TransportUnavailable(f"{info_path} is not a readable DPFM build description: {e}") from None
    if built.hash != config.hash:
        raise HardwareMismatch(
            f"{bitfile} was built for Config 0x{built.hash:08x} (k={built.k}, "
            f"net={'-'.join(map(str, built.net))}, batch={built.batch}), but the request is "
            f"0x{config.hash:08x} (k={config.k}, net={'-'.join(map(str, config.net))}, "
            f"batch={config.batch}); rebuild with `make bitstream` for this Config")
    return bitfile, info


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

    Raises
    ------
    TransportUnavailable, HardwareMismatch
        See :func:`check_available`.
    """

    name = "pynq"
    reports_bus_errors = False

    def __init__(self, config, bitfile=None, *, download: bool = True):
        super().__init__(config)
        self.bitfile, self.info = check_available(config, bitfile)
        import pynq

        self.overlay = pynq.Overlay(str(self.bitfile), download=download)
        ip_name = self.info.get("ip_name", "dpfm")
        ips = getattr(self.overlay, "ip_dict", {}) or {}
        ip = ips.get(ip_name) or next((v for k, v in ips.items() if "dpfm" in k.lower()), None)
        if ip is not None:
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
        self.mmio = pynq.MMIO(self.base, self.regmap.size)

    def read(self, addr: int) -> int:
        return int(self.mmio.read(int(addr))) & 0xFFFFFFFF

    def write(self, addr: int, value: int) -> None:
        self.mmio.write(int(addr), int(value) & 0xFFFFFFFF)

    def close(self) -> None:
        self.mmio = None
        super().close()
