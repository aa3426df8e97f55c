"""The k-register dual-number multiplier: a dual number (value + k gradient registers) times a
scalar, the k+1 multiplies on DSP48E1s.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config
from dpfm.reference.fixed import DSP_A_BITS, DSP_B_BITS, FixedFormat

from .layouts import registers_layout

__all__ = ["DualScale", "dual_layout", "scaled_dual_layout"]

#: Register stages between the input transfer and the output register (operand registers,
#: product register, output register): see :class:`DualScale`.
PIPELINE_STAGES = 3


def scaled_dual_layout(config: Config) -> data.StructLayout:
    """A dual number: ``value`` (``signed(value.bits)``) and ``grads`` (the k registers)."""
    return data.StructLayout({
        "value": signed(config.formats.value.bits),
        "grads": registers_layout(config),
    })


def dual_layout(config: Config, scalar_fmt: FixedFormat) -> data.StructLayout:
    """A dual number and the scalar it is to be multiplied by (``signed(scalar_fmt.bits)``)."""
    return data.StructLayout({
        "value": signed(config.formats.value.bits),
        "grads": registers_layout(config),
        "scalar": signed(scalar_fmt.bits),
    })


class DualScale(wiring.Component):
    """A dual number times a scalar: ``k + 1`` independent multiplies, one per DSP48E1 lane.

    For every input ``{value, grads, scalar}`` the output is, bit-exact with
    :func:`dpfm.reference.ops.dual_scale`::

        value'      = sat_v(round_shift(value * scalar, scalar_fmt.frac))
        grads[j].val = sat_g(round_shift(grads[j].val * scalar, scalar_fmt.frac))
        grads[j].idx = grads[j].idx                 (passes through)

    where ``round_shift(x, s) = (x + 2**(s-1)) >> s`` (round to nearest, ties toward plus
    infinity; an arithmetic shift) and ``sat_v``/``sat_g`` clamp to the value/gradient format.
    A register whose product is zero comes out empty (``val == 0``; the reference also writes
    index -1 there, the hardware keeps the index, which is don't-care for an empty register).

    Parameters
    ----------
    config : dpfm.config.Config
        Supplies ``k``, ``idx_bits``, the value format ``formats.value`` and the gradient
        format ``formats.grad``.
    scalar_fmt : FixedFormat, optional
        Format of the scalar; ``config.formats.weight`` by default (the engine's weight x
        dual). ``config.formats.deriv`` is the other use (activation derivative x dual).
    lanes : int, optional
        Physical multipliers, ``1 <= lanes <= k + 1``; ``config.lanes`` by default. Fewer
        lanes than ``k + 1`` time-share them.

    Members
    -------
    i : ``In(stream.Signature(dual_layout(config, scalar_fmt)))``
        ``value``: ``signed(value.bits)``; ``grads``: :func:`~dpfm.rtl.layouts.registers_layout`
        (k ``{idx: unsigned(idx_bits), val: signed(grad.bits)}``); ``scalar``:
        ``signed(scalar_fmt.bits)``. All two's complement.
    o : ``Out(stream.Signature(scaled_dual_layout(config)))``
        ``value`` in the value format and ``grads`` in the gradient format; slots keep their
        places.
    sat : ``Out(1)``
        High for one cycle, with the output transfer, for every output dual in which at least
        one of the ``k + 1`` results saturated: the number of pulses is the number of duals
        for which the reference's saturation count is non-zero (the engine keeps a sticky
        flag). A 1-bit pulse cannot count the up to ``lanes`` saturations of one cycle.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~dpfm.config.Config`, ``scalar_fmt`` not a
        :class:`~dpfm.reference.fixed.FixedFormat` or ``lanes`` not an integer.
    ValueError
        If ``lanes`` is outside ``1..k+1``, or ``config.use_dsp`` is set and a product does
        not fit one signed 25 x 18 DSP48E1 multiplier.

    Notes
    -----
    **Schedule.** Product ``j`` (``0`` is the value, ``1..k`` the registers) runs on lane
    ``j mod lanes`` in phase ``j // lanes``; a dual takes ``C = ceil((k + 1) / lanes)`` phases.
    The input payload is read in place while ``i.valid`` is high (the stream rules keep it
    stable until the transfer); ``i.ready`` rises in the last phase, so the transfer on ``i``
    happens when the last slice of products is issued.

    **Pipeline.** Three register stages, all held by one stall signal
    ``advance = ~o.valid | o.ready``:

    1. operand registers (the DSP48E1's A and B registers): the lane's operand, selected by
       the phase, and the scalar;
    2. product register (the DSP48E1's P register): ``operand * scalar + 2**(s-1)``, the
       rounding constant added by the DSP's post-adder;
    3. the output register: the product shifted right by ``s = scalar_fmt.frac`` and
       saturated, written into the output slots of its phase.

    **Timing.** With ``C = ceil((k + 1) / lanes)``:

    - initiation interval ``II = C`` cycles per dual (one dual per cycle with
      ``lanes = k + 1``);
    - latency: a dual transferred on ``i`` in cycle ``t`` is valid on ``o`` in cycle ``t + 3``
      (and is transferred then when ``o.ready`` is high): 3 cycles from input transfer to
      output transfer; counted from the first cycle the dual is offered to an idle unit,
      ``C + 2`` cycles.

    **Resources.** ``lanes`` DSP48E1 (each ``max(value.bits, grad.bits)`` x ``scalar.bits``
    for lane 0, ``grad.bits`` x ``scalar.bits`` for the others, at most 25 x 18), per lane a
    ``C``-way operand multiplexer and a saturation check, ``2 * lanes * idx_bits`` flip-flops
    carrying the indices alongside the products, and the output register.
    """

    def __init__(self, config: Config, *, scalar_fmt: FixedFormat | None = None,
                 lanes: int | None = None):
        if not isinstance(config, Config):
            raise TypeError(f"DualScale needs a dpfm.config.Config, not {config!r}")
        if scalar_fmt is None:
            scalar_fmt = config.formats.weight
        if not isinstance(scalar_fmt, FixedFormat):
            raise TypeError(f"scalar_fmt must be a FixedFormat, not {scalar_fmt!r}")
        if lanes is None:
            lanes = config.lanes
        if isinstance(lanes, bool) or not isinstance(lanes, int):
            raise TypeError(f"lanes must be an integer, not {lanes!r}")
        if not 1 <= lanes <= config.k + 1:
            raise ValueError(f"lanes={lanes} must be in 1..k+1={config.k + 1}")
        fmts = config.formats
        if config.use_dsp:
            for what, a, b in (("value x scalar", fmts.value.bits, scalar_fmt.bits),
                               ("grad x scalar", fmts.grad.bits, scalar_fmt.bits)):
                lo, hi = sorted((a, b))
                if lo > DSP_B_BITS or hi > DSP_A_BITS:
                    raise ValueError(f"DualScale {what}: {a} x {b} bits exceeds the DSP48E1's "
                                     f"{DSP_A_BITS} x {DSP_B_BITS} (scalar format {scalar_fmt})")
        self._config = config
        self._scalar_fmt = scalar_fmt
        self._lanes = lanes
        super().__init__({
            "i": In(stream.Signature(dual_layout(config, scalar_fmt))),
            "o": Out(stream.Signature(scaled_dual_layout(config))),
            "sat": Out(1),
        })

    # -- read-only parameters ------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The :class:`~dpfm.config.Config` this multiplier was built for."""
        return self._config

    @property
    def scalar_fmt(self) -> FixedFormat:
        """Format of the scalar operand."""
        return self._scalar_fmt

    @property
    def lanes(self) -> int:
        """Physical multipliers."""
        return self._lanes

    @property
    def phases(self) -> int:
        """``C = ceil((k + 1) / lanes)``: cycles per dual (the initiation interval)."""
        return -(-(self._config.k + 1) // self._lanes)

    @property
    def ii(self) -> int:
        """Initiation interval in cycles (``phases``)."""
        return self.phases

    @property
    def latency(self) -> int:
        """Cycles from the input transfer to the output transfer (with ``o.ready`` high): 3."""
        return PIPELINE_STAGES

    @property
    def first_latency(self) -> int:
        """Cycles from a dual's first offer to an idle unit to its output: ``phases + 2``."""
        return self.phases + PIPELINE_STAGES - 1

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k, L, C = cfg.k, self._lanes, self.phases
        vfmt, gfmt, sfmt = cfg.formats.value, cfg.formats.grad, self._scalar_fmt
        s = sfmt.frac
        n = k + 1

        inp = self.i.payload
        out = self.o.payload

        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)

        # -- phase counter and input handshake ------------------------------------------
        if C > 1:
            phase = Signal(range(C))
            # ``phase == C - 1`` kept in a register beside the counter, so that ``i.ready``
            # (which the engine's stall collects over every lane) comes straight from flops
            last_phase = Signal()
            with m.If(self.i.valid & advance):
                next_phase = Mux(last_phase, 0, phase + 1)
                m.d.sync += [phase.eq(next_phase), last_phase.eq(next_phase == C - 1)]
        else:
            phase = Const(0, 1)
            last_phase = Const(1, 1)
        issue = Signal()
        m.d.comb += [
            issue.eq(self.i.valid & advance),
            self.i.ready.eq(advance & last_phase),
        ]

        def slots(lane):
            return [c * L + lane for c in range(C) if c * L + lane < n]

        def operand(j):
            return inp.value if j == 0 else inp.grads[j - 1].val

        # -- stage 1: operand registers (DSP A/B registers) ----------------------------
        v1 = Signal(name="s1_valid")
        ph1 = Signal(range(C), name="s1_phase") if C > 1 else Const(0, 1)
        sc1 = []                                 # per lane: its own copy of the scalar
        a1 = []
        idx1 = []
        for lane in range(L):
            width = max(vfmt.bits, gfmt.bits) if lane == 0 else gfmt.bits
            a = Signal(signed(width), name=f"s1_operand{lane}")
            b = Signal(signed(sfmt.bits), name=f"s1_scalar{lane}")
            has_idx = any(j > 0 for j in slots(lane))
            ix = Signal(cfg.idx_bits, name=f"s1_idx{lane}") if has_idx else None
            with m.If(advance):
                m.d.sync += b.eq(inp.scalar)
                if C == 1:
                    j = lane
                    m.d.sync += a.eq(operand(j))
                    if ix is not None:
                        m.d.sync += ix.eq(inp.grads[j - 1].idx)
                else:
                    with m.Switch(phase):
                        for j in slots(lane):
                            with m.Case(j // L):
                                m.d.sync += a.eq(operand(j))
                                if ix is not None and j > 0:
                                    m.d.sync += ix.eq(inp.grads[j - 1].idx)
            a1.append(a)
            sc1.append(b)
            idx1.append(ix)
        with m.If(advance):
            m.d.sync += v1.eq(issue)
            if C > 1:
                m.d.sync += ph1.eq(phase)

        # -- stage 2: product registers (DSP P register, post-adder rounds) -------------
        rnd = (1 << (s - 1)) if s > 0 else 0
        v2 = Signal(name="s2_valid")
        ph2 = Signal(range(C), name="s2_phase") if C > 1 else Const(0, 1)
        p2 = []
        idx2 = []
        for lane in range(L):
            pw = len(a1[lane]) + sfmt.bits + 1
            p = Signal(signed(pw), name=f"s2_product{lane}")
            ix = Signal(cfg.idx_bits, name=f"s2_idx{lane}") if idx1[lane] is not None else None
            with m.If(advance):
                m.d.sync += p.eq(a1[lane] * sc1[lane] + rnd)
                if ix is not None:
                    m.d.sync += ix.eq(idx1[lane])
            p2.append(p)
            idx2.append(ix)
        with m.If(advance):
            m.d.sync += v2.eq(v1)
            if C > 1:
                m.d.sync += ph2.eq(ph1)

        # -- stage 3: shift, saturate, write the phase's output slots --------------------
        results = {}
        for lane in range(L):
            shifted = p2[lane][s:].as_signed() if s > 0 else p2[lane]
            for fmt, kind in ((vfmt, "value"), (gfmt, "grad")):
                if kind == "value" and lane != 0:
                    continue
                if kind == "grad" and not any(j > 0 for j in slots(lane)):
                    continue
                r = Signal(signed(fmt.bits), name=f"s3_{kind}{lane}")
                over = Signal(name=f"s3_{kind}_sat{lane}")
                _saturate(m, shifted, fmt, r, over)
                results[(lane, kind)] = (r, over)

        o_sat = Signal()
        with m.If(advance & v2):
            for c in range(C):
                with m.If(ph2 == c):
                    any_sat = []
                    for lane in range(L):
                        j = c * L + lane
                        if j >= n:
                            continue
                        if j == 0:
                            r, over = results[(lane, "value")]
                            m.d.sync += out.value.eq(r)
                        else:
                            r, over = results[(lane, "grad")]
                            m.d.sync += [out.grads[j - 1].val.eq(r),
                                         out.grads[j - 1].idx.eq(idx2[lane])]
                        any_sat.append(over)
                    flag = _or_all(any_sat)
                    m.d.sync += o_sat.eq(flag if c == 0 else (o_sat | flag))
                    if c == C - 1:
                        m.d.sync += self.o.valid.eq(1)
                    else:
                        m.d.sync += self.o.valid.eq(0)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.comb += self.sat.eq(self.o.valid & self.o.ready & o_sat)
        return m


def _saturate(m, x, fmt: FixedFormat, r, over):
    """``r = clamp(x)`` to ``fmt``; ``over`` high when clamped (``x`` signed, any width)."""
    top = fmt.bits - 1
    if len(x) <= fmt.bits:
        m.d.comb += [r.eq(x), over.eq(0)]
        return
    head = x[top:]                               # sign bit of the result and everything above
    fits = (head == 0) | (head == (1 << len(head)) - 1)
    m.d.comb += over.eq(~fits)
    with m.If(fits):
        m.d.comb += r.eq(x[:fmt.bits].as_signed())
    with m.Elif(x[-1]):
        m.d.comb += r.eq(fmt.min_int)
    with m.Else():
        m.d.comb += r.eq(fmt.max_int)


def _or_all(values):
    acc = values[0]
    for v in values[1:]:
        acc = acc | v
    return acc
