"""Element operations of the datapath that the RTL blocks implement one for one."""

from __future__ import annotations

import numpy as np

from .fixed import FixedFormat, round_shift

__all__ = ["dual_scale", "scale_registers", "new_entry"]


def scale_registers(grad_idx, grad_val, scalar, scalar_fmt: FixedFormat, grad_fmt: FixedFormat):
    """Registers times a per-row scalar: ``sat_g(round_shift(g * s, scalar_fmt.frac))``.

    ``grad_idx``/``grad_val`` (..., k), ``scalar`` (...,).  A zero product empties its slot
    (index -1); slots keep their places.  Returns ``(idx, val, saturations)``.
    """
    scalar = np.asarray(scalar, dtype=np.int64)
    g, c = grad_fmt.saturate(round_shift(np.asarray(grad_val, dtype=np.int64) * scalar[..., None],
                                         scalar_fmt.frac))
    return np.where(g != 0, np.asarray(grad_idx, dtype=np.int64), -1), g, c


def dual_scale(value, grad_idx, grad_val, scalar, scalar_fmt: FixedFormat, value_fmt: FixedFormat,
               grad_fmt: FixedFormat):
    """Scale dual numbers by a scalar, as :class:`dpfm.rtl.DualScale` does (integers).

    ``value`` (...,), ``grad_idx``/``grad_val`` (..., k), ``scalar`` (...,) in
    ``scalar_fmt``.  Returns ``(value', grad_idx', grad_val', saturations)`` with
    ``value' = sat_v(round_shift(value * scalar, scalar_fmt.frac))`` and the same for every
    register in the gradient format; a register whose product is zero becomes empty
    (index -1, value 0).  Registers keep their slots.
    """
    scalar = np.asarray(scalar, dtype=np.int64)
    v, c1 = value_fmt.saturate(round_shift(np.asarray(value, dtype=np.int64) * scalar, scalar_fmt.frac))
    idx, g, c2 = scale_registers(grad_idx, grad_val, scalar, scalar_fmt, grad_fmt)
    return v, idx, g, c1 + c2


def new_entry(value, value_fmt: FixedFormat, grad_fmt: FixedFormat):
    """A value turned into a gradient register (the entry d z / d W[j,i] = a_i)."""
    return grad_fmt.saturate(round_shift(np.asarray(value, dtype=np.int64), value_fmt.frac - grad_fmt.frac))
