"""`plan validate`: the cost model against published training runs, and the planner against their authors.

    plan validate [--cases ../shared/published_runs.json] [--no-search]

For every case with a measured throughput and a layout it scores the published layout (the
`--layout` path), prints published vs predicted and the error, then a summary line (median and
90th-percentile absolute error). It then searches the same model, devices and batch freely and
prints the ratio of the planner's predicted throughput to the published layout's, with the knobs
that differ. Finally it checks that every published layout that names its degrees fits in memory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from planner.api import DoesNotFit, plan_request
from planner.calibration.cases import load_cases, load_layout_cases
from planner.calibration.validate import predicted_metric, request_of, score, summary

DEFAULT_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "published_runs.json"
UNITS = {"hardware_tflops": "TFLOP/s (hw)", "model_tflops": "TFLOP/s", "tokens_per_s": "tokens/s"}


def _knob_diff(published: str, chosen: str) -> str:
    a = dict(item.split("=") for item in published.split(","))
    b = dict(item.split("=") for item in chosen.split(","))
    return ", ".join(f"{k} {a[k]}->{b[k]}" for k in a if a[k] != b[k]) or "same layout"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plan validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--no-search", action="store_true", help="skip the plan-quality comparison")
    args = parser.parse_args(argv)
    if not args.cases.is_file():
        print(f"plan validate: no cases file at {args.cases}", file=sys.stderr)
        return 2
    cases, skipped = load_cases(args.cases)
    print(f"{'case':<62} {'device':<10} {'unit':<13} {'published':>9} {'predicted':>9} {'error':>7}")
    scores = []
    for case in cases:
        s = score(case)
        scores.append(s)
        shown = f"{s.predicted:9.1f} {100 * s.error:+6.1f}%" if s.fits else "  does not fit"
        print(f"{case.case_id[:62]:<62} {case.cluster.hardware.name:<10} {UNITS[case.metric]:<13} "
              f"{case.measured:9.1f} {shown}")
    stats = summary(scores)
    print(f"summary: median |error| {100 * stats['median']:.1f} %, 90th percentile {100 * stats['p90']:.1f} %, "
          f"{stats['count']} cases")
    for s in skipped:
        print(f"left out: {s.case_id}: {s.reason}")
    if not args.no_search:
        print("\nplan quality: planner's choice / published layout (predicted throughput), same model, devices, batch")
        worst = float("inf")
        for s in scores:
            if not s.fits:
                continue
            plan, report = plan_request(request_of(s.case, with_layout=False))
            ratio = predicted_metric(report, "tokens_per_s") / (s.predicted if s.case.metric == "tokens_per_s"
                                                                  else _tokens(s))
            worst = min(worst, ratio)
            print(f"{s.case.case_id[:62]:<62} {ratio:6.3f}  {_knob_diff(s.layout, plan.layout.short())}")
        print(f"lowest ratio {worst:.3f}")
    print("\nmemory: published layouts that name their degrees")
    layout_cases, _ = load_layout_cases(args.cases)
    overflow = 0
    for case in layout_cases:
        try:
            _, report = plan_request(request_of(case))
            used = report.memory_bytes_per_device["total"] / 2**30
            verdict = f"fits: {used:.1f} of {case.cluster.hardware.memory_bytes / 2**30:.1f} GiB"
        except DoesNotFit as error:
            overflow += 1
            verdict = f"OVERFLOWS: {error}"
        print(f"{case.case_id[:62]:<62} {verdict}")
    print(f"{len(layout_cases) - overflow} of {len(layout_cases)} published layouts fit")
    return 0


def _tokens(s) -> float:
    """The published layout's predicted tokens/s per device (for TFLOP/s cases)."""
    _, report = plan_request(request_of(s.case))
    return report.tokens_per_s_per_device


if __name__ == "__main__":
    sys.exit(main())
