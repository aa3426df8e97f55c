"""Pooled top-k selection: a bitonic sort of a block of candidates, merged into a running list.

:class:`SelectionUnit` keeps the running top-k lists of ``C`` contexts (sample lanes, neurons)
and takes a block of ``B`` candidates per cycle for any of them.  It serves the lists whose
indices never repeat (layers 0 and 1 of the engine): nothing is ever summed there, so the
top ``k`` by the order (``|val|`` descending, ``idx`` ascending) is bit-exact with
:func:`dpfm.reference.kernels.topk_insert` applied to the candidates one by one.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from dpfm.config import Config

from .layouts import entry_layout, registers_layout

__all__ = ["SelectionUnit", "block_layout", "selected_layout", "bitonic_sort_levels",
           "bitonic_merge_levels"]


def _pow2_at_least(n: int) -> int:
    p = 1
    while p < n:
        p *= 2
    return p


def block_layout(config: Config, width: int, contexts: int) -> data.StructLayout:
    """One block offered to :class:`SelectionUnit`.

    Returns
    -------
    data.StructLayout
        ``candidates``: ``width`` elements of :func:`dpfm.rtl.layouts.entry_layout`
        (``{idx, val}``, ``val`` in the gradient format, two's complement; ``val == 0``:
        no candidate); ``ctx``: ``range(contexts)``, the list it belongs to; ``first``: the
        list starts empty with this block; ``last``: the list ends with this block.
    """
    return data.StructLayout({
        "candidates": data.ArrayLayout(entry_layout(config), width),
        "ctx": range(contexts),
        "first": 1,
        "last": 1,
    })


def selected_layout(config: Config, contexts: int) -> data.StructLayout:
    """One finished list on :class:`SelectionUnit`'s ``o``.

    Returns
    -------
    data.StructLayout
        ``regs``: :func:`dpfm.rtl.layouts.registers_layout` (``k`` entries ``{idx, val}``
        sorted by (``|val|`` descending, ``idx`` ascending), empty entries ``val == 0`` last,
        their ``idx`` don't-care); ``ctx``: ``range(contexts)``.
    """
    return data.StructLayout({
        "regs": registers_layout(config),
        "ctx": range(contexts),
    })


def _cell_layout(config: Config) -> data.StructLayout:
    """One entry inside the unit, sign-magnitude (empty: ``mag == 0``)."""
    return data.StructLayout({
        "idx": unsigned(config.idx_bits),
        "mag": unsigned(config.formats.grad.bits),
        "neg": 1,
    })


def bitonic_sort_levels(n: int):
    """Compare-exchange levels of a bitonic sorting network of ``n`` (a power of two) items,
    sorting in descending order.

    Returns
    -------
    list of list of (int, int)
        One list per level; a pair ``(hi, lo)`` puts the larger of items ``hi`` and ``lo`` at
        position ``hi`` and the smaller at ``lo``.  ``log2(n) * (log2(n) + 1) / 2`` levels of
        ``n / 2`` pairs.
    """
    levels = []
    size = 2
    while size <= n:
        step = size // 2
        while step >= 1:
            pairs = []
            for a in range(n):
                b = a ^ step
                if b > a:
                    # blocks of `size` alternate direction; the last merge is descending
                    pairs.append((a, b) if (a & size) == 0 else (b, a))
            levels.append(pairs)
            step //= 2
        size *= 2
    return levels


def bitonic_merge_levels(n: int):
    """Half-cleaner levels that sort a bitonic sequence of ``n`` (a power of two) items in
    descending order: ``log2(n)`` levels of ``n / 2`` pairs ``(hi, lo)`` as in
    :func:`bitonic_sort_levels`."""
    levels = []
    step = n // 2
    while step >= 1:
        levels.append([(a, a ^ step) for a in range(n) if (a ^ step) > a])
        step //= 2
    return levels


class SelectionUnit(wiring.Component):
    """Top-k selection of candidate lists with distinct indices, ``B`` candidates per cycle,
    the running lists of ``C`` contexts kept inside.

    A *list* of context ``c`` is the candidates of the blocks of ``ctx == c`` from one with
    ``first = 1`` up to and including the next one with ``last = 1`` (a block may be both).
    The list that goes out on ``o`` equals :func:`dpfm.reference.kernels.topk_insert` applied
    to the list's candidates one by one from an empty list, *provided the non-zero candidates
    of a list have distinct indices* (the caller's guarantee; layers 0 and 1 of the engine):
    then nothing is summed and the result is the top ``k`` by the strict total order
    (``|val|`` descending, ``idx`` ascending), whatever the arrival order.  Candidates with
    ``val == 0`` are ignored (they sort below every non-zero one and leave as empty entries);
    they pad partial blocks.  The magnitude of ``-2**(bits-1)`` is ``2**(bits-1)``, one more
    than the largest positive value.  Blocks of different contexts may interleave freely.

    Parameters
    ----------
    config : dpfm.config.Config
        Supplies ``k``, ``idx_bits`` and the gradient format ``formats.grad`` (``bits`` wide
        two's complement).
    width : int
        ``B``, candidates per block, a power of two, at most ``K`` (``k`` rounded up to a
        power of two).
    contexts : int
        ``C >= 1``, running lists kept (a LUT-RAM of ``C`` words of ``k`` entries).
    stage_levels : int
        Compare-exchange levels between pipeline registers (1 or 2; default 1).

    Members
    -------
    i : ``In(stream.Signature(block_layout(config, B, C)))``
        Blocks ``{candidates: B x {idx, val}, ctx, first, last}``.  The entries may come in
        any order within a block.  The first block of a context after reset must have
        ``first = 1``.
    o : ``Out(stream.Signature(selected_layout(config, C)))``
        Finished lists ``{regs: k x {idx, val}, ctx}``, in the order their ``last`` blocks
        were taken; ``regs`` sorted by (``|val|`` descending, ``idx`` ascending), empty
        entries (``val == 0``, ``idx`` don't-care) last.
    kth_ctx : ``In(range(C))``
        The context whose ``k``-th magnitude ``kth`` shows.
    kth : ``Out(bits)``
        The magnitude of entry ``k - 1`` of context ``kth_ctx``'s open list as left by every
        block of it whose merge is complete (0 while it holds fewer than ``k`` entries), and
        0 while a ``last`` block of that context is in the pipeline or after its list went
        out.  Since a list of distinct indices only grows, the ``k``-th magnitude never
        decreases while the list is open: a candidate of that list whose magnitude is below
        ``kth`` cannot be in its final top ``k``, so the caller may skip a block all of
        whose magnitudes are below it.  Combinational from ``kth_ctx`` (a LUT-RAM read and
        the in-flight compare).

    Raises
    ------
    TypeError
        If ``config`` is not a :class:`~dpfm.config.Config` or a count is not an ``int``.
    ValueError
        If ``width`` is not a power of two in ``1..K``, ``contexts < 1`` or ``stage_levels``
        is not 1 or 2.

    Notes
    -----
    **Datapath.**  All entries inside are sign-magnitude ``{idx, mag, neg}`` and are ordered
    by the unsigned key ``{mag, ~idx}`` (the (``|val|`` desc, ``idx`` asc) order; ``val == 0``
    has the smallest keys).  Levels of compare-exchange cells (one key compare, two
    multiplexers of ``idx_bits + bits + 1`` bits):

    1. *Input*: the two's complement candidates become sign-magnitude (one negation each),
       registered with ``ctx``, ``first`` and ``last``.
    2. *Sort*: a bitonic network sorts the block descending: ``log2 B (log2 B + 1) / 2``
       levels of ``B / 2`` cells.
    3. *Merge*: the context's running list ``A`` (``K`` entries, read from the LUT-RAM
       asynchronously; an empty list when ``first``) and the sorted block ``S`` (padded to
       ``K`` with empty entries) give ``M_u = max(A_u, S_{K-1-u})``: a bitonic sequence
       holding the top ``K`` of both (``B`` cells, the rest are wires).  ``log2 K``
       half-cleaner levels of ``K / 2`` cells sort it; its first ``k`` entries are the new
       running list, written back from the final register, and, for a ``last`` block, moved
       to the output register.  The output converts back to two's complement.

    A register follows every ``stage_levels`` levels, so the pipeline has ``S`` stages from
    the input register to the final register (:attr:`stages`), and every stage advances
    together (one enable).

    **Timing.**  Throughput one block per cycle while consecutive blocks of one context are
    at least :attr:`hazard_window` ``+ 1`` blocks apart, or start a list (``first``: the
    running list is not read).  Otherwise ``i.ready`` stays low (a hazard stall) until the
    context's previous block has written its running list back: a block of the same context
    that follows directly waits :attr:`hazard_window` cycles.  Latency: a ``last`` block's
    list is registered on ``o`` (``o.valid`` rises) ``S + 1`` clock edges after the block's
    handshake, and transfers at the next edge when ``o.ready``: :attr:`latency` ``= S + 2``
    (the convention of :attr:`dpfm.rtl.topk.TopKMerger.latency`); a block's running list is
    written back ``S + 1`` edges after its handshake.  At ``k = 16``: ``S`` = 8, 11, 15 and
    ``hazard_window`` = 5 for ``B`` = 4, 8, 16.  The output register holds one list; while
    it is held (``o.valid`` and not ``o.ready``) and a ``last`` block reaches the final
    register, the whole pipeline and ``i.ready`` hold.  ``i.ready`` depends combinationally on
    ``o.ready``, on ``i.payload.ctx`` and ``i.payload.first`` (the hazard compare) and on
    registers, never on ``i.valid``.

    **Resources (intuition).**  ``B log2 B (log2 B + 1) / 4`` sort cells, ``B`` max cells and
    ``K log2 K / 2`` merge cells, each a ``bits + idx_bits`` compare and ``2 (bits +
    idx_bits + 1)`` multiplexer bits; a pipeline register of ``B`` or ``K`` entries per
    stage; the running lists in ``k (bits + idx_bits + 1) / 6`` RAM32M (4 LUT each, up to
    32 contexts); ``B`` negations in, ``k`` out.  By the Yosys estimate (k=16, idx 12 bits,
    grad 18 bits, C=10; docs/select.md): 4,487, 6,131 and 11,052 LUT at ``B`` = 4, 8, 16
    (1,122, 766 and 691 LUT per candidate per cycle; TopKMerger: 2,460 for one), no DSP or
    block RAM, and by the timing ESTIMATE (:mod:`dpfm.rtl.timing`) a worst path of 6.6 ns
    at every ``B``: the LUT-RAM read, the max level's key compare and its multiplexer.
    """

    def __init__(self, config: Config, *, width: int, contexts: int, stage_levels: int = 1):
        if not isinstance(config, Config):
            raise TypeError(f"SelectionUnit needs a dpfm.config.Config, not {config!r}")
        for name, value in (("width", width), ("contexts", contexts),
                            ("stage_levels", stage_levels)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"SelectionUnit {name} must be an int, not {value!r}")
        span = _pow2_at_least(config.k)
        if width < 1 or width & (width - 1) or width > span:
            raise ValueError(f"SelectionUnit width must be a power of two in 1..{span} "
                             f"(k={config.k} rounded up to a power of two), not {width!r}")
        if contexts < 1:
            raise ValueError(f"SelectionUnit contexts must be at least 1, not {contexts!r}")
        if stage_levels not in (1, 2):
            raise ValueError(f"SelectionUnit stage_levels must be 1 or 2, not {stage_levels!r}")
        self._config = config
        self._width = width
        self._contexts = contexts
        self._span = span
        self._stage_levels = stage_levels
        self._sort = bitonic_sort_levels(width)
        self._merge = bitonic_merge_levels(span)
        # levels: the sort, the max level, the half-cleaners; registers after every group
        n_levels = len(self._sort) + 1 + len(self._merge)
        self._groups = [list(range(g, min(g + stage_levels, n_levels)))
                        for g in range(0, n_levels, stage_levels)]
        super().__init__({
            "i": In(stream.Signature(block_layout(config, width, contexts))),
            "o": Out(stream.Signature(selected_layout(config, contexts))),
            "kth_ctx": In(range(contexts)),
            "kth": Out(config.formats.grad.bits),
        })

    @property
    def config(self) -> Config:
        """The :class:`~dpfm.config.Config` this unit was built for."""
        return self._config

    @property
    def k(self) -> int:
        """Entries per list (``config.k``)."""
        return self._config.k

    @property
    def width(self) -> int:
        """``B``, candidates per block."""
        return self._width

    @property
    def contexts(self) -> int:
        """``C``, running lists kept."""
        return self._contexts

    @property
    def stages(self) -> int:
        """Pipeline registers after the input register, up to the final register."""
        return len(self._groups)

    @property
    def hazard_window(self) -> int:
        """Blocks after a block of context ``c`` that may not read ``c``'s running list (the
        stages from the one that reads the LUT-RAM to the final register, which writes it)."""
        return self.stages - self._read_group()

    @property
    def latency(self) -> int:
        """Clock edges from a ``last`` block's handshake to the transfer of its list on ``o``
        when nothing waits (``o.valid`` rises ``stages + 1`` edges after the handshake and
        the list can go at the next edge): ``stages + 2``, counted like
        :attr:`dpfm.rtl.topk.TopKMerger.latency`."""
        return self.stages + 2

    def _read_group(self) -> int:
        max_level = len(self._sort)
        return next(g for g, levels in enumerate(self._groups) if max_level in levels)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k, span, width = cfg.k, self._span, self._width
        bits = cfg.formats.grad.bits
        cell = _cell_layout(cfg)
        empty = cell.const({})
        ctx_shape = Shape.cast(range(self._contexts))

        def key(e):
            return Cat(~e.idx, e.mag)

        def stage_reg(name, n):
            return {
                "valid": Signal(name=f"{name}_valid"),
                "ctx": Signal(ctx_shape, name=f"{name}_ctx"),
                "first": Signal(name=f"{name}_first"),
                "last": Signal(name=f"{name}_last"),
                "e": [Signal(cell, name=f"{name}_e{u}") for u in range(n)],
            }

        # running lists, sign-magnitude, k entries per context
        lists = Memory(shape=data.ArrayLayout(cell, k), depth=self._contexts, init=[])
        kths = Memory(shape=unsigned(bits), depth=self._contexts, init=[])
        m.submodules.lists = lists
        m.submodules.kths = kths
        rd = lists.read_port(domain="comb")
        wr = lists.write_port()
        kth_rd = kths.read_port(domain="comb")
        kth_wr = kths.write_port()

        advance = Signal()
        final_last = Signal()   # the final register holds a valid `last` block

        # ---- input register: two's complement -> sign-magnitude ---------------------------
        stages = [stage_reg("in", width)]
        blk = self.i.payload
        take = Signal()
        m.d.comb += take.eq(self.i.valid & self.i.ready)
        with m.If(advance):
            r = stages[0]
            m.d.sync += [r["valid"].eq(take), r["ctx"].eq(blk.ctx), r["first"].eq(blk.first),
                         r["last"].eq(blk.last)]
            for u in range(width):
                val = blk.candidates[u].val
                neg = val[-1]
                m.d.sync += [r["e"][u].idx.eq(blk.candidates[u].idx),
                             r["e"][u].mag.eq(Mux(neg, -val, val)),
                             r["e"][u].neg.eq(neg)]

        # ---- the levels ----------------------------------------------------------------
        def exchange(name, items, pairs):
            out = list(items)
            for n, (hi, lo) in enumerate(pairs):
                swap = Signal(name=f"{name}_swap{n}")
                m.d.comb += swap.eq(key(items[lo]) > key(items[hi]))
                a = Signal(cell, name=f"{name}_x{hi}")
                b = Signal(cell, name=f"{name}_x{lo}")
                m.d.comb += [a.eq(Mux(swap, items[lo], items[hi])),
                             b.eq(Mux(swap, items[hi], items[lo]))]
                out[hi], out[lo] = a, b
            return out

        n_sort = len(self._sort)
        for g, levels in enumerate(self._groups):
            src = stages[-1]
            items = src["e"]
            first = src["first"]
            for lv in levels:
                if lv < n_sort:
                    items = exchange(f"sort{lv}", items, self._sort[lv])
                elif lv == n_sort:
                    # the running list of the block's context (empty when `first`)
                    m.d.comb += rd.addr.eq(src["ctx"])
                    run = [rd.data[u] if u < k else empty for u in range(span)]
                    padded = list(items) + [empty] * (span - width)
                    merged = []
                    for u in range(span):
                        a, b = run[u], padded[span - 1 - u]
                        if u < span - width:          # b is padding: an empty entry
                            out = Signal(cell, name=f"max_m{u}")
                            m.d.comb += out.eq(Mux(first, 0, a))
                        elif u >= k:                  # a is padding
                            out = b
                        else:
                            take_b = Signal(name=f"max_take{u}")
                            m.d.comb += take_b.eq(first | (key(b) > key(a)))
                            out = Signal(cell, name=f"max_m{u}")
                            m.d.comb += out.eq(Mux(take_b, b, a))
                        merged.append(out)
                    items = merged
                else:
                    h = lv - n_sort - 1
                    items = exchange(f"merge{h}", items, self._merge[h])
            dst = stage_reg(f"st{g + 1}", len(items))
            with m.If(advance):
                m.d.sync += [dst["valid"].eq(src["valid"]), dst["ctx"].eq(src["ctx"]),
                             dst["first"].eq(src["first"]), dst["last"].eq(src["last"])]
                m.d.sync += [d.eq(s) for d, s in zip(dst["e"], items)]
            stages.append(dst)

        final = stages[-1]
        top = final["e"][:k]

        # ---- write back, output register ---------------------------------------------------
        held = [Signal(cell, name=f"held{u}") for u in range(k)]
        held_ctx = Signal(ctx_shape, name="held_ctx")
        m.d.comb += [
            final_last.eq(final["valid"] & final["last"]),
            advance.eq(~(final_last & self.o.valid & ~self.o.ready)),
            wr.addr.eq(final["ctx"]),
            wr.en.eq(advance & final["valid"]),
            kth_wr.addr.eq(final["ctx"]),
            kth_wr.en.eq(advance & final["valid"]),
            kth_wr.data.eq(Mux(final["last"], 0, top[k - 1].mag)),
        ]
        m.d.comb += [wr.data[u].eq(top[u]) for u in range(k)]
        with m.If(advance & final_last):
            m.d.sync += [h.eq(t) for h, t in zip(held, top)]
            m.d.sync += held_ctx.eq(final["ctx"])
            m.d.sync += self.o.valid.eq(1)
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        for u in range(k):
            m.d.comb += [self.o.payload.regs[u].idx.eq(held[u].idx),
                         self.o.payload.regs[u].val.eq(Mux(held[u].neg, -held[u].mag,
                                                           held[u].mag))]
        m.d.comb += self.o.payload.ctx.eq(held_ctx)

        # ---- hazard: a block must not read a running list still in the pipeline ---------
        # A block taken now reads its context's list `1 + read_group` steps later; a block
        # now in stage `t` writes its list back at the end of the step `stages - t` steps from
        # now, in time iff `t >= stages - read_group`: the first `hazard_window` stages are
        # the ones to watch.  A `first` block reads nothing.
        watch = stages[:self.hazard_window]
        hazard = Signal()
        m.d.comb += hazard.eq(~self.i.payload.first & _any(
            [s["valid"] & (s["ctx"] == self.i.payload.ctx) for s in watch]))
        m.d.comb += self.i.ready.eq(advance & ~hazard)

        # ---- kth of a chosen context -------------------------------------------------------
        closing = _any([s["valid"] & s["last"] & (s["ctx"] == self.kth_ctx) for s in stages])
        m.d.comb += [kth_rd.addr.eq(self.kth_ctx),
                     self.kth.eq(Mux(closing, 0, kth_rd.data))]
        return m


def _any(terms):
    """OR of a list of 1-bit values (0 when empty)."""
    acc = Const(0, 1)
    for t in terms:
        acc = acc | t
    return acc
