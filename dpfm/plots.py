"""Plots of runs and sweeps (matplotlib, Agg backend), written atomically.

:func:`plot_run`
    Train and validation loss against epoch (log scale); validation accuracy on a second axis
    for classification runs.
:func:`plot_sweep`
    Like the seed's figures: (a) final train and validation loss against k, one line per
    corpus size, ``full`` as the last tick; (b) validation loss against epoch for each k at
    the largest corpus.
:func:`plot_spread_vs_k`, :func:`plot_spread_vs_epoch`
    Several seeds per setting (``dpfm.experiments``): the mean with the min-max spread,
    against k or against epoch, in one or more panels.
"""

from __future__ import annotations

import os

from dpfm.files import atomic_path

__all__ = ["plot_run", "plot_sweep", "plot_spread_vs_k", "plot_spread_vs_epoch", "check_plot_path",
           "PLOT_FORMATS"]


#: File extensions :func:`plot_run` and :func:`plot_sweep` write (a subset of Agg's).
PLOT_FORMATS = ("eps", "jpeg", "jpg", "pdf", "png", "ps", "svg", "svgz", "tif", "tiff", "webp")


def check_plot_path(path):
    """ValueError unless ``path`` ends in an image extension matplotlib writes."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise ValueError(f"cannot write plot {path}: the name must end in an image extension "
                         f"({', '.join('.' + e for e in ('png', 'pdf', 'svg'))}, ...)")


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use (keeps ``dpfm`` quick to
    start when no plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_epochs(ax):
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path):
    plt = _pyplot()
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)


def _k_label(k):
    return "full" if k == "full" else str(k)


def _k_order(k):
    return float("inf") if k == "full" else float(k)


def _series(result, key):
    return [row[key] for row in result["history"]]


def _positive(values):
    return [v if v is not None and v > 0 else float("nan") for v in values]


def _describe(r):
    what = r["task"] if r["task"] != "data" else os.path.basename(r["data"] or "data")
    fixed = ""
    if r.get("fixed"):     # value / weight / grad formats
        f = r["fixed"]
        fixed = " " + "/".join(dict.fromkeys((f["value"], f["weight"], f["grad"])))
    return (f"{what}, net {'-'.join(map(str, r['net']))}, backend {r['backend']}{fixed}, "
            f"{r['update']} lr {r['lr']:g}, batch {r['batch']}")


def plot_run(result, path):
    """Train/validation loss vs epoch of one run result (log y); atomic write to ``path``."""
    check_plot_path(path)
    plt = _pyplot()
    epochs = _series(result, "epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    ax.plot(epochs, _positive(_series(result, "train_loss")), label="train loss", color="C0")
    ax.plot(epochs, _positive(_series(result, "val_loss")), label="validation loss", color="C1")
    if result.get("min_val_epoch"):
        ax.plot([result["min_val_epoch"]], [result["min_val_loss"]], "o", color="C1", ms=5,
                label=f"min val {result['min_val_loss']:.4g} @ {result['min_val_epoch']}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    _integer_epochs(ax)
    ax.set_ylabel("MSE loss")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if result.get("accuracy") is not None:
        ax2 = ax.twinx()
        ax2.plot(epochs, _series(result, "val_accuracy"), color="C2", lw=1, label="val accuracy")
        ax2.set_ylabel("validation accuracy")
        ax2.set_ylim(0, 1)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    note = " (DIVERGED)" if result.get("diverged") else ""
    ax.set_title(f"DPFM k={_k_label(result['k'])}: {_describe(result)}{note}", fontsize=9)
    _save(fig, path)


def plot_sweep(results, path):
    """The seed's sweep figures from a list of run results; atomic write to ``path``.

    (a) final train (dashed) and validation (solid) loss against k, one colour per corpus;
    (b) validation loss against epoch for each k at the largest corpus.
    """
    check_plot_path(path)
    plt = _pyplot()
    results = list(results)
    ks = sorted({r["k"] for r in results}, key=_k_order)
    corpora = sorted({r["corpus"] for r in results}, key=lambda c: -1 if c is None else c)
    x = {k: i for i, k in enumerate(ks)}
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    for ci, corpus in enumerate(corpora):
        runs = sorted((r for r in results if r["corpus"] == corpus), key=lambda r: _k_order(r["k"]))
        xs = [x[r["k"]] for r in runs]
        tag = f"N={corpus}" if corpus is not None else "all rows"
        ax_a.plot(xs, _positive([r["final_val_loss"] for r in runs]), "o-", color=f"C{ci}",
                  label=f"{tag} val")
        ax_a.plot(xs, _positive([r["final_train_loss"] for r in runs]), "s--", color=f"C{ci}",
                  alpha=0.7, label=f"{tag} train")
    ax_a.set_xticks(range(len(ks)), [_k_label(k) for k in ks])
    ax_a.set_yscale("log")
    ax_a.set_xlabel("gradient registers k")
    ax_a.set_ylabel("final MSE loss")
    ax_a.grid(True, which="both", alpha=0.3)
    ax_a.legend(fontsize=7, ncol=2 if len(corpora) > 2 else 1)
    ax_a.set_title("(a) final loss vs k (solid: validation, dashed: train)", fontsize=9)

    largest = corpora[-1]
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(ks):
        for r in results:
            if r["corpus"] == largest and r["k"] == k:
                ax_b.plot(_series(r, "epoch"), _positive(_series(r, "val_loss")),
                          color=cmap(i / max(1, len(ks) - 1)), lw=1.2, label=f"k={_k_label(k)}")
                break
    ax_b.set_yscale("log")
    ax_b.set_xlabel("epoch")
    _integer_epochs(ax_b)
    ax_b.set_ylabel("validation MSE loss")
    ax_b.grid(True, which="both", alpha=0.3)
    ax_b.legend(fontsize=7, ncol=2)
    tag = f"N={largest}" if largest is not None else "all rows"
    ax_b.set_title(f"(b) validation loss vs epoch, {tag}", fontsize=9)
    fig.suptitle(f"DPFM sweep: {_describe(results[0])}", fontsize=10)
    _save(fig, path)


# -- spread plots (dpfm.experiments) ------------------------------------------------------
#
# A *panel* is ``{"title": str, "series": [series, ...]}``; a *series* is a dict with
# ``label``, ``x`` (k values, or epochs), ``mean``, optionally ``lo``/``hi`` (the band or
# error bar: min and max over seeds) and ``points`` (per x, the single runs' values, drawn
# as dots), and optional ``color``, ``linestyle``, ``marker``.  ``None`` values (a diverged
# run, a missing cell) are left out.

def _clean(values, log):
    out = []
    for v in values:
        ok = v is not None and v == v and (v > 0 or not log)
        out.append(float(v) if ok else float("nan"))
    return out


def _spread_axes(plt, panels, figsize):
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=figsize or (5.2 * n + 0.6, 4.4), layout="constrained",
                             squeeze=False)
    return fig, list(axes[0])


def _plain_log_formatter(**kw):
    """matplotlib's log tick labelling (which minor ticks get a label depends on the range
    shown) with plain numbers, ``0.002`` rather than ``2 x 10^-3``."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(**kw)


