"""Testbench parts for :class:`dpfm.rtl.engine.Engine` on cocotb + Verilator.

Three things live here, used by the cocotb tests in :mod:`dpfm.sim.tb_engine` and by
``tests/test_sim_engine.py``:

- **What the reference says** (pure Python, no simulator): :func:`step_case` quantizes a batch
  and runs :meth:`dpfm.reference.MLP.step_raw`; :func:`expected_streams` turns its
  :class:`~dpfm.reference.mlp.StepTrace` into the transfers one sample lane's blocks must make,
  in order: the candidates into the lane's :class:`~dpfm.rtl.topk.TopKMerger`, the merged lists
  out of it, the pre-activations into the :class:`~dpfm.rtl.activation.ActivationUnit` and its
  ``(a, f'(z))`` out, the lists and derivatives into the :class:`~dpfm.rtl.dual_scale.DualScale`
  and the scaled registers out.  :func:`step_counts` gives the engine's counters
  (``MERGE_BUSY``, ``MUL_BUSY``) and :func:`expected_flags` its sticky FLAGS.  Every value comes
  from :mod:`dpfm.reference`; nothing here models the hardware.
- **Cycle formulas** (:func:`phase_cycles`): the cycles of each phase of a step as
  docs/engine.md derives them from the engine's structure and its blocks' documented timing.
- **cocotb side** (:class:`EngineTB`, :class:`StreamMonitor`): clock, reset, an
  ``AxiLiteMaster`` (cocotbext-axi) under idle/backpressure generators, register and window
  access through :func:`dpfm.rtl.regmap.register_map`, and a monitor that samples the DUT on
  every clock edge, records every transfer on the lane's internal streams (reached through
  the Verilator hierarchy: ``dut.merger0.i__valid`` ...) and the FSM state, and compares them
  in order with :func:`expected_streams`, reporting the first mismatch with its cycle.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from dpfm.config import Config
from dpfm.reference import MLP, new_entry, scale_registers
from dpfm.reference.activations import ACT_CODES
from dpfm.reference.mlp import lr_quantize, sgd_scale
from dpfm.rtl.activation import PIPELINE_STAGES as ACT_LATENCY
from dpfm.rtl.dual_scale import PIPELINE_STAGES as SCALE_LATENCY
from dpfm.rtl.engine import AFIFO_LATENCY, DIV_CYCLES, ISSUE_DEPTH, UPDATE_PIPE  # the pipeline's constants
from dpfm.rtl.regmap import CTRL, FLAGS, STATUS, STATUS_ERROR_SHIFT, UPDATE, register_map

__all__ = [
    "CONFIG_ENV", "FSM_ENV", "STREAMS", "StepCase", "Transfer", "step_case", "sample_batch",
    "expected_streams", "expected_flags", "step_counts", "phase_cycles", "step_cycles",
    "loss_drain_cycles", "layer_cycles", "merger_latency", "dual_scale_ii", "candidates_per_list",
    "stream_layouts", "unpack", "timeline", "compare_streams", "check_block_timing",
    "register_table_markdown", "config_from_env", "EngineTB", "StreamMonitor",
    "cycle_pause", "random_pause",
]

#: Environment variable carrying the Config (JSON of ``Config.to_dict()``) into the cocotb run.
CONFIG_ENV = "DPFM_ENGINE_CONFIG"
#: Environment variable carrying the FSM's state encoding (JSON ``{name: code}``).
FSM_ENV = "DPFM_ENGINE_FSM"

#: The lane streams the monitor follows: name -> (instance, input or output side).
STREAMS = {
    "cand": ("merger", "i"),       # candidates into the TopKMerger
    "merged": ("merger", "o"),     # finished lists out of it
    "act_in": ("act", "i"),        # pre-activation z into the ActivationUnit
    "act_out": ("act", "o"),       # (a, f'(z)) out of it
    "scale_in": ("scale", "i"),    # list and f'(z) into the DualScale
    "scale_out": ("scale", "o"),   # the scaled registers out of it
}


# --------------------------------------------------------------------------- reference side
@dataclass
class StepCase:
    """One training step as the reference computes it (raw integers of the fixed formats).

    ``X`` (N, n_in) and ``y`` (N, n_out) are the quantized samples, ``params`` the weights
    before the step, ``trace`` the :class:`~dpfm.reference.mlp.StepTrace`; ``lr_q``, ``sgd_cq``
    and ``sgd_cs`` are what the host writes to LR_Q, SGD_CQ and SGD_CS.
    """
    config: Config
    X: np.ndarray
    y: np.ndarray
    params: np.ndarray
    update: str
    lr: float
    trace: object
    lr_q: int = 0
    sgd_cq: int = 0
    sgd_cs: int = 0

    @property
    def batch_n(self) -> int:
        return len(self.X)

    @property
    def loss_raw(self) -> int:
        """``sum(e**2)`` of the step's saturated errors: what LOSS_HI:LOSS_LO must hold."""
        return int(np.sum(self.trace.error.astype(np.int64) ** 2))


