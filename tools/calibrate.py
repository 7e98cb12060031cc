"""Fit the cost models' calibration to published runs, check it on held-out sources, write it.

    python -m tools.calibrate                 # fit, cross-validate by source, print
    python -m tools.calibrate --write         # ... and store the fit in cost_models/hardware/*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from importlib import resources
from pathlib import Path

from cost_models.hardware import device_names, load_hardware
from planner.calibration import fit as calibration
from planner.calibration.cases import load_cases

DEFAULT_CASES = Path(__file__).resolve().parents[1].parent / "shared" / "published_runs.json"


def _stats(errors: list[float]) -> str:
    errors = sorted(abs(e) for e in errors)
    p90 = errors[min(len(errors) - 1, int(round(0.9 * (len(errors) - 1))))]
    return f"median {100 * statistics.median(errors):.1f} %, p90 {100 * p90:.1f} %, n={len(errors)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="calibrate", description=__doc__)
    parser.add_argument("--cases", type=Path, default=DEFAULT_CASES)
    parser.add_argument("--write", action="store_true", help="write the fit into the hardware data files")
    args = parser.parse_args(argv)
    cases, skipped = load_cases(args.cases)
    items = calibration.prepare(cases)
    start = calibration.starting_point([load_hardware(n) for n in device_names()])
    print(f"{len(items)} cases with a layout and a measured throughput ({len(skipped)} left out)")
    for held_out in (0, 1):
        train = [i for i in items if calibration.fold_of(i.case) != held_out]
        test = [i for i in items if calibration.fold_of(i.case) == held_out]
        params = calibration.fit(train, start)
        print(f"fit on fold {1 - held_out} ({len(train)} cases): train {_stats(list(calibration.relative_errors(train, params).values()))}; "
              f"held-out fold {held_out}: {_stats(list(calibration.relative_errors(test, params).values()))}")
    params = calibration.fit(items, start)
    print(f"fit on all: {_stats(list(calibration.relative_errors(items, params).values()))}")
    print(json.dumps({"shared": params.shared, "gemm_efficiency": params.gemm_efficiency}, indent=2, sort_keys=True))
    if args.write:
        folder = resources.files("cost_models") / "hardware"
        for name in device_names():
            path = Path(str(folder / f"{name.lower()}.json"))
            data = json.loads(path.read_text())
            if name == "cpu":
                continue
            cal = params.hardware(load_hardware(name)).calibration
            fitted = name in {i.case.cluster.hardware.name for i in items}
            data["calibration"] = {
                "gemm_efficiency": cal.gemm_efficiency, "attention_efficiency": round(cal.attention_efficiency, 4),
                "memory_efficiency": cal.memory_efficiency, "kernel_overhead_s": cal.kernel_overhead_s,
                "link_efficiency": cal.link_efficiency, "dp_overlap": cal.dp_overlap, "mp_overlap": cal.mp_overlap,
                "runtime_reserve_bytes": cal.runtime_reserve_bytes,
                "provenance": ("tools/calibrate.py on ../shared/published_runs.json: gemm_efficiency fitted to this "
                               "device's runs" if fitted else
                               "tools/calibrate.py: no published run on this device; gemm_efficiency from its "
                               "architecture family's fit or its prior")
                              + "; attention, memory, link, overlap and kernel-overhead values shared by all devices"}
            path.write_text(json.dumps(data, indent=2) + "\n")
        print("wrote cost_models/hardware/*.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
