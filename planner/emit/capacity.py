"""Fixed-width text of capacity studies: sweep tables and goal-seeking answers (deterministic text)."""

from __future__ import annotations

from planner.capacity import Goal, GoalResult, Row, ScalingLimit

GiB = 2**30


def _si(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


def _days(value: float) -> str:
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def describe_workload(rows: tuple[Row, ...]) -> str:
    """One line: model, mode, sequence length(s), global batch(es), precision(s)."""
    def span(values: set, unit: str = "") -> str:
        ordered = sorted(values)
        return f"{ordered[0]}{unit}" if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}{unit}"
    first = rows[0]
    tokens = sorted({r.tokens_per_step for r in rows})
    batch = (f"global batch {span({r.global_batch for r in rows})} sequences "
             f"({'-'.join(_si(t) for t in (tokens[0], tokens[-1]) if t) if len(tokens) > 1 else _si(tokens[0])} "
             f"tokens)")
    return (f"{first.model}, {first.mode}, seq {span({r.seq_len for r in rows})} tokens, {batch}, "
            f"{'/'.join(sorted({r.dtype for r in rows}))}")


def format_rows(rows: tuple[Row, ...], *, train_tokens: int | None = None, prices: dict | None = None) -> str:
    """A table with one line per row; rows where nothing fits point to a numbered reason below the table."""
    def always(row: Row) -> bool:
        return True

    def fits(row: Row) -> bool:
        return row.fits

    def memory_known(row: Row) -> bool:  # a point that does not fit shows its least-overflowing layout's memory
        return row.memory_bytes is not None

    columns = [("device", 10, lambda r: r.device, always), ("devices", 8, lambda r: str(r.num_devices), always)]
    if len({r.seq_len for r in rows}) > 1:
        columns.append(("seq", 7, lambda r: str(r.seq_len), always))
    if len({r.tokens_per_step for r in rows}) > 1:
        columns.append(("batch tok", 10, lambda r: _si(r.tokens_per_step), always))
    columns += [("step s", 9, lambda r: f"{r.step_time_s:.3g}", fits),
                ("tokens/s", 9, lambda r: _si(r.tokens_per_s), fits),
                ("MFU %", 6, lambda r: f"{100 * r.mfu:.1f}", fits)]
    counts_per_series: dict = {}
    for row in rows:
        counts_per_series.setdefault(row.series, set()).add(row.num_devices)
    if any(len(counts) > 1 for counts in counts_per_series.values()):  # efficiency compares counts of a series
        columns.append(("scaling", 8, lambda r: f"{r.scaling_efficiency:.2f}", fits))
    if train_tokens is not None:
        columns += [("days", 7, lambda r: _days(r.train_days), fits),
                    ("device-h", 9, lambda r: _si(r.device_hours), fits)]
        if any(r.cost is not None for r in rows):
            columns.append(("cost", 8, lambda r: f"${_si(r.cost)}", fits))
    columns += [("mem GiB", 8, lambda r: f"{r.memory_bytes / GiB:.1f}", memory_known),
                ("act GiB", 8, lambda r: f"{r.activations_bytes / GiB:.1f}", memory_known)]
    lines = [describe_workload(rows)]
    if train_tokens is not None:
        price = (", per device-hour: " + ", ".join(f"{name} ${value:g}" for name, value in prices.items())
                 if prices else "")
        lines.append(f"training on {_si(train_tokens)} tokens{price}")
    lines.append("  ".join(f"{name:>{width}}" for name, width, _, _ in columns) + "  layout")
    reasons = []
    for row in rows:
        cells = [f"{cell(row) if shown(row) else '-':>{width}}" for _, width, cell, shown in columns]
        if row.fits:
            tail = row.layout
        else:
            reasons.append(row.reason)
            tail = f"does not fit [{len(reasons)}]"
        lines.append("  ".join(cells) + "  " + tail)
    lines += [f"[{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    if any(not r.fits and r.memory_bytes is not None for r in rows):
        lines.append("memory of a point that does not fit: its least-overflowing layout")
    return "\n".join(lines) + "\n"


def format_scaling(limits: tuple[ScalingLimit, ...]) -> str:
    """Per series: up to which count doubling keeps paying, and where throughput peaks."""
    lines = []
    several_seqs = len({limit.seq_len for limit in limits}) > 1
    several_batches = len({limit.global_batch for limit in limits}) > 1
    for limit in limits:
        keep, drop, peak = limit.last_efficient, limit.first_inefficient, limit.peak
        what = (limit.device + (f", seq {limit.seq_len}" if several_seqs else "")
                + (f", batch {limit.global_batch}" if several_batches else ""))
        if drop is None:
            lines.append(f"{what}: per-device throughput stays at or above {100 * limit.floor:.0f} % of the smallest "
                         f"fitting cluster's up to {keep.num_devices} devices (the largest swept)")
        else:
            lines.append(f"{what}: scaling stops paying past {keep.num_devices} devices: at {drop.num_devices} "
                         f"per-device throughput is {100 * drop.scaling_efficiency:.0f} % of the smallest fitting "
                         f"cluster's (floor {100 * limit.floor:.0f} %)")
        lines.append(f"  throughput peaks at {peak.num_devices} devices ({_si(peak.tokens_per_s)} tokens/s)")
    return "\n".join(lines) + ("\n" if lines else "")


def format_goals(results: tuple[GoalResult, ...], goal: Goal, *, train_tokens: int | None = None,
                 prices: dict | None = None) -> str:
    """Per device type and workload: the smallest count meeting the goal, its row, and the check below it."""
    what = goal.describe(train_tokens)
    lines = []
    for result in results:
        searches = len(result.trail)
        if result.answer is None:
            last = result.trail[-1]
            best = max((r for r in result.trail if r.fits), key=lambda r: r.tokens_per_s, default=None)
            detail = (f"; the fastest evaluated, {best.num_devices} devices, takes {_days(best.train_days)} days"
                      if best is not None and best.train_days is not None else "")
            lines.append(f"no count of {result.device} up to {last.num_devices} {what}{detail} "
                         f"({searches} searches)")
            if best is not None and best.train_days is not None:
                lines.append(f"  with {best.global_batch} sequences per step, data parallelism stops at "
                             f"{best.global_batch} ranks; a larger --global-batch lets more devices help")
            if not last.fits:
                lines.append(f"  at {last.num_devices}: {last.reason}")
            continue
        answer = result.answer
        lines.append(f"smallest count of {result.device} that {what}: {answer.num_devices}")
        table = format_rows((answer,), train_tokens=train_tokens, prices=prices)
        lines += ["  " + line for line in table.splitlines()[1:]]
        if result.below is None:
            lines.append(f"  {answer.num_devices} is the first candidate count ({searches} searches)")
        else:
            below = result.below
            miss = (f"{_days(below.train_days)} days" if below.fits and below.train_days is not None
                    else "does not fit")
            lines.append(f"  checked: the next smaller candidate, {below.num_devices}, misses ({miss}); "
                         f"{searches} searches")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
