"""Run mode: the sequencer that trains whole runs from memory, over an AXI4 master.

The host writes one buffer (:func:`dpfm.rtl.protocol.run_layout`: training and validation
rows, every epoch's batch order) and the run registers; :class:`RunSequencer` then does what
:meth:`dpfm.host.Trainer.fit` does step by step, without the host: the training steps in the
buffer's batch order, the forward-only passes over the training and validation rows, the
per-epoch weight snapshot and log entry (docs/engine.md "Run mode").

Two machines work side by side:

- the **fetcher** reads, over the AXI4 read channels, the rows of the next batch (after its
  batch-order slot, for a training step) into the idle bank of the engine's double-buffered
  sample memories, while the engine computes the current step, and queues a descriptor of
  the batch (phase, size, bank, last of its epoch);
- the **controller** takes the descriptors in order, writes the step's settings into the
  engine's setting registers, starts the step, waits for it, counts its results into the
  epoch's sums, and at the end of an epoch writes the weights and the log entry over the
  AXI4 write channels.

The fetcher runs at most one batch ahead of the step in progress (two banks), so memory
latency is hidden whenever fetching a batch takes less time than computing one.
"""

from __future__ import annotations

import contextlib

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from dpfm.config import Config

from .axi import AXCACHE_MODIFIABLE, BURST_INCR, AXI4Signature
from .protocol import LOG_FIELDS, LOG_WORDS, MAX_BURST, run_layout
from .regmap import FLAGS, SAT_FLAGS, UPDATE, Resp, RunError

__all__ = ["RunSequencer", "PHASE_TRAIN", "PHASE_TRAIN_EVAL", "PHASE_VAL_EVAL", "FLAG_SETTLE"]

PHASE_TRAIN, PHASE_TRAIN_EVAL, PHASE_VAL_EVAL = 0, 1, 2
#: Cycles the controller waits after a step's DONE before it reads FLAGS: a flag event is
#: registered where it arises and again in FLAGS, so the last events of a step land then.
FLAG_SETTLE = 3


