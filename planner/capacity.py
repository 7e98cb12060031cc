"""What-if capacity studies: sweeps over clusters and workloads, and goal seeking, with the full planner.

A `Study` is a model, a training mode, one or more device types and a set of
device counts, sequence lengths and global batches; `sweep` runs the planner's
full search at every point of their cross product and returns one `Row` per
point (the best layout and its predicted step time, throughput, MFU, memory,
and, given the number of training tokens, the days and device-hours to train).
`seek` finds, per device type, the smallest count that fits at all or that
trains the tokens within a target number of days.

Work is reused across points: one `Planner` per (model, workload) keeps the
traced graph, the block shardings (CP-SAT model a) and the per-layer costs, and
serves every cluster of a sweep. Points run in worker processes when `jobs > 1`
(each worker with its own planners); the rows do not depend on `jobs`, because
each point's search depends only on its inputs (the caches memoise pure
functions) -- as long as no CP-SAT solve stops at a wall-clock limit.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable

from cost_models.hardware import ClusterSpec, device_names, load_hardware
from planner.api import resolve
from planner.frontends import ModelSpec
from planner.plan import TRAINING_MODES
from planner.solve.search import NoFeasibleLayout, Planner
from planner.workload import DTYPES as WORKLOAD_DTYPES

GiB = 2**30
SECONDS_PER_DAY = 86400.0
SECONDS_PER_HOUR = 3600.0
MAX_DEVICES = 2**20  # a sanity bound on counts: a million accelerators
_RANGE_RE = re.compile(r"^(\d+)\.\.(\d+)(?::(\d+))?$")


# ---- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Counts:
    """Device counts: an explicit list, or the range lo..hi (doubling from lo, or every `step`)."""

    explicit: tuple[int, ...] = ()
    lo: int = 0
    hi: int = 0
    step: int | None = None  # None: lo, 2 lo, 4 lo, ... (powers of two times lo)

    def __post_init__(self) -> None:
        if self.explicit and (self.lo or self.hi or self.step is not None):
            raise ValueError("device counts: give either a list or a range, not both")
        values = self.explicit or (self.lo, self.hi)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEVICES:
                raise ValueError(f"device count {value!r} must be an integer in 1..{MAX_DEVICES}")
        if not self.explicit and self.lo > self.hi:
            raise ValueError(f"device range {self.lo}..{self.hi} is empty: the start exceeds the end")
        if self.step is not None and (isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1):
            raise ValueError(f"device range step must be a positive integer, got {self.step!r}")
        if len(set(self.explicit)) != len(self.explicit):
            raise ValueError(f"device counts {list(self.explicit)} repeat a value")

    @property
    def is_range(self) -> bool:
        return not self.explicit

    def values(self) -> tuple[int, ...]:
        """The counts a sweep visits, ascending."""
        if self.explicit:
            return tuple(sorted(self.explicit))
        if self.step is not None:
            return tuple(range(self.lo, self.hi + 1, self.step))
        out, count = [], self.lo
        while count <= self.hi:
            out.append(count)
            count *= 2
        return tuple(out)

    def candidates(self, granularity: int | None = None) -> tuple[int, ...]:
        """The counts goal seeking may answer, ascending: a list or stepped range as given; a doubling
        range at lo x 2^k and lo x 3 x 2^(k-1) (1, 1.5, 2, 3, 4, 6, ... x lo: counts whose factors suit
        power-of-two batches and heads), or, given `granularity`, at every multiple of it, with lo and hi."""
        if self.explicit or self.step is not None:
            return self.values()
        if granularity is None:
            out, count = {self.hi}, self.lo
            while count <= self.hi:
                out.add(count)
                if count % 2 == 0 and 3 * count // 2 <= self.hi:
                    out.add(3 * count // 2)
                count *= 2
            return tuple(sorted(out))
        first = -(-self.lo // granularity) * granularity
        return tuple(sorted({self.lo, self.hi, *range(first, self.hi + 1, granularity)}))


def parse_counts(text: str) -> Counts:
    """`256..16384` (doubling), `256..2048:256` (every 256) or `256,512,1024` -> Counts."""
    text = text.strip().replace(" ", "")
    match = _RANGE_RE.match(text)
    if match:
        lo, hi, step = match.groups()
        return Counts(lo=int(lo), hi=int(hi), step=int(step) if step is not None else None)
    items = text.split(",")
    if not text or not all(item.isdigit() for item in items):
        raise ValueError(f"device counts {text!r}: expected LO..HI (doubling), LO..HI:STEP or a list such as "
                         "256,512,1024")
    return Counts(explicit=tuple(int(item) for item in items))


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """One cluster and workload of a study; None: the model's default."""

    device: str
    num_devices: int
    seq_len: int | None = None
    global_batch: int | None = None  # sequences per step
    global_batch_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_devices", "seq_len", "global_batch", "global_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"point: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Study:
    """A model and training mode, swept over device types x counts x sequence lengths x global batches.

    Empty `seq_lens` / batch tuples mean the model's defaults. `train_tokens` (tokens to train on)
    turns throughput into days and device-hours; `prices_per_device_hour` turns those into cost: one price
    for every device type, or one per entry of `devices`, in its order.
    """

    spec: ModelSpec
    devices: tuple[str, ...]  # device names or aliases (plan --list-devices)
    counts: Counts
    seq_lens: tuple[int, ...] = ()
    global_batches: tuple[int, ...] = ()
    global_batch_tokens: tuple[int, ...] = ()
    mode: str = "pretrain"
    dtype: str | None = None  # None: the device's default (bf16, fp16 without bf16)
    train_tokens: int | None = None
    prices_per_device_hour: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not self.devices:
            raise ValueError(f"a study needs at least one device type; known devices: {', '.join(device_names())}")
        canonical = [load_hardware(name).name for name in self.devices]  # ValueError listing the known devices
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"device types {list(self.devices)} name one device twice ({', '.join(canonical)})")
        for label, values in (("sequence length", self.seq_lens), ("global batch", self.global_batches),
                              ("global batch tokens", self.global_batch_tokens)):
            for value in values:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{label} {value!r} must be a positive integer")
            if len(set(values)) != len(values):
                raise ValueError(f"{label}s {list(values)} repeat a value")
        if self.dtype is not None:
            if self.dtype not in WORKLOAD_DTYPES:
                raise ValueError(f"dtype {self.dtype!r} is not one of {', '.join(WORKLOAD_DTYPES)}")
            for name in self.devices:
                load_hardware(name).peak(self.dtype)  # ValueError naming the precisions the device has
        if self.global_batches and self.global_batch_tokens:
            raise ValueError("give either global batches (sequences) or global batch tokens, not both")
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(TRAINING_MODES)}")
        if self.train_tokens is not None and (not isinstance(self.train_tokens, int) or self.train_tokens < 1):
            raise ValueError(f"training tokens must be a positive integer, got {self.train_tokens!r}")
        for price in self.prices_per_device_hour:
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not (math.isfinite(price)
                                                                                      and price >= 0):
                raise ValueError(f"price per device-hour must be a finite number >= 0, got {price!r}")
        if len(self.prices_per_device_hour) not in (0, 1, len(self.devices)):
            raise ValueError(f"{len(self.prices_per_device_hour)} prices per device-hour for "
                             f"{len(self.devices)} device types ({', '.join(self.devices)}): give one price for "
                             "all or one per device type")
        if self.prices_per_device_hour and self.train_tokens is None:
            raise ValueError("a price per device-hour needs the number of training tokens (the cost is of "
                             "training on them)")

    def prices(self) -> dict:
        """Canonical device name -> price per device-hour (empty without prices)."""
        names = [load_hardware(name).name for name in self.devices]
        if not self.prices_per_device_hour:
            return {}
        if len(self.prices_per_device_hour) == 1:
            return dict.fromkeys(names, float(self.prices_per_device_hour[0]))
        return {name: float(price) for name, price in zip(names, self.prices_per_device_hour, strict=True)}

    def workloads(self) -> tuple[tuple[int | None, int | None, int | None], ...]:
        """(seq_len, global_batch, global_batch_tokens) combinations, in the order given."""
        seqs = self.seq_lens or (None,)
        if self.global_batches:
            return tuple((s, b, None) for s in seqs for b in self.global_batches)
        return tuple((s, None, t) for s in seqs for t in self.global_batch_tokens or (None,))

    def points(self) -> tuple[Point, ...]:
        """Every point of the sweep: device type, then workload, then count (ascending)."""
        return tuple(Point(device=d, num_devices=n, seq_len=s, global_batch=b, global_batch_tokens=t)
                     for d in self.devices for s, b, t in self.workloads() for n in self.counts.values())


