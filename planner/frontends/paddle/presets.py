"""Presets as PaddleFormers models: the config.json of a ModelSpec and the class that builds it.

Lets a preset be traced like a user's model (benchmarks, cross-checks against
the analytic trace). Qwen2 maps to Qwen2ForCausalLMDeprecated, the Qwen2 that
runs without the GPU-only paddlefleet package.
"""

from __future__ import annotations

from types import MappingProxyType

from planner.frontends.spec import ModelSpec

PADDLEFORMERS_CLASSES = MappingProxyType({
    "llama": "paddleformers:LlamaForCausalLM",
    "qwen2": "paddleformers.transformers.qwen2.modeling:Qwen2ForCausalLMDeprecated",
    "deepseek_v3": "paddleformers:DeepseekV3ForCausalLM",
})


def model_class_name(spec: ModelSpec) -> str:
    """`module:Class` of the PaddleFormers model for `spec`'s family."""
    if spec.family not in PADDLEFORMERS_CLASSES:
        raise ValueError(f"model {spec.name!r}: family {spec.family!r} has no PaddleFormers class here; "
                         f"known: {', '.join(PADDLEFORMERS_CLASSES)}")
    return PADDLEFORMERS_CLASSES[spec.family]


def config_dict(spec: ModelSpec) -> dict:
    """The config.json (Hugging Face / PaddleFormers field names) that planner.frontends.hf_config reads as `spec`."""
    model_class_name(spec)
    out = {"model_type": spec.family, "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
           "intermediate_size": spec.intermediate_size, "num_hidden_layers": spec.num_layers,
           "num_attention_heads": spec.num_attention_heads, "num_key_value_heads": spec.num_kv_heads,
           "max_position_embeddings": spec.max_position_embeddings, "tie_word_embeddings": spec.tie_word_embeddings,
           "_name_or_path": spec.name}
    if spec.family == "llama":
        out.update(head_dim=spec.head_dim, attention_bias=spec.qkv_bias)
    if spec.family == "deepseek_v3":
        mla, moe = spec.mla, spec.moe
        out.update(q_lora_rank=mla.q_lora_rank, kv_lora_rank=mla.kv_lora_rank, qk_nope_head_dim=mla.qk_nope_head_dim,
                   qk_rope_head_dim=mla.qk_rope_head_dim, v_head_dim=mla.v_head_dim,
                   n_routed_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                   moe_intermediate_size=moe.expert_intermediate_size, n_shared_experts=moe.num_shared_experts,
                   first_k_dense_replace=moe.first_k_dense, moe_layer_freq=moe.layer_freq,
                   num_nextn_predict_layers=spec.num_mtp_layers, n_group=1, topk_group=1, topk_method="noaux_tc",
                   scoring_func="sigmoid", norm_topk_prob=True,
                   # PaddleFormers' rope initialiser reads rope_scaling["factor"] even for the default rope
                   rope_scaling={"rope_type": "default", "factor": 1.0})
    return out
