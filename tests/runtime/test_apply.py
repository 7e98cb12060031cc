"""runtime/apply.py: layer-name patterns (matched as Paddle matches them), plan-to-Paddle translation,
and the one-line refusals of plans that do not fit the launch or the model."""

from __future__ import annotations

import dataclasses

import paddle.distributed as dist
import pytest

from planner.frontends import load_preset
from planner.plan import Layout, Stage
from runtime.apply import (
    Launch,
    PlanMismatchError,
    build_mesh,
    check_patterns,
    check_plan,
    parallelize_config,
    pattern_matches,
    pipeline_split_spec,
    planner_device_name,
    stage_split_names,
    tensor_parallel_plan,
)
from runtime.models import build_model
from tests.runtime.helpers import MP_PLANS, make_plan

CPU2 = Launch(world_size=2, rank=0, device="cpu")


@pytest.fixture(scope="module")
def llama():
    return build_model(load_preset("llama-tiny"), seed=0)


def test_pattern_matching_agrees_with_paddle(llama):
    from paddle.distributed.auto_parallel.intermediate.tensor_parallel import TensorParallel

    patterns = {**tensor_parallel_plan(MP_PLANS["llama"]), "lm_head.weight": dist.ColWiseParallel(),
                "model.layers.1.mlp.*": dist.RowWiseParallel(), "model.layers": dist.ColWiseParallel()}
    for pattern in patterns:
        ours = set(pattern_matches(pattern, llama))
        theirs = set()
        for name, layer in llama.named_sublayers():
            single = TensorParallel.__new__(TensorParallel)
            single.parallelize_plan = {pattern: patterns[pattern]}
            for _, params in single.match_layer(layer, name):
                theirs.update([f"{name}.{p}" for p in params] or [name])
        assert ours == theirs, pattern
    assert pattern_matches("model.layers.*.self_attn.q_proj", llama) == ["model.layers.0.self_attn.q_proj",
                                                                         "model.layers.1.self_attn.q_proj"]
    assert pattern_matches("lm_head.weight", llama) == ["lm_head.weight"]


@pytest.mark.parametrize("preset, family", [("llama-tiny", "llama"), ("qwen2-tiny", "qwen2"), ("gpt3-tiny", "gpt")])
def test_test_plans_use_real_names(preset, family):
    check_patterns(MP_PLANS[family], build_model(load_preset(preset), seed=0), what="parallelize_plan")


def test_unmatched_patterns_are_listed():
    qwen2 = build_model(load_preset("qwen2-tiny"), seed=0)
    with pytest.raises(PlanMismatchError, match=r"parallelize_plan patterns match no layer of "
                                                r"Qwen2ForCausalLMDeprecated: \['model.layers.\*.self_attn.q_proj', "
                                                r"'llama.embed_tokens'\]"):
        check_patterns(["model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.qkv_proj", "llama.embed_tokens"],
                       qwen2, what="parallelize_plan")


def test_styles_become_paddle_objects():
    built = tensor_parallel_plan({"a": {"style": "ColWiseParallel", "gather_output": True},
                                  "b": [{"style": "RowWiseParallel", "is_input_parallel": False},
                                        {"style": "SequenceParallelBegin"}]})
    assert isinstance(built["a"], dist.ColWiseParallel) and built["a"].gather_output is True
    assert isinstance(built["b"][0], dist.RowWiseParallel) and built["b"][0].is_input_parallel is False
    assert isinstance(built["b"][1], dist.SequenceParallelBegin)
    with pytest.raises(PlanMismatchError, match=r"needs a 'style' in ColWiseParallel, RowWiseParallel"):
        tensor_parallel_plan({"a": {"style": "PrepareLayerInput"}})
    with pytest.raises(PlanMismatchError, match=r"ColWiseParallel rejects \{'gather': True\}"):
        tensor_parallel_plan({"a": {"style": "ColWiseParallel", "gather": True}})


def test_to_static_keeps_lm_head_logits_sharded(llama):
    plan = make_plan("llama-tiny", mp=2, mp_plan={**MP_PLANS["llama"], "lm_head": {"style": "ColWiseParallel",
                                                                                    "gather_output": True}})
    dynamic = parallelize_config(plan, llama)["mp_config"]["parallelize_plan"]
    static = parallelize_config(plan, llama, to_static=True)["mp_config"]["parallelize_plan"]
    assert dynamic["lm_head"].gather_output is True and static["lm_head"].gather_output is False
    assert static["model.embed_tokens"].gather_output is True


def test_parallelize_config_per_axis(llama):
    config = parallelize_config(make_plan("llama-tiny", dp=2, sharding=2), llama)
    assert config == {"dp_config": {"sharding_level": 2}}
    config = parallelize_config(make_plan("llama-tiny", pp=2, micro_batches=2), llama)
    assert config == {"pp_config": {"split_spec": {"model.layers.0": dist.SplitPoint.END}}}
    assert parallelize_config(make_plan("llama-tiny"), llama) == {}


def test_mesh_axes():
    mesh = build_mesh(make_plan("llama-tiny", dp=2, mp=2))
    assert mesh.dim_names == ["dp", "mp"] and mesh.process_ids == [0, 1, 2, 3] and mesh.shape == [2, 2]
    mesh = build_mesh(make_plan("llama-tiny", pp=2, dp=2))
    assert mesh.dim_names == ["pp", "dp", "mp"] and mesh.shape == [2, 2, 1]