# ---- outputs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """The planner's answer at one point. Metrics are None where nothing fits or no tokens were given.

    For a point where nothing fits, the memory fields describe the least-overflowing layout.
    """

    model: str
    mode: str
    device: str
    num_devices: int
    seq_len: int
    global_batch: int  # sequences per step
    dtype: str
    fits: bool
    layout: str  # the `--layout` string of the best layout; "" where nothing fits
    step_time_s: float | None
    tokens_per_s: float | None
    mfu: float | None
    params_bytes: float | None  # per device, fullest stage
    grads_bytes: float | None
    optimizer_bytes: float | None
    activations_bytes: float | None
    transient_bytes: float | None
    reserve_bytes: float | None
    memory_bytes: float | None  # total per device
    device_memory_bytes: int  # capacity of one device
    scaling_efficiency: float | None  # tokens/s per device over that of the smallest fitting count of the series
    train_days: float | None
    device_hours: float | None
    cost: float | None
    reason: str  # why nothing fits; "" where a layout fits

    def __post_init__(self) -> None:
        if self.num_devices < 1 or self.seq_len < 1 or self.global_batch < 1:
            raise ValueError(f"row: num_devices, seq_len and global_batch must be >= 1, got "
                             f"{self.num_devices}, {self.seq_len}, {self.global_batch}")
        if self.fits == bool(self.reason):
            raise ValueError(f"row {self.num_devices}x{self.device}: a row that fits has no reason and one that "
                             f"does not fit has one (fits={self.fits}, reason={self.reason!r})")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch

    @property
    def series(self) -> tuple:
        """Rows of one series differ only in device count."""
        return (self.device, self.seq_len, self.global_batch, self.dtype)


MEMORY_PARTS = ("params", "grads", "optimizer", "activations", "transient", "reserve")
COLUMNS = tuple(f.name for f in dataclasses.fields(Row))


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepResult:
    """Rows in the order of `Study.points()`, and the wall time of each point's search (seconds)."""

    rows: tuple[Row, ...]
    wall_s: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Goal:
    """What `seek` looks for: the smallest count that fits (target_days None) or that trains within target_days.

    `granularity`: the step between candidate counts of a doubling range (None: 1, 1.5, 2, 3, 4, 6, ... x lo;
    see Counts.candidates).
    """

    target_days: float | None = None
    granularity: int | None = None

    def __post_init__(self) -> None:
        if self.target_days is not None and not (math.isfinite(self.target_days) and self.target_days > 0):
            raise ValueError(f"target days must be a finite number > 0, got {self.target_days!r}")
        if self.granularity is not None and (isinstance(self.granularity, bool)
                                             or not isinstance(self.granularity, int) or self.granularity < 1):
            raise ValueError(f"granularity must be a positive integer, got {self.granularity!r}")

    def met_by(self, row: Row) -> bool:
        if not row.fits:
            return False
        return self.target_days is None or (row.train_days is not None and row.train_days <= self.target_days)

    def describe(self, train_tokens: int | None) -> str:
        if self.target_days is None:
            return "fits"
        return f"trains {_count(train_tokens or 0)} tokens in {self.target_days:g} days"


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalResult:
    """Goal seeking for one device type and workload.

    answer: the smallest candidate count meeting the goal (None: no candidate does);
    below: the next smaller candidate, evaluated and missing the goal (None when the answer is the first);
    trail: every point evaluated, by ascending count.
    """

    device: str
    answer: Row | None
    below: Row | None
    trail: tuple[Row, ...]

    def __post_init__(self) -> None:
        counts = [r.num_devices for r in self.trail]
        if counts != sorted(set(counts)):
            raise ValueError(f"goal trail counts {counts} must be strictly ascending")


