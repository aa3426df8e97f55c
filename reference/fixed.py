"""Fixed-point number formats of the DPFM datapath, computed on integers.

Every fixed-point quantity in DPFM is a two's complement integer ``q`` that stands for
``q / 2**frac``.  Two operations change a number's format and they are the only ones the
hardware performs:

``round_shift(x, s)``
    Drop ``s`` fractional bits, rounding to nearest with ties toward plus infinity
    (``(x + 2**(s-1)) >> s``, an add and an arithmetic shift in hardware).  A negative ``s``
    shifts left (exact).
``FixedFormat.saturate(x)``
    Clamp to ``[-2**(bits-1), 2**(bits-1) - 1]``.  Every clamp is an *event*: the reference
    counts them and reports them, the hardware raises a sticky flag.  Never silent.

The default formats (:data:`DEFAULT_FORMATS`) are chosen so that every multiply of the
datapath fits one DSP48E1 (signed 25 x 18).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["FixedFormat", "Formats", "DEFAULT_FORMATS", "round_shift", "DSP_A_BITS", "DSP_B_BITS"]

#: Widths of the two signed multiplier ports of a DSP48E1.
DSP_A_BITS = 25
DSP_B_BITS = 18


@dataclass(frozen=True)
class FixedFormat:
    """Signed fixed-point format: ``bits`` in total (sign included), ``frac`` of them fractional.

    Parameters
    ----------
    bits : int
        Total width, 2 <= bits <= 48.
    frac : int
        Fractional bits, 0 <= frac < 63.

    Raises
    ------
    TypeError, ValueError
        On a non-integer or out-of-range width.
    """

    bits: int
    frac: int

    def __post_init__(self):
        for name in ("bits", "frac"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"FixedFormat {name} must be an integer, not {v!r}")
        if not 2 <= self.bits <= 48:
            raise ValueError(f"FixedFormat bits must be in 2..48, not {self.bits}")
        if not 0 <= self.frac < 63:
            raise ValueError(f"FixedFormat frac must be in 0..62, not {self.frac}")

    @classmethod
    def parse(cls, text: str) -> "FixedFormat":
        """``"18.14"`` -> ``FixedFormat(18, 14)``; ValueError with the text otherwise."""
        try:
            bits, frac = (int(p) for p in str(text).split("."))
        except ValueError:
            raise ValueError(f"fixed format must look like BITS.FRAC (e.g. 18.14), not {text!r}") from None
        return cls(bits, frac)

    def __str__(self):
        return f"{self.bits}.{self.frac}"

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def one(self) -> int:
        """The integer that stands for 1.0 (may itself saturate in narrow formats)."""
        return 1 << self.frac

    @property
    def resolution(self) -> float:
        return 2.0 ** -self.frac

    def saturate(self, x):
        """Clamp integer(s) ``x`` to the format. Returns ``(clamped, number_of_clamps)``."""
        x = np.asarray(x, dtype=np.int64)
        lo, hi = self.min_int, self.max_int
        n = int(np.count_nonzero((x < lo) | (x > hi)))
        # np.minimum/np.maximum: np.clip's result, without its per-call overhead
        return np.minimum(np.maximum(x, lo), hi), n

    def quantize(self, x):
        """Float(s) -> integer(s): round to nearest (ties up), then saturate.

        Returns ``(q, number_of_clamps)``.  NaN is refused with ValueError.
        """
        x = np.asarray(x, dtype=np.float64)
        if np.isnan(x).any():
            raise ValueError("cannot quantize NaN")
        scaled = np.floor(x * float(1 << self.frac) + 0.5)
        lo, hi = self.min_int, self.max_int
        n = int(np.count_nonzero((scaled < lo) | (scaled > hi)))
        return np.minimum(np.maximum(scaled, lo), hi).astype(np.int64), n

    def to_float(self, q):
        """Integer(s) -> float64 (exact)."""
        return np.asarray(q, dtype=np.float64) / float(1 << self.frac)


def round_shift(x, s: int):
    """Drop ``s`` fractional bits of integer(s) ``x``: round to nearest, ties toward +inf.

    ``s < 0`` shifts left (exact); ``s == 0`` returns ``x``.  Works on numpy int64 arrays and
    on Python ints (arbitrary width).
    """
    if s > 0:
        # (x + 2**(s-1)) >> s, written so that no intermediate overflows int64
        if isinstance(x, int):
            return ((x >> (s - 1)) + 1) >> 1
        return ((x >> min(s - 1, 63)) + 1) >> 1
    if s < 0:
        return x << (-s)
    return x


#: Widest product (bits_a + bits_b) the int64 reference accepts: leaves 7 bits for sums.
MAX_PRODUCT_BITS = 56


@dataclass(frozen=True)
class Formats:
    """The formats of one DPFM datapath.

    Parameters
    ----------
    value : FixedFormat
        Activations, pre-activations ``z``, inputs and targets (default 24.16: +-128, 2**-16).
    weight : FixedFormat
        Weights and biases (default 18.12: +-32, 2**-12).
    grad : FixedFormat
        Gradient registers (default 18.14: +-8, 2**-14).
    deriv : FixedFormat
        Activation derivatives f'(z) (default 18.16: +-2, 2**-16).

    The delta accumulator (dL/dtheta summed over a batch, before the update) is exact, of
    ``value.frac + grad.frac`` fractional bits, saturated to :attr:`delta` (48 bits, the
    width of a DSP48E1 accumulator).
    """

    value: FixedFormat = field(default_factory=lambda: FixedFormat(24, 16))
    weight: FixedFormat = field(default_factory=lambda: FixedFormat(18, 12))
    grad: FixedFormat = field(default_factory=lambda: FixedFormat(18, 14))
    deriv: FixedFormat = field(default_factory=lambda: FixedFormat(18, 16))

    def __post_init__(self):
        for name in ("value", "weight", "grad", "deriv"):
            if not isinstance(getattr(self, name), FixedFormat):
                raise TypeError(f"Formats.{name} must be a FixedFormat, not {getattr(self, name)!r}")
        for name in ("value", "deriv"):
            f = getattr(self, name)
            if f.one > f.max_int:
                raise ValueError(f"Formats.{name} {f} cannot hold 1.0 (largest {f.max_int} / 2**{f.frac})")
        for name, a, b in self.products():
            if a + b > MAX_PRODUCT_BITS:
                raise ValueError(f"formats too wide for exact integer arithmetic: {name} is {a} x {b} "
                                 f"bits, more than {MAX_PRODUCT_BITS} in all")

    @classmethod
    def uniform(cls, fmt: FixedFormat) -> "Formats":
        """Value, weight and gradient registers in one format; derivatives in 18.16."""
        return cls(value=fmt, weight=fmt, grad=fmt, deriv=FixedFormat(18, 16))

    @property
    def delta(self) -> FixedFormat:
        return FixedFormat(48, self.value.frac + self.grad.frac)

    def products(self):
        """The multiplies of the datapath as ``(name, bits_a, bits_b)``."""
        v, w, g, d = self.value.bits, self.weight.bits, self.grad.bits, self.deriv.bits
        return [
            ("weight x value (pre-activation)", w, v),
            ("weight x grad (DualScale)", w, g),
            ("deriv x grad (activation)", d, g),
            ("error x grad (delta)", v, g),
        ]

    def dsp_misfits(self):
        """Multiplies that do not fit one signed 25 x 18 DSP48E1, as readable strings."""
        bad = []
        for name, a, b in self.products():
            lo, hi = sorted((a, b))
            if lo > DSP_B_BITS or hi > DSP_A_BITS:
                bad.append(f"{name}: {a} x {b} bits exceeds the DSP48E1's {DSP_A_BITS} x {DSP_B_BITS}")
        return bad

    def to_dict(self):
        return {k: str(getattr(self, k)) for k in ("value", "weight", "grad", "deriv")}


DEFAULT_FORMATS = Formats()
