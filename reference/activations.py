"""Activation functions: float64 and the fixed-point tables the hardware stores.

Float: exact ``f(z)`` and ``f'(z)`` evaluated at the pre-activation ``z``.

Fixed point (what the activation unit computes, bit for bit):

``linear``
    ``a = z``, ``d = 1.0``.
``relu``
    ``a = max(z, 0)``, ``d = 1.0 if z > 0 else 0``.
``sigmoid``, ``tanh``
    Table of :data:`TABLE_ENTRIES` = 4096 entries over z in [-8, 8): address
    ``clamp(floor(z * 2**TABLE_Z_FRAC), -2048, 2047) + 2048`` (an arithmetic shift of ``z``
    and a clamp); each entry holds ``f`` and ``f'`` at the centre of its interval, quantized
    to the value and derivative formats.

Codes (``ACT_CODES``) are shared by the numba kernels and the RTL.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .fixed import FixedFormat

__all__ = ["ACTIVATIONS", "ACT_CODES", "TABLE_Z_FRAC", "TABLE_ADDR_BITS", "TABLE_ENTRIES",
           "check_activation", "act_float", "act_table", "table_address"]

ACT_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
ACTIVATIONS = tuple(ACT_CODES)
TABLED = ("sigmoid", "tanh")

TABLE_Z_FRAC = 8          # table step 2**-8 in z
TABLE_ADDR_BITS = 12      # 4096 entries: z in [-8, 8)
TABLE_ENTRIES = 1 << TABLE_ADDR_BITS


def check_activation(name) -> str:
    """Return ``name`` if it is a known activation, else ValueError listing the known ones."""
    if name not in ACT_CODES:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name


def act_float(name: str, z: np.ndarray):
    """Float64 ``(f(z), f'(z))`` for activation ``name``."""
    z = np.asarray(z, dtype=np.float64)
    if name == "linear":
        return z.copy(), np.ones_like(z)
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if name == "sigmoid":
        with np.errstate(over="ignore"):
            s = 1.0 / (1.0 + np.exp(-z))
        return s, s * (1.0 - s)
    if name == "tanh":
        t = np.tanh(z)
        return t, 1.0 - t * t
    raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


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
    f, d = act_float(name, centre)
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
