"""Read a Hugging Face / PaddleFormers config.json into a ModelSpec.

Supported `model_type`s: llama, qwen2, qwen2_moe, qwen3, qwen3_moe, mixtral,
deepseek_v3 and gpt2 (GPT-3 style). Field names follow the upstream configs.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.frontends.spec import MLASpec, ModelSpec, MoESpec

MODEL_TYPES = ("llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "gpt2")


class _Fields:
    """Typed access to a config dict; every error names the file and the field."""

    def __init__(self, config: dict, origin: str) -> None:
        self.config = config
        self.origin = origin

    def int(self, key: str, default: int | None = None, *, minimum: int = 1) -> int:
        value = self.config.get(key, default)
        if value is None:
            raise ValueError(f"{self.origin}: missing field {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{self.origin}: field {key!r} must be an integer >= {minimum}, got {value!r}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"{self.origin}: field {key!r} must be true or false, got {value!r}")
        return value


def _common(f: _Fields, name: str, family: str) -> dict:
    heads = f.int("num_attention_heads")
    return dict(
        name=name, family=family,
        num_layers=f.int("num_hidden_layers"), hidden_size=f.int("hidden_size"),
        num_attention_heads=heads, num_kv_heads=f.int("num_key_value_heads", heads),
        intermediate_size=f.int("intermediate_size"), vocab_size=f.int("vocab_size"),
        max_position_embeddings=f.int("max_position_embeddings", 4096),
        tie_word_embeddings=f.bool("tie_word_embeddings", False),
        default_seq_len=min(4096, f.int("max_position_embeddings", 4096)),
    )


def _moe_layers(f: _Fields, num_layers: int) -> tuple[int, int]:
    """(first_k_dense, layer_freq) for Qwen-MoE style configs; they list dense layers explicitly."""
    only_dense = f.config.get("mlp_only_layers") or []
    step = f.int("decoder_sparse_step", 1)
    if only_dense and list(only_dense) != list(range(len(only_dense))):
        raise ValueError(f"{f.origin}: mlp_only_layers={only_dense} is not a prefix of layers; "
                         "only leading dense layers are supported")
    if len(only_dense) > num_layers:
        raise ValueError(f"{f.origin}: mlp_only_layers lists {len(only_dense)} layers of {num_layers}")
    return len(only_dense), step


def spec_from_config(config: dict, name: str, origin: str = "config") -> ModelSpec:
    """ModelSpec from a parsed config dict."""
    f = _Fields(config, origin)
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{origin}: model_type={model_type!r} is not supported; supported: {', '.join(MODEL_TYPES)}")
    if model_type == "gpt2":
        hidden = f.int("n_embd")
        positions = f.int("n_positions", 2048)
        inner = config.get("n_inner") or 4 * hidden
        return ModelSpec(
            name=name, family="gpt", num_layers=f.int("n_layer"), hidden_size=hidden,
            num_attention_heads=f.int("n_head"), num_kv_heads=f.int("n_head"),
            intermediate_size=_Fields({"n_inner": inner}, origin).int("n_inner"),
            vocab_size=f.int("vocab_size"), max_position_embeddings=positions,
            tie_word_embeddings=f.bool("tie_word_embeddings", True), activation="gelu", norm="layernorm",
            qkv_bias=True, linear_bias=True, learned_position_embeddings=True,
            default_seq_len=positions, source=origin)
    if model_type in ("llama", "qwen2", "qwen3"):
        values = _common(f, name, "llama" if model_type == "llama" else model_type)
        values.update(qkv_bias=model_type == "qwen2" or f.bool("attention_bias", False),
                      qk_norm=model_type == "qwen3", head_dim=f.int("head_dim", values["hidden_size"] // values["num_attention_heads"]))
        return ModelSpec(source=origin, **values)
    if model_type in ("qwen2_moe", "qwen3_moe"):
        values = _common(f, name, model_type)
        first_dense, step = _moe_layers(f, values["num_layers"])
        shared = f.int("shared_expert_intermediate_size", 0, minimum=0) if model_type == "qwen2_moe" else 0
        moe = MoESpec(num_experts=f.int("num_experts"), top_k=f.int("num_experts_per_tok"),
                      expert_intermediate_size=f.int("moe_intermediate_size"),
                      num_shared_experts=1 if shared else 0, shared_expert_intermediate_size=shared,
                      shared_expert_gate=bool(shared), first_k_dense=first_dense, layer_freq=step)
        values.update(qkv_bias=model_type == "qwen2_moe", qk_norm=model_type == "qwen3_moe", moe=moe,
                      head_dim=f.int("head_dim", values["hidden_size"] // values["num_attention_heads"]))
        return ModelSpec(source=origin, **values)
    if model_type == "mixtral":
        values = _common(f, name, "mixtral")
        moe = MoESpec(num_experts=f.int("num_local_experts"), top_k=f.int("num_experts_per_tok"),
                      expert_intermediate_size=values["intermediate_size"])
        return ModelSpec(source=origin, moe=moe, **values)
    # deepseek_v3
    values = _common(f, name, "deepseek_v3")
    mla = MLASpec(q_lora_rank=f.int("q_lora_rank", 0, minimum=0), kv_lora_rank=f.int("kv_lora_rank"),
                  qk_nope_head_dim=f.int("qk_nope_head_dim"), qk_rope_head_dim=f.int("qk_rope_head_dim"),
                  v_head_dim=f.int("v_head_dim"))
    moe = MoESpec(num_experts=f.int("n_routed_experts"), top_k=f.int("num_experts_per_tok"),
                  expert_intermediate_size=f.int("moe_intermediate_size"),
                  num_shared_experts=f.int("n_shared_experts", 0, minimum=0),
                  shared_expert_intermediate_size=f.int("moe_intermediate_size"),
                  first_k_dense=f.int("first_k_dense_replace", 0, minimum=0), layer_freq=f.int("moe_layer_freq", 1))
    values.update(mla=mla, moe=moe, head_dim=mla.qk_nope_head_dim + mla.qk_rope_head_dim,
                  num_mtp_layers=f.int("num_nextn_predict_layers", 0, minimum=0))
    return ModelSpec(source=origin, **values)


def load_config(path: str | Path) -> ModelSpec:
    """ModelSpec from a config.json file (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    name = config.get("_name_or_path") or path.parent.name or path.stem
    return spec_from_config(config, str(name), origin=str(path))
