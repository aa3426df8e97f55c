"""The generated tables of ``experiments.md`` and the page edit that replaces only them."""

from __future__ import annotations

import os
import re

from dpfm.files import write_text

from .plan import ESCAPE_LOSS, PROG
from .stats import median, select_cells


def _g(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def _mmm(s, spec=".3g"):
    """``mean [min-max]``."""
    if s["mean"] is None:
        return "diverged"
    return f"{_g(s['mean'], spec)} [{_g(s['min'], spec)}-{_g(s['max'], spec)}]"


def _escape(epochs):
    ok = [e for e in epochs if e is not None]
    return f"{_g(median(ok), '.0f')} ({len(ok)}/{len(epochs)})"


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
                    f"| {_g(median(c['min_val_epoch']), '.0f')} "
                    f"| {_g(median(c['min_train_epoch']), '.0f')} "
                    f"| {_wins(c, 'final_val_loss')} | {_wins(c, 'min_val_loss')} "
                    f"| {_ratio(c, 'final_val_loss')} | {_escape(c['escape_epoch'])} |")
    out["sum4_k"] = "\n".join(rows)

    g = G["sum4_corpus"]
    ks = list(dict.fromkeys(c["k"] for c in g["cells"]))
    rows = ["| update | corpus | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|" + "---|" * (len(ks) + 2)]
    for u in dict.fromkeys(c["arm"] for c in g["cells"]):
        for n in dict.fromkeys(c["corpus"] for c in g["cells"]):
            cs = select_cells(g, arm=u, corpus=n)
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
            cs = {c["variant"]: c for c in select_cells(g, arm=u, k=k)}
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
    out.update(_estimator_tables(G["estimators"]))
    return out


def _metric(g, task):
    """The headline number of a task: accuracy when it classifies, else final val loss."""
    return "accuracy" if "accuracy" in select_cells(g, task=task)[0] else "final_val_loss"


def _mult(n):
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def _estimator_tables(g) -> dict:
    """Group ``estimators``: the estimator x k x task table with dense beside it, the
    multiplies per step with the paired counts against dense, and the best at k = 16."""
    tasks = list(dict.fromkeys(c["task"] for c in g["cells"]))
    names = [e for e in dict.fromkeys(c["estimator"] for c in g["cells"]) if e != "dense"]
    ks = [k for k in dict.fromkeys(c["k"] for c in g["cells"]) if k != "full"]
    n = len(g["seeds"])
    rows = ["| task | measure | estimator | " + " | ".join(f"k={k}" for k in ks) + " | dense |",
            "|" + "---|" * (len(ks) + 4)]
    cost = ["| task | estimator | " + " | ".join(f"k={k}: multiplies/step (beats dense)"
                                                 for k in ks) + " |", "|" + "---|" * (len(ks) + 2)]
    best = []
    for t in tasks:
        f = _metric(g, t)
        label = "val accuracy" if f == "accuracy" else "final val loss"
        dense = select_cells(g, task=t, estimator="dense")[0]
        for e in names:
            cs = {c["k"]: c for c in select_cells(g, task=t, estimator=e)}
            rows.append(f"| {t} | {label} | {e} | " + " | ".join(_mmm(cs[k][f]) for k in ks)
                        + f" | {_mmm(dense[f])} |")
            cost.append(f"| {t} | {e} | " + " | ".join(
                f"{_mult(cs[k]['multiplies_per_step'])} ({cs[k]['vs_dense'][f]['better']}/"
                f"{cs[k]['vs_dense'][f]['of']})" for k in ks) + " |")
        cost.append(f"| {t} | dense | {_mult(dense['multiplies_per_step'])} (all k) |"
                    + " |" * (len(ks) - 1))
        for k in ks:
            cs = [c for c in select_cells(g, task=t, k=k) if c[f]["mean"] is not None]
            if not cs:
                continue
            top = (max if f == "accuracy" else min)(cs, key=lambda c: c[f]["mean"])
            best.append(f"| {t} | {k} | {top['estimator']} | {_mmm(top[f])} | {_mmm(dense[f])} "
                        f"| {top['vs_dense'][f]['better']}/{top['vs_dense'][f]['of']} |")
    best = ["| task | k | best estimator (mean) | its " + "measure | dense | seeds in which it "
            "beats dense |", "|" + "---|" * 6] + best
    per_layer = [c for c in g["cells"] if c["estimator"] == "topk-per-layer"]
    lk = "; ".join(f"{c['task']} k={c['k']}: {','.join(map(str, c['layer_k']))}"
                   for c in per_layer if c.get("layer_k"))
    cost += ["", f"Mean over {n} seeds; in brackets, the seeds (of {n}) in which the estimator "
             "beats the dense run of the same seed on the task's measure. `topk-per-layer` used "
             f"k per layer: {lk}."]
    return {"estimators": "\n".join(rows), "estimators_cost": "\n".join(cost),
            "estimators_best": "\n".join(best)}


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