def _finish(ax, panel, ylabel, log, ylim, legend_cols):
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=legend_cols)
    ax.set_title(panel.get("title", ""), fontsize=9)


def plot_spread_vs_k(panels, path, *, ylabel, title=None, log=True, ylim=None, figsize=None,
                     legend_cols=1, hline=None):
    """One value against k per series: mean line, min-max error bars, single runs as dots.

    ``x`` holds k values (``"full"`` sorts last); every panel shares the k axis of all its
    series.  ``hline`` draws a dotted reference line (e.g. 1 for a ratio).  Atomic write.
    """
    check_plot_path(path)
    plt = _pyplot()
    fig, axes = _spread_axes(plt, panels, figsize)
    for ax, panel in zip(axes, panels):
        ks = sorted({k for s in panel["series"] for k in s["x"]}, key=_k_order)
        pos = {k: i for i, k in enumerate(ks)}
        nser = len(panel["series"])
        for si, s in enumerate(panel["series"]):
            color = s.get("color", f"C{si}")
            shift = (si - (nser - 1) / 2) * 0.06          # keep error bars apart
            xs = [pos[k] + shift for k in s["x"]]
            mean = _clean(s["mean"], log)
            if s.get("lo") is not None and s.get("hi") is not None:
                lo, hi = _clean(s["lo"], log), _clean(s["hi"], log)
                err = [[max(m - a, 0.0) for m, a in zip(mean, lo)],
                       [max(b - m, 0.0) for m, b in zip(mean, hi)]]
                ax.errorbar(xs, mean, yerr=err, color=color, linestyle=s.get("linestyle", "-"),
                            marker=s.get("marker", "o"), ms=4, capsize=3, lw=1.3,
                            label=s["label"])
            else:
                ax.plot(xs, mean, color=color, linestyle=s.get("linestyle", "-"),
                        marker=s.get("marker", "o"), ms=4, lw=1.3, label=s["label"])
            for x, pts in zip(xs, s.get("points") or []):
                pts = [p for p in _clean(pts, log) if p == p]
                ax.plot([x + 0.03] * len(pts), pts, ".", color=color, ms=3, alpha=0.5)
        if hline is not None:
            ax.axhline(hline, color="0.3", lw=0.8, linestyle=":")
        ax.set_xticks(range(len(ks)), [_k_label(k) for k in ks])
        ax.set_xlim(-0.5, len(ks) - 0.5)
        ax.set_xlabel(panel.get("xlabel", "gradient registers k"))
        _finish(ax, panel, ylabel, log, ylim, legend_cols)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_spread_vs_epoch(panels, path, *, ylabel, title=None, log=True, ylim=None,
                         figsize=None, legend_cols=2):
    """Curves against epoch per series: mean line and a shaded min-max band.  Atomic write."""
    check_plot_path(path)
    plt = _pyplot()
    fig, axes = _spread_axes(plt, panels, figsize)
    for ax, panel in zip(axes, panels):
        for si, s in enumerate(panel["series"]):
            color = s.get("color", f"C{si}")
            ax.plot(s["x"], _clean(s["mean"], log), color=color, lw=1.2,
                    linestyle=s.get("linestyle", "-"), label=s["label"])
            if s.get("lo") is not None and s.get("hi") is not None:
                ax.fill_between(s["x"], _clean(s["lo"], log), _clean(s["hi"], log),
                                color=color, alpha=0.15, lw=0)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        _finish(ax, panel, ylabel, log, ylim, legend_cols)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
