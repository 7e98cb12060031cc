"""The planner's library entry: model + devices (+ workload, + fixed knobs) -> (Plan, PlanReport)."""

from __future__ import annotations

from dataclasses import dataclass

from cost_models.hardware import ClusterSpec, parse_devices
from planner.emit.paddle import paddle_config, parallelize_plan, placements, sharding_summary, training_args
from planner.frontends import ModelSpec, load_model
from planner.plan import Plan, PlanReport, SolverStats
from planner.trace.graph import OpGraph
from planner.solve.search import NoFeasibleLayout, Planner, SearchResult, Solution, parse_layout
from planner.workload import Workload

BREAKDOWN_LABELS = {"compute": "compute", "recompute": "recompute", "mp_comm": "mp communication",
                    "ep_comm": "expert all-to-all", "cp_comm": "context-parallel p2p",
                    "pp_comm": "pipeline p2p", "bubble": "pipeline bubble", "dp_comm": "gradient sync (exposed)",
                    "optimizer": "optimizer step"}


class DoesNotFit(ValueError):
    """Nothing fits: how far the least-overflowing layout is over, and the smallest count that fits."""

    def __init__(self, message: str, overflow_bytes: float, smallest_devices: int | None) -> None:
        super().__init__(message)
        self.overflow_bytes = overflow_bytes
        self.smallest_devices = smallest_devices


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """A planning request, resolved: model, cluster, workload and fixed layout knobs."""

    spec: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    fixed: dict
    graph: OpGraph | None = None  # a traced graph replacing the analytic trace of spec


