"""What the experiments run: the plan, its groups and cells, and a runner that runs each
distinct config once."""

from __future__ import annotations

import json
from dataclasses import dataclass

from dpfm.reference.estimators import ESTIMATORS
from dpfm.spec import prepare
from dpfm.sweep import run_many


PROG = "python -m dpfm.experiments"

#: Experiment groups, in the order they run and appear in the JSON.
GROUPS = ("sum4_k", "sum4_corpus", "sum4_fixed", "digits_k", "estimators")

#: Figures written to ``OUT/figures``.
FIGURES = ("sum4_k_sweep.png", "sum4_vs_full.png", "sum4_val_vs_epoch.png", "sum4_corpus.png",
           "sum4_fixed.png", "digits_accuracy.png", "digits_accuracy_vs_epoch.png",
           "estimators_loss_vs_k.png", "estimators_accuracy_vs_k.png",
           "estimators_val_vs_epoch.png")

JSON_NAME = "experiments.json"
MD_NAME = "experiments.md"


@dataclass(frozen=True)
class Plan:
    """What to run.  ``FULL`` is the documented experiment, ``QUICK`` a smoke test."""
    seeds: tuple
    arms: tuple                    # sum4: (update, lr) pairs
    sum4_ks: tuple
    sum4_corpus: int
    sum4_epochs: int
    batch: int
    corpora: tuple
    fixed_ks: tuple
    digits_ks: tuple
    digits_arms: tuple             # (update, lr), lr None: the task's default
    digits_epochs: int
    digits_seeds: tuple
    digits_corpus: int | None      # None: all 1797 rows
    est_tasks: tuple               # estimators: (task, corpus, epochs); corpus None: all rows
    est_ks: tuple                  # estimators: k (lanes per activation); dense beside them
    est_seeds: tuple


#: sum4 update rules: the seed's (maxnorm, lr 0.01, as ``dpfm train``'s demo), plain SGD at the
#: same lr 0.01 (Keras' default, the seed's TensorFlow baseline), and SGD at lr 0.1 (converges
#: within 250 epochs; lr 0.01 does not).
SUM4_ARMS = (("maxnorm", 0.01), ("sgd", 0.01), ("sgd", 0.1))
#: digits: both update rules at the task's default learning rates.
DIGITS_ARMS = (("maxnorm", None), ("sgd", None))

FULL = Plan(seeds=(0, 1, 2, 3, 4), arms=SUM4_ARMS, sum4_ks=(2, 4, 8, 16, 32, "full"),
            sum4_corpus=400, sum4_epochs=250, batch=10, corpora=(50, 100, 200, 400),
            fixed_ks=(2, 4, 16, "full"), digits_ks=(4, 16, 64, "full"), digits_arms=DIGITS_ARMS,
            digits_epochs=30, digits_seeds=(0, 1, 2), digits_corpus=None,
            est_tasks=(("sum4", 400, 250), ("digits", None, 30), ("cancer", None, 30)),
            est_ks=(4, 16, 64), est_seeds=(0, 1, 2, 3, 4))

QUICK = Plan(seeds=(0, 1), arms=SUM4_ARMS, sum4_ks=(2, "full"), sum4_corpus=50, sum4_epochs=3,
             batch=10, corpora=(20, 50), fixed_ks=(2, "full"), digits_ks=(4, "full"),
             digits_arms=DIGITS_ARMS, digits_epochs=2, digits_seeds=(0,), digits_corpus=100,
             est_tasks=(("sum4", 50, 3), ("digits", 100, 2), ("cancer", 100, 2)), est_ks=(4,),
             est_seeds=(0, 1))

#: The estimators compared in group ``estimators`` (all of
#: :data:`dpfm.reference.estimators.ESTIMATORS`), each at every ``est_ks``; the cell named
#: :data:`DENSE` is ``topk`` keeping every register: the exact gradient.
EST_NAMES = tuple(ESTIMATORS)
DENSE = "dense"

#: The three number/pruning variants of ``sum4_fixed``: name -> config overrides.
VARIANTS = {
    "numpy exact": {"backend": "numpy", "policy": "exact"},
    "numpy stream": {"backend": "numpy", "policy": "stream"},
    "fixed stream": {"backend": "fixed", "policy": "stream"},
}