def step_case(config: Config, Xq, yq, params, *, update="maxnorm", lr=0.01) -> StepCase:
    """Run the reference step for raw (already quantized) samples and weights.

    ``update`` is ``"sgd"``, ``"maxnorm"`` or ``"none"``; for ``"none"`` the step is the
    forward pass and loss only (the weights are unchanged and no delta saturation counts).
    """
    fmt = config.formats
    Xq = np.asarray(Xq, dtype=np.int64)
    yq = np.asarray(yq, dtype=np.int64)
    params = np.asarray(params, dtype=np.int64)
    net = MLP(list(config.net), list(config.activations))
    rule = "maxnorm" if update == "none" else update
    trace = net.step_raw(Xq, yq, params, config.k, lr, rule, fmt, config.policy)
    case = StepCase(config, Xq, yq, params, update, lr, trace)
    if update == "none":
        trace.params = params.copy()
        trace.update = np.zeros_like(params)
        trace.saturations = dict(trace.saturations, delta=0, weight=0)
    if update == "maxnorm":
        case.lr_q = int(lr_quantize(lr, fmt))
    if update == "sgd":
        case.sgd_cq, case.sgd_cs = sgd_scale(lr, len(Xq) * config.n_out)
    return case


def sample_batch(X, y, config: Config, rows):
    """Rows ``rows`` of float data, quantized to the value format: ``(Xq, yq)``."""
    fmt = config.formats.value
    Xq, _ = fmt.quantize(np.asarray(X, dtype=np.float64)[rows])
    yq, _ = fmt.quantize(np.asarray(y, dtype=np.float64)[rows])
    return Xq.astype(np.int64), yq.astype(np.int64)


def _layer_inputs(case: StepCase, layer: int, lane: int):
    """Activations and registers (idx, val) entering ``layer`` in ``lane``."""
    layers = case.trace.forward.layers
    if layer == 0:
        a = case.X[lane]
        return a, np.zeros((len(a), 0), np.int64), np.zeros((len(a), 0), np.int64)
    prev = layers[layer - 1]
    return prev.a[lane], prev.grad_idx[lane], prev.grad_val[lane]


def _weights(config: Config, params, layer: int):
    n_in, n_out = config.net[layer], config.net[layer + 1]
    off = config.offsets[layer]
    W = np.asarray(params[off:off + n_out * n_in]).reshape(n_out, n_in)
    return W, off


