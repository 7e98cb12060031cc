"""Training modes: what a mode contributes to the one training loop in runtime.train.

A mode is a module `runtime.modes.<name>` that defines `MODE`, a TrainMode. The
loop owns the model, the plan, the optimizer, the schedule and logging; a mode
supplies the samples and the loss (and, optionally, checks its `mode_args`,
changes the model before it is parallelized, as LoRA does, asks for a frozen
reference model, as DPO does, and acts after the last step). Samples are pairs
(inputs, labels) of int64 arrays; the loop batches them, runs
`logits = model(inputs)` and calls `loss(logits, labels)`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainMode:
    """One training mode. Callables receive runtime objects (TrainArgs, ModelSpec, paddle tensors/layers)."""

    name: str
    # (args, spec, num_samples, seq_length) -> map-style dataset of (inputs, labels) int64 arrays [seq_length]
    build_dataset: Callable
    # (logits [b, s, vocab], labels [b, s]) -> scalar loss tensor; must work on distributed tensors
    loss: Callable
    # (args) -> None; raises ValueError for bad args.mode_args before anything heavy starts
    check_args: Callable | None = None
    # (model, args) -> model, applied before the model is parallelized
    prepare_model: Callable | None = None
    # (args) -> keyword arguments bound to `loss` (its settings in mode_args, e.g. DPO's beta)
    loss_options: Callable | None = None
    # (args) -> extra keyword arguments of planner.api.make_plan when the loop plans (e.g. lora_rank)
    plan_options: Callable | None = None
    # (policy, reference) -> paddle.nn.Layer mapping a batch of inputs to what `loss` reads. When set, the
    # loop builds the frozen reference: a copy of the initial model (after prepare_model), no gradients,
    # not in the optimizer, its weights placed like the policy's over mp and replicated over dp.
    reference_forward: Callable | None = None
    # (trainer) -> None, called on every rank after the last step (collectives allowed), e.g. to save adapters
    finish: Callable | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("TrainMode: name must not be empty")
        for field_name in ("build_dataset", "loss"):
            if not callable(getattr(self, field_name)):
                raise ValueError(f"TrainMode {self.name!r}: {field_name} must be callable")
        for field_name in ("check_args", "prepare_model", "loss_options", "plan_options", "reference_forward",
                           "finish"):
            value = getattr(self, field_name)
            if value is not None and not callable(value):
                raise ValueError(f"TrainMode {self.name!r}: {field_name} must be callable or None")


def available_modes() -> tuple[str, ...]:
    """Names of the mode modules present in this package."""
    return tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))


def load_mode(name: str) -> TrainMode:
    """The TrainMode of `runtime.modes.<name>`."""
    if name not in available_modes():
        raise ValueError(f"training mode {name!r} is not available; available: {', '.join(available_modes())}")
    mode = importlib.import_module(f"{__name__}.{name}").MODE
    if not isinstance(mode, TrainMode) or mode.name != name:
        raise ValueError(f"runtime.modes.{name}.MODE must be a TrainMode named {name!r}")
    return mode


__all__ = ["TrainMode", "available_modes", "load_mode"]
