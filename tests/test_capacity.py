"""Capacity studies (planner.capacity, planner.emit.capacity/plots, tools/capacity.py).

The cost model's calibration moves, so nothing here pins a predicted number: the tests check
properties (consistency of derived columns, monotonicity physics demands, round-trips, exit codes,
determinism).
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from cost_models.hardware import load_hardware
from planner.capacity import (
    COLUMNS, Counts, Goal, Study, parse_counts, rows_from_csv, rows_to_csv, seek, sweep)
from planner.frontends import load_model
from tools.capacity import main as capacity_main
from tools.plan import main as plan_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS = 10**12
PRICE = 2.5


@pytest.fixture(scope="module")
def study() -> Study:
    return Study(spec=load_model("llama-7b"), devices=("H100", "A100-40GB"), counts=parse_counts("1,2,4,8"),
                 train_tokens=TOKENS, prices_per_device_hour=(PRICE,))


@pytest.fixture(scope="module")
def result(study):
    return sweep(study)


# ---- arguments -----------------------------------------------------------------------------------


def test_parse_counts_ranges_and_lists():
    assert parse_counts("256..2048").values() == (256, 512, 1024, 2048)
    assert parse_counts("256..1000").values() == (256, 512)
    assert parse_counts("8..32:8").values() == (8, 16, 24, 32)
    assert parse_counts("1024,256,512").values() == (256, 512, 1024)
    assert parse_counts("64").values() == (64,)


@pytest.mark.parametrize("text", ["", "0..8", "64..8", "8,x", "8..", "1..8:0", "8,8", "-8", "1.5", "2048x"])
def test_parse_counts_rejects(text):
    with pytest.raises(ValueError):
        parse_counts(text)


def test_candidates_of_a_range():
    assert Counts(lo=1, hi=16).candidates() == (1, 2, 3, 4, 6, 8, 12, 16)
    assert Counts(lo=256, hi=1000).candidates() == (256, 384, 512, 768, 1000)
    assert Counts(lo=4, hi=40).candidates(8) == (4, 8, 16, 24, 32, 40)
    assert Counts(lo=1, hi=4).candidates(1) == (1, 2, 3, 4)
    assert Counts(explicit=(16, 8)).candidates(8) == (8, 16)


def test_study_validates():
    spec = load_model("llama-7b")
    with pytest.raises(ValueError, match="unknown device"):
        Study(spec=spec, devices=("H999",), counts=Counts(explicit=(8,)))
    with pytest.raises(ValueError, match="twice"):
        Study(spec=spec, devices=("H100", "H100-SXM"), counts=Counts(explicit=(8,)))
    with pytest.raises(ValueError, match="not both"):
        Study(spec=spec, devices=("H100",), counts=Counts(explicit=(8,)), global_batches=(64,),
              global_batch_tokens=(4 * 2**20,))
    with pytest.raises(ValueError, match="fp8"):
        Study(spec=spec, devices=("A100",), counts=Counts(explicit=(8,)), dtype="fp8")
    with pytest.raises(ValueError, match="price"):
        Study(spec=spec, devices=("H100",), counts=Counts(explicit=(8,)), train_tokens=TOKENS,
              prices_per_device_hour=(-1.0,))
    with pytest.raises(ValueError, match="one per device type"):
        Study(spec=spec, devices=("H100", "A100"), counts=Counts(explicit=(8,)), train_tokens=TOKENS,
              prices_per_device_hour=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="target days"):
        Goal(target_days=0.0)


# ---- sweeps --------------------------------------------------------------------------------------


def test_sweep_rows_follow_the_points(study, result):
    assert [(r.device, r.num_devices) for r in result.rows] == [
        (load_hardware(p.device).name, p.num_devices) for p in study.points()]
    assert len(result.wall_s) == len(result.rows)
    assert all(seconds >= 0 for seconds in result.wall_s)


def test_sweep_rows_are_consistent(result):
    for row in result.rows:
        if not row.fits:
            assert row.reason and row.layout == "" and row.step_time_s is None and row.train_days is None
            continue
        assert row.reason == "" and row.layout.startswith("dp=")
        assert 0 < row.mfu <= 1
        assert math.isclose(row.tokens_per_s * row.step_time_s, row.tokens_per_step, rel_tol=1e-9)
        assert math.isclose(row.train_days * 86400 * row.tokens_per_s, TOKENS, rel_tol=1e-9)
        assert math.isclose(row.device_hours, row.train_days * 24 * row.num_devices, rel_tol=1e-9)
        assert math.isclose(row.cost, row.device_hours * PRICE, rel_tol=1e-9)
        parts = sum(getattr(row, f"{p}_bytes") for p in ("params", "grads", "optimizer", "activations",
                                                          "transient", "reserve"))
        assert math.isclose(parts, row.memory_bytes, rel_tol=1e-9)
        assert row.memory_bytes <= row.device_memory_bytes


def test_a_point_that_does_not_fit_says_why(result):
    # one device cannot hold a 7B model's weights, gradients and Adam state (16 bytes per parameter)
    single = [r for r in result.rows if r.num_devices == 1]
    assert single and not any(r.fits for r in single)
    for row in single:
        assert "fits" in row.reason and row.device in row.reason
        assert row.memory_bytes > row.device_memory_bytes  # the least-overflowing layout's memory


def test_more_memory_per_device_never_needs_more_devices(result):
    def smallest(device):
        return min(r.num_devices for r in result.rows if r.device == device and r.fits)
    assert smallest("H100-SXM") <= smallest("A100-40GB")


def test_scaling_efficiency_is_relative_to_the_smallest_fitting_count(result):
    for device in ("H100-SXM", "A100-40GB"):
        fitting = sorted((r for r in result.rows if r.device == device and r.fits), key=lambda r: r.num_devices)
        assert fitting[0].scaling_efficiency == 1.0
        for row in fitting[1:]:
            expected = (row.tokens_per_s / row.num_devices) / (fitting[0].tokens_per_s / fitting[0].num_devices)
            assert math.isclose(row.scaling_efficiency, expected, rel_tol=1e-12)


def test_sweep_is_deterministic_across_worker_counts(study, result):
    seen = []
    parallel = sweep(study, jobs=2, progress=seen.append)
    assert parallel.rows == result.rows
    assert rows_to_csv(parallel.rows) == rows_to_csv(result.rows)
    assert sorted((r.device, r.num_devices) for r in seen) == sorted((r.device, r.num_devices) for r in result.rows)


def test_sequence_length_sweep_keeps_tokens_per_step():
    study = Study(spec=load_model("llama-7b"), devices=("H100",), counts=Counts(explicit=(8,)),
                  seq_lens=(2048, 4096), global_batch_tokens=(2**22,))
    rows = sweep(study).rows
    assert [r.seq_len for r in rows] == [2048, 4096]
    assert {r.tokens_per_step for r in rows} == {2**22}


# ---- CSV -----------------------------------------------------------------------------------------


def test_csv_round_trips(result, tmp_path):
    path = tmp_path / "sweep.csv"
    path.write_text(rows_to_csv(result.rows))
    back = rows_from_csv(path.read_text())
    assert back == result.rows
    assert any(not r.fits for r in back) and any(r.fits for r in back)  # both kinds of row went through
    assert path.read_text().splitlines()[0].split(",") == list(COLUMNS)


def test_csv_with_foreign_header_is_rejected():
    with pytest.raises(ValueError, match="header"):
        rows_from_csv("a,b,c\n1,2,3\n")


# ---- goal seeking --------------------------------------------------------------------------------


def _previous_candidate(study: Study, goal: Goal, answer: int) -> int:
    candidates = study.counts.candidates(goal.granularity)
    return candidates[candidates.index(answer) - 1]


def test_min_fit_returns_the_smallest_count():
    study = Study(spec=load_model("llama-7b"), devices=("H100", "A100-40GB"), counts=parse_counts("1..16"))
    goal = Goal()
    results = seek(study, goal)
    assert [r.device for r in results] == ["H100-SXM", "A100-40GB"]
    for found in results:
        assert found.answer is not None and found.answer.fits
        assert found.below is not None and not found.below.fits
        assert found.below.num_devices == _previous_candidate(study, goal, found.answer.num_devices)
        assert {r.num_devices for r in found.trail} >= {found.answer.num_devices, found.below.num_devices}
    h100, a100_40 = (r.answer.num_devices for r in results)
    assert h100 <= a100_40  # twice the memory per device


def test_target_days_returns_the_smallest_count_that_meets_it(result):
    at_eight = next(r for r in result.rows if r.device == "H100-SXM" and r.num_devices == 8)
    study = Study(spec=load_model("llama-7b"), devices=("H100",), counts=parse_counts("1..16"), train_tokens=TOKENS)
    goal = Goal(target_days=at_eight.train_days * 1.000001, granularity=1)
    (found,) = seek(study, goal)
    assert found.answer is not None and found.answer.num_devices <= 8
    assert found.answer.train_days <= goal.target_days
    assert found.below is not None and not goal.met_by(found.below)
    assert found.below.num_devices == _previous_candidate(study, goal, found.answer.num_devices)


def test_goal_met_at_the_first_candidate_has_nothing_below():
    study = Study(spec=load_model("llama-7b"), devices=("H100",), counts=parse_counts("8..64"))
    (found,) = seek(study, Goal())
    assert found.answer.num_devices == 8 and found.below is None and len(found.trail) == 1


def test_target_days_needs_tokens():
    study = Study(spec=load_model("llama-7b"), devices=("H100",), counts=parse_counts("8..64"))
    with pytest.raises(ValueError, match="tokens"):
        seek(study, Goal(target_days=30.0))


# ---- plots ---------------------------------------------------------------------------------------


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000  # four panels with text, not an empty canvas


def test_plot_of_a_device_sweep_is_a_png(result, tmp_path):
    from planner.emit.plots import plot_rows
    path = tmp_path / "sweep.png"
    plot_rows(result.rows, path, train_tokens=TOKENS, target_days=30.0)
    _assert_png(path)


def test_plot_of_a_sequence_sweep_is_a_png(result, tmp_path):
    from planner.emit.plots import plot_rows
    base = next(r for r in result.rows if r.fits)
    rows = tuple(dataclasses.replace(base, seq_len=s, global_batch=2**22 // s) for s in (2048, 4096, 8192))
    path = tmp_path / "seq.png"
    plot_rows(rows, path)
    _assert_png(path)


def test_plot_needs_rows(tmp_path):
    from planner.emit.plots import plot_rows
    with pytest.raises(ValueError):
        plot_rows((), tmp_path / "empty.png")


# ---- command line --------------------------------------------------------------------------------


def test_cli_sweep_writes_table_csv_and_plot(tmp_path, capsys):
    csv_path, png_path = tmp_path / "out.csv", tmp_path / "out.png"
    code = plan_main(["capacity", "--model", "llama-7b", "--device", "H100", "--devices", "4..8", "--tokens", "1T",
                      "--price-per-device-hour", "2", "--csv", str(csv_path), "--plot", str(png_path),
                      "--jobs", "1"])
    out = capsys.readouterr().out
    assert code == 0
    rows = rows_from_csv(csv_path.read_text())
    assert [r.num_devices for r in rows] == [4, 8]
    for row in rows:
        assert row.layout in out
    assert "days" in out and "cost" in out
    _assert_png(png_path)


def test_cli_prices_per_device_type(tmp_path, capsys):
    csv_path = tmp_path / "priced.csv"
    code = capacity_main(["--model", "llama-7b", "--device", "H100,A100-80GB", "--devices", "8", "--tokens", "1T",
                          "--price-per-device-hour", "A100=1,H100=3", "--csv", str(csv_path), "--jobs", "1"])
    assert code == 0
    h100, a100 = rows_from_csv(csv_path.read_text())
    assert math.isclose(h100.cost, 3 * h100.device_hours) and math.isclose(a100.cost, 1 * a100.device_hours)
    assert "H100-SXM $3, A100-80GB $1" in capsys.readouterr().out


def test_scaling_limit_is_the_first_count_below_the_floor(result):
    from planner.capacity import scaling_limits
    for limit in scaling_limits(result.rows, floor=1.0):
        fitting = sorted((r for r in result.rows if r.fits and r.device == limit.device), key=lambda r: r.num_devices)
        below = [r for r in fitting if r.scaling_efficiency < 1.0]
        assert limit.first_inefficient == (below[0] if below else None)
        assert limit.last_efficient.scaling_efficiency >= 1.0
        assert limit.peak.tokens_per_s == max(r.tokens_per_s for r in fitting)
    with pytest.raises(ValueError, match="floor"):
        scaling_limits(result.rows, floor=0.0)


def test_cli_goal_seeking_misses_an_impossible_deadline(capsys):
    # 1T tokens in under 90 seconds: billions of tokens per second, far beyond 8 devices
    code = capacity_main(["--model", "llama-7b", "--device", "H100", "--devices", "4..8", "--tokens", "1T",
                          "--target-days", "0.001", "--jobs", "1"])
    out = capsys.readouterr().out
    assert code == 3
    assert out.startswith("no count of H100-SXM up to 8")


BAD_ARGUMENTS = [
    ["--device", "H100", "--devices", "0..8"],
    ["--device", "H100", "--devices", "64..8"],
    ["--device", "H100", "--devices", "8,x"],
    ["--device", "H100", "--devices", ""],
    ["--device", "H100", "--devices", "1..8:0"],
    ["--device", "H999", "--devices", "8"],
    ["--device", "H100,", "--devices", "8"],
    ["--device", "H100"],
    ["--device", "H100", "--devices", "8", "--seq-len", "0"],
    ["--device", "H100", "--devices", "8", "--seq-len", "long"],
    ["--device", "H100", "--devices", "8", "--target-days", "30"],
    ["--device", "H100", "--devices", "8", "--tokens", "1T", "--target-days", "-1"],
    ["--device", "H100", "--devices", "8", "--tokens", "1T", "--target-days", "30", "--min-fit"],
    ["--device", "H100", "--devices", "8", "--granularity", "8"],
    ["--device", "H100", "--devices", "8", "--price-per-device-hour", "2"],
    ["--device", "H100", "--devices", "8", "--tokens", "1T", "--price-per-device-hour", "cheap"],
    ["--device", "H100,A100", "--devices", "8", "--tokens", "1T", "--price-per-device-hour", "H100=2"],
    ["--device", "H100", "--devices", "8", "--min-scaling", "1.5"],
    ["--device", "H100", "--devices", "8", "--jobs", "0"],
    ["--device", "A100", "--devices", "8", "--dtype", "fp8"],
    ["--device", "H100", "--devices", "8", "--global-batch", "64", "--global-batch-tokens", "4M"],
    ["--device", "H100", "--devices", "8", "--csv", "/nonexistent-folder/out.csv"],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a))
def test_cli_bad_arguments_exit_2_with_one_line(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = capacity_main(["--model", "llama-7b", *args])
        raise SystemExit(code)
    err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert err.out == ""
    assert len(err.err.strip().splitlines()) == 1 and err.err.startswith("plan capacity: ")


def test_cli_unknown_model_exits_2(capsys):
    assert capacity_main(["--model", "no-such-model", "--device", "H100", "--devices", "8"]) == 2
    assert capsys.readouterr().err.startswith("plan capacity: unknown model")


def test_rows_reject_a_fit_with_a_reason(result):
    row = next(r for r in result.rows if r.fits)
    with pytest.raises(ValueError, match="reason"):
        dataclasses.replace(row, reason="because")