def expected_streams(case: StepCase, lane: int = 0) -> dict:
    """The transfers of lane ``lane``'s blocks during the step, in order, from the reference.

    Returns ``{stream: [item, ...]}`` for the names of :data:`STREAMS`.  An item is a dict of
    the fields to compare; a field whose reference value is don't-care is left out (the index
    of an empty register, i.e. one whose value is 0).  Registers are lists of ``(idx, val)``
    with ``idx = None`` for don't-care, ``config.k`` long (the hardware's list width; slots
    past the reference's ``min(k, reachable)`` registers are empty).

    Candidates follow the reference's ``stream`` policy in the engine's order: per input
    ``i`` the new entry ``(idx of W[j,i], new_entry(a_i))``, then ``W[j,i] * g`` for *every*
    register slot ``g`` of ``a_i`` (empty slots included: their product is 0, which the
    merger ignores), the bias entry last with ``last = 1``.
    """
    cfg = case.config
    fmt = cfg.formats
    K = cfg.k
    one_g, _ = fmt.grad.saturate(np.int64(min(fmt.grad.one, fmt.grad.max_int)))
    out = {name: [] for name in STREAMS}
    for l in range(cfg.n_layers):
        tr = case.trace.forward.layers[l]
        n_in, n_out = cfg.net[l], cfg.net[l + 1]
        k_in = 0 if l == 0 else cfg.registers(l - 1)
        W, off = _weights(cfg, case.params, l)
        a_in, gi_in, gv_in = _layer_inputs(case, l, lane)
        new_val, _ = new_entry(a_in, fmt.value, fmt.grad)
        for j in range(n_out):
            for i in range(n_in):
                out["cand"].append({"idx": off + j * n_in + i, "val": int(new_val[i]), "last": 0})
                if k_in:
                    _, sv, _ = scale_registers(gi_in[i, :k_in], gv_in[i, :k_in], W[j, i],
                                               fmt.weight, fmt.grad)
                    for r in range(k_in):
                        item = {"val": int(sv[r]), "last": 0}
                        if gv_in[i, r] != 0:
                            item["idx"] = int(gi_in[i, r])
                        out["cand"].append(item)
            out["cand"].append({"idx": off + n_out * n_in + j, "val": int(one_g), "last": 1})
            merged = _registers(tr.merged_idx[lane, j], tr.merged_val[lane, j], K)
            scaled = _registers(tr.grad_idx[lane, j], tr.grad_val[lane, j], K)
            out["merged"].append({"regs": merged})
            out["act_in"].append({"z": int(tr.z[lane, j]), "act": ACT_CODES[cfg.activations[l]]})
            out["act_out"].append({"a": int(tr.a[lane, j]), "d": int(tr.d[lane, j])})
            out["scale_in"].append({"regs": merged, "scalar": int(tr.d[lane, j])})
            out["scale_out"].append({"regs": scaled})
    return out


def _registers(idx, val, K):
    regs = [(int(i) if v != 0 else None, int(v)) for i, v in zip(idx, val)]
    return regs + [(None, 0)] * (K - len(regs))


def expected_flags(case: StepCase) -> int:
    """FLAGS after the step (cleared before it): bit set iff the reference counted a clamp."""
    sats = case.trace.saturations
    bits = 0
    for kind in ("value", "grad", "delta", "weight"):
        if sats.get(kind, 0) > 0:
            bits |= 1 << FLAGS[f"sat_{kind}"]
    return bits


def candidates_per_list(config: Config, layer: int) -> int:
    """Candidates of one neuron of ``layer``: ``n_in * (1 + k_in) + 1``."""
    k_in = 0 if layer == 0 else config.registers(layer - 1)
    return config.net[layer] * (1 + k_in) + 1


def step_counts(case: StepCase) -> dict:
    """MERGE_BUSY and MUL_BUSY of the step, from the structure and the reference.

    ``MERGE_BUSY`` counts the cycles in which an active lane's merger takes a candidate; the
    lanes take each one in the same cycle, so that is every candidate,
    ``sum_l n_out_l * (n_in_l * (1 + k_in_l) + 1)``.  ``MUL_BUSY`` counts the cycles the lane
    multipliers work: every non-bias candidate of the forward pass, plus, in the loss pass
    (all lanes at once, one (output, register slot) per cycle), each slot where some active
    sample holds a non-empty register (none when the update is ``none``, which skips the delta).
    """
    cfg = case.config
    cands = sum(cfg.net[l + 1] * candidates_per_list(cfg, l) for l in range(cfg.n_layers))
    biases = sum(cfg.net[1:])
    delta_products = 0
    if case.update != "none":
        gv = case.trace.forward.grad_val[:case.batch_n]
        delta_products = int(np.count_nonzero(np.any(gv != 0, axis=0)))
    return {"MERGE_BUSY": cands, "MUL_BUSY": cands - biases + delta_products}


# --------------------------------------------------------------------------- cycle formulas


def dual_scale_ii(config: Config) -> int:
    """``C_ds = ceil((k + 1) / lanes)``: the DualScale's cycles per dual."""
    return math.ceil((config.k + 1) / config.lanes)


def merger_latency(config: Config) -> int:
    """Cycles from the handshake of a list's ``last`` candidate to the list being offered on
    the merger's output: the block's ``latency`` attribute, 1 (its docstring) without one."""
    from dpfm.rtl.topk import TopKMerger
    return int(getattr(TopKMerger(config), "latency", 1))


