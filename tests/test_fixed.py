"""Fixed point in the golden model: formats, rounding, saturation, the fixed-point update,
and fixed-point training against float64.

Oracles are exact rational arithmetic (``fractions.Fraction``) for the number operations, the
float64 engine for the wide-format forward pass, and a "same fractional bits, more integer
bits" twin for the never-silent-saturation property.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from dpfm.reference import (DEFAULT_FORMATS, MLP, FixedFormat, Formats, fixed_update, lr_quantize,
                            round_shift, sgd_scale)
from dpfm.reference.activations import act_fixed

SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def formats(draw, min_bits=2, max_bits=48):
    bits = draw(st.integers(min_bits, max_bits))
    return FixedFormat(bits, draw(st.integers(0, min(62, bits + 8))))


def nearest_ties_up(x: Fraction) -> int:
    """The integer nearest to x, ties toward +inf: floor(x + 1/2)."""
    return math.floor(x + Fraction(1, 2))


# ------------------------------------------------------------------ round_shift

@SETTINGS
@given(st.integers(-(1 << 70), 1 << 70), st.integers(-8, 80))
def test_round_shift_python_int_is_nearest_ties_up(x, s):
    want = nearest_ties_up(Fraction(x, 1 << s)) if s >= 0 else x * (1 << -s)
    assert round_shift(x, s) == want


@SETTINGS
@given(st.lists(st.integers(-(1 << 50), 1 << 50), min_size=1, max_size=20), st.integers(-8, 40))
def test_round_shift_int64_array_matches_python_ints(xs, s):
    got = round_shift(np.array(xs, dtype=np.int64), s)
    assert got.dtype == np.int64
    assert got.tolist() == [round_shift(x, s) for x in xs]


def test_round_shift_ties_go_toward_plus_infinity():
    assert [round_shift(x, 1) for x in (-3, -1, 1, 3)] == [-1, 0, 1, 2]       # -1.5 -0.5 0.5 1.5
    assert [round_shift(x, 2) for x in (-6, -2, 2, 6, 5, -5)] == [-1, 0, 1, 2, 1, -1]
    assert round_shift(7, 0) == 7 and round_shift(-3, -2) == -12


# ------------------------------------------------------------------ quantize / saturate

tie_floats = st.builds(lambda m, f: (m + 0.5) / 2.0 ** f, st.integers(-(1 << 20), 1 << 20),
                       st.integers(0, 30))
some_floats = st.one_of(st.floats(-1e7, 1e7, allow_nan=False), tie_floats,
                        st.floats(-1e280, 1e280), st.sampled_from([np.inf, -np.inf]))
# (beyond ~1e290, x * 2**frac overflows to inf with a RuntimeWarning; the result still clamps)


@SETTINGS
@given(formats(), st.lists(some_floats, min_size=1, max_size=12))
def test_quantize_rounds_to_nearest_ties_up_then_saturates_and_counts(fmt, xs):
    q, n = fmt.quantize(np.array(xs))
    assert q.dtype == np.int64
    want, clamps = [], 0
    for x in xs:
        if math.isinf(x):
            r = fmt.max_int + 1 if x > 0 else fmt.min_int - 1
        else:
            r = nearest_ties_up(Fraction(x) * (1 << fmt.frac))
        if not fmt.min_int <= r <= fmt.max_int:
            clamps += 1
            r = min(max(r, fmt.min_int), fmt.max_int)
        want.append(r)
    assert q.tolist() == want
    assert n == clamps


def test_quantize_examples():
    f = FixedFormat(8, 2)                       # -32 .. 31.75 in steps of 0.25
    q, n = f.quantize([0.125, -0.125, 0.375, -0.375, 31.75, 31.9, -32.0, -32.2, 100.0])
    assert q.tolist() == [1, 0, 2, -1, 127, 127, -128, -128, 127]
    assert n == 3
    assert f.to_float(q[:4]).tolist() == [0.25, 0.0, 0.5, -0.25]
    with pytest.raises(ValueError, match="NaN"):
        f.quantize([1.0, float("nan")])


@SETTINGS
@given(formats(), st.lists(st.integers(-(1 << 60), 1 << 60), max_size=12))
def test_saturate_clamps_and_counts(fmt, xs):
    got, n = fmt.saturate(np.array(xs, dtype=np.int64))
    assert got.tolist() == [min(max(x, fmt.min_int), fmt.max_int) for x in xs]
    assert n == sum(not fmt.min_int <= x <= fmt.max_int for x in xs)


def test_format_bounds_and_validation():
    f = FixedFormat(18, 14)
    assert (f.min_int, f.max_int, f.one, f.resolution) == (-(1 << 17), (1 << 17) - 1, 1 << 14, 2.0 ** -14)
    assert FixedFormat.parse("24.16") == FixedFormat(24, 16) and str(FixedFormat(24, 16)) == "24.16"
    for bad in ((1, 0), (49, 10), (18, 63), (18, -1)):
        with pytest.raises(ValueError):
            FixedFormat(*bad)
    with pytest.raises(TypeError):
        FixedFormat(True, 2)
    with pytest.raises(ValueError):
        FixedFormat.parse("18")


# ------------------------------------------------------------------ DSP48E1 fit

def test_default_formats_fit_one_dsp48e1_per_multiply():
    assert DEFAULT_FORMATS.dsp_misfits() == []
    for name, a, b in DEFAULT_FORMATS.products():
        assert min(a, b) <= 18 and max(a, b) <= 25, name
    # the values the docstring promises
    assert DEFAULT_FORMATS.to_dict() == {"value": "24.16", "weight": "18.12", "grad": "18.14",
                                         "deriv": "18.16"}


@pytest.mark.parametrize("fmt, n_bad", [
    (Formats.uniform(FixedFormat(28, 20)), 4),
    (Formats(value=FixedFormat(26, 16)), 2),            # 18 x 26: the 25-bit port overflows
    (Formats(weight=FixedFormat(19, 12)), 1),            # 19 x 24: neither side fits 18 bits
    (Formats(grad=FixedFormat(19, 14), deriv=FixedFormat(19, 16)), 2),   # 19 x 19, 24 x 19
])
def test_wide_formats_are_reported_as_dsp_misfits(fmt, n_bad):
    bad = fmt.dsp_misfits()
    assert len(bad) == n_bad
    assert all("DSP48E1" in line for line in bad)


# ------------------------------------------------------------------ wide format approaches float

WIDE = Formats.uniform(FixedFormat(28, 20))     # the widest uniform format the int64 model accepts


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.lists(st.integers(1, 5), min_size=4, max_size=4),
       st.sampled_from(["linear", "relu", "sigmoid", "tanh"]), st.integers(0, 2**32 - 1))
def test_wide_fixed_forward_approaches_float(n_layers, widths, act, seed):
    sizes = widths[:n_layers + 1]
    acts = [act] * n_layers
    rng = np.random.default_rng(seed)
    net = MLP(sizes, acts, seed=seed % 100)
    net.params[:] = rng.uniform(-1.0, 1.0, net.n_params)
    X = rng.uniform(-1.0, 1.0, (6, sizes[0]))
    ref = net.forward(X, k=None)
    # int64 headroom of the widest product (value x weight summed over the inputs)
    top = max(max(np.abs(t.a).max(), np.abs(t.z).max()) for t in ref.layers) + 1.0
    fan = max(sizes)
    assert top * 1.0 * fan * 2.0 ** (WIDE.value.frac + WIDE.weight.frac) < 2.0 ** 62
    if act == "relu":
        assume(min(np.abs(t.z).min() for t in ref.layers) > 1e-3)
    fx = net.forward(X, k=None, fmt=WIDE)
    assert sum(fx.saturations.values()) == 0
    # tabled activations are piecewise constant (step 2**-8 in z): their error is the table's
    tol = 1e-5 if act in ("linear", "relu") else 2e-2
    np.testing.assert_allclose(fx.value, ref.value, rtol=0, atol=tol)
    np.testing.assert_allclose(fx.dense_jacobian(net.n_params), ref.dense_jacobian(net.n_params),
                               rtol=0, atol=tol)


def test_wider_format_is_closer_to_float():
    """Linear net: the error shrinks with the fractional bits (default 24.16/18.12 -> 28.20)."""
    rng = np.random.default_rng(5)
    net = MLP([4, 5, 5, 1], ["linear"] * 3, seed=0)
    X = rng.uniform(0, 1, (50, 4))
    ref = net.forward(X, k=None)
    err = {}
    for name, fmt in (("default", DEFAULT_FORMATS), ("wide", WIDE)):
        f = net.forward(X, k=None, fmt=fmt)
        err[name] = np.abs(f.dense_jacobian(net.n_params) - ref.dense_jacobian(net.n_params)).max()
    assert err["wide"] < 1e-5 < err["default"] < 1e-2
    assert err["wide"] * 10 < err["default"]


# ------------------------------------------------------------------ sum4: fixed vs float

def sum4_split(n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, size=(n, 4))
    y = X.sum(axis=1, keepdims=True)
    t = 4 * n // 5
    return X[:t], y[:t], X[t:], y[t:]


def train_sum4(fmt, epochs):
    Xt, yt, Xv, yv = sum4_split()
    net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
    hist = net.fit(Xt, yt, k=16, epochs=epochs, batch=10, lr=0.01, update="maxnorm",
                   validation=(Xv, yv), fmt=fmt)
    return hist


def test_default_fixed_point_k16_sum4_within_10_percent_of_float():
    """Issue 2's must-show (data and init seed 0) at 60 epochs.

    By hand, 250 epochs: float 0.001697, fixed 0.001545 (-9.0 %); 60 epochs: float 0.003194,
    fixed 0.003269 (+2.3 %).  maxnorm steps never shrink, so the last epoch's loss swings by
    2-3x between epochs and fixed and float runs drift apart chaotically: other seeds give
    +55 % (1), -20 % (2), +0.8 % (3), -4 % (4) at 250 epochs, with fixed point better on
    average.  The 10 % band holds for seed 0; it is not a law."""
    epochs = 60
    h_float = train_sum4(None, epochs)
    h_fixed = train_sum4(DEFAULT_FORMATS, epochs)
    assert len(h_fixed.val_loss) == epochs
    rel = abs(h_fixed.final_val_loss - h_float.final_val_loss) / h_float.final_val_loss
    assert rel < 0.10, (h_float.final_val_loss, h_fixed.final_val_loss)
    assert h_fixed.final_val_loss < 0.5 * h_fixed.val_loss[0]              # it learns
    # the default formats never clamp on this task, and the report says so
    assert set(h_fixed.saturations) >= {"input", "weight", "value", "grad", "delta"}
    assert sum(h_fixed.saturations.values()) == 0


def test_default_fixed_point_sgd_tracks_float_on_sum4():
    """The fixed sgd path (sgd_scale, normalised delta) on sum4, k=16, lr 0.05, 20 epochs
    (by hand: float 0.32302, fixed 0.32273)."""
    Xt, yt, Xv, yv = sum4_split()
    out = []
    for fmt in (None, DEFAULT_FORMATS):
        net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
        h = net.fit(Xt, yt, k=16, epochs=20, batch=10, lr=0.05, update="sgd", validation=(Xv, yv),
                    fmt=fmt)
        out.append(h.final_val_loss)
    assert out[0] < 0.95 * h.val_loss[0]
    assert abs(out[1] - out[0]) / out[0] < 0.10, out


# ------------------------------------------------------------------ saturation is never silent

def one_neuron(w, b=0.0, act="linear"):
    return MLP.from_weights([(np.array([[w]]), np.array([b]))], [act])


def test_value_saturation_is_counted():
    fmt = Formats(value=FixedFormat(8, 4))                  # -8 .. 7.9375
    f = one_neuron(1.5).forward(np.array([[6.0], [2.0]]), k=None, fmt=fmt)
    assert f.value[:, 0].tolist() == [7.9375, 3.0]          # 9 clamps, 3 does not
    assert f.saturations["value"] == 1


def test_gradient_saturation_is_counted():
    fmt = Formats(grad=FixedFormat(8, 4))                   # registers -8 .. 7.9375
    f = one_neuron(0.5).forward(np.array([[10.0]]), k=None, fmt=fmt)
    assert f.grad_idx[0, 0].tolist() == [0, 1]
    assert f.grad_val[0, 0].tolist() == [7.9375, 1.0]       # dz/dW = x = 10 clamps
    assert f.saturations["grad"] >= 1


def test_input_and_weight_saturation_are_counted():
    fmt = Formats(value=FixedFormat(8, 4), weight=FixedFormat(8, 4))
    f = one_neuron(20.0).forward(np.array([[-9.0], [0.5]]), k=None, fmt=fmt)
    assert f.saturations["input"] == 1 and f.saturations["weight"] == 1


def test_history_reports_saturations_of_a_tiny_format():
    Xt, yt, Xv, yv = sum4_split(100)
    net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
    hist = net.fit(Xt, yt, k=4, epochs=2, batch=10, lr=0.01, validation=(Xv, yv),
                   fmt=Formats.uniform(FixedFormat(5, 3)))          # -2 .. 1.875; y reaches ~4
    n_big = int(np.count_nonzero(yt >= 1.9375))              # rounds above 15/8
    assert hist.saturations["input"] >= n_big > 0
    assert hist.saturations["value"] > 0                   # the errors y' - y clamp too
    assert all(v >= 0 for v in hist.saturations.values())


def test_delta_saturation_is_counted_with_a_wide_uniform_format():
    """The delta accumulator has 48 - value.frac - grad.frac integer bits: 28.24 values and
    gradients leave +-0.5, which a batch of sum4 errors exceeds; every clamp is counted."""
    fmt = Formats(value=FixedFormat(28, 24), grad=FixedFormat(28, 24))
    assert fmt.delta == FixedFormat(48, 48)
    Xt, yt, _, _ = sum4_split(100)
    net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
    hist = net.fit(Xt, yt, k=16, epochs=1, batch=10, lr=0.01, fmt=fmt)
    assert hist.saturations["delta"] > 0


def _narrow_formats():
    """Narrow formats that can hold 1.0 in every role (the bias register, f' of linear)."""
    def fmt(lo_bits):
        return st.integers(lo_bits, 12).flatmap(
            lambda b: st.integers(1, b - 2).map(lambda f: FixedFormat(b, f)))
    return st.builds(Formats, value=fmt(5), weight=fmt(5), grad=fmt(5), deriv=fmt(5))


def _widen(f: FixedFormat) -> FixedFormat:
    return FixedFormat(28, f.frac)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_narrow_formats(), st.integers(1, 3), st.lists(st.integers(1, 4), min_size=4, max_size=4),
       st.lists(st.sampled_from(["linear", "relu", "sigmoid", "tanh"]), min_size=3, max_size=3),
       st.integers(1, 6), st.integers(0, 2**32 - 1), st.sampled_from(["maxnorm", "sgd"]))