# ---- evaluating points ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Evaluator:
    """Evaluates points of one study, keeping one Planner per workload so that its caches serve every cluster."""

    study: Study
    planners: dict = dataclasses.field(default_factory=dict)  # Workload -> Planner
    prices: dict = dataclasses.field(init=False)  # canonical device name -> price per device-hour

    def __post_init__(self) -> None:
        self.prices = self.study.prices()

    def row(self, point: Point) -> Row:
        study, spec = self.study, self.study.spec
        hw = load_hardware(point.device)
        cluster = ClusterSpec(hardware=hw, num_devices=point.num_devices)
        request = resolve(spec, cluster, seq_len=point.seq_len, global_batch=point.global_batch,
                          global_batch_tokens=point.global_batch_tokens, mode=study.mode, dtype=study.dtype)
        workload = request.workload
        if workload not in self.planners:
            self.planners[workload] = Planner(spec=spec, workload=workload)
        planner = self.planners[workload]
        base = dict(model=spec.name, mode=study.mode, device=hw.name, num_devices=point.num_devices,
                    seq_len=workload.seq_len, global_batch=workload.global_batch, dtype=workload.dtype,
                    device_memory_bytes=hw.memory_bytes, scaling_efficiency=None)
        try:
            best = planner.search(cluster, request.fixed).best
        except NoFeasibleLayout as error:
            least = error.best
            reason = str(error)
            if least is not None:
                reason += (f": the least-overflowing layout ({least.layout.short()}) needs "
                           f"{least.memory['total'] / GiB:.1f} GiB per device, "
                           f"{(least.memory['total'] - hw.memory_bytes) / GiB:.1f} GiB over the "
                           f"{hw.memory_bytes / GiB:.1f} GiB of a {hw.name}")
            memory = _memory_fields(least.memory if least is not None else None)
            return Row(**base, fits=False, layout="", step_time_s=None, tokens_per_s=None, mfu=None, **memory,
                       train_days=None, device_hours=None, cost=None, reason=reason)
        except ValueError as error:  # no layout divides this cluster and batch
            return Row(**base, fits=False, layout="", step_time_s=None, tokens_per_s=None, mfu=None,
                       **_memory_fields(None), train_days=None, device_hours=None, cost=None, reason=str(error))
        est = best.estimate
        days = hours = cost = None
        if study.train_tokens is not None:
            seconds = study.train_tokens / est.tokens_per_s
            days = seconds / SECONDS_PER_DAY
            hours = seconds * point.num_devices / SECONDS_PER_HOUR
            if hw.name in self.prices:
                cost = hours * self.prices[hw.name]
        return Row(**base, fits=True, layout=best.candidate.layout.short(), step_time_s=est.step_time_s,
                   tokens_per_s=est.tokens_per_s, mfu=est.mfu, **_memory_fields(est.memory), train_days=days,
                   device_hours=hours, cost=cost, reason="")


