"""``python -m dpfm.experiments --quick``: figures, JSON and page tables from one command."""

import json
import math
import os

import pytest

from dpfm import experiments


def _numbers(obj):
    if isinstance(obj, bool) or obj is None:
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    page = out / "experiments.md"
    page.write_text("# Experiments\n\nHand-written text.\n\n<!-- generated:sum4_k -->\nstale\n"
                    "<!-- /generated:sum4_k -->\n\nConclusions stay.\n")
    assert experiments.main(["--out", str(out), "--quick", "--jobs", "1"]) == 0
    with open(out / "figures" / "experiments.json") as f:
        return out, json.load(f)


def test_quick_writes_every_figure_and_the_json(quick):
    out, data = quick
    for name in experiments.FIGURES:
        path = out / "figures" / name
        assert path.stat().st_size > 5000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(data["groups"]) == list(experiments.GROUPS)
    assert data["meta"]["quick"] is True and data["meta"]["runs"] > 0


def test_json_groups_hold_finite_numbers_for_every_setting(quick):
    _, data = quick
    plan = experiments.QUICK
    numbers = list(_numbers(data))
    assert numbers and all(math.isfinite(x) for x in numbers)
    g = data["groups"]
    assert len(g["sum4_k"]["cells"]) == len(plan.arms) * len(plan.sum4_ks)
    assert len(g["sum4_corpus"]["cells"]) == len(plan.arms) * len(plan.corpora) * len(plan.sum4_ks)
    assert {c["variant"] for c in g["sum4_fixed"]["cells"]} == set(experiments.VARIANTS)
    for name, group in g.items():
        for cell in group["cells"]:
            assert cell["n"] == len(group["seeds"])
            s = cell["final_val_loss"]
            assert s["min"] <= s["mean"] <= s["max"], (name, cell)
            if cell["k"] != "full":
                paired = "vs_dense" if name == "estimators" else "vs_full"
                assert cell[paired]["final_val_loss"]["of"] == cell["n"]
    pooled = g["sum4_corpus"]["pooled"]
    assert len(pooled) == len(plan.arms) * (len(plan.sum4_ks) - 1)
    assert all(p["min_val_loss"]["of"] == len(plan.corpora) * len(plan.seeds) for p in pooled)
    for cell in g["digits_k"]["cells"]:
        assert 0 <= cell["accuracy"]["min"] <= cell["accuracy"]["max"] <= 1
    est = g["estimators"]["cells"]
    assert len(est) == len(plan.est_tasks) * (len(experiments.EST_NAMES) * len(plan.est_ks) + 1)
    for cell in est:
        assert cell["multiplies_per_step"] > 0
        assert (cell["layer_k"] is not None) == (cell["estimator"] == "topk-per-layer")
    dense = {c["task"]: c["multiplies_per_step"] for c in est if c["estimator"] == "dense"}
    assert all(c["multiplies_per_step"] <= dense[c["task"]] for c in est
               if c["estimator"] in ("topk", "topk-per-layer"))
    assert {c["k"] for c in g["sum4_k"]["curves"]} == set(plan.sum4_ks)
    assert all(len(c["epoch"]) == plan.sum4_epochs for c in g["sum4_k"]["curves"])


def test_page_blocks_are_replaced_and_the_prose_kept(quick):
    out, _ = quick
    text = (out / "experiments.md").read_text()
    assert "Hand-written text." in text and "Conclusions stay." in text
    assert "stale" not in text
    for name in ("meta",) + experiments.GROUPS:
        assert text.count(f"<!-- generated:{name} -->") == 1
        assert text.count(f"<!-- /generated:{name} -->") == 1
    assert "| maxnorm lr 0.01 | 2 |" in text
    assert "| digits | val accuracy | forward-gradient |" in text


def test_replot_rebuilds_from_the_json_without_training(quick, capsys):
    out, _ = quick
    fig = out / "figures" / experiments.FIGURES[0]
    os.unlink(fig)
    assert experiments.main(["--out", str(out), "--replot"]) == 0
    assert fig.exists()


def test_bad_output_directory_is_one_line_exit_2(tmp_path, capsys):
    assert experiments.main(["--out", str(tmp_path / "missing"), "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
