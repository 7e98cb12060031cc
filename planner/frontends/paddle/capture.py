"""Trace a Paddle model class to a PIR program, without weights, one decoder layer per block kind.

How (paddlepaddle 3.3.1):
1. Build the model under `paddle.LazyGuard()` (parameters are never allocated)
   from a copy of its config with `num_hidden_layers` cut to the shortest
   prefix that holds one layer of every kind.
2. Give every routed-expert layer a stand-in forward (`_moe_forward`): the
   real ones route tokens with data-dependent shapes and control flow
   (`if token_indices.numel() > 0`, `Tensor.view`) that static tracing
   cannot express. The stand-in runs the router's matmul, ONE expert on all
   tokens and the shared experts; `lower` scales the expert to top_k of
   num_experts and adds the dispatch and combine.
3. Register forward pre/post hooks on every sublayer. PIR op ids grow with
   creation, so the id of the block's last op at each hook brackets the ops
   each layer created; that gives every op its Paddle layer name.
4. `paddle.jit.to_static(model.forward, input_spec=..., full_graph=True)`
   with a symbolic batch and sequence ([None, None]); models that branch on
   the batch size (DeepSeek-V3's rope: `if b == 1`) are retried with batch 1,
   then with a concrete sequence length.
5. Run PIR's `infer_symbolic_shape_pass` with its debug log level on, which
   writes each op's symbolic result shapes into the `sym_shape_str` attribute.
"""

from __future__ import annotations

import copy
import logging
import types

from planner.frontends.paddle.compat import install_stubs
from planner.frontends.paddle.dims import Dim, constant, parse_sym_shapes, symbol
from planner.frontends.paddle.program import Capture, MoERecord, RawOp, TensorInfo

log = logging.getLogger(__name__)

# Config fields set for tracing: no KV cache, one device, and the fused RMSNorm kernel off
# (PaddleFormers reads config.get("fuse_rms_norm", True); the kernel is GPU-only and the unfused
# norm has the same costs).
TRACE_CONFIG = (("use_cache", False), ("fuse_rms_norm", False), ("tensor_model_parallel_size", 1),
                ("sequence_parallel", False))
SCALAR_TYPES = (bool, int, float, str)


class TraceError(ValueError):
    """The model given cannot be traced (bad input to the planner); the message says what failed how."""


def capture_model(model_class: type, config, *, layer_kinds: tuple[str, ...], seq_len: int,
                  name: str) -> Capture:
    """Trace `model_class(config)` reduced to the decoder layers that represent `layer_kinds`.

    `layer_kinds` labels every decoder layer of the full model; the first layer of each
    label is traced. `seq_len` (tokens) is used only if the model cannot be traced with a
    symbolic sequence length.
    """
    import paddle

    install_stubs()
    representatives = {}
    for index, kind in enumerate(layer_kinds):
        representatives.setdefault(kind, index)
    traced_layers = max(representatives.values()) + 1
    reduced = copy.deepcopy(config)
    reduced.num_hidden_layers = traced_layers
    for key, value in TRACE_CONFIG:
        setattr(reduced, key, value)
    with paddle.LazyGuard():
        model = model_class(reduced)
    model.eval()
    layer_list = decoder_layer_list(model, traced_layers)
    moe_layers = _install_moe_forwards(model, layer_list)
    _check_kinds(layer_list, layer_kinds[:traced_layers], moe_layers, name)
    _ignore_paddleformers_config()
    errors = []
    for mode, shape in (("symbolic batch and sequence", [None, None]), ("batch 1, symbolic sequence", [1, None]),
                        (f"batch 1, sequence {seq_len}", [1, seq_len])):
        recorder = _Recorder(model, layer_list[0], moe_layers)
        try:
            static = paddle.jit.to_static(model.forward, full_graph=True,
                                          input_spec=[paddle.static.InputSpec(shape, "int64", "input_ids")])
            program = static.concrete_program
        except Exception as error:  # dy2static raises many types; the next input spec may work
            errors.append(f"{mode}: {type(error).__name__}: {_last_line(error)}")
            log.info("tracing %s with %s failed: %s", name, mode, errors[-1])
            continue
        finally:
            recorder.remove()
        return _to_capture(program, model, recorder, layer_list, layer_kinds[:traced_layers], representatives,
                           moe_layers, name=name, mode=mode, seq_len=seq_len if shape[1] is not None else 0)
    raise TraceError(f"could not trace {name} ({model_class.__name__}) to a static program:\n  " + "\n  ".join(errors))


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _ignore_paddleformers_config() -> None:
    """dy2static recurses forever in PaddleFormers' PretrainedConfig.__getattribute__; leave that module as Python."""
    import paddle

    try:
        import paddleformers.transformers.configuration_utils as configuration_utils
    except ImportError:
        return
    paddle.jit.ignore_module([configuration_utils])


