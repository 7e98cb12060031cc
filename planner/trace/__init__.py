"""Trace: ModelSpec (or a live paddle.nn.Layer) -> OpGraph of ops per block kind."""

from planner.trace.analytic import trace_model
from planner.trace.graph import Block, OpGraph, OpNode

__all__ = ["Block", "OpGraph", "OpNode", "trace_model"]
