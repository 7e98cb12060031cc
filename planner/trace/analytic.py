"""Analytic tracer: ModelSpec -> OpGraph, op by op, with the Paddle layer names.

This is the tracer for presets and config files. The names follow the
PaddleFormers models (model.embed_tokens, model.layers.N.self_attn.q_proj, ...),
with `*` for the layer index, so that the emitted parallelize plan matches the
real layers. GPT uses the same naming (runtime/gpt.py follows it).
"""

from __future__ import annotations

from functools import lru_cache
from math import prod

import networkx as nx

from planner.frontends.spec import ModelSpec
from planner.trace.graph import Block, OpGraph, OpNode

LAYER = "model.layers.*"
ATTENTION_BWD_FACTOR = 2.5  # flash-attention backward: 5 GEMM-like passes vs 2 forward


def _elements(shape: tuple) -> int:
    return prod(1 if d == "b" else d for d in shape)


class _BlockBuilder:
    """Accumulates ops and the tensors between them for one block kind."""

    def __init__(self, kind: str, seq_len: int, dtype_bytes: int) -> None:
        self.kind = kind
        self.s = seq_len
        self.dtype_bytes = dtype_bytes
        self.graph = nx.DiGraph()

    def add(self, op: OpNode, inputs: tuple[str, ...] = ()) -> str:
        if op.name in self.graph:
            raise ValueError(f"block {self.kind!r}: duplicate op name {op.name!r}")
        self.graph.add_node(op.name, op=op)
        for port, producer in enumerate(inputs):
            shape = self.graph.nodes[producer]["op"].out_shape
            self.graph.add_edge(producer, op.name, shape=shape, bytes=_elements(shape) * self.dtype_bytes, port=port)
        return op.name

    def shape_of(self, node: str) -> tuple:
        return self.graph.nodes[node]["op"].out_shape

    def linear(self, name: str, pattern: str, x: str, in_f: int, out_f: int, *, bias: bool = False,
               tied: bool = False) -> str:
        """y = x W (+ b). `tied`: the weight belongs to another layer (counted there)."""
        t = self.s
        params = 0 if tied else in_f * out_f + (out_f if bias else 0)
        flops = 2.0 * t * in_f * out_f
        return self.add(OpNode(
            name=name, op_type="linear", layer_pattern=pattern, in_shapes=(("b", t, in_f),), out_shape=("b", t, out_f),
            weight_shape=(in_f, out_f), params=params, shared_params=in_f * out_f - params if tied else 0,
            fwd_flops=flops, bwd_flops=2 * flops,
            bytes_moved=(t * in_f + t * out_f + in_f * out_f) * self.dtype_bytes, saves_input=True), (x,))

    def norm(self, name: str, pattern: str, x: str, width: int, *, bias: bool) -> str:
        shape = self.shape_of(x)
        n = _elements(shape)
        params = width * (2 if bias else 1)
        return self.add(OpNode(
            name=name, op_type="norm", layer_pattern=pattern, in_shapes=(shape,), out_shape=shape,
            weight_shape=(width,), params=params, fwd_flops=5.0 * n, bwd_flops=10.0 * n,
            bytes_moved=(2 * n + width) * self.dtype_bytes, saves_input=True,
            saved_extra_bytes=4.0 * n / width), (x,))

    def elementwise(self, name: str, pattern: str, inputs: tuple[str, ...], *, flops_per_element: float,
                    saves_input: bool, out_shape: tuple | None = None) -> str:
        shapes = tuple(self.shape_of(i) for i in inputs)
        out = out_shape or shapes[0]
        n = _elements(out)
        moved = (sum(_elements(s) for s in shapes) + n) * self.dtype_bytes
        return self.add(OpNode(
            name=name, op_type="elementwise", layer_pattern=pattern, in_shapes=shapes, out_shape=out,
            fwd_flops=flops_per_element * n, bwd_flops=2 * flops_per_element * n, bytes_moved=moved,
            saves_input=saves_input), inputs)

    def rope(self, name: str, pattern: str, x: str) -> str:
        shape = self.shape_of(x)
        n = _elements(shape)
        return self.add(OpNode(
            name=name, op_type="rope", layer_pattern=pattern, in_shapes=(shape,), out_shape=shape,
            fwd_flops=3.0 * n, bwd_flops=3.0 * n, bytes_moved=2 * n * self.dtype_bytes), (x,))

    def attention(self, name: str, pattern: str, *inputs: str, heads: int, kv_heads: int,
                  qk_dim: int, v_dim: int) -> str:
        """Attention over q, k, v (or one fused qkv tensor)."""
        s = self.s
        flops = 2.0 * s * s * heads * qk_dim + 2.0 * s * s * heads * v_dim
        shapes = tuple(self.shape_of(i) for i in inputs)
        out = ("b", s, heads * v_dim)
        moved = (sum(_elements(x) for x in shapes) + _elements(out)) * self.dtype_bytes
        return self.add(OpNode(
            name=name, op_type="attention", layer_pattern=pattern, in_shapes=shapes, out_shape=out,
            fwd_flops=flops, bwd_flops=ATTENTION_BWD_FACTOR * flops, bytes_moved=moved, saves_input=True,
            saved_extra_bytes=_elements(out) * self.dtype_bytes + 4.0 * s * heads, causal=True,
            heads=heads, kv_heads=kv_heads), inputs)


