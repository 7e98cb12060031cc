"""Plots of capacity studies (matplotlib, imported only when a plot is drawn; the Agg canvas, no pyplot).

One figure per study: throughput, MFU and days to train (or per-device throughput) against the
swept quantity, one line per series (device type, and sequence length or batch where those are
not on the x axis), and a stacked memory breakdown per point against each device's capacity.
"""

from __future__ import annotations

from pathlib import Path

from planner.capacity import MEMORY_PARTS, Row
from planner.emit.capacity import describe_workload

GiB = 2**30
MEMORY_LABELS = {"params": "parameters", "grads": "gradients", "optimizer": "optimizer state",
                 "activations": "activations", "transient": "transient buffers", "reserve": "runtime reserve"}
MAX_X_TICKS = 7  # more labels than this collide on a 5-inch axis
MEMORY_CAP = 1.6  # the memory panel's height in device capacities: taller (unfit) bars are clipped and labelled
AXES = (("num_devices", "devices", "device count"), ("seq_len", "seq", "sequence length (tokens)"),
        ("tokens_per_step", "batch", "global batch (tokens per step)"))


def _x_axis(rows: tuple[Row, ...]) -> tuple[str, str, str]:
    """The first of device count, sequence length, batch that varies (device count when none does)."""
    return next((axis for axis in AXES if len({getattr(r, axis[0]) for r in rows}) > 1), AXES[0])


def _series_label(row: Row, rows: tuple[Row, ...], x_key: str) -> str:
    parts = [row.device]
    for key, short, _ in AXES:
        if key != x_key and len({getattr(r, key) for r in rows}) > 1:
            parts.append(f"{short} {getattr(row, key)}")
    return ", ".join(parts)


def plot_rows(rows: tuple[Row, ...], path: str | Path, *, train_tokens: int | None = None,
              target_days: float | None = None) -> None:
    """Write a PNG of `rows` (from `sweep` or the trails of `seek`) to `path`; `target_days` draws the goal."""
    if not rows:
        raise ValueError("plot: no rows to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    x_key, _, x_label = _x_axis(rows)
    series: dict = {}
    for row in rows:
        series.setdefault(_series_label(row, rows, x_key), []).append(row)
    for members in series.values():
        members.sort(key=lambda r: getattr(r, x_key))
    xs = sorted({getattr(r, x_key) for r in rows})

    fig = Figure(figsize=(16, 10), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.15))
    throughput, mfu, third = (fig.add_subplot(grid[0, i]) for i in range(3))
    memory = fig.add_subplot(grid[1, :])
    fig.suptitle(f"Capacity study: {describe_workload(rows)}", fontsize=14)
    colors = {label: f"C{i % 10}" for i, label in enumerate(series)}
    show_days = train_tokens is not None and any(r.train_days is not None for r in rows)

    for label, members in series.items():
        fit = [r for r in members if r.fits]
        x = [getattr(r, x_key) for r in fit]
        style = dict(color=colors[label], marker="o", label=label)
        throughput.plot(x, [r.tokens_per_s for r in fit], **style)
        mfu.plot(x, [100 * r.mfu for r in fit], **style)
        if show_days:
            third.plot(x, [r.train_days for r in fit], **style)
        else:
            third.plot(x, [r.tokens_per_s / r.num_devices for r in fit], **style)
        unfit = [getattr(r, x_key) for r in members if not r.fits]
        for ax in (throughput, mfu, third) if unfit else ():  # at the bottom edge: nothing to plot above them
            ax.plot(unfit, [0.02] * len(unfit), linestyle="none", marker="x", markersize=9, color=colors[label],
                    transform=ax.get_xaxis_transform(), clip_on=False)

    log_x = x_key != "tokens_per_step" or len(xs) > 2
    powers = [x for x in xs if x & (x - 1) == 0]  # label powers of two if several: 1.5x points sit between
    labelled = powers if len(powers) >= 2 else xs
    stride = -(-len(labelled) // MAX_X_TICKS)  # every stride-th, counting from the largest
    x_ticks = labelled[::-1][::stride][::-1]
    for ax, y_label, title in (
            (throughput, "tokens/s (all devices)", "Throughput"),
            (mfu, "MFU (%)", "Model FLOPs utilization"),
            (third, "days" if show_days else "tokens/s per device",
             f"Days to train {_si(train_tokens)} tokens" if show_days else "Throughput per device")):
        if log_x:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(x_ticks, [f"{x:g}" for x in x_ticks])
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    fitting = [r for r in rows if r.fits]
    third_values = [r.train_days if show_days else r.tokens_per_s / r.num_devices for r in fitting]
    for ax, values in ((throughput, [r.tokens_per_s for r in fitting]), (third, third_values)):
        if values and max(values) > 10 * min(values):  # over a decade: log, ticks at 1, 2, 5 x 10^k
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _si(v)))
    if show_days:
        if target_days is not None:
            third.axhline(target_days, color="black", linestyle="--", linewidth=1, label=f"goal: {target_days:g} days")
            third.legend(fontsize=9)
    best_mfu = max((100 * r.mfu for r in rows if r.fits), default=100.0)
    mfu.set_ylim(0, min(100.0, best_mfu * 1.15))
    if any(not r.fits for r in rows):
        throughput.plot([], [], linestyle="none", marker="x", color="gray", label="does not fit")
    throughput.legend(fontsize=9)

    _memory_bars(memory, series, x_key)
    fig.savefig(path, dpi=110)


