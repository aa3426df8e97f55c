"""Run mode against per-step mode on the Verilator model: bus accesses, engine cycles, wall time
and weights, for one task and Config (issue 13's measurements).

    python tools/measure_run_mode.py --task sum4 --k 16 --epochs 250 [--stalls] [--json F]

Per-step mode also reads CYCLES after every forward-only pass (not what ``Trainer`` does) so
that the compute cycles of the whole run are measured, not inferred: training steps plus
evaluation passes.  Run mode's cycles are the engine's RUN_CYCLES counter of the whole run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> int:
    from dpfm.backends import hw_config
    from dpfm.host import Trainer
    from dpfm.host.verilator import VerilatorTransport
    from dpfm.reference import MLP
    from dpfm.reference.mlp import weights_sha256
    from dpfm.spec import prepare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="sum4")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stalls", action="store_true",
                   help="memory with 20 %% backpressure on every channel, latency 24 and long stalls")
    p.add_argument("--modes", default="run,step")
    p.add_argument("--json")
    args = p.parse_args(argv)

    run = {"k": args.k, "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
           "backend": "fixed"}
    run.update({"data": args.task} if args.task.endswith(".npz") else {"task": args.task})
    prep = prepare(run)
    spec, task = prep.spec, prep.task
    config = hw_config(spec)
    out = {"task": args.task, "k": args.k, "epochs": args.epochs, "config_hash": config.hash,
           "stalls": args.stalls}
    eval_cycles = [0]

    class CountingTrainer(Trainer):
        def step_raw(self, Xq, yq, lr=0.0, update="none"):
            r = super().step_raw(Xq, yq, lr, update)
            if update == "none":
                eval_cycles[0] += self.transport.read(self.regmap["CYCLES"].offset)
            return r

    with VerilatorTransport(config) as t:
        if args.stalls:
            t.memory_config(latency=24, stall_pct=20, long_stall_ppm=100, long_stall_cycles=300,
                            seed=7)
        for mode in args.modes.split(","):
            tr = (CountingTrainer if mode == "step" else Trainer)(config, t)
            tr.load_weights(MLP(spec["net"], spec["activations"], seed=args.seed))
            eval_cycles[0] = 0
            a0, c0, w0 = t.bus_accesses, t.total_cycles, time.perf_counter()
            hist = tr.fit(task.X_train, task.y_train, epochs=args.epochs, lr=args.lr,
                          update=spec["update"], validation=(task.X_val, task.y_val),
                          seed=args.seed, classify=task.classify, mode=mode)
            wall = time.perf_counter() - w0
            acc = t.bus_accesses - a0
            row = {"wall_s": wall, "bus_accesses": acc, "accesses_per_epoch": acc / args.epochs,
                   "steps": hist.steps, "simulated_cycles": t.total_cycles - c0,
                   "weights_sha256": weights_sha256(tr.weights()),
                   "final_train_loss": hist.train_loss[-1],
                   "final_val_loss": hist.val_loss[-1] if hist.val_loss else None,
                   "train_step_cycles": tr.cycle_stats.total}
            if mode == "step":
                row["eval_cycles"] = eval_cycles[0]
                row["compute_cycles"] = tr.cycle_stats.total + eval_cycles[0]
            else:
                lo, hi = t.read_many([t.regmap["RUN_CYCLES_LO"].offset,
                                      t.regmap["RUN_CYCLES_HI"].offset])
                row["run_cycles"] = lo | hi << 32
                row["memory_bursts"] = t.memory_bursts()
            out[mode] = row
            print(mode, json.dumps(row), flush=True)
    if "run" in out and "step" in out:
        out["run_cycles_over_compute"] = out["run"]["run_cycles"] / out["step"]["compute_cycles"]
        out["wall_ratio_step_over_run"] = out["step"]["wall_s"] / out["run"]["wall_s"]
        out["same_weights"] = out["run"]["weights_sha256"] == out["step"]["weights_sha256"]
        print(json.dumps({k: out[k] for k in ("run_cycles_over_compute", "wall_ratio_step_over_run",
                                              "same_weights")}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