def _attention(b: _BlockBuilder, spec: ModelSpec, x: str) -> str:
    """Attention sub-block from the normed input `x`; returns the o_proj output."""
    h, heads = spec.hidden_size, spec.num_attention_heads
    attn = f"{LAYER}.self_attn"
    if spec.mla is not None:
        mla = spec.mla
        qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank:
            qa = b.linear("q_a_proj", f"{attn}.q_a_proj", x, h, mla.q_lora_rank)
            qa = b.norm("q_a_layernorm", f"{attn}.q_a_layernorm", qa, mla.q_lora_rank, bias=False)
            q = b.linear("q_b_proj", f"{attn}.q_b_proj", qa, mla.q_lora_rank, heads * qk_dim)
        else:
            q = b.linear("q_proj", f"{attn}.q_proj", x, h, heads * qk_dim)
        kva = b.linear("kv_a_proj_with_mqa", f"{attn}.kv_a_proj_with_mqa", x, h,
                       mla.kv_lora_rank + mla.qk_rope_head_dim)
        kva = b.norm("kv_a_layernorm", f"{attn}.kv_a_layernorm", kva, mla.kv_lora_rank, bias=False)
        kv = b.linear("kv_b_proj", f"{attn}.kv_b_proj", kva, mla.kv_lora_rank,
                      heads * (mla.qk_nope_head_dim + mla.v_head_dim))
        q = b.rope("q_rope", f"{attn}", q)
        k = b.rope("k_rope", f"{attn}", kv)
        core = b.attention("attention", f"{attn}", q, k, kv, heads=heads, kv_heads=heads, qk_dim=qk_dim,
                           v_dim=mla.v_head_dim)
        return b.linear("o_proj", f"{attn}.o_proj", core, heads * mla.v_head_dim, h)
    d, kv_heads = spec.head_dim, spec.num_kv_heads
    bias = spec.qkv_bias or spec.linear_bias
    if spec.family == "qwen2":
        # PaddleFormers' Qwen2ForCausalLMDeprecated (the Qwen2 that runs without paddlefleet) fuses q, k, v
        qkv = b.linear("qkv_proj", f"{attn}.qkv_proj", x, h, (heads + 2 * kv_heads) * d, bias=bias)
        qkv = b.rope("qkv_rope", attn, qkv)
        core = b.attention("attention", attn, qkv, heads=heads, kv_heads=kv_heads, qk_dim=d, v_dim=d)
        return b.linear("o_proj", f"{attn}.o_proj", core, heads * d, h, bias=spec.linear_bias)
    q = b.linear("q_proj", f"{attn}.q_proj", x, h, heads * d, bias=bias)
    k = b.linear("k_proj", f"{attn}.k_proj", x, h, kv_heads * d, bias=bias)
    v = b.linear("v_proj", f"{attn}.v_proj", x, h, kv_heads * d, bias=bias)
    if spec.qk_norm:
        q = b.norm("q_norm", f"{attn}.q_norm", q, d, bias=False)
        k = b.norm("k_norm", f"{attn}.k_norm", k, d, bias=False)
    if not spec.learned_position_embeddings:
        q = b.rope("q_rope", attn, q)
        k = b.rope("k_rope", attn, k)
    core = b.attention("attention", attn, q, k, v, heads=heads, kv_heads=kv_heads, qk_dim=d, v_dim=d)
    return b.linear("o_proj", f"{attn}.o_proj", core, heads * d, h, bias=spec.linear_bias)


