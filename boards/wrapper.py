"""The Vivado-facing top level ``dpfm_top``: the engine's Amaranth ports under AXI names.

Amaranth names the engine's ports after its signature (``clk``, ``rst``, ``s_axil__awaddr``,
``m_axi__awaddr``, ...). Vivado's IP integrator recognises AXI interfaces, their clock and
their reset by names (``s_axi_awaddr``, ``m_axi_awaddr``, ``aclk``, ``aresetn``) and by
``X_INTERFACE_INFO`` / ``X_INTERFACE_MODE`` / ``X_INTERFACE_PARAMETER`` attributes.
:func:`top_verilog` writes that thin module: wires, plus the one gate that turns the
active-low AXI reset into the engine's active-high synchronous ``rst``.

The engine has two buses, both clocked by ``aclk``:

* ``s_axil`` (:class:`dpfm.rtl.axi.AXI4LiteSignature`, the register map) becomes the AXI4-Lite
  slave ``s_axi``, reached from the processing system's ``M_AXI_GP0``;
* ``m_axi`` (:class:`dpfm.rtl.axi.AXI4Signature`, run mode's memory master) becomes the AXI4
  master ``m_axi``, which the block design connects to ``S_AXI_HP0`` (DDR).

The port lists are read from the engine's signature, so the wrapper follows the engine; an
engine without one of the two buses, or with a member the board cannot wire, is refused with
a :class:`WrapperError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dpfm.rtl.axi import AXI4LiteSignature, AXI4Signature

__all__ = ["TOP_NAME", "ENGINE_NAME", "AXI_PREFIX", "MASTER_PREFIX", "WrapperError", "BusPort",
           "axi_lite_ports", "axi_master_ports", "top_verilog"]

TOP_NAME = "dpfm_top"
ENGINE_NAME = "dpfm_engine"
AXI_PREFIX = "s_axi"       # the block design's slave interface: <cell>/s_axi
MASTER_PREFIX = "m_axi"    # the block design's master interface: <cell>/m_axi

# The engine members that carry the two buses, and the wrapper interface each becomes.
_SLAVE_MEMBER = "s_axil"
_MASTER_MEMBER = "m_axi"
_BUSES = {_SLAVE_MEMBER: AXI_PREFIX, _MASTER_MEMBER: MASTER_PREFIX}


class WrapperError(ValueError):
    """The engine's signature does not fit the board's block design (a bus is missing, has
    the wrong kind or width, or a member has no place in the design)."""


@dataclass(frozen=True)
class BusPort:
    """One wire of a bus between the engine and the wrapper's port list.

    Members
    -------
    direction : str
        ``"input"`` or ``"output"``, as seen from the engine (and the wrapper).
    engine_port : str
        The engine's Verilog port (the signature path joined with ``__``).
    width : int
        Bits.
    signal : str
        The AXI signal name (``awaddr``); the wrapper port is ``<prefix>_<signal>``.
    """

    direction: str
    engine_port: str
    width: int
    signal: str


def _members(engine: wiring.Component) -> dict[str, list[BusPort]]:
    """Every engine port, grouped by bus member; refuses members of no bus."""
    buses: dict[str, list[BusPort]] = {name: [] for name in _BUSES}
    for path, member, value in engine.signature.flatten(engine):
        if path[0] not in _BUSES or len(path) != 2:
            raise WrapperError(
                f"engine member {'.'.join(map(str, path))} has no place in the PYNQ-Z2 block design "
                f"(only {_SLAVE_MEMBER!r}, an AXI4-Lite slave, and {_MASTER_MEMBER!r}, an AXI4 "
                f"master, are wired); extend dpfm.boards.wrapper")
        direction = "input" if member.flow == In else "output"
        buses[path[0]].append(BusPort(direction, "__".join(path), len(value), path[1]))
    return buses


def _bus_member(engine: wiring.Component, name: str, kind: type, flow, what: str):
    members = engine.signature.members
    if name not in members:
        raise WrapperError(
            f"the engine has no member {name!r} ({what}); its members are "
            f"{', '.join(members) or 'none'}. The board's block design needs both the AXI4-Lite "
            f"slave {_SLAVE_MEMBER!r} and the run mode's AXI4 master {_MASTER_MEMBER!r}: build "
            f"with an engine that has run mode")
    member = members[name]
    if member.is_port or not isinstance(member.signature, kind) or member.flow != flow:
        raise WrapperError(f"engine member {name!r} is {member!r}, expected "
                           f"{flow.name}({kind.__name__}(...)) ({what})")
    return member.signature


def axi_lite_ports(engine: wiring.Component) -> list[BusPort]:
    """The wires of the engine's AXI4-Lite slave ``s_axil``, in signature order.

    Raises
    ------
    WrapperError
        If the engine has no ``In(AXI4LiteSignature)`` member ``s_axil``, or members the block
        design cannot wire.
    """
    _bus_member(engine, _SLAVE_MEMBER, AXI4LiteSignature, In, "the AXI4-Lite register slave")
    return _members(engine)[_SLAVE_MEMBER]


def axi_master_ports(engine: wiring.Component) -> list[BusPort]:
    """The wires of the engine's AXI4 master ``m_axi`` (run mode), in signature order.

    Raises
    ------
    WrapperError
        If the engine has no ``Out(AXI4Signature)`` member ``m_axi`` with 32-bit addresses
        (an engine built before run mode), or members the block design cannot wire.
    """
    sig = _bus_member(engine, _MASTER_MEMBER, AXI4Signature, Out, "the run mode's AXI4 memory master")
    if sig.addr_width != 32:
        raise WrapperError(f"the engine's m_axi has {sig.addr_width} address bits; the Zynq's "
                           f"S_AXI_HP0 takes 32")
    return _members(engine)[_MASTER_MEMBER]


def _master_parameter(ports: list[BusPort], fclk_hz: int) -> str:
    """``X_INTERFACE_PARAMETER`` of the master: what the AXI4 signature has and has not."""
    signals = {p.signal for p in ports}
    widths = {p.signal: p.width for p in ports}

    def has(*names):
        return int(all(n in signals for n in names))

    return ", ".join([
        f"XIL_INTERFACENAME {MASTER_PREFIX}",
        "PROTOCOL AXI4",
        f"DATA_WIDTH {widths['wdata']}",
        f"ADDR_WIDTH {widths['awaddr']}",
        f"ID_WIDTH {widths.get('awid', 0)}",
        "AWUSER_WIDTH 0, ARUSER_WIDTH 0, WUSER_WIDTH 0, RUSER_WIDTH 0, BUSER_WIDTH 0",
        "READ_WRITE_MODE READ_WRITE",
        f"HAS_BURST {has('awburst', 'arburst')}",
        f"HAS_LOCK {has('awlock', 'arlock')}",
        f"HAS_PROT {has('awprot', 'arprot')}",
        f"HAS_CACHE {has('awcache', 'arcache')}",
        f"HAS_QOS {has('awqos', 'arqos')}",
        f"HAS_REGION {has('awregion', 'arregion')}",
        f"HAS_WSTRB {has('wstrb')}",
        f"HAS_BRESP {has('bresp')}",
        f"HAS_RRESP {has('rresp')}",
        "SUPPORTS_NARROW_BURST 0",
        f"MAX_BURST_LENGTH {1 << widths['awlen']}",
        f"FREQ_HZ {fclk_hz}",
    ])


def _port_lines(prefix: str, ports: list[BusPort], mode: str, parameter: str, last: bool) -> list[str]:
    lines = []
    for i, port in enumerate(ports):
        lines.append(f'    (* X_INTERFACE_INFO = "xilinx.com:interface:aximm:1.0 {prefix} '
                     f'{port.signal.upper()}" *)')
        if i == 0:
            lines.append(f'    (* X_INTERFACE_MODE = "{mode}" *)')
            lines.append(f'    (* X_INTERFACE_PARAMETER = "{parameter}" *)')
        vector = f"[{port.width - 1}:0]" if port.width > 1 else ""
        comma = "" if last and i == len(ports) - 1 else ","
        lines.append(f"    {port.direction:<6} wire {vector:<7}{prefix}_{port.signal}{comma}")
    return lines


def top_verilog(engine: wiring.Component, *, fclk_hz: int, addr_width: int) -> str:
    """Verilog text of module :data:`TOP_NAME` around :data:`ENGINE_NAME`.

    Parameters
    ----------
    engine : wiring.Component
        The engine whose Verilog is module :data:`ENGINE_NAME`: members ``s_axil``
        (``In(AXI4LiteSignature)``) and ``m_axi`` (``Out(AXI4Signature)``, 32-bit addresses).
    fclk_hz : int
        Frequency of ``aclk`` the block design drives (``FREQ_HZ`` of the clock and both buses).
    addr_width : int
        Byte-address width of the slave (the register map's ``addr_bits``); checked against
        the engine's ``awaddr``.

    Raises
    ------
    WrapperError
        If the engine lacks either bus (in particular an engine without run mode, which has
        no ``m_axi``), or its slave's address width differs from ``addr_width``.
    """
    slave = axi_lite_ports(engine)
    master = axi_master_ports(engine)
    widths = {p.signal: p.width for p in slave}
    if widths.get("awaddr") != addr_width or widths.get("araddr") != addr_width:
        raise WrapperError(f"engine address width {widths.get('awaddr')} differs from the register "
                           f"map's {addr_width} bits")
    slave_param = (f"XIL_INTERFACENAME {AXI_PREFIX}, PROTOCOL AXI4LITE, DATA_WIDTH {widths['wdata']}, "
                   f"ADDR_WIDTH {addr_width}, FREQ_HZ {fclk_hz}")
    lines = [
        "// Generated by dpfm.boards.build: the DPFM engine for Vivado's IP integrator (module",
        f"// reference): AXI4-Lite slave {AXI_PREFIX} (registers, from M_AXI_GP0) and AXI4 master",
        f"// {MASTER_PREFIX} (run mode's memory, to S_AXI_HP0). aclk/aresetn come from the processing system.",
        "`default_nettype none",
        "",
        f"module {TOP_NAME} (",
        '    (* X_INTERFACE_INFO = "xilinx.com:signal:clock:1.0 aclk CLK" *)',
        f'    (* X_INTERFACE_PARAMETER = "ASSOCIATED_BUSIF {AXI_PREFIX}:{MASTER_PREFIX}, '
        f'ASSOCIATED_RESET aresetn, FREQ_HZ {fclk_hz}" *)',
        "    input  wire        aclk,",
        '    (* X_INTERFACE_INFO = "xilinx.com:signal:reset:1.0 aresetn RST" *)',
        '    (* X_INTERFACE_PARAMETER = "POLARITY ACTIVE_LOW" *)',
        "    input  wire        aresetn,",
        *_port_lines(AXI_PREFIX, slave, "slave", slave_param, last=False),
        *_port_lines(MASTER_PREFIX, master, "master", _master_parameter(master, fclk_hz), last=True),
        ");",
        "",
        "    // The engine's reset is active high and synchronous to its clock; aresetn comes from",
        "    // proc_sys_reset, which releases it synchronously to aclk.",
        "    wire rst = ~aresetn;",
        "",
        f"    {ENGINE_NAME} engine (",
        "        .clk(aclk),",
        "        .rst(rst),",
    ]
    wired = [(p, AXI_PREFIX) for p in slave] + [(p, MASTER_PREFIX) for p in master]
    for i, (port, prefix) in enumerate(wired):
        comma = "," if i < len(wired) - 1 else ""
        lines.append(f"        .{port.engine_port}({prefix}_{port.signal}){comma}")
    lines += [
        "    );",
        "",
        "endmodule",
        "",
        "`default_nettype wire",
        "",
    ]
    return "\n".join(lines)