def decoder_layer_list(model, traced_layers: int) -> tuple[str, list]:
    """(path, layers) of the decoder LayerList: the shallowest LayerList with at least `traced_layers` entries."""
    import paddle

    found = [(name.count("."), name, layer) for name, layer in model.named_sublayers()
             if isinstance(layer, paddle.nn.LayerList) and len(layer) >= traced_layers]
    if not found:
        raise TraceError(f"{type(model).__name__}: no nn.LayerList of decoder layers (with at least {traced_layers} "
                         "entries after setting config.num_hidden_layers) to trace")
    _, path, layers = min(found, key=lambda item: (item[0], item[1]))
    return path, list(layers)[:traced_layers]


def structure(layer) -> tuple:
    """A layer's structure: the class and parameter shapes of every sublayer, by relative name."""
    return tuple((name, type(sub).__name__, tuple((p_name, tuple(p.shape)) for p_name, p in
                                                   sub.named_parameters(include_sublayers=False)))
                 for name, sub in layer.named_sublayers(include_self=True))


def _check_kinds(layer_list: tuple[str, list], kinds: tuple[str, ...], moe_layers: dict, name: str) -> None:
    """Layers that claim the same kind must have the same structure, and "moe" must mean routed experts."""
    path, layers = layer_list
    seen: dict[str, tuple[int, tuple]] = {}
    for index, (layer, kind) in enumerate(zip(layers, kinds)):
        has_moe = any(scope.startswith(f"{path}.{index}.") for scope in moe_layers)
        if (kind == "moe") != has_moe:
            raise TraceError(f"{name}: decoder layer {index} is labelled {kind!r} but "
                             f"{'has' if has_moe else 'has no'} routed experts")
        signature = structure(layer)
        if kind in seen and seen[kind][1] != signature:
            raise TraceError(f"{name}: decoder layers {seen[kind][0]} and {index} are both {kind!r} but differ in "
                             "structure; the op graph holds one block per kind")
        seen.setdefault(kind, (index, signature))


# ---- routed experts -------------------------------------------------------------------------

def find_moe_layers(model, decoder_list) -> dict:
    """Routed-expert layers: scope -> parts (experts list, router, shared experts, top_k).

    A layer is one when a child nn.LayerList (not the decoder list) holds two or more
    identically built experts with parameters; its router is the child with a 2-D weight
    that has a num_experts dim.
    """
    import paddle

    out = {}
    for scope, layer in model.named_sublayers():
        experts = [(child_name, child) for child_name, child in layer.named_children()
                   if isinstance(child, paddle.nn.LayerList) and child is not decoder_list and len(child) >= 2
                   and len({structure(e) for e in child}) == 1 and any(True for _ in child[0].parameters())]
        if not experts:
            continue
        experts_name, expert_list = experts[0]
        num_experts = len(expert_list)
        gate = _router(layer, experts_name, num_experts, scope)
        shared, shared_gate = _shared_experts(layer, experts_name, gate[0])
        out[scope] = {"scope": scope, "experts_name": experts_name, "num_experts": num_experts, "gate": gate,
                      "shared": shared, "shared_gate": shared_gate, "top_k": _top_k(layer, gate[1], scope),
                      "keys": {}, "layer": layer}
    return out