def _mlp(b: _BlockBuilder, spec: ModelSpec, x: str, prefix: str, pattern: str, width: int) -> str:
    """Dense MLP (SwiGLU or GeLU) of the given width; returns the down projection."""
    h, bias = spec.hidden_size, spec.linear_bias
    if spec.activation == "swiglu" and spec.family == "qwen2" and not prefix:
        gate_up = b.linear("up_gate_proj", f"{pattern}.up_gate_proj", x, h, 2 * width)  # fused, as attention
        act = b.elementwise("act", pattern, (gate_up,), flops_per_element=5.0, saves_input=True,
                            out_shape=("b", b.s, width))
    elif spec.activation == "swiglu":
        gate = b.linear(f"{prefix}gate_proj", f"{pattern}.gate_proj", x, h, width)
        up = b.linear(f"{prefix}up_proj", f"{pattern}.up_proj", x, h, width)
        act = b.elementwise(f"{prefix}act", pattern, (gate, up), flops_per_element=5.0, saves_input=True)
    else:
        up = b.linear(f"{prefix}up_proj", f"{pattern}.up_proj", x, h, width, bias=bias)
        act = b.elementwise(f"{prefix}act", pattern, (up,), flops_per_element=8.0, saves_input=True)
    return b.linear(f"{prefix}down_proj", f"{pattern}.down_proj", act, width, h, bias=bias)


def _moe(b: _BlockBuilder, spec: ModelSpec, x: str) -> str:
    """Routed experts (+ shared experts); returns the combined MoE output."""
    moe, h, s = spec.moe, spec.hidden_size, b.s
    e, k, f = moe.num_experts, moe.top_k, moe.expert_intermediate_size
    names = _moe_names(spec)
    router_params = h * e  # DeepSeek-V3's e_score_correction_bias is a buffer: no gradient, no optimizer state
    router = b.add(OpNode(
        name="router", op_type="router", layer_pattern=names["gate"], in_shapes=(("b", s, h),),
        out_shape=("b", s, e), weight_shape=(h, e), params=router_params,
        fwd_flops=2.0 * s * h * e, bwd_flops=4.0 * s * h * e,
        bytes_moved=(s * h + s * e + h * e) * b.dtype_bytes, saves_input=True, num_experts=e), (x,))
    routed = ("b", s * k, h)
    dispatch = b.add(OpNode(
        name="dispatch", op_type="dispatch", layer_pattern=names["gate"], in_shapes=(("b", s, h), ("b", s, e)),
        out_shape=routed, bytes_moved=2.0 * s * k * h * b.dtype_bytes, saved_extra_bytes=12.0 * s * k,
        num_experts=e), (x, router))

    def expert_linear(name: str, inp: str, in_f: int, out_f: int) -> str:
        params = e * in_f * out_f
        flops = 2.0 * s * k * in_f * out_f
        return b.add(OpNode(
            name=name, op_type="expert_linear", layer_pattern=f"{names['experts']}.{_expert_proj(spec, name)}",
            in_shapes=(("b", s * k, in_f),), out_shape=("b", s * k, out_f), weight_shape=(e, in_f, out_f),
            params=params, fwd_flops=flops, bwd_flops=2 * flops,
            bytes_moved=(s * k * (in_f + out_f) + params) * b.dtype_bytes, saves_input=True, num_experts=e, top_k=k), (inp,))

    gate = expert_linear("experts.gate_proj", dispatch, h, f)
    up = expert_linear("experts.up_proj", dispatch, h, f)
    act = b.elementwise("experts.act", names["experts"], (gate, up), flops_per_element=5.0, saves_input=True)
    down = expert_linear("experts.down_proj", act, f, h)
    combine = b.add(OpNode(
        name="combine", op_type="dispatch", layer_pattern=names["gate"], in_shapes=(routed,), out_shape=("b", s, h),
        fwd_flops=2.0 * s * k * h, bwd_flops=4.0 * s * k * h, bytes_moved=(s * k * h + s * h) * b.dtype_bytes,
        num_experts=e), (down,))
    if not moe.num_shared_experts:
        return combine
    width = moe.shared_expert_intermediate_size * moe.num_shared_experts
    shared = _mlp(b, spec, x, "shared.", names["shared"], width)
    if moe.shared_expert_gate:
        gate_logit = b.linear("shared_expert_gate", names["shared_gate"], x, h, 1)
        shared = b.elementwise("shared_gate_mul", names["shared_gate"], (shared, gate_logit), flops_per_element=5.0,
                               saves_input=True, out_shape=("b", s, h))
    return b.elementwise("moe_sum", names["gate"], (combine, shared), flops_per_element=1.0, saves_input=False)


