"""Hypothesis properties of the pruning kernels (dpfm.reference.kernels).

``topk_insert`` (one entry into a sorted top-k list, the hardware's streaming step) and
``merge_layer`` (a layer's candidate entries, summed and pruned to k).  Stated as properties
of the result (order, uniqueness, what is kept versus dropped, saturation counts), checked on
small integer-valued numbers so that duplicates, ties and exact zeros are frequent and every
comparison is exact.  int64 runs with small saturation bounds; float64 runs with +-inf.
"""

from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpfm.reference.fixed import round_shift
from dpfm.reference.kernels import EXACT, STREAM, merge_layer, topk_insert

SETTINGS = settings(max_examples=150, deadline=None)
WIDE = (-(1 << 40), 1 << 40)


# ------------------------------------------------------------------ helpers

def key(idx, val):
    """The list's order: |value| descending, then index ascending."""
    return (-abs(val), idx)


def held(L_idx, L_val, n):
    return [(int(i), L_val[t].item()) for t, i in enumerate(L_idx[:n])]


def check_list(L_idx, L_val, n, k, lo, hi):
    """Invariants of a top-k list after any operation."""
    assert 0 <= n <= k
    entries = held(L_idx, L_val, n)
    assert all(v != 0 for _, v in entries), f"exact zero held: {entries}"
    assert all(i >= 0 for i, _ in entries)
    idxs = [i for i, _ in entries]
    assert len(set(idxs)) == len(idxs), f"duplicate index: {entries}"
    keys = [key(i, v) for i, v in entries]
    assert keys == sorted(keys), f"not sorted by (|v| desc, idx asc): {entries}"
    assert all(lo <= v <= hi for _, v in entries)
    assert np.all(L_idx[n:] == -1) and np.all(L_val[n:] == 0), "empty slots must be (-1, 0)"


def new_list(k, dtype):
    return np.full(k, -1, dtype=np.int64), np.zeros(k, dtype=dtype)


def run_inserts(cands, k, lo, hi, dtype):
    """Insert ``cands`` one by one, checking the invariants after every step."""
    L_idx, L_val = new_list(k, dtype)
    n, sats = 0, 0
    for i, v in cands:
        n, c = topk_insert(L_idx, L_val, n, k, i, dtype(v), lo, hi)
        sats += c
        check_list(L_idx, L_val, n, k, lo, hi)
    return held(L_idx, L_val, n), sats


def bounds(dtype):
    return (-np.inf, np.inf) if dtype is np.float64 else WIDE


def as_dict(entries):
    return {i: v for i, v in entries}


small_values = st.integers(-6, 6)
candidates = st.lists(st.tuples(st.integers(0, 12), small_values), max_size=30)
dtypes = st.sampled_from([np.int64, np.float64])


# ------------------------------------------------------------------ topk_insert

@SETTINGS
@given(candidates, st.integers(1, 8), dtypes)
def test_insert_sequences_keep_the_list_invariants(cands, k, dtype):
    run_inserts(cands, k, *bounds(dtype), dtype)


@SETTINGS
@given(candidates, dtypes)
def test_k_larger_than_the_candidates_keeps_every_sum(cands, dtype):
    """Room for every index: the list holds each index's exact sum, zero sums dropped."""
    k = 13 + len(cands)
    got, sats = run_inserts(cands, k, *bounds(dtype), dtype)
    total = defaultdict(int)
    for i, v in cands:
        total[i] += v
    assert as_dict(got) == {i: v for i, v in total.items() if v != 0}
    assert len(got) == len(as_dict(got))
    assert sats == 0


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 12), small_values), max_size=30, unique_by=lambda c: c[0]),
       st.integers(1, 8), dtypes)
def test_distinct_indices_keep_the_k_best(cands, k, dtype):
    """Without duplicate indices, streaming equals pruning once: the k best non-zero entries."""
    got, _ = run_inserts(cands, k, *bounds(dtype), dtype)
    best = sorted(((i, v) for i, v in cands if v != 0), key=lambda c: key(*c))[:k]
    assert got == [(i, dtype(v).item()) for i, v in best]


