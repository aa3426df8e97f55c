"""Training tasks of the ``dpfm`` command line: data, default network, default settings.

Every loader returns a :class:`Task`: train and validation arrays (2-D float64, targets as
columns), the network the task trains by default, and the learning rate and epochs it uses
when the user gives none (per update rule).

``sum4``
    The seed's experiment: ``X ~ U(0,1)^(N x 4)`` from ``numpy.random.default_rng(seed)``,
    ``y`` the row sum; the first 80 % of the rows train, the last 20 % validate.
    Net 4-5-5-1 (sigmoid, sigmoid, linear), batch 10, 250 epochs, lr 0.01.
``poly``
    The seed's linear system ``A * B = C``: rows ``(a, b)`` of
    :func:`dpfm.reference.scalar.poly_data` map to ``a+b, a+2b, 10a+2b, 2a+5b``.  Net 2-4,
    one linear layer (with biases, which learn 0); the weight rows converge to
    :data:`~dpfm.reference.scalar.POLY_TRUE`.  Default update ``sgd`` (the seed's plain
    gradient descent).
``digits``
    scikit-learn's bundled ``load_digits`` (1797 8x8 images, no download), pixels / 16 in
    [0, 1], one-hot targets (10 columns); a seeded shuffle, then 80/20.  Net 64-16-10
    (sigmoid, sigmoid), classification (accuracy reported).
``cancer``
    scikit-learn's bundled ``load_breast_cancer`` (569 tumours, 30 measurements, malignant or
    benign; no download): a seeded shuffle, 80/20, every column standardised with the
    training rows' mean and standard deviation; one-hot targets (2 columns).  Net 30-8-2
    (sigmoid, sigmoid), classification (accuracy reported).
``--data FILE.npz``
    The user's arrays ``X_train, y_train, X_val, y_val`` (see :func:`load_npz`).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dpfm.reference.scalar import poly_data

__all__ = ["Task", "TaskError", "TASKS", "TASK_HELP", "load_task", "load_npz", "sum4", "poly",
           "digits", "cancer", "split_80_20", "DATA_KEYS"]

#: Arrays a ``--data`` file must hold.
DATA_KEYS = ("X_train", "y_train", "X_val", "y_val")


class TaskError(ValueError):
    """A task or data file that cannot be used; the message is one sentence naming the problem."""


@dataclass(frozen=True, eq=False)
class Task:
    """Data and defaults of one training task.

    Parameters
    ----------
    name : str
        ``sum4``, ``poly``, ``digits`` or ``data`` (a user file).
    X_train, y_train, X_val, y_val : ndarray
        2-D float64; ``y`` has one column per network output.
    net : tuple of int
        Default layer widths, inputs first.
    activations : tuple of str
        Default activation of each layer.
    classify : bool
        One-hot targets: the run also reports accuracy.
    update : str
        Default update rule.
    defaults : dict
        ``{update: {"lr": float, "epochs": int}}`` used when the user gives none.
    corpus : int or None
        Rows drawn (train + validation) for generated tasks.
    source : str or None
        The file a ``data`` task was read from.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    net: tuple
    activations: tuple
    classify: bool = False
    update: str = "maxnorm"
    defaults: dict = field(default_factory=dict)
    corpus: int | None = None
    source: str | None = None

    @property
    def n_in(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_out(self) -> int:
        return self.y_train.shape[1]

    @property
    def n_train(self) -> int:
        return self.X_train.shape[0]

    @property
    def n_val(self) -> int:
        return self.X_val.shape[0]

    def default(self, update: str, key: str):
        """Default ``lr`` or ``epochs`` of this task for ``update``."""
        return self.defaults[update][key]


#: What ``dpfm train --help`` says about each task's defaults (kept next to the numbers).
TASK_HELP = {
    "sum4": "seed's y = sum(x), X ~ U(0,1)^(Nx4), net 4,5,5,1 sigmoid,sigmoid,linear; "
            "maxnorm and sgd: lr 0.01, 250 epochs",
    "poly": "seed's linear system, net 2,4 linear; default update sgd (lr 0.1, 50 epochs), "
            "maxnorm lr 0.003, 150 epochs",
    "digits": "scikit-learn load_digits, net 64,16,10 sigmoid,sigmoid, accuracy reported; "
              "maxnorm lr 0.03, sgd lr 5.0; 30 epochs",
    "cancer": "scikit-learn load_breast_cancer, standardised, net 30,8,2 sigmoid,sigmoid, "
              "accuracy reported; maxnorm lr 0.03, sgd lr 0.5; 30 epochs",
    "data": "--data FILE.npz, net IN,5,5,OUT sigmoid,sigmoid,linear; lr 0.01, 250 epochs",
}

_SUM4_DEFAULTS = {"maxnorm": {"lr": 0.01, "epochs": 250}, "sgd": {"lr": 0.01, "epochs": 250}}
_POLY_DEFAULTS = {"maxnorm": {"lr": 0.003, "epochs": 150}, "sgd": {"lr": 0.1, "epochs": 50}}
_DIGITS_DEFAULTS = {"maxnorm": {"lr": 0.03, "epochs": 30}, "sgd": {"lr": 5.0, "epochs": 30}}
_CANCER_DEFAULTS = {"maxnorm": {"lr": 0.03, "epochs": 30}, "sgd": {"lr": 0.5, "epochs": 30}}
_DATA_DEFAULTS = {"maxnorm": {"lr": 0.01, "epochs": 250}, "sgd": {"lr": 0.01, "epochs": 250}}

DEFAULT_CORPUS = 400


def split_80_20(X, y):
    """First 80 % of the rows train (``4*N // 5``), the rest validate."""
    n_train = (4 * len(X)) // 5
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _check_corpus(corpus, limit=None, what="corpus"):
    if isinstance(corpus, bool) or not isinstance(corpus, (int, np.integer)):
        raise TaskError(f"{what} must be a whole number of rows, not {corpus!r}")
    if corpus < 5:
        raise TaskError(f"{what}={corpus} is too small: the 80/20 split needs at least 5 rows")
    if limit is not None and corpus > limit:
        raise TaskError(f"{what}={corpus} exceeds the {limit} rows the data set has")
    return int(corpus)


def sum4(corpus=DEFAULT_CORPUS, seed=0) -> Task:
    """The seed's task: ``y = x1 + x2 + x3 + x4`` on ``X ~ U(0,1)^(corpus x 4)``."""
    n = _check_corpus(DEFAULT_CORPUS if corpus is None else corpus)
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.0, 1.0, size=(n, 4))
    y = X.sum(axis=1, keepdims=True)
    return Task("sum4", *split_80_20(X, y), net=(4, 5, 5, 1),
                activations=("sigmoid", "sigmoid", "linear"), defaults=_SUM4_DEFAULTS, corpus=n)


