"""Model presets, config.json frontend and the analytic trace: parameter counts and op-graph structure."""

import json

import pytest

from planner.frontends import load_model, preset_names
from planner.frontends.hf_config import spec_from_config
from planner.trace import trace_model

REQUIRED_PRESETS = ("gpt3-1.3b", "gpt3-6.7b", "gpt3-13b", "gpt3-175b", "llama-7b", "llama-13b", "llama2-70b",
                    "llama3.1-8b", "llama3.1-70b", "llama3.1-405b", "qwen2-7b", "qwen2-72b", "qwen2-57b-a14b",
                    "deepseek-v3", "deepseek-v3-demo", "llama-tiny", "qwen2-tiny", "gpt3-tiny", "deepseek-v3-tiny")


def test_all_required_presets_ship():
    assert set(REQUIRED_PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name, published_b", [
    ("llama3.1-8b", 8.03), ("llama3.1-70b", 70.6), ("llama3.1-405b", 405.9), ("gpt3-175b", 174.6),
    ("deepseek-v3", 671.0), ("qwen2-57b-a14b", 57.4), ("qwen2-72b", 72.7), ("qwen2-7b", 7.6)])
def test_parameter_counts_match_published_totals(name, published_b):
    params = trace_model(load_model(name), 4096).count_params()
    assert abs(params / 1e9 - published_b) / published_b < 0.005


def test_deepseek_v3_activated_and_mtp():
    graph = trace_model(load_model("deepseek-v3"), 4096)
    # DeepSeek publishes "37B activated": our count of weights a token multiplies (the input embedding is a
    # lookup) is 36.6B, which is 37B at the precision published; counting the lookup table too gives 37.55B.
    active = graph.count_params(active=True) / 1e9
    assert round(active) == 37 and abs(active - 36.63) < 0.01
    # the MTP module: one MoE layer + eh_proj + norms (HF lists 685B = 671B + 14B with copies of embed/head)
    mtp = (graph.count_params(include_mtp=True) - graph.count_params()) / 1e9
    assert 11.5 < mtp < 11.7
    assert graph.layer_kinds.count("dense") == 3 and graph.layer_kinds.count("moe") == 58
    assert graph.layer_kinds[-1] == "mtp"


def test_llama_layer_flops_match_closed_form():
    spec = load_model("llama-7b")
    s, h, f = 2048, spec.hidden_size, spec.intermediate_size
    dense = trace_model(spec, s).blocks["dense"]
    matmul = sum(op.fwd_flops for op in dense.ops() if op.op_type in ("linear", "attention"))
    assert matmul == pytest.approx(2 * s * (4 * h * h + 3 * h * f) + 4 * s * s * h)


def test_op_nodes_carry_names_shapes_and_costs():
    graph = trace_model(load_model("deepseek-v3"), 4096)
    assert set(graph.blocks) == {"embedding", "dense", "moe", "head", "mtp"}
    for block in graph.blocks.values():
        for op in block.ops():
            assert op.layer_pattern.startswith(("model", "lm_head"))
            assert op.out_shape and all(isinstance(s, tuple) for s in op.in_shapes)
    moe = {op.name: op for op in graph.blocks["moe"].ops()}
    assert moe["experts.gate_proj"].layer_pattern == "model.layers.*.mlp.experts.*.gate_proj"
    assert moe["q_b_proj"].weight_shape == (1536, 128 * 192)
    assert moe["attention"].bwd_flops == pytest.approx(2.5 * moe["attention"].fwd_flops)


CONFIGS = {
    "llama": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
              "max_position_embeddings": 131072},
    "qwen2": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
              "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
              "max_position_embeddings": 32768},
    "qwen3": {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
              "max_position_embeddings": 40960, "tie_word_embeddings": False},
    "qwen2_moe": {"model_type": "qwen2_moe", "hidden_size": 3584, "intermediate_size": 18944,
                  "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                  "vocab_size": 151936, "num_experts": 64, "num_experts_per_tok": 8, "moe_intermediate_size": 2560,
                  "shared_expert_intermediate_size": 20480, "max_position_embeddings": 131072},
    "qwen3_moe": {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                  "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "vocab_size": 151936,
                  "num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
                  "max_position_embeddings": 40960},
    "mixtral": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
                "num_experts_per_tok": 2, "max_position_embeddings": 32768},
    "deepseek_v3": {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
                    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
                    "num_experts_per_tok": 8, "first_k_dense_replace": 3, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                    "vocab_size": 129280, "num_nextn_predict_layers": 1, "max_position_embeddings": 163840},
    "gpt2": {"model_type": "gpt2", "n_layer": 96, "n_embd": 12288, "n_head": 96, "vocab_size": 50257,
             "n_positions": 2048},
}
EXPECTED_B = {"llama": 8.03, "qwen2": 7.62, "qwen3": 8.19, "qwen2_moe": 57.41, "qwen3_moe": 30.53, "mixtral": 46.70,
              "deepseek_v3": 671.03, "gpt2": 174.60}


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_config_json_for_every_supported_model_type(tmp_path, model_type):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIGS[model_type]))
    spec = load_model(str(path))
    assert trace_model(spec, 2048).count_params() / 1e9 == pytest.approx(EXPECTED_B[model_type], abs=0.01)


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": None}, "missing field 'num_hidden_layers'"),
    ({"hidden_size": -4096}, "'hidden_size' must be an integer >= 1"),
    ({"num_key_value_heads": 7}, "not a multiple of num_kv_heads=7"),
    ({"model_type": "bert"}, "model_type='bert' is not supported"),
])
def test_bad_config_says_what_is_wrong(change, message):
    config = {k: v for k, v in {**CONFIGS["llama"], **change}.items() if v is not None}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_from_config(config, "bad", origin="bad/config.json")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="presets are: .*llama-7b"):
        load_model("llama-8b")
