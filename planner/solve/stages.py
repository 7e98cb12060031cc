"""Model (b): layers -> pipeline stages with per-layer recompute, solved with CP-SAT.

The model's layers (embedding, decoder layers, head, MTP) form runs of equal
kind r = 1..R, run r covering layers [start_r, end_r). Layers of one kind
are interchangeable, so a contiguous split is described by chunk boundaries
and, per chunk and run, how many layers take each recompute mode.
With pp device stages and vpp virtual chunks each, chunk c (0..C-1, C = pp vpp)
lives on device stage c mod pp.

Variables
  bound[c] in [0, N], c = 0..C          chunk c holds layers [bound[c], bound[c+1])
  count[c][r] >= 0                       layers of run r in chunk c
  mode[c][r][k] >= 0                     of those, how many use recompute k
  t_max                                  the slowest device stage
Constraints
  (1) contiguous, non-empty chunks:      bound[0] = 0, bound[C] = N, bound[c+1] >= bound[c] + 1
  (2) overlap with each run:             count[c][r] = done(bound[c+1], r) - done(bound[c], r),
                                         done(b, r) = min(max(b - start_r, 0), end_r - start_r)
  (3) recompute split:                   sum_k mode[c][r][k] = count[c][r]
  (4) memory per device stage s:         sum_{c on s} sum_r count[c][r] static_r
                                         + inflight_s sum_{c on s} sum_{r,k} mode[c][r][k] act_rk <= budget
  (5) stage time:                        T_s = sum_{c on s} (sum_{r,k} mode[c][r][k] t_rk + p2p) <= t_max
Objective (vpp x the interleaved 1F1B step, in integer nanoseconds)
  min (vpp m - 1) t_max + sum_s T_s     i.e. m t_max + (sum_s T_s - t_max) / vpp
      + sum mode[c][r][k] rank(k)       a 1 ns tie-break: none < selective < full
inflight_s is the 1F1B (or interleaved) count of micro-batches stage s holds
at its peak (cost_models.memory.pipeline_in_flight). Costs are quantized in
planner.solve.costing. `solve_exhaustive` enumerates every split for tests.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from ortools.sat.python import cp_model

from cost_models.memory import pipeline_in_flight
from planner.plan import RECOMPUTE_MODES, Stage
from planner.solve.costing import quantize, quantize_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class PartitionProblem:
    """Per-kind coefficients of the stage partition (all per micro-batch, per device)."""

    layer_kinds: tuple[str, ...]
    time_s: dict  # kind -> mode -> forward + backward + recompute seconds
    act_bytes: dict  # kind -> mode -> activation bytes kept per micro-batch
    static_bytes: dict  # kind -> parameter, gradient and optimizer bytes
    p2p_s: float  # per chunk and micro-batch
    pp: int
    vpp: int
    num_micro_batches: int
    budget_bytes: float  # device memory less the reserve and transient buffers
    modes: tuple[str, ...] = RECOMPUTE_MODES

    def __post_init__(self) -> None:
        chunks = self.pp * self.vpp
        if chunks > len(self.layer_kinds):
            raise ValueError(f"pp*vpp={chunks} chunks for {len(self.layer_kinds)} layers: every chunk needs a layer")
        bad = sorted(set(self.modes) - set(RECOMPUTE_MODES))
        if bad or not self.modes:
            raise ValueError(f"recompute modes {self.modes} must be a non-empty subset of {RECOMPUTE_MODES}")

    def runs(self) -> list[tuple[str, int, int]]:
        """(kind, start, end) of each run of equal layer kinds."""
        out = []
        for i, kind in enumerate(self.layer_kinds):
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1], i + 1)
            else:
                out.append((kind, i, i + 1))
        return out

    def in_flight(self, stage: int) -> float:
        return pipeline_in_flight(stage, self.pp, self.num_micro_batches, self.vpp)


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """A solved partition: chunks with per-layer recompute, and the solver's account."""

    stages: tuple[Stage, ...]
    objective_s: float
    status: str
    bound_s: float
    wall_s: float
    fits: bool

    def device_layers(self, layer_kinds: tuple[str, ...], pp: int) -> list[list[tuple[str, str]]]:
        """Per device stage: its layers as (kind, recompute mode), over all its chunks."""
        out: list[list[tuple[str, str]]] = [[] for _ in range(pp)]
        for stage in self.stages:
            for i, mode in zip(range(stage.first_layer, stage.last_layer + 1), stage.recompute):
                out[stage.index % pp].append((layer_kinds[i], mode))
        return out


class InfeasiblePartition(ValueError):
    """No split of the layers into stages fits the memory budget."""


def _stages_from_counts(problem: PartitionProblem, bounds: list[int], modes: dict) -> tuple[Stage, ...]:
    """Stage objects; inside a chunk each run lists its full, then selective, then unrecomputed layers."""
    stages = []
    for c in range(len(bounds) - 1):
        per_layer = []
        for r, (kind, start, end) in enumerate(problem.runs()):
            n = max(0, min(bounds[c + 1], end) - max(bounds[c], start))
            if not n:
                continue
            order = [k for k in ("full", "selective", "none") if k in problem.modes]
            for k in order:
                per_layer += [k] * modes.get((c, r, k), 0)
        stages.append(Stage(index=c, first_layer=bounds[c], last_layer=bounds[c + 1] - 1, recompute=tuple(per_layer)))
    return tuple(stages)


