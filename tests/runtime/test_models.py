"""runtime/models.py: every supported family builds from its tiny preset with the layer names the planner
must emit, deterministically per seed; DeepSeek-V3's dist-tensor MoE path equals PaddleFormers' routing."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from planner.frontends import load_preset
from runtime.models import build_model

# Names that must exist (one decoder layer's worth; N = 0 or the first MoE layer).
REAL_NAMES = {
    "llama-tiny": ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                   "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
                   "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.norm", "lm_head"],
    "qwen2-tiny": ["model.embed_tokens", "model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj",
                   "model.layers.0.mlp.up_gate_proj", "model.layers.0.mlp.down_proj", "model.norm", "lm_head"],
    "deepseek-v3-tiny": ["model.layers.0.self_attn.q_a_proj", "model.layers.0.self_attn.q_b_proj",
                         "model.layers.0.self_attn.kv_a_proj_with_mqa", "model.layers.0.self_attn.kv_b_proj",
                         "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj",
                         "model.layers.1.mlp.experts.3.down_proj", "model.layers.1.mlp.gate",
                         "model.layers.1.mlp.shared_experts.up_proj", "lm_head"],
    "gpt3-tiny": ["model.embed_tokens", "model.embed_positions", "model.layers.0.self_attn.q_proj",
                  "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.norm"],
}


@pytest.mark.parametrize("preset", sorted(REAL_NAMES))
def test_builds_with_real_names_and_seeded_weights(preset):
    spec = load_preset(preset)
    model = build_model(spec, seed=7)
    names = {name for name, _ in model.named_sublayers()}
    assert set(REAL_NAMES[preset]) <= names, sorted(set(REAL_NAMES[preset]) - names)
    ids = paddle.to_tensor(np.arange(2 * 8).reshape(2, 8) % spec.vocab_size, dtype="int64")
    logits = model(input_ids=ids, return_dict=False)[0]
    assert logits.shape == [2, 8, spec.vocab_size]
    twin, other = build_model(spec, seed=7), build_model(spec, seed=8)
    first = {k: v.numpy() for k, v in model.state_dict().items()}
    assert all(np.array_equal(first[k], v.numpy()) for k, v in twin.state_dict().items())
    assert any(not np.array_equal(first[k], v.numpy()) for k, v in other.state_dict().items() if v.ndim == 2)


def test_unsupported_models_are_named():
    with pytest.raises(ValueError, match="family 'qwen2_moe' has no runtime builder; supported: llama, qwen2"):
        build_model(load_preset("qwen2-57b-a14b"), seed=0)
    with pytest.raises(ValueError, match="num_mtp_layers=1 is not supported"):
        build_model(load_preset("deepseek-v3-tiny").replace(num_mtp_layers=1), seed=0)
    with pytest.raises(ValueError, match="the llama builder needs activation='swiglu', got 'gelu'"):
        build_model(load_preset("llama-tiny").replace(activation="gelu"), seed=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_deepseek_moe_on_dist_tensors_equals_paddleformers_routing(groups):
    import paddle.distributed as dist

    model = build_model(load_preset("deepseek-v3-tiny"), seed=3)
    moe = model.model.layers[1].mlp
    assert type(moe).__name__ == "AutoParallelMoE" and type(moe.gate).__name__ == "AutoParallelTopkRouter"
    moe.gate.n_group, moe.gate.topk_group = groups, 1  # with 2 groups only one group's experts may be picked
    moe.gate.e_score_correction_bias.set_value(paddle.to_tensor([0.3, -0.2, 0.1, 0.0]))
    hidden = paddle.to_tensor(np.random.RandomState(0).randn(2, 8, 64).astype("float32"))
    reference = moe(hidden)  # plain tensors: PaddleFormers' sparse dispatch
    mesh = dist.ProcessMesh([0], dim_names=["dp"])
    routed = moe(dist.shard_tensor(hidden, mesh, [dist.Replicate()]))
    assert routed.is_dist()
    np.testing.assert_allclose(routed._local_value().numpy(), reference.numpy(), rtol=0, atol=1e-6)
