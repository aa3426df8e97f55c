"""Tasks of the command line (dpfm.tasks): shapes, seeding, and --data validation."""

import numpy as np
import pytest

from dpfm.reference.scalar import POLY_TRUE
from dpfm.tasks import DATA_KEYS, TASKS, Task, TaskError, digits, load_npz, load_task, poly, sum4


def test_sum4_shapes_split_and_targets():
    t = sum4()
    assert (t.X_train.shape, t.y_train.shape, t.X_val.shape, t.y_val.shape) == \
        ((320, 4), (320, 1), (80, 4), (80, 1))
    assert t.net == (4, 5, 5, 1) and t.activations == ("sigmoid", "sigmoid", "linear")
    assert not t.classify and t.update == "maxnorm" and t.corpus == 400
    X = np.vstack([t.X_train, t.X_val])
    y = np.vstack([t.y_train, t.y_val])
    assert X.min() >= 0 and X.max() < 1
    np.testing.assert_allclose(y[:, 0], X.sum(axis=1))
    # first 80 % train, last 20 % validate, drawn from default_rng(seed)
    np.testing.assert_array_equal(X, np.random.default_rng(0).uniform(0, 1, size=(400, 4)))


def test_sum4_seeding_and_corpus():
    a, b, c = sum4(seed=3), sum4(seed=3), sum4(seed=4)
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert not np.array_equal(a.X_train, c.X_train)
    small = sum4(corpus=50, seed=3)
    assert (small.n_train, small.n_val) == (40, 10)
    np.testing.assert_array_equal(small.X_train, a.X_train[:40])   # smaller corpora are prefixes


def test_poly_is_the_seed_linear_system():
    t = poly(corpus=100, seed=1)
    assert t.X_train.shape == (80, 2) and t.y_val.shape == (20, 4)
    np.testing.assert_allclose(t.y_train, t.X_train @ np.array(POLY_TRUE).T)
    assert t.net == (2, 4) and t.activations == ("linear",) and t.update == "sgd"


def test_digits_scaled_one_hot_seeded():
    t = digits()
    assert t.X_train.shape == (1437, 64) and t.y_train.shape == (1437, 10)
    assert t.X_val.shape == (360, 64) and t.classify and t.net == (64, 16, 10)
    assert 0 <= t.X_train.min() and t.X_train.max() <= 1
    assert np.all(t.y_train.sum(axis=1) == 1) and set(np.unique(t.y_train)) == {0.0, 1.0}
    np.testing.assert_array_equal(digits(seed=0).X_val, t.X_val)
    assert not np.array_equal(digits(seed=1).X_train, t.X_train)
    sub = digits(corpus=100)
    assert (sub.n_train, sub.n_val) == (80, 20)
    np.testing.assert_array_equal(sub.X_train, t.X_train[:80])
    with pytest.raises(TaskError, match="exceeds the 1797 rows"):
        digits(corpus=5000)


def test_load_task_names_and_errors():
    assert set(TASKS) == {"sum4", "poly", "digits", "cancer"}
    for name in TASKS:
        assert isinstance(load_task(name, corpus=50), Task)
    with pytest.raises(TaskError, match="unknown task 'nope'; known: sum4, poly, digits, cancer"):
        load_task("nope")
    with pytest.raises(TaskError, match="too small"):
        load_task("sum4", corpus=2)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _good(n_train=20, n_val=5, n_in=3, n_out=1, seed=0):
    rng = np.random.default_rng(seed)
    return dict(X_train=rng.uniform(size=(n_train, n_in)), y_train=rng.uniform(size=(n_train, n_out)),
                X_val=rng.uniform(size=(n_val, n_in)), y_val=rng.uniform(size=(n_val, n_out)))


def test_load_npz_valid(tmp_path):
    d = _good()
    d["y_train"] = d["y_train"][:, 0]        # 1-D y becomes a column
    d["X_val"] = (d["X_val"] * 10).astype(np.int32)   # integers are real numbers too
    t = load_npz(_save(tmp_path / "ok.npz", **d))
    assert t.name == "data" and t.source.endswith("ok.npz")
    assert t.y_train.shape == (20, 1) and t.X_val.dtype == np.float64
    assert t.net == (3, 5, 5, 1) and not t.classify


