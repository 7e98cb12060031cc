"""Apply a planner Plan to a Paddle model: mesh, dist.parallelize, sharded data loader, dist.to_static.

The Plan says what to do in Paddle's own vocabulary (layer-name patterns with
ColWiseParallel/RowWiseParallel, a sharding level, pipeline split points);
this module checks that the plan fits this launch and this model, and then
makes the calls. Nothing here decides a layout.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paddle

    from planner.frontends.spec import ModelSpec
    from planner.plan import Plan

log = logging.getLogger(__name__)

# The parallel styles a plan file may name: the paddle.distributed plan classes whose arguments are plain values.
STYLES = ("ColWiseParallel", "RowWiseParallel", "SequenceParallelBegin", "SequenceParallelEnd",
          "SequenceParallelEnable", "SequenceParallelDisable")
SPLIT_POINTS = ("END",)  # Paddle 3.3.1 implements only SplitPoint.END


class PlanMismatchError(ValueError):
    """The plan cannot be applied to this launch or this model; the message is one line saying why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """What this process was started as: world size, own rank, and the planner's name of its device."""

    world_size: int
    rank: int
    device: str  # "cpu", or a device name of cost_models/hardware such as "H100-SXM"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"launch: rank {self.rank} of world size {self.world_size} is impossible")
        if not self.device:
            raise ValueError("launch: device name must not be empty")


def planner_device_name(detected: str) -> str:
    """The planner's name for an accelerator as the driver reports it ("NVIDIA H100 80GB HBM3" -> "H100-SXM"):
    the longest leading run of its words that names a device or alias in cost_models/hardware, else the
    words joined by "-"."""
    from cost_models.hardware import load_hardware

    words = re.split(r"[\s-]+", detected.upper().replace("NVIDIA", " ").strip())
    for count in range(len(words), 0, -1):
        try:
            return load_hardware("-".join(words[:count])).name
        except ValueError:
            continue
    return "-".join(words)


def detect_launch() -> Launch:
    """World size and rank from paddle.distributed.launch's environment; device from the Paddle build."""
    import paddle

    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    rank = int(os.environ.get("PADDLE_TRAINER_ID", "0"))
    if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        device = planner_device_name(paddle.device.cuda.get_device_name())
    else:
        device = "cpu"
    return Launch(world_size=world, rank=rank, device=device)


def devices_string(launch: Launch) -> str:
    """The planner's `devices` argument for this launch, e.g. "2xcpu"."""
    return f"{launch.world_size}x{launch.device}"


# ---- checks ---------------------------------------------------------------------------------

def check_plan(plan: "Plan", spec: "ModelSpec", launch: Launch) -> None:
    """Raise PlanMismatchError unless `plan` is for this launch (device count and type) and this model."""
    if plan.num_devices != launch.world_size:
        raise PlanMismatchError(f"the plan is for {plan.num_devices} devices but this launch has {launch.world_size} "
                                f"processes; launch with --nproc_per_node {plan.num_devices} or re-plan")
    if not _same_device(plan.device, launch.device):
        raise PlanMismatchError(f"the plan is for device {plan.device!r} but this launch runs on {launch.device!r}; "
                                "re-plan for this device")
    if plan.model_name != spec.name:
        raise PlanMismatchError(f"the plan is for model {plan.model_name!r}, not {spec.name!r}")
    if plan.model_config != spec.to_dict():
        changed = sorted(k for k in set(plan.model_config) | set(spec.to_dict())
                         if plan.model_config.get(k) != spec.to_dict().get(k))
        raise PlanMismatchError(f"the plan's copy of model {spec.name!r} differs in {changed}; re-plan")
    layout = plan.layout
    if layout.ep > 1 or layout.cp > 1:
        raise PlanMismatchError(f"the runtime applies dp, mp, pp and sharding; ep={layout.ep}, cp={layout.cp} "
                                "have no auto-parallel implementation here (valid: ep=1, cp=1)")
    _check_divides(plan, spec)