def _install_moe_forwards(model, layer_list: tuple[str, list]) -> dict:
    """Give every routed-expert layer the stand-in forward; returns scope -> its parts."""
    path, _ = layer_list
    out = find_moe_layers(model, dict(model.named_sublayers()).get(path))
    for parts in out.values():
        parts["layer"].forward = types.MethodType(_moe_forward(parts), parts["layer"])
    return out


def _router(layer, experts_name: str, num_experts: int, scope: str) -> tuple[str, object, object]:
    """(child name, child layer, weight) of the router: the child whose 2-D weight has a num_experts dim."""
    for child_name, child in layer.named_children():
        if child_name == experts_name:
            continue
        for _, param in child.named_parameters():
            if len(param.shape) == 2 and num_experts in param.shape:
                return child_name, child, param
    raise TraceError(f"{scope}: routed experts ({num_experts}) without a router weight with {num_experts} outputs")


def _shared_experts(layer, experts_name: str, gate_name: str) -> tuple[list, object]:
    """Children besides the router and experts: shared experts, and a 1-output shared-expert gate if any."""
    shared, shared_gate = [], None
    for child_name, child in layer.named_children():
        if child_name in (experts_name, gate_name) or not any(True for _ in child.parameters()):
            continue
        weights = [p for p in child.parameters() if len(p.shape) == 2]
        if len(weights) == 1 and 1 in weights[0].shape:
            shared_gate = child
        else:
            shared.append(child)
    return shared, shared_gate


def _top_k(layer, gate, scope: str) -> int:
    for owner in (layer, gate, getattr(layer, "config", None), getattr(gate, "config", None)):
        for attribute in ("top_k", "num_experts_per_tok", "moe_k"):
            value = getattr(owner, attribute, None) if owner is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    raise TraceError(f"{scope}: cannot find the experts per token (top_k / num_experts_per_tok) of this MoE layer")


def _moe_forward(parts: dict):
    """The stand-in forward of one MoE layer: router matmul, one expert on every token, shared experts."""
    import paddle

    @paddle.jit.not_to_static
    def forward(self, hidden_states, *args, **kwargs):
        keys = parts["keys"]
        width = hidden_states.shape[-1]
        flat = paddle.reshape(hidden_states, [-1, width])
        weight = parts["gate"][2]
        logits = paddle.matmul(flat, weight, transpose_y=weight.shape[0] != width)
        expert_out = getattr(self, parts["experts_name"])[0](flat)
        routed = paddle.reshape(expert_out, paddle.shape(hidden_states))
        out = routed
        for shared in parts["shared"]:
            shared_out = shared(hidden_states)
            if parts["shared_gate"] is not None:
                shared_out = paddle.nn.functional.sigmoid(parts["shared_gate"](hidden_states)) * shared_out
            out = out + shared_out
        keys.update(input=hidden_states.id, router=logits.id, expert_in=flat.id, expert_out=expert_out.id,
                    routed=routed.id)
        return out

    return forward


# ---- hooks: which layer created which op ---------------------------------------------------

