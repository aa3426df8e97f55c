"""One training run as a pure function, the backends that execute it, and run output files.

A run is described by a plain, JSON-able *config* dict and produces a plain *result* dict::

    from dpfm.runs import run
    result = run({"backend": "numpy", "task": "sum4", "k": 16, "seed": 0})

:func:`run` is importable and picklable, so a sweep can hand it to a process pool (as
``dpfm sweep`` does with :func:`run_many`) or to a cluster scheduler.  Everything a run
depends on is in its config (data, initialisation and batch order all come from ``seed``), so
the same config gives the same result in any process.

Config keys (missing keys take these defaults; ``None`` means "the task's default"):

=============  ===========  ==========================================================
key            default      meaning
=============  ===========  ==========================================================
backend        ``"numpy"``  a :data:`BACKENDS` name
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
seed           ``0``        data, initialisation and batch order
fixed          ``None``     ``"BITS.FRAC"``: one format for the fixed backend
=============  ===========  ==========================================================

The result holds the resolved config plus ``final_train_loss, final_val_loss, min_val_loss,
history, weights_sha256, saturations, wall_s, steps, us_per_step`` (``accuracy`` for
classification tasks, ``poly_rows`` for ``poly`` on its default net).  ``wall_s`` times the
backend's ``train`` call, the per-epoch evaluation of the train and validation loss included;
``us_per_step = wall_s / steps``.

Backends
--------
A backend is an object with one method ``train(task, spec, progress) -> Trained``, an
optional ``check(spec)`` that validates backend-specific options before anything runs, and an
optional ``warm_up(spec)`` run before the timer starts (JIT compilation, loading a bitstream).
:data:`BACKENDS` maps names to backends; a backend that lives in a module of its own is
registered as :class:`LazyBackend` ``(module)`` and imported only when used, its module
providing a ``backend`` attribute.
"""

from __future__ import annotations

import gc
import importlib
import json
import math
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from dpfm import __version__
from dpfm.reference import MLP, POLICIES, UPDATES, FixedFormat, Formats, param_layout, weights_sha256
from dpfm.reference.activations import check_activation
from dpfm.reference.scalar import POLY_TRUE
from dpfm.tasks import Task, load_npz, load_task

__all__ = ["run", "prepare", "execute", "run_many", "run_on_dask", "SchedulerError",
           "SCHEDULER_TIMEOUT_S", "sweep_configs", "Prepared", "Trained",
           "ReferenceBackend", "LazyBackend", "BackendUnavailable", "BACKENDS", "get_backend",
           "DEFAULT_CONFIG", "parse_k", "check_output_path", "atomic_path", "write_json"]

DEFAULT_CONFIG = {
    "backend": "numpy", "task": "sum4", "data": None, "corpus": None, "net": None,
    "activations": None, "k": 16, "epochs": None, "batch": 10, "lr": None, "update": None,
    "policy": None, "seed": 0, "fixed": None, "save": None, "resume": None,
}


class BackendUnavailable(ValueError):
    """The backend exists in name but cannot run here (not implemented yet, or a missing module)."""


# -- backends -----------------------------------------------------------------------------

@dataclass
class Trained:
    """What a backend's ``train`` returns.

    ``params`` are the final parameters in the public order (float64; in fixed point their
    exact values); ``train_loss``/``val_loss``/``val_accuracy`` one entry per epoch;
    ``formats`` the number formats used (``Formats.to_dict()``) or ``None`` for float;
    ``extra`` backend-specific result fields (cycle counts, hardware config, ...), added to
    the result without replacing any of the common ones.
    """
    params: np.ndarray
    train_loss: list
    val_loss: list
    val_accuracy: list = field(default_factory=list)
    steps: int = 0
    saturations: dict = field(default_factory=dict)
    formats: dict | None = None
    extra: dict = field(default_factory=dict)


