"""``dpfm bench``: rows, anchors, table, JSON and chart (speed itself is not asserted)."""

from __future__ import annotations

import json
import math

import pytest

from dpfm import bench
from dpfm.cli import main as cli_main


@pytest.fixture
def anchors(tmp_path):
    d = tmp_path / "anchors"
    d.mkdir()
    (d / "cpu_baseline_2core_x.jsonl").write_text(
        '{"framework": "torch-eager", "device": "cpu", "net": [4, 5, 5, 1], "us_per_step": 800.0}\n'
        'a stray log line\n'
        '{"framework": "torch-eager", "device": "cpu", "net": [64, 32, 0, 10], "us_per_step": 600.0}\n')
    (d / "gpu_x.jsonl").write_text(
        '{"gpu": "Some GPU", "torch": "x"}\n'
        '{"framework": "torch-cudagraph-synced", "device": "cuda", "net": [4, 5, 5, 1], "us_p50": 50.0}\n'
        '{"framework": "other", "device": "cuda", "net": [3, 3], "us_per_step": 1.0}\n')
    return d


def test_anchors_parse_every_measured_row(anchors):
    rows = bench.load_anchors(anchors)
    got = {(r["workload"], r["system"], r["us_per_step"]) for r in rows}
    assert got == {("sum4", "torch-eager (2-core CPU)", 800.0),
                   ("digits", "torch-eager (2-core CPU)", 600.0),
                   ("sum4", "torch-cudagraph-synced (Some GPU)", 50.0)}


def test_the_real_anchor_folder_has_both_workloads():
    rows = bench.load_anchors()
    if not rows:
        pytest.skip(f"no anchors beside the checkout ({bench.anchors_dir()})")
    assert {r["workload"] for r in rows} == {"sum4", "digits"}


def test_numpy_rows_and_ratios(anchors):
    rows = bench.run_bench(steps=3, hw=False, synth=False, torch=False, anchors=anchors)
    measured = [r for r in rows if r["group"] == "numpy"]
    assert [(r["workload"], r["k"]) for r in measured] == \
        [(w, k) for w in bench.WORKLOADS for k in bench.KS]
    for r in measured:
        assert r["us_per_step"] > 0 and r["steps"] == 3
        anchor = 800.0 if r["workload"] == "sum4" else 600.0
        # the ratio is the anchor over this row's own measurement: exact whatever the speed
        assert r["vs"]["torch-eager (2-core CPU)"] == anchor / r["us_per_step"]
    full = [r for r in measured if r["k"] == "full"]
    assert [r["registers"] for r in full] == [61, 2410]
    table = bench.format_table(rows)
    assert len(table.splitlines()) >= len(rows) + 2


def test_hardware_row_reads_the_engines_counter():
    from dpfm.sim.engine_expect import step_cycles
    r = bench.hardware_row("sum4", 4, steps=2)
    # layer 1's block probe may skip blocks: data-dependent, within the whole-block bound
    bound = step_cycles(bench._hw_config("sum4", 4)[0], update="maxnorm")
    assert 0 < r["cycles_min"] <= r["cycles_per_step"] <= r["cycles_max"] <= bound
    assert r["us_per_step"] is None                 # no clock assumed


def test_microseconds_come_from_the_estimated_clock():
    row = {"group": "hardware", "cycles_per_step": 491.0, "us_per_step": None}
    slow = bench.at_clock(row, {"fmax_mhz": 48.4})
    assert slow["us_per_step"] == 491.0 / 48.4e6 * 1e6 and slow["clock_mhz"] == 48.4
    fast = bench.at_clock(row, {"fmax_mhz": 250.0})          # never above FCLK0
    assert fast["us_per_step"] == 491.0 / bench.FCLK_HZ * 1e6
    none = bench.at_clock(row, None)
    assert none["us_per_step"] is None and "no timing estimate" in none["note"]


def test_a_k_beyond_the_generator_is_a_row_with_its_reason():
    r = bench.hardware_row("digits", "full")
    assert r["us_per_step"] is None and "2410" in r["note"]


def test_cli_writes_json_and_chart(tmp_path, anchors, capsys):
    out = tmp_path / "b" / "bench.json"
    code = cli_main(["bench", "--no-hw", "--no-synth", "--no-torch", "--steps", "2",
                     "--json", str(out), "--anchors", str(anchors)])
    assert code == 0
    rows = json.loads(out.read_text())
    assert rows[0]["group"] == "meta" and any(r["group"] == "numpy" for r in rows)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "numpy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "--steps"),
    (["--anchors", "/nonexistent/x"], "no such folder"),
    (["--bogus"], "unrecognized"),
    (["--plot", "/nonexistent/dir/x.png"], "x.png"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, argv, words, capsys):
    code = cli_main(["bench", "--json", str(tmp_path / "b.json"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.json").exists()
