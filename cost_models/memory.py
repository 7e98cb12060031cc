"""Per-device memory of training state: parameters, gradients and AdamW state by sharding stage.

Mixed-precision AdamW keeps, per trainable parameter: the bf16/fp16 weight
(2 bytes), an fp32 gradient (4 bytes: Megatron's main_grad, Paddle's
amp_master_grad) and fp32 master weight + Adam m + v (12 bytes).
Sharding stage k (ZeRO-k) over a group of n ranks divides the optimizer
state (k >= 1), the gradients (k >= 2) and the weights (k = 3) by n.
Frozen parameters (LoRA base, DPO reference) keep only their 2-byte weight.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BYTES = 2
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12  # fp32 master + Adam first and second moments


@dataclass(frozen=True, slots=True, kw_only=True)
class StateBytes:
    """Bytes per device of the training state of some parameters."""

    params: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer

    def scaled(self, factor: float) -> "StateBytes":
        return StateBytes(params=self.params * factor, grads=self.grads * factor, optimizer=self.optimizer * factor)

    def __add__(self, other: "StateBytes") -> "StateBytes":
        return StateBytes(params=self.params + other.params, grads=self.grads + other.grads,
                          optimizer=self.optimizer + other.optimizer)


def state_bytes(trainable: float, frozen: float, sharding_stage: int, shard_group: int) -> StateBytes:
    """Training state of `trainable` and `frozen` parameters held by one device, before sharding."""
    if sharding_stage not in (0, 1, 2, 3):
        raise ValueError(f"sharding stage must be 0-3, got {sharding_stage}")
    if shard_group < 1:
        raise ValueError(f"shard group must be >= 1 rank, got {shard_group}")
    n = shard_group
    weights = (trainable + frozen) * WEIGHT_BYTES / (n if sharding_stage == 3 else 1)
    grads = trainable * GRAD_BYTES / (n if sharding_stage >= 2 else 1)
    optimizer = trainable * OPTIMIZER_BYTES / (n if sharding_stage >= 1 else 1)
    return StateBytes(params=weights, grads=grads, optimizer=optimizer)


def pipeline_in_flight(stage: int, pp: int, num_micro_batches: int, vpp: int) -> float:
    """Micro-batches whose activations stage `stage` holds at its peak, in units of a full stage's layers.

    1F1B: min(pp - stage, m). Interleaved (Megatron): rank r warms up
    2(pp - r - 1) + (vpp - 1) pp chunks and holds one more, each chunk 1/vpp of the stage.
    """
    if not 0 <= stage < pp:
        raise ValueError(f"stage {stage} outside 0..{pp - 1}")
    if vpp == 1:
        return float(min(pp - stage, num_micro_batches))
    chunks = min(num_micro_batches * vpp, 2 * (pp - stage - 1) + (vpp - 1) * pp + 1)
    return chunks / vpp
