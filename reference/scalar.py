"""Scalar teaching API for Dynamic Pruning in Forward Mode (DPFM).

Every :class:`Dual` carries its value plus a short list of *gradient
registers*: ``(parameter index, partial derivative)`` pairs.  After every
operation the register list is pruned to the ``k`` entries of largest
absolute partial (the lower parameter index wins ties; exact zeros are
dropped).  With ``k=None`` every register is kept, which is exact dense
forward-mode differentiation.

The core is pure Python (``math`` only).  The linear-system helpers at the
bottom (:func:`poly_data`, :func:`solve_poly_scalar`) import numpy lazily.

Examples
--------
>>> ctx = DualContext(k=None)
>>> a = ctx.val(2.0); b = ctx.param(1.0)
>>> e = (a + b) * (b + 1)
>>> e.value, e.grad(b)
(6.0, 5.0)
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "DualContext",
    "Dual",
    "merge_registers",
    "sigmoid_slope",
    "tanh_slope",
    "POLY_TRUE",
    "poly_data",
    "poly_loss",
    "solve_poly_scalar",
]


# --------------------------------------------------------------------------
# register arithmetic: the project's definition of pruning
# --------------------------------------------------------------------------

def _canonical_key(item):
    index, partial = item
    return (-abs(partial), index)


def merge_registers(terms, k=None):
    """Combine scaled register lists and prune them (the "Toper").

    Parameters
    ----------
    terms : iterable of (float, sequence of (int, float))
        ``(scale, registers)`` pairs; the result is ``sum(scale * registers)``.
        Entries with equal parameter index are added (in the order given).
    k : int or None
        Keep at most ``k`` registers; ``None`` keeps all.

    Returns
    -------
    tuple of (int, float)
        Canonical order: ``|partial|`` descending, lower index first on ties.
        Exact zeros are dropped, then the first ``k`` entries are kept.
    """
    acc = {}
    for scale, regs in terms:
        if scale == 0.0:
            continue
        for index, partial in regs:
            term = scale * partial
            if index in acc:
                acc[index] = acc[index] + term
            else:
                acc[index] = term
    items = sorted(((i, p) for i, p in acc.items() if p != 0.0),
                   key=_canonical_key)
    if k is not None:
        del items[k:]
    return tuple(items)


def _check_k(k):
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be None or an int >= 1, got k={k!r}")
    if k < 1:
        raise ValueError(f"k must be None or an int >= 1, got k={k!r}")
    return int(k)


def _as_float(x, what="value"):
    if isinstance(x, Dual):
        raise TypeError(f"{what} must be a plain real number, got a Dual")
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {x!r}")
    return float(x)


# --------------------------------------------------------------------------
# slopes of the saturating activations
# --------------------------------------------------------------------------

def sigmoid_slope(e):
    """Derivative of the logistic function from ``e = exp(-|z|)``.

    ``s'(z) = s(z)(1 - s(z)) = e / (1 + e)^2``, even in ``z``.  Unlike
    ``s (1 - s)`` of a rounded ``s``, it keeps full relative accuracy when the
    unit saturates (``1 - s`` would cancel, and be 0 from ``z = 37`` on).

    Parameters
    ----------
    e : float or numpy.ndarray
        ``exp(-|z|)``, in ``(0, 1]``.  Plain arithmetic only, so arrays work too
        (:func:`dpfm.reference.activations.act_float` uses it on them).

    Returns
    -------
    float or numpy.ndarray
        ``s'(z)``, accurate to a few units in the last place.
    """
    return e / ((1.0 + e) * (1.0 + e))


def tanh_slope(e):
    """Derivative of ``tanh`` from ``e = exp(-2|z|)``.

    ``tanh'(z) = 1 - tanh(z)^2 = 1 / cosh(z)^2 = 4 e / (1 + e)^2``, even in ``z``;
    it keeps full relative accuracy where ``1 - t^2`` of a rounded ``t`` cancels
    (and is 0 from ``|z| = 19`` on).

    Parameters
    ----------
    e : float or numpy.ndarray
        ``exp(-2|z|)``, in ``(0, 1]``.

    Returns
    -------
    float or numpy.ndarray
        ``tanh'(z)``, accurate to a few units in the last place.
    """
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


# --------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------

class DualContext:
    """Factory and bookkeeping for dual numbers sharing one pruning width.

    Parameters
    ----------
    k : int or None, default None
        Number of gradient registers kept after every operation;
        ``None`` keeps all of them (exact forward mode).

    Raises
    ------
    TypeError
        If ``k`` is neither ``None`` nor an int.
    ValueError
        If ``k < 1``.
    """

    def __init__(self, k=None):
        self._k = _check_k(k)
        self._params = []

    @property
    def k(self):
        """int or None: register budget per value."""
        return self._k

    @property
    def params(self):
        """list of Dual: the trainable parameters, in index order."""
        return list(self._params)

    def val(self, x):
        """Return a constant (no gradient registers) with value ``x``."""
        return Dual(self, _as_float(x), ())

    def param(self, x, name=None):
        """Return a new trainable parameter with value ``x``.

        Parameters are numbered 0, 1, 2, ... in creation order and start
        with the single register ``(index, 1.0)``.
        """
        index = len(self._params)
        p = Dual(self, _as_float(x), ((index, 1.0),))
        p._index = index
        p._name = name if name is not None else f"p{index}"
        self._params.append(p)
        return p

    def sgd_step(self, loss, lr):
        """Apply ``p.value -= lr * loss.grad(p)`` to every parameter."""
        grads = loss.gradient()
        for p in self._params:
            g = grads.get(p._index, 0.0)
            if g:
                p._value -= lr * g

    def __repr__(self):
        return f"DualContext(k={self._k!r}, params={len(self._params)})"


# --------------------------------------------------------------------------
# dual numbers
# --------------------------------------------------------------------------

class Dual:
    """A value plus at most ``k`` gradient registers.

    Create instances with :meth:`DualContext.val` or
    :meth:`DualContext.param`; arithmetic with other ``Dual`` objects of the
    same context or with plain real numbers yields new ``Dual`` objects.

    Attributes
    ----------
    value : float
        The primal value (assignable only on parameters).
    registers : tuple of (int, float)
        ``(parameter index, partial)`` pairs in canonical order.
    """

    __slots__ = ("_ctx", "_value", "_regs", "_index", "_name")

    def __init__(self, ctx, value, registers):
        self._ctx = ctx
        self._value = value
        self._regs = registers
        self._index = None
        self._name = None

    # ---- accessors -------------------------------------------------------
    @property
    def value(self):
        """float: the primal value."""
        return self._value

    @value.setter
    def value(self, x):
        if self._index is None:
            raise AttributeError("only parameters can be assigned a value")
        self._value = _as_float(x)

    @property
    def registers(self):
        """tuple of (int, float): gradient registers, canonical order."""
        return self._regs

    @property
    def index(self):
        """int or None: parameter index (``None`` if not a parameter)."""
        return self._index

    @property
    def name(self):
        """str or None: parameter name (``None`` if not a parameter)."""
        return self._name

    @property
    def is_param(self):
        """bool: whether this is a trainable parameter."""
        return self._index is not None

    def grad(self, p):
        """Partial derivative with respect to parameter ``p``.

        Parameters
        ----------
        p : Dual or int
            A parameter (``ctx.param(...)``) or its index.

        Returns
        -------
        float
            The held partial, or ``0.0`` if no register holds ``p``.
        """
        if isinstance(p, Dual):
            if p._index is None:
                raise TypeError("grad() needs a parameter or an int index")
            if p._ctx is not self._ctx:
                raise ValueError("parameter belongs to another DualContext")
            p = p._index
        elif isinstance(p, bool) or not isinstance(p, numbers.Integral):
            raise TypeError(f"grad() needs a parameter or an int, got {p!r}")
        for index, partial in self._regs:
            if index == p:
                return partial
        return 0.0

    def gradient(self):
        """dict: ``{parameter index: partial}`` for the held registers."""
        return dict(self._regs)

    def __float__(self):
        return float(self._value)

    def __repr__(self):
        regs = ", ".join(f"({i}, {p:.6g})" for i, p in self._regs)
        tag = f" {self._name}" if self._index is not None else ""
        return f"Dual{tag}({self._value:.6g}; [{regs}])"

    # ---- helpers ---------------------------------------------------------
    def _new(self, value, terms):
        return Dual(self._ctx, value, merge_registers(terms, self._ctx._k))

    def _unary(self, value, slope):
        """Result with value ``value`` and registers ``slope * G(self)``.

        ``slope`` is a callable, evaluated only if there are registers.
        """
        if not self._regs:
            return Dual(self._ctx, value, ())
        return self._new(value, ((slope(), self._regs),))

    def _coerce(self, other):
        if isinstance(other, Dual):
            if other._ctx is not self._ctx:
                raise ValueError("cannot mix Duals of different DualContexts")
            return other
        if isinstance(other, bool) or not isinstance(other, numbers.Real):
            return NotImplemented
        return float(other)

    # ---- arithmetic ------------------------------------------------------
    def __add__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        if isinstance(o, Dual):
            return self._new(self._value + o._value,
                             ((1.0, self._regs), (1.0, o._regs)))
        return self._new(self._value + o, ((1.0, self._regs),))

    def __radd__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        return self._new(o + self._value, ((1.0, self._regs),))

    def __sub__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        if isinstance(o, Dual):
            return self._new(self._value - o._value,
                             ((1.0, self._regs), (-1.0, o._regs)))
        return self._new(self._value - o, ((1.0, self._regs),))

    def __rsub__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        return self._new(o - self._value, ((-1.0, self._regs),))

    def __neg__(self):
        return self._new(-self._value, ((-1.0, self._regs),))

    def __pos__(self):
        return self

    def __mul__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        if isinstance(o, Dual):
            # d(uv) = u dv + v du
            return self._new(self._value * o._value,
                             ((self._value, o._regs), (o._value, self._regs)))
        return self._new(self._value * o, ((o, self._regs),))

    def __rmul__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        return self._new(o * self._value, ((o, self._regs),))

    def __truediv__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        if isinstance(o, Dual):
            u, v = self._value, o._value
            q = u / v
            # d(u/v) = du / v - u/v^2 dv
            return self._new(q, ((1.0 / v, self._regs), (-q / v, o._regs)))
        return self._new(self._value / o, ((1.0 / o, self._regs),))

    def __rtruediv__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        v = self._value
        q = o / v
        return self._unary(q, lambda: -q / v)

    def __pow__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        u = self._value
        if isinstance(o, Dual):
            if not o._regs:
                return self._pow_const(o._value)
            if not u > 0.0:
                raise ValueError(
                    f"a Dual exponent needs a positive base, got base {u!r}")
            w = o._value
            value = u ** w
            # d(u^w) = w u^(w-1) du + u^w ln(u) dw
            return self._new(value, ((w * u ** (w - 1.0), self._regs),
                                     (value * math.log(u), o._regs)))
        return self._pow_const(o)

    def _pow_const(self, n):
        u = self._value
        value = u ** n
        if isinstance(value, complex):
            raise ValueError(f"{u!r} ** {n!r} is not real")
        if n == 0.0:
            return Dual(self._ctx, value, ())
        return self._unary(value, lambda: n * u ** (n - 1.0))

    def __rpow__(self, other):
        o = self._coerce(other)
        if o is NotImplemented:
            return o
        w = self._value
        if not self._regs:
            return Dual(self._ctx, o ** w, ())
        if not o > 0.0:
            raise ValueError(
                f"a Dual exponent needs a positive base, got base {o!r}")
        value = o ** w
        return self._new(value, ((value * math.log(o), self._regs),))

    def __abs__(self):
        u = self._value
        return self._unary(abs(u), lambda: (u > 0.0) - (u < 0.0))

    # ---- elementary functions (derivatives evaluated at the input) --------
    def exp(self):
        """``exp(x)``; derivative ``exp(x)``."""
        value = math.exp(self._value)
        return self._unary(value, lambda: value)

    def log(self):
        """Natural log (``x > 0``); derivative ``1 / x``."""
        x = self._value
        if not x > 0.0:
            raise ValueError(f"log needs a positive argument, got {x!r}")
        return self._unary(math.log(x), lambda: 1.0 / x)

    def sqrt(self):
        """``sqrt(x)`` (``x >= 0``); derivative ``1 / (2 sqrt(x))``."""
        x = self._value
        if x < 0.0:
            raise ValueError(f"sqrt needs a non-negative argument, got {x!r}")
        value = math.sqrt(x)
        if x == 0.0 and self._regs:
            raise ValueError("sqrt is not differentiable at 0")
        return self._unary(value, lambda: 0.5 / value)

    def sin(self):
        """``sin(x)``; derivative ``cos(x)``."""
        x = self._value
        return self._unary(math.sin(x), lambda: math.cos(x))

    def cos(self):
        """``cos(x)``; derivative ``-sin(x)``."""
        x = self._value
        return self._unary(math.cos(x), lambda: -math.sin(x))

    def tanh(self):
        """``tanh(x)``; derivative ``1 - tanh(x)^2 = sech(x)^2``.

        The slope is :func:`tanh_slope` of ``e = exp(-2|x|)``, which neither
        overflows nor cancels for large ``|x|``.
        """
        x = self._value
        return self._unary(math.tanh(x), lambda: tanh_slope(math.exp(-2.0 * abs(x))))

    def sigmoid(self):
        """Logistic ``s(x) = 1 / (1 + exp(-x))``; derivative ``s(x)(1 - s(x))``.

        Both are evaluated stably at the input ``x`` (the slope is
        :func:`sigmoid_slope` of ``e = exp(-|x|)``).
        """
        x = self._value
        e = math.exp(-abs(x))
        value = 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
        return self._unary(value, lambda: sigmoid_slope(e))

    def relu(self):
        """``max(x, 0)``; derivative 1 for ``x > 0`` and 0 otherwise."""
        x = self._value
        if x > 0.0:
            return self._unary(x, lambda: 1.0)
        return Dual(self._ctx, 0.0, ())


# --------------------------------------------------------------------------
# the seed's second example: a small linear system A * B = C by descent
# --------------------------------------------------------------------------

#: Rows of the 4 x 2 map (B transposed): targets a+b, a+2b, 10a+2b, 2a+5b.
POLY_TRUE = [[1.0, 1.0], [1.0, 2.0], [10.0, 2.0], [2.0, 5.0]]


def poly_data(n, seed=0):
    """Inputs and targets of the seed's linear system.

    Parameters
    ----------
    n : int
        Number of samples (rows of ``A``).
    seed : int
        Seed for ``numpy.random.default_rng``.

    Returns
    -------
    X : numpy.ndarray, shape (n, 2)
        Rows ``(a, b)`` drawn uniformly from ``[-1, 1]``.
    Y : numpy.ndarray, shape (n, 4)
        Columns ``a+b, a+2b, 10a+2b, 2a+5b`` (``Y = X @ POLY_TRUE.T``).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.0, 1.0, size=(int(n), 2))
    Y = X @ np.asarray(POLY_TRUE, dtype=float).T
    return X, Y


