"""Emit: a solved layout -> Paddle auto-parallel config and PaddleFormers training arguments.

The per-op strategies of model (a) become per-parameter placements and the
`parallelize_plan` of `dist.parallelize`; the stage partition of model (b)
becomes the pipeline split points. Layer-name patterns come from the trace
(PaddleFormers names); the runtime checks that every one matches a layer.
"""

from __future__ import annotations

from planner.plan import Layout, Stage
from planner.trace.graph import OpGraph

RECOMPUTE_GRANULARITY = {"selective": "core_attn", "full": "full"}  # PaddleFormers recompute_granularity


def placements(graph: OpGraph, shardings: dict, layout: Layout) -> dict:
    """Parameter name pattern -> {mesh axis: placement}; axes not named are replicated."""
    out: dict = {}
    for kind, sharding in sorted(shardings.items()):
        for op in graph.blocks[kind].ops():
            if not op.params:
                continue
            strategy = sharding.choice[op.name]
            axes: dict = {}
            if op.op_type == "expert_linear":
                axes["ep"] = "Shard(0)"  # the stacked expert dim, over the expert-parallel ranks of dp
            if strategy.weight_dim is not None:
                dim = strategy.weight_dim + (1 if op.op_type == "expert_linear" else 0)
                axes["mp"] = f"Shard({dim})"
            if layout.sharding_stage == 3:
                axes["dp"] = "Shard(0)"
            name = f"{op.layer_pattern}.weight"
            if axes or name not in out:
                out[name] = axes
    return dict(sorted(out.items()))


def parallelize_plan(graph: OpGraph, shardings: dict, layout: Layout) -> dict:
    """Layer name pattern -> Paddle parallel style (`dist.ColWiseParallel` etc.) for the mp axis."""
    if layout.mp == 1:
        return {}
    plan: dict = {}
    for kind, sharding in sorted(shardings.items()):
        block = graph.blocks[kind]
        for op in block.ops():
            strategy = sharding.choice[op.name]
            if not strategy.paddle_style:
                continue
            style = {"style": strategy.paddle_style}
            if strategy.paddle_style == "ColWiseParallel" and (op.op_type == "embedding" or op.name == "lm_head"):
                consumer_layouts = [sharding.choice[v].in_layouts[block.graph.edges[op.name, v]["port"]]
                                    for v in block.graph.successors(op.name)]
                style["gather_output"] = not consumer_layouts or all(lay == "R" for lay in consumer_layouts)
            plan[op.layer_pattern] = style
    if layout.sequence_parallel:
        for pattern in sorted(_sequence_parallel_norms(graph, shardings)):
            plan[pattern] = {"style": "SequenceParallelEnable"}
    return dict(sorted(plan.items()))


def _sequence_parallel_norms(graph: OpGraph, shardings: dict) -> set[str]:
    out = set()
    for kind, sharding in shardings.items():
        for op in graph.blocks[kind].ops():
            if op.op_type == "norm" and sharding.choice[op.name].out_layout == "S":
                out.add(op.layer_pattern)
    return out


def split_points(stages: tuple[Stage, ...], num_layers: int) -> dict:
    """Pipeline split: the last layer of every chunk but the final one -> "END".

    Layer 0 is the embedding (model.embed_tokens), layers 1..L the decoder layers.
    """
    out = {}
    for stage in stages[:-1]:
        name = "model.embed_tokens" if stage.last_layer == 0 else \
            f"model.layers.{min(stage.last_layer - 1, num_layers - 1)}"
        out[name] = "END"
    return out


def paddle_config(graph: OpGraph, shardings: dict, layout: Layout, stages: tuple[Stage, ...],
                  num_layers: int) -> dict:
    """The `config` argument of `dist.parallelize`."""
    config: dict = {"dp_config": {"sharding_level": layout.sharding_stage}}
    mp_plan = parallelize_plan(graph, shardings, layout)
    if mp_plan:
        config["mp_config"] = {"parallelize_plan": mp_plan}
    if layout.pp > 1:
        config["pp_config"] = {"split_spec": split_points(stages, num_layers),
                               "schedule_mode": "VPP" if layout.vpp > 1 else "1F1B",
                               "vpp_degree": layout.vpp}
    return config


def training_args(layout: Layout, seq_len: int, dtype: str, stages: tuple[Stage, ...]) -> dict:
    """PaddleFormers TrainingArguments fields the layout implies."""
    modes = {m for s in stages for m in s.recompute}
    recompute = sorted(modes - {"none"}, key=("selective", "full").index)
    args = {
        "tensor_parallel_degree": layout.mp,
        "pipeline_parallel_degree": layout.pp,
        "virtual_pp_degree": layout.vpp,
        "sep_parallel_degree": layout.cp,
        "expert_parallel_degree": layout.ep,
        "sharding_parallel_degree": layout.dp if layout.sharding_stage else 1,
        "sharding": f"stage{layout.sharding_stage}" if layout.sharding_stage else "",
        "data_parallel_degree": 1 if layout.sharding_stage else layout.dp,
        "sequence_parallel": layout.sequence_parallel,
        "per_device_train_batch_size": layout.micro_batch_size,
        "gradient_accumulation_steps": layout.num_micro_batches,
        "max_seq_length": seq_len,
        "recompute": bool(recompute),
        "bf16": dtype in ("bf16", "fp8"),
        "fp16": dtype == "fp16",
        "fp16_opt_level": "O2",
        "amp_master_grad": True,
    }
    if recompute:
        args["recompute_granularity"] = RECOMPUTE_GRANULARITY[recompute[-1]]
        full = sum(m == "full" for s in stages for m in s.recompute)
        if "full" in modes:
            args["recompute_num_layers"] = full
    if layout.pp > 1:
        args["pipeline_parallel_config"] = "enable_interleave" if layout.vpp > 1 else ""
    return args


def sharding_summary(shardings: dict) -> dict:
    """Block kind -> op name -> strategy name (for the report and the plan file)."""
    return {kind: {name: s.name for name, s in sorted(sh.choice.items())} for kind, sh in sorted(shardings.items())}
