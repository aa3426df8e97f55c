"""The ``dpfm`` command line: runs, sweeps, plots, and the bad-input contract."""

import json
import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dpfm import cli, runs
from dpfm.spec import prepare
from dpfm.reference.scalar import POLY_TRUE

TRAIN_FIELDS = {
    "backend", "task", "net", "activations", "k", "epochs", "batch", "lr", "update", "policy",
    "seed", "fixed", "final_train_loss", "final_val_loss", "min_val_loss", "history",
    "weights_sha256", "saturations", *runs.TIMING_KEYS, "steps",
}


def call(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _npz(path, **change):
    rng = np.random.default_rng(0)
    d = dict(X_train=rng.uniform(size=(40, 4)), y_train=rng.uniform(size=(40, 1)),
             X_val=rng.uniform(size=(10, 4)), y_val=rng.uniform(size=(10, 1)))
    d.update(change)
    np.savez(path, **d)
    return str(path)


def _bad_inputs(tmp):
    """name -> (argv after 'dpfm', text the one-line error must contain)."""
    nan_X = np.random.default_rng(1).uniform(size=(40, 4))
    nan_X[3, 2] = np.nan
    inf_y = np.ones((10, 1))
    inf_y[0, 0] = -np.inf
    (tmp / "file").write_text("x")
    return {
        "nan": (["train", "--data", _npz(tmp / "nan.npz", X_train=nan_X)], "NaN"),
        "inf": (["train", "--data", _npz(tmp / "inf.npz", y_val=inf_y)], "infinite"),
        "shapes": (["train", "--data", _npz(tmp / "rows.npz", y_train=np.ones((39, 1)))],
                   "X_train has 40 rows but y_train has 39"),
        "widths": (["train", "--data", _npz(tmp / "w.npz", X_val=np.ones((10, 3)))],
                   "X_train has 4 columns but X_val has 3"),
        "missing_file": (["train", "--data", str(tmp / "absent.npz")], "does not exist"),
        "k0": (["train", "--k", "0"], "k=0 is below the minimum"),
        "k_negative": (["train", "--k", "-3"], "k=-3 is below the minimum"),
        "k_sweep": (["sweep", "--k", "4,0,full", "--corpus", "50"], "k=0 is below the minimum"),
        "activation": (["train", "--act", "sigmoid,swish,linear"], "unknown activation 'swish'"),
        "net_inputs": (["train", "--net", "3,5,5,1"], "takes 3 inputs but the data has 4 columns"),
        "net_outputs": (["train", "--task", "poly", "--net", "2,3"],
                        "3 outputs but the targets have 4 columns"),
        "net_data": (["train", "--data", _npz(tmp / "ok.npz"), "--net", "4,5,2"], "does not fit data"),
        "act_count": (["train", "--net", "4,8,1", "--act", "sigmoid,sigmoid,linear"],
                      "3 activations (sigmoid,sigmoid,linear) given but net 4,8,1 has 2 layers"),
        "fixed_syntax": (["train", "--backend", "fixed", "--fixed", "18"], "bad fixed format '18'"),
        "fixed_range": (["train", "--backend", "fixed", "--fixed", "60.10"], "bits must be in 2..48"),
        "fixed_numpy": (["train", "--fixed", "18.12"], "applies only to the fixed backend"),
        "json_dir": (["train", "--json", str(tmp / "nodir" / "r.json")], "does not exist"),
        "json_parent_file": (["train", "--json", str(tmp / "file" / "r.json")], "is not a directory"),
        "json_is_dir": (["train", "--json", str(tmp)], "it is a directory"),
        "plot_dir": (["train", "--plot", str(tmp / "nodir" / "r.png")], "does not exist"),
        "plot_ext": (["train", "--plot", str(tmp / "r.txt")], "image extension"),
        "sweep_json": (["sweep", "--k", "2", "--corpus", "50", "--json", str(tmp / "nodir" / "s.json")],
                       "does not exist"),
        "task": (["train", "--task", "mnist"], "unknown task 'mnist'"),
        "corpus": (["sweep", "--corpus", "50,x"], "--corpus must list whole numbers"),
        "argparse": (["train", "--epochs", "ten"], "invalid int value: 'ten'"),
    }


BAD = [
    "nan", "inf", "shapes", "widths", "missing_file", "k0", "k_negative", "k_sweep", "activation",
    "net_inputs", "net_outputs", "net_data", "act_count", "fixed_syntax", "fixed_range",
    "fixed_numpy", "json_dir", "json_parent_file", "json_is_dir", "plot_dir", "plot_ext",
    "sweep_json", "task", "corpus", "argparse"]


#: One real process per kind of bad input the contract names (in-process covers all of BAD).
SUBPROCESS = ["nan", "inf", "shapes", "missing_file", "k0", "activation", "net_inputs",
              "net_outputs", "act_count", "fixed_syntax", "json_dir", "plot_dir", "task"]


def _assert_one_line_error(code, out, err, text):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dpfm: error: ") and text in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


def test_bad_input_list_is_complete(tmp_path):
    assert sorted(_bad_inputs(tmp_path)) == sorted(BAD) and set(SUBPROCESS) <= set(BAD)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_in_process(tmp_path, capsys, case):
    args, text = _bad_inputs(tmp_path)[case]
    out_json = tmp_path / "out.json"
    if "--json" not in args:
        args = args + ["--json", str(out_json)]
    before = sorted(os.listdir(tmp_path))
    code, out, err = call(args + ["--epochs", "1"] if case != "argparse" else args, capsys)
    _assert_one_line_error(code, out, err, text)
    assert not out_json.exists()
    assert sorted(os.listdir(tmp_path)) == before          # nothing written, no temp files


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory):
    """Every bad input run through ``python -m dpfm.cli``, one process per core at a time."""
    def one(case):
        tmp = tmp_path_factory.mktemp(case)
        args, text = _bad_inputs(tmp)[case]
        out_json = tmp / "out.json"
        if "--json" not in args:
            args = args + ["--json", str(out_json)]
        p = subprocess.run([sys.executable, "-m", "dpfm.cli", *args], capture_output=True,
                           text=True, timeout=120)
        return p.returncode, p.stdout, p.stderr, text, out_json

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(SUBPROCESS, pool.map(one, SUBPROCESS)))


