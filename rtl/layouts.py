"""Payload layouts shared by the DPFM streams.

Every block that passes gradient registers around (``DualScale``, ``TopKMerger``, the engine)
builds its ``amaranth.lib.stream`` signatures from these functions, so a payload has one
definition.  All layouts are computed from a :class:`dpfm.config.Config` and cached per config.

Number format
-------------
A gradient register is a pair (parameter index, partial).  ``idx`` is an unsigned parameter
index of ``config.idx_bits`` bits; ``val`` is the partial in the gradient format
``config.formats.grad``: a two's complement integer of ``grad.bits`` bits standing for
``val / 2**grad.frac``.  A register with ``val == 0`` is *empty*; its ``idx`` is then
don't-care (the reference writes -1 there).
"""

from __future__ import annotations

from functools import lru_cache

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

__all__ = ["entry_layout", "candidate_layout", "registers_layout"]


@lru_cache(maxsize=None)
def entry_layout(config) -> data.StructLayout:
    """One gradient register.

    Parameters
    ----------
    config : dpfm.config.Config

    Returns
    -------
    data.StructLayout
        ``idx``: ``unsigned(config.idx_bits)``, the parameter index;
        ``val``: ``signed(config.formats.grad.bits)``, the partial in the gradient format
        (two's complement, ``grad.frac`` fractional bits).  ``val == 0`` marks an empty
        register (``idx`` don't-care).
    """
    return data.StructLayout({
        "idx": unsigned(config.idx_bits),
        "val": signed(config.formats.grad.bits),
    })


@lru_cache(maxsize=None)
def candidate_layout(config) -> data.StructLayout:
    """One entry offered to a top-k merge, with an end-of-list mark.

    Parameters
    ----------
    config : dpfm.config.Config

    Returns
    -------
    data.StructLayout
        ``idx`` and ``val`` as in :func:`entry_layout` (a candidate with ``val == 0`` changes
        nothing), and ``last``: 1 bit, high on the final candidate of a list.
    """
    return data.StructLayout({
        "idx": unsigned(config.idx_bits),
        "val": signed(config.formats.grad.bits),
        "last": 1,
    })


@lru_cache(maxsize=None)
def registers_layout(config, k=None) -> data.ArrayLayout:
    """The gradient registers of one activation.

    Parameters
    ----------
    config : dpfm.config.Config
    k : int, optional
        Number of registers; ``config.k`` when omitted.

    Returns
    -------
    data.ArrayLayout
        ``k`` elements of :func:`entry_layout`.  Lists produced by the merger are sorted by
        (``|val|`` descending, ``idx`` ascending) with empty registers (``val == 0``) last.

    Raises
    ------
    ValueError
        If ``k`` is given and is not a positive integer.
    """
    if k is None:
        k = config.k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"registers_layout k must be a positive integer, not {k!r}")
    return data.ArrayLayout(entry_layout(config), k)