def _moe_names(spec: ModelSpec) -> dict:
    if spec.family == "mixtral":
        base = f"{LAYER}.block_sparse_moe"
        return {"gate": f"{base}.gate", "experts": f"{base}.experts.*", "shared": "", "shared_gate": ""}
    shared = "shared_experts" if spec.family == "deepseek_v3" else "shared_expert"
    return {"gate": f"{LAYER}.mlp.gate", "experts": f"{LAYER}.mlp.experts.*", "shared": f"{LAYER}.mlp.{shared}",
            "shared_gate": f"{LAYER}.mlp.shared_expert_gate"}


def _expert_proj(spec: ModelSpec, name: str) -> str:
    proj = name.split(".")[-1]
    if spec.family == "mixtral":
        return {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}[proj]
    return proj


def _decoder(spec: ModelSpec, kind: str, seq_len: int, dtype_bytes: int) -> Block:
    b = _BlockBuilder(kind, seq_len, dtype_bytes)
    h, ln_bias = spec.hidden_size, spec.norm == "layernorm"
    x = b.add(OpNode(name="input", op_type="elementwise", layer_pattern=LAYER, in_shapes=(("b", seq_len, h),),
                     out_shape=("b", seq_len, h)))
    n1 = b.norm("input_layernorm", f"{LAYER}.input_layernorm", x, h, bias=ln_bias)
    attn = _attention(b, spec, n1)
    r1 = b.elementwise("attn_residual", LAYER, (x, attn), flops_per_element=1.0, saves_input=False)
    n2 = b.norm("post_attention_layernorm", f"{LAYER}.post_attention_layernorm", r1, h, bias=ln_bias)
    mlp = _moe(b, spec, n2) if kind == "moe" else _mlp(b, spec, n2, "", f"{LAYER}.mlp", spec.intermediate_size)
    out = b.elementwise("mlp_residual", LAYER, (r1, mlp), flops_per_element=1.0, saves_input=False)
    return Block(kind=kind, graph=b.graph, count=spec.layer_kinds().count(kind), input_node=x, output_node=out)


def _embedding(spec: ModelSpec, seq_len: int, dtype_bytes: int) -> Block:
    b = _BlockBuilder("embedding", seq_len, dtype_bytes)
    h, v = spec.hidden_size, spec.vocab_size
    tok = b.add(OpNode(
        name="embed_tokens", op_type="embedding", layer_pattern="model.embed_tokens", in_shapes=(("b", seq_len),),
        out_shape=("b", seq_len, h), weight_shape=(v, h), params=v * h,
        bytes_moved=2.0 * seq_len * h * dtype_bytes, saved_extra_bytes=8.0 * seq_len))
    out = tok
    if spec.learned_position_embeddings:
        p = spec.max_position_embeddings
        pos = b.add(OpNode(
            name="embed_positions", op_type="embedding", layer_pattern="model.embed_positions",
            in_shapes=(("b", seq_len),), out_shape=("b", seq_len, h), weight_shape=(p, h), params=p * h,
            bytes_moved=2.0 * seq_len * h * dtype_bytes))
        out = b.elementwise("embed_sum", "model", (tok, pos), flops_per_element=1.0, saves_input=False)
    return Block(kind="embedding", graph=b.graph, count=1, input_node=tok, output_node=out)


