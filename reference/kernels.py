"""Compiled inner loops of the golden model (numba), generic over float64 and int64.

Without numba (e.g. on the PYNQ board) they run as plain Python, with the same results.

One source serves both number systems: the only operation whose meaning depends on the type
is :func:`rnd` (drop fractional bits), an identity on floats and
:func:`dpfm.reference.fixed.round_shift` on integers.  Saturation bounds are passed in
(``-inf, +inf`` for float64, so it never fires there).
"""

from __future__ import annotations

import numpy as np

try:
    from numba import njit, types
    from numba.extending import overload
except ImportError:
    # Where numba has no build (the PYNQ board's 32-bit ARM) the same loops run as plain
    # Python: identical results, far slower.  The board only needs them for small things
    # (initial weights, checks); its training steps run in the fabric.
    types = None

    def njit(*args, **kwargs):
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]
        return lambda function: function

    def overload(function):
        return lambda implementation: implementation

__all__ = ["rnd", "topk_insert", "merge_layer", "accumulate_delta", "merge_scale_float",
           "merge_sampled_float", "float_update", "merge_scale_fixed", "inclusion_probabilities", "sigmoid_parts"]

EXACT, STREAM = 0, 1


def rnd(x, s):
    """Python twin of the compiled ``rnd``: integers round-shift, floats pass through."""
    if isinstance(x, float):
        return x
    if s > 0:
        return (x + (1 << (s - 1))) >> s
    if s < 0:
        return x << (-s)
    return x


@overload(rnd)
def _rnd_overload(x, s):
    if isinstance(x, types.Float):
        def impl_float(x, s):
            return x
        return impl_float

    def impl_int(x, s):
        if s > 0:
            return (x + (1 << (s - 1))) >> s
        if s < 0:
            return x << (-s)
        return x
    return impl_int


@njit(cache=True)
def _sat(x, lo, hi):
    if x > hi:
        return hi, 1
    if x < lo:
        return lo, 1
    return x, 0


@njit(cache=True)
def topk_insert(L_idx, L_val, n, k, c_idx, c_val, lo, hi):
    """Insert one entry into a top-k list held sorted by (|value| desc, index asc).

    An entry whose index is held is added to it (saturating) and re-placed, removed if the sum
    is zero; a new entry enters at its place and the smallest entry leaves when more than k
    are held.  Zero-valued entries change nothing.  Returns ``(n, saturations)``.
    """
    if c_val == 0:
        return n, 0
    nsat = 0
    for t in range(n):
        if L_idx[t] == c_idx:
            v, nsat = _sat(L_val[t] + c_val, lo, hi)
            for u in range(t, n - 1):
                L_idx[u] = L_idx[u + 1]
                L_val[u] = L_val[u + 1]
            n -= 1
            L_idx[n] = -1
            L_val[n] = 0
            if v == 0:
                return n, nsat
            c_val = v
            break
    m = abs(c_val)
    pos = n
    for u in range(n):
        mu = abs(L_val[u])
        if m > mu or (m == mu and c_idx < L_idx[u]):
            pos = u
            break
    if pos >= k:
        return n, nsat
    top = n if n < k else k - 1
    for u in range(top, pos, -1):
        L_idx[u] = L_idx[u - 1]
        L_val[u] = L_val[u - 1]
    L_idx[pos] = c_idx
    L_val[pos] = c_val
    return (n + 1 if n < k else k), nsat


