"""The streaming top-k merger (the seed's "Toper").

A list of gradient candidates (parameter index, partial) goes in one per cycle; out comes the
k largest by magnitude with equal indices summed, bit-exact with
:func:`dpfm.reference.kernels.topk_insert` applied to the candidates in arrival order from an
empty list (the reference's ``stream`` pruning policy).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config

from .layouts import candidate_layout, registers_layout

__all__ = ["TopKMerger"]


def _cell_layout(config: Config) -> data.StructLayout:
    """One working register, sign-magnitude (see :class:`TopKMerger`)."""
    return data.StructLayout({
        "idx": unsigned(config.idx_bits),
        "mag": unsigned(config.formats.grad.bits),
        "neg": 1,
    })


class TopKMerger(wiring.Component):
    """Streaming merge of gradient candidates into a sorted top-k list, one candidate per cycle.

    Every candidate is inserted exactly as :func:`dpfm.reference.kernels.topk_insert` inserts
    it: a candidate with ``val == 0`` changes nothing; one whose index is already held is added
    to the held partial, saturating to the gradient format, removed if the sum is zero and
    otherwise moved to its new place; a new index enters at its place in the list kept sorted
    by (``|val|`` descending, ``idx`` ascending), and the smallest entry leaves when more than
    ``k`` would be held.  The magnitude of the most negative value ``-2**(bits-1)`` is
    ``2**(bits-1)``, one more than the largest positive value.

    A *list* is the candidates from the one after the previous ``last`` up to and including the
    next one with ``last = 1``.  When the ``last`` candidate is accepted, the finished list
    (including that candidate) moves to the output register and is offered on ``o``; the
    working list starts empty in the same cycle, so the next list streams in without a bubble.

    Parameters
    ----------
    config : dpfm.config.Config
        Supplies ``k`` (registers kept), ``idx_bits`` and the gradient format
        ``formats.grad`` (``bits`` wide two's complement, ``frac`` fractional bits).

    Members
    -------
    i : ``In(stream.Signature(candidate_layout(config)))``
        Candidates ``{idx, val, last}`` (see :func:`dpfm.rtl.layouts.candidate_layout`);
        ``val`` in the gradient format, two's complement.
    o : ``Out(stream.Signature(registers_layout(config)))``
        One finished list per transfer: ``k`` entries ``{idx, val}`` sorted by (``|val|``
        descending, ``idx`` ascending), empty entries (``val == 0``, ``idx`` don't-care) last.
    sat : ``Out(1)``
        High for one cycle for each candidate whose addition to a held entry saturated (the
        cycle after that candidate's handshake): one pulse per saturation the reference counts.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~dpfm.config.Config`.

    Notes
    -----
    **Timing.**  For a list of ``C >= 1`` candidates fed without stalls:

    - initiation interval ``II = C`` cycles per list (``i.ready`` stays high; lists follow each
      other with no idle cycle), i.e. 1 candidate per cycle sustained; merging two full
      k-lists (``C = 2k``) takes ``2k`` cycles;
    - latency ``L = 1``: ``o.valid`` rises on the clock edge that accepts the ``last``
      candidate, i.e. the list is offered 1 cycle after that handshake, and
      ``C - 1 + L = C`` cycles after the handshake of the list's first candidate.

    The output register is a second buffer: ``i.ready`` is low only while a ``last``
    candidate is offered and the previous list is still held on ``o`` (``o.valid`` and not
    ``o.ready``).  ``i.ready`` therefore depends combinationally on ``o.ready`` and on
    ``i.payload.last`` (never on ``i.valid``).

    **Storage format.**  The ``k`` working cells and the output register hold sign-magnitude
    entries ``{idx, mag: unsigned(bits), neg}`` (empty: ``mag == 0``): the compares then read
    magnitudes directly, with no negation per cell.  The conversion back to two's complement (``k``
    conditional negations) sits after the output register, outside the insertion loop.

    **One insertion per cycle.**  The candidate is broadcast to all ``k`` cells at once:

    1. every cell compares its index with the candidate's (``hit``: at most one held entry;
       an empty cell matching a stale index contributes a zero partial and changes nothing);
    2. the hit cell's partial is selected (one-hot OR) and added to the candidate in
       sign-magnitude (an adder and two subtractors in parallel, the adder saturating to
       ``2**(bits-1) - 1`` or ``2**(bits-1)``); without a hit the same path yields the
       candidate itself;
    3. the resulting magnitude and index are compared with every cell as one unsigned
       compare of ``{mag, ~idx}`` (this is the (``|val|`` desc, ``idx`` asc) order);
    4. every cell picks its next content from {left neighbour, itself, right neighbour, the
       new entry}: cells above the new entry's place keep theirs, the one at its place takes
       the new entry, cells between the place and a removed hit cell shift by one toward the
       hole.  Remove-and-reinsert of a hit entry is therefore a single cycle.

    **Resources (intuition).**  Per cell: an ``idx_bits`` equality compare, a
    ``bits + idx_bits`` magnitude compare, a 4:1 multiplexer and ``idx_bits + bits + 1``
    flip-flops for the working list plus as many for the output register, plus a conditional
    negator on the output.  Shared: a ``k``-way one-hot select, one adder, two subtractors
    and the saturation logic.  Everything grows linearly in ``k``; the critical path (index
    compare, select, add, magnitude compare, prefix OR over ``k`` hit bits, cell mux) grows
    with ``log k``.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"TopKMerger needs a dpfm.config.Config, not {config!r}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(candidate_layout(config))),
            "o": Out(stream.Signature(registers_layout(config))),
            "sat": Out(1),
        })

    @property
    def config(self) -> Config:
        """The :class:`~dpfm.config.Config` this merger was built for."""
        return self._config

    @property
    def k(self) -> int:
        """Registers per list (``config.k``)."""
        return self._config.k

    def elaborate(self, platform):
        m = Module()
        k = self._config.k
        bits = self._config.formats.grad.bits
        top = 1 << (bits - 1)                      # |most negative|; largest positive = top - 1
        cell_layout = _cell_layout(self._config)

        cells = [Signal(cell_layout, name=f"cell{u}") for u in range(k)]
        held = [Signal(cell_layout, name=f"held{u}") for u in range(k)]   # output register
        nxt = [Signal(cell_layout, name=f"next{u}") for u in range(k)]
        empty = cell_layout.const({})              # an empty cell; also the one past the end

        cand = self.i.payload
        fire = Signal()
        m.d.comb += [
            self.i.ready.eq(~(cand.last & self.o.valid & ~self.o.ready)),
            fire.eq(self.i.valid & self.i.ready),
        ]

        # -- candidate in sign-magnitude ----------------------------------------------
        c_neg = Signal(name="cand_neg")
        c_mag = Signal(bits, name="cand_mag")
        c_nz = Signal(name="cand_nonzero")
        m.d.comb += [
            c_neg.eq(cand.val[-1]),
            c_mag.eq(Mux(c_neg, -cand.val, cand.val)),
            c_nz.eq(cand.val != 0),
        ]

        # -- 1. index match, 2. add to the held partial ---------------------------------
        hit = Signal(k, name="hit")
        # An empty cell (mag 0, always behind the held entries) may match with a stale index:
        # harmless, its partial is 0 and removing it from the empty tail changes nothing.
        m.d.comb += hit.eq(Cat((c.idx == cand.idx) & c_nz for c in cells))
        h_mag = Signal(bits, name="hit_mag")
        h_neg = Signal(name="hit_neg")
        m.d.comb += [
            h_mag.eq(_or_all([Mux(hit[u], cells[u].mag, 0) for u in range(k)])),
            h_neg.eq((hit & Cat(c.neg for c in cells)).any()),
        ]
        same = Signal(name="same_sign")
        total = Signal(bits + 1, name="mag_sum")
        limit = Signal(bits + 1, name="mag_limit")
        over = Signal(name="overflow")
        ge = Signal(name="hit_ge_cand")
        new_mag = Signal(bits, name="new_mag")
        new_neg = Signal(name="new_neg")
        m.d.comb += [
            same.eq(h_neg == c_neg),
            total.eq(h_mag + c_mag),
            limit.eq(Mux(c_neg, top, top - 1)),
            over.eq(same & (total > limit)),
            ge.eq(h_mag >= c_mag),
        ]
        with m.If(same):
            m.d.comb += [new_mag.eq(Mux(over, limit, total)), new_neg.eq(c_neg)]
        with m.Elif(ge):
            m.d.comb += [new_mag.eq(h_mag - c_mag), new_neg.eq(h_neg)]
        with m.Else():
            m.d.comb += [new_mag.eq(c_mag - h_mag), new_neg.eq(c_neg)]
        # Without a hit, h_mag = 0 and h_neg = 0: the path above yields the candidate itself.

        insert = Signal(name="insert")             # a non-zero entry is to be placed
        m.d.comb += insert.eq(c_nz & (new_mag != 0))
        new = Signal(cell_layout, name="new")
        m.d.comb += [new.idx.eq(cand.idx), new.mag.eq(new_mag), new.neg.eq(new_neg)]

        # -- 3. broadcast compare: the new entry goes before cell u ---------------------
        key_new = Cat(~cand.idx, new_mag)
        before = Signal(k + 1, name="before")      # before[k]: the (empty) cell past the end
        m.d.comb += before.eq(Cat(*(key_new > Cat(~c.idx, c.mag) for c in cells), Const(1, 1)))

        # shifted[u]: the hit cell is at or above u, so R[u] (the list without it) is cell u+1
        shifted = Signal(k, name="shifted")
        m.d.comb += shifted.eq(Cat(*(hit[:u + 1].any() for u in range(k))))
        # place[u]: the new entry goes before R[u]
        place = Signal(k, name="place")
        m.d.comb += place.eq(Cat(*(Mux(shifted[u], before[u + 1], before[u]) & insert
                                   for u in range(k))))

        # -- 4. each cell picks {left, self, right, new} --------------------------------
        def cell(u):
            return cells[u] if 0 <= u < k else empty

        SELF, LEFT, RIGHT, NEW = range(4)
        for u in range(k):
            left_placed = place[u - 1] if u > 0 else Const(0, 1)
            left_shifted = shifted[u - 1] if u > 0 else Const(0, 1)
            select = Signal(2, name=f"select{u}")
            with m.If(left_placed):                # R[u-1] moves down into u
                m.d.comb += select.eq(Mux(left_shifted, SELF, LEFT))
            with m.Elif(place[u]):
                m.d.comb += select.eq(NEW)
            with m.Elif(shifted[u]):               # close the hole left by the hit entry
                m.d.comb += select.eq(RIGHT)
            with m.Else():
                m.d.comb += select.eq(SELF)
            with m.Switch(select):                 # a 4:1 multiplexer per bit
                with m.Case(SELF):
                    m.d.comb += nxt[u].eq(cells[u])
                with m.Case(LEFT):
                    m.d.comb += nxt[u].eq(cell(u - 1))
                with m.Case(RIGHT):
                    m.d.comb += nxt[u].eq(cell(u + 1))
                with m.Case(NEW):
                    m.d.comb += nxt[u].eq(new)

        # -- state: working list, output register, saturation pulse ---------------------
        with m.If(fire):
            with m.If(cand.last):
                m.d.sync += [held[u].eq(nxt[u]) for u in range(k)]
                m.d.sync += [cells[u].eq(empty) for u in range(k)]
                m.d.sync += self.o.valid.eq(1)
            with m.Else():
                m.d.sync += [cells[u].eq(nxt[u]) for u in range(k)]
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += self.sat.eq(fire & hit.any() & over)

        # -- output: sign-magnitude -> two's complement --------------------------------
        for u in range(k):
            m.d.comb += [
                self.o.payload[u].idx.eq(held[u].idx),
                self.o.payload[u].val.eq(Mux(held[u].neg, -held[u].mag, held[u].mag)),
            ]
        return m


def _or_all(values):
    """Bitwise OR of a list of values (a one-hot select when at most one is non-zero)."""
    acc = values[0]
    for v in values[1:]:
        acc = acc | v
    return acc