def layer_cycles(config: Config, layer: int) -> tuple[int, int]:
    """``(FWD, FWD_WAIT)`` cycles of ``layer``, from the blocks' documented timing.

    The FSM issues one candidate per cycle unless the pipeline stalls; a candidate reaches
    the merger and the activation unit :data:`ISSUE_DEPTH` cycles after its issue.  For the
    ``last`` candidate of neuron ``j``, offered at ``o_j`` and taken by the merger at ``h_j``:

    - the merger's output register holds one list; list ``j`` enters it at
      ``load_j = max(h_j + L_m - 1, t_{j-1})`` (``L_m`` = :func:`merger_latency`), once the
      DualScale has taken list ``j-1`` (at ``t_{j-1}``), and is offered from ``load_j + 1``;
      until then the merger refuses a candidate and the whole issue stalls: with ``L_m = 1``
      the ``last`` candidate waits (``h_j = max(o_j, t_{j-1})``), with ``L_m = 2`` the next
      list's first one (``h_j = o_j``);
    - the activation unit takes ``z`` at ``o_j``; ``(a, f'(z))`` is readable from the FIFO
      at ``o_j + ACT_LATENCY + AFIFO_LATENCY``;
    - the DualScale is offered both at ``s_j = max(o_j + 4, load_j + 1)`` and takes them
      ``C_ds - 1`` cycles later: ``t_j = s_j + C_ds - 1``; its output comes
      ``SCALE_LATENCY`` cycles after that and is written back;
    - the next list's last candidate is offered ``C_l`` candidates later, stalls included:
      ``o_{j+1} = h_j + C_l`` (``L_m = 1``) or ``load_j + C_l - 1`` (``L_m = 2``);
      ``o_0 = C_l + ISSUE_DEPTH - 1``.

    FWD ends with the last issue (``o_last - ISSUE_DEPTH``); FWD_WAIT lasts until the last
    output is written back plus one cycle to see the count complete.
    """
    C = candidates_per_list(config, layer)
    C_ds = dual_scale_ii(config)
    L_m = merger_latency(config)
    o = C + ISSUE_DEPTH - 1
    h = load = t = None
    for j in range(config.net[layer + 1]):
        if j:
            o = h + C if L_m == 1 else load + C - (L_m - 1)
        h = o if t is None or L_m > 1 else max(o, t)
        load = h + L_m - 1 if t is None else max(h + L_m - 1, t)
        s = max(o + ACT_LATENCY + AFIFO_LATENCY, load + 1)
        t = s + C_ds - 1
    fwd = o - ISSUE_DEPTH + 1
    wait = t + SCALE_LATENCY + 2 - fwd
    return fwd, wait


def loss_drain_cycles(case: StepCase) -> int:
    """Cycles of LOSS_DRAIN (2..5): until the loss/delta pipeline is empty.

    The pass issues ``(output, register slot)`` in order, one per cycle, every lane at once;
    the last four issues decide: issue ``t`` from the end (``t = 0`` last) keeps the pipeline
    busy ``4 - t`` drain cycles when it adds to a delta bank (some active lane holds a
    non-empty register there, update not ``none``), ``3 - t`` when it only adds to the loss
    (register slot 0).
    """
    cfg = case.config
    n_out, K = cfg.n_out, cfg.k
    gv = case.trace.forward.grad_val[:case.batch_n]
    busy = 1
    order = [(o, r) for o in range(n_out) for r in range(K)][::-1]
    for t, (o, r) in enumerate(order[:4]):
        delta = case.update != "none" and r < gv.shape[2] and bool(np.any(gv[:, o, r] != 0))
        if delta:
            busy = max(busy, 4 - t)
        elif r == 0:
            busy = max(busy, 3 - t)
    return 1 + busy


def phase_cycles(config: Config, *, update: str = "maxnorm", loss_drain: int = 5,
                 delta_zero: bool = False) -> dict:
    """Cycles per FSM state of one step, as derived in docs/engine.md.

    Parameters
    ----------
    update : "sgd", "maxnorm" or "none".
    loss_drain : int
        Cycles of LOSS_DRAIN (:func:`loss_drain_cycles`; 5, the bound, by default).
    delta_zero : bool
        Every delta is 0: the step ends after NORM without an update pass.

    Returns
    -------
    dict
        ``{state: cycles}``; :func:`step_cycles` sums them into the CYCLES register.
    """
    B, K, P, L = config.batch, config.k, config.n_params, config.n_layers
    fwd = wait = 0
    for l in range(L):
        f, w = layer_cycles(config, l)
        fwd += f
        wait += w
    phases = {"FWD": fwd, "FWD_WAIT": wait, "LOSS": config.n_out * K, "LOSS_DRAIN": loss_drain}
    if update != "none":
        phases.update({"MAX": P, "MAX_DRAIN": 2, "NORM": 1})
        if not delta_zero:
            if update == "maxnorm":
                phases["DIV"] = DIV_CYCLES      # two quotient bits per cycle, RECIP_BITS of them
            phases.update({"UPD": P, "UPD_DRAIN": 1 + UPDATE_PIPE})
    phases["DONE"] = 1
    return phases


