"""``dpfm bench``: DPFM's speed against what users would pick instead, measured in one run.

::

    dpfm bench [--json bench.json] [--plot bench.png] [--steps 200] [--no-hw] [--no-synth]

Rows (printed as a table, written as a JSON list of dicts, drawn as a PNG):

``numpy``
    µs per training step of the float64 reference (``MLP.step_raw``, exact policy, maxnorm),
    the steps alone (no evaluation passes), for sum4 (net 4-5-5-1) and a digits net at
    k = 4, 16 and full.
``hardware``
    clock cycles per training step from the engine's own CYCLES counter on the Verilator
    model of that Config (batch 10, maxnorm), and µs at the clock that build can reach: the
    lower of its static timing estimate (:mod:`dpfm.rtl.timing` on the Yosys netlist of that
    very Config, cached by the Verilog's hash) and the PYNQ-Z2's FCLK0 of 100 MHz.  Without an
    estimate (``--no-synth`` and nothing cached) the row has cycles and no µs.  A k the engine
    cannot be generated for is a row with the reason instead of numbers.
``torch``
    torch eager on this CPU, the same net, data sizes, sgd and batch, measured side by side
    when ``torch`` is importable (an optional extra: ``pip install -e '.[torch]'``); otherwise a
    row saying it was skipped.
``anchor``
    the measured rows of ``../shared/anchors`` (GPU and CPU frameworks), for reference.
``synth``
    the Yosys estimate of each hardware row's PYNQ-Z2 design (LUT, FF, DSP48E1, BRAM36) and
    its timing estimate (worst path, fmax), reused from an earlier run when the engine's
    Verilog is unchanged (a whole engine takes Yosys several CPU-minutes).

Every measured row carries ``vs``: for each anchor of the same net, ``anchor µs / row µs``
(above 1: the row is faster).  The digits rows use the anchors' digits-sized net
64-32(sigmoid)-10(linear), 2410 parameters, on the digits data.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dpfm.files import check_output_path, write_json

__all__ = ["main", "run_bench", "load_anchors", "format_table", "plot_bench", "FCLK_HZ", "WORKLOADS",
           "engine_clock_hz", "at_clock", "hardware_row", "synth_row"]

PROG = "dpfm bench"
#: PYNQ-Z2 fabric clock (FCLK0): the fastest the engine is clocked, whatever its estimate.
FCLK_HZ = 100e6
#: name -> (task, net, activations); nets as in ../shared/anchors.
WORKLOADS = {
    "sum4": ("sum4", (4, 5, 5, 1), ("sigmoid", "sigmoid", "linear")),
    "digits": ("digits", (64, 32, 10), ("sigmoid", "linear")),
}
KS = (4, 16, "full")
BATCH = 10
LR = 0.01
#: Largest k the bench asks the engine generator for: the engine keeps an activation's k
#: registers in one memory word (k x (index + gradient) bits), so k of the thousands makes a
#: model far beyond the XC7Z020 and beyond what Verilator compiles in minutes.
HW_MAX_K = 128
#: anchors: (framework, device) -> label
_ANCHOR_NETS = {(4, 5, 5, 1): "sum4", (64, 32, 0, 10): "digits"}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _log(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


# -- anchors ----------------------------------------------------------------------------------

def anchors_dir() -> Path:
    """``../shared/anchors`` beside the checkout (``$DPFM_ANCHORS`` overrides)."""
    env = os.environ.get("DPFM_ANCHORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "anchors"


def load_anchors(folder=None) -> list:
    """The measured anchor rows: dicts with ``workload``, ``system``, ``us_per_step``, ``file``.

    One row per JSON line that names a framework and a net of :data:`WORKLOADS`; synced
    latencies (``us_p50``) count as that system's µs per step.  A missing folder gives [].
    """
    folder = Path(folder) if folder is not None else anchors_dir()
    rows = []
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        device_name = None
        for line in path.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue                    # a stray log line in the capture
            if not isinstance(d, dict):
                continue
            if "gpu" in d and "framework" not in d:
                device_name = d["gpu"]
                continue
            wl = _ANCHOR_NETS.get(tuple(d.get("net", ())))
            us = d.get("us_per_step", d.get("us_p50"))
            if wl is None or "framework" not in d or us is None:
                continue
            device = d.get("device", "?")
            where = device_name if device in ("cuda", "gpu") and device_name else (
                "2-core CPU" if "2core" in path.name else device)
            rows.append({"group": "anchor", "workload": wl, "system": f"{d['framework']} ({where})",
                         "k": None, "us_per_step": float(us), "file": path.name})
    return rows


def _vs(row_us, workload, anchors) -> dict:
    if not row_us:
        return {}
    return {a["system"]: a["us_per_step"] / row_us for a in anchors if a["workload"] == workload}


# -- measurements -----------------------------------------------------------------------------

def _task(workload):
    from dpfm.tasks import load_task
    name = WORKLOADS[workload][0]
    return load_task(name, corpus=400 if name == "sum4" else None, seed=0)


def _batches(task, steps, seed=0):
    """``steps`` batches of :data:`BATCH` rows, drawn as training draws them (fresh permutations)."""
    rng = np.random.default_rng(seed)
    n, out = len(task.X_train), []
    while len(out) < steps:
        order = rng.permutation(n)
        out += [order[s:s + BATCH] for s in range(0, n - BATCH + 1, BATCH)]
    return out[:steps]


def numpy_row(workload, k, steps, budget_s=20.0) -> dict:
    """µs per step of the float64 reference (steps only; at most ``budget_s`` of them)."""
    from dpfm.reference import MLP
    from dpfm.reference.mlp import resolve_k
    _, net, acts = WORKLOADS[workload]
    task = _task(workload)
    mlp = MLP(net, acts, seed=0)
    params = mlp.params.copy()
    k_steps = resolve_k(k, mlp.n_params)
    X, y = task.X_train, task.y_train.reshape(len(task.X_train), -1)
    sel = _batches(task, steps)
    mlp.step_raw(X[sel[0]], y[sel[0]], params, k_steps, LR, "maxnorm", None, "exact")   # warm (numba)
    t0, done = time.perf_counter(), 0
    for s in sel:
        params = mlp.step_raw(X[s], y[s], params, k_steps, LR, "maxnorm", None, "exact").params
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    us = (time.perf_counter() - t0) / done * 1e6
    return {"group": "numpy", "workload": workload, "system": "DPFM reference (numpy, float64)",
            "k": k, "registers": mlp.n_params if k == "full" else min(k, mlp.n_params),
            "steps": done, "us_per_step": us}


def _hw_config(workload, k):
    from dpfm.config import Config
    _, net, acts = WORKLOADS[workload]
    from dpfm.reference.mlp import param_layout
    n_params = param_layout(net)[1]
    kk = n_params if k == "full" else k
    return Config(net=net, activations=acts, k=kk, batch=BATCH), n_params


def engine_clock_hz(estimate: dict | None) -> float | None:
    """The clock an engine build runs at: the lower of its estimated fmax and FCLK0 (Hz);
    None without a timing estimate."""
    if not estimate or "fmax_mhz" not in estimate:
        return None
    return min(FCLK_HZ, estimate["fmax_mhz"] * 1e6)


def at_clock(row: dict, estimate: dict | None) -> dict:
    """``row`` (a :func:`hardware_row`) with µs per step at :func:`engine_clock_hz` of
    ``estimate`` (the :func:`synth_row` of the same Config), or a note saying there is none."""
    clock = engine_clock_hz(estimate)
    if not row.get("cycles_per_step"):
        return row
    if clock is None:
        return {**row, "note": "no µs: no timing estimate of this build (run without "
                               "--no-synth once; it is cached)"}
    return {**row, "us_per_step": row["cycles_per_step"] / clock * 1e6, "clock_mhz": clock / 1e6,
            "system": f"DPFM engine @ {clock / 1e6:.1f} MHz (estimated), cycles from Verilator"}


def hardware_row(workload, k, steps=5) -> dict:
    """Cycles per step from the engine's CYCLES counter on its Verilator model (µs come from
    :func:`at_clock`)."""
    config, n_params = _hw_config(workload, k)
    base = {"group": "hardware", "workload": workload, "k": k,
            "system": "DPFM engine, cycles from Verilator", "registers": config.k,
            "batch": BATCH, "lanes": config.lanes, "us_per_step": None}
    if config.k > HW_MAX_K:
        return {**base, "us_per_step": None,
                "note": f"not generated: k={config.k} registers per activation (one "
                        f"{config.k}-entry memory word each) is beyond the engine generator's "
                        f"practical limit of {HW_MAX_K} (and the XC7Z020)"}
    from dpfm.host import Trainer
    from dpfm.host.verilator import VerilatorTransport
    from dpfm.reference import MLP
    t0 = time.perf_counter()
    with VerilatorTransport(config) as transport:
        open_s = time.perf_counter() - t0
        trainer = Trainer(config, transport)
        trainer.load_weights(MLP(config.net, config.activations, seed=0))
        task = _task(workload)
        X, y = task.X_train, task.y_train.reshape(len(task.X_train), -1)
        cycles = [trainer.step(X[s], y[s], LR, "maxnorm").cycles for s in _batches(task, steps)]
    c = float(np.mean(cycles))
    return {**base, "cycles_per_step": c, "cycles_min": int(min(cycles)), "cycles_max": int(max(cycles)),
            "steps": steps,
            "build_cached": transport.build.cached, "build_s": round(transport.build.build_s, 1),
            "open_s": round(open_s, 1)}


def torch_row(workload, steps) -> dict:
    """torch eager on the CPU: the same net, batch and data sizes, sgd, MSE (if importable)."""
    _, net, acts = WORKLOADS[workload]
    base = {"group": "torch", "workload": workload, "system": "torch eager (this CPU, measured now)",
            "k": "full"}
    try:
        import torch
    except ImportError:
        return {**base, "us_per_step": None,
                "note": "skipped: torch is not importable (pip install -e '.[torch]')"}
    # one intra-op thread: these nets are tiny, and on a busy 2-core machine a second OpenMP
    # thread makes a step ~100x slower (spin-waiting), not faster
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {**base, **_torch_steps(torch, net, acts, workload, steps)}
    finally:
        torch.set_num_threads(threads)


def _torch_steps(torch, net, acts, workload, steps) -> dict:
    torch.manual_seed(0)
    layers = []
    for (a, b), act in zip(zip(net[:-1], net[1:]), acts):
        layers.append(torch.nn.Linear(a, b))
        if act == "sigmoid":
            layers.append(torch.nn.Sigmoid())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    task = _task(workload)
    X = torch.tensor(task.X_train, dtype=torch.float32)
    y = torch.tensor(task.y_train.reshape(len(task.X_train), -1), dtype=torch.float32)
    sel = [torch.as_tensor(s) for s in _batches(task, steps + 20)]

    def step(s):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X[s]), y[s])
        loss.backward()
        opt.step()

    for s in sel[:20]:
        step(s)                                   # warm-up
    t0 = time.perf_counter()
    for s in sel[20:]:
        step(s)
    us = (time.perf_counter() - t0) / steps * 1e6
    return {"us_per_step": us, "steps": steps, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def synth_row(config, cache_dir, *, run=True) -> dict | None:
    """Yosys estimate and static timing estimate of ``config``'s PYNQ-Z2 design.

    Cached under ``cache_dir`` by the SHA-256 of the engine's Verilog text: an estimate is
    reused only for the very same Verilog.  ``run=False`` returns only a cached estimate
    (None when there is none).
    """
    import hashlib

    from dpfm.boards.build import board_engine, estimate_design
    from dpfm.boards.wrapper import ENGINE_NAME
    from dpfm.rtl import timing
    from dpfm.toolchain import component_verilog
    text = component_verilog(board_engine(config), name=ENGINE_NAME)
    key = hashlib.sha256(text.encode()).hexdigest()[:20]
    cache = Path(cache_dir) / f"synth-{key}.json"
    net = "-".join(map(str, config.net))
    base = {"group": "synth", "workload": _workload_of(config),
            "system": f"Yosys estimate, xc7z020 (net {net})", "k": config.k,
            "batch": config.batch, "lanes": config.lanes, "us_per_step": None,
            "verilog_sha256": key}
    if cache.is_file():
        res, cached = json.loads(cache.read_text()), True
        if "fmax_mhz" not in res:           # an estimate from before the timing estimate
            cached = False
    if not cache.is_file() or not cached:
        if not run:
            return None
        t0 = time.perf_counter()
        res = estimate_design(config, Path(cache_dir) / f"synth-work-{key}")
        report = timing.analyze_file(res["netlist"])
        worst = report.paths[0] if report.paths else None
        res = {k: v for k, v in res.items() if k not in ("cells", "netlist")}
        res.update(worst_ns=report.worst_ns, fmax_mhz=report.fmax_mhz,
                   worst_path=None if worst is None else f"{worst.start} -> {worst.end} "
                                                         f"({worst.depth})")
        res["yosys_s"] = round(time.perf_counter() - t0, 1)
        write_json(cache, res, make_dirs=True)
        cached = False
    return {**base, **{k: res[k] for k in ("LUT", "FF", "DSP48E1", "BRAM36", "util_pct", "soft_mul",
                                           "worst_ns", "fmax_mhz", "worst_path")},
            "clock_mhz": engine_clock_hz(res) / 1e6, "yosys_s": res.get("yosys_s"), "cached": cached}


def _workload_of(config) -> str:
    for name, (_, net, acts) in WORKLOADS.items():
        if tuple(config.net) == net and tuple(config.activations) == acts:
            return name
    return "-".join(map(str, config.net))


# -- the run ----------------------------------------------------------------------------------

def run_bench(*, steps=200, hw=True, synth=True, torch=True, cache_dir="build/bench",
              anchors=None) -> list:
    """Every row, in the order of the table.  The wall-clock timings (numpy, torch) run first
    and alone; then the hardware builds and the Yosys estimate, two at a time (their work is in
    subprocesses and compiled code, but generating Verilog holds the interpreter)."""
    anchor_rows = load_anchors(anchors)
    rows = []
    for wl in WORKLOADS:
        for k in KS:
            _log(f"numpy {wl} k={k}")
            rows.append(numpy_row(wl, k, steps))
        if torch:
            _log(f"torch {wl}")
            rows.append(torch_row(wl, steps))
    configs = {(wl, k): _hw_config(wl, k)[0] for wl in (WORKLOADS if hw else ()) for k in KS}
    configs = {key: c for key, c in configs.items() if c.k <= HW_MAX_K}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        # the estimates first (minutes each when not cached), so the hardware rows get a clock
        estimates = {key: pool.submit(synth_row, c, cache_dir, run=synth)
                     for key, c in configs.items()}
        hw_futures = {(wl, k): pool.submit(hardware_row, wl, k)
                      for wl in (WORKLOADS if hw else ()) for k in KS}
        for (wl, k), fut in hw_futures.items():
            _log(f"hardware {wl} k={k} (Verilator build and Yosys estimate when not cached)")
            est = estimates[(wl, k)].result() if (wl, k) in estimates else None
            rows.append(at_clock(fut.result(), est))
            if est is not None:
                rows.append(est)
    for r in rows:
        if r["group"] != "synth":
            r["vs"] = _vs(r.get("us_per_step"), r["workload"], anchor_rows)
    order = {"numpy": 0, "torch": 1, "hardware": 2, "synth": 4}
    rows.sort(key=lambda r: (order[r["group"]], list(WORKLOADS).index(r["workload"])))
    return rows + anchor_rows


def _fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def format_table(rows) -> str:
    """The rows as a plain text table (every row; notes on lines of their own)."""
    head = ["group", "workload", "system", "k", "cycles/step", "µs/step", "x torch-cpu", "x best GPU"]
    lines, notes = [], []
    for r in rows:
        vs = r.get("vs") or {}
        torch_cpu = next((v for s, v in vs.items() if s.startswith("torch-eager (2-core")), None)
        gpu = next((v for s, v in vs.items() if s.startswith("torch-cudagraph-synced")), None)
        system = r["system"]
        if r["group"] == "synth":
            u = r["util_pct"]
            system = (f"LUT {r['LUT']:,} ({u['LUT']}%), FF {r['FF']:,} ({u['FF']}%), "
                      f"DSP48E1 {r['DSP48E1']} ({u['DSP48E1']}%), BRAM36 {r['BRAM36']} ({u['BRAM36']}%)"
                      + (" [cached]" if r.get("cached") else f" [Yosys {r.get('yosys_s')} s]"))
        lines.append([r["group"], r["workload"], system, _fmt(r.get("k")),
                      _fmt(r.get("cycles_per_step"), 0), _fmt(r.get("us_per_step"), 2),
                      _fmt(torch_cpu, 2), _fmt(gpu, 2)])
        if r.get("note"):
            notes.append(f"  {r['group']} {r['workload']} k={r.get('k')}: {r['note']}")
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*l) for l in lines]
    out += ["x torch-cpu / x best GPU: anchor µs per step divided by the row's (above 1: faster); "
            "anchors torch-eager (2-core CPU) and torch-cudagraph-synced (H200)."]
    return "\n".join(out + notes)


def plot_bench(rows, path) -> None:
    """µs per training step, log scale, one panel per workload."""
    from dpfm.plots import _pyplot, _save
    plt = _pyplot()
    wls = list(WORKLOADS)
    fig, axes = plt.subplots(1, len(wls), figsize=(13, 6.5), squeeze=False)
    colors = {"numpy": "tab:blue", "hardware": "tab:green", "torch": "tab:orange", "anchor": "tab:gray"}
    for ax, wl in zip(axes[0], wls):
        sel = [r for r in rows if r["workload"] == wl and r.get("us_per_step")]
        labels = [r["system"] + (f", k={r['k']}" if r["group"] in ("numpy", "hardware") else "")
                  for r in sel]
        ax.barh(range(len(sel)), [r["us_per_step"] for r in sel],
                color=[colors.get(r["group"], "k") for r in sel])
        ax.set_yticks(range(len(sel)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("µs per training step (log)")
        net = "-".join(map(str, WORKLOADS[wl][1]))
        ax.set_title(f"{wl} (net {net}, batch {BATCH})")
        ax.grid(axis="x", which="both", alpha=0.3)
    fig.suptitle("DPFM vs what users would pick instead (green: engine at its estimated clock; "
                 "blue: numpy reference; gray: anchors)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def main(argv=None) -> int:
    p = _Parser(prog=PROG, description="Speed of DPFM (reference, engine cycles, Yosys "
                "estimate) against the measured anchors, in one run.")
    p.add_argument("--json", metavar="PATH", default="build/bench/bench.json",
                   help="rows as a JSON list (default build/bench/bench.json)")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="chart (default: the JSON's path with .png)")
    p.add_argument("--steps", type=int, default=200, help="timed steps per numpy/torch row")
    p.add_argument("--no-hw", action="store_true", help="skip the Verilator rows")
    p.add_argument("--no-synth", action="store_true", help="skip the Yosys estimate")
    p.add_argument("--no-torch", action="store_true", help="skip torch even when importable")
    p.add_argument("--anchors", metavar="DIR", help="anchor folder (default ../shared/anchors)")
    try:
        args = p.parse_args(argv)
        if args.steps < 1:
            raise UsageError(f"--steps must be at least 1, not {args.steps}")
        from dpfm.plots import check_plot_path
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        check_output_path(args.json, "--json")
        plot = args.plot or str(Path(args.json).with_suffix(".png"))
        check_plot_path(plot)
        check_output_path(plot, "--plot")
        if args.anchors and not Path(args.anchors).is_dir():
            raise UsageError(f"--anchors {args.anchors}: no such folder")
    except (UsageError, ValueError) as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    rows = run_bench(steps=args.steps, hw=not args.no_hw, synth=not args.no_synth,
                     torch=not args.no_torch, cache_dir=Path(args.json).parent, anchors=args.anchors)
    print(format_table(rows))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores",
            "wall_s": round(time.perf_counter() - t0, 1)}
    write_json(args.json, [{"group": "meta", **meta}] + rows)
    plot_bench(rows, plot)
    print(f"wrote {args.json} and {plot} in {meta['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
