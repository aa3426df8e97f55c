"""Summaries over seeds: spreads, curves, paired ratios against dense, pooled groups."""

from __future__ import annotations

import math

from dpfm.spec import prepare

from .plan import ESCAPE_LOSS, RUN_FIELDS, SPREAD_FIELDS, VARIANTS


def _sig(x, digits=6):
    return None if x is None else float(f"{x:.{digits}g}")


def _spread(values) -> dict:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    if not ok:
        return {"mean": None, "min": None, "max": None, "runs": list(values)}
    return {"mean": sum(ok) / len(ok), "min": min(ok), "max": max(ok), "runs": list(values)}


def median(values):
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


def _arm_settings(cells) -> dict:
    """arm name -> its update rule and learning rate."""
    return {key["arm"]: {"update": config["update"], "lr": config["lr"]} for key, config in cells
            if "arm" in key}


GROUP_TITLES = {
    "sum4_k": "sum4 k-sweep (the seed's experiment)",
    "sum4_corpus": "sum4 corpus sizes x k",
    "sum4_fixed": "sum4 float vs fixed point",
    "digits_k": "digits accuracy vs k (full = dense forward-mode gradients), equal epochs",
    "estimators": "gradient estimators at k lanes per activation, dense beside them, equal epochs",
}

#: Group ``estimators`` keeps its loss curves at this k (and dense) only.
EST_CURVE_K = 16


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


def rounded(obj):
    """Floats to 6 significant digits (the JSON stays readable; plenty for the figures)."""
    if isinstance(obj, float):
        return _sig(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return obj


def select_cells(group, **match):
    """The cells of ``group`` whose fields equal ``match``."""
    return [c for c in group["cells"] if all(c[k] == v for k, v in match.items())]


def summarise_estimators(cells, seeds, results) -> dict:
    """Group ``estimators``: :func:`summarise` plus, per cell, the multiplies per step, the
    ``layer_k`` of ``topk-per-layer``, and paired comparisons with the dense cell of the same
    task (``vs_dense``: seeds in which the cell beats dense, geometric mean of the ratio)."""
    out = summarise("estimators", cells, seeds, results, curves=True)
    out["curves"] = [c for c in out["curves"] if c["k"] in (EST_CURVE_K, "full")]
    out["base_configs"] = {}
    for (key, config), rs, cell in zip(cells, results, out["cells"]):
        cell["multiplies_per_step"] = rs[0]["multiplies_per_step"]
        cell["multiplies"] = rs[0]["multiplies"]
        cell["layer_k"] = rs[0]["layer_k"]
        cell.pop("vs_full", None)
        spec = prepare(config).spec
        out["base_configs"][key["task"]] = {f: spec[f] for f in ("task", "corpus", "epochs",
                                                                  "batch", "net", "activations",
                                                                  "update", "lr")}
    dense = {c["task"]: c for c in out["cells"] if c["estimator"] == "dense"}
    for c in out["cells"]:
        ref = dense[c["task"]]
        if c is ref:
            continue
        c["vs_dense"] = {}
        for f, lower in (("final_val_loss", True), ("min_val_loss", True), ("accuracy", False)):
            if f not in c:
                continue
            pairs = [(a, b) for a, b in zip(c[f]["runs"], ref[f]["runs"])
                     if a is not None and b is not None]
            ratios = [a / b for a, b in pairs if a > 0 and b > 0]
            c["vs_dense"][f] = {
                "better": sum((a < b) if lower else (a > b) for a, b in pairs), "of": len(pairs),
                "ratio_gmean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios
                else None}
    return out
