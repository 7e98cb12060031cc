"""DPO (Rafailov et al., 2023): preference pairs from the guide's jsonl data, sigmoid loss against a frozen reference.

mode_args: tokenizer (required), beta (0.1, PaddleNLP's default), bad_lines, base_weights; see
runtime.finetune_data for the format. A sample is a pair of rows, [2 (chosen, rejected), seq_length].

The reference is a frozen copy of the initial policy that the training loop builds (no gradients,
not in the optimizer, placed like the policy). The loss is PaddleFormers' sigmoid DPO
(transformers/dpo_criterion.py, loss_type "sigmoid", no label smoothing, no SFT term): with
log-probabilities summed over each response's tokens,

    loss = -mean log sigmoid(beta * ((pi_chosen - pi_rejected) - (ref_chosen - ref_rejected)))

so it is log 2 while the policy equals the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import paddle  # loaded only by the training loop (runtime.modes.load_mode), which runs Paddle anyway
import paddle.nn.functional as F

from runtime.finetune_data import IGNORE_INDEX, build_dpo_dataset
from runtime.modes import TrainMode
from runtime.modes._finetune import FinetuneArgs, check_data_file, load_base_weights
from runtime.train import CausalLMLogits


@dataclass(frozen=True, slots=True, kw_only=True)
class DPOArgs(FinetuneArgs):
    """mode_args of DPO."""

    beta: float = 0.1  # inverse temperature of the preference margin

    def __post_init__(self) -> None:
        FinetuneArgs.__post_init__(self)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not 0 < self.beta < math.inf:
            raise ValueError(f"mode_args: beta must be a number > 0, got {self.beta!r}")


def dpo_loss(logits, labels, *, beta: float):
    """Sigmoid DPO loss (module docstring), mean over the pairs.

    logits: [2 (policy, reference), 2b, s, vocab], rows alternating chosen and rejected of each pair;
    labels: [b, 2 (chosen, rejected), s], IGNORE_INDEX outside the responses.
    """
    rows = labels.reshape([-1, labels.shape[-1]])  # [2b, s]
    token_nll = F.cross_entropy(logits.astype("float32"), paddle.stack([rows, rows]).unsqueeze(-1),
                                reduction="none", ignore_index=IGNORE_INDEX)
    mask = (rows != IGNORE_INDEX).astype("float32")
    logps = -(token_nll.squeeze(-1) * mask).sum(axis=-1)  # [2, 2b]
    pairs = logps.reshape([2, -1, 2])  # [policy/reference, pair, chosen/rejected]
    margin = (pairs[0, :, 0] - pairs[0, :, 1]) - (pairs[1, :, 0] - pairs[1, :, 1])
    return -F.log_sigmoid(beta * margin).mean()


class PolicyAndReference(paddle.nn.Layer):
    """Pairs [b, 2, s] -> logits of the policy and of the frozen reference, stacked [2, 2b, s, vocab].
    The reference's weights are frozen and its inputs are token ids, so Paddle records no backward for it."""

    def __init__(self, policy, reference):
        super().__init__()
        self.policy, self.reference = CausalLMLogits(policy), CausalLMLogits(reference)

    def forward(self, input_ids):
        rows = input_ids.reshape([-1, input_ids.shape[-1]])
        return paddle.stack([self.policy(rows), self.reference(rows)])


def _check_args(args) -> None:
    DPOArgs.from_args(args)
    check_data_file(args)


def _dataset(args, spec, num_samples: int, seq_length: int):
    settings = DPOArgs.from_args(args)
    return build_dpo_dataset(args.data, settings.tokenizer, seq_length=seq_length, vocab_size=spec.vocab_size,
                             num_samples=num_samples, seed=args.seed, bad_lines=settings.bad_lines)


def _prepare(model, args):
    return load_base_weights(model, args, DPOArgs.from_args(args))


MODE = TrainMode(name="dpo", build_dataset=_dataset, loss=dpo_loss, check_args=_check_args, prepare_model=_prepare,
                 loss_options=lambda args: {"beta": DPOArgs.from_args(args).beta},
                 reference_forward=PolicyAndReference)