def _memory_bars(ax, series: dict, x_key: str) -> None:
    """Stacked memory parts per point, grouped by series, with each device's capacity as a red tick."""
    position, ticks, labels = 0.0, [], []
    bottoms: list = []  # (x position, row)
    groups = []
    for label, members in series.items():
        start = position
        for row in members:
            ticks.append(position)
            labels.append(f"{getattr(row, x_key):g}")
            bottoms.append((position, row))
            position += 1
        groups.append((start, position - 1, label))
        position += 0.8  # a gap between series
    for part_index, part in enumerate(MEMORY_PARTS):
        for x, row in bottoms:
            if row.memory_bytes is None:
                continue
            below = sum(getattr(row, f"{p}_bytes") for p in MEMORY_PARTS[:part_index]) / GiB
            ax.bar(x, getattr(row, f"{part}_bytes") / GiB, bottom=below, width=0.75, color=f"C{part_index}",
                   alpha=1.0 if row.fits else 0.45, hatch=None if row.fits else "//", edgecolor="white",
                   linewidth=0.5)
    for x, row in bottoms:
        ax.hlines(row.device_memory_bytes / GiB, x - 0.45, x + 0.45, colors="red", linewidth=2)
        if row.memory_bytes is None:
            ax.text(x, 0, "no layout", rotation=90, ha="center", va="bottom", fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    handles = [Patch(color=f"C{i}", label=MEMORY_LABELS[p]) for i, p in enumerate(MEMORY_PARTS)]
    capacity = Line2D([], [], color="red", linewidth=2, label="device memory")
    unfit = any(not r.fits for _, r in bottoms)
    ax.legend(handles=[*handles, capacity], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9,
              title="hatched: does not fit\n(least-overflowing layout)" if unfit else None, title_fontsize=8)
    ax.set_xticks(ticks, labels)
    capacity_gib = max(r.device_memory_bytes / GiB for _, r in bottoms)
    top = min(max([r.memory_bytes / GiB for _, r in bottoms if r.memory_bytes is not None] + [capacity_gib]),
              MEMORY_CAP * capacity_gib)
    ax.set_ylim(0, top * 1.12)
    for x, row in bottoms:  # bars of layouts far over capacity would flatten the rest: clip them, say how tall
        if row.memory_bytes is not None and row.memory_bytes / GiB > top:
            ax.text(x, top * 0.98, f"{row.memory_bytes / GiB:.0f} GiB", rotation=90, ha="center", va="top",
                    fontsize=8)
    for start, end, label in groups:
        ax.text((start + end) / 2, top * 1.06, label, ha="center", va="center", fontsize=10, fontweight="bold")
    ax.set_xlim(-0.7, ticks[-1] + 0.7)
    ax.set_xlabel(f"{dict((k, lab) for k, _, lab in AXES)[x_key]}, per series")
    ax.set_ylabel("memory per device (GiB, fullest stage)")
    ax.set_title("Memory per device by part")
    ax.grid(True, axis="y", alpha=0.3)


def _si(value: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"