def _memory_fields(memory: dict | None) -> dict:
    if memory is None:
        return {f"{part}_bytes": None for part in MEMORY_PARTS} | {"memory_bytes": None}
    return {f"{part}_bytes": float(memory[part]) for part in MEMORY_PARTS} | {"memory_bytes": float(memory["total"])}


def with_scaling_efficiency(rows: tuple[Row, ...]) -> tuple[Row, ...]:
    """Rows with `scaling_efficiency` set: per-device throughput relative to the smallest fitting count of
    the same series (1.0 there; 0.5 means doubling the devices bought half the per-device throughput)."""
    base: dict = {}
    for row in sorted((r for r in rows if r.fits), key=lambda r: r.num_devices):
        base.setdefault(row.series, row.tokens_per_s / row.num_devices)
    return tuple(dataclasses.replace(r, scaling_efficiency=r.tokens_per_s / r.num_devices / base[r.series])
                 if r.fits else r for r in rows)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScalingLimit:
    """Where adding devices stops paying in one series (rows differing only in device count).

    last_efficient: the largest count whose scaling efficiency is at least `floor`;
    first_inefficient: the smallest count below `floor` (None: every count stays above it);
    peak: the count with the highest throughput (past it, more devices are slower).
    """

    device: str
    seq_len: int
    global_batch: int
    floor: float
    last_efficient: Row
    first_inefficient: Row | None
    peak: Row

    def __post_init__(self) -> None:
        if not 0 < self.floor <= 1:
            raise ValueError(f"scaling efficiency floor must be in (0, 1], got {self.floor!r}")


