"""Benchmark: a device-count sweep of one model with `planner.capacity.sweep`; prints the wall time and each point's.

    python benchmarks/capacity_sweep.py                       # llama3.1-405b on H100, 256..131072 (10 points)
    python benchmarks/capacity_sweep.py --jobs 2 --devices 256..8192

The goal (issue 7) is under 30 s for the 10-point default on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3.1-405b")
    parser.add_argument("--device", default="H100")
    parser.add_argument("--devices", default="256..131072", help="counts, as for plan capacity --devices")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1: one process, one Planner)")
    args = parser.parse_args()

    from planner.capacity import Study, parse_counts, sweep
    from planner.frontends import load_model
    study = Study(spec=load_model(args.model), devices=(args.device,), counts=parse_counts(args.devices))
    cpu_start, start = os.times(), time.perf_counter()
    result = sweep(study, jobs=args.jobs)
    wall_s, cpu_end = time.perf_counter() - start, os.times()
    cpu_s = (cpu_end.user + cpu_end.system + cpu_end.children_user + cpu_end.children_system
             - cpu_start.user - cpu_start.system - cpu_start.children_user - cpu_start.children_system)
    print(f"{args.model} on {args.device}, {len(result.rows)} points, jobs {args.jobs}, {os.cpu_count()} CPUs")
    print(f"{'devices':>8}  {'search s':>8}  {'step s':>9}  {'MFU %':>6}  layout")
    for row, seconds in zip(result.rows, result.wall_s):
        detail = (f"{row.step_time_s:9.3g}  {100 * row.mfu:6.1f}  {row.layout}" if row.fits
                  else f"{'-':>9}  {'-':>6}  does not fit")
        print(f"{row.num_devices:8d}  {seconds:8.2f}  {detail}")
    print(f"wall {wall_s:.1f} s, CPU {cpu_s:.1f} s (all processes), sum of point times {sum(result.wall_s):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