def test_no_reported_saturation_means_width_does_not_matter(narrow, n_layers, widths, acts, k,
                                                            seed, update):
    """If a step in narrow formats reports no saturation, it is bit-identical to the same step
    with the same fractional bits and many more integer bits: no clamp went unreported."""
    wide = Formats(*(_widen(getattr(narrow, r)) for r in ("value", "weight", "grad", "deriv")))
    sizes, acts = widths[:n_layers + 1], acts[:n_layers]
    rng = np.random.default_rng(seed)
    net = MLP(sizes, acts, seed=0)
    net.params[:] = rng.uniform(-1.5, 1.5, net.n_params)
    X = rng.uniform(-1.5, 1.5, (5, sizes[0]))
    y = rng.uniform(-1.0, 1.0, (5, sizes[-1]))
    lr = 0.05
    if update == "sgd" and 2 * lr / y.size >= 1:
        return
    runs = []
    for fmt in (narrow, wide):
        Xq, c1 = fmt.value.quantize(X)
        yq, c2 = fmt.value.quantize(y)
        Wq, c3 = fmt.weight.quantize(net.params)
        st_ = net.step_raw(Xq, yq, Wq, k, lr, update, fmt, "stream" if seed % 2 else "exact")
        runs.append((st_, c1 + c2 + c3 + sum(st_.saturations.values())))
    (a, n_narrow), (b, n_wide) = runs
    assert n_wide == 0
    assume(n_narrow == 0)
    np.testing.assert_array_equal(a.forward.value, b.forward.value)
    np.testing.assert_array_equal(a.forward.grad_idx, b.forward.grad_idx)
    np.testing.assert_array_equal(a.forward.grad_val, b.forward.grad_val)
    np.testing.assert_array_equal(a.delta, b.delta)
    np.testing.assert_array_equal(a.params, b.params)