class ReferenceBackend:
    """The golden model, :class:`dpfm.reference.MLP`, in float64 or bit-exact fixed point.

    Parameters
    ----------
    fixed : bool
        Train in fixed point: the default :class:`~dpfm.reference.Formats`, or
        ``Formats.uniform(FixedFormat.parse(spec["fixed"]))`` when the config names one.
    """

    def __init__(self, fixed: bool):
        self.fixed = fixed

    def formats(self, spec):
        if not self.fixed:
            return None
        if spec["fixed"] is None:
            return Formats()
        try:
            return Formats.uniform(FixedFormat.parse(spec["fixed"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad fixed format {spec['fixed']!r} (--fixed BITS.FRAC): {e}") from None

    def check(self, spec):
        for key in ("save", "resume"):
            if spec.get(key) is not None:
                raise ValueError(f"--{key} needs a hardware backend (verilator or pynq), "
                                 f"not {spec['backend']!r}")
        if not self.fixed and spec["fixed"] is not None:
            raise ValueError(f"fixed={spec['fixed']!r} (--fixed) applies only to the fixed backend, "
                             f"not to {spec['backend']!r}")
        self.formats(spec)          # ValueError on a bad BITS.FRAC

    def warm_up(self, spec):
        """Load the numba kernels for this number type (a 2-step run on a tiny net), so
        the timed run measures training, not JIT compilation or cache loading."""
        fmt = self.formats(spec)
        X = np.full((2, 2), 0.5)
        net = MLP([2, 2, 1], ["sigmoid", "linear"], seed=0)
        net.fit(X, X[:, :1], k=2, epochs=1, batch=1, lr=0.01, update=spec["update"],
                validation=(X, X[:, :1]), fmt=fmt, policy=spec["policy"])

    def train(self, task: Task, spec: dict, progress=None) -> Trained:
        fmt = self.formats(spec)
        net = MLP(spec["net"], spec["activations"], seed=spec["seed"])
        with np.errstate(over="ignore", invalid="ignore"):    # a diverging run: see "diverged"
            hist = net.fit(task.X_train, task.y_train, k=spec["k"], epochs=spec["epochs"],
                           batch=spec["batch"], lr=spec["lr"], update=spec["update"],
                           validation=(task.X_val, task.y_val), fmt=fmt, policy=spec["policy"],
                           seed=spec["seed"], progress=progress, classify=task.classify)
        return Trained(net.params.copy(), list(hist.train_loss), list(hist.val_loss),
                       list(hist.val_accuracy), hist.steps, dict(hist.saturations),
                       None if fmt is None else fmt.to_dict())


class LazyBackend:
    """A backend defined in ``module`` (its ``backend`` attribute), imported on first use.

    Until that module exists, using the backend raises :class:`BackendUnavailable`.
    """

    def __init__(self, name: str, module: str, attr: str = "backend"):
        self.name, self.module, self.attr = name, module, attr

    def resolve(self):
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as e:
            if e.name and (self.module == e.name or self.module.startswith(e.name + ".")):
                raise BackendUnavailable(f"backend {self.name!r} is not available yet "
                                         f"(module {self.module} does not exist)") from None
            raise BackendUnavailable(f"backend {self.name!r} cannot load: module {e.name} "
                                     f"is not installed") from None
        try:
            return getattr(mod, self.attr)
        except AttributeError:
            raise BackendUnavailable(f"backend {self.name!r} is not available yet "
                                     f"({self.module} defines no {self.attr!r})") from None

    def check(self, spec):
        inner = self.resolve()
        if hasattr(inner, "check"):
            inner.check(spec)

    def warm_up(self, spec):
        inner = self.resolve()
        if hasattr(inner, "warm_up"):
            inner.warm_up(spec)

    def train(self, task, spec, progress=None):
        return self.resolve().train(task, spec, progress)


#: Backend name -> backend.  ``verilator`` and ``pynq`` arrive with the host driver.
BACKENDS = {
    "numpy": ReferenceBackend(fixed=False),
    "fixed": ReferenceBackend(fixed=True),
    "verilator": LazyBackend("verilator", "dpfm.host.verilator"),
    "pynq": LazyBackend("pynq", "dpfm.host.pynq"),
}


def get_backend(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name]


# -- config validation --------------------------------------------------------------------

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


def prepare(config) -> Prepared:
    """Validate ``config`` and load its data; nothing is trained.

    Raises
    ------
    ValueError, TypeError
        (:class:`~dpfm.tasks.TaskError`, :class:`BackendUnavailable` are ValueErrors) with
        a message naming the bad value.
    """
    unknown = set(config) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
    spec = {**DEFAULT_CONFIG, **config}
    backend = get_backend(spec["backend"])
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


# -- running ------------------------------------------------------------------------------

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
        "wall_s": wall, "steps": int(tr.steps),
        "us_per_step": wall / tr.steps * 1e6 if tr.steps else None,
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


def run(config: dict, progress=None) -> dict:
    """Validate and train one run: config dict -> result dict (pure; picklable)."""
    return execute(prepare(config), progress)


def sweep_configs(base: dict, ks, corpora) -> list:
    """One config per ``corpus x k`` (corpus outer), each a copy of ``base``."""
    return [{**base, "corpus": c, "k": k} for c in corpora for k in ks]


def run_many(configs, jobs=None, on_done=None, scheduler=None) -> list:
    """Run every config, in parallel over ``jobs`` local processes (``None``: every core), or
    on the Dask cluster whose scheduler listens at ``scheduler`` (see :func:`run_on_dask`).

    Results come back in the order of ``configs`` whatever order the runs finish in, and are
    identical to running serially (each run depends only on its config).
    ``on_done(index, result)`` is called in the calling process as each run finishes.

    Raises
    ------
    ValueError
        ``jobs`` below 1, or both ``jobs`` and ``scheduler`` given.
    SchedulerError
        ``scheduler`` given and it cannot be used (see :func:`run_on_dask`).
    """
    if scheduler is not None:
        if jobs is not None:
            raise ValueError(f"jobs={jobs} and scheduler={scheduler!r} exclude each other: "
                             "the cluster's workers set the parallelism")
        return run_on_dask(configs, scheduler, on_done)
    configs = list(configs)
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs={jobs} is below the minimum of 1")
    jobs = min(jobs, len(configs))
    results = [None] * len(configs)
    if jobs <= 1:
        for i, c in enumerate(configs):
            results[i] = run(c)
            if on_done:
                on_done(i, results[i])
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, c): i for i, c in enumerate(configs)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(i, results[i])
    return results


#: Seconds :func:`run_on_dask` waits for the scheduler to answer before giving up.
SCHEDULER_TIMEOUT_S = 10


class SchedulerError(Exception):
    """A Dask scheduler cannot be used: ``dask.distributed`` is not installed, or the
    address is malformed or does not answer within :data:`SCHEDULER_TIMEOUT_S`."""


def _connect(address, timeout):
    try:
        from distributed import Client
    except ImportError as e:
        raise SchedulerError(f"running on a Dask cluster needs dask.distributed "
                             f"(pip install 'dask[distributed]'): {e}") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, ValueError) as e:      # TimeoutError is an OSError
        message = " ".join(str(e).split()) or type(e).__name__
    # A Client whose start failed still holds its event loop; collect it now, while the loop
    # runs, or its __del__ tries to close it at interpreter exit and prints a traceback.
    gc.collect()
    raise SchedulerError(f"cannot use the Dask scheduler at {address}: {message}")


def run_on_dask(configs, address, on_done=None, timeout=None) -> list:
    """Run every config on the Dask cluster whose scheduler listens at ``address``
    (``tcp://host:8786``), one task per config; results in the order of ``configs``.

    ``dask.distributed`` is imported here, and only here.  Every worker must have the same
    ``dpfm`` (and numpy) installed, and any ``data`` file at the same path; each result
    records the ``dpfm_version`` that produced it.  ``on_done(index, result)`` is called in
    the calling process as each run finishes.  The connection waits at most ``timeout``
    seconds (default :data:`SCHEDULER_TIMEOUT_S`); runs wait for workers as long as it takes.

    Raises
    ------
    SchedulerError
        Before any run is submitted, when the scheduler cannot be used.
    """
    configs = list(configs)
    client = _connect(address, SCHEDULER_TIMEOUT_S if timeout is None else timeout)
    try:
        from distributed import as_completed as dask_as_completed

        # pure=False: every config is its own task, even if two configs are equal.
        futures = client.map(run, configs, pure=False)
        index = {fut.key: i for i, fut in enumerate(futures)}
        results = [None] * len(configs)
        for fut in dask_as_completed(futures, loop=client.loop):
            i = index[fut.key]
            results[i] = fut.result()
            if on_done:
                on_done(i, results[i])
        return results
    finally:
        client.close()


# -- output files -------------------------------------------------------------------------

def check_output_path(path, what="output"):
    """Make sure ``path`` can be written, before any work: ValueError naming the problem.

    The parent directory must exist and accept a new file (probed by creating and removing a
    temporary file there); ``path`` itself must not be a directory.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"cannot write {what} {path}: it is a directory")
    if not os.path.exists(parent):
        raise ValueError(f"cannot write {what} {path}: directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise ValueError(f"cannot write {what} {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dpfm-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write {what} {path}: directory {parent} is not writable "
                         f"({e.strerror or e})") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {what} {path}: the existing file is read-only")


@contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s directory (same suffix); on success it replaces
    ``path`` atomically (``os.replace``), on an exception it is removed."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1], dir=parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _scalar(x):
    return not isinstance(x, (dict, list, tuple))


def dumps(obj, level=0) -> str:
    """JSON, indented, with every container of scalars kept on one line (a history row, a
    net, a list of k) so results stay readable.  NaN and infinities are refused."""
    if _scalar(obj) or all(_scalar(v) for v in (obj.values() if isinstance(obj, dict) else obj)):
        return json.dumps(obj, allow_nan=False)
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    items = [f"{inner}{dumps(v, level + 1)}" for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + pad + "]"


def write_json(path, obj):
    """Write ``obj`` as JSON (:func:`dumps`), atomically."""
    text = dumps(obj) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
