"""The float64 batch engine (dpfm.reference.MLP) against independent dense computations.

With ``k=None`` every gradient register must hold the exact derivative.  The oracles here
are written from scratch and share no code with the reference:

- ``backprop_jacobian``: reverse mode over the whole network (dense chain rule);
- ``complex_step_jacobian``: ``Im f(theta + i h e_p) / h`` with ``h = 1e-30``, exact to
  rounding (no subtractive cancellation), one forward pass per parameter.

Both use the public parameter numbering (layer by layer; W[j, i] row-major, then b[j]) and
their own derivative formulas (``e^-z / (1 + e^-z)^2``, ``1 / cosh^2 z``), not the
reference's ``s (1 - s)`` / ``1 - t^2`` (which it uses short of saturation).

Saturated sigmoid and tanh units (|z| up to 40) are checked against the scalar
:class:`DualContext` and against 40-digit ``decimal`` arithmetic; the fixed-point tables
against their definition, which the float path's stable slopes must not change.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from dpfm.reference import MLP

ACTS = ("linear", "relu", "sigmoid", "tanh")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-10


# ------------------------------------------------------------------ independent oracles

def _f(name, z):
    if name == "linear":
        return z
    if name == "relu":
        return np.where(z.real > 0, z, 0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    raise AssertionError(name)


def _df(name, z):
    if name == "linear":
        return np.ones_like(z)
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "sigmoid":
        ez = np.exp(-z)
        return ez / (1.0 + ez) ** 2
    if name == "tanh":
        return 1.0 / np.cosh(z) ** 2
    raise AssertionError(name)


def split_params(theta, sizes):
    """``[(W, b), ...]`` views of a flat parameter vector in the public numbering."""
    out, o = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        W = theta[o:o + n_out * n_in].reshape(n_out, n_in)
        o += n_out * n_in
        b = theta[o:o + n_out]
        o += n_out
        out.append((W, b))
    assert o == len(theta)
    return out


def dense_forward(theta, sizes, acts, X):
    """Plain forward pass (float or complex); returns the output and every layer's z and a."""
    a, zs, As = X, [], [X]
    for (W, b), name in zip(split_params(theta, sizes), acts):
        z = a @ W.T + b
        a = _f(name, z)
        zs.append(z)
        As.append(a)
    return a, zs, As


def backprop_jacobian(theta, sizes, acts, X):
    """Reverse mode: ``J[s, o, p] = d out[s, o] / d theta[p]`` for every sample and output."""
    layers = split_params(theta, sizes)
    out, zs, As = dense_forward(theta, sizes, acts, X)
    N, n_out = out.shape
    # M[s, o, j] = d out[s, o] / d z_l[s, j], starting at the last layer
    M = np.eye(n_out)[None, :, :] * _df(acts[-1], zs[-1])[:, None, :]
    blocks = []
    for l in reversed(range(len(layers))):
        W, _ = layers[l]
        dW = M[:, :, :, None] * As[l][:, None, None, :]          # (N, n_out, n_out_l, n_in_l)
        blocks.append(np.concatenate([dW.reshape(N, n_out, -1), M], axis=2))
        if l > 0:
            M = (M @ W) * _df(acts[l - 1], zs[l - 1])[:, None, :]
    return out, np.concatenate(blocks[::-1], axis=2)


def complex_step_jacobian(theta, sizes, acts, X, h=1e-30):
    P = len(theta)
    J = np.empty(dense_forward(theta, sizes, acts, X)[0].shape + (P,))
    for p in range(P):
        t = theta.astype(np.complex128)
        t[p] += 1j * h
        J[:, :, p] = dense_forward(t, sizes, acts, X.astype(np.complex128))[0].imag / h
    return J


def min_abs_preactivation(theta, sizes, acts, X):
    """Distance of the nearest relu pre-activation to its kink (inf when there is no relu)."""
    _, zs, _ = dense_forward(theta, sizes, acts, X)
    d = [np.abs(z).min() for z, name in zip(zs, acts) if name == "relu"]
    return min(d) if d else np.inf


# ------------------------------------------------------------------ strategies

