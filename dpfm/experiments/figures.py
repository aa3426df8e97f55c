"""The experiments' figures (matplotlib, through :mod:`dpfm.plots`)."""

from __future__ import annotations

import os

from .stats import select_cells


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
        _series(select_cells(g, arm=u), "final_val_loss", "final validation", color="C1"),
        _series(select_cells(g, arm=u), "final_train_loss", "final train", color="C0",
                linestyle="--", marker="s"),
        _series(select_cells(g, arm=u), "min_val_loss", "minimum validation (any epoch)",
                color="C2", linestyle=":", marker="^")]} for u in arms]
    plot_spread_vs_k(panels, path("sum4_k_sweep.png"), ylabel="MSE loss",
                     title=f"sum4 k-sweep: {_setting(data, 'sum4_k')}")
    written.append(path("sum4_k_sweep.png"))

    panels = []
    for u in arms:
        series = []
        for f, label, color, ls in (("final_val_loss", "final validation", "C1", "-"),
                                    ("min_val_loss", "minimum validation", "C2", ":")):
            cells = [c for c in select_cells(g, arm=u) if c["k"] != "full"]
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
        series = [_series(select_cells(g, arm=u, corpus=n), "final_val_loss", f"N={n}",
                          color=f"C{i}") for i, n in enumerate(corpora)]
        panels.append({"title": f"{u}: final validation loss, corpus N (80/20 split)",
                       "series": series})
    plot_spread_vs_k(panels, path("sum4_corpus.png"), ylabel="final validation MSE loss",
                     legend_cols=2, title=f"sum4 corpus sizes: {_setting(data, 'sum4_corpus')}")
    written.append(path("sum4_corpus.png"))

    g = G["sum4_fixed"]
    variants = list(dict.fromkeys(c["variant"] for c in g["cells"]))
    panels = [{"title": f"{u}: final validation loss", "series": [
        _series(select_cells(g, arm=u, variant=v), "final_val_loss", v, color=f"C{i}",
                marker="os^"[i % 3]) for i, v in enumerate(variants)]} for u in arms]
    plot_spread_vs_k(panels, path("sum4_fixed.png"), ylabel="final validation MSE loss",
                     title=f"sum4 float vs fixed point (24.16/18.12/18.14): "
                           f"{_setting(data, 'sum4_fixed')}")
    written.append(path("sum4_fixed.png"))

    g = G["digits_k"]
    d_arms = list(dict.fromkeys(c["arm"] for c in g["cells"]))
    ks = list(dict.fromkeys(c["k"] for c in g["cells"]))
    panels = [{"title": "final validation accuracy vs k", "series": [
        _series(select_cells(g, arm=u), "accuracy", u, color=f"C{i}")
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
    written += _estimator_figures(G["estimators"], path)
    return written


#: Colour and marker of each estimator in the figures (dense: black).
_EST_STYLE = {"topk": ("C0", "o"), "topk-per-layer": ("C1", "s"), "randk": ("C2", "^"),
              "forward-gradient": ("C3", "v"), "multi-tangent": ("C4", "D"),
              "dense": ("k", "*")}


def _estimator_figures(g, path) -> list:
    """Group ``estimators``: loss and accuracy against k per estimator (dense at ``full``),
    and the validation loss against epoch at k = 16 and dense."""
    from dpfm.plots import plot_spread_vs_epoch, plot_spread_vs_k

    tasks = list(dict.fromkeys(c["task"] for c in g["cells"]))
    names = list(dict.fromkeys(c["estimator"] for c in g["cells"]))
    seeds = _n_seeds(g)

    def panel(task, field):
        series = []
        for e in names:
            color, marker = _EST_STYLE.get(e, (None, "o"))
            style = {"color": color, "marker": marker} if color else {"marker": marker}
            if e == "dense":
                style["linestyle"] = "none"
            cells = select_cells(g, task=task, estimator=e)
            if field in cells[0]:
                series.append(_series(cells, field, e, **style))
        b = g["base_configs"][task]
        return {"title": f"{task} ({'-'.join(map(str, b['net']))}, {b['epochs']} epochs, "
                         f"{b['update']} lr {b['lr']:g})",
                "series": series, "xlabel": "derivative lanes k per activation"}

    written = []
    plot_spread_vs_k([panel(t, "final_val_loss") for t in tasks],
                     path("estimators_loss_vs_k.png"), ylabel="final validation MSE loss",
                     legend_cols=2, title=f"Gradient estimators at k lanes (dense at full): "
                                          f"mean, min-max and single runs over {seeds}")
    written.append(path("estimators_loss_vs_k.png"))
    classify = [t for t in tasks if "accuracy" in select_cells(g, task=t)[0]]
    plot_spread_vs_k([panel(t, "accuracy") for t in classify],
                     path("estimators_accuracy_vs_k.png"), ylabel="validation accuracy",
                     log=False, legend_cols=2,
                     title=f"Gradient estimators: accuracy at k lanes (dense at full), {seeds}")
    written.append(path("estimators_accuracy_vs_k.png"))
    panels = []
    for t in tasks:
        series = []
        for e in names:
            cv = [c for c in g["curves"] if c["task"] == t and c["estimator"] == e]
            if not cv:
                continue
            cv = cv[0]
            series.append({"label": e if e == "dense" else f"{e} k={cv['k']}", "x": cv["epoch"],
                           "mean": cv["val_loss"]["mean"], "lo": cv["val_loss"]["min"],
                           "hi": cv["val_loss"]["max"],
                           "color": _EST_STYLE.get(e, ("C9", "o"))[0]})
        panels.append({"title": f"{t}: validation loss vs epoch (band: min-max over seeds)",
                       "series": series})
    plot_spread_vs_epoch(panels, path("estimators_val_vs_epoch.png"),
                         ylabel="validation MSE loss",
                         title=f"Gradient estimators at equal epochs, {seeds}")
    written.append(path("estimators_val_vs_epoch.png"))
    return written


def _viridis(i, n):
    import matplotlib

    return matplotlib.colormaps["viridis"](0.9 * i / max(1, n - 1))
