"""The batch DPFM engine: an MLP trained with pruned forward-mode gradients.

See docs/dpfm.md for the semantics; they are implemented once and run either in float64
(``fmt=None``) or bit-exact fixed point (``fmt=Formats(...)`` or a ``FixedFormat``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from .activations import act_fixed, act_float, check_activation
from .estimators import (DEFAULT_ESTIMATOR, ESTIMATOR_STREAM, check_estimator, combine_tangents,
                         resolve_layer_k, tangent_forward)
from .fixed import FixedFormat, Formats, round_shift
from .kernels import (EXACT, STREAM, accumulate_delta, float_update, merge_sampled_float,
                      merge_scale_fixed, merge_scale_float)

__all__ = ["MLP", "Forward", "LayerTrace", "StepTrace", "History", "POLICIES", "UPDATES",
           "param_layout", "resolve_k", "as_formats", "weights_sha256", "SGD_CS_MIN", "SGD_CS_MAX"]

POLICIES = {"exact": EXACT, "stream": STREAM}
UPDATES = ("sgd", "maxnorm")

#: Normalised width of the delta vector before an update (see ``fixed_update``).
NORM_BITS = 17
#: Fractional bits of the reciprocal ``floor(2**RECIP_FRAC / m)`` of the maxnorm update.
RECIP_FRAC = 35
#: Fractional bits of the ratio ``delta / max|delta|`` (``|ratio| <= 1``).
RATIO_FRAC = 16
#: Smallest exponent ``cs`` :func:`sgd_scale` gives (``2*lr/count`` just below 1 rounds to
#: ``c_q = 2**16``, ``cs = NORM_BITS - 1``).
SGD_CS_MIN = NORM_BITS - 1
#: Largest exponent ``cs`` :func:`sgd_scale` gives: it refuses ``2*lr/count < 2**-111``
#: (the engine's SGD_CS register holds 7 bits).
SGD_CS_MAX = 127


def param_layout(sizes):
    """Offsets of each layer's parameters in the public numbering.

    Layer ``l`` (``n_in = sizes[l]``, ``n_out = sizes[l+1]``) starts at ``offsets[l]``;
    ``W[j, i]`` is ``offsets[l] + j*n_in + i`` and ``b[j]`` is ``offsets[l] + n_out*n_in + j``.
    Returns ``(offsets, total)``.
    """
    offsets, total = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        offsets.append(total)
        total += n_out * (n_in + 1)
    return offsets, total


def resolve_k(k, n_params):
    """``None`` or ``"full"`` -> every register (``n_params``); else an int >= 1."""
    if k is None or k == "full":
        return n_params
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be a positive integer, None or 'full', not {k!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    return int(k)


def as_formats(fmt):
    """``None`` (float64), a :class:`Formats`, or one :class:`FixedFormat` for all."""
    if fmt is None or isinstance(fmt, Formats):
        return fmt
    if isinstance(fmt, FixedFormat):
        return Formats.uniform(fmt)
    raise TypeError(f"fmt must be None, a Formats or a FixedFormat, not {fmt!r}")


def weights_sha256(params) -> str:
    """SHA-256 of the parameters in public order, as little-endian float64."""
    return hashlib.sha256(np.asarray(params, dtype="<f8").tobytes()).hexdigest()


@dataclass
class LayerTrace:
    """One layer of a forward pass: pre-activation ``z``, activation ``a``, derivative ``d``
    and registers (after the activation), in float or in integers of the fixed formats."""
    z: np.ndarray
    a: np.ndarray
    d: np.ndarray
    merged_idx: np.ndarray      # registers after the merge, before the activation
    merged_val: np.ndarray
    grad_idx: np.ndarray
    grad_val: np.ndarray


@dataclass
class Forward:
    """Result of :meth:`MLP.forward`.

    ``value`` (N, n_out) and ``grad_val`` (N, n_out, R) are float64 (dequantized in fixed
    point); ``grad_idx`` (N, n_out, R) int64, -1 in empty registers (whose value is 0).
    ``R = min(k, parameters reachable)``.  ``layers`` holds every layer's raw trace (integers
    in fixed point) and ``saturations`` the clamp events by kind.  The tangent estimators
    (``forward-gradient``, ``multi-tangent``) carry no registers (``R = 0``) but
    ``tangents`` (N, n_out, k), the outputs' derivatives along each tangent.
    """
    value: np.ndarray
    grad_idx: np.ndarray
    grad_val: np.ndarray
    layers: list
    saturations: dict
    fixed: bool
    tangents: np.ndarray | None = None   # (N, n_out, k) J V of the tangent estimators

    def dense_jacobian(self, n_params):
        """(N, n_out, n_params) dense d value / d theta from the registers."""
        N, n_out, R = self.grad_idx.shape
        J = np.zeros((N, n_out, n_params))
        s, o, r = np.nonzero(self.grad_idx >= 0)
        np.add.at(J, (s, o, self.grad_idx[s, o, r]), self.grad_val[s, o, r])
        return J


@dataclass
class StepTrace:
    """One training step: the forward pass, the delta, the update, the loss (all raw)."""
    forward: Forward
    error: np.ndarray           # y' - y (raw)
    delta: np.ndarray           # dense accumulated D (raw; float: dL/dtheta)
    update: np.ndarray          # amount subtracted from every parameter (raw)
    params: np.ndarray          # parameters after the step (raw)
    loss: float
    saturations: dict


@dataclass
class History:
    """What :meth:`MLP.fit` returns: per-epoch losses and the run's totals."""
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_accuracy: list = field(default_factory=list)
    steps: int = 0
    saturations: dict = field(default_factory=dict)

    @property
    def final_train_loss(self):
        return self.train_loss[-1] if self.train_loss else None

    @property
    def final_val_loss(self):
        return self.val_loss[-1] if self.val_loss else None


