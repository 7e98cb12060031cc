"""Paddle frontend: PaddleFormers models traced into the op graph, cross-checked against the analytic trace.

Deliberate disagreements (named where they are tested):
- PaddleFormers 1.2.0's DeepseekV3Config drops num_nextn_predict_layers, so its model has no MTP module:
  the analytic side is compared with num_mtp_layers=0;
- Qwen2ForCausalLMDeprecated fuses q/k/v into qkv_proj (the analytic trace models that as one attention input,
  the traced graph reads q, k and v as three slices of it);
- the traced attention counts the qk^T and pv matmuls only (as the analytic one) and the traced elementwise
  ops count their own FLOPs (RMSNorm 4 per element instead of 5): forward FLOPs agree within 1%.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

paddle = pytest.importorskip("paddle")
pytest.importorskip("paddleformers")

from paddleformers.transformers import LlamaForCausalLM  # noqa: E402

from planner.api import make_plan  # noqa: E402
from planner.frontends import load_preset  # noqa: E402
from planner.frontends.hf_config import spec_from_config  # noqa: E402
from planner.frontends.paddle import (  # noqa: E402
    TraceError, UnknownOpWarning, discover_layer_kinds, load_model_class, trace_model_class)
from planner.frontends.paddle.capture import capture_model  # noqa: E402
from planner.frontends.paddle.lower import lower  # noqa: E402
from planner.frontends.paddle.optable import UNKNOWN_FLOPS_PER_ELEMENT  # noqa: E402
from planner.frontends.paddle.presets import config_dict, model_class_name  # noqa: E402
from planner.trace import trace_model  # noqa: E402
from tools.plan import main as plan_main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WIDEN = 4  # the custom model's MLP is this many times wider than the config says


def config_json(preset: str) -> dict:
    """The config.json of a preset (what `plan --model path/config.json` reads)."""
    return config_dict(load_preset(preset))


@pytest.fixture(scope="module")
def traced():
    """(analytic spec, traced graph) per (preset, seq_len), traced once per module."""
    cache: dict = {}

    def get(preset: str, seq_len: int):
        if (preset, seq_len) not in cache:
            config = config_json(preset)
            cls = load_model_class(model_class_name(load_preset(preset)))
            spec = spec_from_config(config, preset).replace(num_mtp_layers=0)
            graph = trace_model_class(cls, cls.config_class(**config), seq_len=seq_len, layer_kinds=spec.layer_kinds(),
                                      name=preset)
            cache[preset, seq_len] = spec, graph
        return cache[preset, seq_len]

    return get


def _check_against_analytic(spec, graph, seq_len: int) -> None:
    analytic = trace_model(spec, seq_len)
    assert graph.layer_kinds == analytic.layer_kinds
    assert {k: b.count for k, b in graph.blocks.items()} == {k: b.count for k, b in analytic.blocks.items()}
    assert graph.count_params() == analytic.count_params()
    assert graph.count_params(active=True) == analytic.count_params(active=True)
    assert graph.fwd_flops() == pytest.approx(analytic.fwd_flops(), rel=0.01)
    for kind, block in graph.blocks.items():
        assert block.fwd_flops == pytest.approx(analytic.blocks[kind].fwd_flops, rel=0.01), kind
        attention = [op for op in block.ops() if op.op_type == "attention"]
        expected = [op for op in analytic.blocks[kind].ops() if op.op_type == "attention"]
        assert [(op.heads, op.kv_heads) for op in attention] == [(op.heads, op.kv_heads) for op in expected]
        assert _weighted_ops(block) == _weighted_ops(analytic.blocks[kind]), kind


def _weighted_ops(block) -> set:
    """(op type, layer pattern, parameters) of the ops that hold weights."""
    return {(op.op_type, op.layer_pattern, op.params) for op in block.ops() if op.params}


@pytest.mark.parametrize("preset, seq_len", [("llama-tiny", 64), ("qwen2-tiny", 64), ("deepseek-v3-tiny", 64),
                                             ("qwen2-7b", 4096), ("llama3.1-405b", 8192)])
def test_traced_matches_analytic(traced, preset, seq_len):
    spec, graph = traced(preset, seq_len)
    _check_against_analytic(spec, graph, seq_len)


@pytest.mark.slow
def test_traced_deepseek_v3_matches_analytic_and_plans_alike(traced):
    spec, graph = traced("deepseek-v3", 4096)
    _check_against_analytic(spec, graph, 4096)
    analytic_plan, _ = make_plan(spec, "2048xH800", seq_len=4096)
    traced_plan, _ = make_plan(spec, "2048xH800", seq_len=4096, graph=graph)
    assert traced_plan.layout == analytic_plan.layout


def test_deepseek_v3_moe_block_structure(traced):
    spec, graph = traced("deepseek-v3-tiny", 64)
    moe = graph.blocks["moe"]
    ops = {op.name: op for op in moe.ops()}
    experts = [op for op in ops.values() if op.op_type == "expert_linear"]
    assert sorted(op.layer_pattern for op in experts) == [f"model.layers.*.mlp.experts.*.{p}"
                                                         for p in ("down_proj", "gate_proj", "up_proj")]
    assert all(op.num_experts == 4 and op.top_k == 2 and op.weight_shape[0] == 4 for op in experts)
    dispatch = [name for name, op in ops.items() if op.op_type == "dispatch"]
    router = next(name for name, op in ops.items() if op.op_type == "router")
    assert len(dispatch) == 2  # dispatch and combine around the experts
    assert any(moe.graph.has_edge(router, name) for name in dispatch)
    for op in experts:  # every expert GEMM is fed from the dispatch or the expert activation, never directly
        feeds = {ops[u].op_type for u in moe.graph.predecessors(op.name)}
        assert feeds <= {"dispatch", "elementwise", "expert_linear"}


@pytest.mark.parametrize("preset, devices", [("llama-tiny", "8xA100"), ("qwen2-tiny", "8xA100"),
                                             ("deepseek-v3-tiny", "8xA100"), ("qwen2-7b", "8xA100")])
def test_traced_and_analytic_graphs_give_the_same_plan(traced, preset, devices):
    seq_len = load_preset(preset).default_seq_len
    spec, graph = traced(preset, seq_len)
    analytic_plan, _ = make_plan(spec, devices, seq_len=seq_len)
    traced_plan, _ = make_plan(spec, devices, seq_len=seq_len, graph=graph)
    assert traced_plan.layout == analytic_plan.layout
    assert [(s.first_layer, s.last_layer) for s in traced_plan.stages] == \
        [(s.first_layer, s.last_layer) for s in analytic_plan.stages]


@pytest.mark.slow
def test_llama_405b_plans_alike(traced):
    spec, graph = traced("llama3.1-405b", 8192)
    analytic_plan, _ = make_plan(spec, "2048xH100", seq_len=8192)
    traced_plan, _ = make_plan(spec, "2048xH100", seq_len=8192, graph=graph)
    assert traced_plan.layout == analytic_plan.layout


@pytest.mark.parametrize("preset, layout", [
    ("llama-tiny", "mp=2,pp=1,sp=0"), ("llama-tiny", "mp=2,pp=2,sp=1"), ("qwen2-tiny", "mp=2,pp=1,sp=1"),
    ("deepseek-v3-tiny", "mp=2,pp=2,sp=1,ep=2")])
def test_tensor_parallel_plans_of_traced_and_analytic_graphs_agree(traced, preset, layout):
    """With the layout fixed the solver gives every layer the same Paddle parallel style on both graphs."""
    spec, graph = traced(preset, 64)
    analytic_plan, _ = make_plan(spec, "8xA100", seq_len=64, layout=layout)
    traced_plan, _ = make_plan(spec, "8xA100", seq_len=64, layout=layout, graph=graph)
    assert traced_plan.parallelize_plan == analytic_plan.parallelize_plan
    assert traced_plan.placements == analytic_plan.placements
    if preset == "llama-tiny":  # Megatron's pattern, found on the traced graph
        styles = {pattern: style["style"] for pattern, style in traced_plan.parallelize_plan.items()}
        assert styles["model.layers.*.self_attn.q_proj"] == styles["model.layers.*.mlp.up_proj"] == "ColWiseParallel"
        assert styles["model.layers.*.self_attn.o_proj"] == styles["model.layers.*.mlp.down_proj"] == "RowWiseParallel"


@pytest.mark.parametrize("preset", ["llama-tiny", "deepseek-v3-tiny"])
def test_layer_kinds_are_discovered_by_building_the_model(preset):
    spec = load_preset(preset)
    cls = load_model_class(model_class_name(spec))
    assert discover_layer_kinds(cls, cls.config_class(**config_json(preset))) == spec.layer_kinds()


def test_symbolic_trace_serves_every_sequence_length():
    """One trace with a symbolic sequence length, lowered at two lengths: attention grows quadratically."""
    config = config_json("llama-tiny")
    spec = spec_from_config(config, "llama-tiny")
    capture = capture_model(LlamaForCausalLM, LlamaForCausalLM.config_class(**config),
                            layer_kinds=spec.layer_kinds(), seq_len=64, name="llama-tiny")
    assert capture.seq_symbol and capture.traced_seq_len == 0
    for seq_len in (64, 256):
        graph = lower(capture, seq_len=seq_len, layer_kinds=spec.layer_kinds())
        assert graph.seq_len == seq_len
        assert graph.fwd_flops() == pytest.approx(trace_model(spec, seq_len).fwd_flops(), rel=0.01)
    short, long = (next(op for op in lower(capture, seq_len=n, layer_kinds=spec.layer_kinds()).blocks["dense"].ops()
                        if op.op_type == "attention") for n in (64, 256))
    assert long.fwd_flops == pytest.approx(16 * short.fwd_flops)


def test_deepseek_v3_falls_back_to_a_fixed_sequence_length():
    """PaddleFormers' DeepSeek-V3 rope branches on the batch size (`if b == 1`): traced at a fixed length."""
    config = config_json("deepseek-v3-tiny")
    spec = spec_from_config(config, "deepseek-v3-tiny")
    cls = load_model_class(model_class_name(load_preset("deepseek-v3-tiny")))
    capture = capture_model(cls, cls.config_class(**config), layer_kinds=spec.layer_kinds(), seq_len=64,
                            name="deepseek-v3-tiny")
    assert capture.traced_seq_len == 64 and not capture.seq_symbol
    with pytest.raises(ValueError, match="fixed sequence length of 64"):
        lower(capture, seq_len=128, layer_kinds=spec.layer_kinds())


