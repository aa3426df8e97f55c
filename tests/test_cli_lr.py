"""Bad learning rates on the ``dpfm`` command line: the bad-input contract for ``--lr``.

A learning rate must be a finite number above 0 (``dpfm.spec.prepare`` checks it before
anything trains).  Each bad one -- negative, zero, one that rounds to zero, NaN, infinite,
not a number -- must end ``dpfm train`` (and ``dpfm sweep``) like every other bad input (see
tests/test_cli.py): exit code 2, one line ``dpfm: error: ...`` on stderr naming the value, no
traceback, nothing on stdout and no output file.  Checked in-process for every backend that
trains here (numpy, fixed) and in a real process.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from dpfm import cli

POSITIVE = "lr must be a positive number"

#: name -> (the --lr arguments, text the one-line error must contain).
BAD_LR = {
    "negative": (["--lr", "-1"], f"{POSITIVE}, not -1.0"),
    "negative_small": (["--lr=-1e-5"], f"{POSITIVE}, not -1e-05"),
    "zero": (["--lr", "0"], f"{POSITIVE}, not 0.0"),
    "negative_zero": (["--lr=-0.0"], f"{POSITIVE}, not -0.0"),
    "underflow": (["--lr", "1e-400"], f"{POSITIVE}, not 0.0"),          # rounds to 0.0
    "nan": (["--lr", "nan"], f"{POSITIVE}, not nan"),
    "inf": (["--lr", "inf"], f"{POSITIVE}, not inf"),
    "overflow": (["--lr", "1e400"], f"{POSITIVE}, not inf"),             # rounds to inf
    "negative_inf": (["--lr=-inf"], f"{POSITIVE}, not -inf"),
    "text": (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    "empty": (["--lr="], "argument --lr: invalid float value: ''"),
}

#: The backends ``dpfm train`` runs on this machine without hardware or a Verilator build.
BACKENDS = ["numpy", "fixed"]

#: One real process per kind of bad rate (in-process covers every case of BAD_LR).
SUBPROCESS = ["negative", "zero", "underflow", "nan", "negative_inf", "text"]

#: Small and quick if a bad rate were ever let through to training.
SMALL = ["--epochs", "1", "--corpus", "50"]


def _assert_one_line_error(code, out, err, text):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dpfm: error: ") and text in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


def _run_in_process(capsys, args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", BAD_LR)
def test_bad_lr_train_in_process(tmp_path, capsys, backend, case):
    """``dpfm train --backend B --lr BAD``: exit 2, one line, no file written."""
    lr_args, text = BAD_LR[case]
    out_json = tmp_path / "out.json"
    before = sorted(os.listdir(tmp_path))
    code, out, err = _run_in_process(capsys, ["train", "--backend", backend, *lr_args, *SMALL,
                                              "--json", out_json])
    _assert_one_line_error(code, out, err, text)
    assert not out_json.exists()
    assert sorted(os.listdir(tmp_path)) == before          # nothing written, no temp files


@pytest.mark.parametrize("case", ["negative", "zero", "nan", "inf"])
def test_bad_lr_sweep_in_process(tmp_path, capsys, case):
    """``dpfm sweep --lr BAD``: refused before any run starts, like ``train``."""
    lr_args, text = BAD_LR[case]
    out_json = tmp_path / "sweep.json"
    code, out, err = _run_in_process(capsys, ["sweep", "--k", "2,4", "--corpus", "50",
                                              "--epochs", "1", "--jobs", "1", *lr_args,
                                              "--json", out_json])
    _assert_one_line_error(code, out, err, text)
    assert not out_json.exists() and os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """Each kind of bad rate through ``python -m dpfm.cli train``, one process per core at a
    time."""
    def one(case):
        tmp = tmp_path_factory.mktemp(case)
        lr_args, text = BAD_LR[case]
        out_json = tmp / "out.json"
        p = subprocess.run([sys.executable, "-m", "dpfm.cli", "train", *lr_args, *SMALL,
                            "--json", str(out_json)], capture_output=True, text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr, text, out_json

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(SUBPROCESS, pool.map(one, SUBPROCESS)))


def test_subprocess_cases_are_bad_rates():
    assert set(SUBPROCESS) <= set(BAD_LR)


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_lr_subprocess(subprocess_results, case):
    """A real process: exit 2, one stderr line, no traceback, no file."""
    code, out, err, text, out_json = subprocess_results[case]
    _assert_one_line_error(code, out, err, text)
    assert not out_json.exists()