class _Recorder:
    """Forward hooks that bracket each sublayer's ops by PIR op id and keep decoder layer outputs."""

    def __init__(self, model, layer_list_path: str, moe_layers: dict) -> None:
        self.events: list[tuple[int, str, str]] = []  # (last op id, "pre"/"post", layer name)
        self.outputs: dict[str, str] = {}
        self.handles = []
        self.layer_list_path = layer_list_path
        for parts in moe_layers.values():
            parts["keys"].clear()
        for scope, layer in model.named_sublayers():
            self.handles.append(layer.register_forward_pre_hook(self._pre(scope)))
            self.handles.append(layer.register_forward_post_hook(self._post(scope)))

    @staticmethod
    def _last_op_id() -> int:
        import paddle

        block = paddle.static.default_main_program().global_block()
        return block.back().id() if block.num_ops() else -1

    def _pre(self, scope: str):
        def hook(layer, inputs):
            self.events.append((self._last_op_id(), "pre", scope))

        return hook

    def _post(self, scope: str):
        def hook(layer, inputs, outputs):
            self.events.append((self._last_op_id(), "post", scope))
            if scope.rpartition(".")[0] == self.layer_list_path:
                value = _first_value(outputs)
                if value is not None:
                    self.outputs[scope] = value.id

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def scopes(self, op_ids: list[int]) -> list[str]:
        """The innermost layer that was running when each op (by id, ascending) was created."""
        stack: list[str] = []
        out, event = [], 0
        for op_id in op_ids:
            while event < len(self.events) and self.events[event][0] < op_id:
                _, kind, scope = self.events[event]
                if kind == "pre":
                    stack.append(scope)
                else:
                    stack.pop()
                event += 1
            out.append(stack[-1] if stack else "")
        return out


def _first_value(outputs):
    import paddle

    if isinstance(outputs, paddle.pir.Value):
        return outputs
    if isinstance(outputs, (tuple, list)):
        for item in outputs:
            found = _first_value(item)
            if found is not None:
                return found
    return None


# ---- the program as plain data ---------------------------------------------------------------

def _symbolic_shapes(program) -> None:
    """Annotate each op with `sym_shape_str` (the pass writes it when its VLOG level is >= 1)."""
    import paddle
    from paddle.base.libpaddle import pir

    manager = pir.PassManager()
    pir.infer_symbolic_shape_pass(manager, program)
    with paddle.base.framework.vlog_guard({"shape_optimization_pass": 1}):
        manager.run(program)


def _static_shape(value) -> tuple[Dim, ...]:
    return tuple(constant(d) if d >= 0 else symbol("?") for d in value.shape)