# ------------------------------------------------------------------ the fixed-point update

deltas = st.lists(st.one_of(st.integers(-(1 << 47), (1 << 47) - 1), st.integers(-300, 300)),
                  min_size=1, max_size=12).filter(any)


@SETTINGS
@given(deltas, st.integers(1, 1 << 15))
def test_maxnorm_moves_the_largest_delta_by_exactly_lr(D, lr_q):
    fmt = DEFAULT_FORMATS
    lr = lr_q / (1 << fmt.weight.frac)
    assert lr_quantize(lr, fmt) == lr_q
    D = np.array(D, dtype=np.int64)
    upd = fixed_update(D, lr, "maxnorm", 10, fmt)
    m = np.abs(D).max()
    top = np.abs(D) == m
    assert np.array_equal(upd[top], np.sign(D[top]) * lr_q)
    assert np.all(np.abs(upd) <= lr_q)
    # the others: lr_q * D / max|D|, to a rounding step plus a relative 2**-14
    exact = lr_q * D.astype(np.float64) / m
    assert np.all(np.abs(upd - exact) <= 1.0 + lr_q * 2.0 ** -14)
    assert np.all(upd[D == 0] == 0)


def test_update_of_a_zero_delta_is_zero():
    for update in ("maxnorm", "sgd"):
        upd = fixed_update(np.zeros(5, dtype=np.int64), 0.01, update, 10, DEFAULT_FORMATS)
        assert upd.tolist() == [0] * 5


