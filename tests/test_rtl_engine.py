"""The engine's RTL in Amaranth's simulator, driven by the host Trainer, against the reference.

Fast (seconds, no Verilator) bit-exact checks of the datapath's rounding: the pre-activation
``z = round_shift(sum_i W[j,i] a_i + (b_j << value.frac), weight.frac)`` on directed inputs
whose dropped bits are exactly one half and one LSB either side, and the maxnorm update at
learning rates at and below one weight LSB.  Every expected value comes from
:meth:`dpfm.reference.MLP.step_raw` in the Config's fixed formats with the engine's
``stream`` policy; the engine is reached only through its AXI4-Lite register map.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth_engine import AmaranthTransport

from dpfm.config import Config
from dpfm.host import StepRefused, Trainer
from dpfm.host.transport import sign_extend
from dpfm.reference import MLP
from dpfm.rtl.regmap import register_map

#: One linear neuron of two inputs: its output is its pre-activation, read back from OUTPUTS.
#: Six sample lanes: one step carries every directed case of one weight set.
CFG = Config(net=(2, 1), activations=("linear",), k=2, batch=6)
OUTPUTS = register_map(CFG)["OUTPUTS"]

#: Raw weight sets ``(W[0,0], W[0,1], b[0])`` in the weight format.  ``W[0,0]`` is odd, so
#: its inverse modulo ``2**weight.frac`` places the dropped bits of ``z`` anywhere.
WEIGHTS = [(3, 4096, 0), (-1235, 777, -91), (40961, -12289, 2047)]


@pytest.fixture(scope="module")
def engine():
    with AmaranthTransport(CFG) as t:
        yield Trainer(CFG, t), t


def reference_step(Xq, yq, params, lr=1.0, update="maxnorm"):
    net = MLP(CFG.net, CFG.activations)
    return net.step_raw(np.asarray(Xq, np.int64), np.asarray(yq, np.int64),
                        np.asarray(params, np.int64), CFG.k, lr, update, CFG.formats, CFG.policy)


def dropped_bits(Xq, params):
    """``(accumulator, its low weight.frac bits)`` of each sample's pre-activation: what the
    rounding to the value format drops (the inputs' placement, not an expected result)."""
    fm = CFG.formats
    w0, w1, b = (int(p) for p in params)
    acc = [int(x0) * w0 + int(x1) * w1 + (b << fm.value.frac) for x0, x1 in Xq]
    return acc, [a & ((1 << fm.weight.frac) - 1) for a in acc]


def tie_samples(params):
    """Inputs whose pre-activation accumulator drops exactly one half LSB, one below and one
    above, each once with a positive and once with a negative accumulator."""
    fm = CFG.formats
    s = fm.weight.frac
    mod, half = 1 << s, 1 << (s - 1)
    one = 1 << fm.value.frac
    w0, w1, b = (int(p) for p in params)
    inv = pow(w0, -1, mod)
    rows = []
    for want in (half, half - 1, half + 1):
        for sign in (1, -1):
            for x1 in (one, -one, 3 * one + 77, -3 * one - 77, 0):
                rest = x1 * w1 + (b << fm.value.frac)
                r0 = ((want - rest) * inv) % mod
                # x0 + t * 2**s leaves the dropped bits unchanged; pick a t giving the sign
                fits = [r0 + t * mod for t in range(-3, 3)
                        if (sign * ((r0 + t * mod) * w0 + rest)) > 0]
                if fits:
                    rows.append((min(fits, key=abs), x1))
                    break
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("params", WEIGHTS, ids=lambda p: "w=" + ",".join(map(str, p)))
def test_pre_activation_ties_round_like_the_reference(engine, params):
    """The engine's pre-activation of every sample lane, read from OUTPUTS, equals the
    reference's ``z`` bit for bit when the dropped bits are exactly one half (a tie: rounds
    toward plus infinity, not down as truncation would), and one below and one above.

    Pins the rounding of ``z`` to the value format in both the RTL and the reference: a
    truncation in either makes the tie and tie+1 cases differ by one LSB.
    """
    trainer, t = engine
    fm = CFG.formats
    Xq = tie_samples(params)
    acc, low = dropped_bits(Xq, params)
    half = 1 << (fm.weight.frac - 1)
    assert sorted(low) == sorted([half - 1, half, half + 1] * 2)
    assert sum(a > 0 for a in acc) == sum(a < 0 for a in acc) == 3
    yq = np.zeros((len(Xq), 1), dtype=np.int64)
    trainer.load_weights_raw(params)
    r = trainer.step_raw(Xq, yq, update="none")
    out = np.array([sign_extend(t.read(OUTPUTS.row_addr(s, 0)), 32) for s in range(len(Xq))])
    ref = reference_step(Xq, yq, params)
    z = ref.forward.layers[0].z[:, 0]
    assert ref.saturations["value"] == 0
    assert out.tolist() == z.tolist(), f"engine z {out.tolist()} != reference {z.tolist()}"
    assert r.loss_raw == int(np.sum(ref.error.astype(object) ** 2))


@pytest.mark.parametrize("lr", [2.0 ** -12, 2.0 ** -13, 1.2e-4, 1e-5, 1e-300])
def test_maxnorm_at_and_below_one_weight_lsb(engine, lr):
    """A maxnorm step with ``lr`` at and below one weight LSB (2**-12): the engine starts
    (LR_Q is at least 1, never the refused 0 of error 3) and its weights after the step equal
    the reference's, in which the parameter with the largest |delta| moves by one LSB.
    """
    trainer, _ = engine
    rng = np.random.default_rng(7)
    fm = CFG.formats
    params = np.array([1500, -700, 300], dtype=np.int64)
    Xq, _ = fm.value.quantize(rng.uniform(-1, 1, (CFG.batch, CFG.n_in)))
    yq, _ = fm.value.quantize(rng.uniform(-1, 1, (CFG.batch, CFG.n_out)))
    trainer.load_weights_raw(params)
    try:
        trainer.step_raw(Xq, yq, lr, "maxnorm")
    except StepRefused as e:
        pytest.fail(f"lr={lr:g}: {e}")
    ref = reference_step(Xq, yq, params, lr)
    assert trainer.weights_raw().tolist() == ref.params.tolist()
    top = int(np.argmax(np.abs(ref.delta)))
    assert ref.params[top] - params[top] == -np.sign(ref.delta[top])
