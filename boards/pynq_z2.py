"""TUL PYNQ-Z2: the Amaranth platform, and the Zynq processing system as this board wires it.

Two views of one board:

* :class:`PynqZ2Platform`: an Amaranth ``XilinxPlatform`` of the programmable-logic pins (125 MHz
  oscillator, LEDs, RGB LEDs, buttons, switches, Pmod JA/JB, Arduino header), in the style of
  amaranth-boards (which has no PYNQ-Z2; its ``arty_z7`` is the same XC7Z020-1CLG400C and most
  pins agree). Pin numbers are the ones in the board's schematic and in the PYNQ project's
  base-overlay constraints.
* :data:`PS7_SETTINGS`: the ``processing_system7`` configuration of the PYNQ-Z2 (50 MHz PS
  crystal, 512 MiB DDR3 on a 16-bit bus, the MIO map of UART0, SD0, USB0, Ethernet, QSPI) with
  FCLK_CLK0 at :data:`FCLK0_HZ`, the general-purpose AXI master GP0 and the high-performance
  AXI slave HP0 on. It is set explicitly, property by property, so a Vivado without the board
  files installed builds the same design.

The DPFM engine sits on GP0 at :data:`ENGINE_BASE`; the host reaches it there. In run mode the
engine's AXI4 master reads and writes DDR through HP0, whose window :data:`HP0_DDR` is the whole
512 MiB of the board's DDR at the same addresses the CPU uses (``pynq.allocate`` buffers'
physical addresses).
"""

from __future__ import annotations

import os
import subprocess

from amaranth.build import Attrs, Clock, Connector, Pins, Resource
from amaranth.vendor import XilinxPlatform
from amaranth_boards.resources import ButtonResources, LEDResources, RGBLEDResource, SwitchResources

__all__ = ["PynqZ2Platform", "PS7_SETTINGS", "FCLK0_HZ", "ENGINE_BASE", "GP0_WINDOW", "HP0_DDR",
           "HP0_DATA_WIDTH", "vivado_part"]

# FCLK_CLK0, the engine's clock: IO PLL 1000 MHz / 5 / 2, exactly 100 MHz.
FCLK0_HZ = 100_000_000

# The engine's AXI4-Lite window on M_AXI_GP0. GP0 decodes 0x4000_0000..0x7FFF_FFFF; PYNQ's own
# overlays start their peripherals at 0x4000_0000 as well.
ENGINE_BASE = 0x4000_0000
GP0_WINDOW = (0x4000_0000, 0x8000_0000)

# The DDR as the engine's AXI4 master sees it through S_AXI_HP0: (base, size) of the
# HP0_DDR_LOWOCM segment in the master's address space. The PYNQ-Z2 has 512 MiB of DDR3 at
# physical 0x0000_0000; HP0 reaches it at the same addresses (no offset), so a buffer's
# physical address is its bus address.
HP0_DDR = (0x0000_0000, 0x2000_0000)

# S_AXI_HP0's data width. 32, the engine's own width: the interconnect between them then only
# converts the protocol (AXI4 bursts of up to 256 beats into AXI3 bursts of 16) and needs no
# width converter; the HP port packs 32-bit beats into its 64-bit path to DDR itself. 32 bits
# at 100 MHz is 400 MB/s, far more than the engine reads (a batch of sample rows per step,
# fetched while the previous step computes); 64 would only add an upsizer in the fabric.
HP0_DATA_WIDTH = 32


def vivado_part(platform) -> str:
    """Vivado's part name of an Amaranth Xilinx platform, e.g. ``xc7z020clg400-1``."""
    return f"{platform.device}{platform.package}-{platform.speed}"


