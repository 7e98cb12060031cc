"""The training loop shared by every mode: plan -> parallel model -> steps -> metrics.jsonl.

Per optimizer step the loop consumes `global_batch_size` sequences in
`num_micro_batches` micro-batches of `dp * micro_batch_size` sequences
(a pipeline plan hands the whole step to the pipeline schedule instead).
Rank 0 appends one JSON line per logged step to `output_dir/metrics.jsonl`:
`step` (1-based), `loss` (mean over the step's tokens), `tokens_per_s`
(global batch tokens over the step's wall time), `step_time_s`, `lr`,
`tokens` (consumed so far).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import paddle  # the training loop is Paddle throughout; the planner-side modules stay paddle-free
import paddle.distributed as dist

from runtime.apply import (
    Launch,
    PlanMismatchError,
    build_mesh,
    check_plan,
    detect_launch,
    devices_string,
    move_stage_inputs,
    parallelize_config,
    stage_meshes,
)
from runtime.args import TrainArgs
from runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from runtime.cpu_shims import apply_cpu_shims
from runtime.models import build_model
from runtime.modes import load_mode

if TYPE_CHECKING:
    from planner.frontends.spec import ModelSpec
    from planner.plan import Plan

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.jsonl"
PLAN_FILE = "plan.json"  # the plan the run applied, whatever its source (a file, "auto", a layout string)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMetrics:
    """What one logged step measured (rank 0's view; the loss is the global mean)."""

    step: int
    loss: float
    tokens_per_s: float
    step_time_s: float
    lr: float
    tokens: int

    def to_json(self) -> str:
        return json.dumps({"step": self.step, "loss": self.loss, "tokens_per_s": self.tokens_per_s,
                           "step_time_s": self.step_time_s, "lr": self.lr, "tokens": self.tokens})


# ---- plan and model -------------------------------------------------------------------------

def load_spec(model: str) -> "ModelSpec":
    from planner.frontends import load_model

    return load_model(model)


def resolve_plan(args: TrainArgs, spec: "ModelSpec", launch: Launch) -> "Plan":
    """args.plan as a Plan: a plan file, or planned here ("auto", or a layout string like "dp=2,mp=1")."""
    from planner.plan import Plan

    if args.plan.endswith(".json") or Path(args.plan).is_file():
        try:
            plan = Plan.from_dict(json.loads(Path(args.plan).read_text()))
        except OSError as err:
            raise PlanMismatchError(f"cannot read plan file {args.plan}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise PlanMismatchError(f"plan file {args.plan} is not valid JSON ({err})") from None
    else:
        from planner.api import make_plan

        mode = load_mode(args.mode)
        plan, _ = make_plan(spec, devices_string(launch), seq_len=args.seq_length or None,
                            global_batch=args.global_batch_size or None,
                            layout=None if args.plan == "auto" else args.plan, mode=args.mode,
                            **(mode.plan_options(args) if mode.plan_options else {}))
        log.info("plan for %s (%s): %s", devices_string(launch), args.plan, plan.layout.short())
    if args.seq_length and args.seq_length != plan.seq_len:
        raise PlanMismatchError(f"the plan is for seq_length {plan.seq_len}, the arguments ask for {args.seq_length}")
    if args.global_batch_size and args.global_batch_size != plan.layout.global_batch_size:
        raise PlanMismatchError(f"the plan is for a global batch of {plan.layout.global_batch_size} sequences, the "
                                f"arguments ask for {args.global_batch_size}")
    if plan.mode != args.mode:
        raise PlanMismatchError(f"the plan is for mode {plan.mode!r}, the arguments ask for {args.mode!r}")
    return plan


def pipeline_schedule(args: TrainArgs, plan: "Plan") -> str:
    """The static pipeline schedule: args.pipeline_schedule, or with "auto" the plan's (1F1B; VPP with
    virtual stages). 1F1B and VPP deadlock on CPU (gloo sends are synchronous), so "auto" picks FThenB
    there; it computes the same gradients, with all micro-batches' activations alive at once."""
    if args.pipeline_schedule != "auto":
        return args.pipeline_schedule
    if not paddle.is_compiled_with_cuda():
        return "FThenB"
    planned = plan.paddle_config.get("pp_config", {}).get("schedule_mode")
    return planned or ("VPP" if plan.layout.vpp > 1 else "1F1B")


def apply_recompute(model, plan: "Plan") -> None:
    """Recompute per decoder layer as the plan's stages say: "full" recomputes the whole layer in the
    backward pass, "selective" only its attention block (self_attn), "none" keeps activations."""
    from paddle.distributed.fleet.utils import recompute

    modes = [mode for stage in sorted(plan.stages, key=lambda s: s.index) for mode in stage.recompute][1:-1]
    for layer, mode in zip(model.model.layers, modes, strict=True):
        if mode == "none":
            continue
        target = layer if mode == "full" else layer.self_attn
        target.forward = _recomputed(target.forward, recompute)


def _recomputed(forward, recompute):
    def run(*args, **kwargs):
        return recompute(forward, *args, **kwargs)
    return run


class CausalLMLogits(paddle.nn.Layer):
    """Maps input_ids [b, s] to logits [b, s, vocab] for any causal LM with the PaddleFormers forward contract."""

    def __init__(self, model):
        super().__init__()
        self.causal_lm = model

    def forward(self, input_ids):
        return self.causal_lm(input_ids=input_ids, return_dict=False)[0]


# ---- optimizer ------------------------------------------------------------------------------

def lr_multiplier(args: TrainArgs, step: int) -> float:
    """Learning-rate factor for optimizer step `step` (0-based): linear warmup, then the decay schedule."""
    if step < args.warmup_steps:
        return (step + 1) / args.warmup_steps
    if args.lr_schedule == "constant":
        return 1.0
    span = max(1, args.max_steps - args.warmup_steps)
    progress = min(1.0, (step - args.warmup_steps) / span)
    floor = args.min_learning_rate / args.learning_rate if args.learning_rate else 0.0
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if args.lr_schedule == "cosine" else 1 - progress
    return floor + (1 - floor) * shape


def build_optimizer(args: TrainArgs, model):
    """AdamW with global-norm clipping under the warmup + decay schedule of `args` over the trainable
    parameters of `model` (frozen ones, such as LoRA's base weights, get no state); returns (optimizer, schedule)."""
    schedule = paddle.optimizer.lr.LambdaDecay(learning_rate=args.learning_rate,
                                               lr_lambda=lambda step: lr_multiplier(args, step))
    clip = paddle.nn.ClipGradByGlobalNorm(args.max_grad_norm) if args.max_grad_norm > 0 else None
    optimizer = paddle.optimizer.AdamW(learning_rate=schedule, beta1=args.adam_beta1, beta2=args.adam_beta2,
                                       epsilon=args.adam_epsilon, weight_decay=args.weight_decay,
                                       parameters=[p for p in model.parameters() if not p.stop_gradient],
                                       grad_clip=clip)
    return optimizer, schedule


# ---- the loop -------------------------------------------------------------------------------

class Trainer:
    """One training run: builds everything in __init__, trains in run(). Attributes are for callers that
    checkpoint or inspect: model (the parallelized causal LM), optimizer, plan, spec, args, launch, mesh,
    logits_model (what the loss reads its first argument from), loss, static_model (to_static runs)."""

    def __init__(self, args: TrainArgs, *, plan: "Plan | None" = None, launch: Launch | None = None):
        self.args = args
        self.mode = load_mode(args.mode)
        if self.mode.check_args is not None:
            self.mode.check_args(args)
        self.launch = launch or detect_launch()
        self.spec = load_spec(args.model)
        self.plan = plan or resolve_plan(args, self.spec, self.launch)
        check_plan(self.plan, self.spec, self.launch)
        layout = self.plan.layout
        if layout.vpp > 1 and args.to_static is False:
            raise PlanMismatchError(f"vpp={layout.vpp} needs to_static=true (Paddle's VPP schedule is static-only)")
        if layout.pp > 1 and not args.to_static and not paddle.is_compiled_with_cuda():
            raise PlanMismatchError("pipeline stages in dynamic mode crash on CPU builds of Paddle 3.3.1 (cross-mesh "
                                    "reshard); set to_static=true")
        if args.dtype != "float32" and not paddle.is_compiled_with_cuda():
            raise ValueError(f"train args: dtype={args.dtype!r} needs a GPU build (Paddle's AMP does nothing on CPU); "
                             "use float32")
        if self.mode.reference_forward is not None and layout.pp > 1:
            raise PlanMismatchError(f"mode {args.mode!r} keeps a reference model, which the runtime does not split "
                                    f"into pipeline stages; use a plan with pp=1 (got pp={layout.pp})")
        if args.save_interval and args.to_static:
            raise ValueError("train args: save_interval needs to_static=false (checkpoints are saved from the "
                             "dynamic model)")
        shims = apply_cpu_shims()
        if shims:
            log.debug("CPU shims: %s", ", ".join(shims))
        if self.launch.world_size > 1:
            dist.init_parallel_env()

        model = build_model(self.spec, seed=args.seed)
        if self.mode.prepare_model is not None:
            model = self.mode.prepare_model(model, args)
        reference = self._frozen_copy(model) if self.mode.reference_forward is not None else None
        apply_recompute(model, self.plan)
        optimizer, self.lr_schedule = build_optimizer(args, model)
        self.mesh = None
        if self.launch.world_size > 1:
            self.mesh = build_mesh(self.plan)
            dist.auto_parallel.set_mesh(self.mesh)
            config = parallelize_config(self.plan, model, to_static=args.to_static)
            model, optimizer = dist.parallelize(model, optimizer, config=config)
            if layout.pp > 1:
                move_stage_inputs(model)
            if reference is not None:
                # Placed like the policy over mp; sharding level 0 makes every weight a dist tensor on the mesh.
                reference, _ = dist.parallelize(reference, None, config={
                    **parallelize_config(self.plan, reference, to_static=args.to_static),
                    "dp_config": {"sharding_level": 0}})
        self.model, self.optimizer = model, optimizer
        self.logits_model = (CausalLMLogits(model) if reference is None
                             else self.mode.reference_forward(model, reference))
        self.loss = (functools.partial(self.mode.loss, **self.mode.loss_options(args))
                     if self.mode.loss_options is not None else self.mode.loss)

        self.seq_length = self.plan.seq_len
        self.global_batch = layout.global_batch_size
        dataset = self.mode.build_dataset(args, self.spec, args.max_steps * self.global_batch, self.seq_length)
        # A pipeline schedule takes the whole step and cuts micro-batches itself; otherwise the dynamic loop
        # accumulates gradients over them. A static run without pipeline feeds the step as one batch (the same
        # mean loss and gradients): Strategy.gradient_merge breaks Paddle 3.3.1's static reshard pass
        # ("'list' object has no attribute 'get_defining_op'" in s_to_r_reshard_func).
        self.micro_steps = 1 if layout.pp > 1 or args.to_static else layout.num_micro_batches
        loader_batch = self.global_batch // self.micro_steps
        loader = paddle.io.DataLoader(dataset, batch_size=loader_batch, shuffle=False, drop_last=True)
        if self.mesh is None:
            self.loader = loader
        else:
            meshes = stage_meshes(self.mesh)
            self.loader = dist.shard_dataloader(loader, meshes=[meshes[0], meshes[-1]] if layout.pp > 1 else meshes[0],
                                                shard_dims="dp" if layout.dp > 1 else None)
        self.static_model = self._to_static() if args.to_static else None

    def trained_parameters(self) -> dict:
        """{name in self.model: tensor with the trained value}. A to_static run keeps the values in its static
        program (the dynamic parameters are emptied), under the names of logits_model."""
        if self.static_model is None:
            return dict(self.model.named_parameters())
        own = {id(param): name for name, param in self.model.named_parameters()}
        state = self.static_model.state_dict("param")
        return {own[id(param)]: state[name] for name, param in self.logits_model.named_parameters()
                if id(param) in own and name in state}

    def _frozen_copy(self, model):
        """A frozen copy of `model` (same structure and weights), for modes with a reference model."""
        reference = build_model(self.spec, seed=self.args.seed)
        reference.set_state_dict(model.state_dict())
        for param in reference.parameters():
            param.stop_gradient = True
        reference.eval()
        return reference

    def _to_static(self):
        import paddleformers.transformers.configuration_utils as config_utils

        # dy2static recurses forever inside PretrainedConfig.__getattribute__; leave that module as Python.
        paddle.jit.ignore_module([config_utils])
        layout = self.plan.layout
        strategy = dist.Strategy()
        if layout.pp > 1:
            strategy.pipeline.enable = True
            strategy.pipeline.schedule_mode = pipeline_schedule(self.args, self.plan)
            strategy.pipeline.accumulate_steps = layout.num_micro_batches
            strategy.pipeline.micro_batch_size = layout.micro_batch_size
            if layout.vpp > 1:
                strategy.pipeline.vpp_degree = layout.vpp
                strategy.pipeline.vpp_seg_method = type(self.model.model.layers[0]).__name__
        if self.args.dtype != "float32":
            strategy.amp.enable = True
            strategy.amp.dtype = self.args.dtype
            strategy.amp.level = "O1"
        loader = self.loader if self.mesh is not None else dist.shard_dataloader(
            self.loader, meshes=dist.ProcessMesh([0], dim_names=["dp"]))
        static = dist.to_static(self.logits_model, loader, self.loss, self.optimizer, strategy)
        static.train()
        return static

    def run(self) -> list[StepMetrics]:
        """Train args.max_steps steps; returns the logged metrics (on every rank)."""
        from tqdm import tqdm

        args = self.args
        output_dir = Path(args.output_dir)
        is_writer = self.launch.rank == 0
        if is_writer:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / PLAN_FILE).write_text(json.dumps(self.plan.to_dict(), indent=1, sort_keys=True) + "\n")
        tokens_per_step = self.global_batch * self.seq_length
        batches = iter(self.loader)
        first = self._resume(output_dir, batches, is_writer)
        on_terminal = is_writer and sys.stderr.isatty()
        progress = tqdm(total=args.max_steps, initial=first - 1, desc="train", unit="step", disable=not on_terminal)
        history = []
        for step in range(first, args.max_steps + 1):
            lr = self.optimizer.get_lr()
            start = time.perf_counter()
            loss = self._step(batches)
            elapsed = time.perf_counter() - start
            progress.update(1)
            last = step == args.max_steps
            if step % args.log_interval == 0 or last:
                metrics = StepMetrics(step=step, loss=loss, tokens_per_s=tokens_per_step / elapsed,
                                      step_time_s=elapsed, lr=lr, tokens=step * tokens_per_step)
                history.append(metrics)
                progress.set_postfix(loss=f"{loss:.4f}", tok_s=f"{metrics.tokens_per_s:.0f}")
                if is_writer:
                    with open(output_dir / METRICS_FILE, "a") as sink:
                        sink.write(metrics.to_json() + "\n")
                    log.info("step %d/%d loss %.6f tokens/s %.0f lr %.3g", step, args.max_steps, loss,
                             metrics.tokens_per_s, lr)
            if args.save_interval and (step % args.save_interval == 0 or last):
                save_checkpoint(output_dir, step, self.model, self.optimizer,
                                extra={"consumed_samples": step * self.global_batch})
        progress.close()
        if self.mode.finish is not None:
            self.mode.finish(self)
        return history

    def _resume(self, output_dir: Path, batches, is_writer: bool) -> int:
        """Continue from the newest complete checkpoint, if any: the first step to run.

        Model, optimizer, LR schedule and RNG come back from the checkpoint; the data iterator skips the
        batches already consumed; metrics of steps after the checkpoint (a killed run's) are dropped so that
        metrics.jsonl reads as one run.
        """
        latest = latest_checkpoint(output_dir) if self.args.save_interval else None
        if latest is None:
            return 1
        done = load_checkpoint(latest, self.model, self.optimizer)["step"]
        for _ in range(done * self.micro_steps):
            next(batches)
        if is_writer and (output_dir / METRICS_FILE).is_file():
            kept = [line for line in (output_dir / METRICS_FILE).read_text().splitlines()
                    if json.loads(line)["step"] <= done]
            (output_dir / METRICS_FILE).write_text("".join(line + "\n" for line in kept))
        log.info("resumed from %s after step %d", latest, done)
        return done + 1

    def _step(self, batches) -> float:
        """One optimizer step; returns the global mean loss."""
        losses = []
        for _ in range(self.micro_steps):
            inputs, labels = next(batches)
            if self.static_model is not None:
                losses.append(self.static_model(inputs, labels))
                continue
            with self._autocast():
                loss = self.loss(self.logits_model(inputs), labels)
            (loss / self.micro_steps if self.micro_steps > 1 else loss).backward()
            losses.append(_replicated_value(loss))
        if self.static_model is None:
            self.optimizer.step()
            self.optimizer.clear_grad()
        self.lr_schedule.step()
        if self.static_model is not None:
            return self._static_loss(losses)
        return sum(losses) / len(losses)

    def _autocast(self):
        """bfloat16/float16 compute with float32 master weights (AMP O1) when args.dtype asks for it."""
        if self.args.dtype == "float32":
            return contextlib.nullcontext()
        return paddle.amp.auto_cast(dtype=self.args.dtype, level="O1")

    def _static_loss(self, losses) -> float:
        """Static runs return the loss only on ranks of the last pipeline stage: average what the ranks have."""
        held = [float(np.mean(value)) for value in losses if value is not None]
        if self.launch.world_size == 1:
            return sum(held) / len(held)
        total = paddle.to_tensor([sum(held) / len(held) if held else 0.0, 1.0 if held else 0.0], dtype="float64")
        dist.all_reduce(total)
        return float(total[0]) / float(total[1])


def _replicated_value(loss) -> float:
    """The scalar value of a (possibly distributed, possibly partial) loss tensor."""
    if not loss.is_dist():
        return float(loss)
    if any(isinstance(p, dist.Partial) for p in loss.placements):
        loss = dist.reshard(loss, loss.process_mesh, [dist.Replicate()] * len(loss.placements))
    return float(loss._local_value())


def train(args: TrainArgs, *, plan: "Plan | None" = None) -> list[StepMetrics]:
    """Build a Trainer for `args` (and `plan`, else args.plan) and run it."""
    return Trainer(args, plan=plan).run()


__all__ = ["Trainer", "StepMetrics", "train", "resolve_plan", "lr_multiplier", "pipeline_schedule", "apply_recompute",
           "build_optimizer", "load_spec", "CausalLMLogits", "METRICS_FILE", "PLAN_FILE"]
