"""The seed's experiments, re-run over several seeds: figures, JSON and tables of
``docs/experiments.md``, all from one command::

    python -m dpfm.experiments [--out docs] [--quick] [--jobs N] [--replot]

Every run goes through :func:`dpfm.sweep.run_many` with the configs ``dpfm train`` and
``dpfm sweep`` build (backends ``numpy`` and ``fixed``), so any single point can be
reproduced with ``dpfm train``.  Groups (:data:`GROUPS`):

``sum4_k``
    The seed's k-sweep: sum4, corpus 400, 250 epochs, batch 10; k in 2, 4, 8, 16, 32, full;
    three update rules (:data:`SUM4_ARMS`): ``maxnorm`` lr 0.01 (the seed's), ``sgd`` lr 0.01
    (the seed's TensorFlow baseline) and ``sgd`` lr 0.1; every seed.
``sum4_corpus``
    The same for corpus sizes 50, 100, 200, 400 (corpus 400 is shared with ``sum4_k``).
``sum4_fixed``
    Float against the hardware's fixed point: ``numpy`` with the ``exact`` pruning policy
    (the definition), ``numpy`` with the hardware's ``stream`` policy, and ``fixed`` (default
    formats, ``stream``: bit-exact with the hardware).
``digits_k``
    scikit-learn's digits (64-16-10, 1210 parameters): accuracy against k, ``full`` being
    dense forward-mode gradients, at equal epochs.

Outputs under ``--out`` (default ``docs``): ``figures/*.png``, ``figures/experiments.json``
(every number: per-run summaries, per-setting mean/min/max over seeds, paired comparisons
with ``full``, the curves drawn), and the generated blocks of ``experiments.md`` (text between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``; the rest of the page is left
alone; a page that does not exist yet is created with the blocks only).  ``--replot``
rebuilds figures and tables from an existing JSON without training.

Runs are deterministic (each depends only on its config and seed), so the same command gives
the same numbers whatever ``--jobs`` is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict, dataclass

from dpfm import __version__
from dpfm.spec import prepare
from dpfm.sweep import run_many
from dpfm.files import check_output_path, write_json, write_text

__all__ = ["main", "Plan", "FULL", "QUICK", "GROUPS", "run_experiments", "FIGURES"]

PROG = "python -m dpfm.experiments"

#: Experiment groups, in the order they run and appear in the JSON.
GROUPS = ("sum4_k", "sum4_corpus", "sum4_fixed", "digits_k")

#: Figures written to ``OUT/figures``.
FIGURES = ("sum4_k_sweep.png", "sum4_vs_full.png", "sum4_val_vs_epoch.png", "sum4_corpus.png",
           "sum4_fixed.png", "digits_accuracy.png", "digits_accuracy_vs_epoch.png")

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


#: sum4 update rules: the seed's (maxnorm, lr 0.01, as ``dpfm train``'s demo), plain SGD at the
#: same lr 0.01 (Keras' default, the seed's TensorFlow baseline), and SGD at lr 0.1 (converges
#: within 250 epochs; lr 0.01 does not).
SUM4_ARMS = (("maxnorm", 0.01), ("sgd", 0.01), ("sgd", 0.1))
#: digits: both update rules at the task's default learning rates.
DIGITS_ARMS = (("maxnorm", None), ("sgd", None))

FULL = Plan(seeds=(0, 1, 2, 3, 4), arms=SUM4_ARMS, sum4_ks=(2, 4, 8, 16, 32, "full"),
            sum4_corpus=400, sum4_epochs=250, batch=10, corpora=(50, 100, 200, 400),
            fixed_ks=(2, 4, 16, "full"), digits_ks=(4, 16, 64, "full"), digits_arms=DIGITS_ARMS,
            digits_epochs=30, digits_seeds=(0, 1, 2), digits_corpus=None)

QUICK = Plan(seeds=(0, 1), arms=SUM4_ARMS, sum4_ks=(2, "full"), sum4_corpus=50, sum4_epochs=3,
             batch=10, corpora=(20, 50), fixed_ks=(2, "full"), digits_ks=(4, "full"),
             digits_arms=DIGITS_ARMS, digits_epochs=2, digits_seeds=(0,), digits_corpus=100)

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


# -- running ------------------------------------------------------------------------------

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
    seeds = {"digits_k": plan.digits_seeds}
    return {g: (cells[g], seeds.get(g, plan.seeds)) for g in GROUPS}


# -- summarising --------------------------------------------------------------------------

def _sig(x, digits=6):
    return None if x is None else float(f"{x:.{digits}g}")


def _spread(values) -> dict:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    if not ok:
        return {"mean": None, "min": None, "max": None, "runs": list(values)}
    return {"mean": sum(ok) / len(ok), "min": min(ok), "max": max(ok), "runs": list(values)}


def _median(values):
    ok = sorted(v for v in values if v is not None)
    if not ok:
        return None
    m = len(ok) // 2
    return ok[m] if len(ok) % 2 else (ok[m - 1] + ok[m]) / 2


def _curve(results, key):
    """Mean, min and max over runs of one history column, per epoch (5 significant digits)."""
    n = min(len(r["history"]) for r in results)
    out = {"mean": [], "min": [], "max": []}
    for e in range(n):
        v = [r["history"][e].get(key) for r in results]
        s = _spread(v)
        for stat in out:
            out[stat].append(_sig(s[stat], 5))
    return out


def _paired(cells, key_fields, field, lower_is_better=True):
    """For every cell with k != full: in how many seeds it beats the same seed at full, and
    the geometric mean of the ratio cell / full."""
    full = {tuple(c[f] for f in key_fields if f != "k"): c for c in cells if c["k"] == "full"}
    for c in cells:
        ref = full.get(tuple(c[f] for f in key_fields if f != "k"))
        if ref is None or c["k"] == "full":
            continue
        better, pairs, ratios = 0, 0, []
        for a, b in zip(c[field]["runs"], ref[field]["runs"]):
            if a is None or b is None:
                continue
            pairs += 1
            better += (a < b) if lower_is_better else (a > b)
            if a > 0 and b > 0:
                ratios.append(a / b)
        c.setdefault("vs_full", {})[field] = {
            "better": int(better), "of": pairs,
            "ratio_gmean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
            "ratio_runs": [_sig(r) for r in ratios]}


def _variant_ratios(cells, field="final_val_loss"):
    """sum4_fixed: every variant against the one before it in :data:`VARIANTS`, same arm, k
    and seed (numpy stream / numpy exact: the pruning order; fixed stream / numpy stream: the
    rounding).  Stored as ``cell["vs_previous"]``: geometric mean, min, max, per seed."""
    names = list(VARIANTS)
    index = {(c["arm"], c["k"], c["variant"]): c for c in cells}
    for c in cells:
        i = names.index(c["variant"])
        if i == 0:
            continue
        ref = index[(c["arm"], c["k"], names[i - 1])]
        ratios = [a / b for a, b in zip(c[field]["runs"], ref[field]["runs"])
                  if a is not None and b is not None and a > 0 and b > 0]
        c["vs_previous"] = {
            "variant": names[i - 1], "field": field,
            "ratio_gmean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
            "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
            "ratio_runs": ratios}


def _escape_epoch(result):
    """First epoch whose validation loss is below :data:`ESCAPE_LOSS` (None: never)."""
    return next((row["epoch"] for row in result["history"]
                 if row["val_loss"] is not None and row["val_loss"] < ESCAPE_LOSS), None)


def _pooled(cells) -> list:
    """sum4_corpus: per arm and k != full, the paired comparisons with full pooled over every
    corpus size (``better`` of ``of`` seed pairs; geometric mean of every ratio)."""
    out = {}
    for c in cells:
        if c["k"] == "full":
            continue
        row = out.setdefault((c["arm"], c["k"]), {"arm": c["arm"], "k": c["k"]})
        for f in ("final_val_loss", "min_val_loss"):
            v = c["vs_full"][f]
            p = row.setdefault(f, {"better": 0, "of": 0, "ratio_runs": []})
            p["better"] += v["better"]
            p["of"] += v["of"]
            p["ratio_runs"] += v["ratio_runs"]
    for row in out.values():
        for f in ("final_val_loss", "min_val_loss"):
            r = row[f].pop("ratio_runs")
            row[f]["ratio_gmean"] = math.exp(sum(map(math.log, r)) / len(r)) if r else None
    return list(out.values())


def summarise(name, cells, seeds, results, curves) -> dict:
    """The JSON of one group from its runs (``results[i][j]``: cell i, seed j)."""
    key_fields = list(cells[0][0])
    out_cells, out_runs, out_curves = [], [], []
    for (key, _), rs in zip(cells, results):
        cell = {**key, "n": len(rs), "diverged": sum(bool(r["diverged"]) for r in rs)}
        for f in SPREAD_FIELDS:
            if f != "accuracy" or rs[0].get("accuracy") is not None:
                cell[f] = _spread([r.get(f) for r in rs])
        for f in ("min_val_epoch", "min_train_epoch", "saturation_total"):
            cell[f] = [r[f] for r in rs]
        escape = [_escape_epoch(r) for r in rs] if rs[0]["task"] == "sum4" else None
        if escape is not None:
            cell["escape_epoch"] = escape
        out_cells.append(cell)
        for j, (seed, r) in enumerate(zip(seeds, rs)):
            out_runs.append({**key, "seed": seed, **{f: r.get(f) for f in RUN_FIELDS
                                                      if f in r}})
            if escape is not None:
                out_runs[-1]["escape_epoch"] = escape[j]
        if curves:
            cv = {**key, "epoch": [row["epoch"] for row in rs[0]["history"]],
                  "val_loss": _curve(rs, "val_loss"),
                  "train_loss": {"mean": _curve(rs, "train_loss")["mean"]}}
            if rs[0].get("accuracy") is not None:
                cv["val_accuracy"] = _curve(rs, "val_accuracy")
            out_curves.append(cv)
    if any(c["k"] == "full" for c in out_cells):
        for f in ("final_val_loss", "min_val_loss", "final_train_loss"):
            _paired(out_cells, key_fields, f)
        if "accuracy" in out_cells[0]:
            _paired(out_cells, key_fields, "accuracy", lower_is_better=False)
    if "variant" in key_fields:
        _variant_ratios(out_cells)
    extra = {"pooled": _pooled(out_cells)} if "corpus" in key_fields else {}
    first = prepare(cells[0][1]).spec
    return {"title": GROUP_TITLES[name], "key_fields": key_fields, "seeds": list(seeds),
            "base_config": {k: first[k] for k in ("task", "epochs", "batch", "net", "activations")},
            "arms": _arm_settings(cells),
            "cells": out_cells, "runs": out_runs, "curves": out_curves, **extra}


def _arm_settings(cells) -> dict:
    """arm name -> its update rule and learning rate."""
    return {key["arm"]: {"update": config["update"], "lr": config["lr"]} for key, config in cells}


GROUP_TITLES = {
    "sum4_k": "sum4 k-sweep (the seed's experiment)",
    "sum4_corpus": "sum4 corpus sizes x k",
    "sum4_fixed": "sum4 float vs fixed point",
    "digits_k": "digits accuracy vs k (full = dense forward-mode gradients), equal epochs",
}


def _machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": list(load) if load else None}


def run_experiments(plan: Plan, jobs=None, log=print) -> dict:
    """Run every group of ``plan``; returns the JSON-able dict (``meta``, ``groups``)."""
    import numpy

    meta = {"date": datetime.date.today().isoformat(), "machine": _machine(), "jobs": jobs,
            "plan": asdict(plan), "dpfm_version": __version__, "numpy": numpy.__version__}
    runner = Runner(jobs)
    groups = {}
    t_all = time.perf_counter()
    plan_cells = group_cells(plan)
    for gi, name in enumerate(GROUPS, 1):
        cells, seeds = plan_cells[name]
        configs = [{**c, "seed": s} for _, c in cells for s in seeds]
        t0, new0 = time.perf_counter(), runner.new
        flat = runner(configs)
        results = [flat[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(cells))]
        wall = time.perf_counter() - t0
        groups[name] = summarise(name, cells, seeds, results,
                                 curves=name in ("sum4_k", "digits_k"))
        groups[name]["wall_s"] = wall
        groups[name]["new_runs"] = runner.new - new0
        log(f"[{gi}/{len(GROUPS)}] {name}: {len(configs)} runs ({runner.new - new0} new) in "
            f"{wall:.1f} s; {time.perf_counter() - t_all:.0f} s so far")
    meta["wall_s"] = time.perf_counter() - t_all
    meta["runs"] = runner.new
    meta["run_wall_s_total"] = sum(r["wall_s"] for r in runner.cache.values())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["machine"]["loadavg_at_end"] = list(load) if load else None
    return {"meta": meta, "groups": groups}


# -- figures ------------------------------------------------------------------------------

def _cells(group, **match):
    return [c for c in group["cells"] if all(c[k] == v for k, v in match.items())]


def _series(cells, field, label, **style):
    s = [c[field] for c in cells]
    return {"label": label, "x": [c["k"] for c in cells], "mean": [v["mean"] for v in s],
            "lo": [v["min"] for v in s], "hi": [v["max"] for v in s],
            "points": [v["runs"] for v in s], **style}


def _n_seeds(group):
    return f"{len(group['seeds'])} seeds"


def _setting(data, name):
    g = data["groups"][name]
    b = g["base_config"]
    return (f"{b['task']}, net {'-'.join(map(str, b['net']))}, {b['epochs']} epochs, batch "
            f"{b['batch']}; mean, min-max and single runs over {_n_seeds(g)}")


def make_figures(data, fig_dir) -> list:
    """Write :data:`FIGURES` into ``fig_dir`` from the experiment JSON; returns the paths."""
    from dpfm.plots import plot_spread_vs_epoch, plot_spread_vs_k

    G = data["groups"]
    arms = list(dict.fromkeys(c["arm"] for c in G["sum4_k"]["cells"]))
    path = lambda name: os.path.join(fig_dir, name)       # noqa: E731
    written = []

    g = G["sum4_k"]
    corpus = data["meta"]["plan"]["sum4_corpus"]
    panels = [{"title": f"{u}, corpus {corpus}", "series": [
        _series(_cells(g, arm=u), "final_val_loss", "final validation", color="C1"),
        _series(_cells(g, arm=u), "final_train_loss", "final train", color="C0",
                linestyle="--", marker="s"),
        _series(_cells(g, arm=u), "min_val_loss", "minimum validation (any epoch)",
                color="C2", linestyle=":", marker="^")]} for u in arms]
    plot_spread_vs_k(panels, path("sum4_k_sweep.png"), ylabel="MSE loss",
                     title=f"sum4 k-sweep: {_setting(data, 'sum4_k')}")
    written.append(path("sum4_k_sweep.png"))

    panels = []
    for u in arms:
        series = []
        for f, label, color, ls in (("final_val_loss", "final validation", "C1", "-"),
                                    ("min_val_loss", "minimum validation", "C2", ":")):
            cells = [c for c in _cells(g, arm=u) if c["k"] != "full"]
            r = [c["vs_full"][f] for c in cells]
            series.append({"label": label, "x": [c["k"] for c in cells],
                           "mean": [v["ratio_gmean"] for v in r],
                           "lo": [min(v["ratio_runs"]) for v in r],
                           "hi": [max(v["ratio_runs"]) for v in r],
                           "points": [v["ratio_runs"] for v in r], "color": color,
                           "linestyle": ls})
        panels.append({"title": f"{u}: loss at k / loss at full, same seed "
                                f"(below 1: pruning helped)", "series": series})
    plot_spread_vs_k(panels, path("sum4_vs_full.png"), ylabel="ratio to k=full (same seed)",
                     hline=1.0, title="sum4: paired comparison with dense gradients "
                                      "(geometric mean, min-max and single seeds)")
    written.append(path("sum4_vs_full.png"))

    ks = list(dict.fromkeys(c["k"] for c in g["cells"]))
    panels = []
    for u in arms:
        series = []
        for i, k in enumerate(ks):
            cv = next(c for c in g["curves"] if c["arm"] == u and c["k"] == k)
            series.append({"label": f"k={k}", "x": cv["epoch"], "mean": cv["val_loss"]["mean"],
                           "lo": cv["val_loss"]["min"], "hi": cv["val_loss"]["max"],
                           "color": _viridis(i, len(ks))})
        panels.append({"title": f"{u}: validation loss vs epoch (band: min-max over seeds)",
                       "series": series})
    plot_spread_vs_epoch(panels, path("sum4_val_vs_epoch.png"), ylabel="validation MSE loss",
                         title=f"sum4, corpus {corpus}: {_setting(data, 'sum4_k')}")
    written.append(path("sum4_val_vs_epoch.png"))

    g = G["sum4_corpus"]
    corpora = list(dict.fromkeys(c["corpus"] for c in g["cells"]))
    panels = []
    for u in arms:
        series = [_series(_cells(g, arm=u, corpus=n), "final_val_loss", f"N={n}",
                          color=f"C{i}") for i, n in enumerate(corpora)]
        panels.append({"title": f"{u}: final validation loss, corpus N (80/20 split)",
                       "series": series})
    plot_spread_vs_k(panels, path("sum4_corpus.png"), ylabel="final validation MSE loss",
                     legend_cols=2, title=f"sum4 corpus sizes: {_setting(data, 'sum4_corpus')}")
    written.append(path("sum4_corpus.png"))

    g = G["sum4_fixed"]
    variants = list(dict.fromkeys(c["variant"] for c in g["cells"]))
    panels = [{"title": f"{u}: final validation loss", "series": [
        _series(_cells(g, arm=u, variant=v), "final_val_loss", v, color=f"C{i}",
                marker="os^"[i % 3]) for i, v in enumerate(variants)]} for u in arms]
    plot_spread_vs_k(panels, path("sum4_fixed.png"), ylabel="final validation MSE loss",
                     title=f"sum4 float vs fixed point (24.16/18.12/18.14): "
                           f"{_setting(data, 'sum4_fixed')}")
    written.append(path("sum4_fixed.png"))

    g = G["digits_k"]
    d_arms = list(dict.fromkeys(c["arm"] for c in g["cells"]))
    ks = list(dict.fromkeys(c["k"] for c in g["cells"]))
    panels = [{"title": "final validation accuracy vs k", "series": [
        _series(_cells(g, arm=u), "accuracy", u, color=f"C{i}")
        for i, u in enumerate(d_arms)]}]
    plot_spread_vs_k(panels, path("digits_accuracy.png"), ylabel="validation accuracy",
                     log=False, ylim=(0, 1), figsize=(6.5, 4.4),
                     title=f"digits: {_setting(data, 'digits_k')}".replace("; ", ";\n"))
    epanels = []
    for u in d_arms:
        series = []
        for i, k in enumerate(ks):
            cv = next(c for c in g["curves"] if c["arm"] == u and c["k"] == k)
            series.append({"label": f"k={k}", "x": cv["epoch"],
                           "mean": cv["val_accuracy"]["mean"], "lo": cv["val_accuracy"]["min"],
                           "hi": cv["val_accuracy"]["max"], "color": _viridis(i, len(ks))})
        epanels.append({"title": f"{u}: validation accuracy vs epoch", "series": series})
    plot_spread_vs_epoch(epanels, path("digits_accuracy_vs_epoch.png"),
                         ylabel="validation accuracy", log=False, ylim=(0, 1),
                         title=f"digits: {_setting(data, 'digits_k')}")
    written.append(path("digits_accuracy.png"))
    written.append(path("digits_accuracy_vs_epoch.png"))
    return written


def _viridis(i, n):
    import matplotlib

    return matplotlib.colormaps["viridis"](0.9 * i / max(1, n - 1))


# -- the page's generated tables ----------------------------------------------------------

def _g(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def _mmm(s, spec=".3g"):
    """``mean [min-max]``."""
    if s["mean"] is None:
        return "diverged"
    return f"{_g(s['mean'], spec)} [{_g(s['min'], spec)}-{_g(s['max'], spec)}]"


def _escape(epochs):
    ok = [e for e in epochs if e is not None]
    return f"{_g(_median(ok), '.0f')} ({len(ok)}/{len(epochs)})"


def _ratio_mmm(r):
    if r["ratio_gmean"] is None:
        return "-"
    return f"{r['ratio_gmean']:.2f} [{r['ratio_min']:.2f}-{r['ratio_max']:.2f}]"


def _wins(cell, field):
    v = cell.get("vs_full", {}).get(field)
    return "-" if v is None else f"{v['better']}/{v['of']}"


def _ratio(cell, field):
    v = cell.get("vs_full", {}).get(field)
    return "-" if v is None or v["ratio_gmean"] is None else f"{v['ratio_gmean']:.2f}"


def tables(data) -> dict:
    """Generated block name -> markdown text."""
    G, meta = data["groups"], data["meta"]
    m = meta["machine"]
    load = lambda v: "-" if not v else "/".join(f"{x:.1f}" for x in v)   # noqa: E731
    out = {"meta": (
        f"Last run: {meta['date']}, `{meta.get('command', PROG)}`: {meta['runs']} runs in "
        f"**{meta['wall_s']:.0f} s** wall ({meta['wall_s'] / 60:.1f} min) with {meta['jobs']} "
        f"worker process(es), on {m['cpu']} ({m['cores']} cores; load average "
        f"{load(m.get('loadavg_at_start'))} at the start, {load(m.get('loadavg_at_end'))} at the "
        f"end), Python {m['python']}, numpy {meta['numpy']}, dpfm {meta['dpfm_version']}. "
        f"Per group: " + ", ".join(f"{n} {g['wall_s']:.0f} s ({g['new_runs']} runs)"
                                   for n, g in G.items()) + ".")}

    g = G["sum4_k"]
    rows = ["| update | k | final train | final val | min val | min-val epoch (median) "
            "| min-train epoch (median) | final val < full | min val < full "
            f"| final val / full (gmean) | val < {ESCAPE_LOSS:g} from epoch (median; runs) |",
            "|" + "---|" * 11]
    for c in g["cells"]:
        rows.append(f"| {c['arm']} | {c['k']} | {_mmm(c['final_train_loss'])} "
                    f"| {_mmm(c['final_val_loss'])} | {_mmm(c['min_val_loss'])} "
                    f"| {_g(_median(c['min_val_epoch']), '.0f')} "
                    f"| {_g(_median(c['min_train_epoch']), '.0f')} "
                    f"| {_wins(c, 'final_val_loss')} | {_wins(c, 'min_val_loss')} "
                    f"| {_ratio(c, 'final_val_loss')} | {_escape(c['escape_epoch'])} |")
    out["sum4_k"] = "\n".join(rows)

    g = G["sum4_corpus"]
    ks = list(dict.fromkeys(c["k"] for c in g["cells"]))
    rows = ["| update | corpus | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|" + "---|" * (len(ks) + 2)]
    for u in dict.fromkeys(c["arm"] for c in g["cells"]):
        for n in dict.fromkeys(c["corpus"] for c in g["cells"]):
            cs = _cells(g, arm=u, corpus=n)
            rows.append(f"| {u} | {n} | " + " | ".join(
                f"{_g(c['final_val_loss']['mean'])} ({_wins(c, 'final_val_loss')})"
                if c["k"] != "full" else _g(c["final_val_loss"]["mean"]) for c in cs) + " |")
    rows += ["", "Pooled over the corpus sizes: seed pairs in which k beats full, on the final "
             "and on the minimum validation loss, and the geometric mean of the ratio k / full.",
             "", "| update | k | final val < full | final val / full | min val < full "
             "| min val / full |", "|" + "---|" * 6]
    for p in g["pooled"]:
        f, m = p["final_val_loss"], p["min_val_loss"]
        rows.append(f"| {p['arm']} | {p['k']} | {f['better']}/{f['of']} | {_g(f['ratio_gmean'])} "
                    f"| {m['better']}/{m['of']} | {_g(m['ratio_gmean'])} |")
    out["sum4_corpus"] = "\n".join(rows)

    g = G["sum4_fixed"]
    variants = list(dict.fromkeys(c["variant"] for c in g["cells"]))
    ratios = [(variants[i], variants[i - 1]) for i in range(1, len(variants))]
    rows = ["| update | k | " + " | ".join(variants) + " | "
            + " | ".join(f"{a} / {b}" for a, b in ratios) + " | saturations (all runs) |",
            "|" + "---|" * (2 * len(variants) + 2)]
    for u in dict.fromkeys(c["arm"] for c in g["cells"]):
        for k in dict.fromkeys(c["k"] for c in g["cells"]):
            cs = {c["variant"]: c for c in _cells(g, arm=u, k=k)}
            sat = sum(sum(c["saturation_total"]) for c in cs.values())
            rows.append(f"| {u} | {k} | " + " | ".join(_mmm(cs[v]["final_val_loss"])
                                                       for v in variants) + " | "
                        + " | ".join(_ratio_mmm(cs[a]["vs_previous"]) for a, _ in ratios)
                        + f" | {sat} |")
    out["sum4_fixed"] = "\n".join(rows)

    g = G["digits_k"]
    rows = ["| update | k | val accuracy | final val loss | final train loss "
            "| accuracy > full | s per run |", "|" + "---|" * 7]
    for c in g["cells"]:
        rows.append(f"| {c['arm']} | {c['k']} "
                    f"| {_mmm(c['accuracy'])} | {_mmm(c['final_val_loss'])} "
                    f"| {_mmm(c['final_train_loss'])} | {_wins(c, 'accuracy')} "
                    f"| {c['wall_s']['mean']:.1f} |")
    out["digits_k"] = "\n".join(rows)
    return out


_BLOCK = "<!-- generated:{0} -->\n{1}\n<!-- /generated:{0} -->"


def update_page(path, blocks: dict):
    """Replace each generated block of the page at ``path`` (created when missing)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    else:
        text = "# DPFM experiments\n\n" + "\n\n".join(
            f"## {name}\n\n" + _BLOCK.format(name, "") for name in blocks) + "\n"
    for name, body in blocks.items():
        pattern = re.compile(r"<!-- generated:%s -->.*?<!-- /generated:%s -->"
                             % (re.escape(name), re.escape(name)), re.S)
        new = _BLOCK.format(name, body)
        if pattern.search(text):
            text = pattern.sub(lambda _m: new, text)
        else:
            text = text.rstrip("\n") + f"\n\n## {name}\n\n{new}\n"
    write_text(path, text)


