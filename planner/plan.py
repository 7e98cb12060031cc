"""Plan (what to do) and PlanReport (what it is predicted to cost), with JSON round-trip.

`Plan` is everything the runtime needs to apply a layout; it round-trips
through JSON with a schema version. `PlanReport` carries the prediction and
the solver's account; the plan file holds both, and `Plan.from_json` ignores
the report sections.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

SCHEMA_VERSION = 1
RECOMPUTE_MODES = ("none", "selective", "full")
MESH_AXES = ("pp", "dp", "sep", "mp")  # outermost to innermost: increasing communication intensity
TRAINING_MODES = ("pretrain", "sft", "lora", "dpo")


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """Parallel degrees and schedule knobs (the torchtitan ParallelDims of this project).

    Devices = dp * cp * mp * pp. Expert parallelism reuses data-parallel ranks:
    ep divides dp * cp, and each expert lives on num_experts / ep of them.
    Sharding stage k (ZeRO-k) shards optimizer state (1), gradients (2) and
    parameters (3) over the dp x cp ranks that hold the same weights.
    """

    dp: int = 1
    mp: int = 1
    pp: int = 1
    ep: int = 1
    cp: int = 1
    sharding_stage: int = 0
    micro_batch_size: int = 1
    num_micro_batches: int = 1
    vpp: int = 1
    recompute: str = "none"
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        for name in ("dp", "mp", "pp", "ep", "cp", "micro_batch_size", "num_micro_batches", "vpp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"layout: {name} must be a positive integer, got {value!r}")
        if self.sharding_stage not in (0, 1, 2, 3):
            raise ValueError(f"layout: sharding stage must be one of 0, 1, 2, 3, got {self.sharding_stage!r}")
        if self.recompute not in RECOMPUTE_MODES:
            raise ValueError(f"layout: recompute={self.recompute!r} is not one of {', '.join(RECOMPUTE_MODES)}")
        if (self.dp * self.cp) % self.ep:
            raise ValueError(f"layout: ep={self.ep} must divide dp*cp={self.dp * self.cp} "
                             "(expert parallelism reuses data-parallel ranks)")
        if self.sequence_parallel and self.mp == 1:
            raise ValueError("layout: sequence_parallel needs mp > 1 (it shards the sequence over the mp axis)")
        if self.vpp > 1 and self.pp == 1:
            raise ValueError(f"layout: vpp={self.vpp} needs pp > 1")
        if self.sharding_stage and self.dp * self.cp == 1:
            raise ValueError(f"layout: sharding stage {self.sharding_stage} needs dp*cp > 1 "
                             "(it shards over the ranks that hold the same weights)")

    @property
    def num_devices(self) -> int:
        return self.dp * self.cp * self.mp * self.pp

    @property
    def global_batch_size(self) -> int:
        """Sequences per optimizer step."""
        return self.dp * self.micro_batch_size * self.num_micro_batches

    def mesh_axes(self) -> tuple[tuple[str, int], ...]:
        """(axis name, degree) of the device mesh, outermost first; size-1 axes except pp/dp/mp are left out."""
        degrees = {"pp": self.pp, "dp": self.dp, "sep": self.cp, "mp": self.mp}
        return tuple((axis, degrees[axis]) for axis in MESH_AXES if axis != "sep" or self.cp > 1)

    def short(self) -> str:
        """The `--layout` string that reproduces this layout."""
        return (f"dp={self.dp},mp={self.mp},pp={self.pp},ep={self.ep},cp={self.cp},sharding={self.sharding_stage},"
                f"mbs={self.micro_batch_size},vpp={self.vpp},recompute={self.recompute},sp={int(self.sequence_parallel)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One pipeline stage (or virtual chunk): a contiguous range of layers.

    Layer indices count the embedding as 0, decoder layers as 1..L, the head
    (final norm, lm_head, loss; MTP modules) as L+1.
    """

    index: int  # virtual stage (chunk) index; the device stage is index % pp
    first_layer: int
    last_layer: int  # inclusive
    recompute: tuple[str, ...]  # per layer in [first_layer, last_layer]

    def __post_init__(self) -> None:
        if self.last_layer < self.first_layer:
            raise ValueError(f"stage {self.index}: empty layer range {self.first_layer}..{self.last_layer}")
        if len(self.recompute) != self.last_layer - self.first_layer + 1:
            raise ValueError(f"stage {self.index}: {len(self.recompute)} recompute modes for "
                             f"{self.last_layer - self.first_layer + 1} layers")
        bad = sorted(set(self.recompute) - set(RECOMPUTE_MODES))
        if bad:
            raise ValueError(f"stage {self.index}: recompute modes {bad} not in {RECOMPUTE_MODES}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to do: model, cluster, workload, layout, stage partition and per-parameter placements."""

    model_name: str
    model_config: dict  # ModelSpec.to_dict()
    params: int
    active_params: int
    device: str
    num_devices: int
    devices_per_node: int
    seq_len: int
    mode: str
    dtype: str
    layout: Layout
    stages: tuple[Stage, ...]
    placements: dict  # parameter name pattern -> {mesh axis: "Shard(d)" | "Replicate()"}; absent axes replicate
    parallelize_plan: dict  # Paddle layer name pattern -> ColWiseParallel/RowWiseParallel/... spec
    paddle_config: dict  # the dist.parallelize `config` (dp_config, mp_config, pp_config)
    training_args: dict  # PaddleFormers training-argument fields the layout implies
    unverified_hardware: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"plan: mode={self.mode!r} is not one of {', '.join(TRAINING_MODES)}")
        if self.layout.num_devices != self.num_devices:
            raise ValueError(f"plan: layout uses {self.layout.num_devices} devices, cluster has {self.num_devices}")
        if len(self.stages) != self.layout.pp * self.layout.vpp:
            raise ValueError(f"plan: {len(self.stages)} stages for pp*vpp={self.layout.pp * self.layout.vpp}")

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "model": {"name": self.model_name, "params": self.params, "active_params": self.active_params,
                      "config": self.model_config},
            "cluster": {"device": self.device, "num_devices": self.num_devices,
                        "devices_per_node": self.devices_per_node},
            "workload": {"seq_len": self.seq_len, "global_batch_size": self.layout.global_batch_size,
                         "mode": self.mode, "dtype": self.dtype},
            "layout": dataclasses.asdict(self.layout),
            "mesh": {"shape": [d for _, d in self.layout.mesh_axes()],
                     "dim_names": [a for a, _ in self.layout.mesh_axes()]},
            "degrees": {"dp": self.layout.dp, "mp": self.layout.mp, "pp": self.layout.pp,
                        "ep": self.layout.ep, "cp": self.layout.cp},
            "micro_batching": {"micro_batch_size": self.layout.micro_batch_size,
                               "num_micro_batches": self.layout.num_micro_batches,
                               "global_batch_size": self.layout.global_batch_size},
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "placements": self.placements,
            "parallelize_plan": self.parallelize_plan,
            "paddle": {"parallelize_config": self.paddle_config, "training_args": self.training_args},
            "unverified_hardware": list(self.unverified_hardware),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"plan file: schema_version={version!r}, this planner reads version {SCHEMA_VERSION}")
        try:
            return cls(
                model_name=data["model"]["name"], model_config=data["model"]["config"],
                params=data["model"]["params"], active_params=data["model"]["active_params"],
                device=data["cluster"]["device"], num_devices=data["cluster"]["num_devices"],
                devices_per_node=data["cluster"]["devices_per_node"],
                seq_len=data["workload"]["seq_len"], mode=data["workload"]["mode"], dtype=data["workload"]["dtype"],
                layout=Layout(**data["layout"]),
                stages=tuple(Stage(index=s["index"], first_layer=s["first_layer"], last_layer=s["last_layer"],
                                   recompute=tuple(s["recompute"])) for s in data["stages"]),
                placements=data["placements"], parallelize_plan=data["parallelize_plan"],
                paddle_config=data["paddle"]["parallelize_config"], training_args=data["paddle"]["training_args"],
                unverified_hardware=tuple(data.get("unverified_hardware", ())),
            )
        except KeyError as missing:
            raise ValueError(f"plan file: missing key {missing}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class SolverStats:
    """How the solver reached the plan: CP-SAT status, objective, bound, wall time, search counts."""

    method: str  # "search" or "layout"
    wall_s: float
    candidates: int = 0
    pruned_memory: int = 0
    pruned_bound: int = 0
    evaluated: int = 0
    cp_sat: dict = field(default_factory=dict)  # per model: status, objective, bound, wall_s


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanReport:
    """Predicted cost of a plan, its breakdowns, the runners-up and the solver's account."""

    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_device: float
    model_tflops_per_device: float
    hardware_tflops_per_device: float
    mfu: float
    fits: bool
    memory_bytes_per_device: dict  # "total" and its parts, for the fullest stage
    time_breakdown_s: dict
    alternatives: tuple[dict, ...]
    solver: SolverStats
    notes: tuple[str, ...] = ()

    def predicted_dict(self) -> dict:
        return {
            "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_device": self.tokens_per_s_per_device,
            "model_tflops_per_device": self.model_tflops_per_device,
            "hardware_tflops_per_device": self.hardware_tflops_per_device,
            "mfu": self.mfu, "fits": self.fits,
            "memory_bytes_per_device": self.memory_bytes_per_device,
            "time_breakdown_s": self.time_breakdown_s,
        }


def plan_file_dict(plan: Plan, report: PlanReport) -> dict:
    """The plan file: the plan, plus `predicted`, `alternatives`, `solver` and `notes` from the report."""
    data = plan.to_dict()
    data["predicted"] = report.predicted_dict()
    data["alternatives"] = list(report.alternatives)
    data["solver"] = dataclasses.asdict(report.solver)
    data["notes"] = list(report.notes)
    return data


def dumps_plan_file(plan: Plan, report: PlanReport) -> str:
    """Deterministic JSON text of the plan file (sorted keys, fixed float rounding)."""
    return json.dumps(_round_floats(plan_file_dict(plan, report)), indent=2, sort_keys=True) + "\n"


def _round_floats(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _round_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round_floats(v) for v in value]
    return value
