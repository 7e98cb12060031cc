"""Pretraining: next-token prediction on every token of a .bin/.idx corpus or mock tokens."""

from __future__ import annotations

from runtime.data import build_pretrain_dataset
from runtime.modes import TrainMode

IGNORE_INDEX = -100  # label value excluded from the loss (PaddleFormers' convention)


def causal_lm_loss(logits, labels):
    """Mean float32 cross entropy over the tokens whose label is not IGNORE_INDEX (labels pre-shifted)."""
    import paddle.nn.functional as F

    token_loss = F.cross_entropy(logits.astype("float32"), labels.unsqueeze(-1), reduction="none",
                                 ignore_index=IGNORE_INDEX)
    mask = (labels != IGNORE_INDEX).astype("float32")
    return (token_loss.reshape(mask.shape) * mask).sum() / mask.sum()


def _dataset(args, spec, num_samples: int, seq_length: int):
    return build_pretrain_dataset(args.data, num_samples=num_samples, seq_length=seq_length,
                                  vocab_size=spec.vocab_size, seed=args.seed)


def _check_args(args) -> None:
    if args.mode_args:
        raise ValueError(f"pretrain: mode_args must be empty, got keys {sorted(args.mode_args)}")


MODE = TrainMode(name="pretrain", build_dataset=_dataset, loss=causal_lm_loss, check_args=_check_args)
