"""Fixed-point helpers for Amaranth expressions, the HDL twins of
:func:`dpfm.reference.fixed.round_shift` and :meth:`FixedFormat.saturate`."""

from __future__ import annotations

from amaranth.hdl import Const, Mux, signed

__all__ = ["round_shift", "saturate", "round_shift_var"]


def round_shift(x, s: int):
    """Drop ``s`` fractional bits (constant ``s``): ``(x + 2**(s-1)) >> s``, ties toward +inf;
    a negative ``s`` shifts left.  ``x`` must be a signed value."""
    if s > 0:
        return (x + Const(1 << (s - 1), signed(s + 1))) >> s
    if s < 0:
        return x << (-s)
    return x


def round_shift_var(x, s, max_shift: int):
    """Like :func:`round_shift` with a run-time unsigned shift ``s`` (0..max_shift).

    The rounding constant ``2**(s-1)`` is ``max_shift`` bits wide, so the adder is
    ``max(len(x), max_shift) + 1`` bits wide.
    """
    nb = max(1, max_shift.bit_length())
    half = Mux(s == 0, 0, (Const(1, 1) << (s - 1).as_unsigned()[:nb])[:max(1, max_shift)])
    return (x + half) >> s[:nb]


def saturate(x, fmt):
    """Clamp signed ``x`` to ``fmt`` (a FixedFormat). Returns ``(value, overflow)``."""
    hi, lo = fmt.max_int, fmt.min_int
    over = x > hi
    under = x < lo
    value = Mux(over, Const(hi, signed(fmt.bits)), Mux(under, Const(lo, signed(fmt.bits)), x[:fmt.bits].as_signed()))
    return value, over | under
