"""The activation unit: ``a = f(z)`` and ``d = f'(z)`` in fixed point, one per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config
from dpfm.reference.activations import (ACT_CODES, TABLE_ADDR_BITS, TABLE_Z_FRAC, TABLED,
                                        act_table)

__all__ = ["ActivationUnit", "PIPELINE_STAGES"]

#: Register stages: the table's read register (with the pipeline registers beside it) and the
#: output register.
PIPELINE_STAGES = 2


class ActivationUnit(wiring.Component):
    """``(a, d) = (f(z), f'(z))`` for one pre-activation per cycle, bit-exact with
    :func:`dpfm.reference.activations.act_fixed`.

    ``linear``
        ``a = z``, ``d = 1.0`` (``deriv.one``).
    ``relu``
        ``a = max(z, 0)``, ``d = 1.0`` if ``z > 0`` else ``0``.
    ``sigmoid``, ``tanh``
        A 4096-entry ROM (:class:`amaranth.lib.memory.Memory`, one block RAM read) initialised
        with :func:`~dpfm.reference.activations.act_table`, read at
        :func:`~dpfm.reference.activations.table_address`
        ``= clamp(z >> (value.frac - 8), -2048, 2047) + 2048``; each entry holds ``f`` and
        ``f'`` at the centre of its interval. A table is built only for the tabled activations
        listed in ``config.activations``.

    Parameters
    ----------
    config : dpfm.config.Config
        Supplies the value format ``formats.value`` (``z`` and ``a``), the derivative format
        ``formats.deriv`` (``d``) and ``activations`` (which tables to build).

    Members
    -------
    i : ``In(stream.Signature({"z": signed(value.bits), "act": unsigned(2)}))``
        Pre-activation ``z`` (value format, two's complement) and the activation code
        ``act`` from :data:`dpfm.reference.activations.ACT_CODES`. A tabled code whose table
        was not built (its activation is not in ``config.activations``) gives ``a = d = 0``.
    o : ``Out(stream.Signature({"a": signed(value.bits), "d": signed(deriv.bits)}))``
        Activation (value format) and derivative (derivative format).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~dpfm.config.Config`. (A derivative format that cannot
        hold ``1.0``, which ``linear`` and ``relu`` produce, is refused by
        :class:`~dpfm.reference.fixed.Formats` itself.)

    Notes
    -----
    **Timing.** One pre-activation per cycle (initiation interval 1). Latency 2: a ``z``
    transferred on ``i`` in cycle ``t`` is valid on ``o`` in cycle ``t + 2``. Two register
    stages, held by one stall signal ``advance = ~o.valid | o.ready``: the table read
    register (with ``z`` and ``act`` registered beside it), then the output register.
    ``i.ready`` is ``advance`` computed from a copy of ``~o.valid`` in a register of its own
    (one LUT from flops, apart from the net that enables the stages).

    **Resources.** Per tabled activation, a ROM of 4096 x ``(value.bits + deriv.bits)``
    bits (42 bits by default: 5 RAMB36); ``linear`` and ``relu`` are a few LUTs.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"ActivationUnit needs a dpfm.config.Config, not {config!r}")
        dfmt = config.formats.deriv
        self._config = config
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "z": signed(config.formats.value.bits),
                "act": unsigned(2),
            }))),
            "o": Out(stream.Signature(data.StructLayout({
                "a": signed(config.formats.value.bits),
                "d": signed(dfmt.bits),
            }))),
        })

    @property
    def config(self) -> Config:
        """The :class:`~dpfm.config.Config` this unit was built for."""
        return self._config

    @property
    def tables(self) -> tuple:
        """Names of the activations that get a ROM (tabled ones in ``config.activations``)."""
        return tuple(a for a in TABLED if a in self._config.activations)

    @property
    def latency(self) -> int:
        """Cycles from the input transfer to ``o.valid``: 2."""
        return PIPELINE_STAGES

    @property
    def ii(self) -> int:
        """Initiation interval in cycles: 1."""
        return 1

    def elaborate(self, platform):
        m = Module()
        vfmt, dfmt = self._config.formats.value, self._config.formats.deriv
        entry = data.StructLayout({"a": signed(vfmt.bits), "d": signed(dfmt.bits)})

        advance = Signal()
        take = Signal()
        # `out_empty` is ~o.valid in a register of its own, so that `i.ready` (which the
        # engine's global stall ORs over every lane) is one LUT from flops and does not share
        # the net of `advance`, which enables the table reads and both register stages.
        out_empty = Signal(init=1, name="out_empty")
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(out_empty | self.o.ready),
            take.eq(self.i.valid & advance),
        ]
        z = self.i.payload.z

        # -- table address: clamp(z >> (value.frac - 8), -2048, 2047) + 2048 ----------------
        half = 1 << (TABLE_ADDR_BITS - 1)
        shift = vfmt.frac - TABLE_Z_FRAC
        shifted = z[shift:].as_signed() if shift > 0 else (z << -shift if shift < 0 else z)
        t = Signal(signed(max(len(shifted), TABLE_ADDR_BITS) + 1), name="table_z")
        m.d.comb += t.eq(shifted)
        addr = Signal(TABLE_ADDR_BITS)
        with m.If(t < -half):
            m.d.comb += addr.eq(0)
        with m.Elif(t > half - 1):
            m.d.comb += addr.eq((1 << TABLE_ADDR_BITS) - 1)
        with m.Else():
            m.d.comb += addr.eq(t[:TABLE_ADDR_BITS] ^ half)   # + 2048 on 12 bits

        # -- stage 1: table reads, z and act beside them ------------------------------------
        reads = {}
        for name in self.tables:
            f_q, d_q = act_table(name, vfmt, dfmt)
            rom = memory.Memory(shape=entry, depth=len(f_q),
                                init=[{"a": int(a), "d": int(d)} for a, d in zip(f_q, d_q)])
            m.submodules[f"{name}_table"] = rom
            rd = rom.read_port(domain="sync")
            m.d.comb += [rd.addr.eq(addr), rd.en.eq(advance)]
            reads[name] = rd.data
        z1 = Signal(signed(vfmt.bits), name="s1_z")
        act1 = Signal(2, name="s1_act")
        v1 = Signal(name="s1_valid")
        with m.If(advance):
            m.d.sync += [z1.eq(z), act1.eq(self.i.payload.act), v1.eq(take)]

        # -- stage 2: select, output register ----------------------------------------------
        one = dfmt.one                      # fits: Formats refuses a deriv format without 1.0
        with m.If(advance):
            m.d.sync += [self.o.valid.eq(v1), out_empty.eq(~v1)]
            with m.Switch(act1):
                with m.Case(ACT_CODES["linear"]):
                    m.d.sync += [self.o.payload.a.eq(z1), self.o.payload.d.eq(one)]
                with m.Case(ACT_CODES["relu"]):
                    pos = z1 > 0
                    m.d.sync += [self.o.payload.a.eq(Mux(pos, z1, 0)),
                                 self.o.payload.d.eq(Mux(pos, one, 0))]
                for name in TABLED:
                    with m.Case(ACT_CODES[name]):
                        if name in reads:
                            m.d.sync += [self.o.payload.a.eq(reads[name].a),
                                         self.o.payload.d.eq(reads[name].d)]
                        else:
                            m.d.sync += [self.o.payload.a.eq(0), self.o.payload.d.eq(0)]
        return m
