"""Pure cost functions of sharded ops and collectives, shared by both solvers and the evaluator."""

from __future__ import annotations

import math
from math import prod
from dataclasses import dataclass

from cost_models.collectives import CommGroup, collective_time_s
from cost_models.compute import op_time_s
from cost_models.hardware import HardwareSpec
from planner.strategies.sharding import Collective, Strategy
from planner.trace.graph import OpNode

QUANTUM_S = 1e-9  # every CP-SAT time is an integer number of nanoseconds
QUANTUM_BYTES = 2**20  # every CP-SAT memory amount is an integer number of MiB, rounded up


def quantize(seconds: float) -> int:
    """The one place where times become CP-SAT integers."""
    return int(round(seconds / QUANTUM_S))


def quantize_bytes(amount: float) -> int:
    """The one place where memory becomes CP-SAT integers (rounded up, so that a fit is never overstated)."""
    return int(math.ceil(amount / QUANTUM_BYTES))


@dataclass(frozen=True, slots=True, kw_only=True)
class Groups:
    """The communication groups a block's collectives run on."""

    mp: CommGroup
    ep: CommGroup
    ep_mp: CommGroup

    def get(self, name: str) -> CommGroup:
        return getattr(self, name)


def op_compute_s(op: OpNode, strategy: Strategy, micro_batch: int, hw: HardwareSpec, dtype: str,
                 phase: str, work_divisor: int = 1) -> float:
    """Forward or backward time of one op on one rank, for `micro_batch` sequences.

    `work_divisor` splits the tokens further (context parallelism).
    """
    share = micro_batch / (strategy.work_divisor * work_divisor)
    flops = (op.fwd_flops if phase == "fwd" else op.bwd_flops) * share
    if flops == 0 and op.bytes_moved == 0:
        return 0.0
    weight_bytes = 2.0 * (op.params + op.shared_params) / strategy.param_divisor
    activation_bytes = max(0.0, op.bytes_moved - 2.0 * (op.params + op.shared_params)) * share
    traffic = activation_bytes + weight_bytes
    if phase == "bwd":
        traffic *= 2
    time_s = op_time_s(op.op_type, flops, traffic, hw, dtype, causal=op.causal, kernels=1 if phase == "fwd" else 2)
    if dtype == "fp8" and op.weight_shape is not None:
        time_s += _fp8_cast_s(op, strategy, share, hw, phase)
    return time_s


def _fp8_cast_s(op: OpNode, strategy: Strategy, share: float, hw: HardwareSpec, phase: str) -> float:
    """FP8 GEMMs first cast their bf16 operands (read 2 bytes, write 1): the input and the weight forward,
    the output gradient and transposed copies backward. Separate bandwidth-bound kernels."""
    inputs = sum(prod(1 if d == "b" else d for d in shape) for shape in op.in_shapes) * share
    weights = (op.params + op.shared_params) / strategy.param_divisor
    elements = (inputs + weights) * (1 if phase == "fwd" else 2)
    return 3.0 * elements / (hw.hbm_bytes_per_s * hw.calibration.memory_efficiency) + \
        hw.calibration.kernel_overhead_s * (2 if phase == "fwd" else 4)


def collective_s(collective: Collective, groups: Groups, hw: HardwareSpec, micro_batch: int = 1) -> float:
    """Time of a per-sequence collective scaled to `micro_batch` sequences."""
    scale = micro_batch if collective.per_token else 1
    return collective_time_s(collective.kind, collective.bytes * scale, groups.get(collective.group), hw)
