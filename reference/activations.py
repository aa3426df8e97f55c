"""Activation functions: float64 and the fixed-point tables the hardware stores.

Float: ``f(z)`` and ``f'(z)`` evaluated at the pre-activation ``z``, each to a few units in
the last place for every ``z``. For sigmoid and tanh, ``f'`` is ``f (1 - f)`` and ``1 - f^2``
of the rounded ``f`` while the unit is far from saturation (``z <=`` :data:`SIGMOID_STABLE_FROM`,
``|z| <=`` :data:`TANH_STABLE_FROM`; at most 1e-14 relative error there), and beyond, where
those formulas cancel, :func:`~dpfm.reference.scalar.sigmoid_slope` and
:func:`~dpfm.reference.scalar.tanh_slope` of ``exp(-|z|)``: the slopes :class:`DualContext`
uses, so the two reference APIs agree on saturated units too.

Fixed point (what the activation unit computes, bit for bit):

``linear``
    ``a = z``, ``d = 1.0``.
``relu``
    ``a = max(z, 0)``, ``d = 1.0 if z > 0 else 0``.
``sigmoid``, ``tanh``
    Table of :data:`TABLE_ENTRIES` = 4096 entries over z in [-8, 8): address
    ``clamp(floor(z * 2**TABLE_Z_FRAC), -2048, 2047) + 2048`` (an arithmetic shift of ``z``
    and a clamp); each entry holds ``f`` and ``f'`` at the centre of its interval, quantized
    to the value and derivative formats. The derivative entry is ``f (1 - f)`` or ``1 - f^2`` of
    the float ``f`` at the centre, over the whole table: the ROM the hardware holds, fixed
    whatever the float path does beyond the switch points.

Codes (``ACT_CODES``) are shared by the numba kernels and the RTL.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .fixed import FixedFormat
from .kernels import sigmoid_parts
from .scalar import sigmoid_slope, tanh_slope

__all__ = ["ACTIVATIONS", "ACT_CODES", "TABLE_Z_FRAC", "TABLE_ADDR_BITS", "TABLE_ENTRIES",
           "SIGMOID_STABLE_FROM", "TANH_STABLE_FROM", "check_activation", "act_float", "act_table",
           "table_address"]

ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
ACTIVATIONS = tuple(ACT_CODES)
TABLED = ("sigmoid", "tanh")

TABLE_Z_FRAC = 8          # table step 2**-8 in z
TABLE_ADDR_BITS = 12      # 4096 entries: z in [-8, 8)
TABLE_ENTRIES = 1 << TABLE_ADDR_BITS

# Where the float path's sigmoid and tanh slopes switch from the slope of the rounded value
# (f (1 - f), 1 - f^2) to the stable slope of exp(-|z|). Below them the two agree to 1e-14
# relative, and runs whose units stay there (the demo's sum4 net reaches |z| 2.3) keep their
# float results bit for bit; beyond, 1 - f cancels: 1e-9 relative error by sigmoid z = 16.5
# and tanh z = 8.5, and an exact 0 from sigmoid z = 37 and tanh |z| = 19.
SIGMOID_STABLE_FROM = 4.0
TANH_STABLE_FROM = 2.0


def check_activation(name) -> str:
    """Return ``name`` if it is a known activation, else ValueError listing the known ones."""
    if name not in ACT_CODES:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name


def _value_float(name: str, z: np.ndarray) -> np.ndarray:
    """Float64 ``f(z)`` of a tabled activation."""
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    return np.tanh(z)


def _slope_of_value(name: str, f: np.ndarray) -> np.ndarray:
    """``f'`` from the rounded ``f`` of a tabled activation: ``f (1 - f)`` or ``1 - f^2``."""
    return f * (1.0 - f) if name == "sigmoid" else 1.0 - f * f