def step_cycles(config: Config, **kw) -> int:
    """The CYCLES register after a step: 1 (the start cycle) + the cycles of every state."""
    return 1 + sum(phase_cycles(config, **kw).values())


# --------------------------------------------------------------------------- payloads
def unpack(shape, value: int):
    """An integer holding ``shape``'s bits, as Python values: dicts for structs, lists for
    arrays, ints (signed where the shape is) for the leaves."""
    if isinstance(shape, data.StructLayout):
        return {name: unpack(f.shape, value >> f.offset) for name, f in shape}
    if isinstance(shape, data.ArrayLayout):
        width = Shape.cast(shape.elem_shape).width if not isinstance(shape.elem_shape, data.Layout) \
            else shape.elem_shape.size
        return [unpack(shape.elem_shape, value >> (n * width)) for n in range(shape.length)]
    if isinstance(shape, data.Layout):
        raise TypeError(f"cannot unpack layout {shape!r}")
    s = Shape.cast(shape)
    v = value & ((1 << s.width) - 1)
    if s.signed and v >> (s.width - 1):
        v -= 1 << s.width
    return v


def stream_layouts(config: Config) -> dict:
    """Payload shape of every stream in :data:`STREAMS`, from the blocks' own signatures."""
    from dpfm.rtl.activation import ActivationUnit
    from dpfm.rtl.dual_scale import DualScale
    from dpfm.rtl.topk import TopKMerger
    blocks = {"merger": TopKMerger(config), "act": ActivationUnit(config),
              "scale": DualScale(config, scalar_fmt=config.formats.deriv)}
    return {name: blocks[inst].signature.members[side].signature.members["payload"].shape
            for name, (inst, side) in STREAMS.items()}


def _normalise(name, payload):
    """A monitored payload in the shape of :func:`expected_streams`' items."""
    if name == "cand":
        return {"idx": payload["idx"], "val": payload["val"], "last": payload["last"]}
    if name == "merged":
        return {"regs": [(e["idx"], e["val"]) for e in payload]}
    if name == "scale_in":
        return {"regs": [(e["idx"], e["val"]) for e in payload["grads"]],
                "scalar": payload["scalar"], "value": payload["value"]}
    if name == "scale_out":
        return {"regs": [(e["idx"], e["val"]) for e in payload["grads"]], "value": payload["value"]}
    return dict(payload)


def _matches(got: dict, want: dict) -> bool:
    for key, w in want.items():
        g = got.get(key)
        if key == "regs":
            if len(g) != len(w):
                return False
            for (gi, gv), (wi, wv) in zip(g, w):
                if gv != wv or (wi is not None and gi != wi):
                    return False
        elif g != w:
            return False
    return True


def config_from_env() -> Config:
    return Config.from_dict(json.loads(os.environ[CONFIG_ENV]))


# --------------------------------------------------------------------------- pause generators
def cycle_pause():
    """Pause 1 cycle in 4 (as the cocotbext-axi tests do)."""
    return itertools.cycle([1, 1, 1, 0])


def random_pause(seed=1, p=0.4):
    import random
    rng = random.Random(seed)
    while True:
        yield int(rng.random() < p)


# --------------------------------------------------------------------------- cocotb side
@dataclass
class Transfer:
    """One handshake: the cycle it happened in, the cycle its data was first offered, the
    payload (normalised), and the step cycle (cycles since the step's start)."""
    cycle: int
    offered: int
    payload: dict
    step_cycle: int


@dataclass
class StepRecord:
    transfers: dict = field(default_factory=dict)
    states: list = field(default_factory=list)   # FSM state code per cycle of the step
    start: int = -1
    end: int = -1


