"""SFT, LoRA and DPO in one process: every model family learns a memorisable set, DPO starts at log 2 against
its frozen reference, LoRA trains only adapters and merges to base + (alpha / r) A @ B, and bad arguments
stop early with one line. Multi-process parity is in test_finetune_parallel.py."""

from __future__ import annotations

import math

import numpy as np
import paddle
import pytest

from runtime.apply import Launch, PlanMismatchError
from runtime.args import TrainArgs
from runtime.train import Trainer
from tests.runtime.helpers import REPO, make_plan, write_args

MODELS = ("llama-tiny", "qwen2-tiny", "deepseek-v3-tiny", "gpt3-tiny")
STEPS = 8


def _args(tmp_path, finetune_data, tokenizer, *, mode, model="llama-tiny", **changes) -> TrainArgs:
    values = dict(mode=mode, model=model, data=str(finetune_data["dpo" if mode == "dpo" else "sft"]),
                  output_dir=str(tmp_path / f"{model}-{mode}"), max_steps=STEPS, seed=1, learning_rate=1e-2,
                  lr_schedule="constant", mode_args={"tokenizer": str(tokenizer)})
    return TrainArgs.from_dict({**values, **changes})


def _trainer(args: TrainArgs) -> Trainer:
    return Trainer(args, plan=make_plan(args.model, mbs=4, mode=args.mode))


@pytest.mark.parametrize("model", MODELS)
def test_every_family_learns_the_toy_set_in_every_mode(tmp_path, finetune_data, tiny_tokenizer_dir, model):
    # 4 examples and a global batch of 4: every step sees the whole set, so the loss must fall steadily.
    losses = {}
    for mode in ("sft", "lora", "dpo"):
        lr = 5e-2 if mode == "lora" else 1e-2  # adapters start at B = 0 and move the model slowly
        history = _trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode=mode, model=model,
                                 learning_rate=lr)).run()
        losses[mode] = [m.loss for m in history]
    assert losses["sft"][-1] < 0.5 * losses["sft"][0], losses
    # LoRA falls less: the frozen random base bounds what adapters can reach (GPT's frozen tied embedding of
    # std 0.02 caps its logits, so it plateaus near 5.9 from 6.3).
    assert losses["lora"][-1] < losses["lora"][0] - 0.2, losses
    assert losses["sft"][0] == pytest.approx(losses["lora"][0], abs=1e-6)  # B = 0: LoRA starts at the base model
    # The policy starts as a copy of the frozen reference: margin 0, loss -log sigmoid(0) = log 2.
    assert losses["dpo"][0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses["dpo"][-1] < 0.5 * math.log(2), losses


def test_packed_sft_rows_train(tmp_path, finetune_data, tiny_tokenizer_dir):
    args = _args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="sft", max_steps=4,
                 mode_args={"tokenizer": str(tiny_tokenizer_dir), "packing": True})
    trainer = _trainer(args)
    assert len(trainer.loader.dataset.rows) < 4  # the 4 short examples share rows of 32 tokens
    history = trainer.run()
    assert history[-1].loss < 0.7 * history[0].loss


def test_base_weights_are_where_fine_tuning_starts(tmp_path, finetune_data, tiny_tokenizer_dir):
    from planner.frontends import load_preset
    from runtime.merge import MergeOptions, write_weights
    from runtime.models import build_model

    write_weights(build_model(load_preset("llama-tiny"), seed=7).state_dict(), tmp_path / "base", MergeOptions())
    losses = {}
    for mode in ("sft", "dpo"):
        for name, seed, extra in (("seeded", 7, {}), ("loaded", 1, {"base_weights": str(tmp_path / "base")}),
                                  ("default", 1, {})):
            args = _args(tmp_path / name, finetune_data, tiny_tokenizer_dir, mode=mode, seed=seed, max_steps=2,
                         mode_args={"tokenizer": str(tiny_tokenizer_dir), **extra})
            losses[mode, name] = [m.loss for m in _trainer(args).run()]
        # Each batch is the whole set, in an order that follows the seed: equal up to summation order.
        assert losses[mode, "loaded"] == pytest.approx(losses[mode, "seeded"], abs=1e-5), losses
        assert abs(losses[mode, "default"][-1] - losses[mode, "seeded"][-1]) > 1e-2, losses
    with pytest.raises(ValueError, match=r"weights at .* do not fit model 'gpt3-tiny'"):
        _trainer(_args(tmp_path / "wrong", finetune_data, tiny_tokenizer_dir, mode="sft", model="gpt3-tiny",
                       mode_args={"tokenizer": str(tiny_tokenizer_dir), "base_weights": str(tmp_path / "base")}))