@st.composite
def networks(draw, max_layers=4, max_width=7):
    """A random MLP (1-4 layers, widths 1-7, any activations), random biases, and inputs."""
    n_layers = draw(st.integers(1, max_layers))
    sizes = draw(st.lists(st.integers(1, max_width), min_size=n_layers + 1, max_size=n_layers + 1))
    acts = draw(st.lists(st.sampled_from(ACTS), min_size=n_layers, max_size=n_layers))
    seed = draw(st.integers(0, 2**32 - 1))
    N = draw(st.integers(1, 5))
    rng = np.random.default_rng(seed)
    net = MLP(sizes, acts, seed=seed % 1000)
    net.params[:] = rng.uniform(-1.0, 1.0, net.n_params)     # non-zero biases too
    X = rng.uniform(-2.0, 2.0, (N, sizes[0]))
    # relu: keep every pre-activation away from the kink, where no derivative exists
    assume(min_abs_preactivation(net.params, sizes, acts, X) > 1e-6)
    return net, X


def check_registers_well_formed(fwd):
    """Empty registers are exactly (-1, 0); a sample/output holds each index at most once."""
    idx, val = fwd.grad_idx, fwd.grad_val
    assert np.array_equal(idx < 0, val == 0)
    assert np.all(idx >= -1)
    N, n_out, _ = idx.shape
    for s in range(N):
        for o in range(n_out):
            held = idx[s, o][idx[s, o] >= 0]
            assert len(np.unique(held)) == len(held), f"duplicate index in registers {idx[s, o]}"


# ------------------------------------------------------------------ exactness (k = None)

def test_oracles_agree_on_a_hand_example():
    """The two oracles themselves, on a 1-1 sigmoid neuron: d/dw s(w x + b) = s' x, d/db = s'."""
    theta = np.array([0.3, -0.2])
    X = np.array([[1.5]])
    s = 1.0 / (1.0 + np.exp(-(0.3 * 1.5 - 0.2)))
    want = np.array([[[s * (1 - s) * 1.5, s * (1 - s)]]])
    for J in (backprop_jacobian(theta, [1, 1], ["sigmoid"], X)[1],
              complex_step_jacobian(theta, [1, 1], ["sigmoid"], X)):
        np.testing.assert_allclose(J, want, rtol=1e-14, atol=0)