#: sum4: a run has left the plateau of the constant predictor (validation loss = Var(y) = 1/3)
#: at the first epoch whose validation loss is below this.
ESCAPE_LOSS = 0.01

#: Per-run numbers kept in the JSON (besides the varied keys).
RUN_FIELDS = ("final_train_loss", "final_val_loss", "min_val_loss", "min_val_epoch",
              "min_train_loss", "min_train_epoch", "accuracy", "diverged", "saturation_total",
              "wall_s", "steps")
#: Numbers summarised over seeds (mean, min, max) per setting.
SPREAD_FIELDS = ("final_train_loss", "final_val_loss", "min_val_loss", "min_train_loss",
                 "accuracy", "wall_s")


def _key(config) -> str:
    return json.dumps(prepare(config).spec, sort_keys=True, default=str)


class Runner:
    """Runs configs through :func:`dpfm.sweep.run_many`, each distinct config only once."""

    def __init__(self, jobs):
        self.jobs = jobs
        self.cache = {}
        self.new = 0

    def __call__(self, configs) -> list:
        keys = [_key(c) for c in configs]
        todo = {}
        for k, c in zip(keys, configs):
            if k not in self.cache:
                todo.setdefault(k, c)
        if todo:
            done = run_many(list(todo.values()), jobs=self.jobs)
            self.cache.update(zip(todo, done))
            self.new += len(todo)
        return [self.cache[k] for k in keys]


def _arms(base, arms) -> dict:
    """Arm name (``"sgd lr 0.1"``) -> config overrides ``{"update", "lr"}``; a ``None`` lr is
    resolved to the task's default, so the name always shows the rate used."""
    out = {}
    for update, lr in arms:
        if lr is None:
            lr = prepare({**base, "update": update}).spec["lr"]
        out[f"{update} lr {lr:g}"] = {"update": update, "lr": lr}
    return out


def group_cells(plan: Plan) -> dict:
    """Group name -> (list of (cell key dict, config without seed), seeds)."""
    sum4 = {"backend": "numpy", "task": "sum4", "corpus": plan.sum4_corpus,
            "epochs": plan.sum4_epochs, "batch": plan.batch}
    digits = {"backend": "numpy", "task": "digits", "corpus": plan.digits_corpus,
              "epochs": plan.digits_epochs, "batch": plan.batch}
    arms, d_arms = _arms(sum4, plan.arms), _arms(digits, plan.digits_arms)
    cells = {
        "sum4_k": [({"arm": a, "k": k}, {**sum4, **arm, "k": k})
                   for a, arm in arms.items() for k in plan.sum4_ks],
        "sum4_corpus": [({"arm": a, "corpus": n, "k": k}, {**sum4, **arm, "k": k, "corpus": n})
                        for a, arm in arms.items() for n in plan.corpora for k in plan.sum4_ks],
        "sum4_fixed": [({"arm": a, "variant": v, "k": k}, {**sum4, **arm, **over, "k": k})
                       for a, arm in arms.items() for v, over in VARIANTS.items()
                       for k in plan.fixed_ks],
        "digits_k": [({"arm": a, "k": k}, {**digits, **arm, "k": k})
                     for a, arm in d_arms.items() for k in plan.digits_ks],
    }
    cells["estimators"] = []
    for task, corpus, epochs in plan.est_tasks:
        base = {"backend": "numpy", "task": task, "corpus": corpus, "epochs": epochs,
                "batch": plan.batch}
        cells["estimators"] += [({"task": task, "estimator": e, "k": k},
                                 {**base, "estimator": e, "k": k})
                                for e in EST_NAMES for k in plan.est_ks]
        cells["estimators"].append(({"task": task, "estimator": DENSE, "k": "full"},
                                    {**base, "estimator": "topk", "k": "full"}))
    seeds = {"digits_k": plan.digits_seeds, "estimators": plan.est_seeds}
    return {g: (cells[g], seeds.get(g, plan.seeds)) for g in GROUPS}
