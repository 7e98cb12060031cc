"""What the lowering knows about PIR ops (pd_op dialect, paddlepaddle 3.3.1): which ones only move or
view data, which only compute shapes, and the forward FLOPs per element of the elementwise ones.

FLOP conventions follow planner/trace/analytic.py: a multiply-add is 2 FLOPs,
a transcendental counts 1, activations count their elementwise steps
(silu = x * sigmoid(x) ~ 4).
"""

from __future__ import annotations

from types import MappingProxyType

# Ops that reshape, view, slice, join or convert a tensor without arithmetic: the tensor that
# flows through them is the one their producer made (cast: training runs in one dtype anyway;
# expand/tile: the GQA key/value repeat, which fused attention kernels never materialise).
VIEW_OPS = frozenset((
    "reshape", "reshape_", "transpose", "transpose_", "unsqueeze", "unsqueeze_", "squeeze", "squeeze_",
    "flatten", "flatten_", "expand", "expand_as", "broadcast_to", "tile", "repeat_interleave",
    "repeat_interleave_with_tensor_index", "slice", "strided_slice", "split", "split_with_num", "concat",
    "cast", "cast_", "assign", "assign_out_", "contiguous", "builtin.combine", "builtin.split",
    "builtin.slice", "stack", "unstack", "unbind", "view_shape", "view_dtype", "share_data", "share_data_",
    "memcpy", "memcpy_d2h", "memcpy_h2d", "detach",
))
# View ops whose output repeats its input (ratio of element counts = repetition factor).
EXPANDING_OPS = frozenset(("expand", "expand_as", "broadcast_to", "tile", "repeat_interleave",
                           "repeat_interleave_with_tensor_index"))
# Ops whose result depends only on their input's shape (or on nothing): never on activations.
SHAPE_OPS = frozenset(("shape", "shape64", "full_like", "zeros_like", "ones_like", "empty_like",
                       "full_with_tensor", "numel", "size", "full", "full_int_array", "arange", "data",
                       "builtin.parameter", "assign_value_", "assign_value", "empty", "uniform", "gaussian"))

MATMUL_OPS = frozenset(("matmul", "bmm", "fused_gemm_epilogue"))
EMBEDDING_OPS = frozenset(("embedding", "c_embedding"))
NORM_OPS = frozenset(("rms_norm", "layer_norm", "fused_rms_norm", "fused_rms_norm_ext", "fused_layer_norm",
                      "fused_bias_residual_layernorm"))
NORM_MARKERS = NORM_OPS | {"rsqrt"}  # a layer with a 1-D weight and one of these is a norm
FUSED_ATTENTION_OPS = frozenset(("flash_attn", "flash_attn_unpadded", "flash_attn_v3", "flashmask_attention",
                                 "memory_efficient_attention", "variable_length_memory_efficient_attention",
                                 "scaled_dot_product_attention", "fused_dot_product_attention"))
FUSED_ROPE_OPS = frozenset(("fused_rotary_position_embedding",))
ROPE_TABLE_OPS = frozenset(("cos", "sin"))  # the rotary tables are built from these

# kind -> (forward FLOPs per element, keeps its inputs for backward). Reductions count their input's
# elements, everything else its output's.
ELEMENTWISE = MappingProxyType({
    "add": (1, False), "add_": (1, False), "subtract": (1, False), "subtract_": (1, False), "scale": (1, False),
    "scale_": (1, False), "increment": (1, False), "where": (1, True), "masked_fill": (1, True),
    "multiply": (1, True), "multiply_": (1, True), "divide": (1, True), "divide_": (1, True),
    "maximum": (1, True), "minimum": (1, True), "pow": (1, True), "square": (1, True), "sqrt": (1, True),
    "rsqrt": (1, True), "exp": (1, True), "log": (1, True), "reciprocal": (1, True), "abs": (1, True),
    "clip": (1, True), "sin": (1, True), "cos": (1, True), "neg": (1, False),
    "silu": (4, True), "sigmoid": (3, True), "tanh": (3, True), "gelu": (8, True), "relu": (1, True),
    "relu6": (1, True), "leaky_relu": (1, True), "erf": (4, True), "swiglu": (5, True),
    "softmax": (5, True), "log_softmax": (5, True), "dropout": (2, True),
})
REDUCTIONS = MappingProxyType({"mean": (1, False), "sum": (1, False), "max": (1, True), "min": (1, True),
                               "logsumexp": (2, True), "p_norm": (2, True), "cumsum": (1, False)})
# An op the lowering does not know: cost it as a memory-bound elementwise op this expensive, keeping
# its inputs (upper end of the table above), and warn.
UNKNOWN_FLOPS_PER_ELEMENT = 10


def elementwise_cost(kind: str) -> tuple[float, bool, bool] | None:
    """(FLOPs per element, keeps inputs, counts input elements) of a known elementwise op, None if unknown."""
    if kind in ELEMENTWISE:
        flops, saves = ELEMENTWISE[kind]
        return flops, saves, False
    if kind in REDUCTIONS:
        flops, saves = REDUCTIONS[kind]
        return flops, saves, True
    return None