@SETTINGS
@given(candidates, st.integers(1, 6), st.tuples(st.integers(0, 12), small_values), dtypes)
def test_one_insert_is_merge_then_keep_k_best(prefix, k, cand, dtype):
    """From any reachable list, one insert = add to the held entry of that index (or append),
    drop a zero sum, keep the k best by (|v| desc, idx asc)."""
    lo, hi = bounds(dtype)
    L_idx, L_val = new_list(k, dtype)
    n = 0
    for i, v in prefix:
        n, _ = topk_insert(L_idx, L_val, n, k, i, dtype(v), lo, hi)
    before = as_dict(held(L_idx, L_val, n))
    i, v = cand
    n, c = topk_insert(L_idx, L_val, n, k, i, dtype(v), lo, hi)
    assert c == 0
    merged = dict(before)
    merged[i] = merged.get(i, 0) + v
    want = sorted(((j, w) for j, w in merged.items() if w != 0), key=lambda e: key(*e))[:k]
    assert held(L_idx, L_val, n) == [(j, dtype(w).item()) for j, w in want]


@SETTINGS
@given(candidates, st.integers(1, 8), st.integers(0, 12), dtypes)
def test_zero_entry_changes_nothing(cands, k, zero_idx, dtype):
    lo, hi = bounds(dtype)
    L_idx, L_val = new_list(k, dtype)
    n = 0
    for i, v in cands:
        n, _ = topk_insert(L_idx, L_val, n, k, i, dtype(v), lo, hi)
    snap = (L_idx.copy(), L_val.copy(), n)
    n2, c = topk_insert(L_idx, L_val, n, k, zero_idx, dtype(0), lo, hi)
    assert (n2, c) == (n, 0)
    assert np.array_equal(L_idx, snap[0]) and np.array_equal(L_val, snap[1])


@SETTINGS
@given(st.integers(0, 50), st.integers(0, 50), st.integers(1, 9), st.booleans(), st.booleans(),
       dtypes)
def test_ties_go_to_the_lower_index_in_either_order(i1, i2, mag, neg1, neg2, dtype):
    """Two entries of equal |value| competing for one register: the lower index wins, whatever
    the order of arrival and the signs."""
    if i1 == i2:
        i2 = i1 + 1
    e1, e2 = (i1, -mag if neg1 else mag), (i2, -mag if neg2 else mag)
    winner = min(e1, e2)
    for order in ((e1, e2), (e2, e1)):
        got, _ = run_inserts(order, 1, *bounds(dtype), dtype)
        assert got == [(winner[0], dtype(winner[1]).item())]


def test_duplicate_that_cancels_frees_its_register():
    L_idx, L_val = new_list(2, np.int64)
    n = 0
    for i, v in ((3, 5), (1, 2), (3, -5)):
        n, _ = topk_insert(L_idx, L_val, n, 2, i, v, *WIDE)
    assert held(L_idx, L_val, n) == [(1, 2)]
    assert L_idx.tolist() == [1, -1] and L_val.tolist() == [2, 0]


@SETTINGS
@given(st.integers(1, 20), st.data())
def test_saturating_sums_clamp_and_count(hi, data):
    """int64 with small bounds [lo, hi]: the sum of a held entry and a new one is clamped, one
    event per clamp.  (Entries arrive in range: the caller saturates them first.)  Room for every
    index, so the list holds each index's running saturated sum."""
    lo = -hi - data.draw(st.integers(0, 1))
    cands = data.draw(st.lists(st.tuples(st.integers(0, 5), st.integers(lo, hi)), max_size=30))
    got, sats = run_inserts(cands, 6, lo, hi, np.int64)
    run, events = {}, 0
    for i, v in cands:
        if v == 0:
            continue
        s = run.get(i, 0) + v
        if i in run and not lo <= s <= hi:
            s = min(max(s, lo), hi)
            events += 1
        if s == 0:
            run.pop(i, None)
        else:
            run[i] = s
    assert as_dict(got) == run
    assert sats == events


def test_saturation_example():
    L_idx, L_val = new_list(4, np.int64)
    n, c1 = topk_insert(L_idx, L_val, 0, 4, 0, 6, -8, 7)
    n, c2 = topk_insert(L_idx, L_val, n, 4, 0, 5, -8, 7)       # 11 -> 7
    n, c3 = topk_insert(L_idx, L_val, n, 4, 0, -7, -8, 7)      # 7 - 7 = 0: leaves
    assert (c1, c2, c3) == (0, 1, 0) and n == 0


# ------------------------------------------------------------------ merge_layer

