"""A run's config: its keys, defaults and validation, before anything is trained.

A run is described by a plain, JSON-able *config* dict (see :mod:`dpfm.runs`).  Config keys
(missing keys take these defaults; ``None`` means "the task's default"):

=============  ===========  ==========================================================
key            default      meaning
=============  ===========  ==========================================================
backend        ``"numpy"``  a :data:`dpfm.backends.BACKENDS` name
task           ``"sum4"``   a :data:`dpfm.tasks.TASKS` name (ignored when ``data`` is set)
data           ``None``     path of a user ``.npz`` (see :func:`dpfm.tasks.load_npz`)
corpus         ``None``     rows drawn by a built-in task
net            ``None``     widths, e.g. ``[4, 5, 5, 1]`` or ``"4,5,5,1"``
activations    ``None``     e.g. ``["sigmoid", "sigmoid", "linear"]`` or ``"sigmoid,..."``
k              ``16``       gradient registers per activation, or ``"full"``
epochs         ``None``     task default
batch          ``10``
lr             ``None``     task default (per update rule)
update         ``None``     ``"maxnorm"`` or ``"sgd"``; task default
policy         ``None``     pruning order: exact for numpy, stream (the hardware's) otherwise
seed           ``0``        data, initialisation, batch order and the estimator's draws
estimator      ``"topk"``   a :data:`dpfm.reference.estimators.ESTIMATORS` name; numpy only
                            apart from ``topk``
layer_k        ``None``     ``topk-per-layer``: one k per layer, e.g. ``[2, 8, 32]``
                            or ``"2,8,32"`` (default: the equal-cost rule)
fixed          ``None``     ``"BITS.FRAC"``: one format for the fixed-point backends
save, resume   ``None``     checkpoint paths (host backends)
=============  ===========  ==========================================================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dpfm.backends import get_backend
from dpfm.reference import POLICIES, UPDATES
from dpfm.reference.activations import check_activation
from dpfm.reference.estimators import DEFAULT_ESTIMATOR, check_estimator
from dpfm.tasks import Task, load_npz, load_task

__all__ = ["DEFAULT_CONFIG", "Prepared", "prepare", "parse_k"]

DEFAULT_CONFIG = {
    "backend": "numpy", "task": "sum4", "data": None, "corpus": None, "net": None,
    "activations": None, "k": 16, "epochs": None, "batch": 10, "lr": None, "update": None,
    "policy": None, "seed": 0, "fixed": None, "save": None, "resume": None,
    "estimator": DEFAULT_ESTIMATOR, "layer_k": None,
}


def parse_k(k):
    """``16``, ``"16"`` -> 16; ``"full"`` or ``None`` -> ``"full"``; ValueError otherwise."""
    if k is None or k == "full":
        return "full"
    if isinstance(k, str):
        try:
            k = int(k.strip())
        except ValueError:
            raise ValueError(f"k must be a positive integer or 'full', not {k!r}") from None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be a positive integer or 'full', not {k!r}")
    if k < 1:
        raise ValueError(f"k={k} is below the minimum of 1 gradient register (or use 'full')")
    return int(k)


def _int_list(value, what):
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"{what} must be comma-separated whole numbers like 4,5,5,1, "
                             f"not {value!r}") from None
    value = list(value)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in value):
        raise ValueError(f"{what} must be whole numbers, not {value!r}")
    return [int(v) for v in value]


def _str_list(value):
    if isinstance(value, str):
        return [p.strip() for p in value.split(",")]
    return [str(v) for v in value]


def _positive_int(spec, key, minimum=1):
    v = spec[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{key} must be a whole number, not {v!r}")
    if v < minimum:
        raise ValueError(f"{key}={v} is below the minimum of {minimum}")
    return int(v)


def _fmt_net(net):
    return ",".join(str(n) for n in net)


def _resolve_network(spec, task):
    net = None if spec["net"] is None else _int_list(spec["net"], "net")
    acts = None if spec["activations"] is None else _str_list(spec["activations"])
    if net is None:
        net = list(task.net)
        if acts is not None and len(acts) != len(net) - 1:
            raise ValueError(f"{len(acts)} activations ({','.join(acts)}) given but the "
                             f"{_task_label(task)} net {_fmt_net(net)} has {len(net) - 1} layers")
    if len(net) < 2 or any(n < 1 for n in net):
        raise ValueError(f"net {_fmt_net(net)} must list at least two positive widths "
                         f"(inputs first)")
    if acts is None:
        if len(net) == len(task.net):
            acts = list(task.activations)
        else:       # hidden layers sigmoid, the output as the task's
            acts = ["sigmoid"] * (len(net) - 2) + [task.activations[-1]]
    if len(acts) != len(net) - 1:
        raise ValueError(f"{len(acts)} activations ({','.join(acts)}) given but net "
                         f"{_fmt_net(net)} has {len(net) - 1} layers")
    for a in acts:
        check_activation(a)
    if net[0] != task.n_in:
        raise ValueError(f"net {_fmt_net(net)} does not fit {_task_label(task)}: it takes "
                         f"{_plural(net[0], 'input')} but the data has {_plural(task.n_in, 'column')}")
    if net[-1] != task.n_out:
        raise ValueError(f"net {_fmt_net(net)} does not fit {_task_label(task)}: it has "
                         f"{_plural(net[-1], 'output')} but the targets have "
                         f"{_plural(task.n_out, 'column')}")
    return net, acts


def _plural(n, word):
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _task_label(task):
    return f"data {task.source}" if task.name == "data" else f"task {task.name}"


@dataclass
class Prepared:
    """A validated run: the resolved config, its task data and its backend."""
    spec: dict
    task: Task
    backend: object


def prepare(config, backend=None) -> Prepared:
    """Validate ``config`` and load its data; nothing is trained.

    ``backend`` (an object with the backend protocol, e.g. a
    :class:`~dpfm.backends.HostBackend` over the emulator) replaces the registered backend
    that ``config["backend"]`` names; the spec then carries its ``name``.

    Raises
    ------
    ValueError, TypeError
        (:class:`~dpfm.tasks.TaskError` and :class:`~dpfm.config.ConfigError` are
        ValueErrors) with a message naming the bad value.
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    spec = {**DEFAULT_CONFIG, **config}
    if backend is None:
        backend = get_backend(spec["backend"])
    else:
        spec["backend"] = backend.name
    spec["k"] = parse_k(spec["k"])
    spec["seed"] = _positive_int(spec, "seed", minimum=0)
    spec["batch"] = _positive_int(spec, "batch")
    if spec["data"] is not None:
        if spec["corpus"] is not None:
            raise ValueError("corpus (--corpus) applies to the built-in tasks, not to --data")
        task = load_npz(spec["data"])
        spec["data"] = os.fspath(spec["data"])
    else:
        task = load_task(spec["task"], corpus=spec["corpus"], seed=spec["seed"])
    spec["task"] = task.name
    spec["corpus"] = task.corpus
    spec["net"], spec["activations"] = _resolve_network(spec, task)
    if spec["update"] is None:
        spec["update"] = task.update
    if spec["update"] not in UPDATES:
        raise ValueError(f"unknown update {spec['update']!r}; known: {', '.join(UPDATES)}")
    if spec["estimator"] is None:
        spec["estimator"] = DEFAULT_ESTIMATOR
    if spec["layer_k"] is not None:
        spec["layer_k"] = _int_list(spec["layer_k"], "layer_k (--layer-k)")
    check_estimator(spec["estimator"], spec["layer_k"], len(spec["net"]) - 1)
    if spec["estimator"] not in ("topk", "topk-per-layer") and spec["policy"] not in (None, "exact"):
        raise ValueError(f"policy={spec['policy']!r} (--policy) applies to the top-k estimators; "
                         f"{spec['estimator']!r} sums exactly")
    if spec["policy"] is None:      # numpy: the definition; the others model the hardware
        spec["policy"] = "exact" if spec["backend"] == "numpy" else "stream"
    if spec["policy"] not in POLICIES:
        raise ValueError(f"unknown policy {spec['policy']!r}; known: {', '.join(POLICIES)}")
    if spec["epochs"] is None:
        spec["epochs"] = task.default(spec["update"], "epochs")
    spec["epochs"] = _positive_int(spec, "epochs")
    if spec["lr"] is None:
        spec["lr"] = task.default(spec["update"], "lr")
    try:
        spec["lr"] = float(spec["lr"])
    except (TypeError, ValueError):
        raise ValueError(f"lr must be a number, not {spec['lr']!r}") from None
    if not (math.isfinite(spec["lr"]) and spec["lr"] > 0):
        raise ValueError(f"lr must be a positive number, not {spec['lr']!r}")
    if spec["fixed"] is not None:
        spec["fixed"] = str(spec["fixed"])
    if hasattr(backend, "check"):
        backend.check(spec)
    return Prepared(spec, task, backend)
