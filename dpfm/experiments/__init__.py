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
``estimators``
    Every gradient estimator of :data:`dpfm.reference.estimators.ESTIMATORS` at k = 4, 16
    and 64 lanes per activation, and dense gradients (``topk`` at ``full``) beside them, on
    sum4, digits and cancer (scikit-learn's breast cancer data), each at its task's default
    update rule and epochs; five seeds; the multiplies per step of every setting.

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
import json
import os
import sys

from dpfm.files import check_output_path, write_json

from .collect import run_experiments
from .figures import make_figures
from .page import tables, update_page
from .plan import (EST_NAMES, FIGURES, FULL, GROUPS, JSON_NAME, MD_NAME, PROG, QUICK, VARIANTS,
                   Plan)
from .stats import rounded


__all__ = ["main", "Plan", "FULL", "QUICK", "GROUPS", "VARIANTS", "EST_NAMES", "run_experiments",
           "FIGURES"]


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
        data = rounded(data)
        write_json(json_path, data)
    written = make_figures(data, fig_dir)
    update_page(os.path.join(args.out, MD_NAME), tables(data))
    what = f"read {json_path}" if args.replot else f"wrote {json_path}"
    print(f"{what}; wrote {len(written)} figures in {fig_dir} and the tables of "
          f"{os.path.join(args.out, MD_NAME)}"
          + ("" if args.replot else f"; {data['meta']['wall_s']:.0f} s"), flush=True)
    return 0
