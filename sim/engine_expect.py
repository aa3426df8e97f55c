"""What the reference says one engine step must do, and the cycles the engine's structure gives.

Pure Python, no simulator; used by the cocotb tests in :mod:`dpfm.sim.engine_tests` (through
:mod:`dpfm.sim.engine_bench`) and by ``tests/test_sim_engine.py``:

- **Expectations**: :func:`step_case` quantizes a batch and runs
  :meth:`dpfm.reference.MLP.step_raw`; :func:`expected_streams` turns its
  :class:`~dpfm.reference.mlp.StepTrace` into the transfers one sample lane's blocks must make,
  in order: the candidates into the lane's :class:`~dpfm.rtl.topk.TopKMerger`, the merged lists
  out of it, the pre-activations into the :class:`~dpfm.rtl.activation.ActivationUnit` and its
  ``(a, f'(z))`` out, the lists and derivatives into the :class:`~dpfm.rtl.dual_scale.DualScale`
  and the scaled registers out.  :func:`step_counts` gives the engine's counters
  (``MERGE_BUSY``, ``MUL_BUSY``) and :func:`expected_flags` its sticky FLAGS.  Every value comes
  from :mod:`dpfm.reference`; nothing here models the hardware.
- **Cycle formulas** (:func:`phase_cycles`): the cycles of each phase of a step as
  docs/engine.md derives them from the engine's structure and its blocks' documented timing.
- **Payloads**: the Amaranth layouts of the lane streams, to decode what the monitor samples.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from dpfm.config import Config
from dpfm.reference import MLP, new_entry, scale_registers
from dpfm.reference.activations import ACT_CODES
from dpfm.reference.mlp import lr_quantize, sgd_scale
from dpfm.rtl.activation import PIPELINE_STAGES as ACT_LATENCY
from dpfm.rtl.dual_scale import PIPELINE_STAGES as SCALE_LATENCY
from dpfm.rtl.engine import (AFIFO_LATENCY, DIV_CYCLES, ISSUE_DEPTH, LOSS_PIPE, MAX_PIPE,  # the pipeline's constants
                             NORM_CYCLES, UPDATE_PIPE, lane_sum_stages)
from dpfm.rtl.update import update_words
from dpfm.rtl.regmap import FLAGS

__all__ = [
    "CONFIG_ENV", "FSM_ENV", "UNIT_FSM_KEY", "STREAMS", "StepCase", "step_case", "sample_batch",
    "expected_streams", "expected_flags", "step_counts", "phase_cycles", "update_phase_cycles", "step_cycles",
    "loss_drain_cycles", "loss_drain_bound", "forward_slots", "forward_cycles", "check_candidates", "merger_latency", "dual_scale_ii", "candidates_per_list",
    "lists_per_layer", "layer0_z_times",
    "stream_layouts", "unpack", "normalise_payload", "payload_matches", "config_from_env",
]

#: Environment variable carrying the Config (JSON of ``Config.to_dict()``) into the cocotb run.
CONFIG_ENV = "DPFM_ENGINE_CONFIG"
#: Environment variable carrying the FSM's state encoding (JSON ``{name: code}``; the
#: UpdateUnit's own encoding under :data:`UNIT_FSM_KEY`).
FSM_ENV = "DPFM_ENGINE_FSM"
#: Key of the UpdateUnit's FSM encoding in the :data:`FSM_ENV` JSON: its states (MAX ...
#: UPD_DRAIN) stand for the engine's UPDATE state in the per-state cycle counts.
UNIT_FSM_KEY = "update_unit"

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
    merger ignores), the bias entry last with ``last = 1``.  Layer 0 is one list per step,
    the :class:`~dpfm.rtl.layer0.Layer0Unit`'s ``L*``: ``(i, new_entry(a_i))`` for every input
    ``i``, then ``(n_in, one)``; the merger's first list is ``L*``, the reference's list of
    neuron 0 with ``W[0, i]``'s index renamed ``i`` and ``b[0]``'s ``n_in`` (every neuron's
    list is ``L*`` renamed: the same values, in the same order).  The engine keeps layer 0's
    lists in ``L*``'s indices (the DualScale's input and output for layer-0 neuron ``j``
    carry ``i`` and ``n_in``; layer 1's register slots and a one-layer net's loss pass rename
    them), so the expected ``merged``/``scale_*`` items of layer 0 carry those.
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
        if l == 0:
            out["cand"] += [{"idx": i, "val": int(new_val[i]), "last": 0} for i in range(n_in)]
            out["cand"].append({"idx": n_in, "val": int(one_g), "last": 1})
            out["merged"].append({"regs": _l0_names(_registers(tr.merged_idx[lane, 0],
                                                               tr.merged_val[lane, 0], K), cfg, 0)})
        for j in range(n_out):
            for i in range(n_in if l else 0):
                out["cand"].append({"idx": off + j * n_in + i, "val": int(new_val[i]), "last": 0})
                if k_in:
                    _, sv, _ = scale_registers(gi_in[i, :k_in], gv_in[i, :k_in], W[j, i],
                                               fmt.weight, fmt.grad)
                    for r in range(k_in):
                        item = {"val": int(sv[r]), "last": 0}
                        if gv_in[i, r] != 0:
                            item["idx"] = int(gi_in[i, r])
                        out["cand"].append(item)
            merged = _registers(tr.merged_idx[lane, j], tr.merged_val[lane, j], K)
            scaled = _registers(tr.grad_idx[lane, j], tr.grad_val[lane, j], K)
            if l == 0:                 # the engine keeps layer 0's lists as L* (renamed on read)
                merged, scaled = _l0_names(merged, cfg, j), _l0_names(scaled, cfg, j)
            if l:
                out["cand"].append({"idx": off + n_out * n_in + j, "val": int(one_g), "last": 1})
                out["merged"].append({"regs": merged})
            out["act_in"].append({"z": int(tr.z[lane, j]), "act": ACT_CODES[cfg.activations[l]]})
            out["act_out"].append({"a": int(tr.a[lane, j]), "d": int(tr.d[lane, j])})
            out["scale_in"].append({"regs": merged, "scalar": int(tr.d[lane, j])})
            out["scale_out"].append({"regs": scaled})
    return out


def _l0_names(regs, config: Config, j: int) -> list:
    """Registers of layer-0 neuron ``j`` with ``L*``'s indices: ``W[j, i]`` -> ``i``, ``b[j]``
    -> ``n_in`` (what the engine holds; layer 1 and the loss pass rename them back)."""
    off, n_in = config.offsets[0], config.net[0]
    boff = off + config.net[1] * n_in
    return [(None if idx is None else n_in if idx == boff + j else idx - off - j * n_in, v)
            for idx, v in regs]


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


def check_candidates(case: StepCase, got: list, want: list) -> tuple[list, dict]:
    """Check lane 0's observed merger input ``got`` (payload dicts) against the full
    reference stream ``want`` (:func:`expected_streams`' ``cand``) with some block tails
    dropped.

    The engine ends a block of layer 1 (input ``i``'s register slots) early when no active
    lane's list can take its rest, so the observed stream is the expected one with, per
    block of layer 1, the register slots after some ``m`` dropped; in every other layer the
    streams are equal.  Every dropped candidate must be one the reference's
    :func:`~dpfm.reference.kernels.topk_insert` rejects, inserted into the lane's list as the
    observed candidates before it left it (which, by induction, is the reference's list at
    that point), and must not be a product the reference saturated (``|v|`` below the
    gradient format's largest magnitude).  Where several ``m`` fit, the largest is taken.

    Returns ``(problems, lengths)``: the problems found (empty when it all holds) and the
    register slots issued per block of layer 1, ``{(list, i): m}``, for :func:`phase_cycles`.
    """
    from dpfm.reference.kernels import topk_insert
    cfg = case.config
    fmt = cfg.formats.grad
    K = cfg.k
    slots = forward_slots(cfg)
    problems, lengths = [], {}
    if len(slots) != len(want):
        return [f"cand: {len(want)} expected candidates but {len(slots)} slots"], lengths
    L_idx = np.full(K, -1, np.int64)
    L_val = np.zeros(K, np.int64)
    state = {"n": 0}

    def insert(c):
        if c["val"] != 0:
            state["n"], _ = topk_insert(L_idx, L_val, state["n"], K, c.get("idx", -1), c["val"],
                                        fmt.min_int, fmt.max_int)
        if c["last"]:
            L_idx[:] = -1
            L_val[:] = 0
            state["n"] = 0

    def rejected(c):
        if c["val"] == 0:
            return True
        if abs(c["val"]) >= fmt.max_int:
            return False
        li, lv = L_idx.copy(), L_val.copy()
        n, sat = topk_insert(li, lv, state["n"], K, c["idx"], c["val"], fmt.min_int, fmt.max_int)
        return n == state["n"] and sat == 0 and np.array_equal(li, L_idx) and np.array_equal(lv, L_val)

    g = s = 0
    while s < len(slots):
        lst, last, _, layer, i, r = slots[s]
        if layer == 1 and r == 0 and not last:
            k_in = cfg.registers(0)
            if g >= len(got) or not payload_matches(got[g], want[s]):
                problems.append(f"cand: observed {g} ({got[g] if g < len(got) else 'none'}) is "
                                f"not the new entry {want[s]} of list {lst} input {i}")
                break
            # the largest m whose registers match and after which the next slot follows
            m_fit = None
            for m in range(k_in, -1, -1):
                ok = all(g + 1 + t < len(got) and payload_matches(got[g + 1 + t], want[s + 1 + t])
                         for t in range(m))
                nxt = s + 1 + k_in
                if ok and (nxt >= len(want) or
                           (g + 1 + m < len(got) and payload_matches(got[g + 1 + m], want[nxt]))):
                    m_fit = m
                    break
            if m_fit is None:
                problems.append(f"cand: list {lst} input {i} (observed from {g}) matches no "
                                f"block of the reference with a tail dropped")
                break
            for t in range(1 + m_fit):
                insert(got[g + t])
            for t in range(1 + m_fit, 1 + k_in):
                if not rejected(want[s + t]):
                    problems.append(f"cand: list {lst} input {i}: dropped register slot {t} "
                                    f"{want[s + t]} would change the list {list(zip(L_idx, L_val))}")
                    break
            lengths[(lst, i)] = m_fit
            g += 1 + m_fit
            s += 1 + k_in
            if problems:
                break
            continue
        if g >= len(got) or not payload_matches(got[g], want[s]):
            problems.append(f"cand: observed {g} ({got[g] if g < len(got) else 'none'}), the "
                            f"reference says {want[s]} (list {lst}, layer {layer}, input {i}, slot {r})")
            break
        insert(got[g])
        g += 1
        s += 1
    if not problems and g != len(got):
        problems.append(f"cand: {len(got) - g} observed candidates left over")
    return problems, lengths


def candidates_per_list(config: Config, layer: int) -> int:
    """Candidates of one merger list of ``layer``: ``n_in * (1 + k_in) + 1`` (layer 0: its one
    list ``L*``, ``n_in + 1``)."""
    k_in = 0 if layer == 0 else config.registers(layer - 1)
    return config.net[layer] * (1 + k_in) + 1


def lists_per_layer(config: Config, layer: int) -> int:
    """Merger lists of ``layer`` in a step: 1 for layer 0 (``L*``), else ``n_out``."""
    return 1 if layer == 0 else config.net[layer + 1]


def step_counts(case: StepCase, candidates: int | None = None) -> dict:
    """MERGE_BUSY and MUL_BUSY of the step, from the structure and the reference.

    ``MERGE_BUSY`` counts the cycles in which an active lane's merger takes a candidate; the
    lanes take each one in the same cycle, so that is every candidate, ``n_in_0 + 1`` (layer
    0's ``L*``) ``+ sum_{l>=1} n_out_l * (n_in_l * (1 + k_in_l) + 1)``.  ``MUL_BUSY`` counts
    the cycles the lane multipliers work: every non-bias candidate of layers ``>= 1`` (layer
    0's products are the Layer0Unit's), plus, in the loss pass
    (all lanes at once, one (output, register slot) per cycle), each slot where some active
    sample holds a non-empty register (none when the update is ``none``, which skips the delta).

    The engine ends blocks of layer 1 early (see :func:`check_candidates`), so the counts are
    upper bounds; with ``candidates`` (the candidates the merger took, as a monitor saw them)
    they are exact: ``MERGE_BUSY = candidates`` and ``MUL_BUSY = candidates - biases +``
    the loss pass's products.
    """
    cfg = case.config
    cands = sum(lists_per_layer(cfg, l) * candidates_per_list(cfg, l) for l in range(cfg.n_layers))
    if candidates is not None:
        cands = candidates
    biases = candidates_per_list(cfg, 0) + sum(cfg.net[2:])     # L* and the layers >= 1's biases
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
    the merger's output: :data:`dpfm.rtl.topk.PIPELINE_STAGES` (``TopKMerger.latency``)."""
    from dpfm.rtl.topk import PIPELINE_STAGES
    return PIPELINE_STAGES


def forward_slots(config: Config, lengths=None) -> list:
    """The forward pass's issue slots in order, one ``(list, last, dep, layer, i, r)`` per slot.

    ``list`` numbers the merger's lists in issue order: 0 is layer 0's ``L*`` (one list per
    step, ``n_in + 1`` slots), then the neurons of layers ``>= 1``; ``last`` marks the bias
    slot that closes one, and ``dep`` is the write-back the slot waits for, ``(layer - 1,
    i)`` (neuron ``i`` of the layer before; None in layer 0 and for the bias); ``r`` is 0 for
    the new entry (and the bias, ``i = n_in``) and ``1 .. k_in`` for the register slots.
    ``lengths`` (optional) gives the register slots issued per block (``{(list, i):
    issued}``, default all ``k_in``): the blocks of layer 1 the engine ended early.
    """
    slots = [(0, False, None, 0, i, 0) for i in range(config.net[0])]
    slots.append((0, True, None, 0, config.net[0], 0))
    n = 1
    for l in range(1, config.n_layers):
        n_in, n_out = config.net[l], config.net[l + 1]
        k_in = config.registers(l - 1)
        for j in range(n_out):
            for i in range(n_in):
                regs = k_in if lengths is None else lengths.get((n, i), k_in)
                slots.append((n, False, (l - 1, i), l, i, 0))
                slots.extend((n, False, None, l, i, r) for r in range(1, regs + 1))
            slots.append((n, True, None, l, n_in, 0))
            n += 1
    return slots


def layer0_z_times(config: Config, a_times) -> list:
    """Cycles in which the engine takes layer 0's ``z_j`` from the
    :class:`~dpfm.rtl.layer0.Layer0Unit` (``j = 0 .. n_out - 1``), its ``start`` at cycle -1.

    ``a_times[i]``: the cycle of input ``i``'s handshake.  The unit (docs/layer0.md) reads
    its ``nb`` bias words and primes its window, then issues chunk ``c`` of a neuron once the
    inputs of chunks ``0 .. c`` are in (one cycle after the handshake of the chunk's last
    input) and a neuron's first chunk only while fewer than ``fifo_depth`` neurons are
    between their first chunk and their take; ``z_j`` is readable ``D + 6`` cycles after its
    last chunk, and at the earliest the cycle after ``z_{j-1}``'s take (the FIFO); the engine
    takes it when readable and at least ``C_ds`` (:func:`dual_scale_ii`) cycles after the
    take before.
    """
    from dpfm.rtl.layer0 import engine_layer0_shape, layer0_timing
    M0, D = engine_layer0_shape(config)
    C, latency, F = layer0_timing(config, D)
    n_in, n_out = config.net[0], config.net[1]
    boff0 = config.offsets[0] + n_out * n_in
    nb = (boff0 + n_out - 1) // M0 - boff0 // M0 + 1
    ready = [a_times[min(n_in, (c + 1) * D) - 1] + 1 for c in range(C)]   # words_in > c from
    C_ds = dual_scale_ii(config)
    j = c = 0
    firsts, lasts, takes = [], [], []
    pace_free = 0
    cycle = nb + 1                     # the first cycle of the DOT state
    while len(takes) < n_out:
        if j < n_out and ready[c] <= cycle:
            inflight = len(firsts) - len(takes)
            if c or inflight < F:
                if c == 0:
                    firsts.append(cycle)
                if c == C - 1:
                    lasts.append(cycle)
                    j, c = j + 1, 0
                else:
                    c += 1
        nt = len(takes)
        if nt < len(lasts):
            avail = max(lasts[nt] + latency, takes[-1] + 1 if takes else 0)
            if cycle >= avail and cycle >= pace_free:
                takes.append(cycle)
                pace_free = cycle + C_ds
        cycle += 1
    return takes


def forward_cycles(config: Config, lengths=None) -> tuple[int, int]:
    """``(FWD, FWD_WAIT)`` cycles of the whole forward pass, from the blocks' documented timing.

    The FSM issues one slot of :func:`forward_slots` per cycle, layer after layer with no
    barrier, unless

    - the pipeline stalls: the slot at the merger's input is refused (below) and everything
      holds;
    - the slot reads input ``i`` of layer ``l >= 1`` (its new-entry slot) before every lane has
      written back neuron ``i`` of layer ``l-1``: the FSM holds (a bubble enters the pipeline)
      until the cycle after that write-back.

    A slot reaches the merger's (and for the bias the activation unit's) input
    ``ISSUE_DEPTH`` cycles after its issue.  The merger (``L_m`` = :func:`merger_latency`
    stages) takes one slot per cycle; a list's ``last`` slot, taken at ``h``, waits in the
    last stage for the output register (free once the DualScale has taken the list before:
    ``load = max(h + L_m - 1, t_prev)``), and the merger refuses its input in the cycles in
    between; the list is offered on ``o`` from ``load + 1``.  The activation unit takes ``z``
    with the bias slot at its offer ``o_b``; ``(a, f'(z))`` is readable from the FIFO at
    ``o_b + ACT_LATENCY + AFIFO_LATENCY``; the DualScale is offered both at ``s = max(that,
    load + 1)``, takes them ``C_ds - 1`` cycles later (``t = s + C_ds - 1``) and writes back
    ``SCALE_LATENCY`` cycles after that.

    Layer 0: its slots hand input ``i`` to the Layer0Unit one cycle after their issue;
    :func:`layer0_z_times` gives the takes of ``z_j``, offered to the activation unit the
    cycle after (``o_b``); ``L*`` is taken from the merger's output register as soon as
    offered, and neuron ``j``'s list is offered to the DualScale from the cycle after that
    take (``j = 0``) or after the DualScale took neuron ``j - 1``'s.

    FWD lasts until the last slot's issue; FWD_WAIT until the last write-back is counted (and
    the delta banks are clear, ``n_params`` cycles from the start), plus the cycle that sees it.
    The function steps through the cycles of this schedule (no data involved).
    """
    slots = forward_slots(config, lengths)
    C_ds = dual_scale_ii(config)
    L_m = merger_latency(config)
    assert L_m >= 2, "the schedule assumes a pipelined merger"
    n_in0, n_out0 = config.net[0], config.net[1]
    # layer 0's slots issue in cycles 0 .. n_in0 (nothing stalls them): input i at i + 1
    z_takes = layer0_z_times(config, [i + 1 for i in range(n_in0)])
    keys = {}                         # merger list -> (layer, neuron) it writes back
    for lst, last, _, layer, _, _ in slots:
        if last and lst:
            keys[lst] = (layer, len([k for k in keys.values() if k[0] == layer]))
    n_wb = sum(config.net[1:])
    wb = {}                           # (layer, neuron) -> cycle of its write-back
    pipe = [None] * ISSUE_DEPTH       # slots in stages 1 .. ISSUE_DEPTH (the merger's input)
    stages = [None] * (L_m - 1)       # the merger's stages after its input register
    offered_bias = {}
    out_list, out_take = None, None   # the list in the merger's output register, its take
    g = 0
    cycle = 0
    fwd = None
    while fwd is None or len(wb) < n_wb:
        head = pipe[-1]
        if head is not None and head[1] and head[0] not in offered_bias:
            offered_bias[head[0]] = cycle          # the activation unit takes z now
        out_free = out_list is None or out_take == cycle
        if out_take == cycle:
            out_list, out_take = None, None
        # the merger holds while a last waits in its final stage for the output register
        refuse = stages[-1] is not None and stages[-1][1] and not out_free
        if not refuse:
            moving = stages[-1]
            if moving is not None and moving[1] and moving[0] == 0:
                # L*: the Layer0Unit takes it when offered; the layer-0 write-backs follow
                out_list, out_take = 0, cycle + 1
                t = None
                for jj in range(n_out0):
                    s = max(z_takes[jj] + 1 + ACT_LATENCY + AFIFO_LATENCY,
                            cycle + 2 if t is None else t + 1)
                    t = s + C_ds - 1
                    wb[(0, jj)] = t + SCALE_LATENCY
            elif moving is not None and moving[1]:
                n = moving[0]
                s = max(offered_bias[n] + ACT_LATENCY + AFIFO_LATENCY, cycle + 1)
                out_list, out_take = n, s + C_ds - 1
                wb[keys[n]] = out_take + SCALE_LATENCY
            stages = [head] + stages[:-1]
        if not (refuse and head is not None):      # no stall: the issue pipeline moves
            issue = None
            if g < len(slots):
                dep = slots[g][2]
                if dep is None or (dep in wb and wb[dep] < cycle):
                    issue = slots[g]
                    g += 1
                    if g == len(slots):
                        fwd = cycle + 1
            pipe = [issue] + pipe[:-1]
        cycle += 1
    done = max(max(wb.values()) + 1, config.n_params)
    return fwd, done + 1 - fwd


def loss_drain_bound(config: Config) -> int:
    """The most cycles LOSS_DRAIN can take: ``1 + max(4, LOSS_PIPE + T - (k - 1))`` with ``T =
    lane_sum_stages(batch)``: a delta-bank add by the last issue keeps the pipeline busy 4
    cycles, the sum of squares of the last output's register slot 0 (``k - 1`` issues before
    the last) ``LOSS_PIPE + T``.  5 for the seed net at batch 5..16 and k >= 2."""
    return 1 + max(4, LOSS_PIPE + lane_sum_stages(config.batch) - (config.k - 1))


def loss_drain_cycles(case: StepCase) -> int:
    """Cycles of LOSS_DRAIN (2 .. :func:`loss_drain_bound`): until the loss/delta pipeline
    is empty.

    The pass issues ``(output, register slot)`` in order, one per cycle, every lane at once;
    the last few issues decide: issue ``t`` from the end (``t = 0`` last) keeps the pipeline
    busy ``4 - t`` drain cycles when it adds to a delta bank (some active lane holds a
    non-empty register there, update not ``none``), ``LOSS_PIPE + T - t`` when it adds to
    the loss (register slot 0; ``T = lane_sum_stages(batch)`` stages of the sum over the
    lanes).
    """
    cfg = case.config
    n_out, K = cfg.n_out, cfg.k
    gv = case.trace.forward.grad_val[:case.batch_n]
    loss_pipe = LOSS_PIPE + lane_sum_stages(cfg.batch)
    busy = 1
    order = [(o, r) for o in range(n_out) for r in range(K)][::-1]
    for t, (o, r) in enumerate(order[:max(4, loss_pipe)]):
        delta = case.update != "none" and r < gv.shape[2] and bool(np.any(gv[:, o, r] != 0))
        if delta:
            busy = max(busy, 4 - t)
        if r == 0:
            busy = max(busy, loss_pipe - t)
    return 1 + busy


def phase_cycles(config: Config, *, update: str = "maxnorm", loss_drain: int | None = None,
                 delta_zero: bool = False, lengths: dict | None = None) -> dict:
    """Cycles per FSM state of one step, as derived in docs/engine.md.

    Parameters
    ----------
    update : "sgd", "maxnorm" or "none".
    loss_drain : int
        Cycles of LOSS_DRAIN (:func:`loss_drain_cycles`; by default the bound,
        :func:`loss_drain_bound`).
    delta_zero : bool
        Every delta is 0: the step ends after NORM without an update pass.
    lengths : dict
        The register slots issued per block of layer 1 (:func:`check_candidates`); by default
        every block whole, which gives the upper bound of FWD and of FWD + FWD_WAIT.

    Returns
    -------
    dict
        ``{state: cycles}``; :func:`step_cycles` sums them into the CYCLES register.
    """
    B, K, P, L = config.batch, config.k, config.n_params, config.n_layers
    T = lane_sum_stages(B)
    if loss_drain is None:
        loss_drain = loss_drain_bound(config)
    fwd, wait = forward_cycles(config, lengths)
    phases = {"FWD": fwd, "FWD_WAIT": wait, "LOSS": config.n_out * K, "LOSS_DRAIN": loss_drain}
    if update != "none":
        phases.update(update_phase_cycles(config, update=update, delta_zero=delta_zero))
    phases["DONE"] = 1
    return phases


def update_phase_cycles(config: Config, *, update: str = "maxnorm", delta_zero: bool = False) -> dict:
    """Cycles per state of the :class:`~dpfm.rtl.update.UpdateUnit` (the engine's UPDATE
    state), ``M = update_lanes`` parameters per cycle, ``W = ceil(n_params / M)`` words.

    MAX ``W``; MAX_DRAIN ``1 + MAX_PIPE + T + T_M`` (the MAX pipeline empties: ``T =
    lane_sum_stages(batch)`` stages of the sum over the banks, ``T_M = lane_sum_stages(M)``
    of the maximum over a word); NORM ``NORM_CYCLES``; then, unless every delta is 0, DIV
    ``DIV_CYCLES`` (maxnorm), UPD ``W``, UPD_DRAIN ``1 + UPDATE_PIPE + T``.
    """
    W = update_words(config)
    T = lane_sum_stages(config.batch)
    TM = lane_sum_stages(config.update_lanes)
    phases = {"MAX": W, "MAX_DRAIN": 1 + MAX_PIPE + T + TM, "NORM": NORM_CYCLES}
    if not delta_zero:
        if update == "maxnorm":
            phases["DIV"] = DIV_CYCLES      # two quotient bits per cycle, RECIP_BITS of them
        phases.update({"UPD": W, "UPD_DRAIN": 1 + UPDATE_PIPE + T})
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


def normalise_payload(name, payload):
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


def payload_matches(got: dict, want: dict) -> bool:
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