def solve_partition(problem: PartitionProblem, *, time_limit_s: float = 2.0) -> Partition:
    """Optimal contiguous partition with per-layer recompute (CP-SAT), started from the even split.

    `time_limit_s` is CP-SAT's deterministic time (work units of about a second), not wall time, so that
    the same inputs give the same plan on a busy machine; past it the best partition found so far is
    returned with status FEASIBLE and its bound.
    """
    start_clock = time.perf_counter()
    runs = problem.runs()
    n_layers, chunks, pp = len(problem.layer_kinds), problem.pp * problem.vpp, problem.pp
    model = cp_model.CpModel()
    bound = [model.NewIntVar(0, n_layers, f"bound[{c}]") for c in range(chunks + 1)]
    count, mode = {}, {}
    _contiguous_chunks(model, bound, n_layers)
    done = {(c, r): _layers_before(model, bound[c], start, end, n_layers, f"{c},{r}")
            for c in range(chunks + 1) for r, (_, start, end) in enumerate(runs)}
    for c in range(chunks):
        for r, (kind, start, end) in enumerate(runs):
            count[c, r] = done[c + 1, r] - done[c, r]
            for k in problem.modes:
                mode[c, r, k] = model.NewIntVar(0, end - start, f"mode[{c}][{r}][{k}]")
            model.Add(sum(mode[c, r, k] for k in problem.modes) == count[c, r])
    _memory_per_stage(model, problem, runs, count, mode)
    _hint_even_split(model, problem, bound, mode)
    stage_time = _stage_times(model, problem, runs, mode)
    horizon = quantize(_max_time(problem)) * n_layers + quantize(problem.p2p_s) * chunks
    t_max = model.NewIntVar(0, horizon, "t_max")
    for s in range(pp):
        model.Add(stage_time[s] <= t_max)
    weight = problem.vpp * problem.num_micro_batches - 1
    model.Minimize(cp_model.LinearExpr.Sum(stage_time + ([weight * t_max] if weight else [])
                                           + _least_recompute(problem, mode)))
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.num_workers = 1
    status = solver.Solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise InfeasiblePartition(f"no split of {n_layers} layers into {chunks} chunks fits "
                                  f"{problem.budget_bytes / 2**30:.1f} GiB per device ({solver.StatusName(status)})")
    bounds = [solver.Value(b) for b in bound]
    modes = {key: solver.Value(v) for key, v in mode.items()}
    scale = 1e-9 / problem.vpp
    return Partition(stages=_stages_from_counts(problem, bounds, modes), objective_s=solver.ObjectiveValue() * scale,
                     status=solver.StatusName(status), bound_s=solver.BestObjectiveBound() * scale,
                     wall_s=time.perf_counter() - start_clock, fits=True)


def _hint_even_split(model: cp_model.CpModel, problem: PartitionProblem, bound: list, mode: dict) -> None:
    """Start the search from layers split evenly with no recompute (feasible when memory allows)."""
    n, chunks = len(problem.layer_kinds), len(bound) - 1
    even = [round(c * n / chunks) for c in range(chunks + 1)]
    for var, value in zip(bound, even):
        model.AddHint(var, value)
    for (c, r, k), var in sorted(mode.items()):
        _, start, end = problem.runs()[r]
        layers = max(0, min(even[c + 1], end) - max(even[c], start))
        model.AddHint(var, layers if k == problem.modes[0] else 0)


def _least_recompute(problem: PartitionProblem, mode: dict) -> list:
    """Tie-break (1 ns per layer and mode step): among equal step times, recompute less."""
    return [RECOMPUTE_MODES.index(k) * var for (_, _, k), var in sorted(mode.items()) if RECOMPUTE_MODES.index(k)]


def _max_time(problem: PartitionProblem) -> float:
    return max(t for per_mode in problem.time_s.values() for t in per_mode.values())


def _contiguous_chunks(model: cp_model.CpModel, bound: list, n_layers: int) -> None:
    model.Add(bound[0] == 0)
    model.Add(bound[-1] == n_layers)
    for c in range(len(bound) - 1):
        model.Add(bound[c + 1] >= bound[c] + 1)


def _layers_before(model: cp_model.CpModel, bound, start: int, end: int, n_layers: int, name: str):
    """Layers of run [start, end) before position `bound`: min(max(bound - start, 0), end - start).

    Monotone in the bound, so a chunk's share of a run is the difference of two of these (2)."""
    shifted = model.NewIntVar(-n_layers, n_layers, f"shifted[{name}]")
    model.Add(shifted == bound - start)
    positive = model.NewIntVar(0, n_layers, f"positive[{name}]")
    model.AddMaxEquality(positive, [shifted, 0])
    clamped = model.NewIntVar(0, end - start, f"done[{name}]")
    model.AddMinEquality(clamped, [positive, end - start])
    return clamped