class PynqZ2Platform(XilinxPlatform):
    """TUL PYNQ-Z2 (Zynq XC7Z020-1CLG400C), programmable-logic pins.

    Every user pin is in a 3.3 V bank (LVCMOS33). The Pmod connectors follow the amaranth-boards
    convention of 12 pins with ``-`` for the power and ground pins, so ``pmod 0`` pin 1 is JA1.
    The PS side (DDR, MIO, UART over USB) has no pins here: see :data:`PS7_SETTINGS`.
    """

    device = "xc7z020"
    package = "clg400"
    speed = "1"
    default_clk = "clk125"

    resources = [
        # 125 MHz from the Ethernet PHY's clock output.
        Resource("clk125", 0, Pins("H16", dir="i"), Clock(125e6), Attrs(IOSTANDARD="LVCMOS33")),

        *LEDResources(pins="R14 P14 N16 M14", attrs=Attrs(IOSTANDARD="LVCMOS33")),       # LD0..LD3
        RGBLEDResource(0, r="N15", g="G17", b="L15", attrs=Attrs(IOSTANDARD="LVCMOS33")),  # LD4
        RGBLEDResource(1, r="M15", g="L14", b="G14", attrs=Attrs(IOSTANDARD="LVCMOS33")),  # LD5
        *ButtonResources(pins="D19 D20 L20 L19", attrs=Attrs(IOSTANDARD="LVCMOS33")),    # BTN0..BTN3
        *SwitchResources(pins="M20 M19", attrs=Attrs(IOSTANDARD="LVCMOS33")),            # SW0, SW1
    ]

    connectors = [
        Connector("pmod", 0, "Y18 Y19 Y16 Y17 - - U18 U19 W18 W19 - -"),  # JA (shared with the RPi header)
        Connector("pmod", 1, "W14 Y14 T11 T10 - - V16 W16 V12 W13 - -"),  # JB
        Connector("arduino", 0, {
            # Digital D0..D13
            "d0": "T14", "d1": "U12", "d2": "U13", "d3": "V13", "d4": "V15", "d5": "T15",
            "d6": "R16", "d7": "U17", "d8": "V17", "d9": "V18", "d10": "T16", "d11": "R17",
            "d12": "P18", "d13": "N17",
            # A0..A5 used as digital pins
            "a0": "Y11", "a1": "Y12", "a2": "W11", "a3": "V11", "a4": "T5", "a5": "U10",
            # Dedicated I2C and SPI pins of the shield header
            "scl": "P16", "sda": "P15",
            "spi_cipo": "W15", "spi_copi": "T12", "spi_sck": "H15", "spi_ss": "F16",
        }),
    ]

    def toolchain_program(self, products, name, **kwargs):
        # On the board itself the bitstream is loaded from Python (pynq.Overlay); from a
        # workstation, Vivado's hardware manager over the board's JTAG-over-USB.
        vivado = os.environ.get("VIVADO", "vivado")
        with products.extract(f"{name}.bit") as bitstream:
            script = ("open_hw_manager; connect_hw_server; open_hw_target; "
                      "set dev [lindex [get_hw_devices xc7z020*] 0]; current_hw_device $dev; "
                      f"set_property PROGRAM.FILE {{{bitstream}}} $dev; program_hw_devices $dev; exit")
            subprocess.run([vivado, "-mode", "tcl", "-nolog", "-nojournal"], input=script,
                           text=True, check=True)


