"""``dpfm sweep`` on every executor: serial, local processes, a Dask cluster (``--scheduler``).

Every executor must give the same results: a run depends only on its config.  The cluster is a
``distributed.LocalCluster`` with worker *processes*, like a real cluster's, so configs, the
``run`` function and results cross process boundaries by pickling exactly as they would there.
"""

import json
import subprocess
import sys

import pytest

from dpfm import cli, runs, sweep

#: A small sweep: sum4, k in {2, 4, full}, a tiny corpus, a few epochs, numpy backend.
SWEEP = ["sweep", "--task", "sum4", "--backend", "numpy", "--k", "2,4,full", "--corpus", "30",
         "--epochs", "3", "--quiet"]
#: Result fields that measure time, not the run: they differ between any two executions.
TIMING = set(runs.TIMING_KEYS)


def call(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _sweep(tmp_path, name, *options):
    """Run ``SWEEP`` through the CLI with ``options``; returns its JSON."""
    path = tmp_path / f"{name}.json"
    assert cli.main([str(a) for a in SWEEP + ["--json", path, *options]]) == 0
    return json.loads(path.read_text())


def _runs(sweep):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in sweep["runs"]]


def _assert_one_line_error(code, out, err, text):
    assert code == 2 and out == ""
    assert err.startswith("dpfm: error: ") and err.count("\n") == 1, err
    assert text in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def local_sweeps(tmp_path_factory):
    """The serial (``run_many(jobs=1)``) and local-parallel sweeps, run before the cluster
    starts: no worker process is forked while the Dask client's threads run."""
    tmp = tmp_path_factory.mktemp("local")
    return {name: _sweep(tmp, name, "--jobs", jobs)
            for name, jobs in (("serial", 1), ("parallel", 2))}


@pytest.fixture(scope="module")
def cluster(local_sweeps):
    """Two single-threaded worker *processes*: configs, ``run`` and results are pickled across
    processes as on a real cluster (threads would share the test's memory)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as c:
        yield c


def test_dask_sweep_equals_serial_and_local_parallel(local_sweeps, cluster, tmp_path):
    address = cluster.scheduler_address
    dask = _sweep(tmp_path, "dask", "--scheduler", address)
    serial, parallel = local_sweeps["serial"], local_sweeps["parallel"]
    assert (serial["executor"], serial["jobs"]) == ("local:1", 1)
    assert (parallel["executor"], parallel["jobs"]) == ("local:2", 2)
    assert (dask["executor"], dask["jobs"]) == (f"dask:{address}", None)
    assert [(r["corpus"], r["k"]) for r in dask["runs"]] == [(30, 2), (30, 4), (30, "full")]
    assert dask["sweep"] == serial["sweep"] == parallel["sweep"]
    assert _runs(dask) == _runs(serial) == _runs(parallel)
    assert len({r["weights_sha256"] for r in dask["runs"]}) == 3     # the runs do differ


def test_run_many_on_dask_reports_each_run_once(local_sweeps, cluster):
    configs = sweep.sweep_configs({"task": "sum4", "epochs": 2, "seed": 3}, [2, "full"], [30])
    seen = []
    results = sweep.run_many(configs, on_done=lambda i, r: seen.append((i, r["k"])),
                            scheduler=cluster.scheduler_address)
    assert sorted(seen) == [(0, 2), (1, "full")]
    serial = sweep.run_many(configs, jobs=1)
    assert [r["history"] for r in results] == [r["history"] for r in serial]
    assert [r["weights_sha256"] for r in results] == [r["weights_sha256"] for r in serial]
    with pytest.raises(ValueError, match="exclude each other"):
        sweep.run_many(configs, jobs=2, scheduler=cluster.scheduler_address)


def test_unreachable_scheduler_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sweep, "SCHEDULER_TIMEOUT_S", 1)
    out_json, png = tmp_path / "s.json", tmp_path / "s.png"
    code, out, err = call(SWEEP + ["--scheduler", "tcp://127.0.0.1:1", "--json", out_json,
                                   "--plot", png], capsys)
    _assert_one_line_error(code, out, err, "cannot use the Dask scheduler at tcp://127.0.0.1:1")
    assert "after 1 s" in err
    assert list(tmp_path.iterdir()) == []


def test_malformed_scheduler_address_is_one_line_in_a_fresh_process(tmp_path):
    # A separate interpreter: a half-started Client must not print a traceback at exit.
    out_json = tmp_path / "s.json"
    p = subprocess.run([sys.executable, "-m", "dpfm.cli", *SWEEP, "--scheduler",
                        "tcp://127.0.0.1", "--json", str(out_json)],
                       capture_output=True, text=True, timeout=60)
    _assert_one_line_error(p.returncode, p.stdout, p.stderr, "missing port number")
    assert not out_json.exists()


def test_jobs_with_scheduler_is_a_usage_error(tmp_path, capsys):
    out_json = tmp_path / "s.json"
    code, out, err = call(SWEEP + ["--jobs", "2", "--scheduler", "tcp://127.0.0.1:8786",
                                   "--json", out_json], capsys)
    _assert_one_line_error(code, out, err, "argument --scheduler: not allowed with argument --jobs")
    assert not out_json.exists()


def test_local_sweep_does_not_import_dask():
    code = (f"import sys; from dpfm import cli; assert cli.main({SWEEP + ['--jobs', '1']!r}) == 0; "
            "assert 'dask' not in sys.modules and 'distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