def _memory_per_stage(model: cp_model.CpModel, problem: PartitionProblem, runs, count, mode) -> None:
    chunks = problem.pp * problem.vpp
    for s in range(problem.pp):
        in_flight = problem.in_flight(s)
        terms = []
        for c in range(s, chunks, problem.pp):
            for r, (kind, _, _) in enumerate(runs):
                terms.append(quantize_bytes(problem.static_bytes[kind]) * count[c, r])
                for k in problem.modes:
                    terms.append(quantize_bytes(in_flight * problem.act_bytes[kind][k]) * mode[c, r, k])
        model.Add(cp_model.LinearExpr.Sum(terms) <= int(problem.budget_bytes // 2**20))


def _stage_times(model: cp_model.CpModel, problem: PartitionProblem, runs, mode) -> list:
    chunks = problem.pp * problem.vpp
    out = []
    for s in range(problem.pp):
        terms = [quantize(problem.p2p_s) * (chunks // problem.pp)]
        for c in range(s, chunks, problem.pp):
            for r, (kind, _, _) in enumerate(runs):
                for k in problem.modes:
                    terms.append(quantize(problem.time_s[kind][k]) * mode[c, r, k])
        out.append(cp_model.LinearExpr.Sum(terms))
    return out


def _objective(problem: PartitionProblem, layers_per_stage: list[list[tuple[str, str]]]) -> tuple[int, bool]:
    """(quantized objective, fits) of a partition given as per-device-stage (kind, mode) lists."""
    times, fits = [], True
    per_chunk_p2p = quantize(problem.p2p_s) * problem.vpp
    for s, layers in enumerate(layers_per_stage):
        times.append(per_chunk_p2p + sum(quantize(problem.time_s[kind][k]) for kind, k in layers))
        memory = sum(quantize_bytes(problem.static_bytes[kind]) +
                     quantize_bytes(problem.in_flight(s) * problem.act_bytes[kind][k]) for kind, k in layers)
        fits = fits and memory <= int(problem.budget_bytes // 2**20)
    weight = problem.vpp * problem.num_micro_batches - 1
    tie_break = sum(RECOMPUTE_MODES.index(k) for layers in layers_per_stage for _, k in layers)
    return weight * max(times) + sum(times) + tie_break, fits


def solve_exhaustive(problem: PartitionProblem) -> Partition:
    """Reference solver: every split and every recompute count (small problems only)."""
    start_clock = time.perf_counter()
    n, chunks, runs = len(problem.layer_kinds), problem.pp * problem.vpp, problem.runs()
    best = None
    for cuts in itertools.combinations(range(1, n), chunks - 1):
        bounds = [0, *cuts, n]
        cells = [(c, r, max(0, min(bounds[c + 1], end) - max(bounds[c], start)))
                 for c in range(chunks) for r, (_, start, end) in enumerate(runs)]
        cells = [cell for cell in cells if cell[2]]
        splits = [list(_compositions(size, len(problem.modes))) for _, _, size in cells]
        for choice in itertools.product(*splits):
            modes = {(c, r, k): parts[i] for (c, r, _), parts in zip(cells, choice)
                     for i, k in enumerate(problem.modes)}
            stages = _stages_from_counts(problem, bounds, modes)
            partition = Partition(stages=stages, objective_s=0.0, status="", bound_s=0.0, wall_s=0.0, fits=True)
            value, fits = _objective(problem, partition.device_layers(problem.layer_kinds, problem.pp))
            if fits and (best is None or value < best[0]):
                best = (value, stages)
    if best is None:
        raise InfeasiblePartition(f"no split of {n} layers into {chunks} chunks fits the memory budget")
    objective = best[0] * 1e-9 / problem.vpp
    return Partition(stages=best[1], objective_s=objective, status="OPTIMAL", bound_s=objective,
                     wall_s=time.perf_counter() - start_clock, fits=True)


def _compositions(total: int, parts: int):
    """All ways to write `total` as an ordered sum of `parts` non-negative integers."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def uniform_partition(problem: PartitionProblem, mode: str) -> Partition:
    """Layers split as evenly as possible by count, one recompute mode everywhere (the quick estimate)."""
    n, chunks = len(problem.layer_kinds), problem.pp * problem.vpp
    bounds = [round(c * n / chunks) for c in range(chunks + 1)]
    stages = tuple(Stage(index=c, first_layer=bounds[c], last_layer=bounds[c + 1] - 1,
                         recompute=(mode,) * (bounds[c + 1] - bounds[c])) for c in range(chunks))
    value, fits = _objective(problem, Partition(stages=stages, objective_s=0, status="", bound_s=0, wall_s=0,
                                                fits=True).device_layers(problem.layer_kinds, problem.pp))
    return Partition(stages=stages, objective_s=value * 1e-9 / problem.vpp, status="UNIFORM", bound_s=0.0,
                     wall_s=0.0, fits=fits)
