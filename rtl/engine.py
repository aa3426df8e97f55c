"""The on-chip DPFM training engine: whole training steps, host access over AXI4-Lite.

One step (``CTRL.start``) runs, for the ``BATCH_N`` samples in the SAMPLES window:

1. **Forward with gradient registers**, layer by layer, neuron by neuron.  ``batch`` sample
   lanes work in lockstep, sharing each weight read.  Per lane, the candidates of neuron
   ``j`` stream into a :class:`TopKMerger` one per cycle in the reference's ``stream`` order
   (per input ``i``: the new entry ``(index of W[j,i], a_i)``, then ``W[j,i] * g`` for every
   register ``g`` of ``a_i``; the bias entry last).  The single lane multiplier computes
   ``W[j,i] * a_i`` in the new-entry slot (pre-activation) and ``W[j,i] * g`` in the
   register slots.  The finished list, the :class:`ActivationUnit`'s ``(a, f'(z))`` and a
   :class:`DualScale` (registers times ``f'(z)``) complete the neuron while the next one
   streams.  Layer 0 is one list per step: its candidates are the same for every neuron
   (``(i, new_entry(a_i))``, the bias ``(n_in, one)``), so the merger sorts them once into
   ``L*`` and the :class:`~dpfm.rtl.layer0.Layer0Unit` forms every ``z_j`` (``D`` DSP48E1
   per lane, from its own copy of layer 0's weights) and renames ``L*`` into every neuron's
   list for the join.
2. **Loss and delta**: all lanes at once, per output and register slot,
   ``e = sat(y' - y)`` and ``D_s[idx] += e * g`` into the lane's exact delta bank (the lane's
   multiplier); ``sum e**2`` into LOSS.  ``D = sum_s D_s`` is formed when read.  The banks
   are cleared while the forward pass runs (one address per cycle, no extra cycle), so a
   step never starts from what a reset or an interrupted step left in them.
3. **Update** (``UPDATE`` sgd or maxnorm, skipped for none), the
   :class:`~dpfm.rtl.update.UpdateUnit`: ``m = max|D|``, normalisation, a radix-4 restoring
   divider for the :data:`RECIP_BITS`-bit ``2**35 / m`` (maxnorm, two quotient bits per
   cycle), then ``w -= upd`` exactly as :func:`dpfm.reference.mlp.fixed_update`, ``M =
   config.update_lanes`` parameters per cycle in both passes.  W and the delta banks hold
   words of ``M`` parameters; the forward pass reads one weight of a word.

No layer barrier: layer ``l+1`` issues right behind layer ``l``.  Each lane counts its own
write-backs (the layer and the neuron it writes back), and a slot that reads input ``i`` of
layer ``l >= 1`` issues once every active lane has written back neuron ``i`` of layer
``l-1``; the loss pass waits until every lane has written back every output.  In layer 1
(the second layer; its inputs carry disjoint index sets, nothing is summed) a block of
register slots ends early when every active lane's merger cannot take the rest (the bound
``U = floor(|W*g| / 2**fw + 1/2)`` of the register candidate in stage 3 is below the list's
``k``-th magnitude, :attr:`TopKMerger.kth <dpfm.rtl.topk.TopKMerger>`).  MERGE_BUSY counts
the cycles in which any active lane's merger takes a candidate (every issued one);
FLAGS are a :class:`StickyFlags` (a flag raised in the cycle of a clear stays).

Timing (cycles, ``k_l`` = registers of layer ``l``'s inputs, 0 for the first layer, ``T =
lane_sum_stages(batch)``, 2 for batch 5..16):
forward at most ``n_in_0 + 1 + sum_{l>=1} n_out_l * (n_in_l * (1 + k_l) + 1)`` issue cycles
plus the Layer0Unit's, the merger's
and the write-back's waits (data-dependent: layer 1's blocks may end early;
:func:`dpfm.sim.engine_expect.forward_cycles` is the schedule, whole blocks its bound); loss/delta
``n_out * k + LOSS_DRAIN`` (at most ``1 + max(4, LOSS_PIPE + T - (k - 1))``); update, with
``W = ceil(P / M)`` and ``T_M = lane_sum_stages(M)``, ``2 * W + (1 + MAX_PIPE + T + T_M) +
NORM_CYCLES + DIV_CYCLES + (1 + UPDATE_PIPE + T)`` (maxnorm, ``DIV_CYCLES = 10``; ``2 * P +
21 + 10`` at the default batch and M = 1) or the same without ``DIV_CYCLES`` (sgd); see
docs/engine.md.  Bit-exact with ``MLP.step_raw(..., policy="stream")`` in the Config's
fixed formats.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect, flipped

from dpfm.config import Config
from dpfm.reference.activations import ACT_CODES

from .activation import ActivationUnit
from .axi import AXI4LiteSignature, AXI4LiteSlave, AXI4Signature
from .dual_scale import DualScale
from .fixmath import (SUM_LEVELS_PER_STAGE, lane_sum_stages, pipelined_sum, round_shift,
                      round_shift_saturate, saturate)
from .layer0 import Layer0Unit, engine_layer0_shape
from .layouts import entry_layout, registers_layout
from .regmap import (ADDR_BITS, CTRL, FLAGS, ID_MAGIC, RUN_OPTS, RUN_STATUS, STATUS_ERROR_SHIFT,
                     UPDATE, WINDOW_BITS, Resp, StartError, register_map)
from .run import RunSequencer
from .topk import TopKMerger
from .update import (DIV_CYCLES, MAX_PIPE, NORM_CYCLES, RECIP_BITS, UPDATE_PIPE, UpdateUnit,
                     update_words)

__all__ = ["Engine", "StickyFlags", "ISSUE_DEPTH", "PROBE_AHEAD", "AFIFO_LATENCY", "UPDATE_PIPE", "MAX_PIPE",
           "NORM_CYCLES", "LOSS_PIPE", "RECIP_BITS", "DIV_CYCLES", "SUM_LEVELS_PER_STAGE",
           "lane_sum_stages"]

def _select(word, sel, width, n):
    """Element ``sel`` of the ``n`` elements of ``width`` bits in ``word``: each padded to a
    power of two bits, so the selection is a plain ``n``-way multiplexer (``word_select``
    with a signal on a width that is not a power of two builds a shifter by ``sel * width``,
    a multiply and a carry chain in front of the multiplexer)."""
    pw = 1 << (width - 1).bit_length()
    padded = Cat(*[Cat(word[e * width:(e + 1) * width], Const(0, pw - width)) for e in range(n)])
    return padded.word_select(sel, pw)[:width]


def _cannot_enter(m, prod, fw, kth, name):
    """``U < kth`` for a product register ``prod`` (``W * g``, ``fw`` fractional bits too
    many): ``U = floor(|prod| / 2**fw + 1/2)``, not saturated, bounds ``|sat(rnd(prod))|``
    for either sign (``rnd`` rounds ties toward +inf: ``|rnd(p)|`` is ``U`` for ``p >= 0``,
    ``U`` or ``U - 1`` below).  ``|p| + 2**(fw-1) = (p ^ sign) + sign + 2**(fw-1)``: one
    adder, the sign its low bit.  A product that saturates has ``U >= 2**(bits-1) >= kth``,
    so it never "cannot enter"."""
    p_neg = prod[-1]
    ones = Signal(len(prod), name=f"{name}_ones")
    m.d.comb += ones.eq(prod.as_unsigned() ^ p_neg.replicate(len(prod)))
    half = (1 << (fw - 1)) if fw else 0
    bump = Cat(p_neg, Const(half >> 1, fw - 1)) if fw >= 2 else p_neg + half
    u_full = Signal(len(prod) + 1, name=f"{name}_u")
    m.d.comb += u_full.eq(ones + bump)
    return (u_full >> fw) < kth


def _or_all(terms):
    acc = terms[0]
    for t in terms[1:]:
        acc = acc | t
    return acc


#: Cycles from the sequencer issuing a candidate (memory read) to its handshake at the merger:
#: the read register, the operand register, the product register and the merger's input
#: register (stages 1, 2, 3 and the merger input of the lane datapath below).
ISSUE_DEPTH = 4
#: Blocks the block probe (layer 1) may run ahead of the issue: at least its latency, 5
#: cycles from a probe's issue to its verdict in the FSM's reject bits, so that a run of
#: rejected blocks (one slot each) finds every verdict in time.
PROBE_AHEAD = 6
#: Cycles from a write into a lane's activation FIFO (``SyncFIFOBuffered``) to its data being
#: readable.
AFIFO_LATENCY = 2
#: Register stages of the loss pass's sum of squared errors after the squares, besides the
#: :func:`lane_sum_stages` of the sum over the lanes (the accumulation into LOSS).
LOSS_PIPE = 3


def _fits(word, shape):
    """True when the 32-bit bus ``word`` holds a value of ``shape`` (two's complement if signed)."""
    w = shape.width
    if shape.signed:
        top = word[w - 1:]                      # sign bit and everything above: all equal
        return (top == 0) | (top == (1 << len(top)) - 1)
    return word[w:] == 0


def _takes(word, register, shape):
    """True when the 32-bit bus ``word`` is a value the setting ``register`` takes
    (:attr:`~dpfm.rtl.regmap.Register.value_range`): it fits ``shape`` and is not below the
    register's ``min_value``."""
    ok = _fits(word, shape)
    lo, _ = register.value_range
    shape_lo = -(1 << (shape.width - 1)) if shape.signed else 0
    if lo > shape_lo:
        value = word[:shape.width].as_signed() if shape.signed else word[:shape.width]
        ok = ok & (value >= lo)
    return ok


class _WeightReadPort:
    """One weight of the word-wide weight memory, read like a memory read port: ``addr`` (a
    parameter index) and ``en`` in, ``data`` (the weight) one cycle after an enabled read,
    held while ``en`` is low."""

    def __init__(self, n_params, shape):
        self.addr = Signal(range(max(n_params, 2)), name="w_rd_addr")
        self.en = Signal(name="w_rd_en")
        self.data = Signal(shape, name="w_rd_data")


class StickyFlags(wiring.Component):
    """Sticky flag bits (the FLAGS register): raised by ``set``, dropped by ``clear``.

    A bit raised in the cycle of a clear stays raised (set wins over clear): a clear drops
    only the events of the cycles before it, so clearing while a step runs loses no event of
    the rest of the step.  ``clear`` is a mask: the host clears every flag, the run
    sequencer only the saturation flags.

    Parameters
    ----------
    width : int
        Number of flags.

    Members
    -------
    set : ``In(width)``
        Bits to raise in this cycle.
    clear : ``In(width)``
        Drop these bits unless raised in this cycle.
    value : ``Out(width)``
        The flags, updated on the clock edge after ``set`` / ``clear``.
    """

    def __init__(self, width: int):
        super().__init__({"set": In(width), "clear": In(width), "value": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.value.eq(self.value & ~self.clear | self.set)
        return m


class Engine(wiring.Component):
    """DPFM training engine for the MLP a :class:`~dpfm.config.Config` describes.

    Members
    -------
    s_axil : ``In(AXI4LiteSignature(addr_width=18))``
        Host access; the register map is :func:`dpfm.rtl.regmap.register_map` (config).
    m_axi : ``Out(AXI4Signature(addr_width=32))``
        Run mode's memory master (:class:`~dpfm.rtl.run.RunSequencer`); idle unless a run
        (CTRL.run) goes on.

    Parameters
    ----------
    config : Config
    error_response : Resp
        The AXI response to a refused access (see :class:`~dpfm.rtl.axi.AXI4LiteSlave`):
        ``Resp.SLVERR`` (default, simulation) or ``Resp.OKAY`` (the board build: a Zynq CPU
        dies of SIGBUS on an error response).  Either way the refusal changes nothing, raises
        FLAGS.bus_error and, if it is the first since FLAGS were cleared, lands in ERR_ADDR.

    Raises
    ------
    ConfigError
        Through :class:`Config`; TypeError when ``config`` is not a Config.
    """

    def __init__(self, config: Config, *, error_response=Resp.SLVERR):
        if not isinstance(config, Config):
            raise TypeError(f"Engine needs a dpfm.config.Config, not {config!r}")
        if config.policy != "stream":
            raise ValueError(f"the engine implements policy 'stream', not {config.policy!r}")
        self.config = config
        self.error_response = Resp(error_response)
        self.regmap = register_map(config)
        super().__init__({"s_axil": In(AXI4LiteSignature(addr_width=ADDR_BITS)),
                          "m_axi": Out(AXI4Signature(addr_width=32))})

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        fm = cfg.formats
        fv, fw, fg = fm.value.frac, fm.weight.frac, fm.grad.frac
        B, K, L, P = cfg.batch, cfg.k, cfg.n_layers, cfg.n_params
        net = cfg.net
        n_in0, n_out_last = net[0], net[-1]
        maxw = max(net[1:])
        rmap = self.regmap
        srow = rmap["SAMPLES"].row_words
        orow = rmap["OUTPUTS"].row_words
        reg_layout = registers_layout(cfg)
        vshape = signed(fm.value.bits)
        wshape = signed(fm.weight.bits)
        gshape = signed(fm.grad.bits)

        # ---------------------------------------------------------------- bus
        m.submodules.axil = axil = AXI4LiteSlave(addr_width=ADDR_BITS, error_resp=self.error_response)
        connect(m, flipped(self.s_axil), axil.bus)
        reg = axil.reg

        # ---------------------------------------------------------------- memories
        # W and the delta banks hold words of M = update_lanes parameters (parameter p is
        # element p % M of word p // M): the update unit reads and writes a word per cycle;
        # the forward pass, the host window and run mode read one weight through w_rd (the
        # word, and the element picked by the address's low bits registered with the read)
        M = cfg.update_lanes
        lgM = (M - 1).bit_length()
        n_words = update_words(cfg)
        m.submodules.upd = upd = UpdateUnit(cfg)
        dshape = upd.delta_shape
        dbits = dshape.width
        m.submodules.wmem = wmem = Memory(shape=unsigned(M * wshape.width), depth=n_words, init=[])
        w_wr = wmem.write_port(granularity=wshape.width)
        w_word_rd = wmem.read_port(transparent_for=())
        w_rd = _WeightReadPort(P, wshape)
        w_sel = Signal(max(1, lgM))        # element of the word read, registered with the read
        with m.If(upd.busy):
            m.d.comb += [w_word_rd.addr.eq(upd.w_rd_addr), w_word_rd.en.eq(1)]
        with m.Else():
            m.d.comb += [w_word_rd.addr.eq(w_rd.addr >> lgM), w_word_rd.en.eq(w_rd.en)]
            if lgM:
                with m.If(w_rd.en):
                    m.d.sync += w_sel.eq(w_rd.addr[:lgM])
        m.d.comb += [upd.weights.eq(w_word_rd.data),
                     w_rd.data.eq(_select(w_word_rd.data, w_sel, wshape.width, M) if lgM
                                  else w_word_rd.data)]
        # layer 0 (the Layer0Unit): its own copy of layer 0's weights and biases in words of
        # M0 = max(D, M) weights, written with every write of W (a W word lands in one of its
        # words), read only by the unit, so the forward's read port stays free for layer 1
        M0, D0 = engine_layer0_shape(cfg)
        lgM0 = (M0 - 1).bit_length()
        n0 = cfg.offsets[0] + net[1] * (n_in0 + 1)    # W then b of layer 0
        assert cfg.offsets[0] == 0
        n_words0 = -(-n0 // M0)
        m.submodules.l0 = l0 = Layer0Unit(cfg, word=M0, mults=D0, lists=False)
        m.submodules.w0mem = w0mem = Memory(shape=unsigned(M0 * wshape.width), depth=n_words0, init=[])
        w0_wr = w0mem.write_port(granularity=wshape.width)
        w0_rd = w0mem.read_port(transparent_for=())
        m.d.comb += [w0_rd.addr.eq(l0.w_addr), w0_rd.en.eq(l0.w_en), l0.w_data.eq(w0_rd.data)]
        R0 = M0 // M                       # W words per word of the copy
        w0_word = Signal(range(max(2, n_words + 1)))
        m.d.comb += w0_word.eq(w_wr.addr >> (lgM0 - lgM))
        w0_lane = w_wr.addr[:lgM0 - lgM] if R0 > 1 else Const(0, 1)
        m.d.comb += [
            w0_wr.addr.eq(w0_word),
            w0_wr.data.eq(w_wr.data.replicate(R0)),
            w0_wr.en.eq(Mux(w0_word < n_words0,
                            w_wr.en << (Cat(Const(0, lgM), w0_lane) if lgM else w0_lane) if R0 > 1 else w_wr.en,
                            0)),
        ]
        d_wr, d_rd = [], []                # one delta bank per lane; D = sum of the banks
        for s in range(B):
            # block RAM: a few words of M * dbits bits would cost hundreds of LUTs as LUTRAM
            # (32 deep x 6 bits per 4 LUTs), while the block RAMs are otherwise idle
            dmem = Memory(shape=unsigned(M * dbits), depth=n_words, init=[],
                          attrs={"ram_style": "block"})
            m.submodules[f"dmem{s}"] = dmem
            d_wr.append(dmem.write_port(granularity=dbits))
            # not transparent: the loss pass forwards its own write (below), one delta wide
            # instead of a bypass over the whole word
            d_rd.append(dmem.read_port(transparent_for=()))
            m.d.comb += upd.deltas[s].eq(d_rd[-1].data)
        smem_wr, smem_rd, vmem_wr, vmem_rd, rmem_wr, rmem_rd, rmems = [], [], [], [], [], [], []
        abits = max(1, (maxw - 1).bit_length())
        sbits = srow.bit_length() - 1
        for s in range(B):
            # two banks of samples (address bit ``sbits``): run mode fetches the next batch
            # into one while a step reads the other
            mem = Memory(shape=vshape, depth=2 * srow, init=[])
            m.submodules[f"smem{s}"] = mem
            smem_wr.append(mem.write_port())
            smem_rd.append(mem.read_port(transparent_for=()))
            # activations and their registers: two buffers (address bit ``abits``: the buffer)
            vm = Memory(shape=vshape, depth=2 << abits, init=[])
            rm = Memory(shape=reg_layout, depth=2 << abits, init=[])
            m.submodules[f"vmem{s}"] = vm
            m.submodules[f"rmem{s}"] = rm
            vmem_wr.append(vm.write_port()); vmem_rd.append(vm.read_port(transparent_for=()))
            rmem_wr.append(rm.write_port()); rmem_rd.append(rm.read_port(transparent_for=()))
            rmems.append(rm)

        # ---------------------------------------------------------------- control registers
        busy = Signal()
        done = Signal()
        error = Signal(8)
        m.submodules.flags = flag_reg = StickyFlags(len(FLAGS))
        seq_clear = Signal(len(FLAGS))
        flags = flag_reg.value
        cycles = Signal(32)
        mul_busy = Signal(32)
        merge_busy = Signal(32)
        def setting(name):        # a setting register, shaped and reset as the register map says
            reg = rmap[name]
            return Signal(signed(reg.bits) if reg.signed else unsigned(reg.bits), init=reg.reset,
                          name=name.lower())
        batch_n = setting("BATCH_N")
        update = setting("UPDATE")
        lr_q = setting("LR_Q")
        sgd_cq = setting("SGD_CQ")
        sgd_cs = setting("SGD_CS")
        loss = Signal(64)
        err_addr = Signal(32)              # ERR_ADDR (see the register file below)
        hits = Signal(16)                  # validation hits of the last classifying pass
        run_names = ("RUN_TRAIN_ADDR", "RUN_VAL_ADDR", "RUN_PERM_ADDR", "RUN_LOG_ADDR",
                     "RUN_SNAP_ADDR", "RUN_TRAIN_N", "RUN_VAL_N", "RUN_EPOCHS", "RUN_OPTS",
                     "SGD_CQ_LAST", "SGD_CS_LAST")
        run_regs = {name: setting(name) for name in run_names}
        # ---------------------------------------------------------------- run mode
        m.submodules.run = seq = RunSequencer(cfg)
        connect(m, flipped(self.m_axi), seq.m_axi)
        run_active = seq.running
        locked = Signal()                  # host writes and window accesses are refused
        m.d.comb += locked.eq(busy | run_active)
        m.d.comb += [
            seq.train_addr.eq(run_regs["RUN_TRAIN_ADDR"]), seq.val_addr.eq(run_regs["RUN_VAL_ADDR"]),
            seq.perm_addr.eq(run_regs["RUN_PERM_ADDR"]), seq.log_addr.eq(run_regs["RUN_LOG_ADDR"]),
            seq.snap_addr.eq(run_regs["RUN_SNAP_ADDR"]), seq.train_n.eq(run_regs["RUN_TRAIN_N"]),
            seq.val_n.eq(run_regs["RUN_VAL_N"]), seq.epochs.eq(run_regs["RUN_EPOCHS"]),
            seq.classify.eq(run_regs["RUN_OPTS"][RUN_OPTS["classify"]]),
            seq.batch_n.eq(batch_n), seq.update.eq(update), seq.sgd_cq.eq(sgd_cq),
            seq.sgd_cs.eq(sgd_cs),
            seq.sgd_cq_last.eq(run_regs["SGD_CQ_LAST"]), seq.sgd_cs_last.eq(run_regs["SGD_CS_LAST"]),
            seq.step_busy.eq(busy), seq.step_error.eq(error), seq.loss.eq(loss),
            seq.flags.eq(flags), seq.cycles.eq(cycles), seq.mul_busy.eq(mul_busy),
            seq.merge_busy.eq(merge_busy), seq.hits.eq(hits), seq_clear.eq(seq.flags_clear),
        ]
        with m.If(seq.set_en):
            m.d.sync += [batch_n.eq(seq.set_batch_n), update.eq(seq.set_update),
                         sgd_cq.eq(seq.set_cq), sgd_cs.eq(seq.set_cs)]
        sbank = seq.sbank
        host_start = Signal()
        start = Signal()
        clear_flags = Signal()
        set_flags = Signal(len(FLAGS))
        m.d.comb += start.eq(host_start | seq.step_start)
        m.d.comb += [flag_reg.set.eq(set_flags),
                     flag_reg.clear.eq(Mux(clear_flags, (1 << len(FLAGS)) - 1, 0) | seq_clear)]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        # ---------------------------------------------------------------- per-layer tables
        offs = cfg.offsets
        t_nin = Array([Const(net[l], 16) for l in range(L)])
        t_nout = Array([Const(net[l + 1], 16) for l in range(L)])
        t_kin = Array([Const(0 if l == 0 else cfg.registers(l - 1), 16) for l in range(L)])
        t_off = Array([Const(offs[l], 24) for l in range(L)])
        t_boff = Array([Const(offs[l] + net[l + 1] * net[l], 24) for l in range(L)])   # b[0]
        t_act = Array([Const(ACT_CODES[a], 2) for a in cfg.activations])
        layer = Signal(range(max(L, 2)))
        nin, nout, kin, act = t_nin[layer], t_nout[layer], t_kin[layer], t_act[layer]
        rd_buf = Signal()          # buffer the issuing layer l reads ((l-1) % 2); each lane
        m.d.comb += rd_buf.eq(~layer[0])   # writes buffer l % 2 of the layer it writes back
        out_buf = (L - 1) % 2      # buffer holding the network's outputs

        # ---------------------------------------------------------------- lane blocks
        mergers, scalers, acts, afifos, vfifos = [], [], [], [], []
        for s in range(B):
            mg = TopKMerger(cfg)
            ds = DualScale(cfg, scalar_fmt=fm.deriv)
            au = ActivationUnit(cfg)
            af = fifo.SyncFIFOBuffered(width=fm.value.bits + fm.deriv.bits, depth=4)
            vf = fifo.SyncFIFOBuffered(width=fm.value.bits, depth=4)
            m.submodules[f"merger{s}"] = mg
            m.submodules[f"scale{s}"] = ds
            m.submodules[f"act{s}"] = au
            m.submodules[f"afifo{s}"] = af
            m.submodules[f"vfifo{s}"] = vf
            mergers.append(mg); scalers.append(ds); acts.append(au); afifos.append(af); vfifos.append(vf)
        lane_active = Signal(B)
        m.d.comb += lane_active.eq(Cat(Const(s, range(B + 1)) < batch_n for s in range(B)))

        # ---------------------------------------------------------------- sequencer state
        j = Signal(16)             # neuron
        i = Signal(16)             # input (== nin: bias slot)
        r = Signal(16)             # 0: new entry, 1..kin: register r-1
        # per lane: the layer it writes back (``wls``) and the neurons of it written back
        # (``fins``, the address of its next output); both run ahead of or with the issue
        fins = [Signal(range(maxw + 1), name=f"fin{s}") for s in range(B)]
        wls = [Signal(range(L + 1), name=f"wl{s}") for s in range(B)]
        fwd_done = Signal()        # every lane has written back every neuron of the last layer
        dep_ok = Signal()          # every active lane has written back input i of this layer
        stall = Signal()

        # stage 0 -> 1 -> 2 -> 3 -> outputs (merger/activation inputs, registered)
        KIND_NEW, KIND_REG, KIND_BIAS = 0, 1, 2
        src1 = Signal()            # stage 1 reads the sample memory (layer 0)
        src2 = Signal(); src3 = Signal()   # ... the slot in stages 2 and 3 is of layer 0
        act1 = Signal(2); act2 = Signal(2); act3 = Signal(2)    # the slot's activation code
        v1 = Signal(); kind1 = Signal(2); rr1 = Signal(16); idxn1 = Signal(24); idxb1 = Signal(24)
        v2 = Signal(); kind2 = Signal(2)
        # the slot reads layer 0's outputs (layer 1): their lists' indices are renamed, input
        # i of layer 0 to W[i, input] = i * n_in0 + input, the bias entry to b[i] = boff0 + i
        ren1 = Signal(); renw1 = Signal(cfg.idx_bits); renb1 = Signal(cfg.idx_bits)
        v3 = Signal(); kind3 = Signal(2)
        # early block end (layer 1): the slot is a register slot of layer 1 (``sk``) and
        # ``rn`` = its r + ISSUE_DEPTH, the FSM's r when its rejection (formed in stage 3,
        # registered with the merger's input) is known, if it is still in the block
        rn_shape = range(K + ISSUE_DEPTH + 1)
        sk1 = Signal(); sk2 = Signal(); sk3 = Signal(); sk4 = Signal()
        rn1 = Signal(rn_shape); rn2 = Signal(rn_shape); rn3 = Signal(rn_shape); rn4 = Signal(rn_shape)
        lane_reject = Signal(B)    # per lane: stage 3's register candidate cannot enter
        reject4 = Signal(B)        # ... registered (the slot at the merger's input)
        block_end = Signal()       # every active lane rejects it: end the block
        fwd_issue = Signal()
        loss_issue = Signal()
        lo = Signal(16); lr = Signal(16)

        # W[j, 0] of the current neuron, stepped by n_in per neuron (no multiplier)
        wbase = Signal(24)
        bias_slot = i == nin
        with m.If(bias_slot):
            m.d.comb += w_rd.addr.eq(t_boff[layer] + j)
        with m.Else():
            m.d.comb += w_rd.addr.eq(wbase + i)

        # layer 0: the Layer0Unit takes the inputs from stage 1 and forms every neuron's z
        # (offered to the activation units, one neuron every C_ds cycles at most, so that
        # they never wait for the DualScales) and, from the lane's sorted list L*, every
        # neuron's register list (the DualScale's join takes it in layer 0)
        C_ds = -(-(K + 1) // cfg.lanes)
        a0_raw = Signal()          # stage 1 holds a layer-0 input for the unit
        m.d.comb += a0_raw.eq(v1 & src1 & (kind1 == KIND_NEW))
        l0_take = Signal()         # a neuron's z goes to the activation units this cycle
        pace = Signal(range(max(2, C_ds)))
        au_pending = Signal()
        m.d.comb += [
            l0.a.valid.eq(a0_raw & ~stall),
            l0.a.payload.eq(Cat(*[Mux(src1, smem_rd[s].data, vmem_rd[s].data) for s in range(B)])),
            au_pending.eq(Cat(au.i.valid & ~au.i.ready for au in acts).any()),
            l0_take.eq(l0.z.valid & ~au_pending & (pace == 0)),
            l0.z.ready.eq(l0_take),
        ]
        with m.If(l0_take):
            m.d.sync += pace.eq(C_ds - 1)
        with m.Elif(pace != 0):
            m.d.sync += pace.eq(pace - 1)
        # per lane: layer-0 neurons the DualScale join has taken; the merger's output register
        # holds L* for all of them and lets it go with the last
        l0_joins = [Signal(range(net[1] + 1), name=f"l0_joins{s}") for s in range(B)]

        # block probe (layer 1): a second pipeline reads W[j, p] and input p's largest
        # register g_0 a few blocks ahead of the issue (second read ports of W and of the
        # register buffers) and forms every lane's U_0 = bound of W[j,p] * g_0 in its own
        # DSP; when every active lane's list (its k-th magnitude now, no larger than when
        # the block would issue) rejects it, no register candidate of block p can enter
        # (U is non-increasing along the block), and the FSM issues block p's new entry only
        probe_reject = Signal(B)
        pw_rd = _WeightReadPort(P, wshape)
        pw_word_rd = wmem.read_port(transparent_for=())
        pw_sel = Signal(max(1, lgM))
        m.d.comb += [pw_word_rd.addr.eq(pw_rd.addr >> lgM), pw_word_rd.en.eq(1),
                     pw_rd.data.eq(_select(pw_word_rd.data, pw_sel, wshape.width, M) if lgM
                                   else pw_word_rd.data)]
        if lgM:
            m.d.sync += pw_sel.eq(pw_rd.addr[:lgM])
        rmem_rd2 = [rm_.read_port(transparent_for=()) for rm_ in rmems]

        # per-lane datapath
        flag_terms = []
        d_delta_ports = []
        lane_g1 = []
        for s in range(B):
            # stage 1: memory data
            a1 = Signal(vshape)
            m.d.comb += a1.eq(Mux(src1, smem_rd[s].data, vmem_rd[s].data))
            regs1 = rmem_rd[s].data.as_value()
            # register slot rr1 of the word: an explicit K-way multiplexer (indexing the view
            # with a signal would build a shifter over the whole word)
            sel = rr1[:max(1, (K - 1).bit_length())]
            g1 = entry_layout(cfg)(_select(regs1, sel, entry_layout(cfg).size, K))
            lane_g1.append(g1)
            # layer 0's lists are L* (indices i and n_in): renamed for neuron i of layer 0
            gidx1 = Signal(cfg.idx_bits, name=f"gidx1_{s}")
            m.d.comb += gidx1.eq(Mux(ren1, Mux(g1.idx == n_in0, renb1, renw1 + g1.idx), g1.idx))
            # stage 2 registers
            opa2 = Signal(wshape); opb2 = Signal(vshape if fm.value.bits >= fm.grad.bits else gshape)
            cidx2 = Signal(cfg.idx_bits)
            anew2 = Signal(vshape)         # the activation, for the new entry's value in stage 3
            # stage 3 registers
            prod3 = Signal(signed(wshape.width + opb2.shape().width))
            cidx3 = Signal(cfg.idx_bits); cval3 = Signal(gshape); sat3 = Signal(); b3 = Signal(wshape)
            b2 = Signal(wshape)
            zacc = Signal(signed(wshape.width + vshape.width + 8))
            newv2, newsat2 = saturate(round_shift(anew2, fv - fg), fm.grad)
            with m.If(~stall):
                m.d.sync += [
                    opa2.eq(w_rd.data),
                    opb2.eq(Mux(kind1 == KIND_NEW, a1, g1.val)),
                    cidx2.eq(Mux(kind1 == KIND_NEW, idxn1, Mux(kind1 == KIND_REG, gidx1, idxb1))),
                    anew2.eq(a1),
                    b2.eq(w_rd.data),
                    prod3.eq(opa2 * opb2),
                    cidx3.eq(cidx2), b3.eq(b2),
                    # the new entry's value new_entry(a) (the bias entry's: one), rounded and
                    # saturated from stage 2's register rather than from the memory read
                    cval3.eq(Mux(kind2 == KIND_NEW, newv2, Const(min(fm.grad.one, fm.grad.max_int), gshape))),
                    sat3.eq((kind2 == KIND_NEW) & newsat2 | (kind2 == KIND_BIAS) & (fm.grad.one > fm.grad.max_int)),
                ]
            prodv3, prodsat3 = round_shift_saturate(prod3, fw, fm.grad)
            mg_ = mergers[s]
            # the merger's k-th magnitude belongs to this neuron's list unless a `last` sits
            # between stage 3 and its cells: in its input register (checked here) or in its
            # lookup / sum stages (kth reads 0 then)
            kth_now = Mux(mg_.i.valid & mg_.i.payload.last, 0, mg_.kth)
            m.d.comb += lane_reject[s].eq(_cannot_enter(m, prod3, fw, kth_now, f"reg3_{s}"))
            # the block probe's lane: W[j, p] * g_0 of input p (its largest register)
            pw2 = Signal(wshape, name=f"probe_w2_{s}"); pg2 = Signal(gshape, name=f"probe_g2_{s}")
            pprod3 = Signal(signed(wshape.width + gshape.width), name=f"probe_prod3_{s}")
            m.d.sync += [pw2.eq(pw_rd.data), pg2.eq(rmem_rd2[s].data[0].val), pprod3.eq(pw2 * pg2)]
            m.d.comb += probe_reject[s].eq(_cannot_enter(m, pprod3, fw, kth_now, f"probe3_{s}"))
            zfull = zacc + (b3 << fv)
            z3, zsat3 = saturate(round_shift(zfull, fw), fm.value)
            mg, au = mergers[s], acts[s]
            # stage 3 -> merger / activation inputs (registered, held under stall)
            with m.If(mg.i.valid & mg.i.ready):
                m.d.sync += mg.i.valid.eq(0)
            with m.If(au.i.valid & au.i.ready):
                m.d.sync += au.i.valid.eq(0)
            lane_sat = Signal(len(FLAGS))
            with m.If(~stall & v3):
                m.d.sync += [
                    mg.i.valid.eq(1),
                    mg.i.payload.idx.eq(cidx3),
                    mg.i.payload.val.eq(Mux(kind3 == KIND_REG, prodv3, cval3)),
                    mg.i.payload.last.eq(kind3 == KIND_BIAS),
                ]
                with m.Switch(kind3):
                    with m.Case(KIND_NEW):
                        m.d.sync += zacc.eq(zacc + prod3)
                    with m.Case(KIND_BIAS):
                        m.d.sync += zacc.eq(0)
                        with m.If(~src3):          # layer 0's bias closes L*, no neuron
                            m.d.sync += [au.i.valid.eq(1), au.i.payload.z.eq(z3),
                                         au.i.payload.act.eq(act3)]
                            m.d.comb += lane_sat[FLAGS["sat_value"]].eq(zsat3)
                m.d.comb += lane_sat[FLAGS["sat_grad"]].eq(Mux(kind3 == KIND_REG, prodsat3, sat3))
            l0z = l0.z.payload[s]
            with m.If(l0_take):
                m.d.sync += [au.i.valid.eq(1), au.i.payload.z.eq(l0z.z),
                             au.i.payload.act.eq(ACT_CODES[cfg.activations[0]])]
                m.d.comb += lane_sat[FLAGS["sat_value"]].eq(l0z.zsat)
            # finalize: activation -> fifo; join with the merger's list into DualScale
            af, vf, ds = afifos[s], vfifos[s], scalers[s]
            m.d.comb += [
                af.w_data.eq(Cat(au.o.payload.a, au.o.payload.d)),
                af.w_en.eq(au.o.valid),
                au.o.ready.eq(af.w_rdy),
            ]
            a_f = af.r_data[:fm.value.bits].as_signed()
            d_f = af.r_data[fm.value.bits:].as_signed()
            # the merger's first list of a step is L*: every layer-0 neuron's list, with
            # indices i (input) and n_in (bias) that the readers rename (layer 1's register
            # slots; the loss pass of a one-layer net); the output register keeps it until
            # the last layer-0 neuron's join
            join = af.r_rdy & mg.o.valid & vf.w_rdy
            take = ds.i.ready & af.r_rdy & vf.w_rdy
            release = l0_joins[s] >= net[1] - 1
            with m.If(join & ds.i.ready & ~(l0_joins[s] == net[1])):
                m.d.sync += l0_joins[s].eq(l0_joins[s] + 1)
            m.d.comb += [
                ds.i.valid.eq(join),
                ds.i.payload.value.eq(0),
                ds.i.payload.grads.eq(mg.o.payload),
                ds.i.payload.scalar.eq(d_f),
                mg.o.ready.eq(take & release),
                af.r_en.eq(ds.i.ready & mg.o.valid & vf.w_rdy),
                vf.w_en.eq(join & ds.i.ready),
                vf.w_data.eq(a_f),
                ds.o.ready.eq(1),
                vf.r_en.eq(ds.o.valid),
            ]
            m.d.comb += [
                vmem_wr[s].addr.eq(Cat(fins[s][:abits], wls[s][0])), vmem_wr[s].data.eq(vf.r_data),
                vmem_wr[s].en.eq(ds.o.valid),
                rmem_wr[s].addr.eq(Cat(fins[s][:abits], wls[s][0])), rmem_wr[s].data.eq(ds.o.payload.grads),
                rmem_wr[s].en.eq(ds.o.valid),
            ]
            flag_terms.append(Mux(lane_active[s], lane_sat | ((mg.sat | ds.sat) << FLAGS["sat_grad"]), 0))

        m.d.comb += stall.eq(Cat((mg.i.valid & ~mg.i.ready) | (au.i.valid & ~au.i.ready)
                                 for mg, au in zip(mergers, acts)).any() | (a0_raw & ~l0.a.ready))
        # MERGE_BUSY: cycles in which the merger of at least one active lane takes a candidate
        m.d.comb += block_end.eq(sk4 & (rn4 == r) & (reject4 | ~lane_active).all())
        merge_take = Cat(mg.i.valid & mg.i.ready for mg in mergers)
        with m.If((merge_take & lane_active).any()):
            m.d.sync += merge_busy.eq(merge_busy + 1)
        with m.If(~stall & v2 & (kind2 != KIND_BIAS) & ~src2):   # layer 0: no lane product
            m.d.sync += mul_busy.eq(mul_busy + 1)
        for s in range(B):
            with m.If(scalers[s].o.valid):
                with m.If(fins[s] + 1 == t_nout[wls[s]]):
                    m.d.sync += [fins[s].eq(0), wls[s].eq(wls[s] + 1)]
                with m.Else():
                    m.d.sync += fins[s].eq(fins[s] + 1)
        m.d.comb += fwd_done.eq(Cat(wl == L for wl in wls).all())
        # No layer barrier: layer l issues input i (new entry and registers) once every active
        # lane has written back neuron i of layer l-1, i.e. has finished layer l-1 (wl >= l)
        # or written more than i neurons of it (the write lands on the edge that counts it,
        # so the read issued in the next cycle sees it).  Layer 0 reads the samples.
        m.d.comb += dep_ok.eq(Cat(~lane_active[s] | (wls[s] >= layer) | (fins[s] > i)
                                  for s in range(B)).all())

        # block probe control: in layer 1, input t = max(pp, i + 1) is probed once every
        # active lane has written it back, at most PROBE_AHEAD blocks ahead; the verdict
        # (every active lane's list rejects W[j,t] * g_0, the list being this neuron's: no
        # bias slot issued and not yet taken by the lane's merger) lands in ``rej`` 5 cycles
        # after the probe's issue, unless the FSM moved to another neuron meanwhile
        probing = Signal()
        engine_fsm_fwd = Signal()      # the FSM is in FWD
        pp = Signal(range(maxw + 2))
        p_t = Signal(range(maxw + 2))
        rej = Signal(maxw)
        pend = [Signal(2, name=f"pend{s}") for s in range(B)]   # bias slots not yet at the merger
        pv = [Signal(name=f"probe_v{t}") for t in range(1, 5)]
        pi_ = [Signal(range(maxw + 2), name=f"probe_i{t}") for t in range(1, 5)]
        pj_ = [Signal(16, name=f"probe_j{t}") for t in range(1, 5)]
        verdict4 = Signal()
        bias_issue = Signal()
        m.d.comb += [
            p_t.eq(Mux(pp > i, pp, i + 1)),
            probing.eq(engine_fsm_fwd & (layer == 1) & (p_t < nin) & (p_t <= i + PROBE_AHEAD)
                       & Cat(~lane_active[s] | (wls[s] >= 1) | (fins[s] > p_t) for s in range(B)).all()),
            pw_rd.addr.eq(wbase + p_t),
        ]
        for s in range(B):
            m.d.comb += rmem_rd2[s].addr.eq(Cat(p_t[:abits], Const(0, 1)))   # layer 1 reads buffer 0
            took_last = mergers[s].i.valid & mergers[s].i.ready & mergers[s].i.payload.last
            m.d.sync += pend[s].eq(pend[s] + bias_issue - took_last)
        m.d.sync += [pv[0].eq(probing), pi_[0].eq(p_t), pj_[0].eq(j)]
        for t in range(1, 4):
            m.d.sync += [pv[t].eq(pv[t - 1]), pi_[t].eq(pi_[t - 1]), pj_[t].eq(pj_[t - 1])]
        # each lane's verdict registered (the compare's carry chains end there), the AND
        # over the lanes in the next cycle, with the bit's decode
        lane_verdict4 = Signal(B)
        m.d.sync += lane_verdict4.eq(Cat(~lane_active[s] | (probe_reject[s] & (pend[s] == 0))
                                         for s in range(B)))
        m.d.comb += verdict4.eq(lane_verdict4.all())
        with m.If(probing):
            m.d.sync += pp.eq(p_t + 1)
        with m.If(bias_issue):
            m.d.sync += [rej.eq(0), pp.eq(0)]
        with m.Elif(verdict4 & pv[3] & (pj_[3] == j) & (layer == 1)):
            m.d.sync += rej.eq(rej | (Const(1, maxw) << pi_[3]))

        # shared stage registers
        with m.If(~stall):
            m.d.sync += [
                v1.eq(fwd_issue),
                src1.eq(layer == 0), src2.eq(src1), src3.eq(src2),
                act1.eq(act), act2.eq(act1), act3.eq(act2),
                kind1.eq(Mux(bias_slot, KIND_BIAS, Mux(r == 0, KIND_NEW, KIND_REG))),
                rr1.eq(Mux(loss_issue, lr, r - 1)),
                sk1.eq(fwd_issue & (layer == 1) & ~bias_slot & (r != 0)) if L >= 2 else sk1.eq(0),
                rn1.eq(r + ISSUE_DEPTH), sk2.eq(sk1), rn2.eq(rn1), sk3.eq(sk2), rn3.eq(rn2),
                sk4.eq(v3 & sk3), rn4.eq(rn3), reject4.eq(lane_reject),
                idxn1.eq(wbase + i),
                # layer 0 streams L* once: input i is index i, the bias index n_in
                idxb1.eq(Mux(layer == 0, n_in0, t_boff[layer] + j)),
                ren1.eq(layer == 1), renw1.eq(offs[0] + i * n_in0), renb1.eq(offs[0] + net[1] * n_in0 + i),
                v2.eq(v1), kind2.eq(kind1),
                v3.eq(v2), kind3.eq(kind2),
            ]
        # memory read enables and addresses
        rd_en = ~stall
        for s in range(B):
            m.d.comb += smem_rd[s].en.eq(rd_en)
            m.d.comb += [vmem_rd[s].en.eq(rd_en), rmem_rd[s].en.eq(rd_en)]
        m.d.comb += w_rd.en.eq(rd_en)

        # ---------------------------------------------------------------- loss / delta datapath
        # every lane at once: e = sat(y' - y); bank_s[idx] += e * g; loss += sum_s e**2 (the
        # sum over the lanes is a pipelined adder tree, lane_sum_stages(B) register stages)
        lv1 = Signal(); lr1 = Signal(16); lo1 = Signal(16); lsq2 = Signal(); lsq3 = Signal()
        lv2 = Signal(B); lv3 = Signal(B); lv4 = Signal(B)
        sq_terms = []
        for s in range(B):
            g_l = lane_g1[s]            # the forward's register select, rr1 = lr1 in this phase
            loss_idx = g_l.idx
            if L == 1:                  # the outputs are layer 0's: L* renamed for output lo1
                loss_idx = Mux(g_l.idx == n_in0, offs[0] + net[1] * n_in0 + lo1, offs[0] + lo1 * n_in0 + g_l.idx)
            e_l, esat_l = saturate(vmem_rd[s].data - smem_rd[s].data, fm.value)
            e2 = Signal(vshape, name=f"e2_{s}"); g2 = Signal(gshape, name=f"g2_{s}")
            gi2 = Signal(cfg.idx_bits, name=f"gi2_{s}")
            dprod3 = Signal(signed(vshape.width + gshape.width), name=f"dprod3_{s}")
            sq3 = Signal(signed(2 * vshape.width), name=f"sq3_{s}")
            gi3 = Signal(cfg.idx_bits, name=f"gi3_{s}")
            dprod4 = Signal.like(dprod3, name=f"dprod4_{s}"); gi4 = Signal(cfg.idx_bits, name=f"gi4_{s}")
            m.d.sync += [
                lv2[s].eq(lv1 & lane_active[s] & (g_l.val != 0) & (update != UPDATE["none"])),
                e2.eq(e_l), g2.eq(g_l.val), gi2.eq(loss_idx),
                lv3[s].eq(lv2[s]), dprod3.eq(e2 * g2), sq3.eq(Mux(lane_active[s], e2 * e2, 0)), gi3.eq(gi2),
                lv4[s].eq(lv3[s]), dprod4.eq(dprod3), gi4.eq(gi3),
            ]
            flag_terms.append((lv1 & lane_active[s] & (lr1 == 0) & esat_l) << FLAGS["sat_value"])
            sq_terms.append(sq3)
            d_delta_ports.append((gi3, gi4, dprod4))
        m.d.sync += [lv1.eq(loss_issue), lr1.eq(lr), lo1.eq(lo), lsq2.eq(lv1 & (lr1 == 0)), lsq3.eq(lsq2)]
        T = lane_sum_stages(B)
        sq_sum = pipelined_sum(m, sq_terms, "sq_sum")
        lsq = [lsq3]                       # lsq[t]: sq_sum holds a valid sum after t stages
        for t in range(T):
            v = Signal(name=f"lsq_s{t + 1}")
            m.d.sync += v.eq(lsq[-1])
            lsq.append(v)
        with m.If(lsq[-1]):
            m.d.sync += loss.eq(loss + sq_sum)
        loss_busy = lv1 | lv2.any() | lv3.any() | lv4.any() | lsq2 | _or_all(lsq)
        with m.If(lv2.any()):
            m.d.sync += mul_busy.eq(mul_busy + 1)

        # ---------------------------------------------------------------- update datapath
        # the UpdateUnit (rtl/update.py) runs MAX, NORM, DIV and UPD on its own, M parameters
        # per cycle, reading words of the delta banks and of W and writing W words back
        m.d.comb += [upd.mode.eq(update), upd.lr_q.eq(lr_q), upd.sgd_cq.eq(sgd_cq),
                     upd.sgd_cs.eq(sgd_cs)]
        flag_terms.append(upd.sat_delta << FLAGS["sat_delta"])
        flag_terms.append(upd.sat_weight << FLAGS["sat_weight"])

        # delta bank ports: cleared at the start of every step, while the forward pass runs
        # (one word per cycle, all of its M deltas; the forward pass lasts at least n_params
        # cycles, so the clearing never delays the loss pass); accumulated in the loss phase
        # (read-modify-write of one delta of a word); read a word per cycle in the update
        # passes.  A reset or an interrupted step therefore never leaves a bank dirty.
        clr = Signal(range(n_words + 1), init=n_words)  # next bank word to clear; n_words: all clear
        with m.If(clr != n_words):
            m.d.sync += clr.eq(clr + 1)
        for s in range(B):
            gi3, gi4, dprod4 = d_delta_ports[s]
            with m.If(lv3[s]):
                m.d.comb += d_rd[s].addr.eq(gi3 >> lgM)
            with m.Else():
                m.d.comb += d_rd[s].addr.eq(upd.addr)
            read = _select(d_rd[s].data, gi4[:lgM], dbits, M) if lgM else d_rd[s].data
            acc = Signal(dshape, name=f"dacc{s}")
            # the delta written in the cycle of this one's read (the same index, one issue
            # earlier) is not in the read data: take it from the register
            fwd_hit = Signal(name=f"dfwd_hit{s}")
            fwd_val = Signal(dshape, name=f"dfwd_val{s}")
            m.d.sync += [fwd_hit.eq(lv4[s] & lv3[s] & (gi4 == gi3)), fwd_val.eq(acc)]
            m.d.comb += acc.eq(Mux(fwd_hit, fwd_val, read.as_signed()) + dprod4)
            # one delta wide: the accumulated delta, or 0 for the clear; then replicated
            wdata = Signal(dshape, name=f"dwdata{s}")
            m.d.comb += [wdata.eq(Mux(lv4[s], acc, 0)), d_wr[s].data.eq(wdata.replicate(M))]
            with m.If(lv4[s]):
                m.d.comb += [d_wr[s].addr.eq(gi4 >> lgM),
                             d_wr[s].en.eq(Const(1, M) << gi4[:lgM] if lgM else 1)]
            with m.Elif(clr != n_words):
                m.d.comb += [d_wr[s].addr.eq(clr), d_wr[s].en.eq((1 << M) - 1)]

        # ---------------------------------------------------------------- host access
        waddr = reg.addr           # word address
        win = waddr[WINDOW_BITS - 2:ADDR_BITS - 2]      # which window (0: the register file)
        woff = waddr[:WINDOW_BITS - 2]                  # word offset inside it
        W_WIN, S_WIN, O_WIN = (rmap.window_index(rmap[n]) for n in ("WEIGHTS", "SAMPLES", "OUTPUTS"))
        w_row = woff >> (srow.bit_length() - 1)
        w_col = woff & (srow - 1)
        o_row = woff >> (orow.bit_length() - 1)
        o_col = woff & (orow - 1)

        # weight memory write port: update pass (M weights) or host (idle, one weight)
        with m.If(upd.w_en.any()):
            m.d.comb += [w_wr.addr.eq(upd.w_addr), w_wr.data.eq(upd.w_data), w_wr.en.eq(upd.w_en)]
        with m.Elif(reg.w_en & ~locked & (win == W_WIN) & (woff < P)):
            m.d.comb += [w_wr.addr.eq(woff >> lgM), w_wr.data.eq(reg.w_data[:wshape.width].replicate(M)),
                         w_wr.en.eq(Const(1, M) << woff[:lgM] if lgM else 1)]

        # ---------------------------------------------------------------- FSM
        # argmax of outputs and targets per lane (run mode's validation hits)
        am_o = Signal(range(n_out_last + 1))
        am_issue = Signal()
        am_v1 = Signal()
        am_o1 = Signal.like(am_o)
        m.d.sync += [am_v1.eq(am_issue), am_o1.eq(am_o)]
        am_out = [Signal(vshape, name=f"am_out{s}") for s in range(B)]
        am_tgt = [Signal(vshape, name=f"am_tgt{s}") for s in range(B)]
        am_out_i = [Signal.like(am_o, name=f"am_out_i{s}") for s in range(B)]
        am_tgt_i = [Signal.like(am_o, name=f"am_tgt_i{s}") for s in range(B)]
        with m.If(am_v1):
            for s in range(B):
                with m.If((am_o1 == 0) | (vmem_rd[s].data > am_out[s])):
                    m.d.sync += [am_out[s].eq(vmem_rd[s].data), am_out_i[s].eq(am_o1)]
                with m.If((am_o1 == 0) | (smem_rd[s].data > am_tgt[s])):
                    m.d.sync += [am_tgt[s].eq(smem_rd[s].data), am_tgt_i[s].eq(am_o1)]

        with m.FSM(name="engine") as engine_fsm:
            with m.State("IDLE"):
                m.d.comb += [smem_rd[s].addr.eq(Cat(w_col[:sbits], sbank)) for s in range(B)]
                m.d.comb += [vmem_rd[s].addr.eq(Cat(o_col[:abits], out_buf)) for s in range(B)]
                m.d.comb += w_rd.addr.eq(Mux(run_active, seq.w_addr, woff))
                with m.If(start):
                    with m.If((batch_n == 0) | (batch_n > B)):
                        m.d.sync += error.eq(StartError.BATCH_N)
                    with m.Elif(update == 3):
                        m.d.sync += error.eq(StartError.UPDATE)
                    with m.Elif((update == UPDATE["maxnorm"]) & (lr_q == 0)):
                        m.d.sync += error.eq(StartError.LR_ZERO)
                    with m.Elif((update == UPDATE["sgd"]) & (sgd_cq == 0)):
                        m.d.sync += error.eq(StartError.SGD_SCALE_ZERO)
                    with m.Else():
                        m.d.sync += [error.eq(StartError.NONE), busy.eq(1), done.eq(0), cycles.eq(1), mul_busy.eq(0),
                                     merge_busy.eq(0), loss.eq(0), layer.eq(0), j.eq(0), i.eq(0),
                                     r.eq(0), wbase.eq(offs[0]), clr.eq(0)]
                        m.d.sync += [f.eq(0) for f in fins]
                        m.d.sync += [wl.eq(0) for wl in wls]
                        m.d.sync += [rej.eq(0), pp.eq(0)]
                        m.d.sync += [c_.eq(0) for c_ in l0_joins]
                        m.d.sync += [p_.eq(0) for p_ in pend]
                        m.d.comb += l0.start.eq(1)
                        m.next = "FWD"
            with m.State("FWD"):
                for s in range(B):
                    m.d.comb += smem_rd[s].addr.eq(Cat(i[:sbits], sbank))
                    m.d.comb += [vmem_rd[s].addr.eq(Cat(i[:abits], rd_buf)),
                                 rmem_rd[s].addr.eq(Cat(i[:abits], rd_buf))]
                # the bias slot reads no input; the others wait for their input's write-back
                issue_ok = bias_slot | dep_ok
                m.d.comb += [fwd_issue.eq(issue_ok), engine_fsm_fwd.eq(1)]
                # layer 1: the probe found that block i's registers cannot enter any list
                skip = (layer == 1) & (r == 0) & rej.bit_select(i[:max(1, (maxw - 1).bit_length())], 1)
                with m.If(~stall & issue_ok):
                    with m.If(bias_slot):
                        m.d.comb += bias_issue.eq(1)
                        m.d.sync += [i.eq(0), r.eq(0), j.eq(j + 1), wbase.eq(wbase + nin)]
                        # layer 0 is one list (L*) whatever n_out
                        with m.If((j + 1 == nout) | (layer == 0)):
                            with m.If(layer == L - 1):
                                m.next = "FWD_WAIT"
                            with m.Else():
                                # the next layer issues right behind this one's last slot
                                m.d.sync += [j.eq(0), layer.eq(layer + 1), wbase.eq(t_off[layer + 1])]
                    with m.Elif((r == kin) | block_end | skip):
                        # the block's last register slot, or every active lane rejects
                        # the register candidate issued ISSUE_DEPTH slots ago in this
                        # block (layer 1): the rest of the block cannot enter either; or
                        # the probe rejected the whole block (its new entry only)
                        m.d.sync += [r.eq(0), i.eq(i + 1)]
                    with m.Else():
                        m.d.sync += r.eq(r + 1)
            with m.State("FWD_WAIT"):
                # after the last layer's last issue: every lane has written back every
                # output, and the delta banks are clear
                with m.If(fwd_done & (clr == n_words)):
                    m.d.sync += [j.eq(0), i.eq(0), r.eq(0), layer.eq(0)]
                    m.d.sync += [lo.eq(0), lr.eq(0)]
                    m.next = "LOSS"
            with m.State("LOSS"):
                for s in range(B):
                    m.d.comb += [smem_rd[s].addr.eq(Cat((lo + n_in0)[:sbits], sbank)),
                                 vmem_rd[s].addr.eq(Cat(lo[:abits], out_buf)),
                                 rmem_rd[s].addr.eq(Cat(lo[:abits], out_buf))]
                m.d.comb += loss_issue.eq(1)
                with m.If(lr == K - 1):
                    m.d.sync += lr.eq(0)
                    with m.If(lo == n_out_last - 1):
                        m.d.sync += lo.eq(0)
                        m.next = "LOSS_DRAIN"
                    with m.Else():
                        m.d.sync += lo.eq(lo + 1)
                with m.Else():
                    m.d.sync += lr.eq(lr + 1)
            with m.State("LOSS_DRAIN"):
                with m.If(~loss_busy):
                    with m.If((update == UPDATE["none"]) & seq.classify_step):
                        m.d.sync += [am_o.eq(0), hits.eq(0)]
                        m.next = "ARGMAX"
                    with m.Elif(update == UPDATE["none"]):
                        m.next = "DONE"
                    with m.Else():
                        m.d.comb += upd.start.eq(1)
                        m.next = "UPDATE"
            with m.State("UPDATE"):
                # the UpdateUnit's passes (its FSM: MAX, MAX_DRAIN, NORM, DIV, UPD, UPD_DRAIN)
                with m.If(upd.done):
                    m.next = "DONE"
            with m.State("ARGMAX"):
                # run mode's validation hits: output o and target o of every lane, one o per
                # cycle; the comparisons follow a cycle later (am_v1)
                for s in range(B):
                    m.d.comb += [vmem_rd[s].addr.eq(Cat(am_o[:abits], out_buf)),
                                 smem_rd[s].addr.eq(Cat((am_o + n_in0)[:sbits], sbank))]
                m.d.comb += am_issue.eq(1)
                m.d.sync += am_o.eq(am_o + 1)
                with m.If(am_o == n_out_last - 1):
                    m.next = "ARGMAX_END"
            with m.State("ARGMAX_END"):
                with m.If(~am_v1):         # the last comparison is in: count the lanes
                    m.d.sync += hits.eq(sum(lane_active[s] & (am_out_i[s] == am_tgt_i[s])
                                            for s in range(B)))
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.sync += [busy.eq(0), done.eq(1)]
                m.next = "IDLE"

        m.d.comb += seq.step_done.eq(engine_fsm.ongoing("DONE"))

        # ---------------------------------------------------------------- register file
        regs_ro = {
            "ID": Const(ID_MAGIC, 32), "CONFIG_HASH": Const(cfg.hash, 32),
            "STATUS": Cat(busy, done, Const(0, STATUS_ERROR_SHIFT - 2), error),
            "FLAGS": flags, "CYCLES": cycles, "LOSS_LO": loss[:32], "LOSS_HI": loss[32:],
            "MUL_BUSY": mul_busy, "MERGE_BUSY": merge_busy, "K": Const(K, 32),
            "N_PARAMS": Const(P, 32), "BATCH": Const(B, 32), "ERR_ADDR": err_addr,
            "RUN_STATUS": Cat(seq.running, seq.done, seq.stopped,
                              Const(0, RUN_STATUS["error_shift"] - 3), seq.error, seq.epochs_done),
            "RUN_CYCLES_LO": seq.run_cycles[:32], "RUN_CYCLES_HI": seq.run_cycles[32:],
            "RUN_ERR_ADDR": seq.err_addr,
        }
        regs_rw = {"BATCH_N": batch_n, "UPDATE": update, "LR_Q": lr_q, "SGD_CQ": sgd_cq, "SGD_CS": sgd_cs,
                   **run_regs}
        rdata = Signal(32)
        rsel = Signal.like(win)    # the window of the read in flight
        rrow = Signal(range(B + 1))
        rerr = Signal()
        werr = Signal()
        # ERR_ADDR: the first refused access since FLAGS were cleared (a refusal in the
        # clearing cycle is recorded, as its flag stays)
        slave_refused = Signal()           # a partial-strobe write the slave refused itself
        m.d.sync += slave_refused.eq(reg.w_refused)
        refused = werr | rerr | slave_refused
        with m.If(refused & (~flags[FLAGS["bus_error"]] | clear_flags)):
            m.d.sync += err_addr.eq(Cat(Const(0, 2), waddr, Const(0, 31 - 2 - len(waddr)), ~rerr))
        with m.If(reg.r_en):
            m.d.sync += [rsel.eq(win), rdata.eq(0), rerr.eq(0)]
            with m.Switch(win):
                with m.Case(0):
                    with m.Switch(waddr):
                        for name, val in {**regs_ro, **regs_rw}.items():
                            with m.Case(rmap[name].offset >> 2):
                                m.d.sync += rdata.eq(val.as_signed() if rmap[name].signed else val)
                        with m.Default():
                            m.d.sync += rerr.eq(1)
                with m.Case(W_WIN):
                    m.d.sync += rerr.eq(locked | (woff >= P))
                with m.Case(S_WIN):
                    m.d.sync += [rrow.eq(w_row), rerr.eq(locked | (w_row >= B) | (w_col >= n_in0 + n_out_last))]
                with m.Case(O_WIN):
                    m.d.sync += [rrow.eq(o_row), rerr.eq(locked | (o_row >= B) | (o_col >= n_out_last))]
        with m.If(reg.w_en):
            with m.Switch(win):
                with m.Case(0):
                    with m.Switch(waddr):
                        with m.Case(rmap["CTRL"].offset >> 2):
                            wd = reg.w_data
                            m.d.comb += [clear_flags.eq(wd[CTRL["clear_flags"]]),
                                         seq.stop.eq(wd[CTRL["stop"]])]
                            with m.If(run_active & (wd[CTRL["start"]] | wd[CTRL["run"]])):
                                # a step or a second run while a run goes on: refused
                                m.d.sync += werr.eq(1)
                            with m.Else():
                                m.d.comb += [host_start.eq(wd[CTRL["start"]]), seq.run.eq(wd[CTRL["run"]])]
                                with m.If(wd[CTRL["start"]] & busy):
                                    m.d.sync += error.eq(StartError.BUSY)
                        for name, sig in regs_rw.items():
                            with m.Case(rmap[name].offset >> 2):
                                # a value the register cannot hold is refused, not truncated
                                with m.If(locked | ~_takes(reg.w_data, rmap[name], sig.shape())):
                                    m.d.sync += werr.eq(1)
                                with m.Else():
                                    m.d.sync += sig.eq(reg.w_data)
                        with m.Default():
                            m.d.sync += werr.eq(1)
                with m.Case(W_WIN):
                    m.d.sync += werr.eq(locked | (woff >= P))
                with m.Case(S_WIN):
                    ok = ~locked & (w_row < B) & (w_col < n_in0 + n_out_last)
                    for s in range(B):
                        m.d.comb += [smem_wr[s].addr.eq(Cat(w_col[:sbits], sbank)),
                                     smem_wr[s].data.eq(reg.w_data), smem_wr[s].en.eq(ok & (w_row == s))]
                    m.d.sync += werr.eq(~ok)
                with m.Default():       # OUTPUTS is read-only; other windows are unmapped
                    m.d.sync += werr.eq(1)
        with m.Else():
            m.d.sync += werr.eq(0)
        with m.If(~reg.r_en):
            m.d.sync += rerr.eq(0)
        with m.If(seq.sw_en):
            for s in range(B):
                m.d.comb += [smem_wr[s].addr.eq(Cat(seq.sw_col, seq.sw_bank)),
                             smem_wr[s].data.eq(seq.sw_data), smem_wr[s].en.eq(seq.sw_lane == s)]
        m.d.comb += seq.w_data.eq(w_rd.data)
        flag_terms.append(refused << FLAGS["bus_error"])
        # every flag event is registered where it arises (one cycle late into FLAGS), so no
        # path runs from a lane's datapath through the OR over the lanes into FLAGS
        flag_q = [Signal(len(FLAGS), name=f"flag_ev{n}") for n in range(len(flag_terms))]
        m.d.sync += [q.eq(t) for q, t in zip(flag_q, flag_terms)]
        m.d.comb += set_flags.eq(_or_all(flag_q))
        samples_data = Array([smem_rd[s].data for s in range(B)])[rrow]
        outputs_data = Array([vmem_rd[s].data for s in range(B)])[rrow]
        read_data = {0: rdata, W_WIN: w_rd.data.as_signed(), S_WIN: samples_data, O_WIN: outputs_data}
        m.d.comb += [
            reg.r_data.eq(Mux(rerr, 0, Array(read_data.get(i, 0) for i in range(1 << len(win)))[rsel])),
            reg.error.eq(rerr | werr),
        ]
        return m
