"""The delay model of the static timing estimate (:mod:`dpfm.rtl.timing`) for the xc7z020-1.

Numbers in ns per primitive arc, with their sources; see :class:`DelayModel`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["DelayModel", "XC7Z020_1"]


@dataclass(frozen=True)
class DelayModel:
    """Delays in ns of the xc7z020 at speed grade -1 (the PYNQ-Z2's XC7Z020-1CLG400C).

    The xc7z020's programmable logic is the Artix-7 fabric (28 nm HPL), so Xilinx DS187
    ("Zynq-7000 All Programmable SoC (Z-7010, Z-7015, and Z-7020): DC and AC Switching
    Characteristics"), -1 column, shares its parameter names and values with DS181
    (Artix-7). The DS187 tables themselves were not reachable when this model was written,
    so each number says where it was taken from:

    - [Y] Yosys 0.23 ``techlibs/xilinx/cells_sim.v`` ``specify`` blocks, which cite the
      Project X-Ray database's SDF timings of an Artix-7 -1 part (Vivado's own -1 timing
      model, the source of the data-sheet tables);
    - [S] DS189 (Spartan-7 data sheet, same 28 nm fabric and table layout as DS187), -1
      column at 1.0 V, table "Block RAM and FIFO Switching Characteristics";
    - [V] the value Vivado's timing reports commonly print for xc7z020-1 primitives
      (``FDRE (Prop_fdre_C_Q) 0.456``, ``LUT6 (Prop_lut6_I0_O) 0.124``), quoted from
      experience with such reports, not re-checked against a report or DS187 here;
    - [A] an approximation chosen for this estimate, not a data-sheet number.

    Attributes
    ----------
    ff_clk_to_q : float
        DS187 T_CKO, clock to AQ-DQ of a slice flip-flop: 0.456 [V] ([Y] has 0.303).
    ff_setup_d : float
        T_DICK / T_AS, D (through the flip-flop's input mux) before the clock: 0.06
        [A] ([Y] -0.046, clipped; Vivado reports -0.05..+0.06).
    ff_setup_ce : float
        T_CECK, CE before the clock: 0.109 [Y].
    ff_setup_sr : float
        T_SRCK, synchronous set/reset (and the recovery time of CLR/PRE): 0.404 [Y].
    lut_ns : tuple of float
        T_ILO, LUT address to output, by input count (LUT1..LUT6): 0.124 for every size [V];
        pin-to-pin spread ([Y]: 0.13-0.64 for A6..A1) is left to :attr:`net_ns`.
    net_ns : float
        One general-routing hop between cells: 0.45 [A] (not a data-sheet parameter;
        Vivado's placed hops for short local nets are 0.3-0.6 ns on -1). Dedicated
        connections cost nothing: CARRY4 CO[3] to CI, LUT to MUXF7, MUXF7 to MUXF8,
        DSP48E1 PCOUT to PCIN (and ACOUT/BCOUT/CARRYCASCOUT/MULTSIGNOUT).
    fanout_ns_per_doubling : float
        Added to a hop per doubling of the driver's sink count: 0.10 [A] (fan-out 16 adds
        0.4 ns, fan-out 1,024 adds 1.0 ns).
    carry_s_co : float
        CARRY4 S/DI to CO (T_OPCYA/T_AXCY-like entry into the chain): 0.548 [Y] (worst).
    carry_s_o : float
        CARRY4 S/DI to an O (sum) output: 0.618 [Y] (worst).
    carry_ci_co3 : float
        T_BYP, CI to CO[3], i.e. the cost of each further CARRY4 in a chain: 0.114 [Y].
    carry_ci_co : float
        CI to CO[0..2]: 0.271 [Y] (worst).
    carry_ci_o : float
        T_CINO, CI to an O output: 0.334 [Y] (worst).
    carry_cyinit : float
        CYINIT to CO/O: 0.642 [Y] (worst).
    muxf7_data, muxf7_sel : float
        T_IF7/T_SELF7-like, MUXF7 I0/I1 to O 0.223 and S to O 0.296 [Y].
    muxf8_data, muxf8_sel : float
        MUXF8 I0/I1 to O 0.104 and S to O 0.273 [Y].
    dsp : dict
        DSP48E1 internal paths [Y], by DS187 parameter: ``a_areg`` T_DSPDCK_A_AREG 0.254,
        ``b_breg`` 0.324, ``c_creg`` 0.168, ``d_dreg`` 0.248, ``a_mreg``
        T_DSPDCK_A_MREG 1.416, ``b_mreg`` 1.285, ``d_mreg`` 2.310, ``d_adreg`` 1.195,
        ``a_adreg`` 1.283, ``a_preg`` T_DSPDCK_A_PREG (multiply) 2.739, ``b_preg`` 2.608,
        ``c_preg`` 1.244, ``d_preg`` 3.635, ``ab_preg_nomult`` (A:B adder, USE_MULT=NONE)
        1.441, ``pcin_preg`` T_DSPDCK_PCIN_PREG 1.025; clock to P: ``p_preg``
        T_DSPCKO_P_PREG 0.329, ``p_mreg`` T_DSPCKO_P_MREG 1.671, ``p_areg`` 2.952,
        ``p_breg`` 2.813, ``p_creg`` 1.687, ``p_areg_nomult`` 1.632; combinational (no register on the path):
        ``a_p`` T_DSPDO_A_P 2.823, ``b_p`` 2.690, ``c_p`` 1.325, ``d_p`` 3.717,
        ``a_p_nomult`` 1.523, ``pcin_p`` T_DSPDO_PCIN_P 1.107; ``pcout_extra`` 0.148 (P to
        PCOUT, the cascade output, [Y] 0.435 - 0.329); control pins [A]: ``ctrl_reg`` 0.50
        (OPMODE/ALUMODE/INMODE/CARRYIN with their register), ``ctrl_preg`` 1.60 (no control
        register, PREG=1), ``ctrl_p`` 1.70 (to P, nothing registered), ``ce_rst`` 0.45.
    bram : dict
        RAMB18E1/RAMB36E1: ``do`` T_RCKO_DO 2.46 (no output register) and ``do_reg``
        T_RCKO_DO_REG 0.89 (DOA_REG/DOB_REG=1) [S]; setups [S]: ``addr`` T_RCCK_ADDR 0.57,
        ``di`` T_RDCK_DI 0.74; [A]: ``we`` 0.53, ``en`` 0.45, ``ctrl`` 0.45 (REGCE, RST).
    lutram : dict
        Distributed RAM (RAM32M, RAM64M, RAM32X1D, RAM64X1D, RAM128X1D, RAM..X1S):
        ``read`` address to output 0.64 [Y] (worst address pin; UG474: T_ILO plus the
        RAM's address pins), ``read_mux`` 0.22 more for the 128-deep ones (F7 mux) [Y],
        ``clk_to_out`` T_SHCKO 1.153 [Y] (a write appearing at the output), setups [Y]:
        ``d`` T_DS 0.461, ``addr`` T_AS 0.362, ``we`` T_WS 0.654.
    srl : dict
        SRL16E/SRLC32E: ``clk_to_out`` T_REG 1.472, ``a_q`` 0.631, ``d`` 0.173 [Y], ``ce``
        0.30 [A].
    """

    ff_clk_to_q: float = 0.456
    ff_setup_d: float = 0.06
    ff_setup_ce: float = 0.109
    ff_setup_sr: float = 0.404
    lut_ns: tuple = (0.124, 0.124, 0.124, 0.124, 0.124, 0.124)
    net_ns: float = 0.45
    fanout_ns_per_doubling: float = 0.10
    carry_s_co: float = 0.548
    carry_s_o: float = 0.618
    carry_ci_co3: float = 0.114
    carry_ci_co: float = 0.271
    carry_ci_o: float = 0.334
    carry_cyinit: float = 0.642
    muxf7_data: float = 0.223
    muxf7_sel: float = 0.296
    muxf8_data: float = 0.104
    muxf8_sel: float = 0.273
    dsp: dict = field(default_factory=lambda: {
        "a_areg": 0.254, "b_breg": 0.324, "c_creg": 0.168, "d_dreg": 0.248,
        "a_mreg": 1.416, "b_mreg": 1.285, "d_mreg": 2.310, "d_adreg": 1.195, "a_adreg": 1.283,
        "a_preg": 2.739, "b_preg": 2.608, "c_preg": 1.244, "d_preg": 3.635,
        "ab_preg_nomult": 1.441, "pcin_preg": 1.025,
        "p_preg": 0.329, "p_mreg": 1.671, "p_areg": 2.952, "p_breg": 2.813,
        "p_areg_nomult": 1.632, "p_creg": 1.687,
        "a_p": 2.823, "b_p": 2.690, "c_p": 1.325, "d_p": 3.717, "a_p_nomult": 1.523,
        "pcin_p": 1.107, "pcout_extra": 0.148,
        "ctrl_reg": 0.50, "ctrl_preg": 1.60, "ctrl_p": 1.70, "ce_rst": 0.45})
    bram: dict = field(default_factory=lambda: {
        "do": 2.46, "do_reg": 0.89, "addr": 0.57, "di": 0.74, "we": 0.53, "en": 0.45,
        "ctrl": 0.45})
    lutram: dict = field(default_factory=lambda: {
        "read": 0.642, "read_mux": 0.223, "clk_to_out": 1.153, "d": 0.461, "addr": 0.362,
        "we": 0.654})
    srl: dict = field(default_factory=lambda: {
        "clk_to_out": 1.472, "a_q": 0.631, "d": 0.173, "ce": 0.30})

    def hop(self, fanout: int) -> float:
        """Delay of one general-routing hop from a driver with ``fanout`` sink pins."""
        return self.net_ns + self.fanout_ns_per_doubling * math.log2(max(1, fanout))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The model the estimate uses unless told otherwise.
XC7Z020_1 = DelayModel()
