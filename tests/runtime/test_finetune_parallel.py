"""Pretraining, SFT, LoRA and DPO for every model family under dp2 and mp2, dynamic and to_static, give the
losses of one process.

Every (model, mode) run of one layout shares one launch (tests/runtime/train_many.py): process start
and imports cost ~10 s per launch, a 4-step tiny run ~1 s. Plans are made by the planner from layout
strings ("dp=2,mbs=2": it adds sharding stage 1), except DeepSeek-V3 under mp2 (see below). Each run
trains 4 steps on the conftest `finetune_data` sets (pretraining: mock data) with a global batch of
4 sequences x 32 tokens.
Tolerance as in test_parallel_training.py: |loss - reference| <= 2e-4 at every step.

Blocked on the CPU build of Paddle 3.3.1 (what the table in docs/finetune.md records):
- Qwen2 under mp2: the fused qkv_proj's column split fails in the backward pass ("matmul grad infer
  spmd verify error"), in pretraining as well.
- DeepSeek-V3 under mp2 with the planner's plan: the plan splits the MLA down-projection
  kv_a_proj_with_mqa by columns, whose output is cut into the latent and the rope part and
  normalised; the backward pass then fails the same way (and the whole plan with CReduceScatterOp,
  which has no CPU kernel). The mp2 case here uses the plan without the MLA down-projections.
- DeepSeek-V3 under to_static with dp2: the losses leave the single-process ones from step 2 on, in
  pretraining as well (a pre-existing runtime issue), so only its single-process static runs are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.merge import read_weights
from tests.runtime.helpers import make_plan, read_metrics, run_train_many, worker_logs, write_args, write_plan

MODELS = ("llama-tiny", "qwen2-tiny", "deepseek-v3-tiny", "gpt3-tiny")
MODES = ("pretrain", "sft", "lora", "dpo")
STEPS = 4
TOLERANCE = 2e-4
TRAIN = dict(max_steps=STEPS, seed=1, learning_rate=1e-2, warmup_steps=1, seq_length=32, global_batch_size=4)

_COL, _ROW = {"style": "ColWiseParallel"}, {"style": "RowWiseParallel"}
# The planner's DeepSeek-V3 mp2 plan without the MLA down-projections (q_a_proj, kv_a_proj_with_mqa).
DEEPSEEK_MP2 = {
    "model.layers.*.self_attn.q_b_proj": _COL, "model.layers.*.self_attn.kv_b_proj": _COL,
    "model.layers.*.self_attn.o_proj": _ROW,
    **{f"model.layers.*.mlp.{part}{name}_proj": _COL for part in ("", "shared_experts.", "experts.*.")
       for name in ("gate", "up")},
    **{f"model.layers.*.mlp.{part}down_proj": _ROW for part in ("", "shared_experts.", "experts.*.")},
    "lm_head": _COL,
}


def _run(root, name, cases, *, nproc, finetune_data, tokenizer, to_static=False) -> dict:
    """Train every (model, mode, plan) of `cases` in one launch; {(model, mode): output directory}."""
    directory = root / name
    files, outputs = [], {}
    for model, mode, plan in cases:
        run = directory / f"{model}-{mode}"
        run.mkdir(parents=True)
        if not isinstance(plan, str):
            plan = str(write_plan(plan, run / "plan.json"))
        outputs[(model, mode)] = run / "out"
        data = {"pretrain": "mock", "dpo": str(finetune_data["dpo"])}.get(mode, str(finetune_data["sft"]))
        files.append(write_args(run / "args.json", mode=mode, model=model, plan=plan, data=data,
                                output_dir=str(run / "out"), to_static=to_static,
                                mode_args={} if mode == "pretrain" else {"tokenizer": str(tokenizer)}, **TRAIN))
    done = run_train_many(files, nproc=nproc, log_dir=directory / "logs")
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-3000:]}\n{worker_logs(directory / 'logs')}"
    return outputs


@pytest.fixture(scope="module")
def single(tmp_path_factory, finetune_data, tiny_tokenizer_dir):
    """Single-process dynamic runs of every (model, mode): the reference ({(model, mode): output directory})."""
    cases = [(model, mode, "dp=1,mbs=4") for model in MODELS for mode in MODES]
    return _run(tmp_path_factory.mktemp("single"), "single", cases, nproc=1, finetune_data=finetune_data,
                tokenizer=tiny_tokenizer_dir)


def _assert_parity(outputs: dict, reference: dict) -> None:
    """Rank 0's losses equal the reference's at every step; LoRA runs saved the same adapters."""
    for key, out in outputs.items():
        values, expected = ([line["loss"] for line in read_metrics(d)] for d in (out, reference[key]))
        assert len(values) == STEPS
        assert all(abs(a - b) <= TOLERANCE for a, b in zip(values, expected, strict=True)), (key, values, expected)
        assert expected[-1] < expected[0], (key, expected)  # the reference learns: equal losses mean equal updates
        if key[1] == "lora":
            adapters, single_adapters = read_weights(out / "lora"), read_weights(reference[key] / "lora")
            assert sorted(adapters) == sorted(single_adapters)
            # AdamW normalises each gradient, so entries whose gradient is ~0 (lora_A at step 1, where B = 0)
            # move by up to ~lr * 3e-2 on reduction-order noise: 3e-4 on DeepSeek-V3 mp2. A wrong gather of a
            # sharded adapter is off by its whole size (~0.1).
            assert all(np.allclose(adapters[n], single_adapters[n], atol=1e-3) for n in adapters), key


@pytest.mark.slow
def test_dp2_matches_single_process(tmp_path, single, finetune_data, tiny_tokenizer_dir):
    cases = [(model, mode, "dp=2,mbs=2") for model in MODELS for mode in MODES]
    _assert_parity(_run(tmp_path, "dp2", cases, nproc=2, finetune_data=finetune_data,
                           tokenizer=tiny_tokenizer_dir), single)


@pytest.mark.slow
def test_mp2_matches_single_process(tmp_path, single, finetune_data, tiny_tokenizer_dir):
    cases = [(model, mode, "mp=2,mbs=4") for model in ("llama-tiny", "gpt3-tiny") for mode in MODES]
    cases += [("deepseek-v3-tiny", mode, make_plan("deepseek-v3-tiny", mp=2, mbs=4, mode=mode, mp_plan=DEEPSEEK_MP2))
              for mode in MODES]
    _assert_parity(_run(tmp_path, "mp2", cases, nproc=2, finetune_data=finetune_data,
                           tokenizer=tiny_tokenizer_dir), single)


@pytest.mark.slow
def test_static_dp2_matches_single_process(tmp_path, single, finetune_data, tiny_tokenizer_dir):
    cases = [(model, mode, "dp=2,mbs=2") for model in ("llama-tiny", "qwen2-tiny", "gpt3-tiny") for mode in MODES]
    _assert_parity(_run(tmp_path, "static-dp2", cases, nproc=2, finetune_data=finetune_data,
                           tokenizer=tiny_tokenizer_dir, to_static=True), single)


@pytest.mark.slow
def test_static_single_process_matches_dynamic(tmp_path, single, finetune_data, tiny_tokenizer_dir):
    # DeepSeek-V3 only: the other families' static runs are checked under dp2 above.
    cases = [("deepseek-v3-tiny", mode, "dp=1,mbs=4") for mode in MODES]
    _assert_parity(_run(tmp_path, "static-single", cases, nproc=1, finetune_data=finetune_data,
                           tokenizer=tiny_tokenizer_dir, to_static=True), single)


@pytest.mark.slow
def test_static_mp2_matches_single_process(tmp_path, single, finetune_data, tiny_tokenizer_dir):
    cases = [("llama-tiny", mode, "mp=2,mbs=4") for mode in MODES]
    _assert_parity(_run(tmp_path, "static-mp2", cases, nproc=2, finetune_data=finetune_data,
                           tokenizer=tiny_tokenizer_dir, to_static=True), single)
