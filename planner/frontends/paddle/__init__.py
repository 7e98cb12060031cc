"""Paddle frontend: trace a live paddle.nn.Layer into the planner's op graph.

The only planner package that imports paddle, and only inside functions:
importing it costs nothing. See capture.py (model -> PIR program, no
weights) and lower.py (program -> OpGraph).

    from planner.frontends.paddle import load_model_class, trace_model_class
    graph = trace_model_class(load_model_class("paddleformers:LlamaForCausalLM"), config, seq_len=4096,
                              layer_kinds=spec.layer_kinds())
    make_plan(spec, "8xA100", graph=graph)
"""

from planner.frontends.paddle.api import (
    DECODER_KINDS, discover_layer_kinds, load_model_class, load_model_config, trace_config_file, trace_model_class)
from planner.frontends.paddle.capture import TraceError
from planner.frontends.paddle.lower import UnknownOpWarning

__all__ = ["DECODER_KINDS", "TraceError", "UnknownOpWarning", "discover_layer_kinds", "load_model_class",
           "load_model_config", "trace_config_file", "trace_model_class"]