def poly(corpus=DEFAULT_CORPUS, seed=0) -> Task:
    """The seed's linear system (:func:`dpfm.reference.scalar.poly_data`), (N, 2) -> (N, 4)."""
    n = _check_corpus(DEFAULT_CORPUS if corpus is None else corpus)
    X, Y = poly_data(n, seed)
    return Task("poly", *split_80_20(X, Y), net=(2, 4), activations=("linear",), update="sgd",
                defaults=_POLY_DEFAULTS, corpus=n)


@lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = d.data.astype(np.float64) / 16.0
    Y = np.eye(10)[d.target]
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


def digits(corpus=None, seed=0) -> Task:
    """scikit-learn's ``load_digits``: a seeded shuffle, the first ``corpus`` rows, then 80/20."""
    X, Y = _digits_arrays()
    n = len(X) if corpus is None else _check_corpus(corpus, limit=len(X))
    order = np.random.default_rng(seed).permutation(len(X))[:n]
    return Task("digits", *split_80_20(X[order], Y[order]), net=(64, 16, 10),
                activations=("sigmoid", "sigmoid"), classify=True, defaults=_DIGITS_DEFAULTS,
                corpus=n)


@lru_cache(maxsize=1)
def _cancer_arrays():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    X = d.data.astype(np.float64)
    Y = np.eye(2)[d.target]
    X.setflags(write=False)
    Y.setflags(write=False)
    return X, Y


