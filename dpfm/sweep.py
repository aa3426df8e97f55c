"""Many runs at once: every k x corpus combination, over local processes or a Dask cluster.

Results come back in the order of the configs whatever order the runs finish in, and equal
those of serial runs (each run depends only on its config; see :mod:`dpfm.runs`).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from dpfm.runs import run

__all__ = ["sweep_configs", "run_many", "run_on_dask", "SchedulerError", "SCHEDULER_TIMEOUT_S"]


def sweep_configs(base: dict, ks, corpora) -> list:
    """One config per ``corpus x k`` (corpus outer), each a copy of ``base``."""
    return [{**base, "corpus": c, "k": k} for c in corpora for k in ks]


def run_many(configs, jobs=None, on_done=None, scheduler=None) -> list:
    """Run every config, in parallel over ``jobs`` local processes (``None``: every core), or
    on the Dask cluster whose scheduler listens at ``scheduler`` (see :func:`run_on_dask`).

    Results come back in the order of ``configs`` whatever order the runs finish in, and are
    identical to running serially (each run depends only on its config).
    ``on_done(index, result)`` is called in the calling process as each run finishes.

    Raises
    ------
    ValueError
        ``jobs`` below 1, or both ``jobs`` and ``scheduler`` given.
    SchedulerError
        ``scheduler`` given and it cannot be used (see :func:`run_on_dask`).
    """
    if scheduler is not None:
        if jobs is not None:
            raise ValueError(f"jobs={jobs} and scheduler={scheduler!r} exclude each other: "
                             "the cluster's workers set the parallelism")
        return run_on_dask(configs, scheduler, on_done)
    configs = list(configs)
    jobs = (os.cpu_count() or 1) if jobs is None else int(jobs)
    if jobs < 1:
        raise ValueError(f"jobs={jobs} is below the minimum of 1")
    jobs = min(jobs, len(configs))
    results = [None] * len(configs)
    if jobs <= 1:
        for i, c in enumerate(configs):
            results[i] = run(c)
            if on_done:
                on_done(i, results[i])
        return results
    _warm_up(configs)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run, c): i for i, c in enumerate(configs)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_done:
                on_done(i, results[i])
    return results


def _warm_up(configs):
    """Load the compiled kernels in this process before the pool starts its workers: forked
    workers inherit them instead of each loading them again (about 0.5 s of CPU per worker).
    One warm-up per distinct backend and estimator; a config that does not validate is left
    to its run, which reports it."""
    if multiprocessing.get_start_method() != "fork":
        return
    from dpfm.spec import prepare

    seen = set()
    for c in configs:
        key = (c.get("backend", "numpy"), c.get("estimator"), c.get("policy"), c.get("update"))
        if key in seen:
            continue
        seen.add(key)
        try:
            prep = prepare(c)
        except (ValueError, TypeError, OSError):
            continue
        if hasattr(prep.backend, "warm_up"):
            prep.backend.warm_up(prep.spec)


#: Seconds :func:`run_on_dask` waits for the scheduler to answer before giving up.
SCHEDULER_TIMEOUT_S = 10


class SchedulerError(Exception):
    """A Dask scheduler cannot be used: ``dask.distributed`` is not installed, or the
    address is malformed or does not answer within :data:`SCHEDULER_TIMEOUT_S`."""


def _connect(address, timeout):
    try:
        from distributed import Client
    except ImportError as e:
        raise SchedulerError(f"running on a Dask cluster needs dask.distributed "
                             f"(pip install 'dask[distributed]'): {e}") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, ValueError) as e:      # TimeoutError is an OSError
        message = " ".join(str(e).split()) or type(e).__name__
    # A Client whose start failed still holds its event loop; collect it now, while the loop
    # runs, or its __del__ tries to close it at interpreter exit and prints a traceback.
    gc.collect()
    raise SchedulerError(f"cannot use the Dask scheduler at {address}: {message}")


def run_on_dask(configs, address, on_done=None, timeout=None) -> list:
    """Run every config on the Dask cluster whose scheduler listens at ``address``
    (``tcp://host:8786``), one task per config; results in the order of ``configs``.

    ``dask.distributed`` is imported here, and only here.  Every worker must have the same
    ``dpfm`` (and numpy) installed, and any ``data`` file at the same path; each result
    records the ``dpfm_version`` that produced it.  ``on_done(index, result)`` is called in
    the calling process as each run finishes.  The connection waits at most ``timeout``
    seconds (default :data:`SCHEDULER_TIMEOUT_S`); runs wait for workers as long as it takes.

    Raises
    ------
    SchedulerError
        Before any run is submitted, when the scheduler cannot be used.
    """
    configs = list(configs)
    client = _connect(address, SCHEDULER_TIMEOUT_S if timeout is None else timeout)
    try:
        from distributed import as_completed as dask_as_completed

        # pure=False: every config is its own task, even if two configs are equal.
        futures = client.map(run, configs, pure=False)
        index = {fut.key: i for i, fut in enumerate(futures)}
        results = [None] * len(configs)
        for fut in dask_as_completed(futures, loop=client.loop):
            i = index[fut.key]
            results[i] = fut.result()
            if on_done:
                on_done(i, results[i])
        return results
    finally:
        client.close()