def _to_capture(concrete, model, recorder: _Recorder, layer_list: tuple[str, list], kinds: tuple[str, ...],
                representatives: dict, moe_layers: dict, *, name: str, mode: str, seq_len: int) -> Capture:
    program = concrete.main_program
    _symbolic_shapes(program)
    param_names = {p.name: structured for structured, p in model.named_parameters()}
    block_ops = list(program.global_block().ops)
    op_ids = [op.id() for op in block_ops]
    compute = [i for i, op in enumerate(block_ops) if op.name() != "builtin.parameter"]
    if any(op_ids[a] >= op_ids[b] for a, b in zip(compute, compute[1:])):
        raise TraceError(f"{name}: PIR op ids do not grow with creation order in this Paddle version; "
                         "cannot attribute ops to layers")
    ordered = sorted(range(len(block_ops)), key=lambda i: op_ids[i])
    scope_of = dict(zip(ordered, recorder.scopes([op_ids[i] for i in ordered])))
    tensors: dict[str, TensorInfo] = {}
    vectors: dict[str, list] = {}  # vector value -> the shapes of its elements
    ops = []
    for index, op in enumerate(block_ops):
        attrs = op.attrs()
        results = [op.result(i) for i in range(op.num_results())]
        sym = parse_sym_shapes(attrs["sym_shape_str"]) if "sym_shape_str" in attrs else []
        dense = [r for r in results if r.initialized() and r.is_dense_tensor_type()]
        if len(results) == 1 and not dense and results[0].initialized():
            vectors[results[0].id] = sym
        if len(sym) != len(dense) and op.name() == "builtin.split":
            # the pass prints only the first element's shape here; the vector's producer has them all
            sym = vectors.get(op.operand_source(0).id, sym)
        if len(sym) != len(dense):
            sym = [_static_shape(r) for r in dense]
        shapes = dict(zip((r.id for r in dense), sym))
        outputs = []
        for r in results:
            key = r.id if r.initialized() else ""
            outputs.append(key)
            if key:
                tensors[key] = TensorInfo(key=key, shape=shapes.get(key, ()), dtype=_dtype(r), producer=index)
        operands = (op.operand_source(i) for i in range(op.num_operands()))
        inputs = tuple(v.id if v.initialized() else "" for v in operands)
        kind = op.name().split(".", 1)[1] if op.name().startswith("pd_op.") else op.name()
        ops.append(RawOp(index=index, kind=kind, inputs=inputs, outputs=tuple(outputs), scope=scope_of[index],
                         attrs={k: v for k, v in attrs.items() if isinstance(v, SCALAR_TYPES)
                                and k not in ("sym_shape_str", "struct_name")},
                         param=param_names.get(attrs.get("parameter_name", ""), "")))
    data = [op for op in ops if op.kind == "data"]
    if len(data) != 1:
        raise TraceError(f"{name}: expected one input (input_ids), found {len(data)}")
    input_shape = tensors[data[0].outputs[0]].shape
    batch, seq = input_shape
    path, layers = layer_list
    outputs = {}
    for index in range(len(layers)):
        key = recorder.outputs.get(f"{path}.{index}")
        if key is None or key not in tensors:
            raise TraceError(f"{name}: decoder layer {path}.{index} produced no traced output")
        outputs[index] = key
    logits = tuple(v.id for v in _flatten_values(concrete.outputs) if v.id in tensors
                   and _is_logits(tensors[v.id], getattr(model.config, "vocab_size", None)))
    if not logits:
        raise TraceError(f"{name}: no model output has the vocabulary size as its last dim (logits)")
    return Capture(
        model_name=name, ops=tuple(ops), tensors=tensors,
        params={structured: tuple(p.shape) for structured, p in model.named_parameters()},
        layer_list=path, layer_kinds=kinds, representatives=representatives, layer_outputs=outputs,
        input_key=data[0].outputs[0], logits_keys=logits[:1],
        batch_symbol=batch.name if batch.op == "sym" else "", seq_symbol=seq.name if seq.op == "sym" else "",
        traced_seq_len=seq_len if seq.op != "sym" else 0,
        moe=tuple(_moe_record(parts, tensors, name) for parts in moe_layers.values() if parts["keys"]), mode=mode)


def _moe_record(parts: dict, tensors: dict, name: str) -> MoERecord:
    keys = parts["keys"]
    missing = sorted(k for k in ("input", "router", "expert_in", "expert_out", "routed") if keys.get(k) not in tensors)
    if missing:
        raise TraceError(f"{name}: MoE layer {parts['scope']}: traced values {missing} were optimised away")
    return MoERecord(scope=parts["scope"], num_experts=parts["num_experts"], top_k=parts["top_k"],
                     experts_scope=f"{parts['scope']}.{parts['experts_name']}",
                     gate_scope=f"{parts['scope']}.{parts['gate'][0]}", input_key=keys["input"],
                     router_key=keys["router"], expert_in_key=keys["expert_in"], expert_out_key=keys["expert_out"],
                     routed_key=keys["routed"])


def _flatten_values(outputs) -> list:
    import paddle

    if isinstance(outputs, paddle.pir.Value):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [v for item in outputs for v in _flatten_values(item)]
    return []


def _is_logits(tensor: TensorInfo, vocab_size) -> bool:
    last = tensor.shape[-1] if tensor.shape else None
    return (vocab_size is not None and last is not None and last.op == "int" and last.value == vocab_size
            and tensor.dtype.startswith(("float", "bfloat")))


def _dtype(value) -> str:
    try:
        return str(value.dtype).replace("paddle.", "")
    except (RuntimeError, ValueError, TypeError):  # vector and other non-tensor values have no dtype
        return ""