def _head(spec: ModelSpec, seq_len: int, dtype_bytes: int, b: _BlockBuilder | None = None,
          x: str | None = None, prefix: str = "", shared_norm: bool = False) -> tuple[_BlockBuilder, str, str]:
    """Final norm, lm_head and loss, into a new builder or after `x` in `b` (MTP: the norm and head are shared)."""
    if b is None:
        b = _BlockBuilder("head", seq_len, dtype_bytes)
        x = b.add(OpNode(name="input", op_type="elementwise", layer_pattern="model", in_shapes=(("b", seq_len, spec.hidden_size),),
                         out_shape=("b", seq_len, spec.hidden_size)))
    first = x
    h, v = spec.hidden_size, spec.vocab_size
    n = b.norm(f"{prefix}norm", "model.norm", x, h, bias=spec.norm == "layernorm")
    if shared_norm:  # the weights belong to model.norm of the head block
        b.graph.nodes[n]["op"] = b.graph.nodes[n]["op"].replace(params=0)
    logits = b.linear(f"{prefix}lm_head", "lm_head", n, h, v, tied=spec.tie_word_embeddings or bool(prefix))
    loss = b.add(OpNode(
        name=f"{prefix}loss", op_type="loss", layer_pattern="lm_head", in_shapes=(("b", seq_len, v),), out_shape=("b",),
        fwd_flops=5.0 * seq_len * v, bwd_flops=3.0 * seq_len * v,
        bytes_moved=seq_len * v * (dtype_bytes + 4 + 4), saved_extra_bytes=4.0 * seq_len * v), (logits,))
    return b, first, loss


def _mtp(spec: ModelSpec, seq_len: int, dtype_bytes: int) -> Block:
    """DeepSeek-V3 multi-token prediction module (model.layers.{L+i}): enorm, hnorm, eh_proj (with bias),
    one MoE decoder layer, and the shared final norm, head and loss."""
    decoder = _decoder(spec, "moe", seq_len, dtype_bytes)
    b = _BlockBuilder("mtp", seq_len, dtype_bytes)
    h = spec.hidden_size
    x = b.add(OpNode(name="input", op_type="elementwise", layer_pattern=LAYER, in_shapes=(("b", seq_len, h),),
                     out_shape=("b", seq_len, h)))
    hn = b.norm("mtp.hnorm", f"{LAYER}.hnorm", x, h, bias=False)
    en = b.norm("mtp.enorm", f"{LAYER}.enorm", x, h, bias=False)
    cat = b.elementwise("mtp.concat", LAYER, (hn, en), flops_per_element=0.0, saves_input=False,
                        out_shape=("b", seq_len, 2 * h))
    proj = b.linear("mtp.eh_proj", f"{LAYER}.eh_proj", cat, 2 * h, h, bias=True)
    rename = {n: f"mtp.{n}" for n in decoder.graph.nodes}
    layer = nx.relabel_nodes(decoder.graph, rename)
    for node in layer.nodes:
        layer.nodes[node]["op"] = layer.nodes[node]["op"].replace(name=node)
    b.graph = nx.union(b.graph, layer)
    b.graph.add_edge(proj, rename[decoder.input_node], shape=("b", seq_len, h), bytes=seq_len * h * dtype_bytes,
                     port=0)
    b, _, loss = _head(spec, seq_len, dtype_bytes, b, rename[decoder.output_node], prefix="mtp.", shared_norm=True)
    return Block(kind="mtp", graph=b.graph, count=spec.num_mtp_layers, input_node=x, output_node=loss)


@lru_cache(maxsize=256)
def trace_model(spec: ModelSpec, seq_len: int, dtype_bytes: int = 2) -> OpGraph:
    """The op graph of `spec` at sequence length `seq_len` (tokens)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}")
    kinds = spec.layer_kinds()
    blocks = {"embedding": _embedding(spec, seq_len, dtype_bytes)}
    for kind in sorted(set(kinds)):
        blocks[kind] = _decoder(spec, kind, seq_len, dtype_bytes)
    b, first, loss = _head(spec, seq_len, dtype_bytes)
    blocks["head"] = Block(kind="head", graph=b.graph, count=1, input_node=first, output_node=loss)
    order = ("embedding",) + kinds + ("head",)
    if spec.num_mtp_layers:
        blocks["mtp"] = _mtp(spec, seq_len, dtype_bytes)
        order += ("mtp",) * spec.num_mtp_layers
    return OpGraph(model_name=spec.name, seq_len=seq_len, blocks=blocks, layer_kinds=order, dtype_bytes=dtype_bytes)
