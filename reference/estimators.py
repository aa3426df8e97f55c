"""Gradient estimators: what a training step's delta is built from, at k lanes per activation.

Every activation of the forward pass carries ``k`` derivative lanes besides its value, and
scaling it by a weight costs ``k + 1`` multiplies, whatever the lanes hold.  The estimators
differ in what the lanes hold and how the step's gradient estimate is made from them
(docs/dpfm.md, "Gradient estimators", states the semantics):

``topk``
    DPFM: the lanes are gradient registers (parameter index, partial) pruned to the ``k``
    largest after every merge (policy exact or stream).  Deterministic, biased.  The default,
    and the only one the fixed-point reference and the hardware run.
``topk-per-layer``
    The same with one ``k`` per layer (``layer_k``).  Without a list, every layer keeps the
    same share of the parameters it can reach, the largest share whose multiplies per step do
    not exceed those of ``topk`` at ``k`` (:func:`equal_cost_layer_k`).
``randk``
    Registers sampled instead of pruned: ``k`` of a neuron's candidates kept with
    probabilities in proportion to their size, each kept value divided by its probability
    (:func:`dpfm.reference.kernels.merge_sampled_float`).  Unbiased.
``forward-gradient``
    Baydin et al. 2022: the lanes are ``k`` tangents ``v_t ~ N(0, I)`` over all parameters
    (drawn per step, shared by the batch); the forward pass gives ``c_t = grad L . v_t``;
    the estimate is ``(1/k) sum_t c_t v_t``.  Unbiased.
``multi-tangent``
    Flügel et al. 2025: the same tangents and directional derivatives, combined by orthogonal
    projection: the estimate is the projection of ``grad L`` onto the span of the tangents,
    ``V (V^T V)^+ c``.  Exact when ``k >= n_params``.

Only ``topk`` runs in fixed point; the others are float64 (``fmt=None``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .activations import act_float

__all__ = ["Estimator", "ESTIMATORS", "DEFAULT_ESTIMATOR", "ESTIMATOR_STREAM", "get_estimator",
           "check_estimator", "reachable", "equal_cost_layer_k", "resolve_layer_k",
           "multiplies", "tangent_forward", "combine_tangents"]

DEFAULT_ESTIMATOR = "topk"

#: Second word of the seed of a run's estimator generator,
#: ``numpy.random.default_rng([seed, ESTIMATOR_STREAM])``: the tangents and the sampling
#: draws come from their own stream and leave the batch order (``default_rng(seed)``) alone.
ESTIMATOR_STREAM = 1


@dataclass(frozen=True)
class Estimator:
    """One gradient estimator of :data:`ESTIMATORS`.

    Parameters
    ----------
    name : str
        Its name (``--estimator``).
    lanes : str
        ``"registers"`` (indexed partials, merged per neuron) or ``"tangents"`` (dense
        directional derivatives).
    random : bool
        Draws from the run's estimator generator.
    summary : str
        One line for help texts.
    """
    name: str
    lanes: str
    random: bool
    summary: str


#: Estimator name -> :class:`Estimator`, the names of ``--estimator``.
ESTIMATORS = {e.name: e for e in (
    Estimator("topk", "registers", False,
              "DPFM: the k largest gradient registers per activation (deterministic, biased)"),
    Estimator("topk-per-layer", "registers", False,
              "top-k with one k per layer (--layer-k; default: the same share of each "
              "layer's parameters at the multiplies of topk)"),
    Estimator("randk", "registers", True,
              "k registers sampled in proportion to their size and rescaled (unbiased)"),
    Estimator("forward-gradient", "tangents", True,
              "k random tangents, (1/k) sum (grad.v) v (Baydin et al. 2022; unbiased)"),
    Estimator("multi-tangent", "tangents", True,
              "k random tangents combined by orthogonal projection (Flügel et al. 2025)"),
)}


def get_estimator(name) -> Estimator:
    """The estimator registered as ``name``; ValueError listing the known ones."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


