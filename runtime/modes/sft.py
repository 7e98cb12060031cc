"""Supervised fine-tuning: next-token loss on the response tokens of the guide's src/tgt jsonl data.

mode_args: tokenizer (a local tokenizer directory, required), packing (false: one example per
padded row; true: consecutive examples share rows), bad_lines ("error" or "skip") and
base_weights (weights to start from); see runtime.finetune_data for the format and the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.finetune_data import build_sft_dataset
from runtime.modes import TrainMode
from runtime.modes._finetune import FinetuneArgs, check_data_file, load_base_weights
from runtime.modes.pretrain import causal_lm_loss


@dataclass(frozen=True, slots=True, kw_only=True)
class SFTArgs(FinetuneArgs):
    """mode_args of SFT (and of LoRA, which extends them)."""

    packing: bool = False

    def __post_init__(self) -> None:
        FinetuneArgs.__post_init__(self)  # explicit: zero-argument super() fails in slotted dataclasses
        if not isinstance(self.packing, bool):
            raise ValueError(f"mode_args: packing must be true or false, got {self.packing!r}")


def sft_dataset(args, spec, num_samples: int, seq_length: int, settings: SFTArgs):
    """The SFT samples of args.data under `settings` (shared with LoRA)."""
    return build_sft_dataset(args.data, settings.tokenizer, seq_length=seq_length, vocab_size=spec.vocab_size,
                             num_samples=num_samples, seed=args.seed, packing=settings.packing,
                             bad_lines=settings.bad_lines)


def _dataset(args, spec, num_samples: int, seq_length: int):
    return sft_dataset(args, spec, num_samples, seq_length, SFTArgs.from_args(args))


def _check_args(args) -> None:
    SFTArgs.from_args(args)
    check_data_file(args)


def _prepare(model, args):
    return load_base_weights(model, args, SFTArgs.from_args(args))


MODE = TrainMode(name="sft", build_dataset=_dataset, loss=causal_lm_loss, check_args=_check_args,
                 prepare_model=_prepare)
