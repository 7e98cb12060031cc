"""Entry points of the Paddle frontend: model class and config -> OpGraph."""

from __future__ import annotations

import importlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from planner.frontends.paddle.compat import install_stubs
from planner.trace.graph import OpGraph

if TYPE_CHECKING:
    from planner.frontends.spec import ModelSpec

log = logging.getLogger(__name__)

DECODER_KINDS = ("dense", "moe")


def load_model_class(spec: str) -> type:
    """The class named by `module:Class` (e.g. "paddleformers:LlamaForCausalLM"), a paddle.nn.Layer."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"model class {spec!r} is not of the form module:Class (e.g. paddleformers:LlamaForCausalLM)")
    install_stubs()
    try:
        target = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"model class {spec!r}: cannot import {module_name!r} ({error})") from None
    found = _attribute(target, attribute)
    if found is None:
        # PaddleFormers exports its models from paddleformers.transformers: accept "paddleformers:LlamaForCausalLM".
        try:
            found = _attribute(importlib.import_module(f"{module_name}.transformers"), attribute)
        except ImportError:
            found = None
    if found is None:
        raise ValueError(f"model class {spec!r}: {module_name!r} has no attribute {attribute!r}")
    target = found
    import paddle

    if not (isinstance(target, type) and issubclass(target, paddle.nn.Layer)):
        raise ValueError(f"model class {spec!r} is not a paddle.nn.Layer subclass")
    return target


def _attribute(owner, dotted: str):
    for part in dotted.split("."):
        if not hasattr(owner, part):
            return None
        owner = getattr(owner, part)
    return owner


def load_model_config(model_class: type, path: str | Path):
    """The model's config object from a config.json (or a directory holding one), via its `config_class`."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    config_class = getattr(model_class, "config_class", None)
    if config_class is None:
        raise ValueError(f"{model_class.__name__} has no config_class to read {path} with; "
                         "build its config in Python and call trace_model_class")
    return config_class(**data)


def discover_layer_kinds(model_class: type, config) -> tuple[str, ...]:
    """Kind of every decoder layer, from a weightless build of the full model ("moe": has routed experts).

    Cost grows with the number of sublayers (about 40 s for DeepSeek-V3's 15k experts on
    2 cores); pass layer_kinds to trace_model_class to skip it.
    """
    import paddle

    from planner.frontends.paddle.capture import TraceError, decoder_layer_list, find_moe_layers, structure

    install_stubs()
    with paddle.LazyGuard():
        model = model_class(config)
    path, layers = decoder_layer_list(model, config.num_hidden_layers)
    layers = layers[:config.num_hidden_layers]
    moe_scopes = find_moe_layers(model, dict(model.named_sublayers()).get(path))
    kinds, signatures = [], {}
    for index, layer in enumerate(layers):
        kind = "moe" if any(s.startswith(f"{path}.{index}.") for s in moe_scopes) else "dense"
        signature = structure(layer)
        if signatures.setdefault(kind, (index, signature))[1] != signature:
            raise TraceError(f"{model_class.__name__}: decoder layers {signatures[kind][0]} and {index} are both "
                             f"{kind} but built differently; the op graph holds one dense and one MoE block")
        kinds.append(kind)
    return tuple(kinds)


def trace_model_class(model_class: type, config, *, seq_len: int, layer_kinds: tuple[str, ...] | None = None,
                      name: str | None = None, dtype_bytes: int = 2) -> OpGraph:
    """The op graph of `model_class(config)` at `seq_len` tokens, traced without weights.

    `layer_kinds` ("dense" / "moe" per decoder layer, e.g. ModelSpec.layer_kinds()) says which
    layers are alike; without it they are found by building the model (see discover_layer_kinds).
    One decoder layer per kind is traced; Block.count comes from `layer_kinds`.
    """
    from planner.frontends.paddle.capture import capture_model
    from planner.frontends.paddle.lower import lower

    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{model_class.__name__}: config.num_hidden_layers must be a positive integer, got {layers!r}")
    if layer_kinds is None:
        layer_kinds = discover_layer_kinds(model_class, config)
    layer_kinds = tuple(layer_kinds)
    bad = sorted(set(layer_kinds) - set(DECODER_KINDS))
    if bad:
        raise ValueError(f"layer kinds {bad} are not among {', '.join(DECODER_KINDS)}")
    if len(layer_kinds) != layers:
        raise ValueError(f"{len(layer_kinds)} layer kinds given for {layers} decoder layers")
    name = name or getattr(config, "_name_or_path", "") or model_class.__name__
    start = time.perf_counter()
    capture = capture_model(model_class, config, layer_kinds=layer_kinds, seq_len=seq_len, name=name)
    graph = lower(capture, seq_len=seq_len, layer_kinds=layer_kinds, dtype_bytes=dtype_bytes)
    log.info("traced %s (%s) in %.1f s", name, capture.mode, time.perf_counter() - start)
    return graph


def trace_config_file(model_class: str, config_path: str | Path, *, spec: "ModelSpec", seq_len: int) -> OpGraph:
    """Trace `module:Class` built from a config.json; `spec` (read from the same file) gives the layer kinds."""
    if not str(config_path).endswith(".json") and not Path(config_path).is_dir():
        raise ValueError(f"--model-class needs --model to be a config.json (or a directory holding one), "
                         f"got {str(config_path)!r}")
    cls = load_model_class(model_class)
    config = load_model_config(cls, config_path)
    graph = trace_model_class(cls, config, seq_len=seq_len, layer_kinds=spec.layer_kinds(), name=spec.name)
    if spec.num_mtp_layers and "mtp" not in graph.blocks:
        # PaddleFormers 1.2.0's DeepseekV3Config resets num_nextn_predict_layers to 0 in __init__
        warnings.warn(f"{spec.name}: the config asks for {spec.num_mtp_layers} multi-token-prediction layers but "
                      f"{cls.__name__} built none (its config object has num_nextn_predict_layers="
                      f"{getattr(config, 'num_nextn_predict_layers', None)}); planning without them",
                      UserWarning, stacklevel=2)
    return graph
