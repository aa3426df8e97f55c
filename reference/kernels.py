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

__all__ = ["rnd", "topk_insert", "merge_layer", "accumulate_delta"]

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
    key = np.empty(n_cand_max, dtype=g_val.dtype)
    hit = np.empty(max(n_in * K_in, 1), dtype=np.int64)
    for s in range(N):
        for j in range(n_out):
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
            hs = np.sort(hit[:nh])
            nc = 0
            for h in range(nh):
                p = hs[h]
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
            for t in range(nc):
                key[t] = -abs(cand_val[t])
            order = np.argsort(key[:nc], kind="mergesort")   # stable: ties keep index order
            for t in range(min(k, nc)):
                out_idx[s, j, t] = cand_idx[order[t]]
                out_val[s, j, t] = cand_val[order[t]]
    return out_idx, out_val, nsat


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
