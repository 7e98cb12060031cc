"""Fit the few physical calibration parameters of the cost models to published runs.

Parameters (cost_models/hardware/*.json, `calibration`):
  per device     gemm_efficiency       achieved / peak FLOP/s of large GEMMs (clocks, power cap, software)
  shared         attention_ratio       flash-attention efficiency / GEMM efficiency
                 memory_efficiency     achieved / peak HBM bandwidth of bandwidth-bound kernels
                 link_efficiency       NCCL bus bandwidth / nominal link bandwidth
                 dp_overlap            share of gradient sync hidden behind backward compute
                 mp_overlap            share of tensor-parallel collectives hidden behind GEMMs
                 kernel_overhead_s     fixed cost per kernel (launch, tail wave), seconds
A device without a published run keeps the shared values and the median fitted
GEMM efficiency of its architecture family (Ampere, Hopper), else of all fitted devices.

The fit minimises the mean absolute log error of the predicted throughput by
coordinate descent over multiplicative grids. Each case is first scored once
with the planner (the `--layout` path, searching the knobs the source leaves
out); the fit then re-costs those layouts with their block shardings held
fixed and the same stage partition, which is fast, and the validation re-scores
everything through the full planner afterwards.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

from cost_models.hardware import ClusterSpec, HardwareSpec
from planner.calibration.cases import PublishedCase
from planner.calibration.validate import predicted_metric, request_of
from planner.api import plan_request
from planner.solve.evaluate import Estimate, Topology, estimate, layer_cost
from planner.solve.search import Planner, _combine

SHARED = ("attention_ratio", "memory_efficiency", "link_efficiency", "dp_overlap", "mp_overlap",
          "kernel_overhead_s")
BOUNDS = {"gemm_efficiency": (0.2, 0.95), "attention_ratio": (0.3, 1.2), "memory_efficiency": (0.3, 0.95),
          "link_efficiency": (0.3, 0.95), "dp_overlap": (0.0, 1.0), "mp_overlap": (0.0, 0.9),
          "kernel_overhead_s": (1e-6, 5e-5)}
ADDITIVE = ("dp_overlap", "mp_overlap")  # searched by steps, not factors: they may start at 0
# Same silicon, same fit: the H800 is an H100 with fewer NVLinks (its only run here is a PaddleNLP one,
# which alone would make the chip look slower than it is)
TIED = {"H800": "H100-SXM"}
FAMILIES = {"A100-40GB": "ampere", "A100-80GB": "ampere", "H100-SXM": "hopper", "H100-96GB": "hopper",
            "H800": "hopper", "H200": "hopper", "H20": "hopper"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Parameters:
    """Shared parameters and per-device GEMM efficiencies."""

    shared: dict
    gemm_efficiency: dict  # device name -> efficiency

    def __post_init__(self) -> None:
        for name, value in [*self.shared.items(), *((f"gemm_efficiency[{d}]", v)
                                                    for d, v in self.gemm_efficiency.items())]:
            low, high = BOUNDS[name.split("[")[0]]
            if not low <= value <= high:
                raise ValueError(f"calibration parameter {name}={value} outside [{low}, {high}]")

    def hardware(self, hw: HardwareSpec) -> HardwareSpec:
        """`hw` with these parameters applied."""
        gemm = self.gemm_efficiency.get(TIED.get(hw.name, hw.name), hw.calibration.gemm_efficiency)
        cal = dataclasses.replace(
            hw.calibration, gemm_efficiency=gemm,
            attention_efficiency=min(1.0, gemm * self.shared["attention_ratio"]),
            memory_efficiency=self.shared["memory_efficiency"], link_efficiency=self.shared["link_efficiency"],
            dp_overlap=self.shared["dp_overlap"], mp_overlap=self.shared["mp_overlap"],
            kernel_overhead_s=self.shared["kernel_overhead_s"])
        return dataclasses.replace(hw, calibration=cal)

    def replace(self, name: str, value: float) -> "Parameters":
        if name in self.shared:
            return Parameters(shared={**self.shared, name: value}, gemm_efficiency=self.gemm_efficiency)
        device = name.split("[")[1].rstrip("]")
        return Parameters(shared=self.shared, gemm_efficiency={**self.gemm_efficiency, device: value})

    def names(self) -> list[str]:
        return [*self.shared, *(f"gemm_efficiency[{d}]" for d in sorted(self.gemm_efficiency))]

    def value(self, name: str) -> float:
        if name in self.shared:
            return self.shared[name]
        return self.gemm_efficiency[name.split("[")[1].rstrip("]")]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """A case with the layout the planner chose for it, ready to re-cost quickly."""

    case: PublishedCase
    planner: Planner
    candidate: object
    shardings: dict
    assignment: list  # per device stage: (kind, recompute) -> layers, from the refined partition


def prepare(cases: list[PublishedCase]) -> list[Prepared]:
    """Score each case once through the full planner and keep its layout and block shardings."""
    out = []
    for case in cases:
        request = request_of(case)
        planner = Planner(spec=request.spec, workload=request.workload)
        try:
            plan_request(request, planner=planner)
        except ValueError:
            continue  # does not fit: reported by the validation, not fitted
        result = planner.search(request.cluster, request.fixed)
        layout = result.best.candidate.layout
        assignment = []
        for layers in result.best.partition.device_layers(planner.graph.layer_kinds, layout.pp):
            counts: dict = {}
            for key in layers:
                counts[key] = counts.get(key, 0) + 1
            assignment.append(counts)
        out.append(Prepared(case=case, planner=planner, candidate=result.best.candidate,
                            shardings=result.best.shardings, assignment=assignment))
    return out


def quick_estimate(item: Prepared, params: Parameters) -> Estimate:
    """The case's layout re-costed under `params` (block shardings fixed, layers split evenly)."""
    case, planner = item.case, item.planner
    hw = params.hardware(case.cluster.hardware)
    cluster = ClusterSpec(hardware=hw, num_devices=case.cluster.num_devices)
    layout = item.candidate.layout
    topo = Topology.of(layout, cluster.devices_per_node)
    costs = {kind: layer_cost(planner.graph.blocks[kind], sharding, micro_batch=layout.micro_batch_size,
                              layout=layout, workload=planner.workload, hw=hw, topo=topo)
             for kind, sharding in item.shardings.items()}
    if "mtp" in planner.graph.blocks:
        costs["mtp"] = _combine(costs["moe"], costs["head"])
    return estimate(planner.graph, costs, item.assignment, layout=layout, workload=planner.workload, hw=hw,
                    topo=topo)