def test_dpo_reference_is_frozen_and_outside_the_optimizer(tmp_path, finetune_data, tiny_tokenizer_dir):
    trainer = _trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="dpo", max_steps=3))
    reference = trainer.logits_model.reference.causal_lm
    start = {name: p.numpy().copy() for name, p in reference.named_parameters()}
    optimized = {id(p) for p in trainer.optimizer._parameter_list}
    assert all(p.stop_gradient and id(p) not in optimized for p in reference.parameters())
    assert all(id(p) in optimized for p in trainer.model.parameters())
    trainer.run()
    assert all(np.array_equal(p.numpy(), start[name]) for name, p in reference.named_parameters())
    policy = dict(trainer.model.named_parameters())
    assert any(not np.array_equal(policy[name].numpy(), start[name]) for name in start)


def test_dpo_loss_matches_the_sigmoid_formula():
    from runtime.modes.dpo import dpo_loss

    rng = np.random.RandomState(0)
    logits = rng.randn(2, 4, 3, 5).astype("float32")  # [policy/reference, 2 pairs x chosen/rejected, s, vocab]
    labels = np.array([[[1, 2, -100], [3, -100, -100]], [[4, 0, 1], [-100, 2, 2]]], dtype="int64")  # [pairs, 2, s]
    rows = labels.reshape(4, 3)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    logps = np.array([[sum(log_softmax[m, r, t, rows[r, t]] for t in range(3) if rows[r, t] != -100)
                       for r in range(4)] for m in range(2)])
    margin = (logps[0, 0::2] - logps[0, 1::2]) - (logps[1, 0::2] - logps[1, 1::2])
    expected = np.mean(np.log1p(np.exp(-0.5 * margin)))  # -log sigmoid(beta * margin), beta = 0.5
    got = float(dpo_loss(paddle.to_tensor(logits), paddle.to_tensor(labels), beta=0.5))
    assert got == pytest.approx(expected, rel=1e-5)


def test_lora_trains_only_adapters_and_merges_to_base_plus_scaled_update(tmp_path, finetune_data,
                                                                         tiny_tokenizer_dir):
    from planner.frontends import load_preset
    from runtime.inference import load_model
    from runtime.merge import read_weights
    from runtime.models import build_model
    from tools.merge_lora import main as merge_main

    args = _args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="lora", max_steps=4, learning_rate=5e-2,
                 mode_args={"tokenizer": str(tiny_tokenizer_dir), "lora_rank": 4, "lora_alpha": 8})
    trainer = _trainer(args)
    trainable = sorted(name for name, p in trainer.model.named_parameters() if not p.stop_gradient)
    assert trainable and all(name.endswith((".lora_A", ".lora_B")) for name in trainable)
    assert len(trainer.optimizer._parameter_list) == len(trainable)
    trainer.run()

    base = {name: value.numpy() for name, value in build_model(load_preset("llama-tiny"), seed=1).state_dict().items()}
    trained = {name: p.numpy() for name, p in trainer.model.named_parameters()}
    assert all(np.array_equal(trained[name], base[name]) for name in base)  # the base never moved
    adapters = read_weights(tmp_path / "llama-tiny-lora" / "lora")
    assert sorted(adapters) == trainable
    assert all(np.array_equal(adapters[name], trained[name]) for name in adapters)

    assert merge_main(["--lora", str(tmp_path / "llama-tiny-lora" / "lora"), "--output_path",
                       str(tmp_path / "merged")]) == 0
    merged = read_weights(tmp_path / "merged")
    assert sorted(merged) == sorted(base)
    layer = "model.layers.1.mlp.down_proj"
    update = adapters[f"{layer}.lora_A"] @ adapters[f"{layer}.lora_B"]
    assert np.abs(update).max() > 1e-4  # training moved B away from 0
    np.testing.assert_allclose(merged[f"{layer}.weight"], base[f"{layer}.weight"] + (8 / 4) * update, atol=1e-6)
    untouched = [name for name in base if not any(name == f"{a.rsplit('.', 1)[0]}.weight" for a in adapters)]
    assert "lm_head.weight" in untouched and all(np.array_equal(merged[n], base[n]) for n in untouched)
    # The merged single-card model computes what the trained LoRA model computes.
    ids = paddle.to_tensor(np.arange(16, dtype="int64").reshape(2, 8))
    trainer.model.eval()
    lora_logits = trainer.model(input_ids=ids, return_dict=False)[0].numpy()
    merged_logits = load_model(tmp_path / "merged")(input_ids=ids, return_dict=False)[0].numpy()
    np.testing.assert_allclose(merged_logits, lora_logits, atol=1e-4)


