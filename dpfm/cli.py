"""The ``dpfm`` command line.

::

    dpfm train --backend numpy|fixed|verilator|pynq --task sum4|poly|digits | --data FILE.npz
               [--k 16|full] [--epochs N] [--batch 10] [--lr LR] [--update maxnorm|sgd]
               [--seed 0] [--corpus N] [--net 4,5,5,1] [--act sigmoid,sigmoid,linear]
               [--fixed BITS.FRAC] [--policy exact|stream] [--json run.json] [--plot run.png]
               [--estimator topk|topk-per-layer|randk|forward-gradient|multi-tangent]
               [--layer-k K,K,...] [--save CKPT] [--resume CKPT] [--mode auto|run|step]
               [--quiet]
    dpfm sweep ... --k 2,4,8,16,32,64,full --corpus 50,100,200,400
               [--jobs N | --scheduler tcp://HOST:8786]
    dpfm synth ...      (dpfm.rtl.synth)
    dpfm bench ...      (dpfm.bench)

Errors in the input (bad options, data, network, output paths) print one line
``dpfm: error: ...`` on stderr and exit with code 2 before anything is trained or written.
Output files are written atomically, and only after the run succeeded.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
import time

from dpfm import runs
from dpfm.backends import BACKEND_HELP, BACKENDS, MODES, HostBackend
from dpfm.config import ConfigError
from dpfm.files import check_output_path, write_json
from dpfm.reference import POLICIES, UPDATES
from dpfm.reference.estimators import ESTIMATORS
from dpfm.spec import parse_k, prepare
from dpfm.sweep import SchedulerError, run_many, sweep_configs
from dpfm.tasks import TASK_HELP, TASKS

__all__ = ["main", "build_parser"]

PROG = "dpfm"

#: Exceptions that, raised while validating the input, mean "bad input": one line, exit 2.
#: (ConfigError and TaskError are ValueErrors; listed for the reader.)
INPUT_ERRORS = (ValueError, TypeError, FileNotFoundError, ConfigError)

#: Sub-commands that live in modules of their own: name -> (module, help).  The module is
#: imported only when the sub-command runs and gets the remaining arguments as ``main(argv)``.
PASSTHROUGH = {
    "synth": ("dpfm.rtl.synth", "synthesise a block with Yosys and report resources "
                                "(--timing: a static timing estimate)"),
    "bench": ("dpfm.bench", "run the benchmarks"),
}


class UsageError(Exception):
    """An argparse error, reported as one line by :func:`main`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _fail(message) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 2


# -- parser -------------------------------------------------------------------------------

_TASKS_EPILOG = ("tasks and their defaults (when --lr/--epochs/--update are not given):\n" +
                 "\n".join(textwrap.fill(text, 78, initial_indent=f"  {name:8s}",
                                          subsequent_indent=" " * 10)
                           for name, text in TASK_HELP.items()))