@SETTINGS
@given(deltas, st.floats(1e-4, 2.0), st.integers(1, 1000))
def test_sgd_update_is_two_lr_over_count_times_delta(D, lr, count):
    fmt = DEFAULT_FORMATS
    assume(2 * lr / count < 1)
    D = np.array(D, dtype=np.int64)
    c_q, cs = sgd_scale(lr, count)
    sh = int(np.abs(D).max()).bit_length() - 17
    upd = fixed_update(D, lr, "sgd", count, fmt)
    # D has delta.frac fractional bits; the update weight.frac
    exact = [Fraction(2 * lr / count) * Fraction(int(d), 1 << fmt.delta.frac) * (1 << fmt.weight.frac)
             for d in D]
    scale = max(abs(e) for e in exact)
    for u, e in zip(upd.tolist(), exact):
        assert abs(u - e) <= 1 + scale * Fraction(1, 1 << 14)


@SETTINGS
@given(st.floats(1e-12, 1.0, exclude_max=True), st.integers(1, 10**6))
def test_sgd_scale_is_a_17_bit_mantissa(c0, count):
    lr = c0 * count / 2
    c = 2 * lr / count
    assume(c < 1)
    c_q, cs = sgd_scale(lr, count)
    assert (1 << 16) <= c_q < (1 << 17)
    assert abs(c_q * 2.0 ** -cs - c) <= c * 2.0 ** -16


