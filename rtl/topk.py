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

__all__ = ["TopKMerger", "PIPELINE_STAGES"]

#: Stages from a candidate's handshake to its insertion (see :class:`TopKMerger`).
PIPELINE_STAGES = 3


def _cell_layout(config: Config) -> data.StructLayout:
    """One working register, sign-magnitude (see :class:`TopKMerger`)."""
    return data.StructLayout({
        "idx": unsigned(config.idx_bits),
        "mag": unsigned(config.formats.grad.bits),
        "neg": 1,
    })


def _lookup_layout(config: Config) -> data.StructLayout:
    """Stage register 1: the candidate after its index lookup."""
    bits = config.formats.grad.bits
    return data.StructLayout({
        "valid": 1,
        "last": 1,
        "idx": unsigned(config.idx_bits),
        "mag": unsigned(bits),       # |val|
        "mag_m": unsigned(bits),     # |val| - 1 if negative, else |val| (val ^ sign)
        "neg": 1,
        "nonzero": 1,                # val != 0 and valid (else it changes nothing)
        "same_idx": 1,               # nonzero, with the index of the candidate before it
        "p_mag": unsigned(bits),     # the held partial in the list after stage 3 moved on:
        "p_neg": 1,                  #   its magnitude, sign and whether there is one
        "p_held": 1,                 #   (stage 3 may still change it: see TopKMerger)
    })