class StreamMonitor:
    """Samples the DUT once per clock cycle (in the settled read-only phase before each
    rising edge) and records every transfer of lane ``lane``'s streams and the FSM state.

    A transfer is recorded in the cycle whose ``valid`` and ``ready`` are both high: the data
    moves on the rising edge that ends that cycle.  ``offered`` is the first cycle the
    producer held that data on the stream.  Recording is per step: :meth:`begin` and
    :meth:`end` bracket it (the monitor itself runs from :meth:`start` on).
    """

    def __init__(self, dut, config: Config, *, lane: int = 0, fsm: dict | None = None):
        self.dut = dut
        self.config = config
        self.layouts = stream_layouts(config)
        self.cycle = 0
        self.fsm = fsm or {}
        self.idle_code = self.fsm.get("IDLE", 0)
        self.state = getattr(dut, "engine_state", None)
        self.probes = {}
        for name, (inst, side) in STREAMS.items():
            block = getattr(dut, f"{inst}{lane}")
            valid = getattr(block, f"{side}__valid")
            ready = getattr(block, f"{side}__ready", None)
            payload = getattr(block, f"{side}__payload")
            self.probes[name] = (valid, ready, payload)
        self.record = StepRecord()
        self._recording = False
        self._offered = {name: None for name in STREAMS}
        self._task = None

    def start(self):
        import cocotb
        self._task = cocotb.start_soon(self._run())

    def stop(self):
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def begin(self):
        self.record = StepRecord(transfers={name: [] for name in STREAMS})
        self._recording = True

    def end(self) -> StepRecord:
        self._recording = False
        return self.record

    async def _run(self):
        from cocotb.triggers import ReadOnly, RisingEdge
        clk = self.dut.clk
        while True:
            await RisingEdge(clk)
            self.cycle += 1
            await ReadOnly()
            if not self._recording:
                continue
            rec = self.record
            if self.state is not None:
                code = int(self.state.value)
                if code != self.idle_code:
                    if rec.start < 0:
                        rec.start = self.cycle
                    rec.states.append(code)
                    rec.end = self.cycle
            step_cycle = self.cycle - rec.start if rec.start >= 0 else -1
            for name, (valid, ready, payload) in self.probes.items():
                if not int(valid.value):
                    self._offered[name] = None
                    continue
                if self._offered[name] is None:
                    self._offered[name] = self.cycle
                if ready is not None and not int(ready.value):
                    continue
                raw = payload.value.to_unsigned()
                rec.transfers[name].append(Transfer(
                    self.cycle, self._offered[name],
                    _normalise(name, unpack(self.layouts[name], raw)), step_cycle))
                self._offered[name] = None

    def state_cycles(self) -> dict:
        """Cycles spent in each FSM state during the recorded step."""
        names = {code: name for name, code in self.fsm.items()}
        counts = {}
        for code in self.record.states:
            key = names.get(code, code)
            counts[key] = counts.get(key, 0) + 1
        return counts


def compare_streams(record: StepRecord, expected: dict) -> list:
    """Compare recorded transfers with :func:`expected_streams`, in order.

    Returns a list of problems (empty when all match); each names the stream, the transfer
    number, the cycle (absolute and within the step) and both values of the first mismatch,
    or a count that differs (nothing missing, nothing left over).
    """
    problems = []
    for name, want in expected.items():
        got = record.transfers.get(name, [])
        for n, (t, w) in enumerate(zip(got, want)):
            if not _matches(t.payload, w):
                problems.append(f"{name}: transfer {n} at cycle {t.cycle} (step cycle "
                                f"{t.step_cycle}) is {t.payload}, the reference says {w}")
                break
        if len(got) != len(want):
            problems.append(f"{name}: {len(got)} transfers, the reference says {len(want)}")
    return problems