@njit(cache=True)
def merge_layer(a_in, g_idx, g_val, W, off, k, policy, fw, new_shift, one_g, lo, hi):
    """Gradient registers of every neuron of a layer, before the activation.

    Parameters
    ----------
    a_in : (N, n_in) inputs (value units).
    g_idx, g_val : (N, n_in, K_in) the inputs' registers (index -1 / value 0 = empty).
    W : (n_out, n_in) weights.
    off : index of this layer's first parameter (W[j, i] is ``off + j*n_in + i``, b[j] is
        ``off + n_out*n_in + j``).
    k : registers kept.
    policy : 0 = exact (sum every candidate, prune once), 1 = stream (insert candidates one by
        one in hardware order: per input, the new entry then the scaled registers; bias last).
    fw : fractional bits of W (products ``W*g`` are rounded by ``fw``; 0 for float).
    new_shift : shift turning a value into gradient units (``value.frac - grad.frac``).
    one_g : 1.0 in gradient units.
    lo, hi : gradient saturation bounds.

    Returns
    -------
    out_idx, out_val : (N, n_out, k) registers sorted by (|value| desc, index asc), empty
        slots (-1, 0) last.
    nsat : number of saturation events.
    """
    N, n_in = a_in.shape
    n_out = W.shape[0]
    K_in = g_idx.shape[2]
    out_idx = np.full((N, n_out, k), -1, dtype=np.int64)
    out_val = np.zeros((N, n_out, k), dtype=g_val.dtype)
    nsat = 0
    if policy == STREAM:
        for s in range(N):
            for j in range(n_out):
                L_idx = out_idx[s, j]
                L_val = out_val[s, j]
                n = 0
                for i in range(n_in):
                    v, c = _sat(rnd(a_in[s, i], new_shift), lo, hi)
                    nsat += c
                    n, c = topk_insert(L_idx, L_val, n, k, off + j * n_in + i, v, lo, hi)
                    nsat += c
                    w = W[j, i]
                    for r in range(K_in):
                        gv = g_val[s, i, r]
                        if gv != 0:
                            v, c = _sat(rnd(w * gv, fw), lo, hi)
                            nsat += c
                            n, c = topk_insert(L_idx, L_val, n, k, g_idx[s, i, r], v, lo, hi)
                            nsat += c
                v, c = _sat(one_g, lo, hi)
                nsat += c
                n, c = topk_insert(L_idx, L_val, n, k, off + n_out * n_in + j, v, lo, hi)
                nsat += c
        return out_idx, out_val, nsat

    # exact: dense accumulation over the earlier layers' parameters, rounded once
    dense = np.zeros(max(off, 1), dtype=g_val.dtype)
    touched = np.zeros(max(off, 1), dtype=np.bool_)
    n_cand_max = n_in * K_in + n_in + 1
    cand_idx = np.empty(n_cand_max, dtype=np.int64)
    cand_val = np.empty(n_cand_max, dtype=g_val.dtype)
    hit = np.empty(max(n_in * K_in, 1), dtype=np.int64)
    order = np.empty(n_cand_max, dtype=np.int64)
    spare = np.empty(n_cand_max, dtype=np.int64)
    for s in range(N):
        for j in range(n_out):
            nc, c = _candidates(a_in, g_idx, g_val, W, off, s, j, fw, new_shift, one_g, lo, hi,
                                dense, touched, hit, cand_idx, cand_val)
            nsat += c
            _select_top(cand_idx, cand_val, nc, k, out_idx[s, j], out_val[s, j], order, spare)
    return out_idx, out_val, nsat


@njit(cache=True)
def _candidates(a_in, g_idx, g_val, W, off, s, j, fw, new_shift, one_g, lo, hi, dense, touched,
                hit, cand_idx, cand_val):
    """The exact candidates of neuron ``j`` for sample ``s`` (policy exact).

    Every input register scaled by its weight, equal indices summed (exactly) and rounded once;
    then the new entries and the bias entry; exact zeros dropped.  Indices are distinct.  The
    earlier layers' entries come in no particular order (selection breaks ties by index).
    ``dense``/``touched`` (zero/False on entry and on return) and ``hit`` are scratch.
    Returns ``(number of candidates, saturations)``.
    """
    n_in = a_in.shape[1]
    n_out = W.shape[0]
    K_in = g_idx.shape[2]
    nsat = 0
    nh = 0
    for i in range(n_in):
        w = W[j, i]
        for r in range(K_in):
            gv = g_val[s, i, r]
            if gv != 0:
                p = g_idx[s, i, r]
                if not touched[p]:
                    touched[p] = True
                    hit[nh] = p
                    nh += 1
                dense[p] += w * gv
    nc = 0
    for h in range(nh):
        p = hit[h]
        v, c = _sat(rnd(dense[p], fw), lo, hi)
        nsat += c
        dense[p] = 0
        touched[p] = False
        if v != 0:
            cand_idx[nc] = p
            cand_val[nc] = v
            nc += 1
    for i in range(n_in):
        v, c = _sat(rnd(a_in[s, i], new_shift), lo, hi)
        nsat += c
        if v != 0:
            cand_idx[nc] = off + j * n_in + i
            cand_val[nc] = v
            nc += 1
    v, c = _sat(one_g, lo, hi)
    nsat += c
    if v != 0:
        cand_idx[nc] = off + n_out * n_in + j
        cand_val[nc] = v
        nc += 1
    return nc, nsat


