"""One training run as a pure function: config dict in, result dict out.

::

    from dpfm.runs import run
    result = run({"backend": "numpy", "task": "sum4", "k": 16, "seed": 0})

:func:`run` is importable and picklable, so a sweep can hand it to a process pool or to a
cluster scheduler (:mod:`dpfm.sweep`).  Everything a run depends on is in its config (data,
initialisation and batch order all come from ``seed``), so the same config gives the same
result in any process.  The config's keys are those of :mod:`dpfm.spec`; the backends are
:mod:`dpfm.backends`.

The result holds the resolved config plus ``multiplies_per_step`` (and ``multiplies``: its
``forward`` and ``combine`` parts, see :func:`dpfm.reference.estimators.multiplies`),
``layer_k`` (the k per layer of ``topk-per-layer``), ``final_train_loss, final_val_loss, min_val_loss,
history, weights_sha256, saturations, wall_s, setup_s, train_s, steps, us_per_step``
(``accuracy`` for classification tasks, ``poly_rows`` for ``poly`` on its default net).
``wall_s`` times the backend's ``train`` call; ``setup_s`` is the part of it spent before
training (building and opening a hardware transport), ``train_s`` the rest, the per-epoch
evaluation of the train and validation loss included; ``us_per_step = train_s / steps``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from dpfm import __version__
from dpfm.reference import param_layout, weights_sha256
from dpfm.reference.estimators import multiplies, resolve_layer_k
from dpfm.reference.scalar import POLY_TRUE
from dpfm.spec import Prepared, prepare

__all__ = ["run", "execute", "TIMING_KEYS"]

#: Result fields that measure time: the only ones two runs of one config may differ in.
TIMING_KEYS = ("wall_s", "setup_s", "train_s", "us_per_step")


def _num(x):
    """Float for JSON: non-finite (a diverged run) becomes None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def execute(prep: Prepared, progress=None) -> dict:
    """Train a :class:`Prepared` run; returns the result dict (see the module docstring).

    ``progress(epoch, history)`` is called after every epoch (``epoch`` from 0).
    """
    spec, task = prep.spec, prep.task
    if hasattr(prep.backend, "warm_up"):
        prep.backend.warm_up(spec)
    t0 = time.perf_counter()
    tr = prep.backend.train(task, spec, progress)
    wall = time.perf_counter() - t0
    n_params = param_layout(spec["net"])[1]
    k_lanes = n_params if spec["k"] == "full" else spec["k"]
    cost = multiplies(spec["net"], spec["estimator"], k_lanes, spec["batch"], spec["layer_k"])
    val = [_num(v) for v in tr.val_loss]
    finite_val = [(v, e) for e, v in enumerate(val, 1) if v is not None]
    finite_train = [(v, e) for e, v in enumerate(tr.train_loss, 1) if _num(v) is not None]
    history = []
    for e in range(len(tr.train_loss)):
        row = {"epoch": e + 1, "train_loss": _num(tr.train_loss[e]),
               "val_loss": val[e] if e < len(val) else None}
        if tr.val_accuracy:
            row["val_accuracy"] = float(tr.val_accuracy[e])
        history.append(row)
    result = {
        "backend": spec["backend"], "task": spec["task"], "data": spec["data"],
        "corpus": spec["corpus"], "n_train": task.n_train, "n_val": task.n_val,
        "net": list(spec["net"]), "activations": list(spec["activations"]),
        "n_params": n_params, "k": spec["k"],
        "registers": n_params if spec["k"] == "full" else min(spec["k"], n_params),
        "epochs": spec["epochs"], "batch": spec["batch"], "lr": spec["lr"],
        "update": spec["update"], "policy": spec["policy"], "seed": spec["seed"],
        "estimator": spec["estimator"],
        "layer_k": (resolve_layer_k(spec["net"], k_lanes, spec["layer_k"])
                    if spec["estimator"] == "topk-per-layer" else None),
        "multiplies_per_step": cost["total"], "multiplies": cost,
        "fixed": tr.formats,
        "final_train_loss": _num(tr.train_loss[-1]) if tr.train_loss else None,
        "final_val_loss": val[-1] if val else None,
        "diverged": not (tr.train_loss and _num(tr.train_loss[-1]) is not None
                         and (not tr.val_loss or val[-1] is not None)),
        "min_val_loss": min(finite_val)[0] if finite_val else None,
        "min_val_epoch": min(finite_val)[1] if finite_val else None,
        "min_train_loss": _num(min(finite_train)[0]) if finite_train else None,
        "min_train_epoch": min(finite_train)[1] if finite_train else None,
        "history": history,
        "weights_sha256": weights_sha256(tr.params),
        "saturations": {k: int(v) for k, v in sorted(tr.saturations.items())},
        "saturation_total": int(sum(tr.saturations.values())),
        "wall_s": wall, "setup_s": tr.setup_s, "train_s": wall - tr.setup_s,
        "steps": int(tr.steps),
        "us_per_step": (wall - tr.setup_s) / tr.steps * 1e6 if tr.steps else None,
        "dpfm_version": __version__,
    }
    for key, value in (getattr(tr, "extra", None) or {}).items():
        result.setdefault(key, value)
    if task.classify:
        result["accuracy"] = float(tr.val_accuracy[-1]) if tr.val_accuracy else None
    if spec["task"] == "poly" and list(spec["net"]) == [2, 4]:
        W = np.asarray(tr.params[:8]).reshape(4, 2)
        b = np.asarray(tr.params[8:12])
        result["poly_rows"] = W.tolist()
        result["poly_bias"] = b.tolist()
        result["poly_max_error"] = float(max(np.max(np.abs(W - np.asarray(POLY_TRUE))),
                                             np.max(np.abs(b))))
    return result


def run(config: dict, progress=None, backend=None) -> dict:
    """Validate and train one run: config dict -> result dict (pure; picklable).

    ``backend`` replaces the registered backend the config names (see :func:`dpfm.spec.prepare`).
    """
    return execute(prepare(config, backend), progress)