@pytest.mark.parametrize("lr, count", [(0.5, 1), (1.0, 2), (5.0, 10), (2.0, 3), (3.0, 4)])
def test_sgd_scale_refuses_two_lr_over_count_of_one_or_more(lr, count):
    with pytest.raises(ValueError, match="2\\*lr/count"):
        sgd_scale(lr, count)


def test_fixed_maxnorm_step_in_the_engine():
    """One fixed-point maxnorm step on sum4: the parameter with the largest |delta| moves by
    exactly lr_q = round(0.01 * 2**12) = 41 weight LSBs, against the sign of its delta."""
    fmt = DEFAULT_FORMATS
    Xt, yt, _, _ = sum4_split()
    net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
    Xq, _ = fmt.value.quantize(Xt[:10])
    yq, _ = fmt.value.quantize(yt[:10])
    Wq, _ = fmt.weight.quantize(net.params)
    st_ = net.step_raw(Xq, yq, Wq, 16, 0.01, "maxnorm", fmt, "exact")
    assert st_.saturations["weight"] == 0 and st_.saturations["delta"] == 0
    D = st_.delta
    top = np.abs(D) == np.abs(D).max()
    move = st_.params - Wq
    assert lr_quantize(0.01, fmt) == 41
    assert np.array_equal(move[top], -np.sign(D[top]) * 41)
    assert np.all(np.abs(move) <= 41)