@njit(cache=True)
def _ahead(v1, i1, v2, i2):
    """Register order: ``|v|`` descending, the lower index first on ties; a NaN (a diverged
    float run) after every number, NaNs by index."""
    m1 = abs(v1)
    m2 = abs(v2)
    if m1 != m1:
        return m2 != m2 and i1 < i2
    if m2 != m2:
        return True
    return m1 > m2 or (m1 == m2 and i1 < i2)


#: Up to this many candidates (or registers kept) the top-k is chosen by insertion.
INSERTION_MAX = 24


@njit(cache=True)
def _sort_candidates(cand_idx, cand_val, nc, order, spare):
    """Positions ``0..nc-1`` of the candidates in register order, by a natural merge sort
    into the scratch arrays ``order``/``spare``; returns the array holding the result.

    The runs already in order are found first and then merged pairwise: the candidates of a
    layer come in runs (each input's registers, sorted, scaled by one weight), so far fewer
    passes are needed than ``log2(nc)``.  The order is total (indices are distinct), so the
    result is the one sorted order whatever the runs.
    """
    if nc == 0:
        return order
    bounds = np.empty(nc + 1, dtype=np.int64)
    merged = np.empty(nc + 1, dtype=np.int64)
    for t in range(nc):
        order[t] = t
    nb = 1
    bounds[0] = 0
    for t in range(1, nc):
        if _ahead(cand_val[t], cand_idx[t], cand_val[t - 1], cand_idx[t - 1]):
            bounds[nb] = t
            nb += 1
    bounds[nb] = nc
    src, dst = order, spare
    while nb > 1:
        nm = 0
        for r in range(0, nb, 2):
            start = bounds[r]
            mid = bounds[r + 1]
            end = bounds[r + 2] if r + 2 <= nb else mid
            merged[nm] = start
            nm += 1
            x, y, o = start, mid, start
            while x < mid and y < end:
                if _ahead(cand_val[src[y]], cand_idx[src[y]], cand_val[src[x]], cand_idx[src[x]]):
                    dst[o] = src[y]
                    y += 1
                else:
                    dst[o] = src[x]
                    x += 1
                o += 1
            while x < mid:
                dst[o] = src[x]
                x += 1
                o += 1
            while y < end:
                dst[o] = src[y]
                y += 1
                o += 1
        merged[nm] = nc
        for r in range(nm + 1):
            bounds[r] = merged[r]
        nb = nm
        src, dst = dst, src
    return src


@njit(cache=True)
def _heap_sift_down(heap, n, t, cand_idx, cand_val):
    """Restore the heap (the candidate every other is ahead of at the root) below ``t``."""
    while True:
        worst = t
        left = 2 * t + 1
        right = left + 1
        if left < n and _ahead(cand_val[heap[worst]], cand_idx[heap[worst]],
                               cand_val[heap[left]], cand_idx[heap[left]]):
            worst = left
        if right < n and _ahead(cand_val[heap[worst]], cand_idx[heap[worst]],
                                cand_val[heap[right]], cand_idx[heap[right]]):
            worst = right
        if worst == t:
            return
        heap[t], heap[worst] = heap[worst], heap[t]
        t = worst


