"""Model (a): per-op sharding choice inside one block (Alpa's intra-op ILP), solved with CP-SAT.

Given a block's op graph G = (V, E), the mp/ep degrees and whether sequence
parallelism is allowed, every op v has candidate strategies K(v)
(planner.strategies.sharding.candidates).

Variables
  choose[v][k] in {0,1}          op v runs strategy k
  reshard[e][j][k] in {0,1}      edge e = (u -> v) pays the resharding from u's
                                 strategy j to v's strategy k
  flag[u][f] in {0,1}            tensor u pays its per-tensor collectives f
                                 (backward all-reduce / sequence all-gather)
Constraints
  (1) one strategy per op:       sum_k choose[v][k] = 1
  (2) impossible pairs:          choose[u][j] + choose[v][k] <= 1 when v's input
                                 layout cannot be made from u's output layout
  (3) resharding is paid:        reshard[e][j][k] >= choose[u][j] + choose[v][k] - 1
  (4) tensor flags are paid:     flag[u][f] >= choose[v][k] for every consumer v
                                 of u whose strategy k needs f
  (5) block boundary:            the block input and output keep the residual
                                 stream layout (R, or S under sequence parallelism),
                                 so that blocks chain
  (6) parameter memory (lean):   sum_v sum_k w[v][k] choose[v][k] <= W_min, with
                                 w the parameter bytes per rank and W_min the least
                                 achievable; the fast variant drops (6). The outer
                                 search keeps both ends of this time/memory frontier.
Objective (integer nanoseconds, per sequence, forward + backward)
  min sum_v sum_k c[v][k] choose[v][k] + sum_e sum_jk r[e][j][k] reshard[e][j][k]
      + sum_u sum_f g[u][f] flag[u][f]
  c: compute time of the sharded op plus its own collectives; r, g: collective times.

Nothing about Megatron's column/row pattern is written here: for a Llama block
with mp > 1 the optimum is q/k/v/gate/up column-parallel, o/down row-parallel
with two all-reduces each way, which tests check. `solve_exhaustive` enumerates
every assignment for small blocks; tests check that both agree.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from cost_models.hardware import HardwareSpec
from planner.solve.costing import Groups, collective_s, op_compute_s, quantize
from planner.strategies.sharding import (
    Collective, ShardingContext, Strategy, candidates, flag_collectives, reshard, tensor_bytes)
from planner.trace.graph import Block


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockSharding:
    """The chosen strategy of every op of a block, and how the solver got there."""

    kind: str
    context: ShardingContext
    choice: dict  # op name -> Strategy
    objective_s: float
    status: str
    bound_s: float
    wall_s: float

    def collectives(self, block: Block) -> list[Collective]:
        """Every collective the choice implies: per op, per edge and per tensor flag."""
        return block_collectives(block, self.choice, self.context)


def _boundary_layout(ctx: ShardingContext) -> str:
    return "S" if ctx.sequence_parallel else "R"


def _allowed(block: Block, ctx: ShardingContext) -> dict[str, list[Strategy]]:
    """Candidates per op, with the block boundary (5) applied.

    The embedding's output may take any layout: it pays the resharding into the
    residual stream layout (`boundary_collectives`) instead.
    """
    boundary = _boundary_layout(ctx)
    allowed = {}
    for op in block.ops():
        options = candidates(op, ctx)
        if op.name in (block.input_node, block.output_node) and block.kind not in ("head", "embedding"):
            options = [s for s in options if s.out_layout == boundary] or options
        allowed[op.name] = options
    if block.kind in ("head", "mtp"):
        head_in = [s for s in allowed[block.input_node] if s.out_layout == boundary]
        allowed[block.input_node] = head_in or allowed[block.input_node]
    return allowed


def _edge_collectives(block: Block, u: str, v: str, j: Strategy, k: Strategy) -> tuple[Collective, ...] | None:
    data = block.graph.edges[u, v]
    return reshard(j.out_layout, k.in_layouts[data["port"]], data["bytes"])


def _flag_bytes(block: Block, u: str) -> float:
    return tensor_bytes(block.graph.nodes[u]["op"].out_shape)


def boundary_collectives(block: Block, v: str, strategy: Strategy, ctx: ShardingContext) -> tuple[Collective, ...]:
    """The embedding output's resharding into the residual stream layout (nothing for other ops)."""
    if block.kind != "embedding" or v != block.output_node:
        return ()
    op = block.graph.nodes[v]["op"]
    return reshard(strategy.out_layout, _boundary_layout(ctx), tensor_bytes(op.out_shape)) or ()


