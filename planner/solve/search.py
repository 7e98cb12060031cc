"""Outer search: enumerate layouts, prune by bounds, refine the best with the two CP-SAT models.

For a model, workload and cluster the search enumerates
  mp (dividing heads and kv heads, inside a node) x cp x pp x dp (the rest)
  x ep (dividing experts and dp x cp) x sharding stage x micro-batch size
  x vpp x sequence parallel x {time-optimal, parameter-lean} block shardings,
keeping the knobs a `--layout` string fixes. Each candidate is screened in
three steps of increasing cost:
  1. static memory: parameters, gradients and optimizer state alone over capacity -> pruned;
  2. lower bound: m x (forward + backward of all layers) / pp, no communication, no bubble,
     at least the incumbent -> pruned;
  3. quick estimate with layers split evenly and one recompute mode everywhere.
The best few distinct layouts are refined with model (b) (stage partition and
per-layer recompute, CP-SAT) on top of model (a) (per-op sharding, CP-SAT,
cached per block kind and mp/ep/sp/topology), and the best refined plan wins.
`exhaustive=True` refines every fitting candidate (the reference search).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from cost_models.collectives import collective_time_s
from cost_models.hardware import ClusterSpec, HardwareSpec
from planner.frontends.spec import ModelSpec
from planner.plan import RECOMPUTE_MODES, Layout, SolverStats
from planner.solve.costing import Groups
from planner.solve.evaluate import (
    Estimate, LayerCost, Topology, estimate, layer_cost, layer_state_bytes)
from planner.solve.intra_op import BlockSharding, least_parameter_bytes, parameter_bytes, solve_block
from planner.solve.stages import InfeasiblePartition, Partition, PartitionProblem, solve_partition, uniform_partition
from planner.strategies.sharding import ShardingContext
from planner.trace.analytic import trace_model
from planner.trace.graph import OpGraph
from planner.workload import Workload

LAYOUT_KEYS = ("dp", "mp", "pp", "ep", "cp", "sharding", "mbs", "vpp", "recompute", "sp")
MICRO_BATCH_SIZES = (1, 2, 4, 8, 16)
VIRTUAL_STAGES = (1, 2, 3, 4, 5, 6, 8)
REFINE_TOP = 4


class NoFeasibleLayout(ValueError):
    """Nothing fits: carries the least-overflowing estimate."""

    def __init__(self, message: str, best: Estimate | None) -> None:
        super().__init__(message)
        self.best = best


def parse_layout(text: str) -> dict:
    """`--layout "mp=8,pp=16,dp=16,sharding=1,mbs=1,vpp=1,recompute=full,sp=1"` -> fixed knobs."""
    fixed: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or key not in LAYOUT_KEYS:
            raise ValueError(f"layout item {item!r}: expected KEY=VALUE with KEY one of {', '.join(LAYOUT_KEYS)}")
        if key in fixed:
            raise ValueError(f"layout: {key} given twice")
        if key == "recompute":
            if value not in RECOMPUTE_MODES:
                raise ValueError(f"layout: recompute={value!r} is not one of {', '.join(RECOMPUTE_MODES)}")
            fixed[key] = value
            continue
        if not value.isdigit():
            raise ValueError(f"layout: {key}={value!r} must be a non-negative integer")
        number = int(value)
        if key == "sharding" and number > 3:
            raise ValueError(f"layout: sharding={number} is not one of 0, 1, 2, 3")
        if key == "sp" and number > 1:
            raise ValueError(f"layout: sp={number} must be 0 or 1")
        if key not in ("sharding", "sp") and number < 1:
            raise ValueError(f"layout: {key} must be >= 1, got {number}")
        fixed[key] = number
    return fixed


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    layout: Layout
    lean: bool  # parameter-lean block shardings


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    """A refined candidate: layout, block shardings, stage partition and its estimate."""

    candidate: Candidate
    shardings: dict  # block kind -> BlockSharding
    partition: Partition
    estimate: Estimate


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResult:
    best: Solution
    alternatives: tuple[Solution, ...]
    stats: SolverStats
    graph: OpGraph


@dataclass(slots=True)
class Planner:
    """Search state for one model and workload; its caches are reused across clusters (capacity sweeps)."""

    spec: ModelSpec
    workload: Workload
    graph: OpGraph | None = None  # a traced graph (planner.frontends.paddle); None: the analytic trace of spec
    _shardings: dict = field(init=False, default_factory=dict)
    _layer_costs: dict = field(init=False, default_factory=dict)
    _topologies: dict = field(init=False, default_factory=dict)
    _uniform: dict = field(init=False, default_factory=dict)
    _static: dict = field(init=False, default_factory=dict)
    _lean_differ: dict = field(init=False, default_factory=dict)
    _counts: dict = field(init=False, default_factory=dict)
    cp_sat_wall_s: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.graph is None:
            self.graph = trace_model(self.spec, self.workload.seq_len)
        elif self.graph.seq_len != self.workload.seq_len:
            raise ValueError(f"traced graph has seq_len {self.graph.seq_len}, workload {self.workload.seq_len}")

    # ---- block shardings (model a) and per-layer costs, cached -------------------------------

    def _block_kinds(self) -> list[str]:
        return sorted(k for k in self.graph.blocks if k != "mtp")

    def shardings(self, layout: Layout, lean: bool, topo: Topology, hw: HardwareSpec) -> dict:
        ctx = ShardingContext(mp=layout.mp, ep=layout.ep, sequence_parallel=layout.sequence_parallel)
        out = {}
        for kind in self._block_kinds():
            moe = kind == "moe"
            key = (kind, ctx if moe else ShardingContext(mp=ctx.mp, sequence_parallel=ctx.sequence_parallel),
                   topo.groups if moe else topo.groups.mp, lean, hw.name, self.workload.dtype)
            if key not in self._shardings:
                groups = topo.groups if moe else Groups(mp=topo.groups.mp, ep=topo.groups.mp, ep_mp=topo.groups.mp)
                block_ctx = key[1]
                block = self.graph.blocks[kind]
                result = solve_block(block, block_ctx, groups, hw, self.workload.compute_dtype, lean=lean)
                if not lean and block_ctx.mp > 1 and _replicates_all(block, result):
                    # a layout that spends mp ranks must split weights over them: the lean variant does
                    result = solve_block(block, block_ctx, groups, hw, self.workload.compute_dtype, lean=True)
                self.cp_sat_wall_s += result.wall_s
                self._shardings[key] = result
            out[kind] = self._shardings[key]
        return out

    def layer_costs(self, layout: Layout, lean: bool, topo: Topology, hw: HardwareSpec) -> dict:
        """Block kind -> LayerCost at the layout's micro-batch size (MTP = one MoE layer + a head)."""
        # the communication groups follow from (mp, ep, cp) and the node size: plain ints hash fast
        key = (layout.mp, layout.ep, layout.cp, layout.sequence_parallel, layout.micro_batch_size, lean,
               _local_sizes(topo), hw.name)
        if key not in self._layer_costs:
            shardings = self.shardings(layout, lean, topo, hw)
            costs = {kind: layer_cost(self.graph.blocks[kind], shardings[kind], micro_batch=layout.micro_batch_size,
                                      layout=layout, workload=self.workload, hw=hw, topo=topo)
                     for kind in shardings}
            if "mtp" in self.graph.blocks:
                costs["mtp"] = _combine(costs["moe"], costs["head"])
            self._layer_costs[key] = costs
        return self._layer_costs[key]

    def _lean_differs(self, layout: Layout, cluster: ClusterSpec) -> bool:
        topo, hw = self.topology(layout, cluster), cluster.hardware
        key = (layout.mp, layout.ep, layout.sequence_parallel, _local_sizes(topo))
        if key not in self._lean_differ:  # the time-optimal choice may already hold the fewest parameters
            fast = self.shardings(layout, False, topo, hw)
            self._lean_differ[key] = any(
                parameter_bytes(self.graph.blocks[k], s.choice) > least_parameter_bytes(self.graph.blocks[k], s.context)
                for k, s in fast.items())
        return self._lean_differ[key]

    def topology(self, layout: Layout, cluster: ClusterSpec) -> Topology:
        key = (layout.mp, layout.cp, layout.dp, layout.ep, layout.pp, cluster.devices_per_node)
        if key not in self._topologies:
            self._topologies[key] = Topology.of(layout, cluster.devices_per_node)
        return self._topologies[key]

    def uniform_assignment(self, layout: Layout) -> list[dict]:
        """Per device stage, (kind, recompute) -> count when layers split evenly with one recompute mode."""
        key = (layout.pp, layout.vpp, layout.recompute)
        if key not in self._uniform:
            kinds, chunks = self.graph.layer_kinds, layout.pp * layout.vpp
            bounds = [round(c * len(kinds) / chunks) for c in range(chunks + 1)]
            out: list[dict] = [{} for _ in range(layout.pp)]
            for c in range(chunks):
                counts = out[c % layout.pp]
                for kind in kinds[bounds[c]:bounds[c + 1]]:
                    counts[kind, layout.recompute] = counts.get((kind, layout.recompute), 0) + 1
            self._uniform[key] = out
        return self._uniform[key]

    # ---- enumeration ---------------------------------------------------------------------------

    def candidates(self, cluster: ClusterSpec, fixed: dict) -> list[Candidate]:
        """All layouts allowed by the divisibility rules and the fixed knobs, in a deterministic order."""
        spec, n = self.spec, cluster.num_devices
        moe = spec.moe
        out = []
        for mp in self._mp_options(cluster, fixed):
            for cp in self._cp_options(n // mp, fixed):
                for pp in self._options("pp", _divisors(n // (mp * cp)), fixed):
                    if pp > len(self.graph.layer_kinds):
                        continue
                    dp = n // (mp * cp * pp)
                    if "dp" in fixed and fixed["dp"] != dp:
                        continue
                    eps = [e for e in _divisors(dp * cp) if moe and moe.num_experts % e == 0] or [1]
                    for ep in self._options("ep", eps, fixed):
                        out += self._micro_options(mp=mp, cp=cp, pp=pp, dp=dp, ep=ep, fixed=fixed)
        return out

    def _options(self, key: str, values: list, fixed: dict) -> list:
        return [fixed[key]] if key in fixed and fixed[key] in values else ([] if key in fixed else values)

    def _mp_options(self, cluster: ClusterSpec, fixed: dict) -> list[int]:
        spec = self.spec
        heads_ok = [m for m in _divisors(cluster.num_devices) if spec.num_attention_heads % m == 0
                    and (spec.mla is not None or spec.num_kv_heads % m == 0)]
        if "mp" in fixed:
            return [fixed["mp"]] if fixed["mp"] in heads_ok else []
        return [m for m in heads_ok if m <= cluster.devices_per_node]

    def _cp_options(self, rest: int, fixed: dict) -> list[int]:
        seq = self.workload.seq_len
        ok = [c for c in _divisors(rest) if seq % (2 * c) == 0 or c == 1]
        if "cp" in fixed:
            return [fixed["cp"]] if fixed["cp"] in ok else []
        return [c for c in ok if c == 1 or (seq >= 16384 and c <= 8)]

    def _micro_options(self, *, mp: int, cp: int, pp: int, dp: int, ep: int, fixed: dict) -> list[Candidate]:
        out = []
        batch = self.workload.global_batch
        for mbs in self._options("mbs", list(MICRO_BATCH_SIZES), fixed) if "mbs" not in fixed else [fixed["mbs"]]:
            if batch % (dp * mbs):
                continue
            m = batch // (dp * mbs)
            vpps = [1] if pp == 1 else [v for v in VIRTUAL_STAGES if pp * v <= len(self.graph.layer_kinds)
                                        and (v == 1 or m % pp == 0)]
            for vpp in self._options("vpp", vpps, fixed):
                for stage in self._options("sharding", [0, 1, 2, 3] if dp * cp > 1 else [0], fixed):
                    for sp in self._options("sp", [0, 1] if mp > 1 else [0], fixed):
                        for recompute in self._options("recompute", list(RECOMPUTE_MODES), fixed):
                            layout = Layout(dp=dp, mp=mp, pp=pp, ep=ep, cp=cp, sharding_stage=stage,
                                            micro_batch_size=mbs, num_micro_batches=m, vpp=vpp, recompute=recompute,
                                            sequence_parallel=bool(sp))
                            out += [Candidate(layout=layout, lean=lean) for lean in (False, True)]
        return out

    # ---- evaluation ----------------------------------------------------------------------------

    def problem(self, layout: Layout, lean: bool, cluster: ClusterSpec, modes: tuple[str, ...]) -> PartitionProblem:
        hw = cluster.hardware
        topo = self.topology(layout, cluster)
        costs = self.layer_costs(layout, lean, topo, hw)
        dpo = self.workload.mode == "dpo"
        time_s = {k: {mode: c.fwd_s * (2 if dpo else 1) + c.bwd_s + c.recompute_s[mode] for mode in RECOMPUTE_MODES}
                  for k, c in costs.items()}
        static = {k: layer_state_bytes(c, layout=layout, workload=self.workload, topo=topo).total
                  for k, c in costs.items()}
        transient = max(c.transient_bytes for c in costs.values()) if "none" not in modes or len(modes) > 1 else 0.0
        if layout.sharding_stage == 3:
            transient += 4 * max(c.dense_params + c.expert_params for c in costs.values())
        budget = hw.memory_bytes - hw.calibration.runtime_reserve_bytes - transient
        p2p = 0.0
        if layout.pp > 1:
            p2p = 2 * collective_time_s("p2p", max(c.boundary_bytes for c in costs.values()), topo.pp_p2p, hw)
        return PartitionProblem(layer_kinds=self.graph.layer_kinds, time_s=time_s,
                                act_bytes={k: c.act_bytes for k, c in costs.items()}, static_bytes=static,
                                p2p_s=p2p, pp=layout.pp, vpp=layout.vpp, num_micro_batches=layout.num_micro_batches,
                                budget_bytes=budget, modes=modes)

    def evaluate(self, candidate: Candidate, cluster: ClusterSpec, partition: Partition) -> Estimate:
        layout, hw = candidate.layout, cluster.hardware
        topo = self.topology(layout, cluster)
        costs = self.layer_costs(layout, candidate.lean, topo, hw)
        assignment = []
        for layers in partition.device_layers(self.graph.layer_kinds, layout.pp):
            counts: dict = {}
            for key in layers:
                counts[key] = counts.get(key, 0) + 1
            assignment.append(counts)
        return estimate(self.graph, costs, assignment, layout=layout, workload=self.workload, hw=hw, topo=topo)

    def lower_bound_s(self, candidate: Candidate, cluster: ClusterSpec) -> float:
        """A bound on the candidate's even-split estimate: stages perfectly balanced, no communication
        outside the layers, the pipeline fill and drain of a 1F1B (or interleaved) schedule.

        With T the average stage time, step = m T_max + (sum T - T_max) / vpp >= (m + (pp - 1) / vpp) T.
        """
        layout = candidate.layout
        topo = self.topology(layout, cluster)
        costs = self.layer_costs(layout, candidate.lean, topo, cluster.hardware)
        reference = 1 if self.workload.mode == "dpo" else 0
        work = sum(((1 + reference) * costs[k].fwd_s + costs[k].bwd_s + costs[k].recompute_s[layout.recompute]) * n
                   for k, n in self._kind_counts().items())
        average = work / layout.pp
        return (layout.num_micro_batches + (layout.pp - 1) / layout.vpp) * average

    def static_bytes(self, candidate: Candidate, cluster: ClusterSpec) -> float:
        """Parameters, gradients and optimizer state of the fullest stage if layers split evenly (lower bound)."""
        layout = candidate.layout
        topo = self.topology(layout, cluster)
        costs = self.layer_costs(layout, candidate.lean, topo, cluster.hardware)
        key = (id(costs), layout.sharding_stage, topo.dp, topo.expert_dp)
        if key not in self._static:
            self._static[key] = sum(
                layer_state_bytes(costs[k], layout=layout, workload=self.workload, topo=topo).total * n
                for k, n in self._kind_counts().items())
        return self._static[key] / layout.pp

    def _kind_counts(self) -> dict:
        if not self._counts:
            self._counts.update({k: self.graph.layer_kinds.count(k) for k in sorted(set(self.graph.layer_kinds))})
        return self._counts

    def refine(self, candidate: Candidate, cluster: ClusterSpec, fixed: dict) -> Solution | None:
        """Model (b) on top of model (a); None when no partition fits."""
        layout = candidate.layout
        modes = (layout.recompute,) if "recompute" in fixed else RECOMPUTE_MODES
        problem = self.problem(layout, candidate.lean, cluster, modes)
        uniform = uniform_partition(problem, layout.recompute)
        quick = self.evaluate(candidate, cluster, uniform)
        try:
            partition = solve_partition(problem)
            self.cp_sat_wall_s += partition.wall_s
            result = self.evaluate(candidate, cluster, partition)
        except InfeasiblePartition:
            partition, result = uniform, quick
        if quick.fits and (quick.step_time_s <= result.step_time_s or not result.fits):
            partition, result = uniform, quick
        if not result.fits:
            return None
        most = max(partition.stages[0].recompute + tuple(m for s in partition.stages for m in s.recompute),
                   key=RECOMPUTE_MODES.index)
        layout = dataclasses.replace(layout, recompute=most)
        candidate = Candidate(layout=layout, lean=candidate.lean)
        topo = self.topology(layout, cluster)
        shardings = self.shardings(layout, candidate.lean, topo, cluster.hardware)
        return Solution(candidate=candidate, shardings=shardings, partition=partition,
                        estimate=dataclasses.replace(result, layout=layout))

    def fits(self, cluster: ClusterSpec, fixed: dict | None = None) -> bool:
        """Whether some layout fits `cluster`: candidates in order of their static memory, even splits."""
        hw = cluster.hardware
        ranked = sorted((self.static_bytes(c, cluster), i, c) for i, c in enumerate(self.candidates(cluster, fixed or {})))
        for static, _, candidate in ranked:
            if static > hw.memory_bytes:
                return False
            topo = self.topology(candidate.layout, cluster)
            quick = estimate(self.graph, self.layer_costs(candidate.layout, candidate.lean, topo, hw),
                             self.uniform_assignment(candidate.layout), layout=candidate.layout,
                             workload=self.workload, hw=hw, topo=topo)
            if quick.fits:
                return True
        return False

    def search(self, cluster: ClusterSpec, fixed: dict | None = None, *, exhaustive: bool = False) -> SearchResult:
        """The best layout for `cluster` with the `fixed` knobs; NoFeasibleLayout if nothing fits."""
        start = time.perf_counter()
        fixed = fixed or {}
        self.cp_sat_wall_s = 0.0
        candidates = self.candidates(cluster, fixed)
        if not candidates:
            raise ValueError(_no_candidate_reason(self.spec, cluster, fixed, self.workload))
        hw = cluster.hardware
        pruned_memory = pruned_bound = 0
        bounded: list[tuple[float, int, Candidate]] = []
        leanest: tuple[float, Candidate] | None = None
        for index, candidate in enumerate(candidates):
            if candidate.lean and not self._lean_differs(candidate.layout, cluster):
                continue  # the same block shardings as the time-optimal variant
            static = self.static_bytes(candidate, cluster)
            if static > hw.memory_bytes:
                pruned_memory += 1
                if leanest is None or static < leanest[0]:
                    leanest = (static, candidate)
                continue
            bounded.append((self.lower_bound_s(candidate, cluster), index, candidate))
        bounded.sort(key=lambda item: (item[0], item[1]))
        screened: list[tuple[float, int, Candidate, Estimate]] = []
        incumbent = float("inf")
        for position, (bound, index, candidate) in enumerate(bounded):
            if not exhaustive and bound >= incumbent:  # sorted by bound: nothing after this can win
                pruned_bound += len(bounded) - position
                break
            layout = candidate.layout
            topo = self.topology(layout, cluster)
            quick = estimate(self.graph, self.layer_costs(layout, candidate.lean, topo, hw),
                             self.uniform_assignment(layout), layout=layout, workload=self.workload, hw=hw, topo=topo)
            if quick.fits:
                incumbent = min(incumbent, quick.step_time_s)
            screened.append((quick.step_time_s if quick.fits else float("inf"), index, candidate, quick))
        least_over = min((q for *_, q in screened if not q.fits), key=lambda q: q.memory["total"], default=None)
        if least_over is None and leanest is not None:
            least_over = self.evaluate(leanest[1], cluster, uniform_partition(
                self.problem(leanest[1].layout, leanest[1].lean, cluster, (leanest[1].layout.recompute,)),
                leanest[1].layout.recompute))
        screened.sort(key=lambda item: (item[0], item[1]))
        solutions: list[Solution] = []
        attempts = 0
        for _, index, candidate, quick in screened:
            if not exhaustive and (len(solutions) >= REFINE_TOP or attempts >= 3 * REFINE_TOP):
                break
            attempts += 1
            solution = self.refine(candidate, cluster, fixed)
            if solution is not None:
                solutions.append(solution)
        if not solutions:
            raise NoFeasibleLayout(f"no layout of {self.spec.name} fits {cluster}", least_over)
        solutions.sort(key=lambda s: (s.estimate.step_time_s, s.candidate.layout.short(), s.candidate.lean))
        unique = _distinct_layouts(solutions)
        stats = SolverStats(method="search", wall_s=time.perf_counter() - start, candidates=len(candidates),
                            pruned_memory=pruned_memory, pruned_bound=pruned_bound, evaluated=len(screened),
                            cp_sat={"stage_partition": _partition_stats(unique[0].partition),
                                    "intra_op": _sharding_stats(unique[0].shardings),
                                    "cp_sat_wall_s": self.cp_sat_wall_s})
        return SearchResult(best=unique[0], alternatives=tuple(unique[1:6]), stats=stats, graph=self.graph)


def _local_sizes(topo: Topology) -> tuple[int, ...]:
    """The node placement of the groups a layer's collectives use (with the degrees, it fixes their cost)."""
    return (topo.groups.mp.local_size, topo.groups.ep.local_size, topo.groups.ep_mp.local_size, topo.cp.local_size)


def _replicates_all(block, sharding: BlockSharding) -> bool:
    return all(s.param_divisor == 1 for op, s in sharding.choice.items() if block.graph.nodes[op]["op"].params)


def _distinct_layouts(solutions: list[Solution]) -> list[Solution]:
    out, seen = [], set()
    for s in solutions:
        key = s.candidate.layout.short()
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _partition_stats(partition: Partition) -> dict:
    return {"status": partition.status, "objective_s": partition.objective_s, "bound_s": partition.bound_s,
            "wall_s": partition.wall_s}


def _sharding_stats(shardings: dict) -> dict:
    return {kind: {"status": s.status, "objective_s": s.objective_s, "bound_s": s.bound_s, "wall_s": s.wall_s}
            for kind, s in sorted(shardings.items())}


def _combine(a: LayerCost, b: LayerCost) -> LayerCost:
    """The cost of running layer `a` then layer `b` as one layer (DeepSeek-V3's MTP module)."""
    def add(x: dict, y: dict) -> dict:
        return {k: x[k] + y[k] for k in x}
    total = a.dense_params + a.expert_params + b.dense_params + b.expert_params
    lora = (a.trainable_fraction * (a.dense_params + a.expert_params)
            + b.trainable_fraction * (b.dense_params + b.expert_params))
    return LayerCost(fwd_s=a.fwd_s + b.fwd_s, bwd_s=a.bwd_s + b.bwd_s, recompute_s=add(a.recompute_s, b.recompute_s),
                     comm_s=add(a.comm_s, b.comm_s), act_bytes=add(a.act_bytes, b.act_bytes),
                     transient_bytes=a.transient_bytes + b.transient_bytes, boundary_bytes=a.boundary_bytes,
                     dense_params=a.dense_params + b.dense_params, expert_params=a.expert_params + b.expert_params,
                     trainable_fraction=lora / total if total else 1.0,
                     recompute_flops=add(a.recompute_flops, b.recompute_flops))


def _no_candidate_reason(spec: ModelSpec, cluster: ClusterSpec, fixed: dict, workload: Workload) -> str:
    if fixed:
        return (f"layout {','.join(f'{k}={v}' for k, v in fixed.items())} is not valid for {spec.name} on {cluster}: "
                f"mp must divide the heads ({spec.num_attention_heads}) and kv heads ({spec.num_kv_heads}), "
                f"dp*mp*pp*cp must equal {cluster.num_devices}, ep must divide the experts and dp*cp, "
                f"pp*vpp must not exceed the {spec.num_layers + 2} layers, dp*mbs must divide the global batch "
                f"({workload.global_batch} sequences)")
    return (f"no layout of {spec.name} divides {cluster} with a global batch of {workload.global_batch} sequences; "
            "choose a global batch divisible by the data-parallel degree")
