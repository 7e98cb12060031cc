"""Build the Paddle model of a planner ModelSpec (PaddleFormers for Llama, Qwen2, DeepSeek-V3; runtime.gpt for GPT).

Real layer names in paddleformers 1.2.0 (what a parallelize plan must use):

- Llama:   model.embed_tokens, model.layers.N.self_attn.{q,k,v,o}_proj,
           model.layers.N.mlp.{gate,up,down}_proj, model.layers.N.{input,post_attention}_layernorm,
           model.norm, lm_head
- Qwen2:   Qwen2ForCausalLM needs the `paddlefleet` package; the classic implementation
           Qwen2ForCausalLMDeprecated is used instead. It FUSES projections:
           model.layers.N.self_attn.qkv_proj (with bias), model.layers.N.self_attn.o_proj,
           model.layers.N.mlp.up_gate_proj, model.layers.N.mlp.down_proj
- DeepSeek-V3: model.layers.N.self_attn.{q_a_proj,q_b_proj,kv_a_proj_with_mqa,kv_b_proj,o_proj}
           (q_proj when q_lora_rank is 0), model.layers.N.self_attn.{q_a,kv_a}_layernorm,
           dense layers model.layers.N.mlp.{gate,up,down}_proj, MoE layers
           model.layers.N.mlp.experts.E.{gate,up,down}_proj, model.layers.N.mlp.gate (router,
           parameter `weight` [hidden, experts]), model.layers.N.mlp.shared_experts.{gate,up,down}_proj
           (all shared experts fused into one MLP)
- GPT:     see runtime/gpt.py (Llama-style names plus model.embed_positions)
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import paddle

    from planner.frontends.spec import ModelSpec

SUPPORTED_FAMILIES = ("llama", "qwen2", "deepseek_v3", "gpt")


def build_model(spec: "ModelSpec", *, seed: int) -> "paddle.nn.Layer":
    """A freshly initialised causal LM for `spec`; the same seed gives the same weights on every rank."""
    import numpy as np
    import paddle

    if spec.family not in SUPPORTED_FAMILIES:
        raise ValueError(f"model {spec.name!r}: family {spec.family!r} has no runtime builder; "
                         f"supported: {', '.join(SUPPORTED_FAMILIES)}")
    if spec.num_mtp_layers:
        raise ValueError(f"model {spec.name!r}: num_mtp_layers={spec.num_mtp_layers} is not supported by the "
                         "runtime (valid: 0)")
    paddle.seed(seed)
    np.random.seed(seed)
    if spec.family == "gpt":
        from runtime.gpt import build_gpt

        return build_gpt(spec)
    builder = {"llama": _llama, "qwen2": _qwen2, "deepseek_v3": _deepseek_v3}[spec.family]
    return builder(spec)


def _common_config(spec: "ModelSpec") -> dict:
    import paddle

    return dict(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_kv_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings, dtype="float32", use_cache=False,
        # The fused RMSNorm kernel exists only in GPU builds.
        fuse_rms_norm=paddle.is_compiled_with_cuda(),
    )


def _llama(spec: "ModelSpec") -> "paddle.nn.Layer":
    from paddleformers.transformers import LlamaConfig, LlamaForCausalLM

    _require(spec, activation="swiglu", norm="rmsnorm", learned_position_embeddings=False)
    config = LlamaConfig(head_dim=spec.head_dim, attention_bias=spec.qkv_bias, mlp_bias=spec.linear_bias,
                         **_common_config(spec))
    return LlamaForCausalLM(config)


def _qwen2(spec: "ModelSpec") -> "paddle.nn.Layer":
    _require(spec, activation="swiglu", norm="rmsnorm", qkv_bias=True, linear_bias=False,
             learned_position_embeddings=False)
    if spec.head_dim * spec.num_attention_heads != spec.hidden_size:
        raise ValueError(f"model {spec.name!r}: Qwen2 needs head_dim * num_attention_heads == hidden_size, got "
                         f"{spec.head_dim} * {spec.num_attention_heads} != {spec.hidden_size}")
    _stub_gpt_provider()
    from paddleformers.transformers.qwen2.configuration import Qwen2Config
    from paddleformers.transformers.qwen2.modeling import Qwen2ForCausalLMDeprecated

    return Qwen2ForCausalLMDeprecated(Qwen2Config(**_common_config(spec)))


def _deepseek_v3(spec: "ModelSpec") -> "paddle.nn.Layer":
    _require(spec, activation="swiglu", norm="rmsnorm", learned_position_embeddings=False)
    mla, moe = spec.mla, spec.moe
    if mla is None or moe is None:
        raise ValueError(f"model {spec.name!r}: DeepSeek-V3 needs both mla and moe sections")
    if moe.num_shared_experts and moe.shared_expert_intermediate_size != moe.expert_intermediate_size:
        raise ValueError(f"model {spec.name!r}: PaddleFormers sizes each shared expert like a routed one; "
                         f"shared_expert_intermediate_size={moe.shared_expert_intermediate_size} must equal "
                         f"expert_intermediate_size={moe.expert_intermediate_size}")
    # PaddleFormers makes layer i MoE when i >= first_k_dense and i % layer_freq == 0.
    theirs = tuple("moe" if i >= moe.first_k_dense and i % moe.layer_freq == 0 else "dense"
                   for i in range(spec.num_layers))
    if theirs != spec.layer_kinds():
        raise ValueError(f"model {spec.name!r}: first_k_dense={moe.first_k_dense}, layer_freq={moe.layer_freq} "
                         "place MoE layers differently in PaddleFormers; use layer_freq=1 or a multiple-aligned "
                         "first_k_dense")
    _stub_paddlefleet_ops()
    from paddleformers.transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        moe_intermediate_size=moe.expert_intermediate_size, n_routed_experts=moe.num_experts,
        n_shared_experts=moe.num_shared_experts or None, num_experts_per_tok=moe.top_k,
        first_k_dense_replace=moe.first_k_dense, moe_layer_freq=moe.layer_freq,
        n_group=1, topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid", norm_topk_prob=True,
        q_lora_rank=mla.q_lora_rank or None, kv_lora_rank=mla.kv_lora_rank, qk_rope_head_dim=mla.qk_rope_head_dim,
        qk_nope_head_dim=mla.qk_nope_head_dim, v_head_dim=mla.v_head_dim, seq_length=spec.max_position_embeddings,
        # The rope initialiser reads rope_scaling["factor"] even for the default rope type.
        rope_scaling={"rope_type": "default", "factor": 1.0},
        **_common_config(spec))
    model = DeepseekV3ForCausalLM(config)
    _make_moe_auto_parallel(model)
    return model


def _require(spec: "ModelSpec", **expected) -> None:
    for name, value in expected.items():
        if getattr(spec, name) != value:
            raise ValueError(f"model {spec.name!r}: the {spec.family} builder needs {name}={value!r}, "
                             f"got {getattr(spec, name)!r}")


# ---- packages PaddleFormers imports but does not need here -------------------------------

def _stub_gpt_provider() -> None:
    """paddleformers 1.2.0's qwen2/modeling.py imports transformers.gpt_provider, which hard-requires the
    GPU-only `paddlefleet`, only to subclass GPTModelProvider for the fleet Qwen2. Without paddlefleet,
    register a module whose GPTModelProvider is a plain base class, so the classic Qwen2 imports."""
    name = "paddleformers.transformers.gpt_provider"
    if name in sys.modules or importlib.util.find_spec("paddlefleet") is not None:
        return
    stub = types.ModuleType(name)
    stub.GPTModelProvider = type("GPTModelProvider", (), {"__doc__": "Placeholder base (no paddlefleet)."})
    sys.modules[name] = stub


def _stub_paddlefleet_ops() -> None:
    """PaddleFormers' MoE modules import `paddlefleet_ops` (DeepEP all-to-all kernels, GPU-only) at import
    time. Without it, register a module that reports DeepEP unavailable, which PaddleFormers handles."""
    if "paddlefleet_ops" in sys.modules or importlib.util.find_spec("paddlefleet_ops") is not None:
        return
    stub = types.ModuleType("paddlefleet_ops")
    stub.is_deep_ep_available = lambda: False
    stub.deep_gemm = None
    sys.modules["paddlefleet_ops"] = stub


# ---- DeepSeek-V3 MoE under auto-parallel --------------------------------------------------

def _make_moe_auto_parallel(model) -> None:
    """Give every DeepSeek-V3 MoE block a routing path that works on distributed tensors.

    PaddleFormers' token routing uses put_along_axis (its SPMD rule fails: "Broadcast dimension
    mismatch") and data-dependent gather/index_add_ (segfaults on dist tensors). On dist tensors the
    blocks below compute the same function with one_hot and dense products; on plain tensors they run
    PaddleFormers' code unchanged. The instances' classes are swapped, so nothing global is patched.
    """
    from paddleformers.transformers.deepseek_v3 import modeling

    router_cls, moe_cls = _moe_classes(modeling)
    for layer in model.model.layers:
        if isinstance(layer.mlp, modeling.DeepseekV3MoE):
            layer.mlp.__class__ = moe_cls
            layer.mlp.gate.__class__ = router_cls


def _moe_classes(modeling):
    import paddle

    class AutoParallelTopkRouter(modeling.DeepseekV3TopkRouter):
        """Sigmoid top-k routing; the group mask is built with one_hot instead of put_along_axis and the
        weights are read with take_along_axis (Tensor.view and .gather misbehave on dist tensors)."""

        def forward(self, hidden_states):
            if not hidden_states.is_dist():
                return super().forward(hidden_states)
            flat = hidden_states.reshape([-1, self.config.hidden_size]).astype("float32")
            scores = paddle.nn.functional.sigmoid(paddle.matmul(flat, self.weight.astype("float32")))
            topk_indices = self._topk_indices(scores)
            topk_weights = paddle.take_along_axis(scores, topk_indices, axis=1)
            if self.norm_topk_prob:
                topk_weights = topk_weights / (topk_weights.sum(axis=-1, keepdim=True) + 1e-20)
            return topk_indices, topk_weights * self.routed_scaling_factor

        @paddle.no_grad()
        def _topk_indices(self, scores):
            experts_per_group = self.n_routed_experts // self.n_group
            choice = scores + self.e_score_correction_bias.unsqueeze(0)
            group_scores = choice.reshape([-1, self.n_group, experts_per_group]).topk(2, axis=-1)[0].sum(axis=-1)
            group_idx = paddle.topk(group_scores, k=self.topk_group, axis=-1, sorted=False)[1]
            group_mask = paddle.nn.functional.one_hot(group_idx, self.n_group).sum(axis=1)
            score_mask = group_mask.unsqueeze(-1).expand([-1, self.n_group, experts_per_group])
            choice = choice.masked_fill(score_mask.reshape([-1, self.n_routed_experts]) == 0, 0.0)
            return paddle.topk(choice, k=self.top_k, axis=-1, sorted=False)[1]

    class AutoParallelMoE(modeling.DeepseekV3MoE):
        """Every expert runs on every token and is weighted by its (mostly zero) routing weight: the
        same sum as sparse dispatch, with static shapes that auto-parallel can shard. Costs
        num_experts / top_k times the expert FLOPs, which only matters beyond the tiny CPU tests."""

        def forward(self, hidden_states):
            if not hidden_states.is_dist():
                return super().forward(hidden_states)
            shape = hidden_states.shape
            topk_indices, topk_weights = self.gate(hidden_states)
            flat = hidden_states.reshape([-1, shape[-1]])
            combine = (paddle.nn.functional.one_hot(topk_indices, len(self.experts)).astype(topk_weights.dtype)
                       * topk_weights.unsqueeze(-1)).sum(axis=1)  # [tokens, experts]
            routed = paddle.zeros_like(flat, dtype=topk_weights.dtype)
            for index, expert in enumerate(self.experts):
                routed = routed + expert(flat) * combine[:, index:index + 1]
            return routed.astype(flat.dtype).reshape(shape) + self.shared_experts(hidden_states)

    return AutoParallelTopkRouter, AutoParallelMoE


__all__ = ["build_model", "SUPPORTED_FAMILIES"]
