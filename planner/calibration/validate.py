"""Score published layouts with the planner and compare with what was measured."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from planner.api import DoesNotFit, Request, plan_request
from planner.calibration.cases import PublishedCase
from planner.plan import PlanReport
from planner.solve.search import parse_layout


@dataclass(frozen=True, slots=True, kw_only=True)
class Score:
    """A case's measured and predicted throughput (same unit and FLOP definition)."""

    case: PublishedCase
    predicted: float
    fits: bool
    memory_bytes: float
    layout: str  # the layout the planner scored (the stated knobs plus the searched ones)

    @property
    def error(self) -> float:
        """Relative error of the prediction (+ over-predicts)."""
        return self.predicted / self.case.measured - 1


def predicted_metric(report: PlanReport, metric: str) -> float:
    if metric == "hardware_tflops":
        return report.hardware_tflops_per_device
    if metric == "model_tflops":
        return report.model_tflops_per_device
    return report.tokens_per_s_per_device


def request_of(case: PublishedCase, *, with_layout: bool = True) -> Request:
    return Request(spec=case.spec, cluster=case.cluster, workload=case.workload,
                   fixed=parse_layout(case.layout) if with_layout else {})


def score(case: PublishedCase) -> Score:
    """The published layout scored by the planner (`--layout` path)."""
    try:
        plan, report = plan_request(request_of(case))
    except DoesNotFit as error:
        return Score(case=case, predicted=float("nan"), fits=False, memory_bytes=float("nan"), layout=str(error))
    return Score(case=case, predicted=predicted_metric(report, case.metric), fits=report.fits,
                 memory_bytes=report.memory_bytes_per_device["total"], layout=plan.layout.short())


def summary(scores: list[Score]) -> dict:
    """Median and 90th-percentile absolute relative error and the count."""
    errors = sorted(abs(s.error) for s in scores if s.fits)
    if not errors:
        return {"count": 0, "median": float("nan"), "p90": float("nan")}
    p90 = errors[min(len(errors) - 1, int(round(0.9 * (len(errors) - 1))))]
    return {"count": len(errors), "median": statistics.median(errors), "p90": p90}
