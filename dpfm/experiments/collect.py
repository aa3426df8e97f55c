"""Running a plan and collecting every group's summaries and the machine's description."""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import asdict

from dpfm import __version__

from .plan import GROUPS, Plan, Runner, group_cells
from .stats import summarise, summarise_estimators


def _machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": list(load) if load else None}


def run_experiments(plan: Plan, jobs=None, log=print) -> dict:
    """Run every group of ``plan``; returns the JSON-able dict (``meta``, ``groups``)."""
    import numpy

    meta = {"date": datetime.date.today().isoformat(), "machine": _machine(), "jobs": jobs,
            "plan": asdict(plan), "dpfm_version": __version__, "numpy": numpy.__version__}
    runner = Runner(jobs)
    groups = {}
    t_all = time.perf_counter()
    plan_cells = group_cells(plan)
    for gi, name in enumerate(GROUPS, 1):
        cells, seeds = plan_cells[name]
        configs = [{**c, "seed": s} for _, c in cells for s in seeds]
        t0, new0 = time.perf_counter(), runner.new
        flat = runner(configs)
        results = [flat[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(cells))]
        wall = time.perf_counter() - t0
        if name == "estimators":
            groups[name] = summarise_estimators(cells, seeds, results)
        else:
            groups[name] = summarise(name, cells, seeds, results,
                                     curves=name in ("sum4_k", "digits_k"))
        groups[name]["wall_s"] = wall
        groups[name]["new_runs"] = runner.new - new0
        log(f"[{gi}/{len(GROUPS)}] {name}: {len(configs)} runs ({runner.new - new0} new) in "
            f"{wall:.1f} s; {time.perf_counter() - t_all:.0f} s so far")
    meta["wall_s"] = time.perf_counter() - t_all
    meta["runs"] = runner.new
    meta["run_wall_s_total"] = sum(r["wall_s"] for r in runner.cache.values())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    meta["machine"]["loadavg_at_end"] = list(load) if load else None
    return {"meta": meta, "groups": groups}
