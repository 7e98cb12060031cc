"""What a Paddle trace captured, as plain data: the PIR ops of one forward pass with symbolic shapes.

Nothing here imports paddle; `capture` fills these records and `lower` turns
them into the planner's OpGraph.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from planner.frontends.paddle.dims import Dim


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorInfo:
    """A PIR value: its symbolic shape (empty for non-tensor values) and dtype."""

    key: str
    shape: tuple[Dim, ...]
    dtype: str
    producer: int  # index of the op that defines it, -1 for none


@dataclass(frozen=True, slots=True, kw_only=True)
class RawOp:
    """One PIR op, with the innermost Paddle layer that was running when it was created."""

    index: int
    kind: str  # op name without the dialect: "matmul", "softmax", "builtin.combine", ...
    inputs: tuple[str, ...]  # tensor keys; "" for an absent optional operand
    outputs: tuple[str, ...]
    scope: str  # e.g. "model.layers.0.self_attn.q_proj"; "" outside every sublayer
    attrs: dict = field(default_factory=dict)  # the scalar attributes (transpose_y, axis, ...)
    param: str = ""  # builtin.parameter: the structured parameter name ("" for a captured buffer)

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError(f"traced op {self.index}: empty op kind")
        if self.index < 0:
            raise ValueError(f"traced op {self.kind!r}: index must be >= 0, got {self.index}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MoERecord:
    """A routed-expert layer traced through its stand-in forward (see capture._moe_forward)."""

    scope: str  # the MoE layer, e.g. "model.layers.3.mlp"
    num_experts: int
    top_k: int
    experts_scope: str  # the experts LayerList, e.g. "model.layers.3.mlp.experts"
    gate_scope: str  # the router layer, e.g. "model.layers.3.mlp.gate"
    input_key: str  # the MoE layer's input
    router_key: str  # router logits [tokens, experts]
    expert_in_key: str  # the tokens the representative expert was called on
    expert_out_key: str  # its output
    routed_key: str  # the routed output in the input's shape (what the combine produces)

    def __post_init__(self) -> None:
        if self.num_experts < 2 or not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"MoE layer {self.scope!r}: need num_experts >= 2 and 1 <= top_k <= num_experts, got "
                             f"num_experts={self.num_experts}, top_k={self.top_k}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    """One traced forward pass of a model reduced to a few decoder layers."""

    model_name: str
    ops: tuple[RawOp, ...]
    tensors: dict  # key -> TensorInfo
    params: dict  # structured name -> shape (tuple of ints), every parameter of the traced model
    layer_list: str  # the decoder LayerList, e.g. "model.layers"
    layer_kinds: tuple[str, ...]  # kind of each traced decoder layer ("dense" / "moe")
    representatives: dict  # kind -> traced decoder layer index that stands for every layer of the kind
    layer_outputs: dict  # traced decoder layer index -> key of its output (residual stream)
    input_key: str  # the token ids
    logits_keys: tuple[str, ...]  # the model's logits
    batch_symbol: str  # "" when the batch was traced as 1
    seq_symbol: str  # "" when the sequence length was traced concretely
    traced_seq_len: int  # the concrete sequence length, 0 when symbolic
    moe: tuple[MoERecord, ...] = ()
    mode: str = ""  # which input spec the trace used

    def __post_init__(self) -> None:
        if bool(self.seq_symbol) == bool(self.traced_seq_len):
            raise ValueError(f"capture of {self.model_name!r}: give exactly one of seq_symbol "
                             f"({self.seq_symbol!r}) and traced_seq_len ({self.traced_seq_len})")
        missing = sorted(set(self.layer_kinds) - set(self.representatives))
        if missing:
            raise ValueError(f"capture of {self.model_name!r}: kinds {missing} have no representative layer")