# -- command line -------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description="Re-run the seed's experiments over "
                                "several seeds; write figures, JSON and the tables of "
                                "experiments.md.")
    p.add_argument("--out", default="docs",
                   help="directory of experiments.md; figures and JSON go to OUT/figures "
                        "(default docs)")
    p.add_argument("--quick", action="store_true",
                   help="tiny corpora and epochs: a smoke test of the whole pipeline (seconds)")
    p.add_argument("--jobs", type=int,
                   help="parallel processes (default: every core; 1 runs serially)")
    p.add_argument("--replot", action="store_true",
                   help="no training: rebuild figures and tables from OUT/figures/experiments.json")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        print(f"{PROG}: error: --jobs {args.jobs} is below the minimum of 1", file=sys.stderr)
        return 2
    fig_dir = os.path.join(args.out, "figures")
    json_path = os.path.join(fig_dir, JSON_NAME)
    try:
        if not os.path.isdir(args.out):
            raise ValueError(f"output directory {args.out} does not exist")
        os.makedirs(fig_dir, exist_ok=True)
        check_output_path(json_path, "JSON")
    except (ValueError, OSError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.replot:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    else:
        plan = QUICK if args.quick else FULL
        jobs = args.jobs or os.cpu_count() or 1
        print(f"{PROG}: {'quick' if args.quick else 'full'} plan, {jobs} job(s), output in "
              f"{args.out}", flush=True)
        data = run_experiments(plan, jobs=jobs, log=lambda s: print(s, flush=True))
        data["meta"]["command"] = " ".join(["python -m dpfm.experiments"] + list(
            argv if argv is not None else sys.argv[1:]))
        data["meta"]["quick"] = args.quick
        data = _rounded(data)
        write_json(json_path, data)
    written = make_figures(data, fig_dir)
    update_page(os.path.join(args.out, MD_NAME), tables(data))
    what = f"read {json_path}" if args.replot else f"wrote {json_path}"
    print(f"{what}; wrote {len(written)} figures in {fig_dir} and the tables of "
          f"{os.path.join(args.out, MD_NAME)}"
          + ("" if args.replot else f"; {data['meta']['wall_s']:.0f} s"), flush=True)
    return 0


def _rounded(obj):
    """Floats to 6 significant digits (the JSON stays readable; plenty for the figures)."""
    if isinstance(obj, float):
        return _sig(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
