"""Workload: what is trained per step (sequence length, batch, precision, training mode)."""

from __future__ import annotations

from dataclasses import dataclass

from planner.plan import TRAINING_MODES

DTYPES = ("bf16", "fp16", "fp8")


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One optimizer step: `global_batch` sequences of `seq_len` tokens.

    fp8 runs the linear layers' GEMMs at the FP8 peak (attention and the rest stay bf16).
    DPO counts a chosen and a rejected sequence per example: `global_batch` is in sequences.
    """

    seq_len: int
    global_batch: int
    dtype: str = "bf16"
    mode: str = "pretrain"
    lora_rank: int = 8
    flash_attention: bool = True  # False: attention scores go through HBM (pre-2022 stacks)
    fused_kernels: bool = True  # False: eager norms, activations and rope (several HBM passes each)
    tp_comm_overlap: bool = False  # the stack overlaps tensor-parallel collectives with GEMMs (MCore, async TP)

    def __post_init__(self) -> None:
        for name in ("seq_len", "global_batch", "lora_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"workload: {name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"workload: dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.mode not in TRAINING_MODES:
            raise ValueError(f"workload: mode={self.mode!r} is not one of {', '.join(TRAINING_MODES)}")

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch

    @property
    def compute_dtype(self) -> str:
        """The dtype of everything but FP8 GEMMs."""
        return "bf16" if self.dtype == "fp8" else self.dtype