@st.composite
def layers(draw, integer):
    """Random inputs of one layer: values, input registers (unique indices < off), weights."""
    N = draw(st.integers(1, 3))
    n_in = draw(st.integers(1, 4))
    n_out = draw(st.integers(1, 3))
    off = draw(st.integers(0, 10))
    K_in = 0 if off == 0 else draw(st.integers(1, min(4, off)))
    vals = st.integers(-5, 5)
    a = np.array(draw(st.lists(vals, min_size=N * n_in, max_size=N * n_in))).reshape(N, n_in)
    W = np.array(draw(st.lists(st.integers(-3, 3), min_size=n_out * n_in,
                               max_size=n_out * n_in))).reshape(n_out, n_in)
    g_idx = np.full((N, n_in, K_in), -1, dtype=np.int64)
    g_val = np.zeros((N, n_in, K_in), dtype=np.int64)
    for s in range(N):
        for i in range(n_in):
            m = draw(st.integers(0, K_in))
            ids = draw(st.lists(st.integers(0, off - 1), min_size=m, max_size=m, unique=True)) if m else []
            for r, p in enumerate(ids):
                g_idx[s, i, r] = p
                g_val[s, i, r] = draw(vals)      # may be 0: a register worth nothing
    n_cand = n_in * K_in + n_in + 1
    k = draw(st.integers(1, n_cand + 2))
    if integer:
        fw = draw(st.integers(0, 3))
        new_shift = draw(st.integers(-1, 2))
        one_g = draw(st.sampled_from([1, 2, 4, 8, 16, 64]))
        hi = draw(st.sampled_from([3, 7, 15, 31, 1 << 40]))
        lo = -hi - 1
        return (a.astype(np.int64), g_idx, g_val, W.astype(np.int64), off, k, fw, new_shift,
                one_g, lo, hi)
    return (a.astype(np.float64), g_idx, g_val.astype(np.float64), W.astype(np.float64), off, k,
            0, 0, 1.0, -np.inf, np.inf)


def candidate_sums(a, g_idx, g_val, W, off, fw, new_shift, one_g, lo, hi):
    """The candidate entries of every (sample, neuron) by the definition (dense, summed,
    rounded once, saturated): ``{index: value}`` including zeros, and the clamp events."""
    N, n_in = a.shape
    n_out = W.shape[0]
    integer = np.issubdtype(g_val.dtype, np.integer)
    out, events = {}, 0

    def sat(v):
        nonlocal events
        if v < lo or v > hi:
            events += 1
            return min(max(v, lo), hi)
        return v

    for s in range(N):
        for j in range(n_out):
            c, touched = defaultdict(int), set()
            for i in range(n_in):
                for r in range(g_idx.shape[2]):
                    if g_val[s, i, r] != 0:
                        p = int(g_idx[s, i, r])
                        touched.add(p)
                        c[p] += int(W[j, i]) * int(g_val[s, i, r]) if integer else W[j, i] * g_val[s, i, r]
            cand = {p: sat(round_shift(c[p], fw) if integer else c[p]) for p in touched}
            for i in range(n_in):
                v = int(a[s, i]) if integer else a[s, i]
                cand[off + j * n_in + i] = sat(round_shift(v, new_shift) if integer else v)
            cand[off + n_out * n_in + j] = sat(one_g)
            out[s, j] = cand
    return out, events


def check_merge(out_idx, out_val, cands, k, lo, hi):
    """Properties of policy exact given the candidates by definition."""
    for (s, j), cand in cands.items():
        L_idx, L_val = out_idx[s, j], out_val[s, j]
        n = int(np.count_nonzero(L_idx >= 0))
        check_list(L_idx, L_val, n, k, lo, hi)
        kept = held(L_idx, L_val, n)
        nonzero = {p: v for p, v in cand.items() if v != 0}
        # k larger than the candidates keeps all of them; else exactly k
        assert n == min(k, len(nonzero))
        # every kept value is its candidate's full sum (equal indices added)
        for p, v in kept:
            assert v == nonzero[p]
        # nothing dropped beats anything kept (|v| desc, lower index wins ties)
        kept_ids = {p for p, _ in kept}
        dropped = [(p, v) for p, v in nonzero.items() if p not in kept_ids]
        if kept and dropped:
            assert max(key(*d) for d in kept) < min(key(*d) for d in dropped)


@settings(max_examples=200, deadline=None)
@given(layers(integer=True))
def test_merge_layer_exact_int64(case):
    a, g_idx, g_val, W, off, k, fw, new_shift, one_g, lo, hi = case
    out_idx, out_val, nsat = merge_layer(a, g_idx, g_val, W, off, k, EXACT, fw, new_shift, one_g, lo, hi)
    assert out_idx.shape == out_val.shape == (a.shape[0], W.shape[0], k)
    cands, events = candidate_sums(a, g_idx, g_val, W, off, fw, new_shift, one_g, lo, hi)
    check_merge(out_idx, out_val, cands, k, lo, hi)
    assert nsat == events