def poly_loss(ctx, weights, X, Y):
    """Mean squared error of the linear map ``weights`` as a Dual.

    Parameters
    ----------
    ctx : DualContext
        Context the weights belong to.
    weights : sequence of sequence of Dual
        The 4 x 2 weight matrix (row ``r`` predicts output column ``r``).
    X, Y : array_like
        Inputs ``(n, 2)`` and targets ``(n, 4)``.

    Returns
    -------
    Dual
        ``1/(n*4) * sum (y' - y)^2``, pruned after every operation.
    """
    total = ctx.val(0.0)
    count = 0
    for x_row, y_row in zip(X, Y):
        xs = [float(v) for v in x_row]
        for w_row, target in zip(weights, y_row):
            pred = w_row[0] * xs[0]
            for w, xv in zip(w_row[1:], xs[1:]):
                pred = pred + w * xv
            err = pred - float(target)
            total = total + err * err
            count += 1
    return total * (1.0 / count)


def solve_poly_scalar(k=None, steps=150, lr=3.0, seed=0, n=16, history=False):
    """Solve the seed's ``A * B = C`` system by gradient descent on Duals.

    Eight parameters (a 4 x 2 matrix, initialised at 0) are trained with
    plain steps ``w -= lr * dL/dw`` on the MSE of :func:`poly_loss`.

    Parameters
    ----------
    k : int or None
        Register budget of the :class:`DualContext`.
    steps : int
        Number of full-batch gradient steps.
    lr : float
        Learning rate.
    seed : int
        Data seed for :func:`poly_data`.
    n : int
        Number of samples.
    history : bool
        Also return the loss before each step.

    Returns
    -------
    W : numpy.ndarray, shape (4, 2)
        Learned matrix; with ``k=None`` and the defaults it matches
        :data:`POLY_TRUE` to better than ``1e-5`` (GD contraction bound,
        checked for data seeds 0..1999); about 0.15 s.
    losses : list of float
        Only if ``history`` is true.
    """
    import numpy as np

    X, Y = poly_data(n, seed)
    xs = X.tolist()
    ys = Y.tolist()
    ctx = DualContext(k)
    weights = [[ctx.param(0.0, name=f"w{r}{c}") for c in range(2)]
               for r in range(4)]
    losses = []
    for _ in range(int(steps)):
        loss = poly_loss(ctx, weights, xs, ys)
        losses.append(loss.value)
        ctx.sgd_step(loss, lr)
    W = np.array([[w.value for w in row] for row in weights], dtype=float)
    return (W, losses) if history else W