# ---- a model without a preset ------------------------------------------------------------------

class WideMLP(paddle.nn.Layer):
    """A SwiGLU MLP WIDEN times wider than the config's, followed by an extra hidden x hidden projection."""

    def __init__(self, config) -> None:
        super().__init__()
        hidden, width = config.hidden_size, WIDEN * config.intermediate_size
        self.gate_proj = paddle.nn.Linear(hidden, width, bias_attr=False)
        self.up_proj = paddle.nn.Linear(hidden, width, bias_attr=False)
        self.down_proj = paddle.nn.Linear(width, hidden, bias_attr=False)
        self.mix_proj = paddle.nn.Linear(hidden, hidden, bias_attr=False)

    def forward(self, x):
        return self.mix_proj(self.down_proj(paddle.nn.functional.silu(self.gate_proj(x)) * self.up_proj(x)))


class WideLlamaForCausalLM(LlamaForCausalLM):
    """PaddleFormers Llama whose decoder layers all use WideMLP (one changed block kind)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        for layer in self.model.layers:
            layer.mlp = WideMLP(config)


class SoftplusMLP(WideMLP):
    """An activation the frontend has no cost model for (softplus)."""

    def forward(self, x):
        return self.down_proj(paddle.nn.functional.softplus(self.gate_proj(x)) * self.up_proj(x))


LLAMA_7B = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "_name_or_path": "llama-7b-like"}


def test_custom_model_is_traced_and_planned_differently():
    spec = spec_from_config(LLAMA_7B, "llama-7b-like")
    config = LlamaForCausalLM.config_class(**LLAMA_7B)
    stock = trace_model_class(LlamaForCausalLM, config, seq_len=4096, layer_kinds=spec.layer_kinds())
    wide = trace_model_class(WideLlamaForCausalLM, config, seq_len=4096)  # layer kinds found by building it
    h, f, layers = 4096, 11008, 32
    assert wide.count_params() - stock.count_params() == layers * (3 * h * f * (WIDEN - 1) + h * h)
    mix = next(op for op in wide.blocks["dense"].ops() if op.layer_pattern == "model.layers.*.mlp.mix_proj")
    assert mix.op_type == "linear" and mix.weight_shape == (h, h)
    assert wide.fwd_flops() > 2.5 * stock.fwd_flops()
    stock_plan, _ = make_plan(spec, "8xA100", graph=stock)
    wide_plan, _ = make_plan(spec, "8xA100", graph=wide)
    assert stock_plan.layout == make_plan(spec, "8xA100")[0].layout  # the stock trace plans like the analytic one
    assert wide_plan.layout != stock_plan.layout  # ~20B parameters no longer fit the stock layout
    assert wide_plan.params == wide.count_params()
    assert "model.layers.*.mlp.mix_proj.weight" in wide_plan.placements
    if wide_plan.layout.mp > 1:
        assert "model.layers.*.mlp.mix_proj" in wide_plan.parallelize_plan


def test_layers_that_differ_within_a_kind_are_refused():
    class AlternatingLlama(LlamaForCausalLM):
        def __init__(self, config) -> None:
            super().__init__(config)
            for layer in self.model.layers[::2]:
                layer.mlp = WideMLP(config)

    config = config_json("llama-tiny")
    with pytest.raises(TraceError, match="decoder layers 0 and 1 are both dense but built differently"):
        trace_model_class(AlternatingLlama, LlamaForCausalLM.config_class(**config), seq_len=64)


def test_unknown_op_warns_and_is_costed_conservatively():
    class SoftplusLlama(LlamaForCausalLM):
        def __init__(self, config) -> None:
            super().__init__(config)
            for layer in self.model.layers:
                layer.mlp = SoftplusMLP(config)

    config = config_json("llama-tiny")
    with pytest.warns(UnknownOpWarning, match=r"softplus \(x1\)"):
        graph = trace_model_class(SoftplusLlama, LlamaForCausalLM.config_class(**config), seq_len=64)
    act = next(op for op in graph.blocks["dense"].ops() if "softplus" in op.name)
    width = WIDEN * config["intermediate_size"]
    assert act.op_type == "elementwise" and act.saves_input
    assert act.fwd_flops >= UNKNOWN_FLOPS_PER_ELEMENT * 64 * width


# ---- the plan command ------------------------------------------------------------------------

def test_plan_cli_traces_a_model_class(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_json("llama-tiny")))
    assert plan_main(["--model", str(path), "--devices", "8xA100", "--format", "json"]) == 0
    analytic = json.loads(capsys.readouterr().out)
    assert plan_main(["--model-class", "paddleformers:LlamaForCausalLM", "--model", str(path), "--devices", "8xA100",
                      "--format", "json"]) == 0
    traced = json.loads(capsys.readouterr().out)
    assert traced["layout"] == analytic["layout"]
    assert traced["model"]["params"] == analytic["model"]["params"]


def test_plan_cli_traces_a_custom_class(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_json("llama-tiny")))
    assert plan_main(["--model-class", "tests.planner.test_paddle_trace:WideLlamaForCausalLM", "--model", str(path),
                      "--devices", "8xA100", "--format", "json"]) == 0
    spec = load_preset("llama-tiny")
    h, f = spec.hidden_size, spec.intermediate_size
    model = json.loads(capsys.readouterr().out)["model"]
    stock = trace_model(spec, spec.default_seq_len).count_params()
    assert model["params"] == stock + spec.num_layers * (3 * h * f * (WIDEN - 1) + h * h)


def test_plan_cli_warns_when_the_model_builds_no_mtp(tmp_path, capsys):
    config = dict(config_json("deepseek-v3-tiny"), num_nextn_predict_layers=1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="asks for 1 multi-token-prediction layers but DeepseekV3ForCausalLM built "
                                         "none"):
        assert plan_main(["--model-class", "paddleformers:DeepseekV3ForCausalLM", "--model", str(path),
                          "--devices", "8xA100", "--format", "json"]) == 0
    spec = load_preset("deepseek-v3-tiny")  # the same model without MTP
    params = trace_model(spec, spec.default_seq_len).count_params()
    assert json.loads(capsys.readouterr().out)["model"]["params"] == params


@pytest.mark.parametrize("args, message", [
    (["--model-class", "paddleformers"], "not of the form module:Class"),
    (["--model-class", "paddleformers:NoSuchModel"], "has no attribute 'NoSuchModel'"),
    (["--model-class", "json:JSONDecoder"], "not a paddle.nn.Layer subclass"),
    (["--model-class", "paddleformers:LlamaForCausalLM", "--model", "llama-tiny"], "needs --model to be a config.json"),
])
def test_plan_cli_model_class_errors(args, message, tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_json("llama-tiny")))
    assert plan_main(["--model", str(path), "--devices", "8xA100"] + args) == 2
    assert message in capsys.readouterr().err


def test_planning_without_model_class_never_imports_paddle():
    code = ("import sys; from tools.plan import main; import planner.frontends.paddle; "
            "rc = main(['--model', 'llama-tiny', '--devices', '8xA100']); "
            "assert rc == 0 and 'paddle' not in sys.modules, sorted(m for m in sys.modules if 'paddle' in m)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_full_size_traces_are_fast_and_small():
    """benchmarks/trace_speed.py: DeepSeek-V3 and Llama-3.1-405B trace in < 60 s and < 4 GiB (no weights)."""
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "trace_speed.py"), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert {row["model"] for row in rows} == {"deepseek-v3", "llama3.1-405b"}
    for row in rows:
        assert row["trace_s"] < 60 and row["peak_rss_bytes"] < 4 * 2**30, row
        assert row["params"] == row["analytic_params"]