def test_load_npz_one_hot_is_classification(tmp_path):
    d = _good(n_out=3)
    d["y_train"] = np.eye(3)[np.arange(20) % 3]
    d["y_val"] = np.eye(3)[np.arange(5) % 3]
    assert load_npz(_save(tmp_path / "cls.npz", **d)).classify


def _bad_cases(tmp_path):
    g = _good()
    nan = dict(g, X_train=g["X_train"].copy())
    nan["X_train"][4, 1] = np.nan
    inf = dict(g, y_val=g["y_val"].copy())
    inf["y_val"][2, 0] = np.inf
    text = tmp_path / "notes.npz"
    text.write_text("not an archive\n")
    np.save(tmp_path / "single.npy", g["X_train"])
    (tmp_path / "adir.npz").mkdir()
    return {
        "missing": (str(tmp_path / "absent.npz"), "does not exist"),
        "directory": (str(tmp_path / "adir.npz"), "is a directory"),
        "not_npz": (str(text), "not a readable .npz"),
        "npy": (str(tmp_path / "single.npy"), "single .npy array"),
        "keys": (_save(tmp_path / "keys.npz", X_train=g["X_train"], y_train=g["y_train"]),
                 "lacks X_val, y_val"),
        "nan": (_save(tmp_path / "nan.npz", **nan), r"X_train holds 1 non-finite value\(s\), the first \(NaN\) at row 4, column 1"),
        "inf": (_save(tmp_path / "inf.npz", **inf), r"y_val holds 1 non-finite .*infinite"),
        "rows": (_save(tmp_path / "rows.npz", **dict(g, y_train=g["y_train"][:7])),
                 "X_train has 20 rows but y_train has 7"),
        "widths": (_save(tmp_path / "widths.npz", **dict(g, X_val=np.ones((5, 4)))),
                   "X_train has 3 columns but X_val has 4"),
        "ywidths": (_save(tmp_path / "yw.npz", **dict(g, y_val=np.ones((5, 2)))),
                    "y_train has 1 columns but y_val has 2"),
        "ndim": (_save(tmp_path / "ndim.npz", **dict(g, X_train=np.ones((20, 3, 1)))),
                 "X_train must be a 2-D array"),
        "x1d": (_save(tmp_path / "x1d.npz", **dict(g, X_val=np.ones(5))), "X_val must be a 2-D array"),
        "strings": (_save(tmp_path / "str.npz", **dict(g, y_val=np.array(["a"] * 5))),
                    "y_val must hold real numbers"),
        "empty": (_save(tmp_path / "empty.npz", **dict(g, X_val=np.ones((0, 3)), y_val=np.ones((0, 1)))),
                  "X_val is empty"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not_npz", "npy", "keys", "nan", "inf",
                                  "rows", "widths", "ywidths", "ndim", "x1d", "strings", "empty"])
def test_load_npz_errors_are_one_clear_sentence(tmp_path, case):
    path, pattern = _bad_cases(tmp_path)[case]
    with pytest.raises(TaskError, match=pattern) as info:
        load_npz(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert path in msg and "\n" not in msg


def test_data_keys_are_the_documented_ones():
    assert DATA_KEYS == ("X_train", "y_train", "X_val", "y_val")


def test_cancer_standardised_by_the_training_rows_one_hot_seeded():
    from dpfm.tasks import cancer
    t = cancer()
    assert t.X_train.shape == (455, 30) and t.X_val.shape == (114, 30)
    assert t.y_train.shape == (455, 2) and t.classify and t.net == (30, 8, 2)
    np.testing.assert_allclose(t.X_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(t.X_train.std(axis=0), 1, atol=1e-12)
    assert np.all(t.y_train.sum(axis=1) == 1)
    assert not np.array_equal(cancer(seed=1).X_train, t.X_train)
    assert cancer(corpus=100).n_train == 80
