"""The first layer's pre-activations by a bank of multipliers per lane, its register lists by
remapping one sorted list per sample (:class:`Layer0Unit`).

In the first layer (policy ``stream``, :func:`dpfm.reference.kernels.merge_layer`) the
candidates of neuron ``j`` are the new entries ``(j*n_in + i, new_entry(a_i))`` for
``i = 0..n_in-1`` and the bias entry ``(boff0 + j, one)``: the same values for every ``j``, with
indices in the order of ``i`` (the bias last), and no index repeats.  So every neuron's top-k
list is one list ``L*`` of ``(i, v)``, ``i`` in ``0..n_in`` (``n_in`` standing for the bias),
sorted once per sample and renamed per neuron.  The pre-activation
``z_j = sum_i W[j,i]*a_i + b_j`` is an exact integer sum, so any order of summation is
bit-exact; this unit forms it ``D`` products per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from dpfm.config import Config

from .fixmath import round_shift, saturate
from .layouts import registers_layout

__all__ = ["Layer0Unit", "lane_z_layout", "engine_layer0_shape", "layer0_timing", "DSP_P_BITS", "MAX_MULTS",
           "DSP_BUDGET"]

#: Width of a DSP48E1's post-adder (the ``P`` register): the chain's sums must fit it.
DSP_P_BITS = 48
#: The most multipliers per lane the engine gives the unit.
MAX_MULTS = 8
#: DSP48E1 the engine lets the unit take over all lanes (of the XC7Z020's 220; the rest of
#: the engine takes about 82 at batch 10).
DSP_BUDGET = 80


def _pow2(n):
    return n >= 1 and (n & (n - 1)) == 0


def lane_z_layout(config: Config) -> data.StructLayout:
    """What :class:`Layer0Unit` offers per lane and neuron on ``z``.

    Returns
    -------
    data.StructLayout
        ``z``: ``signed(value.bits)``, the pre-activation in the value format (two's
        complement, ``value.frac`` fractional bits), ``sat(round_shift(acc, weight.frac))``
        as the engine's lane datapath forms it (what an
        :class:`~dpfm.rtl.activation.ActivationUnit` takes); ``zsat``: 1 bit, ``z`` was
        clamped (the reference counts a value saturation).
    """
    return data.StructLayout({"z": signed(config.formats.value.bits), "zsat": 1})


def layer0_timing(config: Config, mults: int) -> tuple[int, int, int]:
    """``(C, latency, fifo_depth)`` of a :class:`Layer0Unit` with ``D = mults``: chunks per
    neuron ``ceil(n_in / D)``, ``D + 6`` cycles from a neuron's last chunk to its ``z``, and
    the neurons its output FIFO holds, ``max(2, ceil((C + latency + 1) / C))``."""
    chunks = -(-config.net[0] // mults)
    latency = mults + 6
    return chunks, latency, max(2, -(-(chunks + latency + 1) // chunks))


def engine_layer0_shape(config: Config) -> tuple[int, int]:
    """``(word, mults)`` of the engine's :class:`Layer0Unit` for ``config``.

    ``D = mults`` is the largest power of two at most :data:`MAX_MULTS`, at most
    ``n_in`` rounded up to a power of two (a chunk needs no more) and with ``D * batch`` at
    most :data:`DSP_BUDGET` (1 at least); ``M = word`` is ``max(D, update_lanes)``, so that
    an update word of the weight memory lands in one word of the unit's copy.
    """
    n_in = config.net[0]
    d = min(MAX_MULTS, 1 << (n_in - 1).bit_length())
    while d > 1 and d * config.batch > DSP_BUDGET:
        d //= 2
    return max(d, config.update_lanes), d


class Layer0Unit(wiring.Component):
    """Layer 0 of the MLP for ``config.batch`` lanes in lockstep: per neuron ``j`` and lane,
    the pre-activation ``z_j`` and the register list, from one sorted list ``L*`` per lane.

    For every step (``start``) the unit takes, in this order or overlapped:

    - the first layer's inputs ``a_i`` of every lane (``i = 0..n_in-1``, one ``i`` per transfer
      on ``a``), kept in a per-lane register file;
    - per lane, the sorted list ``L*`` on ``lists[s]``: the lane's
      :class:`~dpfm.rtl.topk.TopKMerger` fed the ``n_in + 1`` candidates
      ``(i, sat(rnd(a_i, value.frac - grad.frac)))`` for ``i < n_in`` and ``(n_in, one)``
      last (index = the input number, ``n_in`` = the bias);
    - the first layer's weights and biases from the weight memory (read port ``w_*``);

    and offers, for ``j = 0..n_out-1``, every lane's ``z_j`` on ``z`` and each lane's list on
    ``regs[s]``.  Bit-exact with
    :meth:`dpfm.reference.MLP.step_raw` (policy ``stream``): ``z_j`` is the reference's layer 0
    ``z`` and the list its ``merged_idx``/``merged_val``.

    Parameters
    ----------
    config : Config
        ``net[0]`` (``n_in``) and ``net[1]`` (``n_out``), ``batch`` (lanes), ``k``,
        ``idx_bits`` and the formats ``value`` (inputs, ``z``), ``weight`` (``W``, ``b``) and
        ``grad`` (the lists).
    word : int
        ``M``, weights per word of the weight memory: ``W[p]`` (flat parameter ``p``, the
        reference's :func:`~dpfm.reference.mlp.param_layout`) is lane ``p % M`` (bits
        ``[(p%M)*weight.bits, (p%M+1)*weight.bits)``) of word ``p // M``.  A power of two
        (default 8).
    mults : int, optional
        ``D``, multipliers per lane (DSP48E1, one ``value x weight`` product each), a power
        of two ``<= word``; ``word`` by default.
    lists : bool, optional
        With the list part (default): the members ``lists`` and ``regs`` below.  Without it
        (the engine's use: the lane's merger holds ``L*`` for every neuron and the readers
        rename its indices) the unit forms only ``z``, and ``busy`` ends with the last
        transfer on ``z``.

    Members
    -------
    start : ``In(1)``
        Pulse: begin a step (ignored while ``busy``).  Clears the unit's per-step state.
    busy : ``Out(1)``
        From the cycle after ``start`` until every neuron has been transferred on ``z`` and on
        every ``regs[s]``.
    a : ``In(stream.Signature(data.ArrayLayout(signed(value.bits), batch)))``
        Input ``a_i`` of every lane (value format), ``i`` counting transfers from 0; ready
        while ``busy`` and fewer than ``n_in`` have been taken.
    lists : ``In(stream.Signature(registers_layout(config))).array(batch)``
        Per lane, ``L*`` (sorted by ``|val|`` descending, index ascending, empty entries
        last) with indices ``0..n_in``; one transfer per lane and step, ready while ``busy``
        until taken.  Fits a TopKMerger's ``o`` (``wiring.connect``).
    w_addr : ``Out(range(ceil(n_params / word)))``, w_en : ``Out(1)``, w_data : ``In(word * weight.bits)``
        A synchronous read port of the weight memory: ``w_data`` in cycle ``t + 1`` is the
        word at ``w_addr`` of cycle ``t`` when ``w_en`` was high (held otherwise).
    z : ``Out(stream.Signature(data.ArrayLayout(lane_z_layout(config), batch)))``
        One transfer per neuron ``j = 0..n_out-1``, in order, every lane at once:
        ``{z, zsat}`` (:func:`lane_z_layout`).
    regs : ``Out(stream.Signature(registers_layout(config))).array(batch)``
        Per lane, one transfer per neuron ``j``, in order, independent of ``z`` and of the
        other lanes: ``L*`` with index ``i`` renamed to ``off0 + j*n_in + i`` and ``n_in`` to
        ``boff0 + j`` (``off0 = 0``, ``boff0 = n_out*n_in``, the first bias), values and order
        unchanged; empty entries (``val == 0``) keep a don't-care index.  Valid from the
        cycle after ``L*`` is taken; what a :class:`~dpfm.rtl.dual_scale.DualScale` takes as
        ``grads`` (it replaces the merger's ``o`` in the engine's join).

    Raises
    ------
    TypeError
        ``config`` not a Config, ``word`` or ``mults`` not an int.
    ValueError
        ``word`` or ``mults`` not a power of two, ``mults > word``, or the exact sum of ``D``
        products wider than a DSP48E1's 48-bit post-adder.

    Notes
    -----
    **Schedule.**  ``C = ceil(n_in / D)`` chunks per neuron; chunk ``c`` of neuron ``j``
    multiplies ``a[cD .. cD+D-1]`` by ``W[j, cD .. cD+D-1]`` (flat ``j*n_in + cD + d``, lanes
    past ``n_in`` masked to 0).  The rows are contiguous in ``W``, so the chunks of the whole
    layer read the words ``0 .. (n_out*n_in - 1) // M + 1`` in ascending order, at most one new
    word per chunk (``D <= M``): a window of two words (the held word ``q`` and the read data,
    word ``q + 1``) rotated by ``base % M`` gives the ``D`` weights, shared by every lane.  The
    step starts with ``nb = (boff0 + n_out - 1) // M - boff0 // M + 1`` reads of the bias
    words (held in registers) and one read priming the window, overlapped with the inputs.

    **Timing.**  Initiation interval ``C`` cycles per neuron (one chunk per cycle, the chunks
    of consecutive neurons back to back), after the first chunk of the step: a chunk ``c``
    issues once the inputs ``a[cD .. min(n_in, cD+D)-1]`` are in (so neuron 0 follows the
    inputs), at the earliest ``nb + 1`` cycles after ``start``.  Latency :attr:`latency`
    ``= D + 6`` cycles from the issue of a neuron's last chunk to its ``z.valid``:
    the read, window and rotation, the DSP chain (``D + 1`` stages), accumulate,
    round/saturate into the output FIFO, the FIFO.  A step without backpressure and with
    ``L*`` in time takes about ``max(nb + 1, D) + n_out * C + latency`` cycles from ``start``
    when ``a`` streams one input per cycle from ``start + 1`` (measured in
    tests/test_rtl_layer0.py).  Backpressure on ``z`` holds only the issue: the pipeline
    never stalls; a credit counter keeps at most :attr:`fifo_depth` neurons between issue and
    transfer, enough to sustain one neuron per ``C`` cycles.

    **Datapath per lane.**  ``D`` DSP48E1 in a systolic chain ``P_d = a*w + P_{d-1}`` (the
    operands of position ``d`` enter ``d`` cycles late: the register file is ``D`` memories
    ``a[d::D]`` read at a staggered address shared by the lanes, the weights a shared delay
    line), so the sum of a chunk costs no LUT adder; one LUT accumulator
    ``acc = (first ? b << value.frac : acc) + chunk`` of :attr:`acc_bits` bits, exact; then
    ``z = sat(round_shift(acc, weight.frac))``.  The lists: ``k`` index registers per lane,
    loaded from ``L*`` (``i -> i``, ``n_in -> boff0``) and stepped by ``n_in`` (``1`` for the
    bias entry) at every transfer on ``regs[s]``.
    """

    def __init__(self, config: Config, *, word: int = 8, mults: int | None = None,
                 lists: bool = True):
        if not isinstance(config, Config):
            raise TypeError(f"Layer0Unit needs a dpfm.config.Config, not {config!r}")
        if mults is None:
            mults = word
        for name, v in (("word", word), ("mults", mults)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, not {v!r}")
            if not _pow2(v):
                raise ValueError(f"{name}={v} is not a power of two")
        if mults > word:
            raise ValueError(f"mults={mults} exceeds word={word}: a chunk must span at most two words")
        self._config = config
        self._word = word
        self._mults = mults
        fm = config.formats
        n_in, n_out = config.net[0], config.net[1]
        self._chunks, self._latency, self._fifo_depth = layer0_timing(config, mults)
        pbits = fm.value.bits + fm.weight.bits
        # |sum of n_in products| + |b << value.frac| < (n_in + 1) * 2**(pbits - 2)
        self._acc_bits = pbits - 1 + (n_in + 1).bit_length()
        # |sum of D products| <= D * 2**(pbits - 2)
        self._chain_bits = pbits - 1 + mults.bit_length()
        if self._chain_bits > DSP_P_BITS:
            raise ValueError(f"a chunk of {mults} products needs {self._chain_bits} bits, more "
                             f"than the {DSP_P_BITS}-bit DSP48E1 post-adder")
        words = -(-config.n_params // word)
        B = config.batch
        self._lists = bool(lists)
        members = {
            "start": In(1),
            "busy": Out(1),
            "a": In(stream.Signature(data.ArrayLayout(signed(fm.value.bits), B))),
            "w_addr": Out(range(max(2, words))),
            "w_en": Out(1),
            "w_data": In(word * fm.weight.bits),
            "z": Out(stream.Signature(data.ArrayLayout(lane_z_layout(config), B))),
        }
        if self._lists:
            members["lists"] = In(stream.Signature(registers_layout(config))).array(B)
            members["regs"] = Out(stream.Signature(registers_layout(config))).array(B)
        super().__init__(members)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def word(self) -> int:
        """``M``, weights per weight-memory word."""
        return self._word

    @property
    def mults(self) -> int:
        """``D``, multipliers per lane."""
        return self._mults

    @property
    def chunks(self) -> int:
        """``C = ceil(n_in / D)``: cycles per neuron (initiation interval)."""
        return self._chunks

    @property
    def latency(self) -> int:
        """Cycles from the issue of a neuron's last chunk to its ``z.valid``: ``D + 6``."""
        return self._latency

    @property
    def acc_bits(self) -> int:
        """Bits of the exact per-lane accumulator (``z_j`` before rounding)."""
        return self._acc_bits

    @property
    def fifo_depth(self) -> int:
        """Neurons the output FIFO holds (and the credit counter allows in flight)."""
        return self._fifo_depth

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        fm = cfg.formats
        B, K = cfg.batch, cfg.k
        M, D, C = self._word, self._mults, self._chunks
        n_in, n_out = cfg.net[0], cfg.net[1]
        off0 = cfg.offsets[0]
        boff0 = off0 + n_out * n_in
        wb, vb = fm.weight.bits, fm.value.bits
        fv, fw = fm.value.frac, fm.weight.frac
        vshape, wshape = signed(vb), signed(wb)
        lm = (M - 1).bit_length()              # log2 M
        n_last = n_in - (C - 1) * D            # inputs in a neuron's last chunk (1..D)
        bw0 = boff0 // M                       # first bias word
        nb = (boff0 + n_out - 1) // M - bw0 + 1
        r0 = boff0 % M                         # lane of b_0 in word bw0
        q0 = off0 // M
        span = n_out * n_in + M                # bases stay below this
        F = self._fifo_depth
        acc_shape = signed(self._acc_bits)

        # ------------------------------------------------------------ sequencer (stage S0)
        j = Signal(range(max(2, n_out)))       # neuron of the next chunk
        c = Signal(range(max(2, C)))           # its chunk
        base = Signal(range(span))             # flat index (from off0) of its first weight
        rot = Signal(range(M)) if M > 1 else Const(0, 1)
        if M > 1:
            m.d.comb += rot.eq((base + off0 % M)[:lm])
        op_t = Signal(range(max(2, nb)))       # bias word being read
        i_cnt = Signal(range(n_in + 1))        # inputs taken
        i_pos = Signal(range(max(2, D)))       # i % D
        i_word = Signal(range(max(2, C)))      # i // D
        words_in = Signal(range(C + 1))        # complete chunks of inputs
        inflight = Signal(range(F + 1))        # neurons between first-chunk issue and o
        n_done = Signal(range(n_out + 1))      # neurons transferred on z
        z_end = n_done == n_out
        regs_end = Signal()                    # every lane has delivered every list
        loaded = Signal(B)                     # L* taken, per lane
        o_take = Signal()

        KIND_NONE, KIND_BIAS, KIND_PRIME, KIND_CHUNK = 0, 1, 2, 3
        kind0 = Signal(2)
        last_c = c == C - 1
        step = Mux(last_c, n_last, D)
        base_next = base + step
        shift0 = (base_next + off0 % M)[lm:] != (base + off0 % M)[lm:]
        credit_ok = (inflight < F) | (c != 0)
        issue = Signal()
        m.d.comb += issue.eq((c < words_in) & credit_ok)

        with m.FSM(name="l0seq"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.busy.eq(1), j.eq(0), c.eq(0), base.eq(0), op_t.eq(0),
                                 i_cnt.eq(0), i_pos.eq(0), i_word.eq(0), words_in.eq(0),
                                 n_done.eq(0), loaded.eq(0)]
                    m.next = "BIAS"
            with m.State("BIAS"):
                m.d.comb += [kind0.eq(KIND_BIAS), self.w_addr.eq(bw0 + op_t)]
                m.d.sync += op_t.eq(op_t + 1)
                with m.If(op_t == nb - 1):
                    m.next = "PRIME"
            with m.State("PRIME"):
                m.d.comb += [kind0.eq(KIND_PRIME), self.w_addr.eq(q0)]
                m.next = "DOT"
            with m.State("DOT"):
                m.d.comb += self.w_addr.eq(((base + off0) >> lm) + 1)
                with m.If(issue):
                    m.d.comb += kind0.eq(KIND_CHUNK)
                    m.d.sync += [base.eq(base_next), c.eq(Mux(last_c, 0, c + 1))]
                    with m.If(last_c):
                        m.d.sync += j.eq(j + 1)
                        with m.If(j == n_out - 1):
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If(z_end & regs_end):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        m.d.comb += self.w_en.eq(1)

        # credits: +1 at a neuron's first chunk, -1 at its transfer on o
        first0 = (kind0 == KIND_CHUNK) & (c == 0)
        m.d.sync += inflight.eq(inflight + first0 - o_take)

        # ------------------------------------------------------------ inputs
        a_take = Signal()
        m.d.comb += [self.a.ready.eq(self.busy & (i_cnt != n_in)), a_take.eq(self.a.valid & self.a.ready)]
        with m.If(a_take):
            m.d.sync += i_cnt.eq(i_cnt + 1)
            with m.If((i_pos == D - 1) | (i_cnt == n_in - 1)):
                m.d.sync += [i_pos.eq(0), i_word.eq(i_word + 1), words_in.eq(words_in + 1)]
            with m.Else():
                m.d.sync += i_pos.eq(i_pos + 1)

        # ------------------------------------------------------------ stage S1: window, biases
        kind1 = Signal(2)
        rot1 = Signal(range(M)) if M > 1 else Const(0, 1)
        shift1 = Signal()
        last1 = Signal()
        m.d.sync += [kind1.eq(kind0), shift1.eq(shift0), last1.eq(last_c)]
        if M > 1:
            m.d.sync += rot1.eq(rot)
        win0 = Signal(M * wb)
        bwords = [Signal(M * wb, name=f"bword{t}") for t in range(nb)]
        with m.If((kind1 == KIND_PRIME) | ((kind1 == KIND_CHUNK) & shift1)):
            m.d.sync += win0.eq(self.w_data)
        bias_t1 = Signal.like(op_t)
        m.d.sync += bias_t1.eq(op_t)
        with m.If(kind1 == KIND_BIAS):
            with m.Switch(bias_t1):
                for t in range(nb):
                    with m.Case(t):
                        m.d.sync += bwords[t].eq(self.w_data)
        pair = Cat(win0, self.w_data)
        wal = [Signal(wshape, name=f"wal{d}") for d in range(D)]     # stage T0: aligned weights
        for d in range(D):
            choices = [pair[(r + d) * wb:(r + d + 1) * wb].as_signed() for r in range(M)]
            wsel = Array(choices)[rot1] if M > 1 else choices[0]
            keep = Const(1, 1) if d < n_last else ~last1
            m.d.sync += wal[d].eq(Mux(keep, wsel, 0))

        # the bias of each issued neuron, selected at S0 from the held words
        bflat = Cat(*bwords)
        bsel = Array([bflat[(r0 + t) * wb:(r0 + t + 1) * wb].as_signed() for t in range(n_out)])[j]

        # ------------------------------------------------------------ control delay line
        # S0 -> accumulate stage (cycle t0 + D + 3) -> z stage (t0 + D + 4)
        def delay(sig, n, name):
            regs = [sig]
            for t in range(n):
                r = Signal.like(sig, name=f"{name}_d{t + 1}")
                m.d.sync += r.eq(regs[-1])
                regs.append(r)
            return regs[-1]
        ACC = D + 3
        v0 = kind0 == KIND_CHUNK
        v_acc = delay(v0, ACC, "v")
        first_acc = delay(c == 0, ACC, "first")
        last_acc = delay(last_c, ACC, "last")
        b0 = Signal(wshape)
        m.d.comb += b0.eq(bsel)
        b_acc = delay(b0, ACC, "b")
        z_v = Signal()
        m.d.sync += z_v.eq(v_acc & last_acc)

        # shared: weights of position d enter d cycles after T0; the register files' read
        # address of position d is the chunk, d + 1 cycles after S0
        w_pos = [delay(wal[d], d, f"w{d}") for d in range(D)]
        c1 = Signal.like(c)
        m.d.sync += c1.eq(c)
        raddr = [delay(c1, d, f"ra{d}") for d in range(D)]

        # ------------------------------------------------------------ output FIFO and lists
        zf = fifo.SyncFIFOBuffered(width=B * (vb + 1), depth=F)
        m.submodules.zfifo = zf
        z_parts = []

        reg_layout = registers_layout(cfg)
        ib = cfg.idx_bits
        r_end = []                             # per lane: every list delivered
        for s in range(B):
            # register file: D memories, a[d::D], written at i_word, lane s's input
            a_s = self.a.payload[s]
            ops = []
            for d in range(D):
                mem = Memory(shape=vshape, depth=max(2, C), init=[])   # depth 1 would give a 0-bit address
                m.submodules[f"a{s}_{d}"] = mem
                wp = mem.write_port()
                rp = mem.read_port(transparent_for=())
                m.d.comb += [wp.addr.eq(i_word), wp.data.eq(a_s), wp.en.eq(a_take & (i_pos == d)),
                             rp.addr.eq(raddr[d]), rp.en.eq(1)]
                ops.append(rp.data)
            # the chain: m_d = a_d * w_d (registered), P_d = m_d + P_{d-1} (registered)
            prev = None
            for d in range(D):
                md = Signal(signed(vb + wb), name=f"m{s}_{d}")
                pd = Signal(signed(self._chain_bits), name=f"p{s}_{d}")
                m.d.sync += md.eq(ops[d] * w_pos[d])
                m.d.sync += pd.eq(md if prev is None else md + prev)
                prev = pd
            acc = Signal(acc_shape, name=f"acc{s}")
            with m.If(v_acc):
                m.d.sync += acc.eq(Mux(first_acc, b_acc << fv, acc) + prev)
            z, zsat = saturate(round_shift(acc, fw), fm.value)
            z_parts.append(Cat(z, zsat))

            if not self._lists:
                continue
            # L*: loaded with neuron 0's indices, stepped at every transfer on regs[s]
            lst, ro = self.lists[s], self.regs[s]
            regs = ro.payload
            isb = Signal(K, name=f"isbias{s}")
            r_cnt = Signal(range(n_out + 1), name=f"r_cnt{s}")
            r_take = ro.valid & ro.ready
            m.d.comb += [lst.ready.eq(self.busy & ~loaded[s]),
                         ro.valid.eq(self.busy & loaded[s] & (r_cnt != n_out))]
            r_end.append(r_cnt == n_out)
            with m.If(self.start & ~self.busy):
                m.d.sync += r_cnt.eq(0)
            with m.If(r_take):
                m.d.sync += r_cnt.eq(r_cnt + 1)
            with m.If(lst.valid & lst.ready):
                m.d.sync += loaded[s].eq(1)
                for t in range(K):
                    e = lst.payload[t]
                    bias_e = e.idx == n_in
                    m.d.sync += [regs[t].val.eq(e.val), isb[t].eq(bias_e),
                                 regs[t].idx.eq(Mux(bias_e, boff0, off0 + e.idx))]
            with m.Elif(r_take):
                for t in range(K):
                    m.d.sync += regs[t].idx.eq(regs[t].idx + Mux(isb[t], Const(1, ib), Const(n_in, ib)))

        m.d.comb += [zf.w_en.eq(z_v), zf.w_data.eq(Cat(*z_parts)), regs_end.eq(Cat(*r_end).all() if r_end else 1)]
        m.d.comb += [
            self.z.valid.eq(zf.r_rdy & self.busy),
            o_take.eq(self.z.valid & self.z.ready),
            zf.r_en.eq(o_take),
        ]
        for s in range(B):
            zs = zf.r_data[s * (vb + 1):(s + 1) * (vb + 1)]
            m.d.comb += [self.z.payload[s].z.eq(zs[:vb]), self.z.payload[s].zsat.eq(zs[vb])]
        with m.If(o_take):
            m.d.sync += n_done.eq(n_done + 1)
        return m