def check_block_timing(record: StepRecord, config: Config) -> list:
    """Latency and initiation interval of the lane's blocks against their documented timing.

    - TopKMerger: a list is offered on ``o`` :func:`merger_latency` cycles after its ``last``
      candidate's handshake (when its output register is free).
    - ActivationUnit: ``(a, d)`` is offered :data:`~dpfm.rtl.activation.PIPELINE_STAGES`
      cycles after ``z``'s handshake.
    - DualScale: the output is offered :data:`~dpfm.rtl.dual_scale.PIPELINE_STAGES` cycles
      after the input handshake; input handshakes are at least ``ceil((k+1)/lanes)`` apart
      and the input is offered to an idle unit ``ceil((k+1)/lanes) - 1`` cycles before it is
      taken.
    """
    problems = []
    tr = record.transfers
    lasts = [t for t in tr["cand"] if t.payload["last"]]
    pairs = [("merger", lasts, tr["merged"], merger_latency(config)),
             ("activation", tr["act_in"], tr["act_out"], ACT_LATENCY),
             ("dual_scale", tr["scale_in"], tr["scale_out"], SCALE_LATENCY)]
    for block, ins, outs, latency in pairs:
        for n, (a, b) in enumerate(zip(ins, outs)):
            # an output register still holding the previous item delays the next one
            free = outs[n - 1].cycle + 1 if n else 0
            want = max(a.cycle + latency, free)
            if b.offered != want:
                problems.append(f"{block}: item {n} taken at cycle {a.cycle} was offered at "
                                f"cycle {b.offered}, documented {want} (latency {latency}, "
                                f"output register free from {free})")
                break
    C = dual_scale_ii(config)
    ins = tr["scale_in"]
    for n, t in enumerate(ins):
        if t.cycle - t.offered != C - 1:
            problems.append(f"dual_scale: input {n} offered at cycle {t.offered} was taken at "
                            f"{t.cycle}, documented C - 1 = {C - 1} cycles later")
            break
        if n and t.cycle - ins[n - 1].cycle < C:
            problems.append(f"dual_scale: inputs {n - 1} and {n} taken at cycles "
                            f"{ins[n - 1].cycle} and {t.cycle}, closer than C = {C}")
            break
    return problems


def timeline(record: StepRecord) -> list:
    """One line per neuron (all layers in order) with the step cycles of its transfers:
    the ``last`` candidate's handshake, then offered/taken of the merged list, the
    activation in/out and the DualScale in/out."""
    tr = record.transfers
    lasts = [t for t in tr["cand"] if t.payload["last"]]
    lines = []
    base = record.start
    for n, group in enumerate(zip(lasts, tr["merged"], tr["act_in"], tr["act_out"],
                                  tr["scale_in"], tr["scale_out"])):
        cells = [f"{name} {t.offered - base}/{t.cycle - base}" for name, t in
                 zip(("last", "merged", "act_in", "act_out", "scale_in", "scale_out"), group)]
        lines.append(f"neuron {n}: " + ", ".join(cells))
    return lines


