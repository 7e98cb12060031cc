"""Time `plan` as a whole process (start-up included): the goals are < 2 s for 8 devices, < 10 s for 16384.

    python benchmarks/plan_speed.py [--repeats 3]

Prints the median wall time of each case over the repeats, and whether paddle was imported.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = (
    ("llama-7b", "8xA100", 2.0),
    ("llama3.1-8b", "8xH100", 2.0),
    ("llama3.1-405b", "16384xH100", 10.0),
    ("gpt3-175b", "16384xA100", 10.0),
    ("deepseek-v3", "2048xH800", None),
)
PROBE = "import sys, runpy; sys.argv = ['plan'] + sys.argv[1:]; " \
        "from tools.plan import main; code = main(sys.argv[1:]); " \
        "print('paddle imported' if 'paddle' in sys.modules else 'paddle not imported', file=sys.stderr); " \
        "sys.exit(code)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    failed = False
    for model, devices, goal in CASES:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", PROBE, "--model", model, "--devices", devices],
                                    capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if result.returncode:
                print(f"{model} on {devices}: exit {result.returncode}: {result.stderr.strip()}")
                return 1
        median = statistics.median(times)
        verdict = "" if goal is None else ("  ok" if median < goal else f"  OVER the {goal:.0f} s goal")
        failed |= goal is not None and median >= goal
        print(f"{model:<14} {devices:<12} median {median:6.2f} s over {args.repeats} runs "
              f"({result.stderr.strip().splitlines()[-1]}){verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
