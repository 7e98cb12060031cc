"""`plan capacity`: what-if capacity studies with the planner. It only translates arguments into library calls.

    plan capacity --model llama3.1-405b --device H100 --devices 256..16384 --tokens 15T
    plan capacity --model deepseek-v3 --device H800,A100 --devices 512..8192 --plot dsv3.png
    plan capacity --model llama3.1-8b --device H100 --devices 64 --seq-len 4096,8192,16384,32768
    plan capacity --model llama3.1-70b --device H100 --tokens 15T --target-days 30
    plan capacity --model llama3.1-405b --device H100 --min-fit

Exit codes: 0 an answer, 2 bad input, 3 goal seeking found no count that meets the goal.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.plan import EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT, parse_count

DEFAULT_SEEK_RANGE = "1..131072"
PARALLEL_MIN_POINTS = 4  # below this, starting worker processes (about a second each) rarely pays


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits 2."""

    def error(self, message: str) -> None:
        print(f"plan capacity: {message} (plan capacity --help shows the options)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _counts_list(text: str) -> tuple[int, ...]:
    """Comma-separated counts with optional K/M/B/T suffixes: 4096,32768 or 4M,16M."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty list")
    return tuple(parse_count(item) for item in text.split(","))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="plan capacity",
                description="What-if capacity studies: sweep clusters and workloads with the full planner, "
                            "or find the smallest cluster that fits or trains within a deadline.")
    p.add_argument("--model", required=True, help="preset name (plan --list-models) or path to a config.json")
    p.add_argument("--device", action="append", required=True,
                   help="device type (plan --list-devices); repeat or comma-separate for several: H800,A100")
    p.add_argument("--devices", help="device counts: LO..HI (doubling: 256..16384), LO..HI:STEP or a list "
                                     f"256,512,1024 (goal seeking: the search range, default {DEFAULT_SEEK_RANGE})")
    p.add_argument("--seq-len", type=_counts_list, default=(), help="sequence lengths, e.g. 4096,32768 "
                                                                    "(default: the model's training length)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--global-batch", type=_counts_list, default=(), help="sequences per step, e.g. 512,1024")
    batch.add_argument("--global-batch-tokens", type=_counts_list, default=(), help="tokens per step, e.g. 4M,16M")
    p.add_argument("--mode", choices=("pretrain", "sft", "lora", "dpo"), default="pretrain")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp8"), help="training precision (default: the device's)")
    p.add_argument("--tokens", type=parse_count, help="tokens to train on (e.g. 15T): adds days and device-hours")
    p.add_argument("--price-per-device-hour", help="price of one device-hour, adds the cost: 2.5 for every device "
                                                   "type, or per type: H800=2.1,A100=1.3")
    p.add_argument("--min-scaling", type=_float, default=0.8,
                   help="sweeps: the per-device throughput, relative to the smallest fitting cluster, below which "
                        "scaling stops paying (default 0.8)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-days", type=_float, help="find the smallest count that trains --tokens in this "
                                                         "many days")
    goal.add_argument("--min-fit", action="store_true", help="find the smallest count on which the model fits")
    p.add_argument("--granularity", type=_positive_int,
                   help="goal seeking: try every multiple of this count in a LO..HI range (default: 1, 1.5, 2, 3, "
                        "4, 6, ... x LO; bisection assumes more devices never hurt, which counts that divide the "
                        "batch poorly can break)")
    p.add_argument("--csv", type=Path, help="write every evaluated point to this CSV file")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput, MFU, days and memory to this file")
    p.add_argument("--jobs", type=_positive_int, help="worker processes (default: the CPU count for sweeps of "
                                                      f"at least {PARALLEL_MIN_POINTS} points, else 1)")
    return p


def _study(args: argparse.Namespace):
    """The Study of the arguments; ValueError for a bad value."""
    from planner.capacity import Study, parse_counts
    from planner.frontends import load_model
    devices = tuple(name.strip() for item in args.device for name in item.split(","))
    if not all(devices):
        raise ValueError(f"--device {','.join(args.device)!r} has an empty name")
    seeking = args.target_days is not None or args.min_fit
    if args.devices is None and not seeking:
        raise ValueError("--devices is required for a sweep (e.g. --devices 256..16384), "
                         "or ask for --target-days / --min-fit")
    if args.target_days is not None and args.tokens is None:
        raise ValueError("--target-days needs --tokens (the number of tokens to train on, e.g. 15T)")
    if args.granularity is not None and not seeking:
        raise ValueError("--granularity applies to goal seeking (--target-days or --min-fit)")
    return Study(spec=load_model(args.model), devices=devices,
                 prices_per_device_hour=_prices(args.price_per_device_hour, devices),
                 counts=parse_counts(args.devices if args.devices is not None else DEFAULT_SEEK_RANGE),
                 seq_lens=args.seq_len, global_batches=args.global_batch,
                 global_batch_tokens=args.global_batch_tokens, mode=args.mode, dtype=args.dtype,
                 train_tokens=args.tokens)


def _prices(text: str | None, devices: tuple[str, ...]) -> tuple[float, ...]:
    """--price-per-device-hour: one number for all device types, or DEVICE=PRICE for each of them."""
    from cost_models.hardware import load_hardware
    if text is None:
        return ()
    items = [item.strip() for item in text.split(",")]
    if len(items) == 1 and "=" not in items[0]:
        return (_number(items[0], "--price-per-device-hour"),)
    given = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--price-per-device-hour {text!r}: give one price, or DEVICE=PRICE for every device")
        given[load_hardware(name).name] = _number(value, "--price-per-device-hour")
    wanted = [load_hardware(name).name for name in devices]
    if set(given) != set(wanted):
        raise ValueError(f"--price-per-device-hour {text!r} prices {', '.join(sorted(given))}; "
                         f"the devices are {', '.join(wanted)}")
    return tuple(given[name] for name in wanted)


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a number") from None


def _progress(total: int | None, description: str):
    """A tqdm bar on a terminal (stderr), nothing otherwise; returns (callback, close)."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=description, unit="point", disable=not sys.stderr.isatty(), leave=False)

    def update(row) -> None:
        bar.set_postfix_str(f"{row.num_devices}x{row.device}", refresh=False)
        bar.update(1)
    return update, bar.close


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from planner.capacity import Goal, rows_to_csv, scaling_limits, seek, sweep
    from planner.emit.capacity import format_goals, format_rows, format_scaling
    try:
        if not 0 < args.min_scaling <= 1:
            raise ValueError(f"--min-scaling must be in (0, 1], got {args.min_scaling:g}")
        study = _study(args)
        goal = (Goal(target_days=args.target_days, granularity=args.granularity)
                if args.target_days is not None or args.min_fit else None)
    except (ValueError, OSError) as error:  # OSError: a config.json path that cannot be read
        print(f"plan capacity: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in (args.csv, args.plot):  # fail before a long sweep, not after it
        if path is not None and not path.parent.is_dir():
            print(f"plan capacity: the folder of {str(path)!r} does not exist", file=sys.stderr)
            return EXIT_BAD_INPUT
    points = len(study.points())
    if args.jobs is not None:
        jobs = args.jobs
    elif goal is not None:
        jobs = os.cpu_count() or 1
    else:
        jobs = (os.cpu_count() or 1) if points >= PARALLEL_MIN_POINTS else 1
    if goal is None:
        update, close = _progress(points, study.spec.name)
        try:
            result = sweep(study, jobs=jobs, progress=update)
        finally:
            close()
        rows = result.rows
        print(format_rows(rows, train_tokens=study.train_tokens, prices=study.prices()), end="")
        print(format_scaling(scaling_limits(rows, floor=args.min_scaling)), end="")
        status = 0
    else:
        update, close = _progress(None, f"{study.spec.name} goal seeking")
        try:
            results = seek(study, goal, jobs=jobs, progress=update)
        finally:
            close()
        rows = tuple(row for r in results for row in r.trail)
        print(format_goals(results, goal, train_tokens=study.train_tokens, prices=study.prices()), end="")
        status = 0 if all(r.answer is not None for r in results) else EXIT_DOES_NOT_FIT
    if args.csv is not None:
        args.csv.write_text(rows_to_csv(rows))
    if args.plot is not None:
        from planner.emit.plots import plot_rows
        plot_rows(rows, args.plot, train_tokens=study.train_tokens,
                  target_days=goal.target_days if goal is not None else None)
    return status


if __name__ == "__main__":
    sys.exit(main())
