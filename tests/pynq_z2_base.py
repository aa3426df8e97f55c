"""Data for the board tests: the PYNQ-Z2's PS7 settings as PYNQ itself sets them, and the
engine with its run-mode ports (:func:`run_mode_engine`).

Not a test module; ``tests/test_board.py`` and ``tests/test_board_tcl.py`` import it.
"""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect, flipped

from dpfm.boards.build import board_engine
from dpfm.rtl.axi import AXI4LiteSignature, AXI4Signature
from dpfm.rtl.regmap import ADDR_BITS

# Values of the PYNQ-Z2's processing system as PYNQ's base overlay sets them
# (Xilinx/PYNQ, boards/Pynq-Z2/base/base.tcl, the processing_system7 cell's CONFIG.* list),
# written out here so that a slip in PS7_SETTINGS cannot pass by agreeing with itself.
PYNQ_BASE_PS7 = {
    "PCW_CRYSTAL_PERIPHERAL_FREQMHZ": "50",
    "PCW_APU_PERIPHERAL_FREQMHZ": "650",
    "PCW_PRESET_BANK0_VOLTAGE": "LVCMOS 3.3V",
    "PCW_PRESET_BANK1_VOLTAGE": "LVCMOS 1.8V",
    "PCW_UIPARAM_DDR_MEMORY_TYPE": "DDR 3",
    "PCW_UIPARAM_DDR_PARTNO": "Custom",
    "PCW_UIPARAM_DDR_BUS_WIDTH": "16 Bit",
    "PCW_UIPARAM_DDR_DEVICE_CAPACITY": "4096 MBits",
    "PCW_UIPARAM_DDR_DRAM_WIDTH": "16 Bits",
    "PCW_UIPARAM_DDR_SPEED_BIN": "DDR3_1066F",
    "PCW_UIPARAM_DDR_FREQ_MHZ": "525",
    "PCW_UIPARAM_DDR_ROW_ADDR_COUNT": "15",
    "PCW_UIPARAM_DDR_CL": "7",
    "PCW_UIPARAM_DDR_CWL": "6",
    "PCW_UIPARAM_DDR_T_RC": "50.625",
    "PCW_UIPARAM_DDR_BOARD_DELAY0": "0.223",
    "PCW_UIPARAM_DDR_BOARD_DELAY3": "0.092",
    "PCW_QSPI_QSPI_IO": "MIO 1 .. 6",
    "PCW_QSPI_GRP_FBCLK_IO": "MIO 8",
    "PCW_UART0_UART0_IO": "MIO 14 .. 15",
    "PCW_UART0_BAUD_RATE": "115200",
    "PCW_ENET0_ENET0_IO": "MIO 16 .. 27",
    "PCW_ENET0_GRP_MDIO_IO": "MIO 52 .. 53",
    "PCW_USB0_USB0_IO": "MIO 28 .. 39",
    "PCW_SD0_SD0_IO": "MIO 40 .. 45",
    "PCW_SD0_GRP_CD_IO": "MIO 47",
    "PCW_I2C0_I2C0_IO": "MIO 50 .. 51",
    "PCW_FCLK0_PERIPHERAL_CLKSRC": "IO PLL",
    "PCW_FPGA0_PERIPHERAL_FREQMHZ": "100",
    "PCW_USE_M_AXI_GP0": "1",
}


# -- the engine as the board wraps it -----------------------------------------------------------


class RunModeStandIn(wiring.Component):
    """The board's engine with the run mode's ports, until :class:`dpfm.rtl.engine.Engine` has
    them: the real engine behind ``s_axil`` and an idle AXI4 master ``m_axi`` (every valid and
    ready low), i.e. the port list the wrapper and the block design will see.

    Members
    -------
    s_axil : ``In(AXI4LiteSignature(addr_width=ADDR_BITS))``
    m_axi : ``Out(AXI4Signature(addr_width=32))``
    """

    s_axil: In(AXI4LiteSignature(addr_width=ADDR_BITS))
    m_axi: Out(AXI4Signature(addr_width=32))

    def __init__(self, engine):
        self.engine = engine
        self.config = engine.config
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = self.engine
        connect(m, flipped(self.s_axil), self.engine.s_axil)
        return m


def engine_has_run_mode() -> bool:
    """True once :func:`dpfm.boards.build.board_engine` has the AXI4 master ``m_axi``."""
    from dpfm.config import Config

    engine = board_engine(Config(k=2, net=(2, 2, 1), activations=("sigmoid", "linear"), batch=1))
    engine._MustUse__silence = True         # looked at, never elaborated: no warning for it
    return "m_axi" in engine.signature.members


def run_mode_engine(config):
    """The engine the board builds, with its AXI4 master: :func:`dpfm.boards.build.board_engine`
    itself once the engine has ``m_axi``, else :class:`RunModeStandIn` around it."""
    engine = board_engine(config)
    if "m_axi" in engine.signature.members:
        return engine
    return RunModeStandIn(engine)