def _same_device(planned: str, found: str) -> bool:
    """Whether two device names (canonical or alias, any case) denote the same cost_models/hardware entry."""
    from cost_models.hardware import load_hardware

    def canonical(name: str) -> str:
        try:
            return load_hardware(name).name.upper()
        except ValueError:
            return name.upper()

    return canonical(planned) == canonical(found)


def _check_divides(plan: "Plan", spec: "ModelSpec") -> None:
    layout = plan.layout
    mp = layout.mp
    sizes = {"num_attention_heads": spec.num_attention_heads, "num_kv_heads": spec.num_kv_heads,
             "intermediate_size": spec.intermediate_size}
    if spec.moe is not None:
        sizes["expert_intermediate_size"] = spec.moe.expert_intermediate_size
    # Embedding weights are [vocab, hidden], lm_head weights [hidden, vocab]: the style says which one is split.
    split_dim = {"model.embed_tokens": {"ColWiseParallel": "hidden_size", "RowWiseParallel": "vocab_size"},
                 "lm_head": {"ColWiseParallel": "vocab_size", "RowWiseParallel": "hidden_size"}}
    for pattern, entries in plan.parallelize_plan.items():
        for layer, by_style in split_dim.items():
            if not _matches_name(pattern, layer):
                continue
            for entry in entries if isinstance(entries, list) else [entries]:
                if isinstance(entry, dict) and entry.get("style") in by_style:
                    name = by_style[entry["style"]]
                    sizes[name] = getattr(spec, name)
    for name, size in sizes.items():
        if size % mp:
            raise PlanMismatchError(f"mp={mp} does not divide {name}={size} of model {spec.name!r}")
    if layout.pp * layout.vpp > spec.num_layers:
        raise PlanMismatchError(f"pp*vpp={layout.pp * layout.vpp} stages exceed the {spec.num_layers} layers of "
                                f"model {spec.name!r}")
    covered = [layer for stage in sorted(plan.stages, key=lambda s: s.index)
               for layer in range(stage.first_layer, stage.last_layer + 1)]
    if covered != list(range(spec.num_layers + 2)):
        raise PlanMismatchError(f"the plan's stages cover layers {covered[:3]}..{covered[-3:]}, "
                                f"not 0..{spec.num_layers + 1} "
                                "(embedding, decoder layers, head) in order")


# ---- layer-name patterns --------------------------------------------------------------------

def _matches_name(pattern: str, name: str) -> bool:
    """Paddle's rule (tensor_parallel.match_layer): the pattern is a regex that must span the whole name."""
    found = re.match(pattern, name)
    return pattern == name or (found is not None and found.end() - found.start() == len(name))


def pattern_matches(pattern: str, model: "paddle.nn.Layer") -> list[str]:
    """Names of the sublayers (or `layer.param` tensors) of `model` that `pattern` selects, as Paddle matches them."""
    hits = []
    for name, layer in model.named_sublayers():
        if _matches_name(pattern, name):
            hits.append(name)
            continue
        prefix, _, attr = pattern.rpartition(".")
        if prefix and hasattr(layer, attr) and _is_tensor(getattr(layer, attr)) and _matches_name(prefix, name):
            hits.append(f"{name}.{attr}")
    return hits


def _is_tensor(value) -> bool:
    """A dygraph Tensor, or (inside dist.to_static tracing) a PIR Value."""
    import paddle

    return paddle.is_tensor(value)


def check_patterns(patterns, model: "paddle.nn.Layer", *, what: str) -> None:
    """Raise PlanMismatchError naming every pattern that matches no layer of `model`."""
    unmatched = [pattern for pattern in patterns if not pattern_matches(pattern, model)]
    if unmatched:
        sample = [name for name, _ in model.named_sublayers()][:12]
        raise PlanMismatchError(f"{what} patterns match no layer of {type(model).__name__}: {unmatched} "
                                f"(layer names look like {sample})")