def block_collectives(block: Block, choice: dict, ctx: ShardingContext) -> list[Collective]:
    """All collectives of a complete assignment `choice` (op name -> Strategy)."""
    out: list[Collective] = []
    flags: set[tuple[str, str]] = set()
    for v in block.order:
        strategy = choice[v]
        out.extend(strategy.collectives)
        out.extend(boundary_collectives(block, v, strategy, ctx))
        for u in sorted(block.graph.predecessors(v)):
            moves = _edge_collectives(block, u, v, choice[u], strategy)
            if moves is None:
                raise ValueError(f"block {block.kind!r}: {u} ({choice[u].name}) cannot feed {v} ({strategy.name})")
            out.extend(moves)
            if strategy.input_flag and block.graph.edges[u, v]["port"] == 0:
                flags.add((u, strategy.input_flag))
    for u, flag in sorted(flags):
        out.extend(flag_collectives(flag, _flag_bytes(block, u)))
    return out


class _Costs:
    """Per-sequence costs in seconds, memoised per (op, strategy) and per collective tuple."""

    def __init__(self, block: Block, ctx: ShardingContext, groups: Groups, hw: HardwareSpec, dtype: str) -> None:
        self.block, self.ctx, self.groups, self.hw, self.dtype = block, ctx, groups, hw, dtype

    def node(self, v: str, strategy: Strategy) -> float:
        op = self.block.graph.nodes[v]["op"]
        compute = sum(op_compute_s(op, strategy, 1, self.hw, self.dtype, phase) for phase in ("fwd", "bwd"))
        own = strategy.collectives + boundary_collectives(self.block, v, strategy, self.ctx)
        return compute + self.comm(own)

    def comm(self, collectives) -> float:
        return sum(collective_s(c, self.groups, self.hw) for c in collectives)


def _exhaustive_objective(block: Block, choice: dict, costs: _Costs) -> float:
    total = sum(costs.node(v, s) for v, s in choice.items())
    collectives = block_collectives(block, choice, costs.ctx)
    own = [c for v, s in choice.items() for c in s.collectives + boundary_collectives(block, v, s, costs.ctx)]
    return total + costs.comm(collectives) - costs.comm(own)


def solve_block(block: Block, ctx: ShardingContext, groups: Groups, hw: HardwareSpec, dtype: str,
                *, lean: bool = False, time_limit_s: float = 10.0) -> BlockSharding:
    """Optimal per-op strategies of `block` (CP-SAT); `lean`: with the fewest parameter bytes per rank."""
    start = time.perf_counter()
    allowed = _allowed(block, ctx)
    costs = _Costs(block, ctx, groups, hw, dtype)
    if all(len(options) == 1 for options in allowed.values()):  # nothing to choose (mp = 1)
        choice = {v: options[0] for v, options in allowed.items()}
        cost = _exhaustive_objective(block, choice, costs)
        return BlockSharding(kind=block.kind, context=ctx, choice=choice, objective_s=cost, status="OPTIMAL",
                             bound_s=cost, wall_s=time.perf_counter() - start)
    model = cp_model.CpModel()
    choose = {v: [model.NewBoolVar(f"choose[{v}][{s.name}]") for s in options] for v, options in allowed.items()}
    objective = []
    _one_strategy_per_op(model, choose)
    if lean:
        _parameter_memory(model, block, allowed, choose)
    objective += _node_terms(allowed, choose, costs)
    objective += _edge_terms(model, block, allowed, choose, costs)
    objective += _flag_terms(model, block, allowed, choose, costs)
    model.Minimize(sum(objective))
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s  # work units, not wall time: reproducible plans
    solver.parameters.num_workers = 1  # deterministic
    solver.parameters.linearization_level = 2  # the reshard implications make a weak LP otherwise: 6x faster
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise ValueError(f"block {block.kind!r}: no consistent sharding under {ctx} ({solver.StatusName(status)})")
    choice = {v: next(s for s, var in zip(options, choose[v]) if solver.Value(var)) for v, options in allowed.items()}
    return BlockSharding(kind=block.kind, context=ctx, choice=choice,
                         objective_s=solver.ObjectiveValue() * 1e-9, status=solver.StatusName(status),
                         bound_s=solver.BestObjectiveBound() * 1e-9, wall_s=time.perf_counter() - start)