def _add_run_arguments(p, sweep: bool):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--task", metavar="|".join(TASKS),
                     help="built-in task (default sum4)")
    src.add_argument("--data", metavar="FILE.npz",
                     help="your own data: an .npz with X_train, y_train, X_val, y_val")
    p.add_argument("--backend", default="numpy", choices=list(BACKENDS),
                   help="; ".join(f"{name}: {text}" for name, text in BACKEND_HELP.items())
                        + " (default numpy)")
    if sweep:
        p.add_argument("--k", default="2,4,8,16,32,64,full", metavar="K,K,...",
                       help="gradient registers per activation, comma-separated; 'full' keeps "
                            "all (default 2,4,8,16,32,64,full)")
        p.add_argument("--corpus", metavar="N,N,...",
                       help="corpus sizes (rows before the 80/20 split), comma-separated "
                            "(default: the task's, 400 for sum4 and poly, all of digits)")
    else:
        p.add_argument("--k", default="16", metavar="K|full",
                       help="gradient registers per activation; 'full' keeps all (default 16)")
        p.add_argument("--corpus", type=int, metavar="N",
                       help="rows before the 80/20 split (default 400 for sum4 and poly, "
                            "all 1797 for digits)")
    p.add_argument("--epochs", type=int, help="epochs (default: the task's)")
    p.add_argument("--batch", type=int, default=10, help="samples per step (default 10)")
    p.add_argument("--lr", type=float, help="learning rate (default: the task's)")
    p.add_argument("--update", choices=UPDATES,
                   help="maxnorm: w -= lr*delta/max|delta| (the seed's); sgd: w -= lr*delta "
                        "(default: sgd for poly, maxnorm otherwise)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the data, the initial weights and the batch order (default 0)")
    p.add_argument("--net", metavar="W,W,...", help="layer widths, inputs first (e.g. 4,5,5,1)")
    p.add_argument("--act", metavar="A,A,...",
                   help="one activation per layer: linear, relu, sigmoid, tanh")
    p.add_argument("--fixed", metavar="BITS.FRAC",
                   help="fixed-point backends: one format for values, weights and gradient registers "
                        "(default: the hardware's formats 24.16 / 18.12 / 18.14)")
    p.add_argument("--policy", choices=list(POLICIES),
                   help="pruning order: exact (the definition) or stream (the hardware's); "
                        "default exact for numpy, stream for the others; verilator and pynq "
                        "run stream only")
    p.add_argument("--estimator", default="topk", metavar="NAME",
                   help="gradient estimator, numpy backend (default topk): "
                        + "; ".join(f"{e.name}: {e.summary}" for e in ESTIMATORS.values()))
    p.add_argument("--layer-k", metavar="K,K,...",
                   help="topk-per-layer: one k per layer (default: the same share of each "
                        "layer's parameters at the multiplies of topk)")
    if not sweep:
        p.add_argument("--save", metavar="CKPT",
                       help="hardware backends: write a checkpoint after every epoch (atomically)")
        p.add_argument("--resume", metavar="CKPT", help="hardware backends: continue from a checkpoint")
        p.add_argument("--mode", choices=MODES,
                       help="hardware backends: run (the engine trains whole epochs from one "
                            "memory buffer, the host polls), step (the host drives every step "
                            "over the register bus; for debugging) or auto (run where the "
                            "engine has it; the default)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a plot (.png, .pdf, .svg, ...)")
    if sweep:
        where = p.add_mutually_exclusive_group()
        where.add_argument("--jobs", type=int,
                           help="parallel processes (default: every core; 1 runs serially)")
        where.add_argument("--scheduler", metavar="ADDRESS",
                           help="run on the Dask cluster whose scheduler listens at ADDRESS "
                                "(e.g. tcp://host:8786) instead of local processes")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="DPFM: train neural nets with Dynamic Pruning in "
                     "Forward Mode, on the reference model (numpy, fixed), the engine simulated with "
                     "Verilator (verilator) or the engine on a PYNQ-Z2 (pynq).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter
    train = sub.add_parser("train", help="train one network", formatter_class=fmt,
                           description="Train one network and report its losses.",
                           epilog=_TASKS_EPILOG)
    _add_run_arguments(train, sweep=False)
    train.set_defaults(handler=cmd_train)
    sweep = sub.add_parser("sweep", help="train every k x corpus combination",
                           formatter_class=fmt, epilog=_TASKS_EPILOG,
                           description="Train the same network for every k x corpus "
                                       "combination, in parallel over local cores or on a "
                                       "Dask cluster (--scheduler).")
    _add_run_arguments(sweep, sweep=True)
    sweep.set_defaults(handler=cmd_sweep)
    for name, (module, text) in PASSTHROUGH.items():
        sub.add_parser(name, help=f"{text} (see 'dpfm {name} --help')", add_help=False)
    return parser


# -- helpers ------------------------------------------------------------------------------

def _base_config(args) -> dict:
    return {
        "backend": args.backend,
        "task": args.task if args.task is not None else ("sum4" if args.data is None else None),
        "data": args.data, "net": args.net, "activations": args.act, "epochs": args.epochs,
        "batch": args.batch, "lr": args.lr, "update": args.update, "policy": args.policy,
        "seed": args.seed, "fixed": args.fixed, "estimator": args.estimator,
        "layer_k": args.layer_k,
    }


