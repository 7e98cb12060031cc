"""Stand-ins for GPU-only packages that PaddleFormers 1.2.0 imports at module import time.

The runtime has its own copies (runtime/models.py); the planner must not
depend on the runtime, so the tracer keeps these two small ones. Each
installs only when the real package is absent.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def install_stubs() -> None:
    """Register `paddlefleet_ops` and `paddleformers.transformers.gpt_provider` stand-ins where missing."""
    if "paddlefleet_ops" not in sys.modules and importlib.util.find_spec("paddlefleet_ops") is None:
        # DeepEP all-to-all kernels; PaddleFormers' MoE modules handle is_deep_ep_available() == False.
        stub = types.ModuleType("paddlefleet_ops")
        stub.is_deep_ep_available = lambda: False
        stub.deep_gemm = None
        sys.modules["paddlefleet_ops"] = stub
    provider = "paddleformers.transformers.gpt_provider"
    if provider not in sys.modules and importlib.util.find_spec("paddlefleet") is None:
        # qwen2/modeling.py imports it (it hard-requires paddlefleet) only to subclass GPTModelProvider
        # for the fleet Qwen2; the classic Qwen2ForCausalLMDeprecated does not need it.
        stub = types.ModuleType(provider)
        stub.GPTModelProvider = type("GPTModelProvider", (), {"__doc__": "Placeholder base (no paddlefleet)."})
        sys.modules[provider] = stub
