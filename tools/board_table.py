"""docs/board.md's table of Configs: resources, estimated fmax, cycles per step (bound and
measured mean), µs at the clock the build reaches and the ratio to the anchors.

    python tools/board_table.py [--rows default,seed-k4,seed-k61-b4,digits-k16] [--epochs N]
                                [--no-synth] [--json F] [--markdown F]

One row per Config (net, k, batch):

- **resources and fmax**: :func:`dpfm.bench.synth_row`, the Yosys estimate and the static
  timing estimate of that Config's PYNQ-Z2 design, cached under ``build/bench`` by the
  Verilog's hash (a whole engine takes Yosys several CPU-minutes);
- **cycles, bound**: :func:`dpfm.sim.engine_expect.step_cycles` (maxnorm), the guaranteed
  most a training step can take;
- **cycles, mean / min / max**: the engine's CYCLES of every training step of a real run on
  the Verilator model (``Trainer.fit``, maxnorm, lr 0.01, seed 0, no validation passes);
- **µs** at :func:`dpfm.bench.engine_clock_hz` (the lower of the estimate and FCLK0), for the
  bound and the mean, and ``anchor µs / DPFM µs`` (above 1: DPFM is faster) for the anchors
  of the same net (``../shared/anchors``).
"""

from __future__ import annotations

import argparse
import sys
import time

#: name -> (workload, k, batch); workloads as dpfm.bench.WORKLOADS
ROWS = {
    "default": ("sum4", 16, 10),
    "seed-k4": ("sum4", 4, 10),
    "seed-k61-b4": ("sum4", 61, 4),
    "digits-k16": ("digits", 16, 10),
    "digits-k4": ("digits", 4, 10),
}
#: anchors shown as columns: (system, label)
ANCHORS = (("torch-cudagraph-synced (NVIDIA H200)", "H200 CUDA graph, synced"),
           ("jax-jit (2-core CPU)", "JAX jit, 2-core CPU"),
           ("jax-scan-fused (2-core CPU)", "JAX fused run, 2-core CPU"))
#: epochs of the measured run per workload (sum4: 32 steps an epoch; digits: 143)
EPOCHS = {"sum4": 10, "digits": 2}


def config_of(name):
    from dpfm.bench import WORKLOADS
    from dpfm.config import Config
    workload, k, batch = ROWS[name]
    _, net, acts = WORKLOADS[workload]
    return workload, Config(net=net, activations=acts, k=k, batch=batch)


def measured_cycles(workload, config, epochs):
    """CYCLES of every training step of ``epochs`` epochs on the Verilator model."""
    from dpfm.bench import _task
    from dpfm.host import Trainer
    from dpfm.host.verilator import VerilatorTransport
    from dpfm.reference import MLP
    task = _task(workload)
    X, y = task.X_train, task.y_train.reshape(len(task.X_train), -1)
    with VerilatorTransport(config) as transport:
        trainer = Trainer(config, transport)
        trainer.load_weights(MLP(config.net, config.activations, seed=0))
        trainer.fit(X, y, epochs=epochs, lr=0.01, update="maxnorm", seed=0)
        return trainer.cycle_stats


def row(name, *, epochs=None, synth=True, cache="build/bench"):
    from dpfm.bench import engine_clock_hz, load_anchors, synth_row
    from dpfm.sim.engine_expect import step_cycles
    workload, config = config_of(name)
    t0 = time.perf_counter()
    est = synth_row(config, cache, run=synth)
    stats = measured_cycles(workload, config, epochs or EPOCHS[workload])
    bound = step_cycles(config, update="maxnorm")
    out = {"row": name, "net": "-".join(map(str, config.net)), "k": config.k, "batch": config.batch,
           "lanes": config.lanes, "cycles_bound": bound, "cycles_mean": stats.mean,
           "cycles_min": stats.min, "cycles_max": stats.max, "steps": stats.steps,
           "estimate": est, "anchors": {}}
    clock = engine_clock_hz(est) if est else None
    if clock:
        out["clock_mhz"] = clock / 1e6
        out["us_bound"] = bound / clock * 1e6
        out["us_mean"] = stats.mean / clock * 1e6
        for a in load_anchors():
            if a["workload"] == workload and a["system"] in dict(ANCHORS):
                out["anchors"][a["system"]] = {"us": a["us_per_step"],
                                               "vs_bound": a["us_per_step"] / out["us_bound"],
                                               "vs_mean": a["us_per_step"] / out["us_mean"]}
    out["measure_s"] = round(time.perf_counter() - t0, 1)
    return out


def markdown(rows) -> str:
    head = ["net", "k", "batch", "LUT (% of 53,200)", "FF (%)", "DSP48E1 (% of 220)",
            "BRAM36 (% of 140)", "est. fmax (MHz)", "clock (MHz)", "cycles: bound",
            "cycles: mean (min-max, steps)", "µs: bound / mean"]
    head += [f"x {label} (bound / mean)" for _, label in ANCHORS]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        e = r["estimate"] or {}
        u = e.get("util_pct", {})

        def res(key):
            return f"{e[key]:,} ({u.get(key, 0):.1f})" if key in e else "-"
        cells = [r["net"], str(r["k"]), str(r["batch"]), res("LUT"), res("FF"), res("DSP48E1"),
                 res("BRAM36"), f"{e['fmax_mhz']:.1f}" if "fmax_mhz" in e else "-",
                 f"{r['clock_mhz']:.0f}" if "clock_mhz" in r else "-", f"{r['cycles_bound']:,}",
                 f"{r['cycles_mean']:,.0f} ({r['cycles_min']:,}-{r['cycles_max']:,}, {r['steps']})",
                 f"{r['us_bound']:.2f} / {r['us_mean']:.2f}" if "us_bound" in r else "-"]
        for system, _ in ANCHORS:
            a = r["anchors"].get(system)
            cells.append(f"{a['vs_bound']:.2f} / {a['vs_mean']:.2f}" if a else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from dpfm.files import write_json, write_text
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--epochs", type=int, help="epochs of the measured run (default per workload)")
    p.add_argument("--no-synth", action="store_true", help="only cached estimates")
    p.add_argument("--json")
    p.add_argument("--markdown")
    args = p.parse_args(argv)
    names = args.rows.split(",")
    bad = [n for n in names if n not in ROWS]
    if bad:
        print(f"board_table: unknown row(s) {', '.join(bad)}; known: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    rows = []
    for n in names:
        r = row(n, epochs=args.epochs, synth=not args.no_synth)
        print(f"{n}: bound {r['cycles_bound']:,}, mean {r['cycles_mean']:,.1f} "
              f"({r['cycles_min']:,}-{r['cycles_max']:,}), {r['measure_s']} s", file=sys.stderr)
        rows.append(r)
        if args.json:
            write_json(args.json, rows, make_dirs=True)
    text = markdown(rows)
    if args.markdown:
        write_text(args.markdown, text, make_dirs=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