@njit(cache=True)
def _select_top(cand_idx, cand_val, nc, k, L_idx, L_val, order, spare):
    """The ``k`` first candidates in register order into ``L_idx``/``L_val`` (which hold
    ``-1``/``0`` on entry); returns how many were written.

    Few candidates or registers: insertion.  At least an eighth of the candidates kept: a
    natural merge sort.  Otherwise a heap of the ``k`` best so far (the worst at its root),
    which rejects most candidates with one comparison, then sorted.  All three give the one order (|v| descending, the lower
    index first; indices are distinct).
    """
    if nc <= INSERTION_MAX or k <= INSERTION_MAX:
        n = 0
        for t in range(nc):
            ci = cand_idx[t]
            cv = cand_val[t]
            if n == k and not _ahead(cv, ci, L_val[k - 1], L_idx[k - 1]):
                continue
            u = n if n < k else k - 1
            while u > 0 and _ahead(cv, ci, L_val[u - 1], L_idx[u - 1]):
                L_idx[u] = L_idx[u - 1]
                L_val[u] = L_val[u - 1]
                u -= 1
            L_idx[u] = ci
            L_val[u] = cv
            if n < k:
                n += 1
        return n
    if 8 * k >= nc:
        srt = _sort_candidates(cand_idx, cand_val, nc, order, spare)
        n = min(k, nc)
        for t in range(n):
            L_idx[t] = cand_idx[srt[t]]
            L_val[t] = cand_val[srt[t]]
        return n
    heap = order
    for t in range(k):
        heap[t] = t
    for t in range(k // 2 - 1, -1, -1):
        _heap_sift_down(heap, k, t, cand_idx, cand_val)
    for t in range(k, nc):
        r = heap[0]
        if _ahead(cand_val[t], cand_idx[t], cand_val[r], cand_idx[r]):
            heap[0] = t
            _heap_sift_down(heap, k, 0, cand_idx, cand_val)
    for n in range(k - 1, -1, -1):       # pop the worst into the last free slot
        r = heap[0]
        L_idx[n] = cand_idx[r]
        L_val[n] = cand_val[r]
        heap[0] = heap[n]
        _heap_sift_down(heap, n, 0, cand_idx, cand_val)
    return k


@njit(cache=True)
def accumulate_delta(g_idx, g_val, e, P):
    """Dense ``D[p] = sum over (sample, output, register) with index p of e * g``.

    ``g_idx, g_val`` (N, n_out, k); ``e`` (N, n_out).  Exact in int64 (fixed) or float64.
    """
    D = np.zeros(P, dtype=g_val.dtype)
    N, n_out, k = g_val.shape
    for s in range(N):
        for o in range(n_out):
            es = e[s, o]
            for r in range(k):
                gv = g_val[s, o, r]
                if gv != 0:
                    D[g_idx[s, o, r]] += es * gv
    return D


@njit(cache=True)
def _scale_float(mi, mv, d):
    """Registers after the activation (float64): ``mv * d`` per neuron, a zero product
    emptying its slot (index -1)."""
    N, n_out, k = mv.shape
    gi = np.empty_like(mi)
    gv = np.empty_like(mv)
    for s in range(N):
        for j in range(n_out):
            dj = d[s, j]
            for r in range(k):
                v = mv[s, j, r] * dj
                gv[s, j, r] = v
                gi[s, j, r] = mi[s, j, r] if v != 0 else -1
    return gi, gv


@njit(cache=True)
def merge_scale_float(a_in, g_idx, g_val, W, off, k, policy, d):
    """Float64 :func:`merge_layer` followed by the activation's derivative ``d`` (N, n_out).

    Returns ``(merged_idx, merged_val, grad_idx, grad_val)``: the registers before and after
    the activation, as ``merge_layer`` then ``grad_val = merged_val * d`` with zero products
    emptied (index -1).  One call per layer instead of four array operations.
    """
    mi, mv, _ = merge_layer(a_in, g_idx, g_val, W, off, k, policy, 0, 0, 1.0, -np.inf, np.inf)
    gi, gv = _scale_float(mi, mv, d)
    return mi, mv, gi, gv


@njit(cache=True)
def merge_scale_fixed(a_in, g_idx, g_val, W, off, k, policy, fw, new_shift, one_g, lo, hi, d,
                      fd):
    """Fixed-point :func:`merge_layer` followed by the activation's derivative ``d`` (N, n_out)
    with ``fd`` fractional bits: every register becomes ``sat(rnd(g * d, fd))``, a zero
    emptying its slot (index -1), as :func:`dpfm.reference.ops.scale_registers`.

    Returns ``(merged_idx, merged_val, grad_idx, grad_val, saturations)`` (both steps'
    saturations together).
    """
    mi, mv, nsat = merge_layer(a_in, g_idx, g_val, W, off, k, policy, fw, new_shift, one_g,
                               lo, hi)
    N, n_out, R = mv.shape
    gi = np.empty_like(mi)
    gv = np.empty_like(mv)
    for s in range(N):
        for j in range(n_out):
            dj = d[s, j]
            for r in range(R):
                v, c = _sat(rnd(mv[s, j, r] * dj, fd), lo, hi)
                nsat += c
                gv[s, j, r] = v
                gi[s, j, r] = mi[s, j, r] if v != 0 else -1
    return mi, mv, gi, gv, nsat


@njit(cache=True)
def inclusion_probabilities(mag, k, pi):
    """Inclusion probabilities of sampling ``k`` of ``n`` entries in proportion to their size.

    ``mag`` holds ``n`` magnitudes sorted in descending order, all > 0.  ``pi[t] = min(1, c *
    mag[t])`` with ``c`` such that ``sum(pi) = min(k, n)``: the largest entries are kept for
    sure (``pi = 1``) while ``c * mag`` would exceed 1.  Returns how many are sure
    (``pi[:sure] == 1``).
    """
    n = mag.shape[0]
    if n <= k:
        for t in range(n):
            pi[t] = 1.0
        return n
    suffix = np.empty(n + 1)
    suffix[n] = 0.0
    for t in range(n - 1, -1, -1):
        suffix[t] = suffix[t + 1] + mag[t]
    sure = 0
    while sure < k and (k - sure) * mag[sure] >= suffix[sure]:
        sure += 1
    for t in range(sure):
        pi[t] = 1.0
    c = (k - sure) / suffix[sure] if sure < k else 0.0
    for t in range(sure, n):
        pi[t] = min(1.0, c * mag[t])
    return sure


@njit(cache=True)
def merge_sampled_float(a_in, g_idx, g_val, W, off, k, u, d):
    """Registers of a layer by unbiased importance sampling (estimator ``randk``; float64).

    The exact candidates of each neuron (as policy exact: equal indices summed) are sampled
    down to ``k``: candidate ``t`` is kept with probability ``pi_t`` (see
    :func:`inclusion_probabilities`) and then holds ``value / pi_t``, so every register's
    expectation is its exact value.  Exactly ``min(k, candidates)`` are kept, by systematic
    sampling along the candidates in register order with the offset ``u[s, j]`` in [0, 1)
    (one uniform per sample and neuron).  A non-finite candidate (a diverged run) falls back
    to the top ``k``.  Kept registers are stored in register order.  ``d`` is the
    activation's derivative, as in :func:`merge_scale_float`, whose four arrays are returned.
    """
    N, n_in = a_in.shape
    n_out = W.shape[0]
    K_in = g_idx.shape[2]
    mi = np.full((N, n_out, k), -1, dtype=np.int64)
    mv = np.zeros((N, n_out, k))
    dense = np.zeros(max(off, 1))
    touched = np.zeros(max(off, 1), dtype=np.bool_)
    n_cand_max = n_in * K_in + n_in + 1
    cand_idx = np.empty(n_cand_max, dtype=np.int64)
    cand_val = np.empty(n_cand_max)
    hit = np.empty(max(n_in * K_in, 1), dtype=np.int64)
    order = np.empty(n_cand_max, dtype=np.int64)
    spare = np.empty(n_cand_max, dtype=np.int64)
    mag = np.empty(n_cand_max)
    pi = np.empty(n_cand_max)
    kept_idx = np.empty(k, dtype=np.int64)
    kept_val = np.empty(k)
    for s in range(N):
        for j in range(n_out):
            nc, _ = _candidates(a_in, g_idx, g_val, W, off, s, j, 0, 0, 1.0, -np.inf, np.inf,
                                dense, touched, hit, cand_idx, cand_val)
            srt = _sort_candidates(cand_idx, cand_val, nc, order, spare)
            finite = True
            for t in range(nc):
                mag[t] = abs(cand_val[srt[t]])
                if not np.isfinite(mag[t]):
                    finite = False
            if nc <= k or not finite:
                for t in range(min(k, nc)):
                    mi[s, j, t] = cand_idx[srt[t]]
                    mv[s, j, t] = cand_val[srt[t]]
                continue
            sure = inclusion_probabilities(mag[:nc], k, pi)
            nk = 0
            for t in range(sure):
                kept_idx[nk] = cand_idx[srt[t]]
                kept_val[nk] = cand_val[srt[t]]
                nk += 1
            # systematic sampling of k - sure among the rest: entry t is kept when a point
            # u + m (m integer) falls in its interval [C_{t-1}, C_t) of the running sum C
            point = u[s, j]
            total = 0.0
            for t in range(sure, nc):
                lo = total
                total += pi[t]
                if nk < k and lo <= point < total:
                    kept_idx[nk] = cand_idx[srt[t]]
                    kept_val[nk] = cand_val[srt[t]] / pi[t]
                    nk += 1
                    point += 1.0
            srt2 = _sort_candidates(kept_idx, kept_val, nk, order, spare)
            for t in range(nk):
                mi[s, j, t] = kept_idx[srt2[t]]
                mv[s, j, t] = kept_val[srt2[t]]
    gi, gv = _scale_float(mi, mv, d)
    return mi, mv, gi, gv


@njit(cache=True)
def float_update(g_idx, g_val, err, P, scale, lr, maxnorm):
    """Float64 delta and update of a step from the output registers.

    ``D = accumulate_delta(g_idx, g_val, err, P) * scale``; ``upd = lr * D`` (``sgd``) or
    ``lr * D / max|D|`` (``maxnorm``; zero when the maximum is 0 or NaN).  The same
    operations in the same order as the array code they replace, so the same bits.
    Returns ``(D, upd)``.
    """
    D = accumulate_delta(g_idx, g_val, err, P)
    m = 0.0
    for p in range(P):
        D[p] = D[p] * scale
        a = abs(D[p])
        if a > m or a != a:
            m = a if m == m else m
    upd = np.zeros(P)
    if not maxnorm:
        for p in range(P):
            upd[p] = lr * D[p]
    elif m > 0:
        for p in range(P):
            upd[p] = lr * D[p] / m
    return D, upd


@njit(cache=True)
def sigmoid_parts(e, z, stable_from):
    """The logistic function and its slope from ``e = exp(-z)`` (computed by numpy).

    ``f = 1 / (1 + e)``, ``d = f (1 - f)`` elementwise, the operations of
    :func:`dpfm.reference.activations.act_float` in the same order; also the number of
    entries with ``z > stable_from``, where ``act_float`` replaces ``d`` by the stable slope.
    """
    f = np.empty_like(e)
    d = np.empty_like(e)
    n_far = 0
    fe = f.reshape(-1)
    de = d.reshape(-1)
    ee = e.reshape(-1)
    ze = z.reshape(-1)
    for t in range(ee.shape[0]):
        v = 1.0 / (1.0 + ee[t])
        fe[t] = v
        de[t] = v * (1.0 - v)
        if ze[t] > stable_from:
            n_far += 1
    return f, d, n_far