class RunSequencer(wiring.Component):
    """Trains whole runs: fetches batches over AXI4, starts the engine's steps, logs epochs.

    Parameters
    ----------
    config : Config
        The engine's configuration (rows, batch, parameters).

    Members
    -------
    m_axi : ``Out(AXI4Signature(addr_width=32))``
        To memory.  Reads: one burst per batch-order slot (``n`` beats) and one per row (or
        per 256-word piece of it); writes: 16-beat bursts (snapshots, log entries).
    run, stop : ``In(1)``
        One-cycle requests (CTRL.run, CTRL.stop).  ``run`` is ignored while ``running``.
    train_addr, val_addr, perm_addr, log_addr, snap_addr, train_n, val_n, epochs, classify
        The run registers; read at ``run`` (the addresses and counts must stay unchanged
        while the run goes on: the engine refuses writes to them then).
    batch_n, update, sgd_cq, sgd_cs, sgd_cq_last, sgd_cs_last : In
        The setting registers, latched at ``run`` (and written back when the run ends).
    step_busy, step_done, step_error, loss, flags, cycles, mul_busy, merge_busy, hits : In
        The engine's step state and results (``step_done``: the cycle of its DONE state).
    set_en, set_batch_n, set_update, set_cq, set_cs : Out
        Write the engine's setting registers (one cycle before ``step_start``).
    step_start : ``Out(1)``
        Start a step.  ``classify_step`` (held during it): count the hits.
    sbank : ``Out(1)``
        The sample bank the engine's steps read (set at each ``step_start``).
    sw_en, sw_lane, sw_col, sw_bank, sw_data : Out
        Sample memory writes (one word per cycle).
    w_addr : Out, w_data : In
        Weight memory reads for the snapshot (synchronous, one cycle).
    flags_clear : ``Out(len(FLAGS))``
        The saturation flags to clear (one cycle).
    running, done, stopped, error, epochs_done, run_cycles, err_addr : Out
        RUN_STATUS and friends.

    Throughput: a step costs its engine cycles plus ``5 + FLAG_SETTLE`` (settings, start,
    check, result); an epoch adds ``2 * snap_words + 2 * (snap_words / 16)`` cycles of
    snapshot and about 20 of log, plus the memory's write latency.
    """

    def __init__(self, config: Config):
        if not isinstance(config, Config):
            raise TypeError(f"RunSequencer needs a dpfm.config.Config, not {config!r}")
        self.config = config
        lay = run_layout(config, 1, 0, 0)
        self.row_words = lay.row_words
        self.perm_stride = lay.perm_stride
        self.snap_words = lay.snap_words
        B, fm = config.batch, config.formats
        reg = In
        super().__init__({
            "m_axi": Out(AXI4Signature(addr_width=32)),
            "run": In(1), "stop": In(1),
            "train_addr": reg(32), "val_addr": reg(32), "perm_addr": reg(32),
            "log_addr": reg(32), "snap_addr": reg(32),
            "train_n": reg(24), "val_n": reg(24), "epochs": reg(16), "classify": reg(1),
            "batch_n": reg(range(B + 1)), "update": reg(2), "sgd_cq": reg(32), "sgd_cs": reg(8),
            "sgd_cq_last": reg(32), "sgd_cs_last": reg(8),
            "step_busy": In(1), "step_done": In(1), "step_error": In(8),
            "loss": In(64), "flags": In(len(FLAGS)), "cycles": In(32), "mul_busy": In(32),
            "merge_busy": In(32), "hits": In(16),
            "set_en": Out(1), "set_batch_n": Out(range(B + 1)), "set_update": Out(2),
            "set_cq": Out(32), "set_cs": Out(8),
            "step_start": Out(1), "classify_step": Out(1), "sbank": Out(1),
            "sw_en": Out(1), "sw_lane": Out(range(B)), "sw_col": Out(range(self.row_words)),
            "sw_bank": Out(1), "sw_data": Out(fm.value.bits),
            "w_addr": Out(range(max(2, self.snap_words))), "w_data": In(fm.weight.bits),
            "flags_clear": Out(len(FLAGS)),
            "running": Out(1), "done": Out(1), "stopped": Out(1), "error": Out(8),
            "epochs_done": Out(16), "run_cycles": Out(64), "err_addr": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.config
        B, P = cfg.batch, cfg.n_params
        rowlen = cfg.n_in + cfg.n_out
        row_shift = (self.row_words * 4).bit_length() - 1
        n_chunks = -(-rowlen // MAX_BURST)
        perm_bytes = self.perm_stride * 4
        snap_chunks = self.snap_words // 16
        ax = self.m_axi

        # -------------------------------------------------------------- run state
        running = self.running
        err = self.error
        halt = Signal()                    # no new batch fetches (the run is ending)
        stop_req = Signal()
        m.d.comb += [ax.awsize.eq(2), ax.arsize.eq(2), ax.awburst.eq(BURST_INCR),
                     ax.arburst.eq(BURST_INCR), ax.awcache.eq(AXCACHE_MODIFIABLE),
                     ax.arcache.eq(AXCACHE_MODIFIABLE), ax.wstrb.eq(0xF), ax.bready.eq(1)]
        with m.If(running):
            m.d.sync += self.run_cycles.eq(self.run_cycles + 1)
        with m.If(self.stop & running):
            m.d.sync += stop_req.eq(1)
        run_update = Signal(2)
        run_batch_n = Signal(range(cfg.batch + 1))
        run_cq, run_cs = Signal(32), Signal(8)
        fail = Signal()                    # an error arose this cycle (first one wins)
        fail_code = Signal(8)
        fail_addr = Signal(32)
        with m.If(fail & (err == 0)):
            m.d.sync += [err.eq(fail_code), self.err_addr.eq(fail_addr)]

        def raise_error(code, addr=None):
            m.d.comb += [fail.eq(1), fail_code.eq(code)]
            if addr is not None:
                m.d.comb += fail_addr.eq(addr)

        def resp_code(resp):
            return Mux(resp == Resp.DECERR, RunError.MEM_DECERR, RunError.MEM_SLVERR)

        # -------------------------------------------------------------- descriptors
        # phase (2) | n | bank | last of its epoch
        nb = (B).bit_length()
        desc_w = 2 + nb + 2
        m.submodules.descq = descq = fifo.SyncFIFO(width=desc_w, depth=2)
        pending = Signal(range(3))         # batches fetched or being fetched, step not finished
        pend_inc, pend_dec = Signal(), Signal()
        m.d.sync += pending.eq(pending + pend_inc - pend_dec)

        # -------------------------------------------------------------- fetcher
        f_epoch = Signal(16)
        f_phase = Signal(2)
        f_left = Signal(24)                # samples of the phase not fetched yet
        f_row = Signal(24)                 # next sequential row (forward-only phases)
        f_perm = Signal(33)                # next batch-order slot
        f_bank = Signal()
        f_n = Signal(range(B + 1))
        f_finished = Signal()              # every batch of the run fetched
        idx = Array(Signal(24, name=f"idx{s}") for s in range(B))
        ar_s = Signal(range(B + 1))        # rows whose bursts are issued
        ar_c = Signal(range(n_chunks + 1))
        r_s = Signal(range(B + 1))         # rows whose beats arrived
        r_col = Signal(range(max(2, rowlen + 1)))
        r_beat = Signal(range(B + 1))      # batch-order beats arrived
        expect = Signal(16)                # read beats issued and not yet arrived
        exp_add = Signal(9)
        exp_sub = Signal()
        m.d.sync += expect.eq(expect + exp_add - exp_sub)
        f_base = Mux(f_phase == PHASE_VAL_EVAL, self.val_addr, self.train_addr)
        f_bad = Signal()                   # this batch hit an error: drain, do not queue it
        # a fetch error waits until the controller needs the batch it spoiled: the epoch in
        # progress, whose batches are all in, ends whole first
        f_code = Signal(8)
        f_addr = Signal(32)

        def fetch_error(code, addr):
            with m.If(f_code == 0):
                m.d.sync += [f_code.eq(code), f_addr.eq(addr)]
        n_now = Mux(f_left > B, B, f_left)

        def row_index(s):
            return Mux(f_phase == PHASE_TRAIN, idx[s], f_row + s)

        # A row burst's address takes two register stages (the row's index, then the
        # address and its overflow bit) before AR offers it, so no path runs from the
        # index registers through the adders to the bus: a burst every 3 cycles, faster than
        # the R channel delivers a row.
        ar_stage = Signal(2)
        ar_row_q = Signal(24)
        ar_addr = Signal(34)               # registered
        ar_piece = Signal(9)               # registered: beats of the burst
        piece = Const(0, 9)
        for c in range(n_chunks):
            piece = Mux(ar_c == c, min(MAX_BURST, rowlen - c * MAX_BURST), piece)
        # The address of a read beat answered with an error, for RUN_ERR_ADDR: the same two
        # stages from the beat's row and column (err_stage 1, 2; 0 idle).
        err_stage = Signal(2)
        err_s = Signal(range(B + 1))
        err_col = Signal(range(max(2, rowlen + 1)))
        err_row_q = Signal(24)
        with m.Switch(err_stage):
            with m.Case(1):
                m.d.sync += [err_row_q.eq(row_index(err_s)), err_stage.eq(2)]
            with m.Case(2):
                m.d.sync += [f_addr.eq(f_base + (err_row_q << row_shift) + (err_col << 2)),
                             err_stage.eq(0)]

        with m.FSM(name="fetch") as fetch_fsm:
            with m.State("IDLE"):
                with m.If(running & ~halt & ~f_finished & (pending < 2) & (err == 0)):
                    m.d.comb += pend_inc.eq(1)
                    m.d.sync += [f_n.eq(n_now), ar_s.eq(0), ar_c.eq(0), r_s.eq(0), r_col.eq(0), ar_stage.eq(0),
                                 r_beat.eq(0), f_bad.eq(0)]
                    with m.If(f_phase == PHASE_TRAIN):
                        m.next = "PERM_AR"
                    with m.Else():
                        m.next = "ROWS"
            with m.State("PERM_AR"):
                with m.If(f_perm[32]):
                    fetch_error(RunError.ADDRESS, f_perm[:32])
                    m.d.sync += f_bad.eq(1)
                    m.next = "DRAIN"
                with m.Else():
                    m.d.comb += [ax.arvalid.eq(1), ax.araddr.eq(f_perm[:32]), ax.arlen.eq(f_n - 1)]
                    with m.If(ax.arready):
                        m.d.comb += exp_add.eq(f_n)
                        m.next = "PERM_R"
            with m.State("PERM_R"):
                m.d.comb += ax.rready.eq(1)
                with m.If(ax.rvalid):
                    m.d.comb += exp_sub.eq(1)
                    m.d.sync += [idx[r_beat].eq(ax.rdata[:24]), r_beat.eq(r_beat + 1)]
                    with m.If(ax.rresp[1]):
                        fetch_error(resp_code(ax.rresp), f_perm[:32] + (r_beat << 2))
                        m.d.sync += f_bad.eq(1)
                    with m.Elif((ax.rdata[24:] != 0) | (ax.rdata[:24] >= self.train_n)):
                        fetch_error(RunError.BAD_INDEX, f_perm[:32] + (r_beat << 2))
                        m.d.sync += f_bad.eq(1)
                    with m.If(r_beat == f_n - 1):
                        m.next = "ROWS"
            with m.State("ROWS"):
                with m.If(f_bad):
                    m.next = "DRAIN"
                # address side: one burst per row (per 256-word piece)
                with m.Elif(ar_s != f_n):
                    with m.Switch(ar_stage):
                        with m.Case(0):
                            m.d.sync += [ar_row_q.eq(row_index(ar_s)), ar_stage.eq(1)]
                        with m.Case(1):
                            m.d.sync += [ar_addr.eq(f_base + (ar_row_q << row_shift) + (ar_c << 10)),
                                         ar_piece.eq(piece), ar_stage.eq(2)]
                        with m.Default():
                            with m.If(ar_addr[32:] != 0):
                                fetch_error(RunError.ADDRESS, ar_addr[:32])
                                m.d.sync += f_bad.eq(1)
                            with m.Else():
                                m.d.comb += [ax.arvalid.eq(1), ax.araddr.eq(ar_addr[:32]),
                                             ax.arlen.eq(ar_piece - 1)]
                                with m.If(ax.arready):
                                    m.d.comb += exp_add.eq(ar_piece)
                                    m.d.sync += ar_stage.eq(0)
                                    with m.If(ar_c == n_chunks - 1):
                                        m.d.sync += [ar_c.eq(0), ar_s.eq(ar_s + 1)]
                                    with m.Else():
                                        m.d.sync += ar_c.eq(ar_c + 1)
                # data side: beats in order, row by row
                m.d.comb += ax.rready.eq(1)
                with m.If(ax.rvalid):
                    m.d.comb += [exp_sub.eq(1), self.sw_en.eq(~ax.rresp[1]),
                                 self.sw_lane.eq(r_s), self.sw_col.eq(r_col),
                                 self.sw_bank.eq(f_bank), self.sw_data.eq(ax.rdata)]
                    with m.If(ax.rresp[1] & (f_code == 0)):
                        m.d.sync += [f_code.eq(resp_code(ax.rresp)), err_s.eq(r_s),
                                     err_col.eq(r_col), err_stage.eq(1)]
                    with m.If(ax.rresp[1]):
                        m.d.sync += f_bad.eq(1)
                    with m.If(r_col == rowlen - 1):
                        m.d.sync += [r_col.eq(0), r_s.eq(r_s + 1)]
                        with m.If(r_s == f_n - 1):
                            m.next = "QUEUE"
                    with m.Else():
                        m.d.sync += r_col.eq(r_col + 1)
            with m.State("DRAIN"):
                # an error: wait for the beats already asked for, queue nothing, stop fetching
                m.d.comb += ax.rready.eq(1)
                with m.If(ax.rvalid):
                    m.d.comb += exp_sub.eq(1)
                with m.If(((expect == 0) | ((expect == 1) & ax.rvalid)) & (err_stage == 0)):
                    m.d.sync += f_finished.eq(1)
                    m.next = "IDLE"
            with m.State("QUEUE"):
                with m.If(f_bad):
                    m.next = "DRAIN"
                with m.Elif(descq.w_rdy):
                    left = f_left - f_n
                    last_phase = Mux(f_phase == PHASE_TRAIN_EVAL, self.val_n == 0,
                                     f_phase == PHASE_VAL_EVAL)
                    m.d.comb += [descq.w_en.eq(1),
                                 descq.w_data.eq(Cat(f_phase, f_n.as_unsigned()[:nb], f_bank,
                                                     (left == 0) & last_phase))]
                    m.d.sync += [f_bank.eq(~f_bank), f_left.eq(left)]
                    with m.If(f_phase == PHASE_TRAIN):
                        m.d.sync += f_perm.eq(f_perm + perm_bytes)
                    with m.Else():
                        m.d.sync += f_row.eq(f_row + f_n)
                    with m.If(left == 0):
                        m.d.sync += f_row.eq(0)
                        with m.If(f_phase == PHASE_TRAIN):
                            m.d.sync += [f_phase.eq(PHASE_TRAIN_EVAL), f_left.eq(self.train_n)]
                        with m.Elif((f_phase == PHASE_TRAIN_EVAL) & (self.val_n != 0)):
                            m.d.sync += [f_phase.eq(PHASE_VAL_EVAL), f_left.eq(self.val_n)]
                        with m.Else():
                            m.d.sync += [f_phase.eq(PHASE_TRAIN), f_left.eq(self.train_n),
                                         f_epoch.eq(f_epoch + 1)]
                            with m.If(f_epoch + 1 == self.epochs):
                                m.d.sync += f_finished.eq(1)
                    m.next = "IDLE"
        fetch_idle = fetch_fsm.ongoing("IDLE")

        # -------------------------------------------------------------- write side
        aw_ptr = Signal(33)                # the next write burst's address
        b_pending = Signal(range(snap_chunks + 3))
        b_idx = Signal(range(snap_chunks + 2))   # write responses of this epoch so far
        aw_fire = ax.awvalid & ax.awready
        b_fire = ax.bvalid
        m.d.sync += b_pending.eq(b_pending + aw_fire - b_fire)
        snap_ptr = Signal(33)
        log_ptr = Signal(33)
        with m.If(b_fire):
            m.d.sync += b_idx.eq(b_idx + 1)
            with m.If(ax.bresp[1]):
                raise_error(resp_code(ax.bresp),
                            Mux(b_idx < snap_chunks, snap_ptr[:32] + (b_idx << 6), log_ptr[:32]))

        # -------------------------------------------------------------- epoch sums
        sums = {name: Signal(64 if name.endswith("loss") else 32, name=f"ep_{name}")
                for name in ("train_loss", "val_loss", "hits", "steps", "cyc", "cyc_min",
                             "cyc_max", "mul", "merge", "eval_cyc")}
        sat = {f: Signal(16, name=f"ep_{f}") for f in SAT_FLAGS}
        flags_or = Signal(len(FLAGS))
        ep_in_run = Signal(16)

        def clear_sums():
            stmts = [s.eq(0) for s in sums.values()] + [s.eq(0) for s in sat.values()]
            return stmts + [sums["cyc_min"].eq(0xFFFFFFFF), flags_or.eq(0)]

        log_words = {
            "epoch_flags": Cat(ep_in_run, flags_or), "train_loss_lo": sums["train_loss"][:32],
            "train_loss_hi": sums["train_loss"][32:], "val_loss_lo": sums["val_loss"][:32],
            "val_loss_hi": sums["val_loss"][32:], "val_hits": sums["hits"],
            "sat_value_grad": Cat(sat["sat_value"], sat["sat_grad"]),
            "sat_delta_weight": Cat(sat["sat_delta"], sat["sat_weight"]),
            "steps": sums["steps"], "cycles": sums["cyc"],
            "cycles_min": Mux(sums["steps"] == 0, 0, sums["cyc_min"]),
            "cycles_max": sums["cyc_max"], "mul_busy": sums["mul"], "merge_busy": sums["merge"],
            "eval_cycles": sums["eval_cyc"], "stamp": self.run_cycles[:32],
        }
        assert tuple(log_words) == LOG_FIELDS and len(LOG_FIELDS) == LOG_WORDS
        log_arr = Array(Cat(v, Const(0, 32))[:32] for v in log_words.values())

        # -------------------------------------------------------------- controller
        d_phase = Signal(2)
        d_n = Signal(range(B + 1))
        d_bank = Signal()
        d_last = Signal()
        settle = Signal(range(FLAG_SETTLE + 1))
        beat = Signal(range(max(snap_chunks * 16, 16) + 1))
        wp = Signal(range(max(2, self.snap_words + 1)))
        m.d.comb += self.w_addr.eq(wp)
        last_epoch = ep_in_run + 1 == self.epochs
        addr_regs = Cat(self.train_addr[:12], self.val_addr[:12], self.perm_addr[:12],
                        self.log_addr[:12], self.snap_addr[:12])
        wdata_ext = Signal(32)
        m.d.comb += wdata_ext.eq(self.w_data.as_signed())
        @contextlib.contextmanager
        def issue_burst(then):
            """A 16-beat write burst at ``aw_ptr``, then state ``then`` (the body runs in the
            cycle the address is taken); past the address space or after an error: BWAIT."""
            with m.If(aw_ptr[32] | (err != 0)):
                with m.If(err == 0):
                    raise_error(RunError.ADDRESS, aw_ptr[:32])
                m.next = "BWAIT"
            with m.Else():
                m.d.comb += [ax.awvalid.eq(1), ax.awaddr.eq(aw_ptr[:32]), ax.awlen.eq(15)]
                with m.If(ax.awready):
                    m.next = then
                    yield

        with m.FSM(name="run"):
            with m.State("IDLE"):
                with m.If(self.run & self.step_busy):
                    m.d.sync += [err.eq(RunError.BUSY), self.done.eq(0), self.stopped.eq(0)]
                with m.Elif(self.run):
                    m.d.sync += [err.eq(0), self.done.eq(0), self.stopped.eq(0),
                                 self.epochs_done.eq(0), self.run_cycles.eq(0),
                                 self.err_addr.eq(0)]
                    with m.If(addr_regs != 0):
                        m.d.sync += err.eq(RunError.MISALIGNED)
                    with m.Elif((self.update != UPDATE["sgd"]) & (self.update != UPDATE["maxnorm"])):
                        m.d.sync += err.eq(RunError.UPDATE)     # a run trains: sgd or maxnorm
                    with m.Elif(self.epochs == 0):
                        m.d.sync += self.done.eq(1)
                    with m.Else():
                        # steps count only the saturations they raise themselves
                        m.d.comb += self.flags_clear.eq(sum(1 << FLAGS[f] for f in SAT_FLAGS))
                        m.d.sync += [running.eq(1), halt.eq(0), stop_req.eq(0), pending.eq(0),
                                     f_code.eq(0),
                                     run_update.eq(self.update), run_cq.eq(self.sgd_cq),
                                     run_batch_n.eq(self.batch_n),
                                     run_cs.eq(self.sgd_cs),
                                     f_epoch.eq(0), f_phase.eq(PHASE_TRAIN),
                                     f_left.eq(self.train_n), f_row.eq(0),
                                     f_perm.eq(self.perm_addr), f_bank.eq(~self.sbank),
                                     f_finished.eq(0), ep_in_run.eq(0),
                                     snap_ptr.eq(self.snap_addr), log_ptr.eq(self.log_addr),
                                     *clear_sums()]
                        m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(err != 0):
                    m.next = "END"
                with m.Elif(~descq.r_rdy & (f_code != 0) & fetch_idle):
                    raise_error(f_code, f_addr)          # the batch needed next is spoilt
                    m.next = "END"
                with m.Elif(descq.r_rdy):
                    m.d.comb += descq.r_en.eq(1)
                    m.d.sync += [d_phase.eq(descq.r_data[:2]), d_n.eq(descq.r_data[2:2 + nb]),
                                 d_bank.eq(descq.r_data[2 + nb]), d_last.eq(descq.r_data[3 + nb])]
                    m.next = "SET"
            with m.State("SET"):
                last_batch = (d_phase == PHASE_TRAIN) & (d_n != B)
                m.d.comb += [self.set_en.eq(1), self.set_batch_n.eq(d_n),
                             self.set_update.eq(Mux(d_phase == PHASE_TRAIN, run_update,
                                                    UPDATE["none"])),
                             self.set_cq.eq(Mux(last_batch, self.sgd_cq_last, run_cq)),
                             self.set_cs.eq(Mux(last_batch, self.sgd_cs_last, run_cs))]
                m.d.sync += [self.sbank.eq(d_bank),
                             self.classify_step.eq(self.classify & (d_phase == PHASE_VAL_EVAL))]
                m.next = "GO"
            with m.State("GO"):
                m.d.comb += self.step_start.eq(1)
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(~self.step_busy & (self.step_error != 0)):
                    raise_error(self.step_error)
                    m.d.comb += pend_dec.eq(1)
                    m.next = "END"
                with m.Else():
                    m.next = "STEP"
            with m.State("STEP"):
                with m.If(self.step_done):
                    m.d.sync += settle.eq(0)
                    m.next = "SETTLE"
            with m.State("SETTLE"):
                m.d.sync += settle.eq(settle + 1)
                with m.If(settle == FLAG_SETTLE - 1):
                    m.next = "COUNT"
            with m.State("COUNT"):
                m.d.comb += [pend_dec.eq(1),
                             self.flags_clear.eq(sum(1 << FLAGS[f] for f in SAT_FLAGS))]
                with m.Switch(d_phase):
                    with m.Case(PHASE_TRAIN):
                        m.d.sync += [
                            flags_or.eq(flags_or | self.flags),
                            sums["steps"].eq(sums["steps"] + 1),
                            sums["cyc"].eq(sums["cyc"] + self.cycles),
                            sums["mul"].eq(sums["mul"] + self.mul_busy),
                            sums["merge"].eq(sums["merge"] + self.merge_busy),
                        ]
                        with m.If(self.cycles < sums["cyc_min"]):
                            m.d.sync += sums["cyc_min"].eq(self.cycles)
                        with m.If(self.cycles > sums["cyc_max"]):
                            m.d.sync += sums["cyc_max"].eq(self.cycles)
                        for f in SAT_FLAGS:
                            with m.If(self.flags[FLAGS[f]]):
                                m.d.sync += sat[f].eq(sat[f] + 1)
                    with m.Case(PHASE_TRAIN_EVAL):
                        m.d.sync += [sums["train_loss"].eq(sums["train_loss"] + self.loss),
                                     sums["eval_cyc"].eq(sums["eval_cyc"] + self.cycles)]
                    with m.Default():
                        m.d.sync += [sums["val_loss"].eq(sums["val_loss"] + self.loss),
                                     sums["hits"].eq(sums["hits"] + self.hits),
                                     sums["eval_cyc"].eq(sums["eval_cyc"] + self.cycles)]
                with m.If(err != 0):
                    m.next = "END"
                with m.Elif(d_last):
                    m.d.sync += [aw_ptr.eq(snap_ptr), wp.eq(0), beat.eq(0), b_idx.eq(0)]
                    m.next = "SNAP_AW"
                with m.Else():
                    m.next = "WAIT"
            # ---- the weights after the epoch: 16-beat bursts, 2 cycles per beat
            with m.State("SNAP_AW"):
                with issue_burst("SNAP_RD"):
                    m.d.sync += aw_ptr.eq(aw_ptr + 64)
            with m.State("SNAP_RD"):       # w_addr = wp: W[wp] is on w_data next cycle
                m.next = "SNAP_W"
            with m.State("SNAP_W"):
                m.d.comb += [ax.wvalid.eq(1), ax.wdata.eq(Mux(wp < P, wdata_ext, 0)),
                             ax.wlast.eq(wp[:4] == 15)]
                with m.If(ax.wready):
                    m.d.sync += wp.eq(wp + 1)
                    with m.If(wp == self.snap_words - 1):
                        m.d.sync += [aw_ptr.eq(log_ptr), beat.eq(0)]
                        m.next = "LOG_AW"
                    with m.Elif(wp[:4] == 15):
                        m.next = "SNAP_AW"
                    with m.Else():
                        m.next = "SNAP_RD"
            # ---- the log entry: one 16-beat burst
            with m.State("LOG_AW"):
                with issue_burst("LOG_W"):
                    pass
            with m.State("LOG_W"):
                m.d.comb += [ax.wvalid.eq(1), ax.wdata.eq(log_arr[beat[:4]]),
                             ax.wlast.eq(beat == LOG_WORDS - 1)]
                with m.If(ax.wready):
                    m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == LOG_WORDS - 1):
                        m.next = "BWAIT"
            with m.State("BWAIT"):
                with m.If((b_pending == 0) | ((b_pending == 1) & b_fire & ~ax.bresp[1])):
                    with m.If((err == 0) & ~fail):
                        m.d.sync += [self.epochs_done.eq(self.epochs_done + 1),
                                     ep_in_run.eq(ep_in_run + 1),
                                     snap_ptr.eq(snap_ptr + self.snap_words * 4),
                                     log_ptr.eq(log_ptr + LOG_WORDS * 4), *clear_sums()]
                        with m.If(last_epoch | stop_req):
                            m.next = "END"
                        with m.Else():
                            m.next = "WAIT"
                    with m.Else():
                        m.next = "END"
            with m.State("END"):
                # wait for the fetcher's bursts and the write responses, drop queued batches
                m.d.sync += halt.eq(1)
                with m.If(descq.r_rdy):
                    m.d.comb += [descq.r_en.eq(1), pend_dec.eq(1)]
                with m.If(fetch_idle & (b_pending == 0) & ~descq.r_rdy & ~self.step_busy):
                    ok = (err == 0) & ~fail
                    # the setting registers back to what the host wrote before the run
                    m.d.comb += [self.set_en.eq(1), self.set_batch_n.eq(run_batch_n),
                                 self.set_update.eq(run_update), self.set_cq.eq(run_cq),
                                 self.set_cs.eq(run_cs)]
                    m.d.sync += [running.eq(0), self.done.eq(ok & (ep_in_run == self.epochs)),
                                 self.stopped.eq(ok & (ep_in_run != self.epochs))]
                    m.next = "IDLE"
        return m