def _entry_layout(config: Config) -> data.StructLayout:
    """Stage register 2: the candidate summed with its held partial and saturated."""
    return data.StructLayout({
        "valid": 1,
        "last": 1,
        "idx": unsigned(config.idx_bits),
        "mag": unsigned(config.formats.grad.bits),
        "neg": 1,
        "nonzero": 1,     # the candidate was non-zero (and valid)
        "insert": 1,      # non-zero after the sum: an entry to place
        "summed": 1,      # it was added to a held entry (which stage 3 removes)
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
    next one with ``last = 1``.  The candidates flow through a three-stage pipeline; when the
    ``last`` one leaves the final stage, the finished list moves to the output register and is
    offered on ``o``, and the working list starts empty in the same cycle, so the next list
    streams in behind it without a bubble.

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
        High for one cycle for each candidate whose addition to a held entry saturated (2
        cycles after that candidate's handshake): one pulse per saturation the reference
        counts.
    kth : ``Out(bits)``
        The magnitude of the working list's ``k``-th entry: 0 while the list holds fewer
        than ``k`` entries, and 0 while a ``last`` candidate is in the lookup or sum stage
        (the cells are then about to close the list).  A function of registers (one LUT).
        It lags the candidates taken by the pipeline: the cells hold the list as left by
        every candidate taken at least 3 cycles ago.  A candidate whose magnitude is below
        it cannot enter a list that only grows (no index repeated: nothing is summed, so
        the ``k``-th magnitude never decreases while the list stays open); the engine uses
        it to end blocks of such candidates early.

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~dpfm.config.Config`.

    Notes
    -----
    **Timing.**  For a list of ``C >= 1`` candidates fed without stalls:

    - initiation interval ``II = C`` cycles per list (:attr:`ii` = 1 candidate per cycle
      sustained; lists follow each other with no idle cycle); merging two full k-lists
      (``C = 2k``) takes ``2k`` cycles;
    - latency ``L = 3`` (:attr:`latency`): the list is offered on ``o`` 3 cycles after the
      handshake of its ``last`` candidate (``o.valid`` rises on the clock edge that ends
      stage 3 of that candidate), i.e. ``C - 1 + L = C + 2`` cycles after the handshake of
      its first candidate.

    The output register holds one list.  ``i.ready`` is low only while the ``last`` candidate
    of a list waits in stage 3 because the previous list is still held on ``o`` (``o.valid``
    and not ``o.ready``); the whole pipeline holds then, so the stall falls on the one or two
    candidates after that ``last``, never on the ``last`` itself.  ``i.ready`` depends
    combinationally on ``o.ready`` and on registers only (not on ``i.valid`` or
    ``i.payload``), one LUT from them: a register of its own copies "the ``last`` is in stage
    3" for it, apart from the net that enables the stage registers.

    **Storage format.**  The ``k`` working cells and the output register hold sign-magnitude
    entries ``{idx, mag: unsigned(bits), neg}`` (empty: ``mag == 0``, ``idx == 0``): the
    compares then read magnitudes directly, with no negation per cell.  The conversion back to
    two's complement (``k`` conditional negations) sits after the output register, outside the
    insertion loop.

    **Pipeline.**  Three stages, one candidate in each, all advancing together:

    1. *Lookup.*  The candidate's index is compared with every cell (``hit``: the cell that
       holds it, at most one held entry; empty cells, index 0, may match too and are
       harmless).  ``|val|`` is formed and registered, and so is the *held partial*: the
       one-hot OR of the hit cell's magnitude and sign, as the list will be once stage 3 has
       placed its entry (see *Forwarding*).
    2. *Sum.*  The registered partial is added to the candidate in sign-magnitude (an adder,
       two subtractors and a saturation test in parallel, saturating to ``2**(bits-1) - 1``
       or ``2**(bits-1)``); without a hit the result is the candidate itself.  The sum is
       registered with its index.  The adders start from registers.
    3. *Insertion.*  The summed entry's ``{mag, ~idx}`` is compared with every cell as one
       unsigned compare (the (``|val|`` desc, ``idx`` asc) order), and every cell picks its
       next content from {left neighbour, itself, right neighbour, the new entry}: cells above
       the new place keep theirs, the one at the place takes the new entry, cells between the
       place and a removed hit cell shift by one toward the hole (the cells at and below the
       hit cell are ``hit | -hit``, a prefix OR on a carry chain).  Remove-and-reinsert of a
       hit entry is one cycle.

    **Forwarding.**  Each candidate must see the list as left by every candidate before it,
    but the one or two before it are still in stages 2 and 3:

    - *The hit bits move with the list.*  The hit vector found in stage 1, and the one carried
      by stage 2, pass through the same {left, self, right, new} choice as the cells when
      stage 3 changes the list, so they always point into the current cells.  The cell that
      takes stage 3's entry is a hit when that entry has the candidate's index (compared in
      stage 1 against the entries in stages 2 and 3); a cell that is pushed out or removed
      takes its hit bit with it; nothing matches after a list closes.
    - *The partial picked in stage 1 is the one stage 3 leaves.*  Stage 1 reads the cells
      before stage 3 has placed its entry, so it picks as stage 3 will leave them: nothing
      when stage 3 closes the list; when the entry in stage 3 has the candidate's index (and
      is not zero), that entry if it is placed and nothing if it is not; nothing when the
      hit cell is cell ``k-1`` and stage 3 evicts it; otherwise the hit cell's content (which
      stage 3 may move, never change).
    - *The entry in stage 3 is summed into the one in stage 2.*  Stage 2 computes two sums
      in parallel, with the partial picked in stage 1 and with the entry in stage 3, and picks one
      late, from stage 3's compare with cell ``k-1``: the entry in stage 3 has the same index
      (a repeated index) and ends up in the list (it is placed: a summed entry always is, a
      new one when it goes before cell ``k-1``) -> its sum; it sums to zero or is not placed
      -> the candidate alone; the hit cell is cell ``k-1`` and stage 3 places a new entry into
      a full list (eviction of the entry just hit) -> the candidate alone; stage 3 closes
      the list -> the candidate alone; otherwise the hit cell's sum.

    **Resources (intuition).**  Per cell: an ``idx_bits`` equality compare (stage 1), a
    ``bits + idx_bits`` magnitude compare (stage 3), a 4:1 multiplexer per bit of the cell
    and per hit bit, and ``idx_bits + bits + 1`` flip-flops for the working list plus as many
    for the output register and two hit bits, plus a conditional negator on the output.
    Shared: two more index compares (against stages 2 and 3), a ``k``-way one-hot select, two
    sign-magnitude sums (each two adders, two subtractors and a compare), a ``k``-bit negation
    (the prefix OR) and about ``4 * bits + 2 * idx_bits`` stage-register bits.  Everything
    grows linearly in ``k``; the longest path of each stage (stage 1: index compare, one-hot
    select, the choice of what stage 3 leaves; stage 2: add, late select; stage 3: magnitude
    compare and the prefix OR's carry chain in parallel, cell multiplexer) grows with
    ``log k`` (the carry chain with ``k / 4`` CARRY4 at 0.11 ns each).  By the timing ESTIMATE
    (:mod:`dpfm.rtl.timing`) the worst path is 6.7, 6.8, 7.3 and 7.6 ns at ``k`` = 4, 16, 32
    and 61 (stage 3 at k=4, 16 and 61: ``entry`` or ``entry_hit`` to a cell; stage 2 at
    k=32: ``lookup`` to ``entry``).
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"TopKMerger needs a dpfm.config.Config, not {config!r}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(candidate_layout(config))),
            "o": Out(stream.Signature(registers_layout(config))),
            "sat": Out(1),
            "kth": Out(config.formats.grad.bits),
        })

    @property
    def config(self) -> Config:
        """The :class:`~dpfm.config.Config` this merger was built for."""
        return self._config

    @property
    def k(self) -> int:
        """Registers per list (``config.k``)."""
        return self._config.k

    @property
    def latency(self) -> int:
        """Cycles from the handshake of a list's ``last`` candidate to the list being offered
        on ``o`` (when the output register is free): 3."""
        return PIPELINE_STAGES

    @property
    def ii(self) -> int:
        """Initiation interval: 1 candidate per cycle."""
        return 1

    def elaborate(self, platform):
        m = Module()
        k = self._config.k
        bits = self._config.formats.grad.bits
        cell_layout = _cell_layout(self._config)

        cells = [Signal(cell_layout, name=f"cell{u}") for u in range(k)]
        held = [Signal(cell_layout, name=f"held{u}") for u in range(k)]   # output register
        nxt = [Signal(cell_layout, name=f"next{u}") for u in range(k)]
        empty = cell_layout.const({})              # an empty cell; also the one past the end

        # stage registers: after the index lookup, after the sum
        lk = Signal(_lookup_layout(self._config), name="lookup")
        lk_hit = Signal(k, name="lookup_hit")
        en = Signal(_entry_layout(self._config), name="entry")
        en_hit = Signal(k, name="entry_hit")

        cand = self.i.payload
        advance = Signal()                         # every stage register moves on this cycle
        clear = Signal()                           # the entry being placed closes its list
        # `closing` is a copy of `en.valid & en.last` in a register of its own, so that
        # `i.ready` (which the engine's global stall ORs over every lane) is one LUT from
        # flops and does not share the net of `advance`, which enables every stage register.
        closing = Signal(name="closing")
        m.d.comb += [
            clear.eq(en.valid & en.last),
            advance.eq(~(clear & self.o.valid & ~self.o.ready)),
            self.i.ready.eq(~(closing & self.o.valid & ~self.o.ready)),
        ]

        # ============ stage 3: place the entry (cells -> next) ============================
        # Stage 2 summed it against this very list and stage 1 found the cell holding its
        # index (`en_hit`, kept up to date while the list changed), so this is the
        # one-cycle insertion.
        key_new = Cat(~en.idx, en.mag)
        before = Signal(k + 1, name="before")      # before[k]: the (empty) cell past the end
        m.d.comb += before.eq(Cat(*(key_new > Cat(~c.idx, c.mag) for c in cells), Const(1, 1)))
        # shifted[u]: the hit cell is at or above u, so R[u] (the list without it) is cell u+1
        shifted = Signal(k, name="shifted")
        m.d.comb += shifted.eq(_prefix_or(m, "shifted", en_hit))
        # place[u]: the new entry goes before R[u]
        place = Signal(k, name="place")
        m.d.comb += place.eq(Cat(*(Mux(shifted[u], before[u + 1], before[u]) & en.insert
                                   for u in range(k))))
        new = Signal(cell_layout, name="entry_cell")
        m.d.comb += [new.idx.eq(en.idx), new.mag.eq(en.mag), new.neg.eq(en.neg)]

        select = [Signal(2, name=f"select{u}") for u in range(k)]
        for u in range(k):
            left_placed = place[u - 1] if u > 0 else Const(0, 1)
            left_shifted = shifted[u - 1] if u > 0 else Const(0, 1)
            with m.If(left_placed):                # R[u-1] moves down into u
                m.d.comb += select[u].eq(Mux(left_shifted, _SELF, _LEFT))
            with m.Elif(place[u]):
                m.d.comb += select[u].eq(_NEW)
            with m.Elif(shifted[u]):               # close the hole left by the hit entry
                m.d.comb += select[u].eq(_RIGHT)
            with m.Else():
                m.d.comb += select[u].eq(_SELF)
            m.d.comb += nxt[u].eq(_pick(m, f"pick{u}", select[u], cells, u, new, empty))

        def moved(name, hits, new_hit):
            """Hit bits of the list after stage 3: they move with the cells; the cell that
            takes the new entry matches when ``new_hit``; nothing matches in a new list
            (defensive: without the clear, stale bits would only mark empty cells)."""
            out = Signal(k, name=name)
            m.d.comb += out.eq(Cat(
                _pick(m, f"{name}{u}", select[u], [hits[t] for t in range(k)], u, new_hit, 0)
                & ~clear for u in range(k)))
            return out

        # What stage 3 does to the list, as far as a later entry cares:
        # - `clear`: the entry closes its list; the next one starts a new list;
        # - `en_placed`: the entry is in the list after stage 3 (it is removed when its sum
        #   is 0; a new index enters iff it goes before cell k-1, `before` being monotone on
        #   the sorted list; a summed one always finds its old place free);
        # - `evict`: a new entry enters a full list and pushes out cell k-1.
        occupied = Signal(k, name="occupied")
        en_placed = Signal(name="entry_placed")
        evict = Signal(name="evict")
        m.d.comb += [
            occupied.eq(Cat(c.mag != 0 for c in cells)),
            en_placed.eq(en.insert & (en.summed | before[k - 1])),
            evict.eq(en.insert & ~en.summed & before[k - 1] & occupied[k - 1]),
        ]

        # ============ stage 2: sum the candidate with its held partial ====================
        # The partial was picked in stage 1 (`lk.p_*`) from the list as the entry placed
        # then left it; the entry in stage 3 now may still change it (forwarded below).
        p_mag, p_neg, p_held = lk.p_mag, lk.p_neg, lk.p_held
        fwd = Signal(name="fwd")                   # the same index as the entry in stage 3
        m.d.comb += fwd.eq(en.nonzero & lk.same_idx)
        # Two sums in parallel: with the cell's partial and with the entry in stage 3.
        s_cell = _add_sm(m, "sum_cell", bits, p_mag, p_neg, lk.mag, lk.mag_m, lk.neg)
        s_fwd = _add_sm(m, "sum_fwd", bits, en.mag, en.neg, lk.mag, lk.mag_m, lk.neg)

        # Late select: `en_placed` and `evict` come from stage 3's compare with cell k-1.
        ALONE, CELL, FWD = range(3)
        choice = Signal(2, name="partial_choice")
        with m.If(clear):
            m.d.comb += choice.eq(ALONE)
        with m.Elif(fwd):
            m.d.comb += choice.eq(Mux(en_placed, FWD, ALONE))
        with m.Elif(lk_hit[k - 1] & evict):
            m.d.comb += choice.eq(ALONE)
        with m.Else():
            m.d.comb += choice.eq(CELL)

        s_mag = Signal(bits, name="sum_mag")
        s_neg = Signal(name="sum_neg")
        s_zero = Signal(name="sum_zero")
        s_over = Signal(name="sum_over")
        s_summed = Signal(name="sum_summed")
        with m.Switch(choice):
            with m.Case(CELL):
                m.d.comb += [s_mag.eq(s_cell.mag), s_neg.eq(s_cell.neg), s_zero.eq(s_cell.zero),
                             s_over.eq(s_cell.over), s_summed.eq(p_held)]
            with m.Case(FWD):
                m.d.comb += [s_mag.eq(s_fwd.mag), s_neg.eq(s_fwd.neg), s_zero.eq(s_fwd.zero),
                             s_over.eq(s_fwd.over), s_summed.eq(1)]
            with m.Default():
                m.d.comb += [s_mag.eq(lk.mag), s_neg.eq(lk.neg), s_zero.eq(0),
                             s_over.eq(0), s_summed.eq(0)]
        en_hit_next = moved("entry_hit_next", lk_hit, lk.same_idx)

        # ============ stage 1: look the candidate's index up ==============================
        c_neg = Signal(name="cand_neg")
        c_nz = Signal(name="cand_nonzero")
        m.d.comb += [c_neg.eq(cand.val[-1]), c_nz.eq(self.i.valid & (cand.val != 0))]
        # every index compare is gated: a zero or idle candidate matches nothing
        c_hit = Signal(k, name="cand_hit")
        m.d.comb += c_hit.eq(Cat((c.idx == cand.idx) & c_nz for c in cells))
        c_same = Signal(name="cand_same_idx")     # the entry in stage 3 has this index
        m.d.comb += c_same.eq((en.idx == cand.idx) & c_nz)
        lk_hit_next = moved("lookup_hit_next", c_hit, c_same)
        # The held partial as stage 3 leaves the list: the hit cell's, unless stage 3 closes
        # the list, places an entry with this index (its sum) or removes it (nothing), or
        # evicts the hit cell; picked here so that stage 2's adders start from registers.
        c_p_mag = Signal(bits, name="cand_partial_mag")
        c_p_neg = Signal(name="cand_partial_neg")
        c_p_held = Signal(name="cand_partial_held")
        with m.If(clear):
            m.d.comb += [c_p_mag.eq(0), c_p_neg.eq(0), c_p_held.eq(0)]
        with m.Elif(c_same & en.nonzero):
            with m.If(en_placed):
                m.d.comb += [c_p_mag.eq(en.mag), c_p_neg.eq(en.neg), c_p_held.eq(1)]
            with m.Else():
                m.d.comb += [c_p_mag.eq(0), c_p_neg.eq(0), c_p_held.eq(0)]
        with m.Elif(c_hit[k - 1] & evict):
            m.d.comb += [c_p_mag.eq(0), c_p_neg.eq(0), c_p_held.eq(0)]
        with m.Else():
            m.d.comb += [
                c_p_mag.eq(_or_all([Mux(c_hit[u], cells[u].mag, 0) for u in range(k)])),
                c_p_neg.eq((c_hit & Cat(c.neg for c in cells)).any()),
                c_p_held.eq((c_hit & occupied).any()),
            ]

        # ============ state ===============================================================
        with m.If(advance):
            m.d.sync += [
                lk.valid.eq(self.i.valid),
                lk.last.eq(cand.last),
                lk.idx.eq(cand.idx),
                lk.mag.eq(Mux(c_neg, -cand.val, cand.val)),
                lk.mag_m.eq(cand.val ^ c_neg.replicate(bits)),
                lk.neg.eq(c_neg),
                lk.nonzero.eq(c_nz),
                lk.same_idx.eq((lk.idx == cand.idx) & c_nz),
                lk.p_mag.eq(c_p_mag),
                lk.p_neg.eq(c_p_neg),
                lk.p_held.eq(c_p_held),
                lk_hit.eq(lk_hit_next),
                closing.eq(lk.valid & lk.last),
                en.valid.eq(lk.valid),
                en.last.eq(lk.last),
                en.idx.eq(lk.idx),
                en.mag.eq(s_mag),
                en.neg.eq(s_neg),
                en.nonzero.eq(lk.nonzero),
                en.insert.eq(lk.nonzero & ~s_zero),
                en.summed.eq(s_summed),
                en_hit.eq(en_hit_next),
            ]
            with m.If(en.valid):
                with m.If(en.last):
                    m.d.sync += [held[u].eq(nxt[u]) for u in range(k)]
                    m.d.sync += [cells[u].eq(empty) for u in range(k)]
                with m.Else():
                    m.d.sync += [cells[u].eq(nxt[u]) for u in range(k)]
        with m.If(clear & advance):
            m.d.sync += self.o.valid.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        m.d.sync += self.sat.eq(advance & lk.nonzero & s_over)
        m.d.comb += self.kth.eq(Mux((lk.valid & lk.last) | clear, 0, cells[k - 1].mag))

        # -- output: sign-magnitude -> two's complement --------------------------------
        for u in range(k):
            m.d.comb += [
                self.o.payload[u].idx.eq(held[u].idx),
                self.o.payload[u].val.eq(Mux(held[u].neg, -held[u].mag, held[u].mag)),
            ]
        return m


_SELF, _LEFT, _RIGHT, _NEW = range(4)


def _pick(m, name, select, items, u, new, past_end):
    """Item ``u``'s next value when the list moves: itself, its left or right neighbour, or
    ``new`` (a 4:1 multiplexer per bit; ``past_end`` beyond either end)."""
    k = len(items)
    out = Signal.like(new, name=name) if not isinstance(new, int) else Signal(name=name)
    with m.Switch(select):
        with m.Case(_SELF):
            m.d.comb += out.eq(items[u])
        with m.Case(_LEFT):
            m.d.comb += out.eq(items[u - 1] if u > 0 else past_end)
        with m.Case(_RIGHT):
            m.d.comb += out.eq(items[u + 1] if u + 1 < k else past_end)
        with m.Case(_NEW):
            m.d.comb += out.eq(new)
    return out


class _SignMagnitudeSum:
    """Signals of one saturating sign-magnitude sum (see :func:`_add_sm`)."""

    def __init__(self, mag, neg, zero, over):
        self.mag, self.neg, self.zero, self.over = mag, neg, zero, over


def _add_sm(m, name, bits, p_mag, p_neg, c_mag, c_mag_m, c_neg):
    """``p + c`` in sign-magnitude, saturated to ``bits``-bit two's complement.

    An adder, two subtractors and a saturation detector work in parallel, each one carry
    chain.  ``c_mag_m`` is ``|c| - 1`` for a negative ``c`` and ``|c|`` otherwise (the
    candidate's bits exclusive-or its sign: free), so ``p + c_mag_m`` reaches
    ``2**(bits-1)`` exactly when the sum of magnitudes exceeds the clamp, ``2**(bits-1)``
    (negative) or ``2**(bits-1) - 1`` (positive): its two top bits are the saturation test,
    with no compare behind the adder.  ``p = 0`` (``p_neg = 0``) yields ``c`` itself.

    Returns
    -------
    _SignMagnitudeSum
        ``mag`` (``bits``), ``neg``, ``zero`` (the sum is exactly 0: opposite signs and equal
        magnitudes) and ``over`` (the sum saturated: the reference counts it).
    """
    top = 1 << (bits - 1)                      # |most negative|; largest positive = top - 1
    same = Signal(name=f"{name}_same")
    total = Signal(bits + 1, name=f"{name}_total")
    beyond = Signal(bits + 1, name=f"{name}_beyond")
    over = Signal(name=f"{name}_over")
    ge = Signal(name=f"{name}_ge")
    zero = Signal(name=f"{name}_zero")
    mag = Signal(bits, name=f"{name}_mag")
    neg = Signal(name=f"{name}_neg")
    m.d.comb += [
        same.eq(p_neg == c_neg),
        total.eq(p_mag + c_mag),
        beyond.eq(p_mag + c_mag_m),
        over.eq(same & (beyond[bits] | beyond[bits - 1])),
        ge.eq(p_mag >= c_mag),
        zero.eq(~same & (p_mag == c_mag)),
    ]
    with m.If(same):
        m.d.comb += [mag.eq(Mux(over, Mux(c_neg, top, top - 1), total)), neg.eq(c_neg)]
    with m.Elif(ge):
        m.d.comb += [mag.eq(p_mag - c_mag), neg.eq(p_neg)]
    with m.Else():
        m.d.comb += [mag.eq(c_mag - p_mag), neg.eq(c_neg)]
    return _SignMagnitudeSum(mag, neg, zero, over)


def _or_all(values):
    """Bitwise OR of a list of values (a one-hot select when at most one is non-zero)."""
    acc = values[0]
    for v in values[1:]:
        acc = acc | v
    return acc


def _prefix_or(m, name, bits):
    """``out[u] = bits[0] | ... | bits[u]``: the bits at and above the lowest set one, which
    is ``bits | -bits`` (two's complement), so the prefix runs along a carry chain instead of
    a tree of LUTs that the LUT mapper may share into a long ripple of wide LUTs."""
    n = len(bits)
    neg = Signal(n, name=f"{name}_neg")
    m.d.comb += neg.eq(-bits)
    return bits | neg