def _add_sats(total, more):
    for key, v in more.items():
        total[key] = total.get(key, 0) + int(v)
    return total


class MLP:
    """A multilayer perceptron trained with dynamic pruning in forward mode.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, inputs first, e.g. ``[4, 5, 5, 1]``.
    activations : sequence of str
        One per layer (``len(sizes) - 1``): ``linear``, ``relu``, ``sigmoid``, ``tanh``.
    seed : int
        Keras-like initialisation: Glorot-uniform weights, zero biases, from
        ``numpy.random.default_rng(seed)``.

    Attributes
    ----------
    params : ndarray (n_params,)
        Every parameter in the public order (layer by layer; W[j, i] row-major, then b[j]).
    """

    def __init__(self, sizes, activations, seed=0):
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must list at least two positive widths, not {sizes}")
        activations = list(activations)
        if len(activations) != len(sizes) - 1:
            raise ValueError(f"{len(sizes) - 1} layers need {len(sizes) - 1} activations, "
                             f"got {len(activations)}: {activations}")
        for a in activations:
            check_activation(a)
        self.sizes = sizes
        self.activations = activations
        self.offsets, self.n_params = param_layout(sizes)
        rng = np.random.default_rng(seed)
        self.params = np.zeros(self.n_params)
        for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            lim = math.sqrt(6.0 / (n_in + n_out))
            self.W(l)[...] = rng.uniform(-lim, lim, size=(n_out, n_in))

    @classmethod
    def from_weights(cls, layers, activations):
        """Build from ``[(W, b), ...]`` with ``W`` of shape (n_out, n_in)."""
        layers = [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in layers]
        sizes = [layers[0][0].shape[1]]
        for l, (W, b) in enumerate(layers):
            if W.ndim != 2 or W.shape[1] != sizes[-1] or b.shape != (W.shape[0],):
                raise ValueError(f"layer {l}: W {W.shape} and b {b.shape} do not chain from width {sizes[-1]}")
            sizes.append(W.shape[0])
        net = cls(sizes, activations)
        for l, (W, b) in enumerate(layers):
            net.W(l)[...] = W
            net.b(l)[...] = b
        return net

    # -- parameter views --------------------------------------------------------------
    def _views(self, params, l):
        n_in, n_out = self.sizes[l], self.sizes[l + 1]
        o = self.offsets[l]
        return (params[o:o + n_out * n_in].reshape(n_out, n_in),
                params[o + n_out * n_in:o + n_out * (n_in + 1)])

    def W(self, l):
        return self._views(self.params, l)[0]

    def b(self, l):
        return self._views(self.params, l)[1]

    @property
    def layers(self):
        return [(self.W(l).copy(), self.b(l).copy()) for l in range(len(self.sizes) - 1)]

    @property
    def n_layers(self):
        return len(self.sizes) - 1

    def quantized_params(self, fmt):
        """Parameters as integers of the weight format: ``(q, saturations)``."""
        return as_formats(fmt).weight.quantize(self.params)

    # -- forward ----------------------------------------------------------------------
    def _check_X(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (N, {self.sizes[0]}), not {X.shape}")
        return X

    def _forward_raw(self, Xr, params, k, fmt, policy, grads=True, layer_k=None, uniforms=None):
        """Forward on raw numbers (float64, or int64 in ``fmt``). Returns list of LayerTrace.

        ``layer_k`` (one int per layer) replaces ``k`` layer by layer; ``uniforms`` (one
        (N, n_out) array of uniforms in [0, 1) per layer, float only) samples the registers
        (estimator ``randk``, :func:`~dpfm.reference.kernels.merge_sampled_float`) instead of
        keeping the top k.
        """
        pol = POLICIES[policy] if isinstance(policy, str) else policy
        N = Xr.shape[0]
        a = Xr
        gi = np.zeros((N, self.sizes[0], 0), dtype=np.int64)
        gv = np.zeros((N, self.sizes[0], 0), dtype=Xr.dtype)
        traces, sats = [], {"value": 0, "grad": 0}
        for l in range(self.n_layers):
            W, b = self._views(params, l)
            name = self.activations[l]
            if fmt is None:
                z = a @ W.T + b
                a_new, d = act_float(name, z)
            else:
                zacc = a @ W.T + (b << fmt.value.frac)
                z, c = fmt.value.saturate(round_shift(zacc, fmt.weight.frac))
                sats["value"] += c
                a_new, d = act_fixed(name, z, fmt.value, fmt.deriv)
            mi = mv = gi_new = gv_new = None
            if grads:
                R = min(k if layer_k is None else layer_k[l], self.offsets[l] + self.sizes[l] + 1)
                if fmt is None and uniforms is not None:
                    mi, mv, gi_new, gv_new = merge_sampled_float(a, gi, gv, W, self.offsets[l], R,
                                                                 uniforms[l], d)
                elif fmt is None:
                    mi, mv, gi_new, gv_new = merge_scale_float(a, gi, gv, W, self.offsets[l], R,
                                                               pol, d)
                else:
                    g = fmt.grad
                    mi, mv, gi_new, gv_new, c = merge_scale_fixed(
                        a, gi, gv, W, self.offsets[l], R, pol, fmt.weight.frac,
                        fmt.value.frac - g.frac, g.one, g.min_int, g.max_int, d, fmt.deriv.frac)
                    sats["grad"] += int(c)
                gv, gi = gv_new, gi_new
            traces.append(LayerTrace(z, a_new, d, mi, mv, gi_new, gv_new))
            a = a_new
        return traces, sats

    def forward(self, X, k=16, fmt=None, policy="exact", estimator=DEFAULT_ESTIMATOR,
                layer_k=None, seed=0):
        """Forward pass with gradient registers.

        Parameters
        ----------
        X : (N, n_in) array.
        k : int, None or "full".  Registers kept per activation.
        fmt : None (float64) or Formats / FixedFormat (bit-exact fixed point).
        policy : "exact" (default) or "stream" (the hardware's insertion order).
        estimator : str
            A register estimator of :data:`~dpfm.reference.estimators.ESTIMATORS`:
            ``topk`` (default), ``topk-per-layer`` (with ``layer_k``) or ``randk`` (float;
            its draws from ``numpy.random.default_rng([seed, ESTIMATOR_STREAM])``).
        layer_k : list of int, optional
            ``topk-per-layer``'s k per layer (default: the equal-cost rule).
        seed : int
            Seeds ``randk``'s draws.
        """
        X = self._check_X(X)
        k = resolve_k(k, self.n_params)
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        fmt = as_formats(fmt)
        est = check_estimator(estimator, layer_k, self.n_layers, fixed=fmt is not None)
        if est.lanes != "registers":
            raise ValueError(f"estimator {estimator!r} carries tangents, not registers: "
                             f"see dpfm.reference.estimators.tangent_forward")
        if fmt is None:
            lk, uniforms = self._estimator_draws(estimator, k, layer_k, len(X),
                                                 np.random.default_rng([seed, ESTIMATOR_STREAM]))
            traces, sats = self._forward_raw(X, self.params, k, None, policy, layer_k=lk,
                                             uniforms=uniforms)
            last = traces[-1]
            return Forward(last.a, last.grad_idx, last.grad_val, traces, sats, False)
        Xq, c_in = fmt.value.quantize(X)
        Wq, c_w = fmt.weight.quantize(self.params)
        traces, sats = self._forward_raw(Xq, Wq, k, fmt, policy)
        sats.update(input=c_in, weight=c_w)
        last = traces[-1]
        return Forward(fmt.value.to_float(last.a), last.grad_idx, fmt.grad.to_float(last.grad_val),
                       traces, sats, True)

    def _estimator_draws(self, estimator, k, layer_k, N, rng):
        """``(layer_k, uniforms)`` for :meth:`_forward_raw` of a register estimator."""
        if estimator == "topk-per-layer":
            return resolve_layer_k(self.sizes, k, layer_k), None
        if estimator == "randk":
            return None, [rng.random((N, n)) for n in self.sizes[1:]]
        return None, None

    def predict(self, X, fmt=None):
        """Values only (no registers), float64 (dequantized in fixed point)."""
        X = self._check_X(X)
        fmt = as_formats(fmt)
        if fmt is None:
            return self._forward_raw(X, self.params, 1, None, EXACT, grads=False)[0][-1].a
        Xq, _ = fmt.value.quantize(X)
        Wq, _ = fmt.weight.quantize(self.params)
        return fmt.value.to_float(self._forward_raw(Xq, Wq, 1, fmt, EXACT, grads=False)[0][-1].a)

    def loss(self, X, y, fmt=None):
        """MSE (mean over samples and outputs); in fixed point from the saturated integer error."""
        y = self._check_y(y, len(X))
        fmt = as_formats(fmt)
        if fmt is None:
            return float(np.mean((self.predict(X) - y) ** 2))
        X = self._check_X(X)
        Xq, _ = fmt.value.quantize(X)
        yq, _ = fmt.value.quantize(y)
        Wq, _ = fmt.weight.quantize(self.params)
        a = self._forward_raw(Xq, Wq, 1, fmt, EXACT, grads=False)[0][-1].a
        e, _ = fmt.value.saturate(a - yq)
        return float(np.mean(fmt.value.to_float(e) ** 2))

    def _check_y(self, y, n):
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1 and self.sizes[-1] == 1:
            y = y[:, None]
        if y.shape != (n, self.sizes[-1]):
            raise ValueError(f"y must have shape ({n}, {self.sizes[-1]}), not {y.shape}")
        return y

    # -- training ---------------------------------------------------------------------
    def step_raw(self, Xr, yr, params, k, lr, update, fmt, policy, estimator=DEFAULT_ESTIMATOR,
                 rng=None, layer_k=None, *, sgd_q=None):
        """One training step on raw numbers; returns a :class:`StepTrace` (params not mutated).

        Float: ``delta = dL/dtheta`` with L = MSE (or the ``estimator``'s estimate of it, see
        :mod:`dpfm.reference.estimators`; ``rng`` a ``numpy.random.Generator`` for the
        random ones, ``layer_k`` for ``topk-per-layer``); ``sgd``: ``theta -= lr * delta``;
        ``maxnorm``: ``theta -= lr * delta / max|delta|`` (no update when the max is 0).
        Fixed: see :func:`fixed_update` (``topk`` only; ``sgd_q``: the sgd scale ``(c_q, cs)``
        to use instead of ``sgd_scale(lr, count)``, as the engine's SGD_CQ and SGD_CS registers
        hold it).
        """
        if estimator != DEFAULT_ESTIMATOR:
            est = check_estimator(estimator, layer_k, self.n_layers, fixed=fmt is not None)
            if est.random and rng is None:
                raise ValueError(f"estimator {estimator!r} draws random numbers: pass rng")
            if est.lanes == "tangents":
                return self._tangent_step(Xr, yr, params, k, lr, update, estimator, rng)
            layer_k, uniforms = self._estimator_draws(estimator, k, layer_k, len(Xr), rng)
            traces, sats = self._forward_raw(Xr, params, k, fmt, policy, layer_k=layer_k,
                                             uniforms=uniforms)
        else:
            traces, sats = self._forward_raw(Xr, params, k, fmt, policy)
        last = traces[-1]
        N, n_out = yr.shape
        if fmt is None:
            err = last.a - yr
            D, upd = float_update(last.grad_idx, last.grad_val, err, self.n_params,
                                  2.0 / (N * n_out), float(lr), update == "maxnorm")
            new = params - upd
            loss = float(np.mean(err ** 2))
        else:
            err, c = fmt.value.saturate(last.a - yr)
            sats["value"] += c
            D, c = fmt.delta.saturate(accumulate_delta(last.grad_idx, last.grad_val, err, self.n_params))
            sats["delta"] = c
            upd = fixed_update(D, lr, update, N * n_out, fmt, sgd_q=sgd_q)
            new, c = fmt.weight.saturate(params - upd)
            sats["weight"] = c
            loss = float(np.mean(fmt.value.to_float(err) ** 2))
        fwd = Forward(last.a, last.grad_idx, last.grad_val, traces, dict(sats), fmt is not None)
        return StepTrace(fwd, err, D, upd, new, loss, sats)

    def _tangent_step(self, Xr, yr, params, k, lr, update, estimator, rng):
        """A float step of a tangent estimator: ``k`` tangents ``V ~ N(0, I)`` (P, k) drawn
        from ``rng``, ``c = V^T dL/dtheta`` from the forward pass, the delta from
        :func:`~dpfm.reference.estimators.combine_tangents`, then the update rule."""
        V = rng.standard_normal((self.n_params, k))
        value, tangents, layers = tangent_forward(self, Xr, params, V)
        N, n_out = yr.shape
        err = value - yr
        c = np.einsum("so,sot->t", err, tangents) * (2.0 / (N * n_out))
        D = combine_tangents(estimator, V, c)
        if update == "sgd":
            upd = lr * D
        else:
            m = np.max(np.abs(D))
            upd = lr * D / m if m > 0 else np.zeros_like(D)
        traces = [LayerTrace(z, a, d, None, None, None, None) for z, a, d in layers]
        empty_idx = np.full((N, n_out, 0), -1, dtype=np.int64)
        sats = {"value": 0, "grad": 0}
        fwd = Forward(value, empty_idx, np.zeros((N, n_out, 0)), traces, dict(sats), False,
                      tangents)
        return StepTrace(fwd, err, D, upd, params - upd, float(np.mean(err ** 2)), sats)

    def fit(self, X, y, k=16, epochs=250, batch=10, lr=0.01, update="maxnorm", validation=None,
            fmt=None, policy="exact", seed=0, shuffle=True, progress=None, classify=False,
            estimator=DEFAULT_ESTIMATOR, layer_k=None):
        """Train in place with mini-batch steps; returns a :class:`History`.

        Batches are drawn from a fresh permutation each epoch
        (``numpy.random.default_rng(seed)``); the last batch may be smaller.  After each epoch
        the loss over the whole training set (and ``validation=(Xv, yv)``) is recorded.
        ``progress(epoch, history)`` is called after every epoch.  In fixed point the
        parameters stay integers of the weight format during the run and are stored back as
        their exact float values.  ``estimator`` (float only apart from ``topk``) and its
        ``layer_k``: see :mod:`dpfm.reference.estimators`; the random ones draw from
        ``numpy.random.default_rng([seed, ESTIMATOR_STREAM])``, so the batch order is the
        same for every estimator.
        """
        X = self._check_X(X)
        y = self._check_y(y, len(X))
        k = resolve_k(k, self.n_params)
        if update not in UPDATES:
            raise ValueError(f"unknown update {update!r}; known: {', '.join(UPDATES)}")
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        if not (isinstance(batch, (int, np.integer)) and batch >= 1):
            raise ValueError(f"batch must be a positive integer, not {batch!r}")
        if not (isinstance(epochs, (int, np.integer)) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative integer, not {epochs!r}")
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, not {lr!r}")
        if validation is not None:
            Xv = self._check_X(validation[0])
            yv = self._check_y(validation[1], len(Xv))
        fmt = as_formats(fmt)
        check_estimator(estimator, layer_k, self.n_layers, fixed=fmt is not None)
        if estimator == "topk-per-layer":
            layer_k = resolve_layer_k(self.sizes, k, layer_k)
        est_rng = np.random.default_rng([seed, ESTIMATOR_STREAM])
        hist = History(saturations={})
        if fmt is None:
            Xr, yr, params = X, y, self.params.copy()
        else:
            Xr, c1 = fmt.value.quantize(X)
            yr, c2 = fmt.value.quantize(y)
            params, c3 = fmt.weight.quantize(self.params)
            _add_sats(hist.saturations, {"input": c1 + c2, "weight": c3})
        rng = np.random.default_rng(seed)
        n = len(Xr)
        for epoch in range(epochs):
            order = rng.permutation(n) if shuffle else np.arange(n)
            for start in range(0, n, batch):
                sel = order[start:start + batch]
                if estimator == DEFAULT_ESTIMATOR:
                    st = self.step_raw(Xr[sel], yr[sel], params, k, lr, update, fmt, policy)
                else:
                    st = self.step_raw(Xr[sel], yr[sel], params, k, lr, update, fmt, policy,
                                       estimator, est_rng, layer_k)
                params = st.params
                _add_sats(hist.saturations, st.saturations)
                hist.steps += 1
            self.params = params.astype(np.float64) if fmt is None else fmt.weight.to_float(params)
            hist.train_loss.append(self.loss(X, y, fmt))
            if validation is not None:
                hist.val_loss.append(self.loss(Xv, yv, fmt))
                if classify:
                    hist.val_accuracy.append(self.accuracy(Xv, yv, fmt))
            if progress is not None:
                progress(epoch, hist)
        return hist

    def accuracy(self, X, y, fmt=None):
        """Share of rows whose largest output is the largest target (one-hot classification)."""
        y = self._check_y(y, len(X))
        return float(np.mean(np.argmax(self.predict(X, fmt), axis=1) == np.argmax(y, axis=1)))

    def sha256(self):
        return weights_sha256(self.params)


def fixed_update(D, lr, update, count, fmt, *, sgd_q=None):
    """The amount (weight-format integers) the fixed-point update subtracts from each parameter.

    ``D`` are the exact delta sums (frac ``value.frac + grad.frac``), ``count`` = samples x
    outputs of the batch.  With ``m = max|D|`` (no update when ``m == 0``), ``sh =
    bitlength(m) - 17`` and ``Dn = D >> sh`` (floor; a left shift when ``sh < 0``):

    ``maxnorm``:  ``recip = floor(2**35 / (m >> sh))``, ``ratio = round_shift(Dn * recip, 19)``
    (``|ratio| <= 2**16 + 1``: ``D/m`` in 16 fractional bits; the floor of ``D >> sh`` can
    add one for a negative maximum), ``upd = round_shift(ratio * lr_q,
    16)`` with ``lr_q = round(lr * 2**weight.frac)``.

    ``sgd``: ``c = 2 * lr / count`` as ``c_q * 2**-cs`` with ``c_q`` in [2**16, 2**17)
    (:func:`sgd_scale`; or ``sgd_q = (c_q, cs)`` given, e.g. the engine's SGD_CQ and SGD_CS);
    ``upd = round_shift(Dn * c_q, delta.frac + cs - weight.frac - sh)``.
    """
    D = np.asarray(D, dtype=np.int64)
    m = int(np.max(np.abs(D))) if D.size else 0
    if m == 0:
        return np.zeros_like(D)
    sh = m.bit_length() - NORM_BITS
    Dn = D >> sh if sh >= 0 else D << (-sh)
    fw = fmt.weight.frac
    if update == "maxnorm":
        mn = m >> sh if sh >= 0 else m << (-sh)
        recip = (1 << RECIP_FRAC) // mn
        ratio = round_shift(Dn * recip, RECIP_FRAC - RATIO_FRAC)
        lr_q = int(lr_quantize(lr, fmt))
        return round_shift(ratio * lr_q, RATIO_FRAC)
    c_q, cs = sgd_scale(lr, count) if sgd_q is None else (int(sgd_q[0]), int(sgd_q[1]))
    return round_shift(Dn * c_q, fmt.delta.frac + cs - fw - sh)


def lr_quantize(lr, fmt):
    """``lr`` in weight-format integers (at least 1)."""
    return max(1, int(math.floor(lr * (1 << fmt.weight.frac) + 0.5)))


def sgd_scale(lr, count):
    """``2 * lr / count`` as ``(c_q, cs)`` with ``c_q * 2**-cs`` and 2**16 <= c_q < 2**17.

    ``cs`` lies in ``SGD_CS_MIN..SGD_CS_MAX`` (16..127): ValueError unless
    ``2**-111 <= 2 * lr / count < 1``.
    """
    c = 2.0 * lr / count
    if not 0 < c < 1:
        raise ValueError(f"fixed-point sgd needs 0 < 2*lr/count < 1; lr={lr} with {count} "
                         f"samples x outputs gives {c}")
    mant, e = math.frexp(c)        # c = mant * 2**e, 0.5 <= mant < 1
    cs = NORM_BITS - e
    c_q = int(math.floor(c * 2.0 ** cs + 0.5))
    if c_q >= 1 << NORM_BITS:
        c_q >>= 1
        cs -= 1
    if cs > SGD_CS_MAX:
        raise ValueError(f"fixed-point sgd needs 2*lr/count >= 2**-{SGD_CS_MAX - NORM_BITS + 1}; "
                         f"lr={lr} with {count} samples x outputs gives {c}")
    return c_q, cs
