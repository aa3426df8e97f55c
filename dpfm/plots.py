"""Plots of runs and sweeps (matplotlib, Agg backend), written atomically.

:func:`plot_run`
    Train and validation loss against epoch (log scale); validation accuracy on a second axis
    for classification runs.
:func:`plot_sweep`
    Like the seed's figures: (a) final train and validation loss against k, one line per
    corpus size, ``full`` as the last tick; (b) validation loss against epoch for each k at
    the largest corpus.
"""

from __future__ import annotations

import os

from dpfm.runs import atomic_path

__all__ = ["plot_run", "plot_sweep", "check_plot_path", "PLOT_FORMATS"]


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
