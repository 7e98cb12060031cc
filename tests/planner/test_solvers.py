"""The two CP-SAT models against their exhaustive references, and the patterns they must rediscover."""

import random

import pytest

from cost_models.collectives import CommGroup
from cost_models.hardware import load_hardware
from planner.frontends import load_model
from planner.solve import intra_op, stages
from planner.solve.costing import Groups
from planner.strategies.sharding import ShardingContext
from planner.trace import trace_model

A100 = load_hardware("A100")


def _groups(mp: int, ep: int = 1) -> Groups:
    return Groups(mp=CommGroup.for_axis(mp, 1, 8), ep=CommGroup.for_axis(ep, mp, 8),
                  ep_mp=CommGroup.for_axis(ep * mp, 1, 8))


def test_llama_block_rediscovers_megatron_tensor_parallelism():
    block = trace_model(load_model("llama3.1-70b"), 4096).blocks["dense"]
    result = intra_op.solve_block(block, ShardingContext(mp=8), _groups(8), A100, "bf16")
    names = {op: s.name for op, s in result.choice.items()}
    assert {names[p] for p in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")} == {"column"}
    assert names["o_proj"] == names["down_proj"] == "row"
    assert names["attention"] == "heads"
    collectives = result.collectives(block)
    fwd = sorted(c.kind for c in collectives if c.phase == "fwd")
    bwd = sorted(c.kind for c in collectives if c.phase == "bwd")
    assert fwd == ["all_reduce", "all_reduce"] and bwd == ["all_reduce", "all_reduce"]


def test_sequence_parallel_replaces_all_reduce_by_reduce_scatter_and_all_gather():
    block = trace_model(load_model("llama3.1-70b"), 4096).blocks["dense"]
    result = intra_op.solve_block(block, ShardingContext(mp=8, sequence_parallel=True), _groups(8), A100, "bf16")
    kinds = sorted(c.kind for c in result.collectives(block) if c.phase == "fwd")
    assert kinds == ["all_gather", "all_gather", "reduce_scatter", "reduce_scatter"]
    assert result.choice["input_layernorm"].out_layout == "S"


def test_indivisible_heads_keep_attention_replicated():
    block = trace_model(load_model("llama-tiny"), 64).blocks["dense"]  # 2 kv heads
    result = intra_op.solve_block(block, ShardingContext(mp=4), _groups(4), A100, "bf16")
    assert result.choice["attention"].name == "replicate"


@pytest.mark.parametrize("model, kind, ctx", [
    ("llama-tiny", "dense", ShardingContext(mp=2)),
    ("gpt3-tiny", "dense", ShardingContext(mp=2)),
    ("llama-7b", "head", ShardingContext(mp=4, sequence_parallel=True)),
    ("deepseek-v3-tiny", "embedding", ShardingContext(mp=2, sequence_parallel=True)),
])
def test_intra_op_cp_sat_equals_exhaustive(model, kind, ctx):
    block = trace_model(load_model(model), 512).blocks[kind]
    groups = _groups(ctx.mp, ctx.ep)
    fast = intra_op.solve_block(block, ctx, groups, A100, "bf16")
    reference = intra_op.solve_exhaustive(block, ctx, groups, A100, "bf16")
    assert fast.objective_s == pytest.approx(reference.objective_s, rel=1e-6, abs=2e-9 * len(block.graph))


def test_lean_variant_holds_fewest_parameters():
    block = trace_model(load_model("deepseek-v3"), 4096).blocks["moe"]
    ctx = ShardingContext(mp=4, ep=8, sequence_parallel=True)
    fast = intra_op.solve_block(block, ctx, _groups(4, 8), A100, "bf16")
    lean = intra_op.solve_block(block, ctx, _groups(4, 8), A100, "bf16", lean=True)

    def param_bytes(result):
        return sum(op.params / result.choice[op.name].param_divisor for op in block.ops())
    least = sum(op.params / max(s.param_divisor for s in intra_op._allowed(block, ctx)[op.name]) for op in block.ops())
    assert param_bytes(lean) == pytest.approx(least)
    assert param_bytes(fast) > param_bytes(lean)  # replicated small weights save communication
    assert fast.objective_s <= lean.objective_s


def _random_problem(rng: random.Random, pp: int, vpp: int) -> stages.PartitionProblem:
    kinds = ("embedding",) + tuple(rng.choice(["dense", "moe"]) for _ in range(rng.randint(3, 5))) + ("head",)
    time_s = {k: {"none": t, "selective": t * 1.1, "full": t * 1.35}
              for k, t in (("embedding", rng.uniform(0.1, 1)), ("dense", rng.uniform(1, 3)),
                           ("moe", rng.uniform(2, 5)), ("head", rng.uniform(0.5, 3)))}
    act = {k: {"none": a, "selective": a * 0.6, "full": a * 0.1}
           for k, a in (("embedding", 1e8), ("dense", rng.uniform(1e9, 3e9)), ("moe", rng.uniform(1e9, 4e9)),
                        ("head", rng.uniform(1e9, 2e9)))}
    static = {k: rng.uniform(1e9, 4e9) for k in time_s}
    budget = rng.uniform(6e9, 20e9)
    return stages.PartitionProblem(layer_kinds=kinds, time_s=time_s, act_bytes=act, static_bytes=static,
                                   p2p_s=0.01, pp=pp, vpp=vpp, num_micro_batches=rng.randint(2, 6),
                                   budget_bytes=budget)


@pytest.mark.parametrize("seed", range(12))
def test_stage_partition_cp_sat_equals_exhaustive(seed):
    rng = random.Random(seed)
    pp, vpp = rng.choice([(2, 1), (3, 1), (2, 2)])
    problem = _random_problem(rng, pp, vpp)
    try:
        reference = stages.solve_exhaustive(problem)
    except stages.InfeasiblePartition:
        with pytest.raises(stages.InfeasiblePartition):
            stages.solve_partition(problem, time_limit_s=60)
        return
    fast = stages.solve_partition(problem, time_limit_s=60)  # optimality, not the planner's 2 s budget
    assert fast.objective_s == pytest.approx(reference.objective_s, rel=1e-9)


def test_stage_partition_moves_layers_off_the_heavy_head_stage():
    kinds = ("embedding",) + ("dense",) * 8 + ("head",)
    problem = stages.PartitionProblem(
        layer_kinds=kinds, time_s={"embedding": dict.fromkeys(("none", "selective", "full"), 0.1),
                                   "dense": {"none": 1.0, "selective": 1.1, "full": 1.3},
                                   "head": dict.fromkeys(("none", "selective", "full"), 3.0)},
        act_bytes={k: dict.fromkeys(("none", "selective", "full"), 1.0) for k in ("embedding", "dense", "head")},
        static_bytes={"embedding": 1.0, "dense": 1.0, "head": 1.0}, p2p_s=0.0, pp=2, vpp=1,
        num_micro_batches=8, budget_bytes=1e12)
    result = stages.solve_partition(problem)
    first, second = result.stages
    assert first.last_layer - first.first_layer > second.last_layer - second.first_layer
    assert set(first.recompute) == {"none"}