@pytest.mark.parametrize("case", SUBPROCESS)
def test_bad_input_subprocess(subprocess_results, case):
    """A real process: exit 2, one stderr line, no traceback, no file."""
    code, out, err, text, out_json = subprocess_results[case]
    _assert_one_line_error(code, out, err, text)
    assert not out_json.exists()


def test_console_script_entry_point(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "dpfm")
    if not os.path.exists(script):
        pytest.skip("dpfm console script not installed next to this interpreter")
    p = subprocess.run([script, "train", "--k", "0", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=60)
    _assert_one_line_error(p.returncode, p.stdout, p.stderr, "k=0")
    p = subprocess.run([script, "train", "--epochs", "2", "--corpus", "50", "--quiet",
                        "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == ""
    assert json.loads((tmp_path / "r.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("backend", ["numpy", "fixed"])
def test_train_writes_json_and_plot(tmp_path, capsys, backend):
    j, png = tmp_path / "run.json", tmp_path / "run.png"
    code, out, err = call(["train", "--backend", backend, "--task", "sum4", "--k", "8",
                           "--epochs", "4", "--corpus", "100", "--json", j, "--plot", png], capsys)
    assert code == 0 and err == ""
    assert "final train" in out
    r = json.loads(j.read_text())
    assert TRAIN_FIELDS <= set(r)
    assert (r["backend"], r["task"], r["k"], r["epochs"], r["batch"], r["update"]) == \
        (backend, "sum4", 8, 4, 10, "maxnorm")
    assert r["net"] == [4, 5, 5, 1] and r["activations"] == ["sigmoid", "sigmoid", "linear"]
    assert r["lr"] == 0.01 and r["seed"] == 0
    assert r["policy"] == ("exact" if backend == "numpy" else "stream")   # fixed models the hardware
    assert [h["epoch"] for h in r["history"]] == [1, 2, 3, 4]
    assert r["final_val_loss"] == r["history"][-1]["val_loss"]
    assert r["min_val_loss"] == min(h["val_loss"] for h in r["history"])
    assert r["steps"] == 4 * 8 and r["us_per_step"] > 0 and r["wall_s"] > 0
    assert len(r["weights_sha256"]) == 64
    if backend == "fixed":
        assert r["fixed"] == {"value": "24.16", "weight": "18.12", "grad": "18.14", "deriv": "18.16"}
        assert set(r["saturations"]) >= {"value", "grad", "weight"}
    else:
        assert r["fixed"] is None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["run.json", "run.png"]   # no temp files left


def test_train_fixed_format_option(tmp_path, capsys):
    j = tmp_path / "r.json"
    code, _, _ = call(["train", "--backend", "fixed", "--fixed", "16.10", "--epochs", "2",
                       "--corpus", "50", "--quiet", "--json", j], capsys)
    assert code == 0
    assert json.loads(j.read_text())["fixed"]["weight"] == "16.10"


def test_train_is_deterministic_and_matches_the_reference(tmp_path, capsys):
    from dpfm.reference import MLP
    from dpfm.tasks import sum4

    j = tmp_path / "r.json"
    assert call(["train", "--k", "4", "--epochs", "3", "--corpus", "60", "--seed", "5", "--quiet",
                 "--json", j], capsys)[0] == 0
    r = json.loads(j.read_text())
    t = sum4(corpus=60, seed=5)
    net = MLP([4, 5, 5, 1], ["sigmoid", "sigmoid", "linear"], seed=5)
    h = net.fit(t.X_train, t.y_train, k=4, epochs=3, batch=10, lr=0.01, update="maxnorm",
                validation=(t.X_val, t.y_val), seed=5)
    assert r["weights_sha256"] == net.sha256()
    assert [x["val_loss"] for x in r["history"]] == h.val_loss


def test_train_digits_reports_accuracy(tmp_path, capsys):
    j = tmp_path / "d.json"
    code, out, _ = call(["train", "--task", "digits", "--corpus", "200", "--epochs", "2",
                         "--json", j], capsys)
    assert code == 0 and "accuracy" in out
    r = json.loads(j.read_text())
    assert r["net"] == [64, 16, 10] and r["n_params"] == 16 * 65 + 10 * 17
    assert 0 <= r["accuracy"] <= 1 and r["accuracy"] == r["history"][-1]["val_accuracy"]


def test_train_user_data(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.uniform(size=(50, 3))
    y = X @ np.array([1.0, -2.0, 0.5])
    path = tmp_path / "mine.npz"
    np.savez(path, X_train=X[:40], y_train=y[:40], X_val=X[40:], y_val=y[40:])   # 1-D y
    j = tmp_path / "r.json"
    code, _, _ = call(["train", "--data", path, "--net", "3,4,1", "--epochs", "2", "--quiet",
                       "--json", j], capsys)
    assert code == 0
    r = json.loads(j.read_text())
    assert (r["task"], r["data"], r["net"], r["activations"]) == \
        ("data", str(path), [3, 4, 1], ["sigmoid", "linear"])


def test_poly_converges_to_the_seed_rows(tmp_path, capsys):
    j = tmp_path / "poly.json"
    code, out, _ = call(["train", "--task", "poly", "--update", "sgd", "--json", j], capsys)
    assert code == 0
    r = json.loads(j.read_text())
    assert (r["lr"], r["epochs"], r["net"]) == (0.1, 50, [2, 4])
    np.testing.assert_allclose(r["poly_rows"], POLY_TRUE, atol=1e-2)
    assert r["poly_max_error"] < 1e-2
    assert prepare({"task": "poly"}).spec["update"] == "sgd"    # the default for poly


def test_sweep_parallel_equals_serial(tmp_path, capsys):
    common = ["sweep", "--task", "sum4", "--k", "2,full", "--corpus", "30,60", "--epochs", "3",
              "--quiet"]
    j1, j2, png = tmp_path / "s1.json", tmp_path / "s2.json", tmp_path / "s.png"
    assert call(common + ["--jobs", "1", "--json", j1], capsys)[0] == 0
    assert call(common + ["--jobs", "2", "--json", j2, "--plot", png], capsys)[0] == 0
    s1, s2 = json.loads(j1.read_text()), json.loads(j2.read_text())
    assert s2["jobs"] == 2 and s1["jobs"] == 1 and s2["wall_s"] > 0
    assert [(r["corpus"], r["k"]) for r in s2["runs"]] == [(30, 2), (30, "full"), (60, 2), (60, "full")]
    for a, b in zip(s1["runs"], s2["runs"]):
        assert TRAIN_FIELDS <= set(b)
        assert a["history"] == b["history"] and a["weights_sha256"] == b["weights_sha256"]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_run_is_a_pure_picklable_function():
    cfg = {"task": "sum4", "corpus": 30, "k": 3, "epochs": 2, "seed": 7}
    assert pickle.loads(pickle.dumps(runs.run)) is runs.run
    a, b = runs.run(dict(cfg)), runs.run(dict(cfg))
    for r in (a, b):
        for key in runs.TIMING_KEYS:
            r.pop(key)
    assert a == b
    assert json.loads(json.dumps(a)) == a
    with pytest.raises(ValueError, match="unknown config key"):
        runs.run({"kk": 3})


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code = cli.main(["train", "--epochs", "3", "--corpus", "30"])
    err = capsys.readouterr().err
    assert code == 0 and "sum4 k=16" in err and "0/3" in err      # tqdm drew the bar


def test_diverging_run_is_reported_not_crashed(tmp_path, capsys):
    j = tmp_path / "d.json"
    code, out, err = call(["train", "--update", "sgd", "--lr", "1e300", "--epochs", "2",
                           "--corpus", "30", "--json", j, "--plot", tmp_path / "d.png"], capsys)
    assert code == 0 and "DIVERGED" in out and err == ""
    r = json.loads(j.read_text())          # strict JSON: non-finite losses become null
    assert r["diverged"] is True and r["final_train_loss"] is None


def test_quiet_prints_nothing(capsys):
    assert call(["train", "--epochs", "1", "--corpus", "30", "--quiet"], capsys) == (0, "", "")


def test_policy_a_host_backend_cannot_honour_is_one_line(capsys):
    """The engine prunes in the stream order only: --policy exact is refused, never ignored."""
    code, out, err = call(["train", "--backend", "verilator", "--policy", "exact", "--epochs", "1"],
                          capsys)
    _assert_one_line_error(code, out, err, "'stream' order only")


def test_passthrough_subcommands_get_their_arguments(capsys):
    code, out, err = call(["synth", "--block", "no_such_block"], capsys)
    assert code == 2 and "no_such_block" in err and "Traceback" not in err
    code, out, err = call(["bench", "--no-such-flag"], capsys)
    assert code == 2 and "--no-such-flag" in err and "Traceback" not in err


def test_passthrough_without_its_optional_dependency_is_one_line():
    """On the board (no amaranth installed) 'dpfm synth' names the missing module."""
    code = ("import sys; sys.modules['amaranth'] = None; from dpfm.cli import main; "
            "sys.exit(main(['synth', '--block', 'topk', '--k', '4']))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "amaranth" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_help_lists_commands_and_task_defaults(capsys):
    code, out, _ = call(["--help"], capsys)
    assert code == 0 and all(c in out for c in ("train", "sweep", "synth", "bench"))
    code, out, _ = call(["train", "--help"], capsys)
    assert code == 0 and "poly" in out and "default update sgd" in out