def act_float(name: str, z: np.ndarray):
    """Float64 ``(f(z), f'(z))`` for activation ``name``.

    Parameters
    ----------
    name : str
        ``linear``, ``relu``, ``sigmoid`` or ``tanh``.
    z : array_like
        Pre-activations.

    Returns
    -------
    f, d : numpy.ndarray
        The activation and its derivative at ``z``, float64, of ``z``'s shape. For sigmoid
        and tanh both keep their relative accuracy (a few units in the last place) for every
        ``z``, saturated units included: ``d`` of a unit is never 0.

    Raises
    ------
    ValueError
        For an unknown activation.
    """
    z = np.asarray(z, dtype=np.float64)
    if name == "linear":
        return z.copy(), np.ones_like(z)
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if name not in TABLED:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    if name == "sigmoid" and z.ndim and z.flags.c_contiguous:
        # f = 1 / (1 + exp(-z)) and d = f (1 - f) in one compiled loop over numpy's exp
        # (the same operations as _value_float and _slope_of_value, so the same bits)
        with np.errstate(over="ignore"):
            e = np.exp(-z)
        f, d, n_far = sigmoid_parts(e, z, SIGMOID_STABLE_FROM)
        if n_far:                               # for z < 0, 1 - f does not cancel
            d = np.where(z > SIGMOID_STABLE_FROM, sigmoid_slope(np.exp(-np.abs(z))), d)
    else:
        f = _value_float(name, z)
        d = _slope_of_value(name, f)
        if name == "sigmoid":
            far = z > SIGMOID_STABLE_FROM
            if far.any():
                d = np.where(far, sigmoid_slope(np.exp(-np.abs(z))), d)
            return f, d
        far = np.abs(z) > TANH_STABLE_FROM
        if far.any():
            d = np.where(far, tanh_slope(np.exp(-2.0 * np.abs(z))), d)
    return f, d


def table_address(z_q: np.ndarray, value_fmt: FixedFormat) -> np.ndarray:
    """Table address of integer pre-activations ``z_q`` (value format)."""
    shift = value_fmt.frac - TABLE_Z_FRAC
    zz = np.asarray(z_q, dtype=np.int64)
    t = zz >> shift if shift >= 0 else zz << (-shift)
    half = TABLE_ENTRIES // 2
    return np.clip(t, -half, half - 1) + half


@lru_cache(maxsize=None)
def act_table(name: str, value_fmt: FixedFormat, deriv_fmt: FixedFormat):
    """The fixed-point table of a tabled activation: ``(f_q, d_q)``, int64 arrays of 4096.

    The same arrays initialise the hardware's ROM.  Entries are read-only.
    """
    if name not in TABLED:
        raise ValueError(f"activation {name!r} has no table; tabled: {', '.join(TABLED)}")
    half = TABLE_ENTRIES // 2
    centre = (np.arange(TABLE_ENTRIES) - half + 0.5) / (1 << TABLE_Z_FRAC)
    f = _value_float(name, centre)
    d = _slope_of_value(name, f)
    f_q, _ = value_fmt.quantize(f)
    d_q, _ = deriv_fmt.quantize(d)
    f_q.setflags(write=False)
    d_q.setflags(write=False)
    return f_q, d_q


def act_fixed(name: str, z_q: np.ndarray, value_fmt: FixedFormat, deriv_fmt: FixedFormat):
    """Integer ``(a_q, d_q)`` of the activation unit for integer pre-activations ``z_q``."""
    z_q = np.asarray(z_q, dtype=np.int64)
    one = deriv_fmt.one
    if name == "linear":
        return z_q.copy(), np.full_like(z_q, one)
    if name == "relu":
        pos = z_q > 0
        return np.where(pos, z_q, 0), np.where(pos, one, 0).astype(np.int64)
    f_q, d_q = act_table(check_activation(name), value_fmt, deriv_fmt)
    addr = table_address(z_q, value_fmt)
    return f_q[addr], d_q[addr]