def tensor_parallel_plan(parallelize_plan: dict) -> dict:
    """The plan file's {pattern: {"style": name, **kwargs} | [...]} as {pattern: paddle.distributed plan objects}."""
    import paddle.distributed as dist

    built = {}
    for pattern, entries in parallelize_plan.items():
        objects = []
        for entry in entries if isinstance(entries, list) else [entries]:
            if not isinstance(entry, dict) or entry.get("style") not in STYLES:
                raise PlanMismatchError(f"parallelize_plan[{pattern!r}]: {entry!r} needs a 'style' in "
                                        f"{', '.join(STYLES)}")
            kwargs = {k: v for k, v in entry.items() if k != "style"}
            try:
                objects.append(getattr(dist, entry["style"])(**kwargs))
            except TypeError as err:
                raise PlanMismatchError(f"parallelize_plan[{pattern!r}]: {entry['style']} rejects {kwargs}: "
                                        f"{err}") from None
        built[pattern] = objects[0] if len(objects) == 1 else objects
    return built


# ---- pipeline split -------------------------------------------------------------------------

def stage_split_names(plan: "Plan") -> list[str]:
    """Layer after which each device stage but the last ends (plan layer 0 = embedding, k = model.layers.{k-1})."""
    layout = plan.layout
    stages = sorted(plan.stages, key=lambda s: s.index)
    if layout.vpp > 1:
        # Interleaved schedule: Paddle's VPP pass cuts the decoder layers into virtual chunks itself
        # (Strategy.pipeline.vpp_seg_method); parameters are placed by an even split over the pp devices.
        per_device = (stages[-1].last_layer - 1) // layout.pp
        return [f"model.layers.{per_device * (k + 1) - 1}" for k in range(layout.pp - 1)]
    return ["model.embed_tokens" if stage.last_layer == 0 else f"model.layers.{stage.last_layer - 1}"
            for stage in stages[:-1]]


def pipeline_split_spec(plan: "Plan") -> dict:
    """The pp_config split_spec {layer name: "END"} of the device stages, checked against the plan's paddle_config.

    With virtual stages the plan file may list every chunk boundary; Paddle takes the pp - 1 device
    boundaries and cuts the chunks itself, so only those are returned.
    """
    derived = {name: "END" for name in stage_split_names(plan)}
    given = plan.paddle_config.get("pp_config", {}).get("split_spec")
    if given is None or plan.layout.vpp > 1:
        return derived
    if not isinstance(given, dict) or any(v not in SPLIT_POINTS for v in given.values()):
        raise PlanMismatchError(f"pp_config.split_spec must map layer names to one of {SPLIT_POINTS}, got {given!r}")
    if list(given) != list(derived):
        raise PlanMismatchError(f"pp_config.split_spec {list(given)} disagrees with the plan's stages {list(derived)}")
    return dict(given)


# ---- mesh and parallelize -------------------------------------------------------------------

def build_mesh(plan: "Plan") -> "paddle.distributed.ProcessMesh":
    """ProcessMesh over ranks 0..n-1 with the plan's axes; a pp axis only when pp > 1 (see stage_meshes)."""
    import numpy as np
    import paddle.distributed as dist

    axes = [(name, degree) for name, degree in plan.layout.mesh_axes() if name != "pp" or degree > 1]
    ranks = np.arange(plan.num_devices).reshape([degree for _, degree in axes])
    return dist.ProcessMesh(ranks.tolist(), dim_names=[name for name, _ in axes])


def stage_meshes(mesh) -> list:
    """One sub-mesh per pipeline stage (the mesh itself without pp); its first axis is dp."""
    if "pp" not in mesh.dim_names:
        return [mesh]
    return [mesh.get_mesh_with_dim("pp", k) for k in range(mesh.get_dim_size("pp"))]