def _predicted(item: Prepared, params: Parameters) -> float:
    est = quick_estimate(item, params)
    if item.case.metric == "hardware_tflops":
        return est.tflops_per_device(hardware=True)
    if item.case.metric == "model_tflops":
        return est.tflops_per_device()
    return est.tokens_per_s / est.num_devices


def loss(items: list[Prepared], params: Parameters) -> float:
    """Mean absolute log error of the predictions."""
    return statistics.fmean(abs(math.log(_predicted(i, params) / i.case.measured)) for i in items)


def fit(items: list[Prepared], start: Parameters, *, rounds: int = 4) -> Parameters:
    """Coordinate descent over multiplicative grids that shrink each round."""
    best, best_loss = start, loss(items, start)
    devices = {TIED.get(i.case.cluster.hardware.name, i.case.cluster.hardware.name) for i in items}
    names = [n for n in start.names() if "[" not in n or n.split("[")[1].rstrip("]") in devices]
    step = 0.3
    for _ in range(rounds):
        for name in names:
            low, high = BOUNDS[name.split("[")[0]]
            center = best.value(name)
            for factor in (1 - step, 1 - step / 2, 1 - step / 4, 1 + step / 4, 1 + step / 2, 1 + step):
                value = min(high, max(low, center + (factor - 1) if name in ADDITIVE else center * factor))
                trial = best.replace(name, float(f"{value:.4g}"))
                trial_loss = loss(items, trial)
                if trial_loss < best_loss - 1e-9:
                    best, best_loss = trial, trial_loss
        step /= 2
    return _fill_unseen(best, devices)


def _fill_unseen(params: Parameters, seen: set[str]) -> Parameters:
    """Devices without runs take the median fitted GEMM efficiency of their family, else of all fitted ones."""
    fitted = {d: e for d, e in params.gemm_efficiency.items() if d in seen}
    gemm = dict(params.gemm_efficiency)
    for device in gemm:
        if device in TIED:
            gemm[device] = gemm[TIED[device]]
            continue
        if device in seen or not fitted:
            continue
        family = [e for d, e in fitted.items() if FAMILIES.get(d) == FAMILIES.get(device, "?")]
        gemm[device] = float(f"{statistics.median(family or list(fitted.values())):.4g}")
    return Parameters(shared=params.shared, gemm_efficiency=gemm)


def starting_point(devices: list[HardwareSpec]) -> Parameters:
    """The parameters as the hardware files hold them now."""
    reference = devices[0].calibration
    shared = {"attention_ratio": reference.attention_efficiency / reference.gemm_efficiency,
              "memory_efficiency": reference.memory_efficiency, "link_efficiency": reference.link_efficiency,
              "dp_overlap": reference.dp_overlap, "mp_overlap": reference.mp_overlap,
              "kernel_overhead_s": reference.kernel_overhead_s}
    return Parameters(shared={k: float(f"{min(BOUNDS[k][1], max(BOUNDS[k][0], v)):.4g}") for k, v in shared.items()},
                      gemm_efficiency={hw.name: hw.calibration.gemm_efficiency for hw in devices})


def predicted_by_planner(case: PublishedCase, params: Parameters) -> float:
    """The full planner's prediction for `case` under `params` (for the final validation)."""
    hw = params.hardware(case.cluster.hardware)
    cluster = ClusterSpec(hardware=hw, num_devices=case.cluster.num_devices)
    request = dataclasses.replace(request_of(case), cluster=cluster)
    _, report = plan_request(request)
    return predicted_metric(report, case.metric)


# The two halves of the honest-generalization check: whole sources on each side, each side with A100 and
# Hopper runs, so that a parameter fitted on one half is judged on sources it never saw.
FOLDS = (
    ("Megatron-LM PTD-P", "torchtitan benchmarks (2024-12", "torchtitan community benchmark"),
    ("Megatron-LM README 'Performance", "torchtitan docs/performance.md (2024,", "torchtitan docs/performance.md (2024-08",
     "torchtitan async-TP", "PaddleNLP"),
)


def fold_of(case: PublishedCase) -> int:
    for index, prefixes in enumerate(FOLDS):
        if case.group.startswith(prefixes):
            return index
    raise ValueError(f"case {case.case_id} (group {case.group!r}) is in no fold; add its source to FOLDS")


def relative_errors(items: list[Prepared], params: Parameters) -> dict:
    """case id -> relative error of the quick re-costing under `params`."""
    return {i.case.case_id: _predicted(i, params) / i.case.measured - 1 for i in items}
