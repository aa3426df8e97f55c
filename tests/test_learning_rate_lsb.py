"""Learning rates at and below one weight LSB, in the fixed-point reference and the host path.

:func:`dpfm.reference.lr_quantize` documents the maxnorm learning rate as weight-format
integers, *at least 1*: a positive rate never quantizes to 0, which the engine refuses
(error 3, "maxnorm learning rate is 0").  So a maxnorm step with ``lr`` at or below one LSB
(``2**-weight.frac``; 2.4e-4 in the default 18.12, half of it 1.2e-4) moves the parameter of
largest ``|delta|`` by exactly one LSB (``theta -= lr_q * delta / max|delta|`` with
``lr_q = 1``), and the host's Trainer over :class:`~dpfm.host.EmulatorTransport` trains with it
exactly as :meth:`dpfm.reference.MLP.fit` does.  The engine's RTL side of the same contract is
in tests/test_rtl_engine.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dpfm.config import Config
from dpfm.host import EmulatorTransport, Trainer
from dpfm.reference import MLP, FixedFormat, Formats, lr_quantize, weights_sha256

FORMATS = {"default": Formats(), "uniform-16.8": Formats.uniform(FixedFormat(16, 8))}

#: Learning rates as multiples of one weight LSB: one LSB, the rounding tie at one half, just
#: below it, far below it; and absolute ones far below any LSB (the smallest subnormal too).
LSB_MULTIPLES = [1.0, 0.5, 0.4999, 0.01]
ABSOLUTE = [1.2e-4, 1e-5, 1e-300, 5e-324]


def rates(fmt):
    lsb = fmt.weight.resolution
    return [m * lsb for m in LSB_MULTIPLES] + ABSOLUTE


@pytest.mark.parametrize("name", FORMATS)
def test_lr_quantize_is_one_lsb_at_and_below_one_lsb(name):
    """Every positive rate up to one LSB quantizes to exactly 1 (never 0); above, it rounds
    to the nearest integer of the weight format (1.5 LSB -> 2, 3 LSB -> 3)."""
    fmt = FORMATS[name]
    lsb = fmt.weight.resolution
    for lr in rates(fmt):
        assert lr_quantize(lr, fmt) == 1, f"{name}: lr={lr!r} quantized to {lr_quantize(lr, fmt)}"
    assert lr_quantize(1.5 * lsb, fmt) == 2
    assert lr_quantize(3 * lsb, fmt) == 3


def _step_case(fmt, seed=3):
    """A batch, its targets and weights (raw integers of ``fmt``) on the default net."""
    cfg = Config(k=4)
    rng = np.random.default_rng(seed)
    net = MLP(cfg.net, cfg.activations, seed=seed)
    Xq, _ = fmt.value.quantize(rng.uniform(0, 1, (cfg.batch, cfg.n_in)))
    yq, _ = fmt.value.quantize(rng.uniform(0, 4, (cfg.batch, cfg.n_out)))
    params, _ = fmt.weight.quantize(net.params)
    return cfg, net, Xq, yq, params


@pytest.mark.parametrize("name", FORMATS)
def test_maxnorm_step_below_one_lsb_moves_the_largest_delta_by_one_lsb(name):
    """A fixed-point maxnorm step at every rate up to one LSB is the step at one LSB: each
    parameter of largest ``|delta|`` moves by exactly one LSB against the sign of its delta,
    and no parameter moves by more.  A rate that quantized to 0 would move nothing."""
    fmt = FORMATS[name]
    cfg, net, Xq, yq, params = _step_case(fmt)
    at_lsb = net.step_raw(Xq, yq, params, cfg.k, fmt.weight.resolution, "maxnorm", fmt, "stream")
    for lr in rates(fmt):
        st = net.step_raw(Xq, yq, params, cfg.k, lr, "maxnorm", fmt, "stream")
        D = np.asarray(st.delta, dtype=np.int64)
        moved = np.asarray(st.params, dtype=np.int64) - params
        m = np.max(np.abs(D))
        assert m > 0 and st.saturations["weight"] == 0
        top = np.flatnonzero(np.abs(D) == m)
        assert moved[top].tolist() == (-np.sign(D[top])).tolist(), \
            f"{name}: lr={lr!r}: largest-delta parameters {top.tolist()} moved " \
            f"{moved[top].tolist()}"
        assert np.max(np.abs(moved)) == 1
        assert st.params.tolist() == at_lsb.params.tolist()


@pytest.fixture(scope="module")
def sum4():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 4))
    return X, X.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("lr", [2.0 ** -12, 1.2e-4, 1e-5, 1e-300])
def test_trainer_over_fixed_transport_accepts_lr_below_one_lsb(sum4, lr):
    """The host path (Trainer -> LR_Q -> EmulatorTransport) accepts a rate at and below one LSB,
    without the engine's error 3, and ends with the reference's weights and losses; those
    weights have moved from the initial ones."""
    X, y = sum4
    cfg = Config(k=4)
    ref = MLP(cfg.net, cfg.activations, seed=1)
    start = cfg.formats.weight.quantize(ref.params)[0]
    hist = ref.fit(X, y, k=cfg.k, epochs=2, batch=cfg.batch, lr=lr, update="maxnorm",
                   fmt=cfg.formats, policy=cfg.policy, seed=1)
    trainer = Trainer(cfg, EmulatorTransport(cfg))
    trainer.load_weights(MLP(cfg.net, cfg.activations, seed=1))
    got = trainer.fit(X, y, epochs=2, lr=lr, update="maxnorm", seed=1)
    assert got.train_loss == hist.train_loss
    assert weights_sha256(trainer.weights()) == weights_sha256(ref.params)
    assert not np.array_equal(trainer.weights_raw(), start)
