"""Fixed-point helpers for Amaranth expressions, the HDL twins of
:func:`dpfm.reference.fixed.round_shift` and :meth:`FixedFormat.saturate`."""

from __future__ import annotations

from amaranth.hdl import Const, Mux, Signal, signed

__all__ = ["round_shift", "saturate", "round_shift_var", "tree_sum", "tree_levels", "round_shift_saturate",
           "SUM_LEVELS_PER_STAGE", "lane_sum_stages", "pipelined_sum"]


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
    """Clamp signed ``x`` to ``fmt`` (a FixedFormat). Returns ``(value, overflow)``.

    For a signed ``x`` and the two's-complement range of ``fmt`` (``-2**(bits-1)`` ..
    ``2**(bits-1) - 1``) the overflow test looks at the bits alone: ``x`` fits when its bits
    from ``bits - 1`` up all equal its sign (a few LUT levels, where the two compares with the
    bounds are two carry chains).
    """
    hi, lo = fmt.max_int, fmt.min_int
    n = fmt.bits
    shape = x.shape()
    if shape.signed and hi == (1 << (n - 1)) - 1 and lo == -(1 << (n - 1)):
        w = shape.width
        if w <= n:                      # every value fits
            return x.as_signed(), Const(0, 1)
        sign = x[w - 1]
        upper = x[n - 1:w - 1]          # the bits that must equal the sign
        over = ~sign & upper.any()
        under = sign & ~upper.all()
    else:
        over = x > hi
        under = x < lo
    value = Mux(over, Const(hi, signed(fmt.bits)), Mux(under, Const(lo, signed(fmt.bits)), x[:fmt.bits].as_signed()))
    return value, over | under


def tree_levels(n: int) -> int:
    """Adder levels of :func:`tree_sum` over ``n`` terms: ``ceil(log2(n))`` (0 for one term)."""
    if n < 1:
        raise ValueError(f"a sum needs at least one term, not {n}")
    return (n - 1).bit_length()


def tree_sum(terms, levels: int | None = None):
    """Sum ``terms`` as a balanced binary tree of two-input adders.

    Python's ``sum`` builds a chain of ``n - 1`` adders, one behind the other; the tree has
    :func:`tree_levels` levels instead.

    Parameters
    ----------
    terms : list of Amaranth values
        The addends (signed or unsigned; each level widens by one bit).
    levels : int, optional
        Stop after this many levels and return the partial sums (a list); by default the
        whole tree is built and the one sum is returned.

    Returns
    -------
    Value or list of Value
        The sum, or with ``levels`` the list of ``ceil(n / 2**levels)`` partial sums whose
        sum is the sum of ``terms``.
    """
    terms = list(terms)
    if not terms:
        raise ValueError("a sum needs at least one term")
    done = 0
    while len(terms) > 1 and (levels is None or done < levels):
        # pair neighbours; an odd one out waits for the next level
        terms = [terms[n] + terms[n + 1] if n + 1 < len(terms) else terms[n]
                 for n in range(0, len(terms), 2)]
        done += 1
    return terms[0] if levels is None else terms


def round_shift_saturate(x, s: int, fmt):
    """``saturate(round_shift(x, s), fmt)`` with a short carry chain: ``(value, overflow)``.

    With ``h = x >> s`` (floor) and ``c = x[s-1]``, ``round_shift(x, s) = h + c``.  The
    overflow is decided on ``h``'s bits alone (``h`` out of range, or ``h`` one step outside
    it that ``c`` does not bring back), in parallel with the ``fmt.bits``-wide increment
    ``h + c`` that gives the value, instead of a full-width add followed by the test.  Falls
    back to the plain expression for ``s <= 0``, an unsigned ``x`` or a format whose range is
    not two's complement.
    """
    hi, lo = fmt.max_int, fmt.min_int
    n = fmt.bits
    shape = x.shape()
    w = shape.width
    if s <= 0 or not shape.signed or hi != (1 << (n - 1)) - 1 or lo != -(1 << (n - 1)) \
            or w - s <= n:
        return saturate(round_shift(x, s), fmt)
    h = x[s:]                                  # w - s bits, two's complement
    c = x[s - 1]
    sign = h[-1]
    upper = h[n - 1:-1]                        # must equal the sign for h to fit
    low = h[:n - 1]
    h_over = ~sign & upper.any()               # h > max
    h_under = sign & ~upper.all()              # h < min
    h_max = ~sign & ~upper.any() & low.all()   # h == max: c pushes it over
    h_below = sign & ~h[n - 1] & h[n:-1].all() & low.all() if w - s > n + 1 else \
        sign & ~h[n - 1] & low.all()           # h == min - 1: c brings it back to min
    over = h_over | (h_max & c)
    under = h_under & ~(h_below & c)
    inc = (h[:n] + c)[:n].as_signed()
    value = Mux(over, Const(hi, signed(n)), Mux(under, Const(lo, signed(n)), inc))
    return value, over | under


#: Adder levels between two registers in the engine's pipelined sums (the delta banks over
#: the lanes in the update passes, the squared errors in the loss pass, the maxima of the
#: update unit's words).
SUM_LEVELS_PER_STAGE = 2


def lane_sum_stages(batch: int) -> int:
    """Register stages of a pipelined reduction (:func:`pipelined_sum`) of ``batch`` terms.

    Parameters
    ----------
    batch : int
        Terms reduced (e.g. the lanes' delta banks), at least 1.

    Returns
    -------
    int
        ``ceil(ceil(log2(batch)) / SUM_LEVELS_PER_STAGE)``: 0 for one term, 1 for 2..4
        terms, 2 for 5..16 (the default batch of 10), 3 for 17..64.
    """
    return -(-tree_levels(batch) // SUM_LEVELS_PER_STAGE)


def pipelined_sum(m, terms, name, *, combine=None):
    """The reduction of ``terms`` through :func:`lane_sum_stages` register stages.

    ``m.d.sync``, no enable: :data:`SUM_LEVELS_PER_STAGE` tree levels per stage.  The result
    is the last stage's register (the single term itself when there is one).  ``combine(a,
    b)`` joins two terms (default ``a + b``, a widening add); the registers take the
    combined value's shape.
    """
    stages = lane_sum_stages(len(terms))
    terms = list(terms)
    for st in range(stages):
        for _ in range(SUM_LEVELS_PER_STAGE):
            if len(terms) == 1:
                break
            terms = [(terms[n] + terms[n + 1] if combine is None else combine(terms[n], terms[n + 1]))
                     if n + 1 < len(terms) else terms[n] for n in range(0, len(terms), 2)]
        regs = []
        for n, v in enumerate(terms):
            r = Signal(v.shape(), name=f"{name}{st + 1}_{n}")
            m.d.sync += r.eq(v)
            regs.append(r)
        terms = regs
    assert len(terms) == 1
    return terms[0]
