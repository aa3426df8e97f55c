"""The update passes of a training step: ``m = max|D|``, normalisation, reciprocal, ``w -= upd``.

:class:`UpdateUnit` runs them on a start strobe, ``M`` (:attr:`~dpfm.config.Config.update_lanes`)
parameters per cycle, bit-exact with :func:`dpfm.reference.mlp.fixed_update` and the weight
saturation of :meth:`dpfm.reference.MLP.step_raw`.  The memories stay with the engine: the
unit addresses words of ``M`` parameters (parameter ``p`` is element ``p % M`` of word
``p // M``) in the lanes' delta banks and in the weight memory, and writes the weight words
back with a per-weight enable.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config
from dpfm.reference.mlp import NORM_BITS, RATIO_FRAC, RECIP_FRAC, SGD_CS_MIN

from .fixmath import lane_sum_stages, pipelined_sum, round_shift, saturate
from .regmap import UPDATE, register_map

__all__ = ["UpdateUnit", "RECIP_BITS", "DIV_CYCLES", "NORM_CYCLES", "MAX_PIPE", "UPDATE_PIPE",
           "delta_bank_shape", "update_words"]

#: Bits of the maxnorm reciprocal ``floor(2**RECIP_FRAC / m_n)``: the normalised maximum
#: ``m_n`` lies in ``[2**(NORM_BITS-1), 2**NORM_BITS)``, so the reciprocal lies in
#: ``(2**(RECIP_FRAC-NORM_BITS), 2**(RECIP_FRAC-NORM_BITS+1)]`` (20 bits by default; the
#: largest, for ``m_n = 2**16``, is ``2**19`` itself).
RECIP_BITS = RECIP_FRAC - NORM_BITS + 2
#: Cycles of the DIV state: the radix-4 restoring divider makes two quotient bits per cycle
#: and skips the quotient bits above :data:`RECIP_BITS`, which are always 0.
DIV_CYCLES = (RECIP_BITS + 1) // 2
#: Cycles of the NORM state: the bit length of ``max|D|``; the shifts and the place and
#: power of two of the ``Dn`` window; the normalised maximum and the place and power of two
#: of the sgd window; three times the maximum (for the divider).
NORM_CYCLES = 4
#: Register stages of the MAX pass after the word address, besides the
#: :func:`~dpfm.rtl.fixmath.lane_sum_stages` of the sum over the delta banks (``T``) and of
#: the maximum over the word's ``M`` parameters (``T_M = lane_sum_stages(M)``): the banks'
#: read, the magnitude key of ``D = sat(sum)``, that key again (the UPD pass takes its window
#: there; the word's maximum is compared with the running maximum in the last stage).
MAX_PIPE = 3
#: Register stages of the UPD pass after the word address, besides the ``T`` of the sum
#: over the delta banks: the reads; ``D = sat(sum)`` as its magnitude key; the window of
#: ``D``; ``Dn`` (the window times a power of two, a DSP48E1); ``Dn * (-recip | c_q)`` plus
#: the maxnorm rounding (a DSP48E1); ``-ratio`` and ``lr_q`` (maxnorm) or the sgd window and
#: a power of two; ``w - upd`` as their product plus the weight and the rounding (a DSP48E1
#: and its post-adder); its saturation (written in that stage).
UPDATE_PIPE = 8


def update_words(config: Config) -> int:
    """Words of ``M = config.update_lanes`` parameters: ``ceil(n_params / M)``."""
    return -(-config.n_params // config.update_lanes)


def delta_bank_shape(config: Config) -> Shape:
    """Exact shape of one lane's delta sum ``D_s[p] = sum e * g``.

    A lane adds at most ``n_out * k`` products ``e * g`` (saturated error in the value
    format times a register in the grad format) into one parameter; each lies in
    ``[-2**(v+g-2), 2**(v+g-2)]`` (``v``, ``g`` the formats' bits), so the sum never leaves
    ``n_out * k`` times that: 46 bits for the seed net at k=16, 50 for 64-32-10 at k=16.
    """
    fm = config.formats
    bound = config.n_out * config.k << (fm.value.bits + fm.grad.bits - 2)
    return Shape.cast(range(-bound, bound + 1))


class UpdateUnit(wiring.Component):
    """The update passes MAX -> NORM -> DIV (maxnorm) -> UPD, ``M`` parameters per cycle.

    On ``start`` (the engine's UPDATE register in ``mode``: sgd or maxnorm) the unit reads
    every word of the ``batch`` lanes' delta banks and sums them per parameter, ``D =
    sat_delta(sum)`` (format ``config.formats.delta``, ``value.frac + grad.frac`` fractional
    bits, 48 bits; a clamp raises ``sat_delta``), finds ``m = max|D|``; NORM normalises it to
    ``m_n`` in ``[2**16, 2**17)``; for maxnorm a radix-4 restoring divider makes the
    :data:`RECIP_BITS`-bit ``floor(2**35 / m_n)``; UPD reads the words again with the weight
    words (weight format, ``weight.bits`` per weight) and writes ``sat_weight(w - upd)`` back
    as :func:`dpfm.reference.mlp.fixed_update` defines ``upd`` (a clamp raises
    ``sat_weight``).  When ``m == 0`` the unit ends after NORM and writes nothing.  Elements
    of the last word past ``n_params`` are never written and raise no flag.

    Latency (cycles from the ``start`` cycle to the ``done`` cycle, both counted, ``W =
    ceil(n_params / M)``, ``T = lane_sum_stages(batch)``, ``T_M = lane_sum_stages(M)``):
    MAX ``W``, MAX_DRAIN ``1 + MAX_PIPE + T + T_M``, NORM :data:`NORM_CYCLES`, DIV
    :data:`DIV_CYCLES` (maxnorm only), UPD ``W``, UPD_DRAIN ``1 + UPDATE_PIPE + T``; after
    NORM when ``m == 0``.  Throughput: ``M`` parameters per cycle in MAX and UPD (three
    DSP48E1 multiplies per parameter in UPD: the ``Dn`` shift ``25 x 9``, ``Dn * mult`` ``18
    x 21`` with its rounding constant, ``a * b`` ``25 x 18`` with the weight and rounding in
    the post-adder; no barrel shifter: a variable shift is a multiplexer of aligned windows
    and a product by a power of two).

    Parameters
    ----------
    config : Config
        Net, batch, formats and ``update_lanes`` (``M``, a power of two).

    Members
    -------
    start : ``In(1)``
        Begin the passes (taken in IDLE only).
    mode : ``In(2)``
        The UPDATE register: ``UPDATE["sgd"]`` or ``UPDATE["maxnorm"]``; held while busy.
    lr_q, sgd_cq, sgd_cs : ``In``
        The LR_Q, SGD_CQ and SGD_CS registers (their register-map shapes); held while busy.
    busy : ``Out(1)``
        The unit is in a pass; it drives ``addr`` (and ``w_rd_addr`` in UPD).
    done : ``Out(1)``
        High in the unit's last cycle (the end of UPD_DRAIN, or of NORM when ``m == 0``).
    addr : ``Out(range(W))``
        Word address of the delta banks' read ports; their data is expected in ``deltas``
        the next cycle.
    deltas : ``In(ArrayLayout(unsigned(M * d), batch))``
        The banks' read data, lane by lane, ``M`` deltas of :func:`delta_bank_shape` (``d``
        bits, two's complement) per word.
    w_rd_addr : ``Out(range(W))``
        Word address of the weight memory's read port during UPD; data expected in
        ``weights`` the next cycle.
    weights : ``In(unsigned(M * weight.bits))``
        The weight word read.
    w_addr, w_data, w_en : ``Out``
        The weight memory's write port: word address, ``M`` weights, one enable per weight.
    sat_delta, sat_weight : ``Out(1)``
        Saturation events (one cycle each) for the FLAGS register.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"UpdateUnit needs a dpfm.config.Config, not {config!r}")
        self._config = config
        M = config.update_lanes
        words = update_words(config)
        rmap = register_map(config)

        def reg_shape(name):
            r = rmap[name]
            return signed(r.bits) if r.signed else unsigned(r.bits)
        self._dshape = delta_bank_shape(config)
        wbits = config.formats.weight.bits
        super().__init__({
            "start": In(1), "mode": In(2),
            "lr_q": In(reg_shape("LR_Q")), "sgd_cq": In(reg_shape("SGD_CQ")),
            "sgd_cs": In(reg_shape("SGD_CS")),
            "busy": Out(1), "done": Out(1),
            "addr": Out(range(max(words, 2))),
            "deltas": In(data.ArrayLayout(unsigned(M * self._dshape.width), config.batch)),
            "w_rd_addr": Out(range(max(words, 2))),
            "weights": In(unsigned(M * wbits)),
            "w_addr": Out(range(max(words, 2))), "w_data": Out(unsigned(M * wbits)), "w_en": Out(M),
            "sat_delta": Out(1), "sat_weight": Out(1),
        })

    @property
    def config(self) -> Config:
        return self._config

    @property
    def delta_shape(self) -> Shape:
        """Shape of one delta in a bank word (:func:`delta_bank_shape`)."""
        return self._dshape

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        fm = cfg.formats
        fw = fm.weight.frac
        B, P, M = cfg.batch, cfg.n_params, cfg.update_lanes
        words = update_words(cfg)
        dshape = self._dshape
        db = dshape.width
        wshape = signed(fm.weight.bits)
        wb = wshape.width
        T = lane_sum_stages(B)
        TM = lane_sum_stages(M)

        # stage t holds what stage t-1 computed; stage 0 puts the word address on the banks:
        #   1             the banks' read data
        #   2 .. 1+T      the sum over the banks, per element
        #   ST_SAT        the magnitude key of D = sat(sum) (D is the key's bits, see below)
        #                 and the overflow of the saturation
        #   ST_ABS        MAX: the key again; UPD: the window win1 of D
        #   ST_ABS+1..TM  MAX: the word's largest key (compared with the running one there)
        #   ST_ABS+1      UPD: win1 * 2**(7 - f) (a DSP48E1): Dn
        #   ST_ABS+2      Dn * mult + rnd3 (a DSP48E1); the weight word's read address
        #   ST_ABS+3      a = lr_q, b = -ratio (maxnorm) or a = win2, b = -2**(16 - f) (sgd);
        #                 the weight word on the read data
        #   ST_ABS+4      w * 2**16 + 2**15 - 1 + a * b (a DSP48E1, the weight and rounding in
        #                 its post-adder): w - upd in the bits from 16
        #   ST_ABS+5      w_new = sat(w - upd): written to W in this stage
        ST_SAT = 2 + T
        ST_ABS = ST_SAT + 1
        ST_MAX = ST_ABS + TM
        ST_W = ST_ABS + 5
        assert ST_MAX == MAX_PIPE + T + TM and ST_W == UPDATE_PIPE + T
        last = max(ST_W, ST_MAX)

        p = Signal(range(words + 1))
        max_pass = Signal()
        upd_pass = Signal()
        pv = [Signal(name=f"pv{t}") for t in range(last + 1)]       # a word in stage t
        pmax = [Signal(name=f"pmax{t}") for t in range(last + 1)]   # ... of the MAX pass
        pa = [Signal(range(max(words, 2)), name=f"pa{t}") for t in range(last + 1)]   # its address
        m.d.comb += [pv[0].eq(max_pass | upd_pass), pmax[0].eq(max_pass), pa[0].eq(p)]
        for t in range(1, last + 1):
            m.d.sync += [pv[t].eq(pv[t - 1]), pmax[t].eq(pmax[t - 1]), pa[t].eq(pa[t - 1])]
        pupd = [pv[t] & ~pmax[t] for t in range(last + 1)]
        update_busy = Cat(pv[1:ST_W + 1]).any()
        max_busy = Cat(pmax[1:ST_MAX + 1]).any()
        m.d.comb += [self.addr.eq(p), self.w_rd_addr.eq(pa[ST_ABS + 2])]

        # per-step constants (NORM, DIV)
        dkey = Signal(fm.delta.bits)       # the largest magnitude key: 2 * u + s (see below)
        dmax = Signal(fm.delta.bits)       # m = max|D| = u + s of dkey
        blen = Signal(7)                   # bitlength(dmax)
        shr = Signal(6)                    # max(sh, 0)
        shl = Signal(5)                    # max(-sh, 0)
        mn = Signal(NORM_BITS + 1)         # m normalised: 2**(NORM_BITS-1) <= mn < 2**NORM_BITS
        mn3 = Signal(NORM_BITS + 3)        # 3 * mn, for the radix-4 divider
        norm_i = Signal(range(NORM_CYCLES + 1))
        recip = Signal(2 * DIV_CYCLES)     # floor(2**RECIP_FRAC / mn) < 2**RECIP_BITS
        rem = Signal(NORM_BITS + 2)
        div_i = Signal(range(DIV_CYCLES + 1))
        m.d.sync += dmax.eq(dkey[1:] + dkey[0])

        maxnorm = self.mode == UPDATE["maxnorm"]
        # Dn = D >> sh (floor) or D << -sh: -2**(NORM_BITS-1)*2 <= Dn < 2**NORM_BITS since |D| <= m.
        # No barrel shifter: with t = sh - (1 - NORM_BITS) = blen - 1 >= 0, a word-aligned
        # window win1 = floor(D / 2**b) at b = 8 * (t >> 3) + 1 - NORM_BITS (a multiplexer of
        # n_win1 places) is exact in WIN1 bits (|D| < 2**blen, so |D / 2**b| < 2**(f +
        # NORM_BITS) with f = t & 7 <= 7), and the rest of the shift is a DSP48E1 product by a
        # power of two: Dn = floor(win1 * 2**(7 - f) / 2**7), the product's bits 7 and up.
        WIN1 = NORM_BITS + 8
        n_win1 = ((fm.delta.bits - 1) >> 3) + 1           # blen <= delta.bits
        dn_idx = Signal(range(max(n_win1, 2)))           # t >> 3
        dn_pow = Signal(8)                               # 2**(7 - (t & 7))
        # -recip (maxnorm) or c_q (sgd), and the constant the DSP48E1 adds to Dn * mult:
        # maxnorm's ratio is rounded there, negated (see ratio_n below)
        mult = Signal(signed(max(RECIP_BITS, len(self.sgd_cq)) + 1))
        rnd3 = Signal(RECIP_FRAC - RATIO_FRAC - 1)
        prod_w = NORM_BITS + 1 + len(mult) + 1
        # sgd: upd = round_shift(X, S), X = Dn * c_q, S = delta.frac + cs - weight.frac - sh.
        # A shift of at least the product's width rounds every product to 0, so S is held
        # clamped to it.  The smallest S (cs = SGD_CS_MIN, sh = delta.bits - NORM_BITS) is 3
        # for the default formats.  No barrel shifter either: with b = 4 * ((S - 1) >> 2) and
        # f = S - b in 1..4, the nested floors give round_shift(X, S) = floor((floor(X / 2**b)
        # + 2**(f-1)) / 2**f) = round_shift(win2 * 2**(RATIO_FRAC - f), RATIO_FRAC) with the
        # window win2 = floor(X / 2**b) (a multiplexer of the places b): the maxnorm rounding
        # of ratio * lr_q on the same DSP48E1.  win2 is WIN2 bits (the DSP's 25-bit port);
        # when floor(X / 2**b) does not fit, |upd| >= 2**(WIN2 - 1 - 4) > 2 * 2**(weight.bits
        # - 1) and sat(w - upd) is the weight format's end opposite X's sign: the stage
        # forces it (sov).
        WIN2 = 25
        assert WIN2 - 1 - 4 > fm.weight.bits and RATIO_FRAC >= 4
        sgd_shift_max = prod_w
        sgd_shift_min = fm.delta.frac - fw + SGD_CS_MIN - (fm.delta.bits - NORM_BITS)
        sgd_shift = Signal(range(min(0, sgd_shift_min), sgd_shift_max + 1))
        k_lo, k_hi = (sgd_shift_min - 1) >> 2, (sgd_shift_max - 1) >> 2
        sgd_k = Signal(range(k_hi - k_lo + 1))           # (S - 1) >> 2, from k_lo
        sgd_pow = Signal(signed(RATIO_FRAC + 1))         # -2**(RATIO_FRAC - f)
        m.d.sync += [                                    # constant in UPD
            mult.eq(Mux(maxnorm, -recip[:RECIP_BITS], self.sgd_cq)),
            rnd3.eq(Mux(maxnorm, (1 << (RECIP_FRAC - RATIO_FRAC - 1)) - 1, 0)),
        ]

        # the parameter datapath, one copy per element of a word
        keys, d_ovfs, w_news, w_ovfs = [], [], [], []
        for e in range(M):
            terms = [self.deltas[s].word_select(e, db).as_signed() for s in range(B)]
            d_total = pipelined_sum(m, terms, f"d_sum{e}_")
            d_ovf = Signal(name=f"d_ovf{e}")
            d_sat_v = Signal(signed(fm.delta.bits), name=f"d_sat{e}")   # comb, sign-extended
            d_sat_e, d_ovf_v = saturate(d_total, fm.delta)
            m.d.comb += d_sat_v.eq(d_sat_e)
            # the magnitude key: u = D ^ sign (|D| for D >= 0, |D| - 1 below), s = the sign;
            # 2 * u + s orders like |D| (ties between +x and -x aside), |D| = u + s
            sign = d_sat_v[-1]
            key1 = Signal(fm.delta.bits, name=f"dkey1_{e}")     # stage ST_SAT
            key = Signal(fm.delta.bits, name=f"dkey{e}")        # ... ST_ABS
            d_rec = Cat(key1[1:] ^ key1[0].replicate(fm.delta.bits - 1), key1[0]).as_signed()   # D
            win1 = Signal(signed(WIN1), name=f"win1_{e}")
            prod_s = Signal(signed(WIN1 + 9), name=f"dn2_p{e}")     # Dn * 2**7 + the bits below
            dn2 = prod_s[7:7 + NORM_BITS + 1].as_signed()
            # maxnorm: prod_u3 = -Dn * recip + 2**18 - 1, so ratio_n = prod_u3 >> 19 = -ratio
            # (-floor((x + 2**18) / 2**19) = floor((2**18 - 1 - x) / 2**19)); sgd: X = Dn * c_q
            prod_u3 = Signal(signed(prod_w), name=f"prod_u3_{e}")
            ratio_n = prod_u3 >> (RECIP_FRAC - RATIO_FRAC)    # |ratio| <= 2**16 + 1
            a2 = Signal(signed(WIN2), name=f"a2_{e}")    # lr_q (maxnorm) or win2 (sgd)
            b2 = Signal(signed(RATIO_FRAC + 2), name=f"b2_{e}")   # -ratio or -2**(RATIO_FRAC - f)
            sov = [Signal(name=f"sov{t}_{e}") for t in (3, 4)]   # sgd: win2 did not fit
            sneg = [Signal(name=f"sneg{t}_{e}") for t in (3, 4)]  # ... and X < 0
            # w - round_shift(a * b, 16) = floor((w * 2**16 + 2**15 - 1 - a * b) / 2**16): the
            # weight and the rounding in the DSP48E1's C port, b negated; |a * b| < 2**(WIN2
            # + 15) since |upd| < 2**(WIN2 - 1) (win2 fits) or |ratio * lr_q| < 2**35
            prod_u4 = Signal(signed(max(WIN2 + RATIO_FRAC, wb + RATIO_FRAC) + 2), name=f"prod_u4_{e}")
            w_diff = prod_u4[RATIO_FRAC:].as_signed()
            w_new = Signal(wshape, name=f"w_new{e}")
            w_ovf = Signal(name=f"w_ovf{e}")
            w_word = self.weights.word_select(e, wb).as_signed()        # held with stage ST_ABS + 3
            with m.Switch(dn_idx):                                                          # ST_ABS
                for i in range(n_win1):
                    b = 8 * i + 1 - NORM_BITS
                    with m.Case(i):
                        m.d.sync += win1.eq(d_rec >> b if b >= 0 else d_rec << -b)
            x_neg = prod_u3[-1]            # sgd
            win2 = Signal(signed(WIN2), name=f"win2_{e}")
            fits = Signal(name=f"fits{e}")
            with m.Switch(sgd_k):                                                           # +2
                for k in range(k_hi - k_lo + 1):
                    b = 4 * (k + k_lo)
                    lo = b + WIN2 - 1           # X fits the window when its bits from lo agree
                    if lo >= prod_w - 1:
                        fits_k = Const(1, 1)
                    elif lo >= 0:
                        fits_k = prod_u3[lo:].all() | ~prod_u3[lo:].any()
                    else:
                        fits_k = prod_u3 == 0
                    with m.Case(k):
                        m.d.comb += [win2.eq(prod_u3 >> b if b >= 0 else prod_u3 << -b),
                                     fits.eq(fits_k)]
            m.d.sync += [
                d_ovf.eq(d_ovf_v),                                                          # ST_SAT
                key1.eq(Cat(sign, d_sat_v[:-1] ^ sign.replicate(fm.delta.bits - 1))),
                key.eq(key1),                                                               # ST_ABS
                prod_s.eq(win1 * dn_pow),                                                   # +1
                prod_u3.eq(dn2 * mult + rnd3),                                              # +2
                a2.eq(Mux(maxnorm, self.lr_q, win2)), b2.eq(Mux(maxnorm, ratio_n, sgd_pow)), # +3
                sov[0].eq(~maxnorm & ~fits), sneg[0].eq(x_neg),
                prod_u4.eq(Cat(Const((1 << (RATIO_FRAC - 1)) - 1, RATIO_FRAC), w_word).as_signed()
                           + a2 * b2),                                                      # +4
                sov[1].eq(sov[0]), sneg[1].eq(sneg[0]),
            ]
            w_sat, w_sat_ovf = saturate(w_diff, fm.weight)                                  # +5
            m.d.sync += [
                w_new.eq(Mux(sov[1], Mux(sneg[1], fm.weight.max_int, fm.weight.min_int), w_sat)),
                w_ovf.eq(sov[1] | w_sat_ovf),
            ]
            keys.append(key)
            d_ovfs.append(d_ovf)
            w_news.append(w_new)
            w_ovfs.append(w_ovf)

        def larger(a, b):
            return Mux(a >= b, a, b)
        word_key = pipelined_sum(m, keys, "wkey", combine=larger)
        with m.If(pmax[ST_MAX] & (word_key > dkey)):
            m.d.sync += dkey.eq(word_key)

        # elements past n_params in the last word: never written, no flag
        tail = P % M
        if tail:
            elem_ok = Cat(Const(1, 1) if e < tail else (pa[ST_W] != words - 1) for e in range(M))
        else:
            elem_ok = Const((1 << M) - 1, M)
        m.d.comb += [
            self.w_addr.eq(pa[ST_W]), self.w_data.eq(Cat(*w_news)),
            self.w_en.eq(Mux(pupd[ST_W], elem_ok, 0)),
            self.sat_delta.eq(pmax[ST_SAT] & Cat(*d_ovfs).any()),
            self.sat_weight.eq(pupd[ST_W] & (Cat(*w_ovfs) & elem_ok).any()),
        ]

        with m.FSM(name="update"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [p.eq(0), dkey.eq(0)]
                    m.next = "MAX"
            with m.State("MAX"):
                m.d.comb += [max_pass.eq(1), self.busy.eq(1)]
                m.d.sync += p.eq(p + 1)
                with m.If(p == words - 1):
                    m.next = "MAX_DRAIN"
            with m.State("MAX_DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~max_busy):
                    m.d.sync += norm_i.eq(0)
                    m.next = "NORM"
            with m.State("NORM"):
                # NORM_CYCLES cycles, norm_i counting: 0 bitlength(dmax); 1 the shifts
                # sh = bitlength - NORM_BITS and the sgd shift; 2 mn = dmax normalised to
                # NORM_BITS bits and the sgd shift's parts; 3 3 * mn, the sgd rounding half
                # and the divider's start
                m.d.comb += self.busy.eq(1)
                m.d.sync += norm_i.eq(norm_i + 1)
                with m.Switch(norm_i):
                    with m.Case(0):
                        bl = Signal(7)
                        for bit in range(len(dmax)):
                            with m.If(dmax[bit]):
                                m.d.comb += bl.eq(bit + 1)
                        m.d.sync += blen.eq(bl)
                    with m.Case(1):
                        sh = blen.as_signed() - NORM_BITS
                        sgd_full = (fm.delta.frac - fw + NORM_BITS) + self.sgd_cs - blen
                        t = (blen - 1)[:len(blen)]
                        m.d.sync += [
                            shr.eq(Mux(sh >= 0, sh, 0)), shl.eq(Mux(sh < 0, -sh, 0)),
                            sgd_shift.eq(Mux(sgd_full > sgd_shift_max, sgd_shift_max, sgd_full)),
                            dn_idx.eq(t >> 3), dn_pow.eq(Const(1 << 7, 8) >> t[:3]),
                        ]
                    with m.Case(2):
                        s1 = sgd_shift - 1
                        m.d.sync += [
                            mn.eq(Mux(shl != 0, dmax << shl, dmax >> shr)),
                            sgd_k.eq((s1 >> 2) - k_lo),
                            sgd_pow.eq(-(Const(1 << (RATIO_FRAC - 1), RATIO_FRAC) >> s1[:2])),
                        ]
                    with m.Case(NORM_CYCLES - 1):
                        m.d.sync += [
                            mn3.eq(mn + (mn << 1)),
                            # the quotient bits above 2 * DIV_CYCLES are 0: their remainder is
                            # the dividend 2**RECIP_FRAC cut to its bits above them
                            rem.eq(1 << (RECIP_FRAC - 2 * DIV_CYCLES)), recip.eq(0), div_i.eq(0),
                            p.eq(0),
                        ]
                        with m.If(dmax == 0):
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Elif(maxnorm):
                            m.next = "DIV"
                        with m.Else():
                            m.next = "UPD"
            with m.State("DIV"):
                # radix-4 restoring division of 2**RECIP_FRAC by mn, two quotient bits per
                # cycle, the 2 * DIV_CYCLES low ones (the dividend's bits there are 0): the
                # three trial remainders 4 * rem - q * mn (q = 1, 2, 3) in parallel, the
                # largest q whose trial is not negative wins (rem < mn, so q <= 3)
                m.d.comb += self.busy.eq(1)
                trial = Cat(Const(0, 2), rem)
                d1, d2, d3 = trial - mn, trial - (mn << 1), trial - mn3
                ge1, ge2, ge3 = ~d1[-1], ~d2[-1], ~d3[-1]
                rem_next = Mux(ge3, d3, Mux(ge2, d2, Mux(ge1, d1, trial)))[:len(rem)]
                q_hi = ge2
                q_lo = ge3 | (ge1 & ~ge2)
                m.d.sync += [rem.eq(rem_next), recip.eq(Cat(q_lo, q_hi, recip)), div_i.eq(div_i + 1)]
                with m.If(div_i == DIV_CYCLES - 1):
                    m.next = "UPD"
            with m.State("UPD"):
                m.d.comb += [upd_pass.eq(1), self.busy.eq(1)]
                m.d.sync += p.eq(p + 1)
                with m.If(p == words - 1):
                    m.next = "UPD_DRAIN"
            with m.State("UPD_DRAIN"):
                m.d.comb += self.busy.eq(1)
                with m.If(~update_busy):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