def _mode_backend(args):
    """The backend of ``--backend`` training in ``--mode`` (None: the registered one)."""
    if args.mode is None:
        return None
    backend = BACKENDS.get(args.backend)
    if not isinstance(backend, HostBackend):
        raise ValueError(f"--mode applies to the hardware backends (verilator, pynq), "
                         f"not to {args.backend!r}")
    return backend.with_mode(args.mode)


def _check_outputs(args):
    if args.plot is not None:
        from dpfm.plots import check_plot_path

        check_plot_path(args.plot)
        check_output_path(args.plot, "--plot")
    if args.json is not None:
        check_output_path(args.json, "--json")
    if getattr(args, "save", None) is not None:
        check_output_path(args.save, "--save")
    if args.json is not None and args.plot is not None and \
            os.path.abspath(args.json) == os.path.abspath(args.plot):
        raise ValueError(f"--json and --plot name the same file {args.json}")


def _progress_bar(args, total, desc, unit):
    """A tqdm bar on stderr, or None when quiet or stderr is not a terminal."""
    if args.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    tqdm.monitor_interval = 0       # no monitor thread (sweeps fork worker processes)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def _fmt(x, spec=".4g"):
    return "-" if x is None else format(x, spec)


def _summary(r) -> str:
    what = r["task"] if r["task"] != "data" else r["data"]
    est = "" if r["estimator"] == "topk" else f" {r['estimator']}"
    line = (f"{what} {r['backend']}{est} k={r['k']} {r['update']} lr={r['lr']:g}: "
            f"final train {_fmt(r['final_train_loss'])} val {_fmt(r['final_val_loss'])}, "
            f"min val {_fmt(r['min_val_loss'])} @ epoch {r['min_val_epoch']}")
    if "accuracy" in r:
        line += f", accuracy {_fmt(r['accuracy'], '.4f')}"
    line += (f"; {r['multiplies_per_step']} multiplies/step"
             f"; {r['steps']} steps in {r['train_s']:.2f} s "
             f"({_fmt(r['us_per_step'], '.0f')} us/step)")
    if r.get("setup_s"):
        transport = r.get("transport") or {}
        built = transport.get("build_cached") is False
        line += f" after {r['setup_s']:.2f} s {'building' if built else 'opening'} the engine"
    if r["diverged"]:
        line += "; DIVERGED (loss not finite: lower --lr)"
    if r["saturation_total"]:
        line += f"; {r['saturation_total']} saturations {r['saturations']}"
    if "poly_rows" in r:
        rows = " ".join("(" + ",".join(f"{v:.4f}" for v in row) + ")" for row in r["poly_rows"])
        line += f"\n  W rows {rows}, max |error| {r['poly_max_error']:.2e}"
    return line


# -- commands -----------------------------------------------------------------------------

def cmd_train(args) -> int:
    try:
        config = {**_base_config(args), "k": args.k, "corpus": args.corpus,
                  "save": args.save, "resume": args.resume}
        prep = prepare(config, _mode_backend(args))
        _check_outputs(args)
    except INPUT_ERRORS as e:
        return _fail(e)
    bar = _progress_bar(args, prep.spec["epochs"], f"{prep.spec['task']} k={prep.spec['k']}",
                        "epoch")

    def progress(epoch, hist):
        post = {"train": f"{hist.train_loss[-1]:.4g}"}
        if hist.val_loss:
            post["val"] = f"{hist.val_loss[-1]:.4g}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        result = runs.execute(prep, progress if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if args.json is not None:
        write_json(args.json, result)
    if args.plot is not None:
        from dpfm.plots import plot_run

        plot_run(result, args.plot)
    if not args.quiet:
        print(_summary(result))
    return 0


def _split_list(text, what):
    items = [t.strip() for t in str(text).split(",")]
    if not text or any(not t for t in items):
        raise ValueError(f"{what} must be a comma-separated list, not {text!r}")
    return items


def _parse_corpora(text):
    if text is None:
        return [None]
    out = []
    for t in _split_list(text, "--corpus"):
        try:
            out.append(int(t))
        except ValueError:
            raise ValueError(f"--corpus must list whole numbers of rows, not {t!r}") from None
    return out