def scaling_limits(rows: tuple[Row, ...], *, floor: float = 0.8) -> tuple[ScalingLimit, ...]:
    """One ScalingLimit per series with at least two fitting counts, in the order the series first appear."""
    if not 0 < floor <= 1:
        raise ValueError(f"scaling efficiency floor must be in (0, 1], got {floor!r}")
    series: dict = {}
    for row in rows:
        if row.fits:
            series.setdefault(row.series, []).append(row)
    out = []
    for members in series.values():
        if len(members) < 2:
            continue
        members = sorted(members, key=lambda r: r.num_devices)
        below = [r for r in members if r.scaling_efficiency < floor]
        first_below = below[0] if below else None
        efficient = [r for r in members if r.scaling_efficiency >= floor
                     and (first_below is None or r.num_devices < first_below.num_devices)]
        first = members[0]
        out.append(ScalingLimit(device=first.device, seq_len=first.seq_len, global_batch=first.global_batch,
                                floor=floor, last_efficient=efficient[-1], first_inefficient=first_below,
                                peak=max(members, key=lambda r: (r.tokens_per_s, -r.num_devices))))
    return tuple(out)


# ---- running tasks, in process or in worker processes --------------------------------------------


def _sweep_task(study: Study, indexed: tuple[tuple[int, Point], ...], emit: Callable) -> None:
    evaluator = _Evaluator(study=study)
    for index, point in indexed:
        start = time.perf_counter()
        row = evaluator.row(point)
        emit((index, row, time.perf_counter() - start))


def _seek_task(study: Study, goal: Goal, device: str, workload: tuple, emit: Callable) -> GoalResult:
    return _seek_one(_Evaluator(study=study), goal, device, workload, emit)


def _worker(fn: Callable, args: tuple, queue) -> object:
    return fn(*args, queue.put)


def _run(fn: Callable, tasks: list[tuple], jobs: int, on_emit: Callable) -> list:
    """fn(*task, emit) for every task; emit's messages reach on_emit in this process as they happen.

    jobs > 1 runs the tasks in that many worker processes (spawned, so that no solver state or
    thread is forked); results come back in task order.
    """
    if jobs <= 1 or len(tasks) <= 1:
        return [fn(*task, on_emit) for task in tasks]
    import multiprocessing
    from queue import Empty
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                                           mp_context=context) as pool:
        queue = manager.Queue()
        futures = [pool.submit(_worker, fn, task, queue) for task in tasks]
        while True:
            try:
                on_emit(queue.get(timeout=0.1))
                continue
            except Empty:
                pass
            done, pending = wait(futures, timeout=0, return_when=FIRST_EXCEPTION)
            if any(f.exception() is not None for f in done) or not pending:
                break
        while not queue.empty():  # messages sent just before the last task returned
            on_emit(queue.get())
        return [f.result() for f in futures]  # re-raises a worker's exception


def _split(indexed: list[tuple[int, Point]], jobs: int) -> list[tuple[tuple[int, Point], ...]]:
    """Tasks for `jobs` workers: points of one workload stay together (they share a Planner's caches)
    unless there are fewer workloads than workers; then the largest groups are dealt out in turn
    (interleaved by count, so that each worker gets small and large clusters)."""
    groups: dict = {}
    for index, point in indexed:
        groups.setdefault((point.seq_len, point.global_batch, point.global_batch_tokens), []).append((index, point))
    tasks = sorted(groups.values(), key=lambda g: (-len(g), g[0][0]))
    while len(tasks) < jobs and len(tasks[0]) > 1:
        largest = tasks.pop(0)
        tasks += [largest[0::2], largest[1::2]]
        tasks.sort(key=lambda g: (-len(g), g[0][0]))
    return [tuple(t) for t in tasks]