# -- processing system --------------------------------------------------------------------------
# (group title, ((CONFIG property without the "CONFIG." prefix, value), ...)). Applied group by
# group, in this order: the DDR part must be "Custom" before its geometry and timing are accepted.
PS7_SETTINGS = (
    ("board: PS clock and I/O bank voltages", (
        ("PCW_CRYSTAL_PERIPHERAL_FREQMHZ", "50"),
        ("PCW_APU_PERIPHERAL_FREQMHZ", "650"),
        ("PCW_PRESET_BANK0_VOLTAGE", "LVCMOS 3.3V"),
        ("PCW_PRESET_BANK1_VOLTAGE", "LVCMOS 1.8V"),
    )),
    ("DDR3: one MT41K256M16 (4 Gbit x16), 16-bit bus, 512 MiB, 525 MHz", (
        ("PCW_UIPARAM_DDR_ENABLE", "1"),
        ("PCW_UIPARAM_DDR_MEMORY_TYPE", "DDR 3"),
        ("PCW_UIPARAM_DDR_PARTNO", "Custom"),
        ("PCW_UIPARAM_DDR_BUS_WIDTH", "16 Bit"),
        ("PCW_UIPARAM_DDR_ECC", "Disabled"),
    )),
    ("DDR3 geometry and timing", (
        ("PCW_UIPARAM_DDR_DEVICE_CAPACITY", "4096 MBits"),
        ("PCW_UIPARAM_DDR_DRAM_WIDTH", "16 Bits"),
        ("PCW_UIPARAM_DDR_SPEED_BIN", "DDR3_1066F"),
        ("PCW_UIPARAM_DDR_FREQ_MHZ", "525"),
        ("PCW_UIPARAM_DDR_BANK_ADDR_COUNT", "3"),
        ("PCW_UIPARAM_DDR_ROW_ADDR_COUNT", "15"),
        ("PCW_UIPARAM_DDR_COL_ADDR_COUNT", "10"),
        ("PCW_UIPARAM_DDR_CL", "7"),
        ("PCW_UIPARAM_DDR_CWL", "6"),
        ("PCW_UIPARAM_DDR_T_RCD", "13.125"),
        ("PCW_UIPARAM_DDR_T_RP", "13.125"),
        ("PCW_UIPARAM_DDR_T_RC", "50.625"),
        ("PCW_UIPARAM_DDR_T_RAS_MIN", "35.0"),
        ("PCW_UIPARAM_DDR_T_FAW", "40.0"),
        ("PCW_UIPARAM_DDR_USE_INTERNAL_VREF", "0"),
        ("PCW_UIPARAM_DDR_TRAIN_WRITE_LEVEL", "1"),
        ("PCW_UIPARAM_DDR_TRAIN_READ_GATE", "1"),
        ("PCW_UIPARAM_DDR_TRAIN_DATA_EYE", "1"),
    )),
    ("DDR3 board delays (ns)", (
        ("PCW_UIPARAM_DDR_BOARD_DELAY0", "0.223"),
        ("PCW_UIPARAM_DDR_BOARD_DELAY1", "0.212"),
        ("PCW_UIPARAM_DDR_BOARD_DELAY2", "0.085"),
        ("PCW_UIPARAM_DDR_BOARD_DELAY3", "0.092"),
        ("PCW_UIPARAM_DDR_DQS_TO_CLK_DELAY_0", "0.040"),
        ("PCW_UIPARAM_DDR_DQS_TO_CLK_DELAY_1", "0.058"),
        ("PCW_UIPARAM_DDR_DQS_TO_CLK_DELAY_2", "-0.009"),
        ("PCW_UIPARAM_DDR_DQS_TO_CLK_DELAY_3", "-0.033"),
    )),
    ("MIO: QSPI flash on MIO 1..6 with feedback clock on MIO 8", (
        ("PCW_QSPI_PERIPHERAL_ENABLE", "1"),
        ("PCW_QSPI_QSPI_IO", "MIO 1 .. 6"),
        ("PCW_QSPI_GRP_SINGLE_SS_ENABLE", "1"),
        ("PCW_QSPI_GRP_FBCLK_ENABLE", "1"),
        ("PCW_QSPI_GRP_FBCLK_IO", "MIO 8"),
        ("PCW_QSPI_PERIPHERAL_FREQMHZ", "200"),
    )),
    ("MIO: UART0 on MIO 14..15 (the USB-UART), 115200 baud", (
        ("PCW_UART0_PERIPHERAL_ENABLE", "1"),
        ("PCW_UART0_UART0_IO", "MIO 14 .. 15"),
        ("PCW_UART0_BAUD_RATE", "115200"),
        ("PCW_UART_PERIPHERAL_FREQMHZ", "100"),
    )),
    ("MIO: Gigabit Ethernet on MIO 16..27, MDIO on MIO 52..53", (
        ("PCW_ENET0_PERIPHERAL_ENABLE", "1"),
        ("PCW_ENET0_ENET0_IO", "MIO 16 .. 27"),
        ("PCW_ENET0_GRP_MDIO_ENABLE", "1"),
        ("PCW_ENET0_GRP_MDIO_IO", "MIO 52 .. 53"),
        ("PCW_ENET0_PERIPHERAL_FREQMHZ", "1000 Mbps"),
    )),
    ("MIO: USB0 on MIO 28..39", (
        ("PCW_USB0_PERIPHERAL_ENABLE", "1"),
        ("PCW_USB0_USB0_IO", "MIO 28 .. 39"),
        ("PCW_USB0_RESET_ENABLE", "0"),
    )),
    ("MIO: SD card on MIO 40..45, card detect on MIO 47", (
        ("PCW_SD0_PERIPHERAL_ENABLE", "1"),
        ("PCW_SD0_SD0_IO", "MIO 40 .. 45"),
        ("PCW_SD0_GRP_CD_ENABLE", "1"),
        ("PCW_SD0_GRP_CD_IO", "MIO 47"),
        ("PCW_SDIO_PERIPHERAL_FREQMHZ", "50"),
    )),
    ("MIO: I2C0 on MIO 50..51", (
        ("PCW_I2C0_PERIPHERAL_ENABLE", "1"),
        ("PCW_I2C0_I2C0_IO", "MIO 50 .. 51"),
    )),
    ("fabric clock, reset, the AXI port the engine hangs off and the one its master uses", (
        ("PCW_FPGA_FCLK0_ENABLE", "1"),
        ("PCW_FCLK0_PERIPHERAL_CLKSRC", "IO PLL"),
        ("PCW_FPGA0_PERIPHERAL_FREQMHZ", str(FCLK0_HZ // 1_000_000)),
        ("PCW_EN_RST0_PORT", "1"),
        ("PCW_FPGA_FCLK1_ENABLE", "0"),
        ("PCW_FPGA_FCLK2_ENABLE", "0"),
        ("PCW_FPGA_FCLK3_ENABLE", "0"),
        ("PCW_USE_M_AXI_GP0", "1"),
        ("PCW_USE_M_AXI_GP1", "0"),
        ("PCW_USE_S_AXI_GP0", "0"),
        ("PCW_USE_S_AXI_HP0", "1"),
        ("PCW_S_AXI_HP0_DATA_WIDTH", str(HP0_DATA_WIDTH)),
        ("PCW_USE_FABRIC_INTERRUPT", "0"),
    )),
)
