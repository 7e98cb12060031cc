"""Compute time of one op on one device: a roofline with calibrated efficiencies.

time = max(FLOPs / (peak x efficiency), bytes / (HBM bandwidth x memory efficiency))
       + kernel overhead x kernels

The fixed per-kernel overhead is what makes small GEMMs (after sharding by a
large mp degree, or a small micro-batch) less efficient than large ones: the
efficiency of a GEMM of F FLOPs is F / (F + peak x efficiency x overhead).
Attention kernels skip the masked half of a causal score matrix.
"""

from __future__ import annotations

from cost_models.hardware import HardwareSpec

MATMUL_OPS = ("linear", "expert_linear", "router")
# Eager (unfused) frameworks run a norm, activation or rope as several kernels, each a pass over HBM:
# eager RMSNorm is pow, mean, add, rsqrt, mul, mul (6 passes vs 2 fused); SwiGLU silu + mul 5 vs 3.
UNFUSED_TRAFFIC_FACTOR = 3.0


def op_time_s(op_type: str, flops: float, bytes_moved: float, hw: HardwareSpec, dtype: str, *,
              causal: bool = False, kernels: int = 1) -> float:
    """Seconds for `flops` FLOPs moving `bytes_moved` bytes, executed as an op of `op_type`."""
    cal = hw.calibration
    memory_s = bytes_moved / (hw.hbm_bytes_per_s * cal.memory_efficiency)
    if op_type in MATMUL_OPS:
        compute_s = flops / (hw.peak(dtype) * cal.gemm_efficiency)
    elif op_type == "attention":
        compute_s = (flops / 2 if causal else flops) / (hw.peak(dtype) * cal.attention_efficiency)
    else:
        compute_s = 0.0  # norms, activations, lookups and the loss are bandwidth-bound
    return max(compute_s, memory_s) + cal.kernel_overhead_s * kernels


def optimizer_step_s(params_local: float, hw: HardwareSpec) -> float:
    """AdamW over `params_local` fp32 master parameters: reads and writes ~32 bytes each (bandwidth-bound)."""
    return 32.0 * params_local / (hw.hbm_bytes_per_s * hw.calibration.memory_efficiency)
