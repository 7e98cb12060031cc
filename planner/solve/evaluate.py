"""Evaluate a layout: per-layer costs, per-stage memory and the step time of a pipeline schedule.

Everything here is a pure function of (op graph, block shardings, layout,
workload, hardware). Per decoder layer and micro-batch:
  forward  = sum of sharded op times + mp / ep collectives + exposed ring-attention p2p (cp)
  backward = the same with backward FLOPs (2x GEMMs, 2.5x attention; frozen weights skip
             their weight gradients)
  recompute: selective re-runs the cheap ops (norms, rope, activations) whose outputs
             were dropped; full re-runs the whole forward.
Pipeline (1F1B; interleaved with vpp chunks), with T_s the time of stage s per micro-batch:
  step = m max_s T_s + (sum_s T_s - max_s T_s) / vpp + exposed gradient sync + optimizer
Gradient sync (dp x cp ranks; expert weights over dp x cp / ep) overlaps the backward
pass with the calibrated factor dp_overlap: exposed = max((1 - o) t, t - o W).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cost_models.collectives import CommGroup, collective_time_s
from cost_models.compute import MATMUL_OPS, UNFUSED_TRAFFIC_FACTOR, op_time_s, optimizer_step_s
from cost_models.hardware import HardwareSpec
from cost_models.memory import StateBytes, pipeline_in_flight, state_bytes
from planner.plan import Layout
from planner.solve.costing import Groups, collective_s, op_compute_s
from planner.solve.intra_op import BlockSharding
from planner.strategies.sharding import layout_divisor, tensor_bytes
from planner.trace.graph import MATMUL_OP_TYPES, Block, OpGraph
from planner.workload import Workload

CHEAP_OPS = ("norm", "rope")  # recomputed under selective recompute, with activation functions
EXPERT_OPS = ("expert_linear",)
WEIGHT_GATHER_BYTES = 2  # ZeRO-3 gathers bf16 weights


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    """Communication groups of a layout on a cluster (mesh order pp, dp, sep, mp: mp innermost)."""

    groups: Groups
    cp: CommGroup
    dp: CommGroup  # gradient sync of dense weights: dp x cp ranks
    expert_dp: CommGroup  # gradient sync of expert weights: dp x cp / ep ranks
    pp_p2p: CommGroup

    @classmethod
    def of(cls, layout: Layout, devices_per_node: int) -> "Topology":
        mp, cp, dp, ep = layout.mp, layout.cp, layout.dp, layout.ep
        n = devices_per_node
        groups = Groups(mp=CommGroup.for_axis(mp, 1, n), ep=CommGroup.for_axis(ep, mp * cp, n),
                        ep_mp=CommGroup.for_axis(ep * mp, 1, n))
        crosses = mp * cp * dp >= n and layout.pp > 1
        return cls(groups=groups, cp=CommGroup.for_axis(cp, mp, n), dp=CommGroup.for_axis(dp * cp, mp, n),
                   expert_dp=CommGroup.for_axis(dp * cp // ep, mp * ep, n),
                   pp_p2p=CommGroup(size=2, local_size=1 if crosses else 2))


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerCost:
    """One layer of one block kind, per micro-batch, on one device."""

    fwd_s: float
    bwd_s: float
    recompute_s: dict  # mode -> extra forward seconds
    comm_s: dict  # "mp", "ep", "cp" -> seconds inside fwd_s + bwd_s
    act_bytes: dict  # mode -> activation bytes kept per micro-batch
    transient_bytes: float  # full activations of this layer (held while it is recomputed)
    boundary_bytes: float  # the layer's output (pipeline p2p message)
    dense_params: float  # per device, of ops replicated over dp x cp
    expert_params: float  # per device, of expert ops (replicated over dp x cp / ep)
    trainable_fraction: float  # 1, or the LoRA adapters' share
    recompute_flops: dict  # mode -> GEMM and attention FLOPs re-run per sequence (layout-independent)


def _gemm_dtype(op_type: str, workload: Workload) -> str:
    return "fp8" if workload.dtype == "fp8" and op_type in ("linear", "expert_linear") else workload.compute_dtype


def selective_recompute_ops(block: Block) -> frozenset[str]:
    """Ops whose outputs selective recompute drops and re-runs (torchtitan's op-level policy).

    Norms, rope and activation functions, and every second GEMM in block order;
    attention outputs, the other GEMMs' outputs and the residual stream are kept.
    """
    graph, dropped, gemms = block.graph, set(), 0
    for v in block.order:
        op = graph.nodes[v]["op"]
        if op.op_type in ("linear", "expert_linear"):
            gemms += 1
            if gemms % 2 == 0:
                dropped.add(v)
        elif _is_cheap(op) and v != block.input_node:
            dropped.add(v)
    return frozenset(dropped)


def _saved_tensors(block: Block, mode: str) -> tuple[set[str], set[str]]:
    """(producers whose output is kept for backward, producers re-run in backward) under `mode`."""
    graph = block.graph
    if mode == "full":
        return {block.input_node}, set(block.order) - {block.input_node}
    needed = {u for u, v in graph.edges if graph.nodes[v]["op"].saves_input}
    if mode == "none":
        return needed, set()
    droppable = selective_recompute_ops(block)
    kept, rerun = set(), set()
    frontier = sorted(needed)
    while frontier:  # a dropped tensor is re-made from its producer's inputs, kept or re-made in turn
        u = frontier.pop()
        if u in droppable:
            if u not in rerun:
                rerun.add(u)
                frontier.extend(sorted(graph.predecessors(u)))
        else:
            kept.add(u)
    return kept, rerun


def _is_cheap(op) -> bool:
    return op.op_type in CHEAP_OPS or (op.op_type == "elementwise" and op.saves_input)


def _unfused_attention_s(op, strategy, micro_batch: int, cp: int, hw: HardwareSpec, dtype: str,
                         phase: str) -> tuple[float, float]:
    """(time, saved bytes) of attention without FlashAttention: the s x s scores go through HBM.

    Forward writes the scores, softmax reads and writes them, dropout reads them and writes its
    output and a 1-byte mask, and the AV product reads them: ~11 bytes per score; backward ~2x.
    The softmax output, dropout mask and dropout output stay for backward: 5 bytes per score
    (Korthikanti et al. 2022). The GEMMs run at GEMM efficiency over the full (unmasked) square.
    """
    s = op.in_shapes[0][1]
    scores = op.heads * s * (s / cp) * micro_batch / (strategy.work_divisor * cp)
    flops = (op.fwd_flops if phase == "fwd" else op.bwd_flops) * micro_batch / (strategy.work_divisor * cp)
    traffic = 11.0 * scores * (1 if phase == "fwd" else 2)
    return op_time_s("linear", flops, traffic, hw, dtype, kernels=4 if phase == "fwd" else 8), 5.0 * scores


def layer_cost(block: Block, sharding: BlockSharding, *, micro_batch: int, layout: Layout, workload: Workload,
               hw: HardwareSpec, topo: Topology) -> LayerCost:
    """Costs of one layer of `block` under its sharding, for `micro_batch` sequences per device."""
    graph, choice, cp, mp = block.graph, sharding.choice, layout.cp, layout.mp
    frozen = workload.mode == "lora"
    fwd = bwd = 0.0
    dense_params = expert_params = lora_params = 0.0
    extras = 0.0
    op_fwd: dict[str, float] = {}
    for v in block.order:
        op, strategy = graph.nodes[v]["op"], choice[v]
        dtype = _gemm_dtype(op.op_type, workload)
        if op.op_type == "attention" and not workload.flash_attention:
            t_fwd, scores = _unfused_attention_s(op, strategy, micro_batch, cp, hw, dtype, "fwd")
            t_bwd, _ = _unfused_attention_s(op, strategy, micro_batch, cp, hw, dtype, "bwd")
            extras += scores
        else:
            t_fwd = op_compute_s(op, strategy, micro_batch, hw, dtype, "fwd", cp)
            t_bwd = op_compute_s(op, strategy, micro_batch, hw, dtype, "bwd", cp)
        if frozen and op.op_type in MATMUL_OPS:
            t_bwd *= 0.5  # no weight gradients for frozen weights
        if not workload.fused_kernels and op.op_type in ("norm", "rope", "elementwise"):
            t_fwd, t_bwd = t_fwd * UNFUSED_TRAFFIC_FACTOR, t_bwd * UNFUSED_TRAFFIC_FACTOR
        fwd, bwd = fwd + t_fwd, bwd + t_bwd
        op_fwd[v] = t_fwd
        local = op.params / strategy.param_divisor
        if op.op_type in EXPERT_OPS:
            expert_params += local
        else:
            dense_params += local
        if op.op_type == "linear" and op.params:
            lora_params += workload.lora_rank * (op.weight_shape[0] + op.weight_shape[1]) / strategy.param_divisor
        extras += op.saved_extra_bytes * micro_batch / (strategy.work_divisor * cp)
    comm = {"mp": 0.0, "ep": 0.0, "cp": 0.0}
    # tensor-parallel collectives overlapped with the GEMMs around them, where the stack does that
    hidden = hw.calibration.mp_overlap if workload.tp_comm_overlap else 0.0
    for c in sharding.collectives(block):
        t = collective_s(c, topo.groups, hw, micro_batch)
        if c.group == "mp":
            t *= 1 - hidden
        comm["ep" if c.group != "mp" else "mp"] += t
        if c.phase == "fwd":
            fwd += t
        else:
            bwd += t
    ring_fwd, ring_bwd = _ring_attention_s(block, sharding, micro_batch, layout, hw, topo, workload)
    comm["cp"] = ring_fwd + ring_bwd
    fwd, bwd = fwd + ring_fwd, bwd + ring_bwd
    act, recompute, recompute_flops = {}, {}, {}
    for mode in ("none", "selective", "full"):
        kept, rerun = _saved_tensors(block, mode)
        act[mode] = _activation_bytes(block, sharding, kept, micro_batch, mp, cp)
        recompute[mode] = fwd if mode == "full" else sum(op_fwd[v] for v in rerun)
        recompute_flops[mode] = sum(graph.nodes[v]["op"].fwd_flops for v in rerun
                                    if graph.nodes[v]["op"].op_type in MATMUL_OP_TYPES)
    act["none"] += extras
    act["selective"] += extras
    if block.kind in ("head", "mtp"):  # the loss keeps fp32 softmax stats even under full recompute
        act["full"] += extras
    # pipeline messages are split over the mp ranks (Megatron's scatter/gather; inherent under sequence
    # parallelism): each rank sends 1/mp over its own link, and the rest is gathered inside the node
    out_op = graph.nodes[block.output_node]["op"]
    boundary = tensor_bytes(out_op.out_shape) * micro_batch / cp / mp
    trainable_fraction = 1.0
    if frozen:
        total = dense_params + expert_params
        trainable_fraction = lora_params / total if total else 0.0
    return LayerCost(
        fwd_s=fwd, bwd_s=bwd, recompute_s=recompute, comm_s=comm, act_bytes=act, transient_bytes=act["none"],
        boundary_bytes=boundary, dense_params=dense_params, expert_params=expert_params,
        trainable_fraction=trainable_fraction, recompute_flops=recompute_flops)


def model_flops_per_sequence(graph: OpGraph) -> float:
    """Model FLOPs of one sequence, forward and backward: 3x the forward GEMM and attention FLOPs, no recompute."""
    return sum(3 * block.count * block.matmul_fwd_flops for block in graph.blocks.values())


def _activation_bytes(block: Block, sharding: BlockSharding, kept: set[str], micro_batch: int, mp: int,
                      cp: int) -> float:
    total = 0.0
    for u in kept:
        op = block.graph.nodes[u]["op"]
        total += tensor_bytes(op.out_shape) / layout_divisor(sharding.choice[u].out_layout, mp)
    return total * micro_batch / cp


def _ring_attention_s(block: Block, sharding: BlockSharding, micro_batch: int, layout: Layout, hw: HardwareSpec,
                      topo: Topology, workload: Workload) -> tuple[float, float]:
    """Exposed time of ring attention's K/V exchange over the cp group, forward and backward."""
    if layout.cp == 1:
        return 0.0, 0.0
    fwd = bwd = 0.0
    for v in block.graph.nodes:
        op = block.graph.nodes[v]["op"]
        if op.op_type != "attention":
            continue
        strategy = sharding.choice[v]
        if len(op.in_shapes) == 3:
            kv_full = sum(tensor_bytes(s) for s in op.in_shapes[1:])
        else:  # fused qkv: the k and v heads' share of it
            kv_full = tensor_bytes(op.in_shapes[0]) * 2 * op.kv_heads / (op.heads + 2 * op.kv_heads)
        kv = kv_full * micro_batch / layout.cp / strategy.work_divisor
        step = collective_time_s("p2p", kv, topo.cp, hw)
        compute_fwd = op_compute_s(op, strategy, micro_batch, hw, workload.compute_dtype, "fwd", layout.cp)
        compute_bwd = op_compute_s(op, strategy, micro_batch, hw, workload.compute_dtype, "bwd", layout.cp)
        fwd += max(0.0, (layout.cp - 1) * step - compute_fwd)
        bwd += max(0.0, 2 * (layout.cp - 1) * step - compute_bwd)
    return fwd, bwd


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCost:
    """One device stage: its time per micro-batch and memory."""

    time_s: float
    memory: dict  # part -> bytes
    fits: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Estimate:
    """Predicted step of a layout with a given stage partition."""

    layout: Layout
    step_time_s: float
    breakdown_s: dict
    stages: tuple[StageCost, ...]
    model_flops_per_step: float  # all devices
    hardware_flops_per_step: float
    tokens_per_step: int
    num_devices: int
    peak_flops: float
    fits: bool
    notes: tuple[str, ...] = field(default=())

    @property
    def memory(self) -> dict:
        """Memory parts of the fullest stage."""
        return max(self.stages, key=lambda s: s.memory["total"]).memory

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_time_s

    @property
    def mfu(self) -> float:
        return self.model_flops_per_step / self.step_time_s / (self.num_devices * self.peak_flops)

    def tflops_per_device(self, hardware: bool = False) -> float:
        flops = self.hardware_flops_per_step if hardware else self.model_flops_per_step
        return flops / self.step_time_s / self.num_devices / 1e12


def layer_state_bytes(cost: LayerCost, *, layout: Layout, workload: Workload, topo: Topology) -> StateBytes:
    """Parameters, gradients and optimizer state of one layer on one device."""
    lora = workload.mode == "lora"
    trainable = cost.dense_params * cost.trainable_fraction
    state = state_bytes(trainable, cost.dense_params - trainable, layout.sharding_stage, topo.dp.size)
    if cost.expert_params:
        expert_trainable = 0.0 if lora else cost.expert_params
        state = state + state_bytes(expert_trainable, cost.expert_params - expert_trainable, layout.sharding_stage,
                                    topo.expert_dp.size)
    if workload.mode == "dpo":  # the frozen reference model: split over mp/ep like the policy, whole over dp
        state = state + state_bytes(0.0, cost.dense_params + cost.expert_params, 0, 1)
    return state


def step_time(stage_times: list[float], layout: Layout) -> tuple[float, float]:
    """(pipeline time, bubble) of one step from per-stage times per micro-batch."""
    m, v = layout.num_micro_batches, layout.vpp
    t_max, t_sum = max(stage_times), sum(stage_times)
    pipeline = m * t_max + (t_sum - t_max) / v
    bubble = pipeline - m * t_sum / len(stage_times)
    return pipeline, bubble


def gradient_sync_s(dense_params: float, expert_params: float, *, layout: Layout, workload: Workload,
                    hw: HardwareSpec, topo: Topology, trainable_fraction: float) -> float:
    """Gradient synchronisation (and ZeRO parameter gathers) of one stage per step, before overlap."""
    grad_bytes = 2.0 * trainable_fraction  # bf16 gradients on the wire
    total = 0.0
    for params, group in ((dense_params, topo.dp), (expert_params, topo.expert_dp)):
        if not params or group.size == 1:
            continue
        if layout.sharding_stage == 0:
            total += collective_time_s("all_reduce", params * grad_bytes, group, hw)
        elif layout.sharding_stage in (1, 2):
            total += collective_time_s("reduce_scatter", params * grad_bytes, group, hw)
            total += collective_time_s("all_gather", params * 2.0, group, hw) if trainable_fraction else 0.0
        else:  # stage 3: gather weights for forward and backward, reduce-scatter gradients, every micro-batch
            gathered = 1.0 if workload.dtype == "fp8" else WEIGHT_GATHER_BYTES  # FP8 training gathers FP8 weights
            per_mb = (2 * collective_time_s("all_gather", params * gathered, group, hw)
                      + collective_time_s("reduce_scatter", params * grad_bytes, group, hw))
            total += per_mb * layout.num_micro_batches
    return total


@dataclass(frozen=True, slots=True, kw_only=True)
class _StageProfile:
    """What a device stage's layers cost, before its in-flight micro-batches are known."""

    time_s: float
    compute_s: float
    recompute_s: float
    p2p_s: float
    comm_s: dict
    state: StateBytes
    act_bytes: float  # per in-flight micro-batch (all the stage's layers)
    transient_bytes: float
    sync_exposed_s: float
    optimizer_s: float


def _stage_profile(layers: list[tuple[LayerCost, str, int]], *, layout: Layout, workload: Workload,
                   hw: HardwareSpec, topo: Topology) -> _StageProfile:
    m, overlap = layout.num_micro_batches, hw.calibration.dp_overlap
    p2p = 0.0
    if layout.pp > 1:
        boundary = max(c.boundary_bytes for c, _, _ in layers)
        p2p = 2 * layout.vpp * collective_time_s("p2p", boundary, topo.pp_p2p, hw)
    compute = sum((c.fwd_s + c.bwd_s) * n for c, _, n in layers)
    if workload.mode == "dpo":  # the frozen reference model's forward
        compute += sum(c.fwd_s * n for c, _, n in layers)
    recompute = sum(c.recompute_s[mode] * n for c, mode, n in layers)
    state = StateBytes(params=0.0, grads=0.0, optimizer=0.0)
    for cost, _, n in layers:
        state = state + layer_state_bytes(cost, layout=layout, workload=workload, topo=topo).scaled(n)
    transient = max((c.transient_bytes for c, mode, _ in layers if mode != "none"), default=0.0)
    if layout.sharding_stage == 3:  # gathered weights of the layer in use and the prefetched next one
        transient += 2 * WEIGHT_GATHER_BYTES * max(c.dense_params + c.expert_params for c, _, _ in layers)
    dense = sum(c.dense_params * n for c, _, n in layers)
    expert = sum(c.expert_params * n for c, _, n in layers)
    fraction = layers[0][0].trainable_fraction
    sync = gradient_sync_s(dense, expert, layout=layout, workload=workload, hw=hw, topo=topo,
                           trainable_fraction=fraction)
    window = sum(c.bwd_s * n for c, _, n in layers) * (m if layout.sharding_stage == 3 else 1)
    trainable = dense * fraction + (0.0 if workload.mode == "lora" else expert)
    shards = topo.dp.size if layout.sharding_stage >= 1 else 1
    return _StageProfile(
        time_s=compute + recompute + p2p, compute_s=compute, recompute_s=recompute, p2p_s=p2p,
        comm_s={k: sum(c.comm_s[k] * n for c, _, n in layers) for k in ("mp", "ep", "cp")}, state=state,
        act_bytes=sum(c.act_bytes[mode] * n for c, mode, n in layers), transient_bytes=transient,
        sync_exposed_s=max((1 - overlap) * sync, sync - overlap * window),
        optimizer_s=optimizer_step_s(trainable / shards, hw))


def estimate(graph: OpGraph, costs: dict, assignment: list[dict], *, layout: Layout, workload: Workload,
             hw: HardwareSpec, topo: Topology) -> Estimate:
    """Step time and memory of `layout`; `assignment[s]` maps (block kind, recompute mode) -> layers on stage s.

    `costs`: block kind -> LayerCost at the layout's micro-batch size.
    """
    m = layout.num_micro_batches
    breakdown = dict.fromkeys(("compute", "recompute", "mp_comm", "ep_comm", "cp_comm", "pp_comm", "bubble",
                               "dp_comm", "optimizer"), 0.0)
    profiles: dict = {}
    stage_costs = []
    share = m / len(assignment)  # the breakdown shows the average stage; the bubble is the rest
    for s, counts in enumerate(assignment):
        key = tuple(sorted((k, n) for k, n in counts.items() if n))
        if key not in profiles:
            layers = [(costs[kind], mode, n) for (kind, mode), n in key]
            profiles[key] = _stage_profile(layers, layout=layout, workload=workload, hw=hw, topo=topo)
        p = profiles[key]
        memory = {"params": p.state.params, "grads": p.state.grads, "optimizer": p.state.optimizer,
                  "activations": pipeline_in_flight(s, layout.pp, m, layout.vpp) * p.act_bytes,
                  "transient": p.transient_bytes, "reserve": float(hw.calibration.runtime_reserve_bytes)}
        memory["total"] = sum(memory.values())
        stage_costs.append(StageCost(time_s=p.time_s, memory=memory, fits=memory["total"] <= hw.memory_bytes))
        breakdown["compute"] += share * (p.compute_s - sum(p.comm_s.values()))
        breakdown["recompute"] += share * p.recompute_s
        breakdown["pp_comm"] += share * p.p2p_s
        for k, t in p.comm_s.items():
            breakdown[f"{k}_comm"] += share * t
        breakdown["dp_comm"] = max(breakdown["dp_comm"], p.sync_exposed_s)
        breakdown["optimizer"] = max(breakdown["optimizer"], p.optimizer_s)
    pipeline, breakdown["bubble"] = step_time([c.time_s for c in stage_costs], layout)
    model_flops_step = model_flops_per_sequence(graph) * workload.global_batch
    extra = sum(costs[kind].recompute_flops[mode] * n for counts in assignment for (kind, mode), n in counts.items())
    if workload.mode == "dpo":  # the reference forward is hardware work, not model FLOPs
        extra += model_flops_per_sequence(graph) / 3
    return Estimate(layout=layout, step_time_s=pipeline + breakdown["dp_comm"] + breakdown["optimizer"],
                    breakdown_s=breakdown, stages=tuple(stage_costs), model_flops_per_step=model_flops_step,
                    hardware_flops_per_step=model_flops_step + extra * workload.global_batch,
                    tokens_per_step=workload.tokens_per_step, num_devices=layout.num_devices,
                    peak_flops=hw.peak(workload.compute_dtype), fits=all(s.fits for s in stage_costs))