def test_lora_config_errors_and_the_merge_cli(tmp_path, finetune_data, tiny_tokenizer_dir, capsys):
    from runtime.lora import LoRAConfig, merge_adapters
    from tools.merge_lora import main as merge_main

    with pytest.raises(ValueError, match=r"lora: rank must be an integer >= 1, got 0"):
        LoRAConfig(rank=0)
    base = {"a.weight": np.zeros((3, 2), "float32")}
    with pytest.raises(ValueError, match=r"a: A \(3, 4\) @ B \(4, 2\) does not fit weight \(3, 2\) at rank 2"):
        merge_adapters(base, {"a.lora_A": np.zeros((3, 4)), "a.lora_B": np.zeros((4, 2))}, LoRAConfig(rank=2))
    with pytest.raises(ValueError, match=r"adapter b lacks b.lora_B"):
        merge_adapters(base, {"b.lora_A": np.zeros((3, 2))}, LoRAConfig(rank=2))
    assert merge_main(["--lora", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"merge_lora: error: lora merge: cannot read {tmp_path / 'nothing' / 'lora_config.json'}: No such file or "
        "directory")
    with pytest.raises(ValueError, match=r"lora: target_modules \['nope'\] match no linear layer"):
        _trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="lora",
                       mode_args={"tokenizer": str(tiny_tokenizer_dir), "target_modules": ["nope"]}))


def test_mode_args_are_checked_before_anything_heavy(tmp_path, finetune_data, tiny_tokenizer_dir):
    tokenizer = {"tokenizer": str(tiny_tokenizer_dir)}
    cases = [
        ("sft", {**tokenizer, "pack": True}, r"sft: unknown mode_args keys \['pack'\]; valid keys are"),
        ("sft", {}, r"sft: missing mode_args keys \['tokenizer'\]"),
        ("lora", {**tokenizer, "lora_rank": -1}, r"lora: mode_args: lora: rank must be an integer >= 1, got -1"),
        ("dpo", {**tokenizer, "beta": 0}, r"dpo: mode_args: beta must be a number > 0, got 0"),
        ("dpo", {**tokenizer, "bad_lines": "ignore"}, r"bad_lines='ignore' is not one of error, skip"),
    ]
    for mode, mode_args, message in cases:
        with pytest.raises(ValueError, match=message):
            _trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode=mode, mode_args=mode_args))
    with pytest.raises(ValueError, match=r"sft: data must be the path of a jsonl file, got 'mock'"):
        _trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="sft", data="mock"))
    with pytest.raises(PlanMismatchError, match=r"mode 'dpo' keeps a reference model, .* pp=1 \(got pp=2\)"):
        Trainer(_args(tmp_path, finetune_data, tiny_tokenizer_dir, mode="dpo", to_static=True),
                plan=make_plan("llama-tiny", pp=2, micro_batches=2, mode="dpo"),
                launch=Launch(world_size=2, rank=0, device="cpu"))


def test_bad_data_ends_the_tool_with_one_line_naming_file_and_line(tmp_path, tiny_tokenizer_dir):
    import subprocess
    import sys

    from tests.runtime.helpers import subprocess_env

    data = tmp_path / "sft.jsonl"
    data.write_text('{"src": "the cat", "tgt": "sat"}\n{"src": "a dog"}\n')
    args = write_args(tmp_path / "args.json", mode="sft", model="llama-tiny", data=str(data), plan="dp=1,mbs=2",
                      seq_length=16, global_batch_size=2, output_dir=str(tmp_path / "out"),
                      mode_args={"tokenizer": str(tiny_tokenizer_dir)})
    done = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), str(args)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: SFT data {data}:2: missing field 'tgt' (mode_args bad_lines=\"skip\" drops such lines)")
