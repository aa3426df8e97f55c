"""Gradient estimators of ``dpfm.reference`` checked against a dense computation.

The dense gradient of a small net is computed twice, by exact forward mode (``topk`` keeping
every register) and by central finite differences of the loss; each estimator is then held
to what it claims: exact, unbiased (the mean over many seeded draws converges, within a
statistical bound at a fixed seed), or an orthogonal projection.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from dpfm import cli
from dpfm.reference import MLP
from dpfm.reference.estimators import (ESTIMATORS, equal_cost_layer_k, multiplies, reachable,
                                       resolve_layer_k)
from dpfm.reference.kernels import inclusion_probabilities

SIZES = [3, 4, 3, 2]
ACTS = ["sigmoid", "tanh", "linear"]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(11)
    net = MLP(SIZES, ACTS, seed=5)
    net.params += rng.normal(0, 0.3, net.n_params)      # biases away from zero too
    X = rng.uniform(-1, 1, (6, SIZES[0]))
    y = rng.uniform(-1, 1, (6, SIZES[-1]))
    return net, X, y


def estimate(net, X, y, estimator="topk", k=None, rng=None, layer_k=None, policy="exact"):
    """One step's delta (the estimate of dL/dtheta) at the net's parameters."""
    k = net.n_params if k is None else k
    return net.step_raw(X, y, net.params, k, 1.0, "sgd", None, policy, estimator, rng,
                        layer_k).delta


def finite_difference_gradient(net, X, y, h=1e-6):
    g = np.zeros(net.n_params)
    base = net.params.copy()
    for p in range(net.n_params):
        for sign in (1, -1):
            net.params = base.copy()
            net.params[p] += sign * h
            g[p] += sign * net.loss(X, y) / (2 * h)
    net.params = base
    return g


@pytest.fixture(scope="module")
def dense(problem):
    net, X, y = problem
    return estimate(net, X, y, "topk", k=net.n_params)


def draws(problem, estimator, k, n, seed):
    net, X, y = problem
    rng = np.random.default_rng(seed)
    return np.array([estimate(net, X, y, estimator, k, rng) for _ in range(n)])


def assert_mean_converges(samples, target, sigmas=6.0):
    """|mean - target| within ``sigmas`` standard errors (sample std), coordinate by coordinate."""
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    bound = sigmas * stderr + 1e-12 * np.abs(target).max()
    assert np.all(np.abs(mean - target) <= bound), np.max(np.abs(mean - target) / bound)


def test_topk_with_every_register_is_the_dense_gradient(problem, dense):
    net, X, y = problem
    fd = finite_difference_gradient(net, X, y)
    np.testing.assert_allclose(dense, fd, rtol=1e-6, atol=1e-8)
    for policy in ("exact", "stream"):
        np.testing.assert_array_equal(estimate(net, X, y, "topk", net.n_params, policy=policy),
                                      dense)


def test_forward_gradient_mean_converges_to_the_gradient(problem, dense):
    samples = draws(problem, "forward-gradient", 4, 3000, seed=1)
    assert_mean_converges(samples, dense)
    # one draw is far from the gradient: the estimator is unbiased, not exact
    assert np.linalg.norm(samples[0] - dense) > 0.1 * np.linalg.norm(dense)


def test_forward_gradient_spread_shrinks_with_more_tangents(problem, dense):
    err = [np.mean(np.linalg.norm(draws(problem, "forward-gradient", k, 200, seed=2) - dense,
                                  axis=1)) for k in (1, 16)]
    assert err[1] < 0.5 * err[0]


@pytest.mark.parametrize("extra", [0, 7])
def test_multi_tangent_is_exact_when_k_reaches_the_parameters(problem, dense, extra):
    net, X, y = problem
    g = estimate(net, X, y, "multi-tangent", net.n_params + extra, np.random.default_rng(3))
    np.testing.assert_allclose(g, dense, rtol=1e-8, atol=1e-10 * np.abs(dense).max())


@pytest.mark.parametrize("k", [1, 3, 10])
def test_multi_tangent_is_an_orthogonal_projection(problem, dense, k):
    """Below n_params: g = P grad with P an orthogonal projection, so grad - g is orthogonal
    to g and |g| <= |grad|."""
    net, X, y = problem
    g = estimate(net, X, y, "multi-tangent", k, np.random.default_rng(4))
    assert abs(np.dot(dense - g, g)) <= 1e-9 * np.dot(dense, dense)
    assert np.linalg.norm(g) <= np.linalg.norm(dense) * (1 + 1e-12)


def test_randk_keeping_every_candidate_is_exact(problem, dense):
    net, X, y = problem
    g = estimate(net, X, y, "randk", net.n_params, np.random.default_rng(5))
    np.testing.assert_allclose(g, dense, rtol=1e-12, atol=0)


@pytest.mark.parametrize("k", [2, 5])
def test_randk_is_unbiased(problem, dense, k):
    samples = draws(problem, "randk", k, 3000, seed=6)
    assert_mean_converges(samples, dense)
    assert not np.allclose(samples[0], dense)          # it does prune at this k


def test_randk_registers_are_unbiased_per_entry(problem):
    """The output registers themselves (not only the delta): the mean of the sampled
    Jacobian converges to the dense Jacobian."""
    net, X, _ = problem
    J = net.forward(X, k="full").dense_jacobian(net.n_params)
    Js = np.array([net.forward(X, k=3, estimator="randk", seed=s).dense_jacobian(net.n_params)
                   for s in range(2000)])
    assert_mean_converges(Js, J)


@pytest.mark.parametrize("k", [1, 2, 5, 9, 40])
def test_topk_per_layer_with_the_global_k_equals_topk(problem, k):
    net, X, y = problem
    layer_k = [k] * net.n_layers
    for policy in ("exact", "stream"):
        np.testing.assert_array_equal(
            estimate(net, X, y, "topk-per-layer", k, layer_k=layer_k, policy=policy),
            estimate(net, X, y, "topk", k, policy=policy))
    a, b = (MLP(SIZES, ACTS, seed=1) for _ in range(2))
    a.fit(X, y, k=k, epochs=3, batch=2, estimator="topk-per-layer", layer_k=layer_k)
    b.fit(X, y, k=k, epochs=3, batch=2)
    assert a.sha256() == b.sha256()


def test_topk_per_layer_prunes_each_layer_to_its_own_k(problem):
    net, X, _ = problem
    fwd = net.forward(X, k=99, estimator="topk-per-layer", layer_k=[2, 3, 4])
    assert [t.grad_idx.shape[2] for t in fwd.layers] == [2, 3, 4]


def test_equal_cost_rule_stays_within_the_topk_budget():
    for sizes in ([4, 5, 5, 1], [64, 16, 10], [30, 8, 2]):
        reach = reachable(sizes)
        for k in (1, 4, 16, 64, 10_000):
            ks = equal_cost_layer_k(sizes, k)
            assert len(ks) == len(sizes) - 1 and all(1 <= a <= r for a, r in zip(ks, reach))
            per = multiplies(sizes, "topk-per-layer", k, 10)["total"]
            assert per <= multiplies(sizes, "topk", k, 10)["total"]
            assert ks[-1] >= min(k, reach[-1]) or ks[0] <= min(k, reach[0])
        assert equal_cost_layer_k(sizes, max(reach)) == reach      # nothing to prune
    assert resolve_layer_k([4, 5, 5, 1], 4, [1, 2, 3]) == [1, 2, 3]


def test_multiplies_count_the_lanes():
    # 4-5-5-1 at k = 4, per sample: values 4*5 + 5*5 + 5*1 = 50; weight x registers
    # 5*5*4 + 1*5*4 = 120; f'(z) x registers 5*4 + 5*4 + 1*4 = 44; error x output registers 4.
    assert multiplies([4, 5, 5, 1], "topk", 4, 1) == {"forward": 218, "combine": 0,
                                                       "total": 218}
    fg = multiplies([4, 5, 5, 1], "forward-gradient", 4, 10)
    # per sample: values 50; W x tangents (not the inputs') 4*(25+5); v_W x inputs 4*50;
    # f' x tangents 4*11; error x output tangents 4
    assert fg["forward"] == 10 * (50 + 120 + 200 + 44 + 4) and fg["combine"] == 4 * 61
    mt = multiplies([4, 5, 5, 1], "multi-tangent", 4, 10)
    assert mt["forward"] == fg["forward"] and mt["combine"] == 10 * 61 + 22 + 4 * 61
    assert multiplies([4, 5, 5, 1], "randk", 4, 1)["total"] == 218 + 44    # the rescaling


def test_inclusion_probabilities_sum_to_k():
    mag = np.array([10.0, 5.0, 1.0, 1.0, 0.5, 0.25])
    pi = np.empty(6)
    sure = inclusion_probabilities(mag, 3, pi)
    # 3/17.75 * 10 > 1: sure; then 2/7.75 * 5 > 1: sure; then 1/2.75 per unit of size
    assert sure == 2 and pi[0] == pi[1] == 1.0
    assert pi.sum() == pytest.approx(3.0) and np.all(pi <= 1.0)
    np.testing.assert_allclose(pi[2:], mag[2:] / 2.75)       # in proportion to size
    assert inclusion_probabilities(mag[:2], 3, pi) == 2


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_trains_deterministically(name):
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (40, 4))
    y = X.sum(axis=1, keepdims=True)
    out = []
    for _ in range(2):
        net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=0)
        before = net.loss(X, y)
        h = net.fit(X, y, k=8, epochs=30, batch=10, lr=0.05, estimator=name, seed=3)
        out.append(net.sha256())
        assert h.final_train_loss < before
    assert out[0] == out[1]


def test_fixed_point_refuses_other_estimators(problem):
    net, X, y = problem
    with pytest.raises(ValueError, match="float reference only"):
        net.fit(X, y, k=4, epochs=1, fmt=__import__("dpfm.reference").reference.Formats(),
                estimator="randk")
    with pytest.raises(ValueError, match="carries tangents"):
        net.forward(X, k=4, estimator="forward-gradient")


# -- command line -------------------------------------------------------------------------

BAD = {
    "name": (["train", "--estimator", "backprop"], "unknown estimator 'backprop'"),
    "fixed": (["train", "--backend", "fixed", "--estimator", "randk"], "float reference only"),
    "verilator": (["train", "--backend", "verilator", "--estimator", "multi-tangent"],
                  "float reference only"),
    "layer_k_other": (["train", "--layer-k", "2,3,4"], "applies to estimator 'topk-per-layer'"),
    "layer_k_count": (["train", "--estimator", "topk-per-layer", "--layer-k", "2,3"],
                      "gives 2 k's but the net has 3 layers"),
    "layer_k_syntax": (["train", "--estimator", "topk-per-layer", "--layer-k", "2,x,3"],
                       "whole numbers"),
    "layer_k_zero": (["train", "--estimator", "topk-per-layer", "--layer-k", "2,0,3"],
                     "positive whole numbers"),
    "policy": (["train", "--estimator", "forward-gradient", "--policy", "stream"], "sums exactly"),
    "sweep": (["sweep", "--k", "4,16", "--estimator", "rank"], "unknown estimator 'rank'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_estimator_options_are_one_line_exit_2(tmp_path, capsys, case):
    args, text = BAD[case]
    code = cli.main(args + ["--epochs", "1", "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("dpfm: error: ") and text in lines[0], lines[0]
    assert not (tmp_path / "r.json").exists()


def test_bad_estimator_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "dpfm.cli", "train", "--estimator", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0 and "unknown estimator 'nope'" in p.stderr


def test_train_records_the_estimator_and_its_multiplies(tmp_path, capsys):
    path = tmp_path / "r.json"
    assert cli.main(["train", "--estimator", "topk-per-layer", "--k", "4", "--epochs", "2",
                     "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["estimator"] == "topk-per-layer" and r["layer_k"] == equal_cost_layer_k([4, 5, 5, 1], 4)
    assert r["multiplies_per_step"] == multiplies([4, 5, 5, 1], "topk-per-layer", 4, 10)["total"]
    assert "multiplies/step" in capsys.readouterr().out
    assert cli.main(["train", "--k", "16", "--epochs", "2", "--json", str(path)]) == 0
    r = json.loads(path.read_text())
    assert r["estimator"] == "topk" and r["layer_k"] is None


# -- the exact merge's selection paths (insertion, heap, natural merge sort) ----------------

@pytest.mark.parametrize("k", [3, 24, 25, 40, 130, 400, 2000])
def test_exact_merge_of_long_lists_keeps_the_top_k_in_order(k):
    """Lists long enough for every selection path of ``merge_layer`` (policy exact), with
    ties in magnitude, against a plain sort of the candidates by (|v| desc, index asc)."""
    from dpfm.reference.kernels import EXACT, merge_layer

    rng = np.random.default_rng(k)
    N, n_in, n_out, K_in, off = 2, 12, 3, 40, 300
    a = rng.choice([0.0, 0.5, 1.0, -0.25], size=(N, n_in))
    g_idx = np.stack([np.stack([rng.choice(off, K_in, replace=False) for _ in range(n_in)])
                      for _ in range(N)]).astype(np.int64)
    g_val = rng.choice([-2.0, -1.0, 0.5, 1.0, 3.0], size=(N, n_in, K_in))   # many ties
    W = rng.choice([-1.0, 0.5, 2.0], size=(n_out, n_in))
    out_idx, out_val, _ = merge_layer(a, g_idx, g_val, W, off, k, EXACT, 0, 0, 1.0,
                                      -np.inf, np.inf)
    for s in range(N):
        for j in range(n_out):
            cand = {}
            for i in range(n_in):
                for r in range(K_in):
                    cand[g_idx[s, i, r]] = cand.get(g_idx[s, i, r], 0.0) + W[j, i] * g_val[s, i, r]
            for i in range(n_in):
                cand[off + j * n_in + i] = a[s, i]
            cand[off + n_out * n_in + j] = 1.0
            want = sorted(((p, v) for p, v in cand.items() if v != 0),
                          key=lambda e: (-abs(e[1]), e[0]))[:k]
            n = len(want)
            assert out_idx[s, j, :n].tolist() == [p for p, _ in want]
            assert out_val[s, j, :n].tolist() == [v for _, v in want]
            assert np.all(out_idx[s, j, n:] == -1)


@pytest.mark.parametrize("policy", [0, 1])
def test_fixed_point_layer_kernel_is_merge_then_scale(policy):
    """``merge_scale_fixed`` (one call per layer) equals ``merge_layer`` followed by
    ``ops.scale_registers``, saturations included, in formats narrow enough to clamp."""
    from dpfm.reference import FixedFormat
    from dpfm.reference.kernels import merge_layer, merge_scale_fixed
    from dpfm.reference.ops import scale_registers

    rng = np.random.default_rng(policy)
    g, dfmt = FixedFormat(8, 4), FixedFormat(10, 6)
    N, n_in, n_out, K_in, off = 3, 5, 4, 6, 40
    a = rng.integers(-200, 200, (N, n_in))
    g_idx = rng.integers(0, off, (N, n_in, K_in))
    g_val = rng.integers(g.min_int, g.max_int + 1, (N, n_in, K_in))
    W = rng.integers(-90, 90, (n_out, n_in))
    d = rng.integers(-dfmt.max_int, dfmt.max_int, (N, n_out))
    args = (a, g_idx, g_val, W, off, 5, policy, 4, 2, g.one, g.min_int, g.max_int)
    mi, mv, c1 = merge_layer(*args)
    gi, gv, c2 = scale_registers(mi, mv, d, dfmt, g)
    fi, fv, fgi, fgv, c = merge_scale_fixed(*args, d, dfmt.frac)
    for x, y in ((fi, mi), (fv, mv), (fgi, gi), (fgv, gv)):
        np.testing.assert_array_equal(x, y)
    assert c == c1 + c2 and c2 > 0