@settings(max_examples=200, deadline=None)
@given(layers(integer=False))
def test_merge_layer_exact_float64(case):
    a, g_idx, g_val, W, off, k, fw, new_shift, one_g, lo, hi = case
    out_idx, out_val, nsat = merge_layer(a, g_idx, g_val, W, off, k, EXACT, fw, new_shift, one_g, lo, hi)
    cands, _ = candidate_sums(a, g_idx, g_val, W, off, fw, new_shift, one_g, lo, hi)
    check_merge(out_idx, out_val, cands, k, lo, hi)
    assert nsat == 0


@settings(max_examples=150, deadline=None)
@given(layers(integer=True), st.booleans())
def test_merge_layer_stream_invariants(case, integer):
    """Policy stream (insertion in hardware order, no look-ahead): the list invariants hold and
    with room for every candidate, no rounding (fw = 0) and no saturation it equals exact."""
    a, g_idx, g_val, W, off, k, fw, new_shift, one_g, lo, hi = case
    if not integer:
        a, g_val, W = a.astype(np.float64), g_val.astype(np.float64), W.astype(np.float64)
        fw, new_shift, one_g, lo, hi = 0, 0, 1.0, -np.inf, np.inf
    s_idx, s_val, _ = merge_layer(a, g_idx, g_val, W, off, k, STREAM, fw, new_shift, one_g, lo, hi)
    for s in range(a.shape[0]):
        for j in range(W.shape[0]):
            n = int(np.count_nonzero(s_idx[s, j] >= 0))
            check_list(s_idx[s, j], s_val[s, j], n, k, lo, hi)
    n_cand = g_idx.shape[1] * g_idx.shape[2] + g_idx.shape[1] + 1
    if fw == 0:
        wide = WIDE if integer else (lo, hi)
        e_idx, e_val, e_sat = merge_layer(a, g_idx, g_val, W, off, n_cand, EXACT, 0, new_shift, one_g, *wide)
        f_idx, f_val, f_sat = merge_layer(a, g_idx, g_val, W, off, n_cand, STREAM, 0, new_shift, one_g, *wide)
        assert e_sat == f_sat == 0
        np.testing.assert_array_equal(f_idx, e_idx)
        np.testing.assert_array_equal(f_val, e_val)


def test_merge_layer_example_duplicates_ties_zeros():
    """Hand example.  One sample, two inputs sharing parameter 0, one neuron, off = 2:
    candidates  p0: 1*3 + 1*(-3) = 0 (dropped),  p1: 1*2 = 2,  W[0,0] (p2): a0 = 2,
    W[0,1] (p3): a1 = 0 (dropped),  b (p4): 1.  k = 2 keeps p1 and p2 (tie at 2: lower index first)."""
    a = np.array([[2, 0]], dtype=np.int64)
    g_idx = np.array([[[0, 1], [0, -1]]], dtype=np.int64)
    g_val = np.array([[[3, 2], [-3, 0]]], dtype=np.int64)
    W = np.array([[1, 1]], dtype=np.int64)
    for k, want in ((2, [(1, 2), (2, 2)]), (5, [(1, 2), (2, 2), (4, 1)])):
        out_idx, out_val, nsat = merge_layer(a, g_idx, g_val, W, 2, k, EXACT, 0, 0, 1, *WIDE)
        n = int(np.count_nonzero(out_idx[0, 0] >= 0))
        assert held(out_idx[0, 0], out_val[0, 0], n) == want and nsat == 0
        assert out_idx[0, 0, n:].tolist() == [-1] * (k - n)


@pytest.mark.parametrize("policy", [EXACT, STREAM])
def test_merge_layer_saturation_example(policy):
    """Two inputs both contribute 6 to parameter 0: the sum 12 clamps to 7 (bounds -8..7)."""
    a = np.array([[1, 1]], dtype=np.int64)
    g_idx = np.array([[[0], [0]]], dtype=np.int64)
    g_val = np.array([[[6], [6]]], dtype=np.int64)
    W = np.array([[1, 1]], dtype=np.int64)
    out_idx, out_val, nsat = merge_layer(a, g_idx, g_val, W, 1, 4, policy, 0, 0, 1, -8, 7)
    assert out_idx[0, 0].tolist() == [0, 1, 2, 3]
    assert out_val[0, 0].tolist() == [7, 1, 1, 1]
    assert nsat == 1