@SETTINGS
@given(networks(), st.sampled_from(["exact", "stream"]))
def test_full_registers_equal_backprop_and_complex_step(case, policy):
    net, X = case
    fwd = net.forward(X, k=None, policy=policy)
    out, J_bp = backprop_jacobian(net.params, net.sizes, net.activations, X)
    J_cs = complex_step_jacobian(net.params, net.sizes, net.activations, X)
    np.testing.assert_allclose(J_bp, J_cs, rtol=TOL, atol=TOL)        # the oracles agree
    np.testing.assert_allclose(fwd.value, out, rtol=TOL, atol=TOL)
    J = fwd.dense_jacobian(net.n_params)
    np.testing.assert_allclose(J, J_bp, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(J, J_cs, rtol=TOL, atol=TOL)
    check_registers_well_formed(fwd)
    # nothing was pruned: every non-zero derivative has its register
    assert np.count_nonzero(fwd.grad_idx >= 0) == np.count_nonzero(J)


@pytest.mark.parametrize("acts", [("linear",) * 4, ("relu",) * 4, ("sigmoid",) * 4, ("tanh",) * 4,
                                  ("sigmoid", "tanh", "relu", "linear")])
def test_exact_on_fixed_shapes_each_activation(acts):
    """Every activation in every position of a 4-layer net, both policies (no hypothesis luck)."""
    sizes = [3, 7, 1, 6, 2]
    rng = np.random.default_rng(sum(map(len, acts)))
    net = MLP(sizes, list(acts), seed=1)
    net.params[:] = rng.uniform(-1.0, 1.0, net.n_params)
    X = rng.uniform(-2.0, 2.0, (8, 3))
    if "relu" in acts:
        assert min_abs_preactivation(net.params, sizes, list(acts), X) > 1e-6
    _, J_bp = backprop_jacobian(net.params, sizes, list(acts), X)
    for policy in ("exact", "stream"):
        for k in (None, "full"):
            J = net.forward(X, k=k, policy=policy).dense_jacobian(net.n_params)
            np.testing.assert_allclose(J, J_bp, rtol=TOL, atol=TOL)


def test_register_count_is_what_is_reachable():
    """R = min(k, parameters the output depends on); the first layer's registers are x and 1."""
    net = MLP([2, 3], ["linear"], seed=0)
    X = np.array([[0.5, -2.0]])
    fwd = net.forward(X, k=None)
    assert fwd.grad_idx.shape == (1, 3, 3)
    # output j depends on W[j, 0], W[j, 1], b[j]: registers sorted by |value| desc
    for j in range(3):
        assert fwd.grad_idx[0, j].tolist() == [2 * j + 1, 6 + j, 2 * j]
        assert fwd.grad_val[0, j].tolist() == [-2.0, 1.0, 0.5]


# ------------------------------------------------------------------ pruned registers (float)

def _dense_registers(idx, val, P):
    """(N, n, P) dense matrix from registers (empties skipped)."""
    N, n, _ = idx.shape
    G = np.zeros((N, n, P))
    s, j, r = np.nonzero(idx >= 0)
    np.add.at(G, (s, j, idx[s, j, r]), val[s, j, r])
    return G


@settings(max_examples=30, deadline=None)
@given(networks(), st.integers(1, 6))
def test_pruned_merge_keeps_the_k_largest_candidates(case, k):
    """Policy exact, any k: each layer's merged registers are the k largest (|value|, lower index
    winning ties) of the dense candidates  sum_i W[j,i] G(a_i)  +  (W[j,i], a_i)  +  (b[j], 1),
    built from the previous layer's *pruned* registers; the activation then scales them by f'(z).
    """
    net, X = case
    fwd = net.forward(X, k=k)
    P = net.n_params
    a_prev, G_prev = X, np.zeros(X.shape + (P,))
    for l, tr in enumerate(fwd.layers):
        W, off = net.W(l), net.offsets[l]
        n_out, n_in = W.shape
        C = np.einsum("ji,sip->sjp", W, G_prev)
        for j in range(n_out):
            C[:, j, off + j * n_in:off + (j + 1) * n_in] += a_prev
            C[:, j, off + n_out * n_in + j] += 1.0
        for s in range(len(X)):
            for j in range(n_out):
                held = tr.merged_idx[s, j] >= 0
                ki, kv = tr.merged_idx[s, j][held], tr.merged_val[s, j][held]
                assert len(np.unique(ki)) == len(ki)
                np.testing.assert_allclose(kv, C[s, j, ki], rtol=1e-12, atol=1e-12)
                nz = np.flatnonzero(C[s, j])
                assert len(ki) == min(k, len(nz), tr.merged_idx.shape[2])
                dropped = np.setdiff1d(nz, ki)
                if len(ki) and len(dropped):
                    assert np.abs(C[s, j, dropped]).max() <= np.abs(kv).min() * (1 + 1e-12) + 1e-15
        # activation: every register times f'(z), zero products emptied
        np.testing.assert_allclose(tr.grad_val, tr.merged_val * tr.d[..., None], rtol=1e-15, atol=0)
        assert np.array_equal(tr.grad_idx, np.where(tr.grad_val != 0, tr.merged_idx, -1))
        a_prev, G_prev = tr.a, _dense_registers(tr.grad_idx, tr.grad_val, P)
    np.testing.assert_array_equal(fwd.dense_jacobian(P), G_prev)


def test_k_one_keeps_the_single_largest():
    """k=1 on a 1-input linear neuron: candidates W-entry (x) and bias (1): the larger wins,
    the lower index (the weight) on a tie."""
    net = MLP.from_weights([(np.array([[2.0]]), np.array([0.5]))], ["linear"])
    for x, want in ((3.0, (0, 3.0)), (-0.25, (1, 1.0)), (1.0, (0, 1.0)), (-1.0, (0, -1.0))):
        f = net.forward(np.array([[x]]), k=1)
        assert (int(f.grad_idx[0, 0, 0]), float(f.grad_val[0, 0, 0])) == want


# ------------------------------------------------------------------ one training step

def _loss_gradient(net, X, y):
    out, J = backprop_jacobian(net.params, net.sizes, net.activations, X)
    e = out - y
    N, n_out = y.shape
    return (2.0 / (N * n_out)) * np.einsum("sop,so->p", J, e)


@settings(max_examples=30, deadline=None)
@given(networks(max_layers=3), st.floats(1e-3, 0.5), st.sampled_from(["exact", "stream"]))
def test_fit_one_sgd_step_is_minus_lr_times_backprop_gradient(case, lr, policy):
    net, X = case
    y = np.random.default_rng(len(X)).uniform(-1, 1, (len(X), net.sizes[-1]))
    grad = _loss_gradient(net, X, y)
    before = net.params.copy()
    hist = net.fit(X, y, k=None, epochs=1, batch=len(X), lr=lr, update="sgd", shuffle=False,
                   policy=policy)
    assert hist.steps == 1
    np.testing.assert_allclose(net.params, before - lr * grad, rtol=TOL, atol=TOL)
    # the StepTrace's delta is dL/dtheta itself
    st_ = net.step_raw(X, y, before, net.n_params, lr, "sgd", None, policy)
    np.testing.assert_allclose(st_.delta, grad, rtol=TOL, atol=TOL)


@settings(max_examples=30, deadline=None)
@given(networks(max_layers=3), st.floats(1e-3, 0.5))
def test_fit_one_maxnorm_step_moves_the_largest_delta_by_lr(case, lr):
    net, X = case
    y = np.random.default_rng(len(X) + 7).uniform(-1, 1, (len(X), net.sizes[-1]))
    grad = _loss_gradient(net, X, y)
    m = np.abs(grad).max()
    assume(m > 1e-6)
    top = int(np.argmax(np.abs(grad)))
    assume(np.sort(np.abs(grad))[-2:-1].max(initial=0.0) < m * (1 - 1e-6))   # a unique maximum
    before = net.params.copy()
    net.fit(X, y, k=None, epochs=1, batch=len(X), lr=lr, update="maxnorm", shuffle=False)
    move = net.params - before
    ulp = 1e-15 * max(1.0, abs(before[top])) + 1e-16
    assert move[top] == pytest.approx(-np.sign(grad[top]) * lr, rel=0, abs=ulp)
    assert np.all(np.abs(move) <= lr * (1 + 1e-12))
    np.testing.assert_allclose(move, -lr * grad / m, rtol=1e-9, atol=1e-12)


def test_maxnorm_does_not_move_when_the_delta_is_zero():
    """A perfect fit: delta = 0, so maxnorm leaves every parameter where it is."""
    net = MLP([2, 3, 1], ["tanh", "linear"], seed=3)
    X = np.random.default_rng(0).uniform(-1, 1, (6, 2))
    y = net.predict(X)
    before = net.params.copy()
    for update in ("maxnorm", "sgd"):
        net.fit(X, y, k=None, epochs=2, batch=3, lr=0.1, update=update)
        np.testing.assert_array_equal(net.params, before)


def test_without_numba_the_plain_python_loops_give_the_same_steps():
    """Where numba has no build (the PYNQ board) the kernels run as plain Python; a float and a
    fixed-point run must not change by a bit."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "if sys.argv[1] == 'plain':\n"
        "    sys.modules['numba'] = None\n"
        "from dpfm import runs\n"
        "import dpfm.reference.kernels as kern\n"
        "assert (kern.types is None) == (sys.argv[1] == 'plain')\n"
        "for backend in ('numpy', 'fixed'):\n"
        "    r = runs.run({'task': 'sum4', 'k': 4, 'epochs': 2, 'corpus': 40, 'backend': backend})\n"
        "    print(backend, r['weights_sha256'], r['history'][-1]['val_loss'])\n")
    out = {mode: subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                check=True).stdout for mode in ("plain", "numba")}
    assert out["plain"] == out["numba"] and out["plain"].count("\n") == 2


# ------------------------------------------------------------------ saturated units (issue 12, defect 7)

def _exact_act(name, z):
    """``(f(z), f'(z))`` to 40 digits, from ``e = exp(-|z|)`` (sigmoid) or ``exp(-2|z|)`` (tanh)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 40
        x = Decimal(float(z))              # the float64 z, exactly
        if name == "sigmoid":
            e = (-abs(x)).exp()
            f = 1 / (1 + e) if x >= 0 else e / (1 + e)
            d = e / (1 + e) ** 2
        else:
            e = (-2 * abs(x)).exp()
            f = (1 - e) / (1 + e) * (1 if x >= 0 else -1)
            d = 4 * e / (1 + e) ** 2
        return float(f), float(d)


# z from -40 to 40: the ends of the tables' range, the float path's switch points, the
# saturation points named in the issue (tanh 8.5 and 19, sigmoid 16.5 and 37) and a fine grid
# between. Not z = 0, where d/dw = f'(0) * 0 is an exact zero and its register rightly goes.
SATURATION_Z = np.unique(np.concatenate([
    np.linspace(-40.0, 40.0, 800), [-8.0, -2.0, 2.0, 4.0, 8.0, 8.5, 16.5, 19.0, 20.0, 36.9, 37.0, 40.0]]))


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_float_mlp_and_dual_agree_on_saturated_units(name):
    # One unit a = f(w x + b) with w = 1, b = 0, so z = x. The MLP's float path and the scalar
    # DualContext must give the same value and the same two registers (d/dw = f'(z) x,
    # d/db = f'(z)) for |z| up to 40, and both must be right to rounding.
    from dpfm.reference.scalar import DualContext

    z = SATURATION_Z
    net = MLP.from_weights([(np.array([[1.0]]), np.array([0.0]))], [name])
    fwd = net.forward(z[:, None], k=None)
    J = fwd.dense_jacobian(net.n_params)[:, 0, :]            # columns: W[0, 0], b[0]
    assert fwd.grad_idx.shape == (len(z), 1, 2)
    assert (fwd.grad_idx >= 0).all(), "a register vanished"
    exact = np.array([_exact_act(name, x) for x in z])
    dual_value, dual_regs = [], []
    for x in z:
        ctx = DualContext()
        w, b = ctx.param(1.0), ctx.param(0.0)
        a = getattr(w * ctx.val(x) + b, name)()
        dual_value.append(a.value)
        dual_regs.append([a.grad(w), a.grad(b)])
    dual_value, dual_regs = np.array(dual_value), np.array(dual_regs)

    rel = 1e-13
    np.testing.assert_allclose(fwd.value[:, 0], dual_value, rtol=rel, atol=0)
    np.testing.assert_allclose(J, dual_regs, rtol=rel, atol=0)
    np.testing.assert_allclose(fwd.value[:, 0], exact[:, 0], rtol=rel, atol=0)
    np.testing.assert_allclose(J[:, 1], exact[:, 1], rtol=rel, atol=0)
    np.testing.assert_allclose(J[:, 0], exact[:, 1] * z, rtol=rel, atol=0)


def test_float_tanh_at_20_keeps_its_registers():
    # The reproducer: tanh(20) rounds to 1.0, and 1 - t^2 gave 0, so no register.
    net = MLP.from_weights([(np.array([[1.0]]), np.array([0.0]))], ["tanh"])
    fwd = net.forward(np.array([[20.0]]), k=None)
    assert fwd.grad_idx.tolist() == [[[0, 1]]]
    d = 4.0 * np.exp(-40.0)                                  # 1/cosh^2(20) to 1e-17 relative
    np.testing.assert_allclose(fwd.grad_val[0, 0], [20.0 * d, d], rtol=1e-13)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_fixed_tables_keep_the_slope_of_the_rounded_value(name):
    # The activation unit's ROM is bit-exact with the hardware and must not move with the float
    # path: each entry holds f at the centre of its interval and f' = f (1 - f) or 1 - f^2 of
    # that rounded f, in the value and derivative formats.
    from dpfm.reference.activations import TABLE_ENTRIES, TABLE_Z_FRAC, act_table
    from dpfm.reference.fixed import DEFAULT_FORMATS, FixedFormat

    centre = (np.arange(TABLE_ENTRIES) - TABLE_ENTRIES // 2 + 0.5) / (1 << TABLE_Z_FRAC)
    f = 1.0 / (1.0 + np.exp(-centre)) if name == "sigmoid" else np.tanh(centre)
    d = f * (1.0 - f) if name == "sigmoid" else 1.0 - f * f
    for value_fmt, deriv_fmt in [(DEFAULT_FORMATS.value, DEFAULT_FORMATS.deriv),
                                 (FixedFormat(48, 40), FixedFormat(48, 46))]:
        f_q, d_q = act_table(name, value_fmt, deriv_fmt)
        assert np.array_equal(f_q, value_fmt.quantize(f)[0])
        assert np.array_equal(d_q, deriv_fmt.quantize(d)[0])