def parallelize_config(plan: "Plan", model: "paddle.nn.Layer", *, to_static: bool = False) -> dict:
    """The dist.parallelize `config` for `plan`, with every layer name checked against `model`.

    For to_static, a column-parallel lm_head keeps its vocabulary-sharded logits (gather_output is
    dropped): with the gather, Paddle 3.3.1's static matmul-grad SPMD rule rejects the backward pass
    ("matmul grad infer spmd verify error"), and the loss reads sharded logits to the same result.
    """
    import paddle.distributed as dist

    layout = plan.layout
    config = {}
    if layout.pp > 1:
        split = pipeline_split_spec(plan)
        check_patterns(split, model, what="pipeline split_spec")
        config["pp_config"] = {"split_spec": {name: dist.SplitPoint.END for name in split}}
    if layout.mp > 1:
        mp_plan = plan.paddle_config.get("mp_config", {}).get("parallelize_plan", plan.parallelize_plan)
        if mp_plan != plan.parallelize_plan:
            raise PlanMismatchError("paddle_config.mp_config.parallelize_plan differs from the plan's parallelize_plan")
        if not mp_plan:
            log.warning("the plan has mp=%d and an empty parallelize_plan: every layer is replicated over mp",
                        layout.mp)
        else:
            check_patterns(mp_plan, model, what="parallelize_plan")
            if to_static:
                mp_plan = {pattern: _without_head_gather(pattern, entries) for pattern, entries in mp_plan.items()}
            config["mp_config"] = {"parallelize_plan": tensor_parallel_plan(mp_plan)}
    if layout.dp > 1:
        level = plan.paddle_config.get("dp_config", {}).get("sharding_level", layout.sharding_stage)
        if level != layout.sharding_stage:
            raise PlanMismatchError(f"dp_config.sharding_level={level} disagrees with layout sharding_stage="
                                    f"{layout.sharding_stage}")
        config["dp_config"] = {"sharding_level": layout.sharding_stage}
    return config


def _without_head_gather(pattern: str, entries):
    if not _matches_name(pattern, "lm_head"):
        return entries
    fixed = [{k: v for k, v in entry.items() if k != "gather_output"} if isinstance(entry, dict) else entry
             for entry in (entries if isinstance(entries, list) else [entries])]
    if fixed != (entries if isinstance(entries, list) else [entries]):
        log.info("to_static: %s keeps vocabulary-sharded logits (gather_output dropped)", pattern)
    return fixed if isinstance(entries, list) else fixed[0]


def move_stage_inputs(model: "paddle.nn.Layer") -> None:
    """Pipeline stages: Paddle's split hooks move only a stage's outputs; decoder layers also receive
    tensors such as the rotary (cos, sin) tuple computed on the first stage. Reshard every dist tensor
    argument (also inside tuples and lists) onto the mesh of the layer's own parameters."""
    import paddle.distributed as dist

    def to_mesh(value, mesh):
        if isinstance(value, (tuple, list)):
            return type(value)(to_mesh(v, mesh) for v in value)
        if _is_tensor(value) and value.is_dist() and value.process_mesh != mesh:
            return dist.reshard(value, mesh, value.placements)
        return value

    def hook_for(mesh):
        def hook(layer, args, kwargs):
            return to_mesh(tuple(args), mesh), {k: to_mesh(v, mesh) for k, v in kwargs.items()}
        return hook

    for layer in model.model.layers:
        mesh = next(iter(layer.parameters())).process_mesh
        layer.register_forward_pre_hook(hook_for(mesh), with_kwargs=True)


__all__ = ["Launch", "PlanMismatchError", "STYLES", "detect_launch", "devices_string", "check_plan",
           "pattern_matches", "check_patterns", "tensor_parallel_plan", "stage_split_names", "pipeline_split_spec",
           "build_mesh", "stage_meshes", "parallelize_config", "move_stage_inputs"]