def cmd_sweep(args) -> int:
    try:
        ks = [parse_k(t) for t in _split_list(args.k, "--k")]
        corpora = _parse_corpora(args.corpus)
        if len(set(ks)) != len(ks) or len(set(corpora)) != len(corpora):
            raise ValueError("--k and --corpus must not repeat a value")
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs} is below the minimum of 1")
        configs = sweep_configs(_base_config(args), ks, corpora)
        specs = [prepare(c).spec for c in configs]
        _check_outputs(args)
    except INPUT_ERRORS as e:
        return _fail(e)
    if args.scheduler is None:
        jobs = min(args.jobs or os.cpu_count() or 1, len(configs))
        executor, where = f"local:{jobs}", f"{jobs} jobs"
    else:
        jobs, executor, where = None, f"dask:{args.scheduler}", f"dask {args.scheduler}"
    t0 = time.perf_counter()
    bar = _progress_bar(args, len(configs), f"sweep {specs[0]['task']} ({where})", "run")

    def done(i, r):
        if bar is not None:
            bar.set_postfix({"k": r["k"], "N": r["corpus"], "val": _fmt(r["final_val_loss"])},
                            refresh=False)
            bar.update(1)

    try:
        try:
            results = run_many(configs, jobs=jobs, on_done=done, scheduler=args.scheduler)
        finally:
            if bar is not None:
                bar.close()
    except SchedulerError as e:    # raised before any run started: nothing is written
        return _fail(e)
    wall = time.perf_counter() - t0
    s0 = specs[0]
    out = {
        "sweep": {"task": s0["task"], "data": s0["data"], "backend": s0["backend"],
                  "k": ks, "corpus": [s["corpus"] for s in specs[::len(ks)]],
                  "epochs": s0["epochs"], "batch": s0["batch"], "lr": s0["lr"],
                  "update": s0["update"], "policy": s0["policy"], "seed": s0["seed"],
                  "estimator": s0["estimator"], "layer_k": s0["layer_k"],
                  "net": s0["net"], "activations": s0["activations"], "fixed": s0["fixed"]},
        "executor": executor, "jobs": jobs, "wall_s": wall, "runs": results,
    }
    if args.json is not None:
        write_json(args.json, out)
    if args.plot is not None:
        from dpfm.plots import plot_sweep

        plot_sweep(results, args.plot)
    if not args.quiet:
        print(f"{'corpus':>6} {'k':>5} {'final train':>12} {'final val':>10} {'min val':>10} "
              f"{'@epoch':>6} {'wall s':>7}")
        for r in results:
            print(f"{r['corpus'] if r['corpus'] is not None else '-':>6} {r['k']!s:>5} "
                  f"{_fmt(r['final_train_loss']):>12} {_fmt(r['final_val_loss']):>10} "
                  f"{_fmt(r['min_val_loss']):>10} {r['min_val_epoch'] or '-':>6} "
                  f"{r['wall_s']:7.2f}")
        on = f"{jobs} process(es)" if jobs is not None else f"the Dask cluster at {args.scheduler}"
        print(f"{len(results)} runs in {wall:.2f} s on {on}")
    return 0


def _passthrough(name, argv) -> int:
    module = PASSTHROUGH[name][0]
    try:
        return int(importlib.import_module(module).main(list(argv)) or 0)
    except ModuleNotFoundError as e:    # an optional dependency of the sub-command
        if (e.name or "dpfm").partition(".")[0] == "dpfm":
            raise                       # our own module: a bug, never hidden
        return _fail(f"'{PROG} {name}' needs module {e.name}, which is not installed "
                     f"(pip install 'dpfm[sim]')")
    except SystemExit as e:         # an argparse inside the sub-command
        return e.code if isinstance(e.code, int) else (0 if e.code is None else _fail(e.code))


def main(argv=None) -> int:
    """Run the ``dpfm`` command line; returns the exit code."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        if argv and argv[0] in PASSTHROUGH:
            return _passthrough(argv[0], argv[1:])
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except UsageError as e:
            return _fail(e)
        except SystemExit as e:     # --help
            return e.code if isinstance(e.code, int) else 0
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
