"""What the fine-tuning modes (sft, lora, dpo) share: their common mode_args, the data check, base weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runtime.finetune_data import BAD_LINE_POLICIES


@dataclass(frozen=True, slots=True, kw_only=True)
class FinetuneArgs:
    """mode_args of every fine-tuning mode. Subclasses add their own keys."""

    tokenizer: str  # local tokenizer directory
    bad_lines: str = "error"  # "error": stop at the first bad data line; "skip": drop bad lines, log the count
    base_weights: str = ""  # weights to start from (runtime.merge output: directory, index or file); "": seeded init

    def __post_init__(self) -> None:
        if not isinstance(self.tokenizer, str) or not self.tokenizer:
            raise ValueError(f"mode_args: tokenizer must be a tokenizer directory, got {self.tokenizer!r}")
        if self.bad_lines not in BAD_LINE_POLICIES:
            raise ValueError(f"mode_args: bad_lines={self.bad_lines!r} is not one of {', '.join(BAD_LINE_POLICIES)}")
        if not isinstance(self.base_weights, str):
            raise ValueError(f"mode_args: base_weights must be a path string, got {self.base_weights!r}")

    @classmethod
    def from_args(cls, args) -> "FinetuneArgs":
        """The mode_args of TrainArgs `args` as this class; a ValueError names the mode and the bad key."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(args.mode_args) - set(known))
        if unknown:
            raise ValueError(f"{args.mode}: unknown mode_args keys {unknown}; valid keys are {known}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in args.mode_args and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{args.mode}: missing mode_args keys {missing}")
        try:
            return cls(**args.mode_args)
        except ValueError as err:
            raise ValueError(f"{args.mode}: {err}") from None


def check_data_file(args) -> None:
    """Fine-tuning reads a jsonl file: refuse "mock" or a missing path before anything heavy starts."""
    if not Path(args.data).is_file():
        raise ValueError(f"{args.mode}: data must be the path of a jsonl file, got {args.data!r} (no such file)")


def load_base_weights(model, args, settings: FinetuneArgs):
    """`model` with settings.base_weights loaded (unchanged when there are none); returns it."""
    if settings.base_weights:
        from runtime.inference import load_weights

        load_weights(model, settings.base_weights, model_name=args.model)
    return model


__all__ = ["FinetuneArgs", "check_data_file", "load_base_weights"]