def reachable(sizes) -> list:
    """Parameters each layer's outputs depend on (the longest register list possible)."""
    out, total = [], 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out.append(total + n_in + 1)
        total += n_out * (n_in + 1)
    return out


def _lanes(sizes, k, layer_k):
    """Register slots per layer: ``min(k_l, reachable_l)``."""
    ks = [k] * (len(sizes) - 1) if layer_k is None else list(layer_k)
    return [min(kl, r) for kl, r in zip(ks, reachable(sizes))]


def check_estimator(name, layer_k=None, n_layers=None, fixed=False) -> Estimator:
    """Validate an estimator and its options; returns the :class:`Estimator`.

    Raises
    ------
    ValueError
        One sentence naming the bad value: an unknown name, ``layer_k`` with another
        estimator than ``topk-per-layer``, a ``layer_k`` that is not one positive whole number
        per layer, or an estimator other than ``topk`` in fixed point.
    """
    est = get_estimator(name)
    if fixed and name != DEFAULT_ESTIMATOR:
        raise ValueError(f"estimator {name!r} runs on the float reference only (backend "
                         f"numpy); fixed point and the hardware prune with 'topk'")
    if layer_k is not None:
        if name != "topk-per-layer":
            raise ValueError(f"layer_k (--layer-k) applies to estimator 'topk-per-layer' only, "
                             f"not to {name!r}")
        layer_k = list(layer_k)
        if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
               for v in layer_k):
            raise ValueError(f"layer_k (--layer-k) must be positive whole numbers, not {layer_k}")
        if n_layers is not None and len(layer_k) != n_layers:
            raise ValueError(f"layer_k (--layer-k) {','.join(map(str, layer_k))} gives "
                             f"{len(layer_k)} k's but the net has {n_layers} layers")
    return est


def _register_multiplies(sizes, lanes, sampled=False):
    """Per sample: values, weights x input registers, f'(z) x registers (and the rescaling
    of sampled registers), error x output registers."""
    total, k_in = 0, 0
    for (n_in, n_out), k_out in zip(zip(sizes[:-1], sizes[1:]), lanes):
        total += n_out * n_in * (1 + k_in) + n_out * k_out * (2 if sampled else 1)
        k_in = k_out
    return total + sizes[-1] * lanes[-1]


def _tangent_multiplies(sizes, k):
    """Per sample: values, weights x input tangents (none for the inputs), tangents of the
    weights x inputs, f'(z) x tangents, error x output tangents."""
    total = 0
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += n_out * n_in * (1 + (k if l else 0) + k) + n_out * k
    return total + sizes[-1] * k


def multiplies(sizes, estimator, k, batch, layer_k=None) -> dict:
    """Multiplies of one training step (``batch`` samples), by the estimator's method.

    Returns ``{"forward": ..., "combine": ..., "total": ...}``: ``forward`` is ``batch`` times
    the per-sample count (values, every derivative lane scaled at every weight and every
    activation, and the error times the output lanes); ``combine`` the per-step work of the
    tangent estimators (``forward-gradient``: ``k P`` for ``sum_t c_t v_t``;
    ``multi-tangent``: ``k(k+1)/2 P`` for ``V^T V``, ``k^3/3`` for its solve and ``k P`` for
    the projection).  The update's ``P`` multiplies, the same for all, are left out.
    ``k`` is resolved (an int); ``layer_k`` is ``topk-per-layer``'s list.
    """
    est = get_estimator(estimator)
    P = sum(n_out * (n_in + 1) for n_in, n_out in zip(sizes[:-1], sizes[1:]))
    if est.lanes == "registers":
        if estimator == "topk-per-layer":
            layer_k = resolve_layer_k(sizes, k, layer_k)
        per_sample = _register_multiplies(sizes, _lanes(sizes, k, layer_k),
                                          sampled=estimator == "randk")
        combine = 0
    else:
        per_sample = _tangent_multiplies(sizes, k)
        combine = k * P if estimator == "forward-gradient" else \
            k * (k + 1) // 2 * P + -(-k ** 3 // 3) + k * P
    return {"forward": batch * per_sample, "combine": combine,
            "total": batch * per_sample + combine}


