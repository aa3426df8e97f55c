"""dpfm.reference: the numpy golden model of DPFM, the project's single oracle.

- :class:`DualContext` / :class:`Dual`: scalar dual numbers with pruned gradient registers.
- :class:`MLP`: the batch engine (float64 or bit-exact fixed point), with the public
  parameter numbering every part of the project uses.
- :class:`FixedFormat`, :class:`Formats`: number formats, rounding and saturation.
"""

from .fixed import DEFAULT_FORMATS, FixedFormat, Formats, round_shift
from .activations import ACTIVATIONS, ACT_CODES, act_fixed, act_float, act_table
from .ops import dual_scale, new_entry, scale_registers
from .mlp import (MLP, POLICIES, UPDATES, Forward, History, LayerTrace, StepTrace, fixed_update,
                  lr_quantize, param_layout, resolve_k, sgd_scale, weights_sha256)
from .scalar import Dual, DualContext

__all__ = ["DualContext", "Dual", "MLP", "Forward", "History", "LayerTrace", "StepTrace",
           "FixedFormat", "Formats", "DEFAULT_FORMATS", "round_shift", "ACTIVATIONS", "ACT_CODES",
           "act_fixed", "act_float", "act_table", "POLICIES", "UPDATES", "fixed_update",
           "lr_quantize", "param_layout", "resolve_k", "sgd_scale", "weights_sha256",
           "dual_scale", "new_entry", "scale_registers"]
