"""The one frozen :class:`Config` that carries every DPFM hardware parameter.

The same object goes into the RTL constructors, the reference model, the testbenches and
the host driver; its :attr:`Config.hash` is what the hardware reports in its CONFIG_HASH
register so the host can check it talks to the hardware it expects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from dpfm.reference.activations import ACTIVATIONS
from dpfm.reference.fixed import DEFAULT_FORMATS, FixedFormat, Formats
from dpfm.reference.mlp import POLICIES, param_layout

__all__ = ["Config", "ConfigError", "DEFAULT_UPDATE_LANES", "MAX_UPDATE_LANES"]

#: Parameters per cycle of the update passes when a Config leaves ``update_lanes`` open: 1.
#: The UpdateUnit costs about 1,200 LUT per parameter of a word (Yosys estimate); with the
#: ten insertion mergers the default engine came to 94 % of the XC7Z020's LUTs and a 12.1 ns
#: worst path at 4 (the loss pass's read-modify-write through the word's element select),
#: 123 % at 8, and at 16 the delta banks of 64-32-10 alone would take about 120 of its 140
#: BRAM36 (docs/engine.md).  Wider words are for a larger part or a leaner selection.
DEFAULT_UPDATE_LANES = 1
#: The most ``update_lanes`` a Config takes.
MAX_UPDATE_LANES = 64


class ConfigError(ValueError):
    """A Config value outside what the hardware can build (message names value and limit)."""


@dataclass(frozen=True)
class Config:
    """Every parameter of one DPFM datapath.

    Parameters
    ----------
    net : tuple of int
        Layer widths, inputs first (default the seed net 4-5-5-1).
    activations : tuple of str
        One per layer.
    k : int
        Gradient registers per activation (1 <= k <= parameters).
    batch : int
        Samples per training step; the engine runs that many sample lanes in lockstep.
    formats : Formats
        Number formats (value, weight, grad, deriv).
    idx_bits : int or None
        Width of a parameter index; ``None`` picks the smallest that holds every index.
    lanes : int or None
        Physical multipliers of a :class:`DualScale` (1..k+1); fewer time-share.  ``None``
        picks ``min(4, k + 1)``.
    update_lanes : int or None
        Parameters the update passes (:class:`~dpfm.rtl.update.UpdateUnit`) move per cycle, a
        power of two (1..64); the weight memory and the delta banks hold words of that many.
        ``None`` picks :data:`DEFAULT_UPDATE_LANES` (at most the next power of two of the
        parameters).
    use_dsp : bool
        Multiplies must map onto DSP48E1 (signed 25 x 18): formats are checked for it.
    policy : str
        Pruning order the hardware implements (a :data:`dpfm.reference.POLICIES` name).

    Raises
    ------
    ConfigError
        Naming the bad value and the limit.
    """

    net: tuple = (4, 5, 5, 1)
    activations: tuple = ("sigmoid", "sigmoid", "linear")
    k: int = 16
    batch: int = 10
    formats: Formats = field(default_factory=lambda: DEFAULT_FORMATS)
    idx_bits: int | None = None
    lanes: int | None = None
    update_lanes: int | None = None
    use_dsp: bool = True
    policy: str = "stream"

    def __post_init__(self):
        object.__setattr__(self, "net", tuple(int(n) for n in self.net))
        object.__setattr__(self, "activations", tuple(self.activations))
        if len(self.net) < 2 or any(n < 1 for n in self.net):
            raise ConfigError(f"net must list at least two positive widths, not {self.net}")
        if len(self.activations) != len(self.net) - 1:
            raise ConfigError(f"net {self.net} has {len(self.net) - 1} layers but "
                              f"{len(self.activations)} activations were given: {self.activations}")
        for a in self.activations:
            if a not in ACTIVATIONS:
                raise ConfigError(f"unknown activation {a!r}; known: {', '.join(ACTIVATIONS)}")
        if self.lanes is None and isinstance(self.k, int):
            object.__setattr__(self, "lanes", min(4, self.k + 1))
        if self.update_lanes is None:
            n = self.n_params
            object.__setattr__(self, "update_lanes", min(DEFAULT_UPDATE_LANES, 1 << (n - 1).bit_length()))
        for name in ("k", "batch", "lanes", "update_lanes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{name} must be an integer, not {v!r}")
        if self.k < 1:
            raise ConfigError(f"k={self.k} is below the minimum of 1 gradient register")
        if self.k > self.n_params:
            raise ConfigError(f"k={self.k} exceeds the {self.n_params} parameters of net {self.net}")
        if self.batch < 1:
            raise ConfigError(f"batch={self.batch} is below the minimum of 1")
        if not 1 <= self.lanes <= self.k + 1:
            raise ConfigError(f"lanes={self.lanes} must be in 1..k+1={self.k + 1}")
        u = self.update_lanes
        if not 1 <= u <= MAX_UPDATE_LANES or u & (u - 1):
            raise ConfigError(f"update_lanes={u} must be a power of two in 1..{MAX_UPDATE_LANES}")
        if not isinstance(self.formats, Formats):
            raise ConfigError(f"formats must be a Formats, not {self.formats!r}")
        need = self.min_idx_bits
        if self.idx_bits is None:
            object.__setattr__(self, "idx_bits", need)
        elif isinstance(self.idx_bits, bool) or not isinstance(self.idx_bits, int) or self.idx_bits < need:
            raise ConfigError(f"idx_bits={self.idx_bits} is too small for {self.n_params} parameters "
                              f"(indices up to {self.n_params - 1} need at least {need} bits)")
        if self.use_dsp:
            bad = self.formats.dsp_misfits()
            if bad:
                raise ConfigError("formats do not fit a DSP48E1: " + "; ".join(bad))
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; known: {', '.join(POLICIES)}")

    # -- derived ----------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return param_layout(self.net)[1]

    @property
    def offsets(self) -> list:
        return param_layout(self.net)[0]

    @property
    def min_idx_bits(self) -> int:
        return max(1, (self.n_params - 1).bit_length())

    @property
    def n_layers(self) -> int:
        return len(self.net) - 1

    @property
    def n_in(self) -> int:
        return self.net[0]

    @property
    def n_out(self) -> int:
        return self.net[-1]

    def registers(self, layer: int) -> int:
        """Register slots of layer ``layer``'s outputs: ``min(k, parameters reachable)``."""
        return min(self.k, self.offsets[layer] + self.net[layer] + 1)

    def to_dict(self) -> dict:
        return {"net": list(self.net), "activations": list(self.activations), "k": self.k,
                "batch": self.batch, "formats": self.formats.to_dict(), "idx_bits": self.idx_bits,
                "lanes": self.lanes, "update_lanes": self.update_lanes, "use_dsp": self.use_dsp, "policy": self.policy}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        d = dict(d)
        if "formats" in d and isinstance(d["formats"], dict):
            d["formats"] = Formats(**{k: FixedFormat.parse(v) for k, v in d["formats"].items()})
        return cls(**d)

    @property
    def hash(self) -> int:
        """32-bit hash of the canonical JSON of :meth:`to_dict` (the CONFIG_HASH register)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")

    def replace(self, **changes) -> "Config":
        return replace(self, **changes)