def sweep(study: Study, *, jobs: int = 1, progress: Callable[[Row], None] | None = None) -> SweepResult:
    """Run the full search at every point of `study`; `progress(row)` is called as each point finishes."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    points = study.points()
    rows: list = [None] * len(points)
    wall: list = [0.0] * len(points)

    def collect(message: tuple) -> None:
        index, row, seconds = message
        rows[index], wall[index] = row, seconds
        if progress is not None:
            progress(row)

    tasks = [(study, task) for task in _split(list(enumerate(points)), jobs)]
    _run(_sweep_task, tasks, jobs, collect)
    return SweepResult(rows=with_scaling_efficiency(tuple(rows)), wall_s=tuple(wall))


# ---- goal seeking --------------------------------------------------------------------------------


def _seek_one(evaluator: _Evaluator, goal: Goal, device: str, workload: tuple, emit: Callable) -> GoalResult:
    """Smallest candidate count meeting `goal`: probe counts doubling from the first candidate until one
    meets the goal, then bisect between it and the last probe that missed. Bisection assumes that more
    devices never lose the goal; counts with factors the batch lacks (e.g. 8184 devices for 2048
    sequences) break that, which is why the default candidates are 1, 1.5, 2, 3, 4, 6, ... x lo."""
    hw = load_hardware(device)
    candidates = evaluator.study.counts.candidates(goal.granularity)
    seq_len, global_batch, global_batch_tokens = workload
    evaluated: dict = {}

    def meets(i: int) -> bool:
        if i not in evaluated:
            point = Point(device=device, num_devices=candidates[i], seq_len=seq_len, global_batch=global_batch,
                          global_batch_tokens=global_batch_tokens)
            evaluated[i] = evaluator.row(point)
            emit(evaluated[i])
        return goal.met_by(evaluated[i])

    miss, hit, i = -1, None, 0
    while hit is None:
        if meets(i):
            hit = i
        elif i == len(candidates) - 1:
            break
        else:
            miss = i
            target = 2 * candidates[i]
            i = next((j for j in range(i + 1, len(candidates)) if candidates[j] >= target), len(candidates) - 1)
    if hit is not None:
        while hit - miss > 1:
            mid = (miss + hit) // 2
            if meets(mid):
                hit = mid
            else:
                miss = mid
    trail = with_scaling_efficiency(tuple(evaluated[i] for i in sorted(evaluated)))
    by_count = {r.num_devices: r for r in trail}
    return GoalResult(device=hw.name, answer=by_count[candidates[hit]] if hit is not None else None,
                      below=by_count[candidates[miss]] if hit is not None and miss >= 0 else None, trail=trail)


def seek(study: Study, goal: Goal, *, jobs: int = 1, progress: Callable[[Row], None] | None = None
         ) -> tuple[GoalResult, ...]:
    """Goal seeking per device type and workload of `study` (in the order of `Study.points()`);
    the candidates are `study.counts.candidates(granularity)`. `progress(row)` follows every evaluation."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if goal.target_days is not None and study.train_tokens is None:
        raise ValueError("a target number of days needs the number of training tokens (--tokens)")
    tasks = [(study, goal, device, workload) for device in study.devices for workload in study.workloads()]
    return tuple(_run(_seek_task, tasks, jobs, progress or (lambda row: None)))


# ---- CSV -----------------------------------------------------------------------------------------


def _parse_field(annotation: str, text: str):
    if text == "" and "None" in annotation:
        return None
    base = annotation.replace(" | None", "")
    if base == "bool":
        if text not in ("True", "False"):
            raise ValueError(f"CSV: {text!r} is not True or False")
        return text == "True"
    return {"int": int, "float": float, "str": str}[base](text)


def rows_to_csv(rows: tuple[Row, ...]) -> str:
    """CSV text with a header of `COLUMNS`; floats written with repr, so reading back gives equal rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if getattr(row, c) is None else repr(getattr(row, c)) if isinstance(getattr(row, c), float)
                         else getattr(row, c) for c in COLUMNS])
    return out.getvalue()


def rows_from_csv(text: str) -> tuple[Row, ...]:
    """Rows from `rows_to_csv` text; ValueError naming the column when the header does not match."""
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader, ()))
    if header != COLUMNS:
        raise ValueError(f"CSV header {list(header)} is not the capacity columns {list(COLUMNS)}")
    types = {f.name: f.type for f in dataclasses.fields(Row)}
    return tuple(Row(**{c: _parse_field(types[c], v) for c, v in zip(COLUMNS, record, strict=True)})
                 for record in reader)


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"
