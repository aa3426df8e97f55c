"""AXI4-Lite: the bus signature and a slave that turns it into simple register accesses.

:class:`AXI4LiteSignature` flattens the five channels into members named as in the AXI
specification (``awaddr``, ``awvalid``, ... ``rready``), so an ``s_axil: In(...)`` member
becomes Verilog ports ``s_axil__awaddr`` etc. that cocotbext-axi's
``AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__")`` drives.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dpfm.rtl.regmap import Resp

__all__ = ["AXI4LiteSignature", "AXI4Signature", "RegisterPort", "AXI4LiteSlave", "BURST_INCR",
           "AXCACHE_MODIFIABLE"]

#: AxBURST of an incrementing burst.
BURST_INCR = 0b01
#: AxCACHE of a normal, non-cacheable, bufferable access (what the Zynq's HP ports expect).
AXCACHE_MODIFIABLE = 0b0011


class AXI4LiteSignature(wiring.Signature):
    """AXI4-Lite, seen from the master (``Out`` = driven by the master).

    Parameters
    ----------
    addr_width : int
        Byte-address width.
    data_width : int
        32 (the only width this project uses).
    """

    def __init__(self, *, addr_width, data_width=32):
        if data_width != 32:
            raise ValueError(f"data_width must be 32, not {data_width}")
        self.addr_width = addr_width
        self.data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(3), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(3), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(2), "rvalid": In(1), "rready": Out(1),
        })


class AXI4Signature(wiring.Signature):
    """AXI4 (full), seen from the master, without locks, QoS or user signals.

    Members are named as in the AXI specification (``awaddr`` ... ``rready``), so an
    ``m_axi: Out(AXI4Signature(...))`` member becomes Verilog ports ``m_axi__awaddr`` etc.
    that cocotbext-axi's ``AxiBus.from_prefix(dut, "m_axi", bus_separator="__")`` and
    Vivado's interface inference (``boards/wrapper.py``) see.  Bursts: AxLEN 0..255 (beats
    minus one), AxSIZE 2 (4 bytes), AxBURST INCR.  The master issues every transaction with
    ID 0 (``awid``/``arid``, one bit: cocotbext-axi needs the ID signals to exist), so
    responses come back in order.

    Parameters
    ----------
    addr_width : int
        Byte-address width (32 for the Zynq's HP ports).
    data_width : int
        32 (the only width this project uses).
    """

    def __init__(self, *, addr_width=32, data_width=32):
        if data_width != 32:
            raise ValueError(f"data_width must be 32, not {data_width}")
        self.addr_width = addr_width
        self.data_width = data_width
        a = {"id": Out(1), "addr": Out(addr_width), "len": Out(8), "size": Out(3),
             "burst": Out(2), "cache": Out(4), "prot": Out(3), "valid": Out(1), "ready": In(1)}
        super().__init__({
            **{f"aw{k}": v for k, v in a.items()},
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wlast": Out(1),
            "wvalid": Out(1), "wready": In(1),
            "bid": In(1), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
            **{f"ar{k}": v for k, v in a.items()},
            "rid": In(1), "rdata": In(data_width), "rresp": In(2), "rlast": In(1),
            "rvalid": In(1), "rready": Out(1),
        })


class RegisterPort(wiring.Signature):
    """One register access at a time, from the bus slave to the register file.

    Members: ``addr`` (word address), ``w_en`` + ``w_data`` (write strobe, one cycle),
    ``r_en`` (read strobe, one cycle), ``w_refused`` (one cycle, in place of ``w_en``: a write
    the slave itself refused, e.g. a partial strobe), and back: ``r_data`` and ``error`` valid
    in the cycle after the strobe (``error`` makes the slave refuse the access; a refused write
    must change nothing).
    """

    def __init__(self, *, addr_width):
        super().__init__({
            "addr": Out(addr_width), "w_en": Out(1), "w_data": Out(32), "r_en": Out(1),
            "w_refused": Out(1), "r_data": In(32), "error": In(1),
        })


class AXI4LiteSlave(wiring.Component):
    """AXI4-Lite slave: one read or write at a time, answered from a :class:`RegisterPort`.

    Latency: a write answers on B three cycles after AW and W have both been accepted; a read
    answers on R three cycles after AR.  Writes with partial ``wstrb`` are refused (nothing
    written): every register is a whole 32-bit word.  Reads win when both arrive.

    Parameters
    ----------
    addr_width : int
        Byte address bits.
    error_resp : Resp
        The response to a refused access: ``Resp.SLVERR`` (default; simulation and any
        master that handles it), or ``Resp.OKAY`` where an error response would be fatal to
        the master (a Zynq CPU takes SLVERR/DECERR to a load or store as an external abort:
        the process dies with SIGBUS), leaving the refusal to the register file's records.
    """

    def __init__(self, *, addr_width, error_resp=Resp.SLVERR):
        if error_resp not in (Resp.SLVERR, Resp.OKAY):
            raise ValueError(f"error_resp must be Resp.SLVERR or Resp.OKAY, not {error_resp!r}")
        self.addr_width = addr_width
        self.error_resp = Resp(error_resp)
        super().__init__({
            "bus": In(AXI4LiteSignature(addr_width=addr_width)),
            "reg": Out(RegisterPort(addr_width=addr_width - 2)),
        })

    def elaborate(self, platform):
        m = Module()
        bus, reg = self.bus, self.reg
        addr = Signal(self.addr_width)
        wdata = Signal(32)
        w_full = Signal()              # the write's wstrb enables all four bytes (registered,
        aw_ok = Signal()               # so the register file's decode starts one LUT earlier)
        w_ok = Signal()
        m.d.comb += reg.addr.eq(addr[2:])
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += bus.arready.eq(1)
                with m.If(bus.arvalid):
                    m.d.sync += addr.eq(bus.araddr)
                    m.next = "READ"
                with m.Else():
                    m.d.comb += [bus.awready.eq(~aw_ok), bus.wready.eq(~w_ok)]
                    with m.If(bus.awvalid & ~aw_ok):
                        m.d.sync += [addr.eq(bus.awaddr), aw_ok.eq(1)]
                    with m.If(bus.wvalid & ~w_ok):
                        m.d.sync += [wdata.eq(bus.wdata), w_full.eq(bus.wstrb == 0b1111), w_ok.eq(1)]
                    with m.If(aw_ok & w_ok):
                        m.next = "WRITE"
            with m.State("READ"):
                m.d.comb += reg.r_en.eq(1)
                m.next = "READ_RESP"
            with m.State("READ_RESP"):
                with m.If(~bus.rvalid):
                    m.d.sync += [bus.rvalid.eq(1), bus.rdata.eq(reg.r_data),
                                 bus.rresp.eq(Mux(reg.error, self.error_resp, Resp.OKAY))]
                with m.If(bus.rvalid & bus.rready):
                    m.d.sync += bus.rvalid.eq(0)
                    m.next = "IDLE"
            with m.State("WRITE"):
                full = w_full
                m.d.comb += [reg.w_en.eq(full), reg.w_refused.eq(~full), reg.w_data.eq(wdata)]
                m.d.sync += [aw_ok.eq(0), w_ok.eq(0)]
                m.next = "WRITE_RESP"
                with m.If(~full):
                    m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(self.error_resp)]
                    m.next = "WRITE_WAIT"
            with m.State("WRITE_RESP"):
                m.d.sync += [bus.bvalid.eq(1), bus.bresp.eq(Mux(reg.error, self.error_resp, Resp.OKAY))]
                m.next = "WRITE_WAIT"
            with m.State("WRITE_WAIT"):
                with m.If(bus.bvalid & bus.bready):
                    m.d.sync += bus.bvalid.eq(0)
                    m.next = "IDLE"
        return m
