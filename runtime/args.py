"""TrainArgs: the training run's arguments file (JSON), parsed and validated.

One file drives `tools/train.py` in every mode. Keys not listed here are an
error (a typo must not silently fall back to a default); settings that only
one mode understands go under `mode_args`, which that mode validates.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from planner.plan import TRAINING_MODES

LR_SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("float32", "bfloat16", "float16")
PIPELINE_SCHEDULES = ("auto", "FThenB", "1F1B", "VPP")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainArgs:
    """A training run. Sizes count sequences (batches) or tokens (seq_length); rates are per step."""

    mode: str = "pretrain"
    model: str  # preset name or path to a config.json
    data: str = "mock"  # "mock", or the path prefix of a .bin/.idx pair (pretrain); mode-specific otherwise
    plan: str = "auto"  # "auto", a plan-file path, or a layout string such as "dp=2,mp=1"
    output_dir: str
    to_static: bool = False
    max_steps: int = 10
    seed: int = 42
    seq_length: int = 0  # tokens per sequence; 0: the model's default_seq_len
    global_batch_size: int = 0  # sequences per optimizer step; 0: the model's default_global_batch_tokens / seq_length
    learning_rate: float = 3e-4
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # global-norm clipping; 0 disables it
    dtype: str = "float32"
    pipeline_schedule: str = "auto"  # auto: VPP if the plan has vpp > 1, else 1F1B (FThenB on CPU)
    save_interval: int = 0  # steps between checkpoints; 0: no checkpoints
    log_interval: int = 1  # steps between metrics lines
    mode_args: dict = field(default_factory=dict)  # settings of the mode (e.g. its tokenizer), validated by the mode

    def __post_init__(self) -> None:
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"train args: mode={self.mode!r} is not one of {', '.join(TRAINING_MODES)}")
        for name in ("model", "data", "plan", "output_dir"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"train args: {name} must be a non-empty string, got {value!r}")
        if not isinstance(self.to_static, bool):
            raise ValueError(f"train args: to_static must be true or false, got {self.to_static!r}")
        for name in ("max_steps", "log_interval"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("seed", "seq_length", "global_batch_size", "warmup_steps", "save_interval"):
            _require_int(name, getattr(self, name), minimum=0)
        for name in ("learning_rate", "min_learning_rate", "weight_decay", "adam_epsilon", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"train args: {name} must be a number >= 0, got {value!r}")
        for name in ("adam_beta1", "adam_beta2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"train args: {name} must be in [0, 1), got {value!r}")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(f"train args: min_learning_rate={self.min_learning_rate} exceeds "
                             f"learning_rate={self.learning_rate}")
        for name, choices in (("lr_schedule", LR_SCHEDULES), ("dtype", DTYPES),
                              ("pipeline_schedule", PIPELINE_SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"train args: {name}={getattr(self, name)!r} is not one of {', '.join(choices)}")
        if not isinstance(self.mode_args, dict):
            raise ValueError(f"train args: mode_args must be an object, got {self.mode_args!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainArgs":
        if not isinstance(data, dict):
            raise ValueError(f"train args: expected a JSON object, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"train args: unknown keys {unknown}; valid keys are {sorted(known)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"train args: missing required keys {missing}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainArgs":
        """Parse a JSON arguments file; errors name the file."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as err:
            raise ValueError(f"train args: cannot read {path}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"train args: {path} is not valid JSON ({err})") from None
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainArgs":
        return dataclasses.replace(self, **changes)


def _require_int(name: str, value, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"train args: {name} must be an integer >= {minimum}, got {value!r}")


__all__ = ["TrainArgs", "LR_SCHEDULES", "DTYPES", "PIPELINE_SCHEDULES"]
