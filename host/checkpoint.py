"""Checkpoints of a hardware training run: written atomically, resumed bit for bit.

A checkpoint is JSON: the Config the engine was built for, the run's settings, the number of
epochs done, the weights as weight-format integers (exact), the batch-order generator's
state, the history and the cycle statistics.  :func:`save_checkpoint` writes a temporary
file in the same folder, flushes it to disk and renames it over the old one
(``os.replace``), so an interruption (SIGINT, a crash, a full disk) leaves either the old
checkpoint or the new one, never a torn file.  Resuming loads the weights back into the
engine and continues the generator, so it reaches the same final weights as a run that was
never interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dpfm.files import atomic_path
from dpfm.reference import History

from .trainer import CycleStats, FitState

__all__ = ["save_checkpoint", "load_checkpoint", "state_to_dict", "state_from_dict",
           "CheckpointError", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "dpfm-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another run."""


def state_to_dict(state: FitState, *, config=None, run: dict | None = None) -> dict:
    """The JSON-able form of a :class:`FitState` (plus the Config and run settings)."""
    h = state.history
    c = state.cycles
    return {
        "format": CHECKPOINT_FORMAT,
        "config": None if config is None else {**config.to_dict(), "hash": config.hash},
        "run": dict(run or {}),
        "epoch": int(state.epoch),
        "weights_raw": [int(w) for w in state.weights_raw],
        "rng_state": state.rng_state,
        "history": {"train_loss": list(h.train_loss), "val_loss": list(h.val_loss),
                    "val_accuracy": list(h.val_accuracy), "steps": int(h.steps),
                    "saturations": {k: int(v) for k, v in h.saturations.items()}},
        "cycles": {"steps": c.steps, "total": c.total, "min": c.min, "max": c.max,
                   "mul_busy": c.mul_busy, "merge_busy": c.merge_busy},
    }


def state_from_dict(d: dict) -> FitState:
    h = d["history"]
    hist = History(train_loss=list(h["train_loss"]), val_loss=list(h["val_loss"]),
                   val_accuracy=list(h.get("val_accuracy", [])), steps=int(h["steps"]),
                   saturations=dict(h["saturations"]))
    return FitState(int(d["epoch"]), list(d["weights_raw"]), d["rng_state"], hist,
                    CycleStats(**d.get("cycles", {})))


def save_checkpoint(path, state) -> None:
    """Write ``state`` (a :class:`FitState` or its :func:`state_to_dict`) to ``path``
    atomically: temporary file in the same folder, ``fsync``, ``os.replace``.

    On any failure the temporary file is removed and ``path`` keeps its old content.
    """
    data = state_to_dict(state) if isinstance(state, FitState) else state
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path, *, config=None, run: dict | None = None) -> FitState:
    """Read a checkpoint; with ``config`` / ``run``, check it belongs to that run.

    Raises
    ------
    CheckpointError
        Unreadable file, another format, or a Config or setting that differs (named).
    """
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a DPFM checkpoint ({CHECKPOINT_FORMAT})")
    if config is not None and d.get("config") and d["config"].get("hash") != config.hash:
        raise CheckpointError(f"checkpoint {path} was written for Config "
                              f"0x{d['config']['hash']:08x}, this run is 0x{config.hash:08x}")
    run = json.loads(json.dumps(run or {}))          # tuples as lists, as stored
    for key, value in run.items():
        saved = d.get("run", {}).get(key)
        if key in d.get("run", {}) and saved != value:
            raise CheckpointError(f"checkpoint {path} was written with {key}={saved!r}, "
                                  f"this run has {key}={value!r}")
    try:
        return state_from_dict(d)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is incomplete: {e}") from None