def _one_strategy_per_op(model: cp_model.CpModel, choose: dict) -> None:
    for variables in choose.values():
        model.AddExactlyOne(variables)


def _param_bytes(block: Block, v: str, strategy: Strategy) -> int:
    return 2 * block.graph.nodes[v]["op"].params // strategy.param_divisor


def least_parameter_bytes(block: Block, ctx: ShardingContext) -> int:
    """The fewest parameter bytes per rank any assignment reaches (what the lean variant holds)."""
    return sum(min(_param_bytes(block, v, s) for s in options) for v, options in _allowed(block, ctx).items())


def parameter_bytes(block: Block, choice: dict) -> int:
    return sum(_param_bytes(block, v, s) for v, s in choice.items())


def _parameter_memory(model: cp_model.CpModel, block: Block, allowed: dict, choose: dict) -> None:
    least = sum(min(_param_bytes(block, v, s) for s in options) for v, options in allowed.items())
    model.Add(sum(_param_bytes(block, v, s) * var for v, options in allowed.items()
                  for s, var in zip(options, choose[v])) <= least)


def _node_terms(allowed: dict, choose: dict, costs: _Costs) -> list:
    return [quantize(costs.node(v, s)) * var for v, options in allowed.items() for s, var in zip(options, choose[v])]


def _edge_terms(model: cp_model.CpModel, block: Block, allowed: dict, choose: dict, costs: _Costs) -> list:
    terms = []
    for u, v in sorted(block.graph.edges):
        for (j, sj), (k, sk) in itertools.product(enumerate(allowed[u]), enumerate(allowed[v])):
            moves = _edge_collectives(block, u, v, sj, sk)
            if moves is None:
                model.AddBoolOr([choose[u][j].Not(), choose[v][k].Not()])
                continue
            cost = quantize(costs.comm(moves))
            if cost:
                paid = model.NewBoolVar(f"reshard[{u}->{v}][{sj.name}][{sk.name}]")
                model.AddBoolOr([choose[u][j].Not(), choose[v][k].Not(), paid])
                terms.append(cost * paid)
    return terms


def _flag_terms(model: cp_model.CpModel, block: Block, allowed: dict, choose: dict, costs: _Costs) -> list:
    terms, flags = [], {}
    for u, v in sorted(block.graph.edges):
        if block.graph.edges[u, v]["port"] != 0:
            continue
        for k, strategy in enumerate(allowed[v]):
            if not strategy.input_flag:
                continue
            key = (u, strategy.input_flag)
            if key not in flags:
                flags[key] = model.NewBoolVar(f"flag[{u}][{strategy.input_flag}]")
                cost = quantize(costs.comm(flag_collectives(strategy.input_flag, _flag_bytes(block, u))))
                terms.append(cost * flags[key])
            model.AddImplication(choose[v][k], flags[key])
    return terms


def solve_exhaustive(block: Block, ctx: ShardingContext, groups: Groups, hw: HardwareSpec, dtype: str,
                     *, max_assignments: int = 2_000_000) -> BlockSharding:
    """Reference solver: every assignment, for small blocks; same objective as `solve_block`."""
    start = time.perf_counter()
    allowed = _allowed(block, ctx)
    names = sorted(allowed)
    count = 1
    for v in names:
        count *= len(allowed[v])
    if count > max_assignments:
        raise ValueError(f"block {block.kind!r}: {count} assignments exceed the exhaustive limit {max_assignments}")
    costs = _Costs(block, ctx, groups, hw, dtype)
    best, best_cost = None, float("inf")
    for combo in itertools.product(*(allowed[v] for v in names)):
        choice = dict(zip(names, combo))
        try:
            cost = _exhaustive_objective(block, choice, costs)
        except ValueError:
            continue  # an impossible layout pair
        if cost < best_cost - 1e-15:
            best, best_cost = choice, cost
    if best is None:
        raise ValueError(f"block {block.kind!r}: no consistent sharding under {ctx}")
    return BlockSharding(kind=block.kind, context=ctx, choice=best, objective_s=best_cost, status="OPTIMAL",
                         bound_s=best_cost, wall_s=time.perf_counter() - start)