def equal_cost_layer_k(sizes, k) -> list:
    """``topk-per-layer``'s k per layer when none is given.

    Every layer keeps the same share ``f`` of the parameters it can reach,
    ``k_l = max(1, floor(f * reachable_l))``, with ``f`` the largest share whose multiplies
    per sample (:func:`multiplies`) do not exceed those of ``topk`` at ``k``.  Lists near the
    output can reach far more parameters, so they get more registers than near the input.
    """
    reach = reachable(sizes)
    budget = _register_multiplies(sizes, _lanes(sizes, k, None))
    shares = sorted({m / r for r in reach for m in range(1, r + 1)})
    best = _lanes(sizes, k, None)
    lo, hi = 0, len(shares) - 1           # the cost grows with the share: bisect
    while lo <= hi:
        mid = (lo + hi) // 2
        f = shares[mid]
        ks = [max(1, min(r, int(np.floor(f * r + 1e-9)))) for r in reach]
        if _register_multiplies(sizes, ks) <= budget:
            best, lo = ks, mid + 1
        else:
            hi = mid - 1
    return best


def resolve_layer_k(sizes, k, layer_k) -> list:
    """``layer_k`` as given, or :func:`equal_cost_layer_k` when it is None."""
    return list(layer_k) if layer_k is not None else equal_cost_layer_k(sizes, k)


def tangent_forward(net, X, params, V):
    """Forward pass carrying ``k`` tangents instead of registers (float64).

    Parameters
    ----------
    net : MLP
        The network (its sizes, activations and parameter layout).
    X : ndarray (N, n_in)
    params : ndarray (P,)
    V : ndarray (P, k)
        The tangents, one column each, in the public parameter order.

    Returns
    -------
    value : ndarray (N, n_out)
        The outputs, the same numbers as :meth:`MLP.predict`.
    tangents : ndarray (N, n_out, k)
        ``d value / d theta`` applied to every tangent (``J V``).
    layers : list of (z, a, d)
        Every layer's pre-activation, activation and derivative.
    """
    a = X
    adot = None                           # the inputs carry no tangent
    layers = []
    for l in range(net.n_layers):
        W, b = net._views(params, l)
        n_in, n_out = net.sizes[l], net.sizes[l + 1]
        VW = V[net.offsets[l]:net.offsets[l] + n_out * n_in].reshape(n_out, n_in, -1)
        Vb = V[net.offsets[l] + n_out * n_in:net.offsets[l] + n_out * (n_in + 1)]
        z = a @ W.T + b
        zdot = np.tensordot(a, VW, axes=([1], [1])) + Vb[None]      # (N, n_out, k)
        if adot is not None:
            zdot += np.matmul(W, adot)                               # W (n_out, n_in) per sample
        a, d = act_float(net.activations[l], z)
        adot = zdot * d[..., None]
        layers.append((z, a, d))
    return a, adot, layers


def combine_tangents(estimator, V, c):
    """The gradient estimate from the tangents ``V`` (P, k) and ``c = V^T grad L`` (k,).

    ``forward-gradient``: ``V c / k``.  ``multi-tangent``: the minimum-norm solution of
    ``V^T g = c``, i.e. ``V (V^T V)^+ c``, the orthogonal projection of ``grad L`` onto the
    span of the tangents (``grad L`` itself when the tangents span every parameter).  With
    at most half as many tangents as parameters the Gram matrix ``V^T V`` of Gaussian
    tangents is well conditioned and solved directly; above, ``numpy.linalg.lstsq`` (SVD).
    """
    if estimator == "forward-gradient":
        return V @ c / V.shape[1]
    if estimator == "multi-tangent":
        P, k = V.shape
        if 2 * k <= P:
            return V @ np.linalg.solve(V.T @ V, c)
        return np.linalg.lstsq(V.T, c, rcond=None)[0]
    raise ValueError(f"estimator {estimator!r} does not use tangents")