def cancer(corpus=None, seed=0) -> Task:
    """scikit-learn's ``load_breast_cancer``: a seeded shuffle, the first ``corpus`` rows,
    80/20, then every column standardised by the training rows (mean 0, standard deviation 1
    there; a constant column is only centred)."""
    X, Y = _cancer_arrays()
    n = len(X) if corpus is None else _check_corpus(corpus, limit=len(X))
    order = np.random.default_rng(seed).permutation(len(X))[:n]
    Xt, yt, Xv, yv = split_80_20(X[order], Y[order])
    mean, std = Xt.mean(axis=0), Xt.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return Task("cancer", (Xt - mean) / std, yt, (Xv - mean) / std, yv, net=(30, 8, 2),
                activations=("sigmoid", "sigmoid"), classify=True, defaults=_CANCER_DEFAULTS,
                corpus=n)


_LOADERS = {"sum4": sum4, "poly": poly, "digits": digits, "cancer": cancer}
#: Names of the built-in tasks.
TASKS = tuple(_LOADERS)


def load_task(name, corpus=None, seed=0) -> Task:
    """A built-in task by name; TaskError naming the known ones otherwise."""
    if name not in _LOADERS:
        raise TaskError(f"unknown task {name!r}; known: {', '.join(TASKS)} (or --data FILE.npz)")
    return _LOADERS[name](corpus=corpus, seed=seed)


def _array(path, z, key):
    a = z[key]
    if a.dtype.kind not in "biuf":
        raise TaskError(f"{path}: {key} must hold real numbers, not dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64)
    if key.startswith("y") and a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise TaskError(f"{path}: {key} must be a 2-D array (rows x columns), not shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise TaskError(f"{path}: {key} is empty (shape {a.shape})")
    bad = ~np.isfinite(a)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        what = "NaN" if np.isnan(a[r, c]) else "infinite"
        raise TaskError(f"{path}: {key} holds {int(bad.sum())} non-finite value(s), "
                        f"the first ({what}) at row {r}, column {c}")
    return a


def _one_hot(y):
    return y.shape[1] >= 2 and bool(np.all((y == 0) | (y == 1))) and bool(np.all(y.sum(axis=1) == 1))


def load_npz(path) -> Task:
    """A user's data set: an ``.npz`` holding ``X_train, y_train, X_val, y_val``.

    Arrays must be 2-D real numbers (a 1-D ``y`` becomes one column), all finite, with
    matching rows (``X_train``/``y_train``, ``X_val``/``y_val``) and the same widths in train
    and validation.  One-hot targets (every row a single 1) make it a classification task.
    The default network is ``IN,5,5,OUT`` (sigmoid, sigmoid, linear).

    Raises
    ------
    TaskError
        One sentence naming the file and the problem.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TaskError(f"data file {path} does not exist")
    if os.path.isdir(path):
        raise TaskError(f"data file {path} is a directory, not an .npz file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise TaskError(f"{path} is a single .npy array, not an .npz archive holding "
                            f"{', '.join(DATA_KEYS)}")
        with z:
            missing = [k for k in DATA_KEYS if k not in z.files]
            if missing:
                raise TaskError(f"{path} lacks {', '.join(missing)} (it holds: "
                                f"{', '.join(z.files) or 'nothing'}; needs {', '.join(DATA_KEYS)})")
            Xt, yt, Xv, yv = (_array(path, z, k) for k in DATA_KEYS)
    except TaskError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise TaskError(f"{path} is not a readable .npz archive ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    for X, y, part in ((Xt, yt, "train"), (Xv, yv, "val")):
        if len(X) != len(y):
            raise TaskError(f"{path}: X_{part} has {len(X)} rows but y_{part} has {len(y)}")
    if Xt.shape[1] != Xv.shape[1]:
        raise TaskError(f"{path}: X_train has {Xt.shape[1]} columns but X_val has {Xv.shape[1]}")
    if yt.shape[1] != yv.shape[1]:
        raise TaskError(f"{path}: y_train has {yt.shape[1]} columns but y_val has {yv.shape[1]}")
    classify = _one_hot(yt) and _one_hot(yv)
    return Task("data", Xt, yt, Xv, yv, net=(Xt.shape[1], 5, 5, yt.shape[1]),
                activations=("sigmoid", "sigmoid", "linear"), classify=classify,
                defaults=_DATA_DEFAULTS, source=path)