class EngineTB:
    """Clock, reset and host access (AXI4-Lite through cocotbext-axi) of the engine.

    Parameters
    ----------
    dut : the cocotb handle of ``dpfm_engine``.
    config : the :class:`~dpfm.config.Config` the engine was built for.
    """

    def __init__(self, dut, config: Config):
        import cocotb
        from cocotb.clock import Clock
        from cocotbext.axi import AxiLiteBus, AxiLiteMaster

        self.dut = dut
        self.config = config
        self.regmap = register_map(config)
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(logging.INFO)
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                  dut.clk, dut.rst)
        for lg in (self.axil.write_if.log, self.axil.read_if.log):
            lg.setLevel(logging.WARNING)

    # -- generators ---------------------------------------------------------------------
    def set_idle_generator(self, generator=None):
        """Pause the master's AW, W and AR channels (valid gaps)."""
        self._set_pause((self.axil.write_if.aw_channel, self.axil.write_if.w_channel,
                         self.axil.read_if.ar_channel), generator)

    def set_backpressure_generator(self, generator=None):
        """Pause the master's B and R channels (ready low)."""
        self._set_pause((self.axil.write_if.b_channel, self.axil.read_if.r_channel), generator)

    @staticmethod
    def _set_pause(channels, generator):
        for ch in channels:
            if generator:
                ch.set_pause_generator(generator())
            else:
                # clear_pause_generator() stops the generator but keeps its last value: a
                # channel left paused would hang every later transfer.
                ch.clear_pause_generator()
                ch.pause = False

    async def cycle_reset(self):
        from cocotb.triggers import ClockCycles, RisingEdge
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    # -- bus access ---------------------------------------------------------------------
    def addr(self, name) -> int:
        return name if isinstance(name, int) else self.regmap[name].offset

    async def read(self, name) -> tuple:
        """``(value, resp)`` of one read (resp 0 OKAY, 2 SLVERR)."""
        r = await self.axil.read(self.addr(name), 4)
        return int.from_bytes(r.data, "little"), int(r.resp)

    async def write(self, name, value: int, *, length: int = 4) -> int:
        """Write ``value`` (``length`` bytes, so ``length < 4`` is a partial strobe); the resp."""
        data = (value & 0xFFFFFFFF).to_bytes(4, "little")[:length]
        r = await self.axil.write(self.addr(name), data)
        return int(r.resp)

    async def read_reg(self, name) -> int:
        value, resp = await self.read(name)
        assert resp == 0, f"read of {name} answered resp {resp}"
        return value

    async def write_reg(self, name, value: int):
        resp = await self.write(name, value)
        assert resp == 0, f"write of {value:#x} to {name} answered resp {resp}"

    async def read_signed(self, addr) -> int:
        value, resp = await self.read(addr)
        assert resp == 0, f"read of {addr:#x} answered resp {resp}"
        return value - (1 << 32) if value >> 31 else value

    # -- windows ------------------------------------------------------------------------
    async def load_weights(self, params):
        win = self.regmap["WEIGHTS"]
        for p, w in enumerate(params):
            await self.write_reg(win.addr(p), int(w))

    async def read_weights(self) -> np.ndarray:
        win = self.regmap["WEIGHTS"]
        return np.array([await self.read_signed(win.addr(p)) for p in range(self.config.n_params)],
                        dtype=np.int64)

    async def load_samples(self, X, y):
        win = self.regmap["SAMPLES"]
        n_in = self.config.n_in
        for s in range(len(X)):
            for t in range(n_in):
                await self.write_reg(win.row_addr(s, t), int(X[s, t]))
            for o in range(y.shape[1]):
                await self.write_reg(win.row_addr(s, n_in + o), int(y[s, o]))

    async def read_outputs(self, n: int) -> np.ndarray:
        win = self.regmap["OUTPUTS"]
        flat = [await self.read_signed(win.row_addr(s, o))
                for s in range(n) for o in range(self.config.n_out)]
        return np.array(flat, dtype=np.int64).reshape(n, self.config.n_out)

    async def read_loss(self) -> int:
        lo = await self.read_reg("LOSS_LO")
        hi = await self.read_reg("LOSS_HI")
        return lo | hi << 32

    # -- steps --------------------------------------------------------------------------
    async def program(self, case: StepCase):
        """Write the step's settings (BATCH_N, UPDATE, LR_Q / SGD_CQ / SGD_CS)."""
        await self.write_reg("BATCH_N", case.batch_n)
        await self.write_reg("UPDATE", UPDATE[case.update])
        if case.update == "maxnorm":
            await self.write_reg("LR_Q", case.lr_q)
        if case.update == "sgd":
            await self.write_reg("SGD_CQ", case.sgd_cq)
            await self.write_reg("SGD_CS", case.sgd_cs & 0xFFFFFFFF)

    async def start(self):
        await self.write_reg("CTRL", 1 << CTRL["start"])

    async def clear_flags(self):
        await self.write_reg("CTRL", 1 << CTRL["clear_flags"])

    async def wait_done(self, *, timeout_cycles: int = 200_000, poll: int = 20) -> int:
        """Poll STATUS until busy drops; returns STATUS."""
        from cocotb.triggers import ClockCycles
        waited = 0
        while True:
            status = await self.read_reg("STATUS")
            if not status >> STATUS["busy"] & 1:
                return status
            assert waited < timeout_cycles, f"engine still busy after {waited} cycles"
            await ClockCycles(self.dut.clk, poll)
            waited += poll

    @staticmethod
    def error_code(status: int) -> int:
        return status >> STATUS_ERROR_SHIFT & 0xFF


# --------------------------------------------------------------------------- docs
def register_table_markdown(regmap) -> str:
    """The register map as the Markdown table docs/engine.md carries (generated, not typed)."""
    lines = ["| name | offset | access | bits | description |", "| --- | --- | --- | --- | --- |"]
    for r in regmap.registers:
        bits = f"{r.bits}{' signed' if r.signed else ''}"
        lines.append(f"| {r.name} | 0x{r.offset:05X} | {r.access} | {bits} | {r.doc} |")
    for w in regmap.windows:
        rows = f"; row stride {w.row_words} words" if w.row_words > 1 else ""
        lines.append(f"| {w.name} | 0x{w.base:05X} (+4 per word, {w.length} words) | {w.access} | 32 | "
                     f"{w.doc}{rows} |")
    return "\n".join(lines)


def _main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register-table", action="store_true",
                        help="print docs/engine.md's register table for the default Config")
    args = parser.parse_args(argv)
    if args.register_table:
        print(register_table_markdown(register_map(Config())))


if __name__ == "__main__":
    _main()