def _plan_with(**changes):
    """make_plan's llama-tiny dp2 plan with fields replaced (bypassing make_plan's consistency)."""
    return dataclasses.replace(make_plan("llama-tiny", dp=2), **changes)


@pytest.mark.parametrize("plan, launch, message", [
    (make_plan("llama-tiny", dp=2), Launch(world_size=4, rank=0, device="cpu"),
     "the plan is for 2 devices but this launch has 4 processes; launch with --nproc_per_node 2 or re-plan"),
    (make_plan("llama-tiny", dp=2, device="h100"), CPU2,
     "the plan is for device 'h100' but this launch runs on 'cpu'; re-plan for this device"),
    (make_plan("llama-tiny", dp=2), Launch(world_size=2, rank=0, device="A100-80GB"),
     "the plan is for device 'cpu' but this launch runs on 'A100-80GB'"),
    (make_plan("llama-tiny", dp=2, device="H800"), Launch(world_size=2, rank=0, device="H100-SXM"),
     "the plan is for device 'H800' but this launch runs on 'H100-SXM'"),
    (_plan_with(model_name="llama-7b"), CPU2, "the plan is for model 'llama-7b', not 'llama-tiny'"),
    (_plan_with(model_config={**load_preset("llama-tiny").to_dict(), "hidden_size": 128}), CPU2,
     r"the plan's copy of model 'llama-tiny' differs in \['hidden_size'\]; re-plan"),
])
def test_plans_for_another_launch_or_model_are_refused(plan, launch, message):
    with pytest.raises(PlanMismatchError, match=message):
        check_plan(plan, load_preset("llama-tiny"), launch)


@pytest.mark.parametrize("driver_name, planner_name", [
    ("NVIDIA H100 80GB HBM3", "H100-SXM"), ("NVIDIA A100-SXM4-80GB", "A100-80GB"), ("NVIDIA H200", "H200"),
    ("NVIDIA A800-SXM4-80GB", "A100-80GB"), ("NVIDIA GeForce RTX 4090", "GEFORCE-RTX-4090")])
def test_driver_device_names_map_to_planner_names(driver_name, planner_name):
    assert planner_device_name(driver_name) == planner_name


def test_plan_device_aliases_are_the_same_device():
    plan = make_plan("llama-tiny", dp=2, device="h100")  # an alias of H100-SXM
    check_plan(plan, load_preset("llama-tiny"), Launch(world_size=2, rank=0, device="H100-SXM"))


def test_degrees_must_divide_the_model():
    spec = load_preset("llama-tiny")  # 4 heads, 2 kv heads
    plan = make_plan("llama-tiny", mp=4)
    with pytest.raises(PlanMismatchError, match="mp=4 does not divide num_kv_heads=2 of model 'llama-tiny'"):
        check_plan(plan, spec, Launch(world_size=4, rank=0, device="cpu"))
    odd_vocab = spec.replace(vocab_size=511)
    embedding_only = {"model.embed_tokens": {"style": "ColWiseParallel"}}  # splits hidden, not vocab
    check_plan(make_plan(odd_vocab, mp=2, mp_plan=embedding_only), odd_vocab, CPU2)
    with pytest.raises(PlanMismatchError, match="mp=2 does not divide vocab_size=511"):
        check_plan(make_plan(odd_vocab, mp=2), odd_vocab, CPU2)  # lm_head column-parallel splits the vocabulary
    deep = make_plan("deepseek-v3-tiny", dp=2)
    moe_plan = dataclasses.replace(deep, layout=Layout(dp=2, ep=2))
    with pytest.raises(PlanMismatchError, match=r"ep=2, cp=1 have no auto-parallel implementation here"):
        check_plan(moe_plan, load_preset("deepseek-v3-tiny"), CPU2)


def test_pipeline_split_points():
    plan = make_plan("llama-tiny", pp=2, micro_batches=2)
    assert stage_split_names(plan) == ["model.layers.0"]
    assert pipeline_split_spec(plan) == {"model.layers.0": "END"}
    uneven = dataclasses.replace(plan, paddle_config={},
                                 stages=(Stage(index=0, first_layer=0, last_layer=0, recompute=("none",)),
                                         Stage(index=1, first_layer=1, last_layer=3, recompute=("none",) * 3)))
    assert pipeline_split_spec(uneven) == {"model.embed_tokens": "END"}
    disagreeing = dataclasses.replace(plan, paddle_config={"pp_config": {"split_spec": {"model.layers.1": "END"}}})
    with pytest.raises(PlanMismatchError, match=r"split_spec \['model.layers.1'\] disagrees with the plan's stages "
                                                r"\['model.layers.0'\]"):
        pipeline_split_spec(disagreeing)


# ---- the planner's plans against the real models ----------------------------------------------

@pytest.mark.parametrize("preset, layout", [
    ("llama-tiny", "mp=2"), ("llama-tiny", "pp=2"), ("gpt3-tiny", "mp=2"), ("deepseek-v3-tiny", "pp=2"),
    ("qwen2-tiny", "mp=2"), ("deepseek-v3-tiny", "mp=2"),
])
def test_planner_patterns_match_the_real_model(preset, layout):
    from planner.api import make_plan

    plan, _ = make_plan(preset, "2xcpu", seq_len=32, global_batch=4, layout=layout)
    model = build_model(load_preset(preset), seed=0)
    check_plan(plan, load_preset(preset), CPU2)
    config = parallelize_config(plan, model)  # raises PlanMismatchError naming any unmatched pattern
    assert ("mp_config" in config) == bool(plan.parallelize_plan)
    assert ("pp_config" in config) == (plan.layout.pp > 1)