# ------------------------------------------------------------------ formerly defects, now pinned

@pytest.mark.parametrize("bits, frac", [(48, 30), (40, 24), (30, 20)])
def test_formats_too_wide_for_int64_are_refused(bits, frac):
    """48.30 * 48.30 used to overflow int64 silently (3 * 3 came out -7); now refused."""
    with pytest.raises(ValueError, match="too wide"):
        Formats.uniform(FixedFormat(bits, frac))


def test_bias_register_clamp_is_counted():
    fmt = Formats(grad=FixedFormat(8, 7))                       # -1 .. 127/128: 1.0 clamps
    f = one_neuron(0.5).forward(np.array([[0.25]]), k=None, fmt=fmt)
    bias = f.grad_val[0, 0][f.grad_idx[0, 0] == 1][0]
    assert bias == 127 / 128 and f.saturations["grad"] > 0


def test_derivative_format_that_cannot_hold_one_is_refused():
    with pytest.raises(ValueError, match="cannot hold 1.0"):
        Formats(deriv=FixedFormat(8, 7))
    with pytest.raises(ValueError, match="cannot hold 1.0"):
        Formats.uniform(FixedFormat(17, 16))


def test_sgd_update_of_a_tiny_delta_does_not_crash():
    fmt = DEFAULT_FORMATS
    # shift = delta.frac + cs - weight.frac - sh = 30 + 30 - 12 + 16 = 64
    upd = fixed_update(np.array([1], dtype=np.int64), 1e-4, "sgd", 2, fmt)
    assert upd.tolist() == [0]


def test_maxnorm_negative_max_ratio_is_documented():
    """``D >> sh`` floors, so a negative maximum that is not a multiple of 2**sh gives ratio
    -(2**16 + 1) (documented in fixed_update): the move is lr_q + 1 for lr_q > 2**15."""
    fmt = DEFAULT_FORMATS
    lr = 12.0                                                   # lr_q = 49152 > 2**15
    D = np.array([-((1 << 17) + 1)], dtype=np.int64)
    assert fixed_update(-D, lr, "maxnorm", 1, fmt).tolist() == [49152]
    assert fixed_update(D, lr, "maxnorm", 1, fmt).tolist() == [-49153]
