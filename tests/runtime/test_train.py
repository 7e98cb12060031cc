"""runtime/train.py and tools/train.py in one process: schedule, metrics file, recompute, and the
one-line errors a user sees. Multi-process layouts are in test_parallel_training.py."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import paddle
import pytest

from runtime.apply import Launch, PlanMismatchError
from runtime.args import TrainArgs
from runtime.train import Trainer, apply_recompute, lr_multiplier, train
from tests.runtime.helpers import REPO, make_plan, read_metrics, subprocess_env, write_args, write_plan


def _args(tmp_path, **changes) -> TrainArgs:
    values = dict(model="llama-tiny", output_dir=str(tmp_path / "out"), max_steps=3, seed=1, learning_rate=1e-2)
    return TrainArgs.from_dict({**values, **changes})


def test_lr_schedule_warms_up_then_decays_to_the_floor(tmp_path):
    args = _args(tmp_path, max_steps=10, warmup_steps=2, learning_rate=1.0, min_learning_rate=0.1)
    assert [lr_multiplier(args, s) for s in (0, 1)] == [0.5, 1.0]
    assert lr_multiplier(args, 2) == pytest.approx(1.0)
    assert lr_multiplier(args, 10) == pytest.approx(0.1)
    assert lr_multiplier(args, 6) == pytest.approx(0.55)  # cosine midpoint between 1 and the floor
    linear = args.replace(lr_schedule="linear")
    assert lr_multiplier(linear, 6) == pytest.approx(0.55)
    assert lr_multiplier(linear, 4) == pytest.approx(0.1 + 0.9 * 0.75)
    assert lr_multiplier(args.replace(lr_schedule="constant"), 9) == 1.0


def test_single_process_training_writes_metrics(tmp_path):
    history = train(_args(tmp_path), plan=make_plan("llama-tiny", mbs=4))
    lines = read_metrics(tmp_path / "out")
    assert [line["step"] for line in lines] == [1, 2, 3] == [m.step for m in history]
    assert set(lines[0]) >= {"step", "loss", "tokens_per_s", "step_time_s", "lr", "tokens"}
    assert lines[-1]["tokens"] == 3 * 4 * 32
    assert all(line["tokens_per_s"] > 0 for line in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]  # mock data is learnable
    assert [line["loss"] for line in lines] == [m.loss for m in history]


def test_micro_batches_accumulate_to_the_same_step(tmp_path):
    whole = train(_args(tmp_path / "a"), plan=make_plan("llama-tiny", mbs=4))
    split = train(_args(tmp_path / "b"), plan=make_plan("llama-tiny", mbs=1, micro_batches=4))
    for one, four in zip(whole, split, strict=True):
        assert four.loss == pytest.approx(one.loss, abs=1e-5)


@pytest.mark.parametrize("mode, counted", [("full", "layer"), ("selective", "self_attn"), ("none", None)])
def test_recompute_reruns_the_chosen_block_in_backward(mode, counted):
    from planner.frontends import load_preset
    from runtime.models import build_model

    model = build_model(load_preset("llama-tiny"), seed=0)
    calls = {"layer": 0, "self_attn": 0}
    layer = model.model.layers[0]
    def counting(name, forward):
        @functools.wraps(forward)  # recompute binds keyword arguments by the wrapped forward's signature
        def run(*args, **kwargs):
            calls[name] += 1
            return forward(*args, **kwargs)
        return run

    for name, block in (("layer", layer), ("self_attn", layer.self_attn)):
        block.forward = counting(name, block.forward)
    apply_recompute(model, make_plan("llama-tiny", recompute=mode))
    ids = paddle.randint(0, 512, [2, 8])
    model(input_ids=ids, return_dict=False)[0].mean().backward()
    expected = {"layer": 1, "self_attn": 1}
    if counted == "layer":
        expected = {"layer": 2, "self_attn": 2}
    elif counted == "self_attn":
        expected = {"layer": 1, "self_attn": 2}
    assert calls == expected


def test_refusals_before_anything_heavy(tmp_path):
    two = Launch(world_size=2, rank=0, device="cpu")
    with pytest.raises(PlanMismatchError, match="pipeline stages in dynamic mode crash on CPU builds"):
        Trainer(_args(tmp_path), plan=make_plan("llama-tiny", pp=2, micro_batches=2), launch=two)
    with pytest.raises(ValueError, match=r"dtype='bfloat16' needs a GPU build"):
        Trainer(_args(tmp_path, dtype="bfloat16"), plan=make_plan("llama-tiny", mbs=4))
    with pytest.raises(ValueError, match="save_interval needs to_static=false"):
        Trainer(_args(tmp_path, save_interval=1, to_static=True), plan=make_plan("llama-tiny", mbs=4))
    with pytest.raises(PlanMismatchError, match="the plan is for seq_length 32, the arguments ask for 64"):
        Trainer(_args(tmp_path, seq_length=64, plan=str(write_plan(make_plan("llama-tiny"), tmp_path / "p.json"))))
    with pytest.raises(ValueError, match=r"pretrain: mode_args must be empty, got keys \['tokenizer'\]"):
        Trainer(_args(tmp_path, mode_args={"tokenizer": "tok"}), plan=make_plan("llama-tiny", mbs=4))


def _run_tool(args_file) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(args_file)], cwd=args_file.parent,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_tool_runs_as_a_script_and_errors_in_one_line(tmp_path):
    plan = write_plan(make_plan("llama-tiny", dp=2), tmp_path / "dp2.json")
    done = _run_tool(write_args(tmp_path / "args.json", model="llama-tiny", plan=str(plan),
                                output_dir=str(tmp_path / "out")))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the plan is for 2 devices but this launch has 1 processes; launch with --nproc_per_node 2 or re-plan")
    done = _run_tool(write_args(tmp_path / "typo.json", model="llama-tiny", output_dir="out", max_step=3))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"error: {tmp_path / 'typo.json'}: train args: unknown keys ['max_step']")


def test_tool_trains_from_a_plan_file(tmp_path):
    plan = write_plan(make_plan("llama-tiny", mbs=2, seq_len=16), tmp_path / "plan.json")
    args = write_args(tmp_path / "args.json", model="llama-tiny", plan=str(plan), output_dir=str(tmp_path / "out"),
                      max_steps=2, log_interval=2)
    done = _run_tool(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()] == [2]


def test_layout_strings_and_auto_are_planned_for_this_launch(tmp_path):
    from planner.frontends import load_preset
    from runtime.train import resolve_plan

    spec, two = load_preset("llama-tiny"), Launch(world_size=2, rank=0, device="cpu")
    planned = resolve_plan(_args(tmp_path, plan="dp=2", seq_length=32, global_batch_size=4), spec, two)
    assert (planned.layout.dp, planned.num_devices, planned.device, planned.seq_len) == (2, 2, "cpu", 32)
    assert planned.layout.global_batch_size == 4
    auto = resolve_plan(_args(tmp_path, seq_length=32, global_batch_size=8), spec, two)
    assert auto.num_devices == 2 and auto.layout.global_batch_size == 8
    with pytest.raises(PlanMismatchError, match="plan is for a global batch of 4 sequences, the arguments ask for 8"):
        resolve_plan(_args(tmp_path, global_batch_size=8, plan=str(write_plan(make_plan("llama-tiny", mbs=4),
                                                                                tmp_path / "p.json"))), spec, two)
