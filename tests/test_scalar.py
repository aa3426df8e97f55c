"""Tests for the scalar DPFM teaching API (dpfm.reference.scalar)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpfm.reference.scalar import (
    POLY_TRUE,
    Dual,
    DualContext,
    merge_registers,
    poly_data,
    poly_loss,
    solve_poly_scalar,
)

FAST = settings(max_examples=60, deadline=None)


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def close(a, b, rel=1e-9, abs_=1e-12):
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def central_diff(f, x, h=None):
    h = 1e-6 * max(1.0, abs(x)) if h is None else h
    return (f(x + h) - f(x - h)) / (2.0 * h)


# ---------------------------------------------------------------- seed example

def test_seed_example():
    ctx = DualContext(k=None)
    a = ctx.val(2.0)
    b = ctx.param(1.0)
    c = a + b
    d = b + 1
    e = c * d
    assert e.value == 6
    assert e.grad(b) == 5
    assert e.grad(0) == 5
    assert e.registers == ((0, 5.0),)
    assert e.gradient() == {0: 5.0}
    assert a.registers == ()


# ---------------------------------------------------- unary functions

def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# name -> (float function, closed-form derivative, domain)
UNARY = {
    "sigmoid": (_sig, lambda x: math.exp(-x) / (1.0 + math.exp(-x)) ** 2, (-30, 30)),
    "tanh": (math.tanh, lambda x: 1.0 / math.cosh(x) ** 2, (-30, 30)),
    "exp": (math.exp, math.exp, (-20, 20)),
    "sin": (math.sin, math.cos, (-10, 10)),
    "cos": (math.cos, lambda x: -math.sin(x), (-10, 10)),
    "log": (math.log, lambda x: 1.0 / x, (1e-3, 1e3)),
    "sqrt": (math.sqrt, lambda x: 0.5 / math.sqrt(x), (1e-3, 1e3)),
    "relu": (lambda x: max(x, 0.0), lambda x: 1.0 if x > 0 else 0.0, (-10, 10)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@FAST
@given(u=st.floats(0.0, 1.0))
def test_unary_derivative(name, u):
    f, df, (lo, hi) = UNARY[name]
    x = lo + (hi - lo) * u
    if name == "relu" and abs(x) < 1e-3:
        x = 1e-3 if x >= 0 else -1e-3
    ctx = DualContext()
    p = ctx.param(x)
    y = getattr(p, name)()
    assert close(y.value, f(x), rel=1e-12, abs_=1e-300)
    g = y.grad(p)
    # closed form
    assert close(g, df(x), rel=1e-9, abs_=1e-300)
    # central finite differences
    assert close(g, central_diff(f, x), rel=1e-5, abs_=1e-7)
    # registers never hold an exact zero
    assert all(v != 0.0 for _, v in y.registers)


@FAST
@given(x=floats(-30, 30))
def test_sigmoid_tanh_derivative_at_input(x):
    ctx = DualContext()
    p = ctx.param(x)
    s = _sig(x)
    assert close(p.sigmoid().grad(p), s * (1.0 - s), rel=1e-6, abs_=1e-13)
    t = math.tanh(x)
    assert close(p.tanh().grad(p), 1.0 - t * t, rel=1e-6, abs_=1e-13)


def test_sigmoid_tanh_extreme_inputs():
    ctx = DualContext()
    for x in (-800.0, -50.0, 50.0, 800.0):
        p = ctx.param(x)
        s, t = p.sigmoid(), p.tanh()
        assert 0.0 <= s.value <= 1.0 and -1.0 <= t.value <= 1.0
        assert s.grad(p) >= 0.0 and t.grad(p) >= 0.0
    p = ctx.param(50.0)
    assert close(p.sigmoid().grad(p), math.exp(-50.0), rel=1e-12)


def test_relu_at_zero_and_abs():
    ctx = DualContext()
    p = ctx.param(0.0)
    r = p.relu()
    assert r.value == 0.0 and r.grad(p) == 0.0 and r.registers == ()
    q = ctx.param(-2.0)
    assert abs(q).value == 2.0 and abs(q).grad(q) == -1.0
    assert abs(p).registers == ()


def test_domain_errors():
    ctx = DualContext()
    with pytest.raises(ValueError):
        ctx.param(-1.0).log()
    with pytest.raises(ValueError):
        ctx.param(0.0).log()
    with pytest.raises(ValueError):
        ctx.param(-1.0).sqrt()
    with pytest.raises(ValueError):
        ctx.param(-2.0) ** ctx.param(2.0)
    with pytest.raises(ValueError):
        (-2.0) ** ctx.param(2.0)
    with pytest.raises(ValueError):
        ctx.param(-2.0) ** 0.5


# ------------------------------------------------- binary rules

@FAST
@given(u=floats(-5, 5), v=floats(0.1, 5), c=floats(-5, 5))
def test_quotient_rule(u, v, c):
    ctx = DualContext()
    a, b = ctx.param(u), ctx.param(v)
    q = a / b
    assert close(q.value, u / v)
    assert close(q.grad(a), 1.0 / v)
    assert close(q.grad(b), -u / v ** 2, abs_=1e-12)
    r = c / b
    assert close(r.value, c / v)
    assert close(r.grad(b), -c / v ** 2, abs_=1e-12)
    s = a / v
    assert close(s.grad(a), 1.0 / v)


@FAST
@given(u=floats(0.1, 4), w=floats(-3, 3), n=st.sampled_from([2, 3, -1, 0.5, 2.5]),
       c=floats(0.1, 4))
def test_power_rules(u, w, n, c):
    ctx = DualContext()
    a, b = ctx.param(u), ctx.param(w)
    p = a ** n
    assert close(p.value, u ** n)
    assert close(p.grad(a), n * u ** (n - 1))
    d = a ** b
    assert close(d.value, u ** w)
    assert close(d.grad(a), w * u ** (w - 1), abs_=1e-12)
    assert close(d.grad(b), u ** w * math.log(u), abs_=1e-12)
    e = c ** b
    assert close(e.value, c ** w)
    assert close(e.grad(b), c ** w * math.log(c), abs_=1e-12)
    # a Dual exponent without registers behaves like a number
    f = a ** ctx.val(n)
    assert close(f.grad(a), n * u ** (n - 1))
    assert (a ** 0).registers == ()


@FAST
@given(u=floats(-5, 5), v=floats(-5, 5), c=floats(-5, 5))
def test_sum_difference_product_with_numbers(u, v, c):
    ctx = DualContext()
    a, b = ctx.param(u), ctx.param(v)
    for y, ga, gb in [
        (a + b, 1.0, 1.0), (a - b, 1.0, -1.0), (a * b, v, u),
        (c + a, 1.0, 0.0), (a + c, 1.0, 0.0), (c - a, -1.0, 0.0),
        (a - c, 1.0, 0.0), (c * a, c, 0.0), (a * c, c, 0.0), (-a, -1.0, 0.0),
    ]:
        assert close(y.grad(a), ga) and close(y.grad(b), gb)
    assert close((c - a).value, c - u) and close((c * b).value, c * v)


# ------------------------------------------- chains with k=None are exact

@FAST
@given(x=floats(-2, 2), y=floats(0.5, 3), z=floats(-2, 2))
def test_chain_exact(x, y, z):
    ctx = DualContext(k=None)
    X, Y, Z = ctx.param(x), ctx.param(y), ctx.param(z)
    f = (X * Y + Z) ** 3 / Y
    s = x * y + z
    assert close(f.value, s ** 3 / y, abs_=1e-12)
    assert close(f.grad(X), 3 * s ** 2, abs_=1e-12)
    assert close(f.grad(Y), (3 * s ** 2 * x * y - s ** 3) / y ** 2, abs_=1e-12)
    assert close(f.grad(Z), 3 * s ** 2 / y, abs_=1e-12)


def _composite(ctx_or_none, x, y, z):
    """Same expression on floats (ctx_or_none None) or on Duals."""
    if ctx_or_none is None:
        return (_sig(x * y + z) * math.tanh(x - z) / (1.0 + y ** 2)
                + math.exp(math.sin(x)) - math.sqrt(y) * math.cos(z)
                + 2.0 ** x + math.log(y) * max(z, 0.0))
    return ((x * y + z).sigmoid() * (x - z).tanh() / (1.0 + y ** 2)
            + x.sin().exp() - y.sqrt() * z.cos() + 2.0 ** x + y.log() * z.relu())


@FAST
@given(x=floats(-2, 2), y=floats(0.5, 3), z=floats(-2, 2))
def test_chain_matches_finite_differences(x, y, z):
    ctx = DualContext(k=None)
    P = [ctx.param(x), ctx.param(y), ctx.param(z)]
    f = _composite(ctx, *P)
    vals = [x, y, z]
    assert close(f.value, _composite(None, *vals), rel=1e-12, abs_=1e-12)
    for i, p in enumerate(P):
        if i == 2 and abs(z) < 1e-3:
            continue  # relu kink
        def g(t, i=i):
            v = list(vals)
            v[i] = t
            return _composite(None, *v)
        assert close(f.grad(p), central_diff(g, vals[i]), rel=1e-5, abs_=1e-6)


@FAST
@given(x=floats(-2, 2), y=floats(0.5, 3), z=floats(-2, 2))
def test_k_at_least_params_equals_dense(x, y, z):
    outs = []
    for k in (None, 3, 10):
        ctx = DualContext(k=k)
        outs.append(_composite(ctx, ctx.param(x), ctx.param(y), ctx.param(z)))
    assert outs[0].registers == outs[1].registers == outs[2].registers
    assert outs[0].value == outs[1].value == outs[2].value


# ------------------------------------------------------------- pruning

def test_k1_keeps_largest():
    ctx = DualContext(k=1)
    x, y, z = ctx.param(1.0), ctx.param(1.0), ctx.param(1.0)
    f = 3 * x + 2 * y - 5 * z
    assert f.registers == ((2, -5.0),)
    assert f.value == 0.0
    assert f.grad(x) == 0.0 and f.grad(z) == -5.0


def test_ties_go_to_lower_index():
    ctx = DualContext(k=1)
    x, y = ctx.param(0.0), ctx.param(0.0)
    assert (x + y).registers == ((0, 1.0),)
    assert (y + x).registers == ((0, 1.0),)
    assert (2 * y - 2 * x).registers == ((0, -2.0),)
    ctx2 = DualContext(k=2)
    a, b, c = ctx2.param(1.0), ctx2.param(1.0), ctx2.param(1.0)
    assert (c - b + a).registers == ((0, 1.0), (1, -1.0))


def test_canonical_order():
    ctx = DualContext()
    a, b, c, d = (ctx.param(0.0) for _ in range(4))
    f = 1 * a - 3 * b + 3 * c + 0.5 * d
    assert f.registers == ((1, -3.0), (2, 3.0), (0, 1.0), (3, 0.5))


def test_zeros_dropped():
    for k in (None, 1, 4):
        ctx = DualContext(k=k)
        x, y = ctx.param(2.0), ctx.param(3.0)
        assert (x - x).registers == ()
        assert (x * 0).registers == ()
        assert (x * 0.0 + y).registers == ((1, 1.0),)
        assert ((x + y) - x).registers == (((1, 1.0),) if k != 1 else ())


def test_pruning_after_every_operation():
    # k=1: x + 0.9 y keeps only x; subtracting x leaves nothing, although
    # pruning only at the end would have kept (y, 0.9).
    ctx = DualContext(k=1)
    x, y = ctx.param(1.0), ctx.param(1.0)
    s = x + 0.9 * y
    assert s.registers == ((0, 1.0),)
    assert (s - x).registers == ()
    dense = DualContext(k=None)
    xd, yd = dense.param(1.0), dense.param(1.0)
    assert ((xd + 0.9 * yd) - xd).registers == ((1, 0.9),)


def test_product_rule_with_pruned_operands():
    ctx = DualContext(k=2)
    a, b, c = ctx.param(1.0), ctx.param(2.0), ctx.param(-1.0)
    u = 3 * a + 2 * b + c          # {a:3, b:2}, c pruned
    v = a - 4 * c                  # {c:-4, a:1}
    assert u.registers == ((0, 3.0), (1, 2.0))
    assert v.registers == ((2, -4.0), (0, 1.0))
    w = u * v
    expect = merge_registers([(u.value, v.registers), (v.value, u.registers)], 2)
    assert w.registers == expect
    # u.value = 6, v.value = 5: a: 6*1 + 5*3 = 21, c: 6*-4 = -24, b: 5*2 = 10
    assert w.registers == ((2, -24.0), (0, 21.0))
    assert w.value == 30.0


def test_k_larger_than_params_keeps_all():
    ctx = DualContext(k=10)
    x, y, z = ctx.param(1.0), ctx.param(2.0), ctx.param(3.0)
    f = x * y * z
    assert f.gradient() == {0: 6.0, 1: 3.0, 2: 2.0}


_regs = st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0])),
                 max_size=8, unique_by=lambda t: t[0])


@settings(max_examples=200, deadline=None)
@given(r1=_regs, r2=_regs, s1=st.sampled_from([0.0, 1.0, -2.0, 0.5]),
       s2=st.sampled_from([0.0, 1.0, -1.0, 3.0]), k=st.one_of(st.none(), st.integers(1, 8)))
def test_merge_registers_properties(r1, r2, s1, s2, k):
    out = merge_registers([(s1, r1), (s2, r2)], k)
    full = {}
    for s, regs in ((s1, r1), (s2, r2)):
        for i, p in regs:
            full[i] = full.get(i, 0.0) + s * p
    nonzero = {i: p for i, p in full.items() if p != 0.0}
    assert len(out) == (len(nonzero) if k is None else min(k, len(nonzero)))
    keys = [(-abs(p), i) for i, p in out]
    assert keys == sorted(keys)
    kept = dict(out)
    for i, p in out:
        assert p != 0.0 and p == nonzero[i]
    for i, p in nonzero.items():
        if i not in kept:  # anything dropped ranks after everything kept
            assert all((-abs(p), i) > key for key in keys)


# -------------------------------------------------------- API checks

@pytest.mark.parametrize("k", [0, -1, -100])
def test_bad_k_value(k):
    with pytest.raises(ValueError, match=f"k={k}"):
        DualContext(k=k)


@pytest.mark.parametrize("k", [1.5, 2.0, "3", True])
def test_bad_k_type(k):
    with pytest.raises(TypeError, match="k="):
        DualContext(k=k)


def test_params_and_accessors():
    ctx = DualContext(k=np.int64(2))
    assert ctx.k == 2
    p = ctx.param(1.5, name="w")
    q = ctx.param(2)
    c = ctx.val(7)
    assert ctx.params == [p, q]
    assert (p.index, q.index, c.index) == (0, 1, None)
    assert p.name == "w" and p.is_param and not c.is_param
    assert p.registers == ((0, 1.0),) and q.registers == ((1, 1.0),)
    assert isinstance(c.value, float) and float(c) == 7.0
    f = p * q
    assert f.grad(q) == 1.5 and f.grad(5) == 0.0
    p.value = 3.0
    assert p.value == 3.0
    with pytest.raises(AttributeError):
        f.value = 1.0
    with pytest.raises(TypeError):
        f.grad(c)
    with pytest.raises(ValueError):
        p + DualContext().param(1.0)
    with pytest.raises(TypeError):
        p + "a"
    with pytest.raises(TypeError):
        ctx.val("1")
    assert isinstance(p + np.float64(1.0), Dual)


def test_sgd_step():
    ctx = DualContext()
    w = ctx.param(3.0)
    loss = (w - 1.0) ** 2
    ctx.sgd_step(loss, 0.25)
    assert w.value == 2.0


# ------------------------------------------------- the seed's linear system

def test_poly_data():
    X, Y = poly_data(10, seed=3)
    assert X.shape == (10, 2) and Y.shape == (10, 4)
    a, b = X[:, 0], X[:, 1]
    np.testing.assert_allclose(Y, np.stack([a + b, a + 2 * b, 10 * a + 2 * b, 2 * a + 5 * b], 1))
    X2, _ = poly_data(10, seed=3)
    np.testing.assert_array_equal(X, X2)


def test_poly_loss_zero_at_truth():
    ctx = DualContext()
    W = [[ctx.param(v) for v in row] for row in POLY_TRUE]
    X, Y = poly_data(5, seed=1)
    loss = poly_loss(ctx, W, X, Y)
    assert abs(loss.value) < 1e-25
    assert all(abs(g) < 1e-12 for g in loss.gradient().values())


@pytest.mark.parametrize("k", [None, 4])
def test_poly_converges(k):
    W, losses = solve_poly_scalar(k=k, seed=0, history=True)
    assert W.shape == (4, 2)
    np.testing.assert_allclose(W, POLY_TRUE, atol=1e-3)
    assert losses[-1] < losses[0] * 1e-6