def resolve(model: str | ModelSpec, devices: str | ClusterSpec, *, seq_len: int | None = None,
            global_batch: int | None = None, global_batch_tokens: int | None = None, layout: str | None = None,
            mode: str = "pretrain", dtype: str | None = None, lora_rank: int = 8,
            graph: OpGraph | None = None) -> Request:
    """Validate and complete the inputs of a plan (defaults from the model preset and the device)."""
    spec = load_model(model) if isinstance(model, str) else model
    cluster = parse_devices(devices) if isinstance(devices, str) else devices
    seq = seq_len or min(spec.default_seq_len, spec.max_position_embeddings)
    if global_batch is not None and global_batch_tokens is not None:
        raise ValueError("give either --global-batch (sequences) or --global-batch-tokens, not both")
    if global_batch is None:
        tokens = global_batch_tokens or spec.default_global_batch_tokens
        global_batch = max(1, tokens // seq)
    workload = Workload(seq_len=seq, global_batch=global_batch, dtype=dtype or cluster.hardware.default_dtype(),
                        mode=mode, lora_rank=lora_rank)
    cluster.hardware.peak(workload.compute_dtype)  # the device must support the precision
    return Request(spec=spec, cluster=cluster, workload=workload, fixed=parse_layout(layout) if layout else {},
                   graph=graph)


def make_plan(model: str | ModelSpec, devices: str | ClusterSpec, *, seq_len: int | None = None,
              global_batch: int | None = None, global_batch_tokens: int | None = None, layout: str | None = None,
              mode: str = "pretrain", dtype: str | None = None, lora_rank: int = 8,
              graph: OpGraph | None = None, planner: Planner | None = None) -> tuple[Plan, PlanReport]:
    """The best plan (or the given `layout`, with unset knobs searched) for `model` on `devices`.

    Raises ValueError for bad inputs and DoesNotFit when no layout fits.
    """
    request = resolve(model, devices, seq_len=seq_len, global_batch=global_batch,
                      global_batch_tokens=global_batch_tokens, layout=layout, mode=mode, dtype=dtype,
                      lora_rank=lora_rank, graph=graph)
    return plan_request(request, planner=planner)


def plan_request(request: Request, *, planner: Planner | None = None) -> tuple[Plan, PlanReport]:
    if planner is None or planner.spec != request.spec or planner.workload != request.workload:
        planner = Planner(spec=request.spec, workload=request.workload, graph=request.graph)
    try:
        result = planner.search(request.cluster, request.fixed)
    except NoFeasibleLayout as error:
        raise _does_not_fit(planner, request, error) from None
    return build_plan(result, request, method="layout" if request.fixed else "search")


def _does_not_fit(planner: Planner, request: Request, error: NoFeasibleLayout) -> DoesNotFit:
    hw, n = request.cluster.hardware, request.cluster.num_devices
    overflow = error.best.memory["total"] - hw.memory_bytes if error.best else float("nan")
    smallest = smallest_fitting_devices(planner, request)
    where = f"the least-overflowing layout ({error.best.layout.short()}) needs " \
            f"{error.best.memory['total'] / 2**30:.1f} GiB per device, {overflow / 2**30:.1f} GiB over the " \
            f"{hw.memory_bytes / 2**30:.1f} GiB of a {hw.name}" if error.best else "no layout divides the cluster"
    hint = (f"; the smallest count of {hw.name} that fits is {smallest}" if smallest
            else f"; no count of {hw.name} up to {n * 2 ** 12} fits")
    return DoesNotFit(f"{request.spec.name} does not fit on {n}x{hw.name}: {where}{hint}", overflow, smallest)


def smallest_fitting_devices(planner: Planner, request: Request, *, max_doublings: int = 12) -> int | None:
    """The smallest power-of-two multiple of the requested count (whole nodes) on which some layout fits."""
    hw = request.cluster.hardware
    count = request.cluster.num_devices
    for _ in range(max_doublings):
        count *= 2
        free = {k: v for k, v in request.fixed.items() if k not in ("dp", "pp", "mp", "ep", "cp")}
        if planner.fits(ClusterSpec(hardware=hw, num_devices=count), free):
            return count
    return None


def _why_lost(best: Solution, other: Solution) -> str:
    a, b = best.estimate.breakdown_s, other.estimate.breakdown_s
    diffs = sorted(((b[k] - a[k], k) for k in a), reverse=True)
    worse = [f"+{d:.3g} s {BREAKDOWN_LABELS[k]}" for d, k in diffs[:2] if d > 1e-6]
    return ", ".join(worse) or "equal step time, later in the deterministic order"


def build_plan(result: SearchResult, request: Request, *, method: str) -> tuple[Plan, PlanReport]:
    """Plan and PlanReport of the search's best solution."""
    best, spec, hw = result.best, request.spec, request.cluster.hardware
    layout, stages, est = best.candidate.layout, best.partition.stages, best.estimate
    graph = result.graph
    config = paddle_config(graph, best.shardings, layout, stages, spec.num_layers)
    plan = Plan(
        model_name=spec.name, model_config=spec.to_dict(), params=int(graph.count_params()),
        active_params=int(graph.count_params(active=True)), device=hw.name,
        num_devices=request.cluster.num_devices, devices_per_node=request.cluster.devices_per_node,
        seq_len=request.workload.seq_len, mode=request.workload.mode, dtype=request.workload.dtype,
        layout=layout, stages=stages, placements=placements(graph, best.shardings, layout),
        parallelize_plan=parallelize_plan(graph, best.shardings, layout), paddle_config=config,
        training_args=training_args(layout, request.workload.seq_len, request.workload.dtype, stages),
        unverified_hardware=hw.unverified)
    alternatives = tuple(
        {"layout": alt.candidate.layout.short(), "step_time_s": alt.estimate.step_time_s, "mfu": alt.estimate.mfu,
         "memory_bytes_per_device": alt.estimate.memory["total"], "why_slower": _why_lost(best, alt)}
        for alt in result.alternatives)
    notes = []
    if hw.unverified:
        notes.append(f"{hw.name}: relies on unverified hardware values ({', '.join(hw.unverified)}); "
                     f"see cost_models/hardware/{hw.name.lower()}.json")
    stats = result.stats
    solver = SolverStats(method=method, wall_s=stats.wall_s, candidates=stats.candidates,
                         pruned_memory=stats.pruned_memory, pruned_bound=stats.pruned_bound,
                         evaluated=stats.evaluated,
                         cp_sat=dict(stats.cp_sat, block_strategies=sharding_summary(best.shardings)))
    report = PlanReport(
        step_time_s=est.step_time_s, tokens_per_s=est.tokens_per_s,
        tokens_per_s_per_device=est.tokens_per_s / est.num_devices,
        model_tflops_per_device=est.tflops_per_device(), hardware_tflops_per_device=est.tflops_per_device(True),
        mfu=est.mfu, fits=est.fits, memory_bytes_per_device=est.memory, time_breakdown_s=est.breakdown_s,
        alternatives=alternatives, solver=solver, notes=tuple(notes))
    return plan, report
