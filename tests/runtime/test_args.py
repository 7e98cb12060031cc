"""runtime/args.py: the arguments file is parsed strictly, with errors that name the bad key or value."""

from __future__ import annotations

import json

import pytest

from runtime.args import TrainArgs

BASE = {"model": "llama-tiny", "output_dir": "out"}


def test_defaults_and_round_trip():
    args = TrainArgs.from_dict(BASE)
    assert (args.mode, args.data, args.plan, args.to_static) == ("pretrain", "mock", "auto", False)
    assert TrainArgs.from_dict(args.to_dict()) == args


def test_unknown_key_is_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown keys \['lerning_rate'\]; valid keys are .*'learning_rate'"):
        TrainArgs.from_dict({**BASE, "lerning_rate": 1e-3})


def test_missing_required_keys_are_named():
    with pytest.raises(ValueError, match=r"missing required keys \['output_dir'\]"):
        TrainArgs.from_dict({"model": "llama-tiny"})


@pytest.mark.parametrize("key, value, message", [
    ("mode", "rlhf", "mode='rlhf' is not one of pretrain, sft, lora, dpo"),
    ("max_steps", 0, "max_steps must be an integer >= 1, got 0"),
    ("max_steps", True, "max_steps must be an integer >= 1, got True"),
    ("learning_rate", -1.0, "learning_rate must be a number >= 0"),
    ("adam_beta2", 1.0, r"adam_beta2 must be in \[0, 1\)"),
    ("lr_schedule", "step", "lr_schedule='step' is not one of cosine, linear, constant"),
    ("dtype", "int8", "dtype='int8' is not one of"),
    ("pipeline_schedule", "zb", "pipeline_schedule='zb' is not one of auto, FThenB, 1F1B, VPP"),
    ("to_static", "yes", "to_static must be true or false"),
    ("plan", "", "plan must be a non-empty string"),
    ("mode_args", [], "mode_args must be an object"),
])
def test_bad_values_are_rejected(key, value, message):
    with pytest.raises(ValueError, match=message):
        TrainArgs.from_dict({**BASE, key: value})


def test_min_learning_rate_above_learning_rate():
    with pytest.raises(ValueError, match="min_learning_rate=0.1 exceeds learning_rate=0.01"):
        TrainArgs.from_dict({**BASE, "learning_rate": 0.01, "min_learning_rate": 0.1})


def test_from_file_names_the_file(tmp_path):
    good = tmp_path / "args.json"
    good.write_text(json.dumps({**BASE, "max_steps": 3}))
    assert TrainArgs.from_file(good).max_steps == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**BASE, "seeed": 1}))
    with pytest.raises(ValueError, match=rf"^{bad}: train args: unknown keys \['seeed'\]"):
        TrainArgs.from_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        TrainArgs.from_file(broken)
    with pytest.raises(ValueError, match="cannot read"):
        TrainArgs.from_file(tmp_path / "missing.json")
