"""The op graph: one networkx.DiGraph per distinct block kind, repeated by count.

Every node is an op with an `OpNode` under the attribute "op"; every edge
carries the tensor that flows from producer to consumer ("shape", "bytes").
Quantities are per sequence (micro-batch size 1) at the traced sequence
length; they scale linearly with the micro-batch size. FLOPs follow the
usual model-FLOPs convention: a multiply-add is 2 FLOPs and attention
scores count the full (non-causal) s x s product; `causal` marks ops whose
kernels skip the masked half.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import networkx as nx

OP_TYPES = (
    "embedding",  # token / position lookup
    "linear",  # x @ W (+ b); W is [in_features, out_features] as in paddle.nn.Linear
    "attention",  # softmax(q k^T) v, flash-style (no s x s matrix stored)
    "norm",  # RMSNorm / LayerNorm over the last dim
    "rope",  # rotary position embedding on q/k
    "elementwise",  # residual add, activation, gating
    "router",  # MoE gate: logits over experts, top-k
    "dispatch",  # MoE token dispatch to experts (and its combine)
    "expert_linear",  # grouped GEMM over the local experts
    "loss",  # softmax cross entropy over the vocabulary
)
BLOCK_KINDS = ("embedding", "dense", "moe", "head", "mtp")
MATMUL_OP_TYPES = ("linear", "expert_linear", "router", "attention")  # what model FLOPs count


@dataclass(frozen=True, slots=True, kw_only=True)
class OpNode:
    """One op of a block, with its cost-relevant numbers (per sequence, micro-batch size 1)."""

    name: str
    op_type: str
    layer_pattern: str  # Paddle layer name pattern, e.g. "model.layers.*.self_attn.q_proj"
    in_shapes: tuple[tuple, ...]  # "b" stands for the micro-batch size
    out_shape: tuple
    weight_shape: tuple | None = None  # [in, out] for linear; [E, in, out] for expert_linear
    params: int = 0
    fwd_flops: float = 0.0
    bwd_flops: float = 0.0
    bytes_moved: float = 0.0  # forward HBM traffic: inputs + outputs + weights, bytes
    saves_input: bool = False  # keeps its input(s) for the backward pass
    saved_extra_bytes: float = 0.0  # other tensors kept for backward (softmax stats, routing), bytes
    causal: bool = False
    tokens_fraction: float = 1.0  # share of the sequence's tokens this op sees (top_k / E per expert ...)
    heads: int = 0  # attention: query heads; kv heads in kv_heads
    kv_heads: int = 0
    num_experts: int = 0  # expert_linear / router / dispatch
    top_k: int = 0  # expert_linear: experts each token visits
    shared_params: int = 0  # weights owned by another op but multiplied here (tied lm_head)

    def __post_init__(self) -> None:
        if self.op_type not in OP_TYPES:
            raise ValueError(f"op {self.name!r}: op_type={self.op_type!r} is not one of {', '.join(OP_TYPES)}")
        if self.params < 0 or self.fwd_flops < 0 or self.bwd_flops < 0 or self.bytes_moved < 0:
            raise ValueError(f"op {self.name!r}: params, FLOPs and bytes must be >= 0")

    @property
    def active_params(self) -> float:
        """Parameters a token's forward pass multiplies (the N of 6·N FLOPs per token).

        Lookup tables (embeddings) are not multiplied; a grouped expert op uses
        top_k of its num_experts experts; a tied lm_head multiplies the embedding.
        """
        if self.op_type == "embedding":
            return 0.0
        if self.op_type == "expert_linear":
            return self.params * self.top_k / self.num_experts
        return float(self.params + self.shared_params)

    def replace(self, **changes) -> "OpNode":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class Block:
    """A distinct block kind: its op graph and how many times the model repeats it."""

    kind: str
    graph: nx.DiGraph
    count: int
    input_node: str  # the node whose input is the block input (residual stream)
    output_node: str  # the node that produces the block output
    order: tuple[str, ...] = ()  # op names in topological order (derived)
    op_nodes: tuple = ()  # the OpNodes in that order (derived)
    matmul_fwd_flops: float = 0.0  # forward FLOPs of GEMMs and attention per sequence (derived)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(nx.lexicographical_topological_sort(self.graph)))
        object.__setattr__(self, "op_nodes", tuple(self.graph.nodes[n]["op"] for n in self.order))
        object.__setattr__(self, "matmul_fwd_flops", sum(op.fwd_flops for op in self.op_nodes if op.op_type in MATMUL_OP_TYPES))
        if self.kind not in BLOCK_KINDS:
            raise ValueError(f"block kind {self.kind!r} is not one of {', '.join(BLOCK_KINDS)}")
        if self.count < 1:
            raise ValueError(f"block {self.kind!r}: count must be >= 1, got {self.count}")

    def ops(self) -> list[OpNode]:
        """The block's ops in a deterministic topological order."""
        return list(self.op_nodes)

    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops())

    @property
    def fwd_flops(self) -> float:
        return sum(op.fwd_flops for op in self.ops())


@dataclass(frozen=True, slots=True, kw_only=True)
class OpGraph:
    """The traced model: blocks by kind and the order of layers (embedding, decoders, head)."""

    model_name: str
    seq_len: int
    blocks: dict  # kind -> Block
    layer_kinds: tuple[str, ...]  # one entry per pipeline-partitionable layer, in order
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        missing = sorted(set(self.layer_kinds) - set(self.blocks))
        if missing:
            raise ValueError(f"op graph: layers of kinds {missing} have no block")
        for kind, block in self.blocks.items():
            if self.layer_kinds.count(kind) != block.count:
                raise ValueError(f"op graph: block {kind!r} count {block.count} != "
                                 f"{self.layer_kinds.count(kind)} layers of that kind")

    def count_params(self, *, active: bool = False, include_mtp: bool = False) -> float:
        """Parameters of the model (tied weights once); `active`: per token (top-k experts only)."""
        total = 0.0
        for kind, block in self.blocks.items():
            if kind == "mtp" and not include_mtp:
                continue
            ops = block.ops()
            total += block.count * sum(op.active_params if active else op.params for op in ops)
        return total

    def fwd_flops(self) -> float:
        """Forward FLOPs per sequence of the whole model."""
        return sum(b.fwd_flops * b.count for b in self.blocks.values())
