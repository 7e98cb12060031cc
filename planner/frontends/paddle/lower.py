"""Lower a captured PIR program to the planner's OpGraph (planner/trace/graph.py).

Steps:
1. Activations are the values that depend on the token ids through anything
   but a shape query; everything else (causal masks, rotary tables, position
   ids) is a per-step constant and is not costed.
2. View ops (reshape, transpose, slice, concat, cast, the GQA repeat ...)
   cost nothing: a consumer reads the tensors their producers made.
3. The remaining ops on activations are grouped into the planner's op types:
   matmul with a 2-D parameter (+ bias add) -> linear; a layer holding a 1-D
   weight and an rsqrt / norm kernel -> norm; matmul -> (scale, mask) ->
   softmax -> matmul, or a fused attention kernel -> attention;
   x * cos + rotate_half(x) * sin -> rope; the router / expert / shared
   parts of a routed-expert layer -> router, dispatch, expert_linear, combine;
   everything else -> elementwise, fused along single-consumer chains.
4. Ops go to blocks by the Paddle layer that made them: the representative
   decoder layer of each kind, the embedding before the decoder layers, the
   head after them. Each logits output gets the planner's cross-entropy op
   (the criterion is not traced: PaddleFormers' criteria branch on tensor
   values, which static tracing cannot express).

Quantities are per sequence (batch 1) at the planned sequence length, with
the conventions of planner/trace/analytic.py (FLOPs, bytes, saved tensors).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from planner.frontends.paddle.optable import (
    EMBEDDING_OPS, EXPANDING_OPS, FUSED_ATTENTION_OPS, FUSED_ROPE_OPS, MATMUL_OPS, NORM_MARKERS, NORM_OPS,
    ROPE_TABLE_OPS, SHAPE_OPS, UNKNOWN_FLOPS_PER_ELEMENT, VIEW_OPS, elementwise_cost)
from planner.frontends.paddle.program import Capture, MoERecord, RawOp
from planner.trace.analytic import ATTENTION_BWD_FACTOR
from planner.trace.graph import Block, OpGraph, OpNode


class UnknownOpWarning(UserWarning):
    """The traced program holds ops the lowering has no cost model for (costed conservatively)."""


@dataclass(slots=True)
class _Group:
    """Ops that become one OpNode."""

    op_type: str
    ops: list[int]
    scope: str
    expert: MoERecord | None = None  # set for ops of the representative expert
    info: dict = field(default_factory=dict)


def lower(capture: Capture, *, seq_len: int, layer_kinds: tuple[str, ...], dtype_bytes: int = 2) -> OpGraph:
    """The OpGraph of the full model (decoder layers labelled by `layer_kinds`) at `seq_len` tokens."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be a positive number of tokens, got {seq_len}")
    if capture.traced_seq_len and capture.traced_seq_len != seq_len:
        raise ValueError(f"{capture.model_name} was traced with a fixed sequence length of "
                         f"{capture.traced_seq_len} ({capture.mode}); trace again for seq_len={seq_len}")
    unknown = sorted(set(layer_kinds) - set(capture.representatives))
    if unknown:
        raise ValueError(f"layer kinds {unknown} were not traced; traced kinds: {sorted(capture.representatives)}")
    return _Lowering(capture, seq_len, dtype_bytes).graph(layer_kinds)


class _Lowering:
    def __init__(self, capture: Capture, seq_len: int, dtype_bytes: int) -> None:
        self.c = capture
        self.s = seq_len
        self.dtype_bytes = dtype_bytes
        self.env = {name: value for name, value in ((capture.batch_symbol, 1), (capture.seq_symbol, seq_len)) if name}
        self.ops = capture.ops
        self.producer = {k: t.producer for k, t in capture.tensors.items()}
        self.consumers: dict[str, list[int]] = {}
        for op in self.ops:
            for key in op.inputs:
                if key:
                    self.consumers.setdefault(key, []).append(op.index)
        self.param_of = {op.outputs[0]: op.param for op in self.ops if op.kind == "builtin.parameter" and op.param}
        self.active = self._activations()
        self._sources: dict[str, tuple[str, ...]] = {}
        self._tables: dict[str, bool] = {}
        self.owned: set[str] = set()
        self.unknown: Counter = Counter()

    # ---- tensors ---------------------------------------------------------------------------

    def dims(self, key: str) -> tuple[int, ...]:
        try:
            return tuple(int(round(d.evaluate(self.env))) for d in self.c.tensors[key].shape)
        except KeyError as error:
            op = self.ops[self.producer[key]]
            raise ValueError(f"{self.c.model_name}: the size of a traced tensor depends on {error} (data-dependent); "
                             f"op {op.kind} in {op.scope!r}") from None

    def numel(self, key: str) -> int:
        return math.prod(self.dims(key))

    def _activations(self) -> set[str]:
        active = {self.c.input_key}
        for op in self.ops:  # program order is a topological order
            if op.kind not in SHAPE_OPS and any(k in active for k in op.inputs):
                active.update(k for k in op.outputs if k)
        return active

    def sources(self, key: str) -> tuple[str, ...]:
        """The activations made by non-view ops that `key` is a view of."""
        if key not in self.active:
            return ()
        if key not in self._sources:
            op = self.ops[self.producer[key]] if self.producer.get(key, -1) >= 0 else None
            if op is None or op.kind not in VIEW_OPS:
                self._sources[key] = (key,)
            else:
                out: list[str] = []
                for inp in op.inputs:
                    out.extend(s for s in self.sources(inp) if s not in out)
                self._sources[key] = tuple(out)
        return self._sources[key]

    def param_through(self, key: str) -> str:
        """The structured parameter `key` is (a view of), or ""."""
        while key:
            if key in self.param_of:
                return self.param_of[key]
            index = self.producer.get(key, -1)
            if index < 0 or self.ops[index].kind not in VIEW_OPS:
                return ""
            key = next((k for k in self.ops[index].inputs if k), "")
        return ""

    def is_table(self, key: str) -> bool:
        """Whether a constant (non-activation) tensor is derived from cos/sin: a rotary table."""
        if key in self.active or not key:
            return False
        if key not in self._tables:
            index = self.producer.get(key, -1)
            op = self.ops[index] if index >= 0 else None
            self._tables[key] = op is not None and (op.kind in ROPE_TABLE_OPS
                                                    or any(self.is_table(k) for k in op.inputs))
        return self._tables[key]

    def expansion(self, key: str) -> float:
        """How many times a view repeats its source (the GQA key/value repeat), 1 if it does not."""
        index = self.producer.get(key, -1)
        op = self.ops[index] if index >= 0 else None
        if op is None or op.kind not in VIEW_OPS or key not in self.active:
            return 1.0
        inputs = [k for k in op.inputs if k in self.active]
        if not inputs:
            return 1.0
        factor = min(self.expansion(k) for k in inputs)
        if op.kind in EXPANDING_OPS and self.c.tensors[key].shape:
            factor *= self.numel(key) / max(1, self.numel(inputs[0]))
        return factor

    def seq_shape(self, elements: int) -> tuple:
        """("b", s, elements / s): an activation of one sequence."""
        return ("b", self.s, elements // self.s) if elements % self.s == 0 else ("b", elements)

    def raw_shape(self, key: str) -> tuple:
        """The evaluated shape, with "b" for the batch dim (symbolic, or traced as 1)."""
        dims = self.dims(key)
        first = self.c.tensors[key].shape[0] if dims else None
        if first is not None and first.op == "sym" and first.name == self.c.batch_symbol:
            return ("b",) + dims[1:]
        if not self.c.batch_symbol and len(dims) >= 2 and dims[0] == 1:
            return ("b",) + dims[1:]
        return dims

    # ---- grouping ----------------------------------------------------------------------------

    def groups(self) -> list[_Group]:
        compute = [op for op in self.ops if op.kind not in VIEW_OPS and op.kind not in SHAPE_OPS
                   and any(k in self.active for k in op.outputs)]
        grouped: dict[int, _Group] = {}
        out: list[_Group] = []

        def add(group: _Group) -> None:
            for index in group.ops:
                grouped[index] = group
            out.append(group)

        experts = {}
        for record in self.c.moe:
            router = self.producer[record.router_key]
            add(_Group("router", [router], record.gate_scope, info={"moe": record}))
            for op in compute:
                if op.scope.startswith(record.experts_scope + "."):
                    experts[op.index] = record
        for op in compute:
            if op.index in grouped:
                continue
            if op.kind in MATMUL_OPS:
                group = self._linear(op)
                if group is not None:
                    group.expert = experts.get(op.index)
                    add(group)
            elif op.kind in EMBEDDING_OPS and any(self.param_through(k) for k in op.inputs):
                add(_Group("embedding", [op.index], op.scope))
        for scope, members in self._norm_scopes(compute, grouped).items():
            add(_Group("norm", members, scope))
        for op in compute:
            if op.index in grouped:
                continue
            if op.kind == "softmax":
                members = self._attention(op, grouped)
                if members:
                    add(_Group("attention", members, op.scope, info={"softmax": op.index}))
            elif op.kind in FUSED_ATTENTION_OPS:
                add(_Group("attention", [op.index], op.scope, info={"fused": op.index}))
        for op in compute:
            if op.index in grouped:
                continue
            if op.kind == "add":
                members = self._rope(op, grouped)
                if members:
                    add(_Group("rope", members, op.scope, info={"add": op.index}))
            elif op.kind in FUSED_ROPE_OPS:
                add(_Group("rope", [op.index], op.scope))
        for op in compute:
            if op.index not in grouped:
                if elementwise_cost(op.kind) is None:
                    self.unknown[op.kind] += 1
                add(_Group("elementwise", [op.index], op.scope, expert=experts.get(op.index)))
        return out

    def _linear(self, op: RawOp) -> _Group | None:
        params = [(i, self.param_through(k)) for i, k in enumerate(op.inputs[:2])]
        weights = [(i, p) for i, p in params if p and len(self.c.params[p]) == 2]
        activations = [k for k in op.inputs[:2] if k in self.active]
        if len(weights) != 1 or len(activations) != 1:
            return None
        members = [op.index]
        users = self.consumers.get(op.outputs[0], [])
        if len(users) == 1 and self.ops[users[0]].kind in ("add", "add_"):
            bias = [self.param_through(k) for k in self.ops[users[0]].inputs if k != op.outputs[0]]
            if bias and bias[0] and len(self.c.params[bias[0]]) == 1:
                members.append(users[0])
        return _Group("linear", members, op.scope, info={"weight": weights[0][1], "x": activations[0]})

    def _norm_scopes(self, compute: list[RawOp], grouped: dict) -> dict[str, list[int]]:
        """Layers whose parameters are all 1-D, used by their own ops, with an rsqrt / norm kernel: all their ops."""
        candidates = set()
        for op in compute:
            if any(self.param_through(k) and len(self.c.params[self.param_through(k)]) == 1 for k in op.inputs):
                candidates.add(op.scope)
        out: dict[str, list[int]] = {}
        for scope in sorted(candidates):
            below = [shape for name, shape in self.c.params.items() if name.startswith(scope + ".")]
            if not below or any(len(shape) != 1 for shape in below):
                continue
            members = [op.index for op in compute if op.index not in grouped
                       and (op.scope == scope or op.scope.startswith(scope + "."))]
            if members and any(self.ops[i].kind in NORM_MARKERS for i in members):
                out[scope] = members
        return out

    def _single_active_input(self, op: RawOp) -> str:
        inputs = [k for k in op.inputs if k in self.active]
        return inputs[0] if len(inputs) == 1 else ""

    def _attention(self, softmax: RawOp, grouped: dict) -> list[int]:
        """matmul(q, k) -> elementwise chain -> softmax -> chain -> matmul(., v), or [] if not that pattern."""
        chain = [softmax.index]
        key = self._single_active_input(softmax)
        qk = None
        while key:
            op = self.ops[self.producer[key]]
            if op.kind in MATMUL_OPS:
                qk = op
                break
            if op.index in grouped or (op.kind not in VIEW_OPS and elementwise_cost(op.kind) is None):
                return []
            if op.kind not in VIEW_OPS:
                chain.append(op.index)
            key = self._single_active_input(op)
        if qk is None or sum(k in self.active and not self.param_through(k) for k in qk.inputs[:2]) != 2:
            return []
        key, pv = softmax.outputs[0], None
        while pv is None:
            users = self.consumers.get(key, [])
            if len(users) != 1:
                return []
            op = self.ops[users[0]]
            if op.kind in MATMUL_OPS and op.inputs[0] == key and op.inputs[1] in self.active:
                pv = op
            elif op.kind in VIEW_OPS or (elementwise_cost(op.kind) is not None and op.index not in grouped):
                if op.kind not in VIEW_OPS:
                    chain.append(op.index)
                key = op.outputs[0]
            else:
                return []
        return [qk.index] + sorted(chain) + [pv.index]

    def _rope_multiply(self, key: str) -> RawOp | None:
        index = self.producer.get(key, -1)
        op = self.ops[index] if index >= 0 else None
        if op is None or op.kind != "multiply":
            return None
        if sum(k in self.active for k in op.inputs) == 1 and any(self.is_table(k) for k in op.inputs):
            return op
        return None

    def _rope(self, add_op: RawOp, grouped: dict) -> list[int]:
        """x * cos + rotate_half(x) * sin, with the unary ops of rotate_half, or []."""
        muls = [self._rope_multiply(k) for k in add_op.inputs]
        if len(muls) != 2 or None in muls or any(m.index in grouped for m in muls):
            return []
        extra: list[int] = []
        roots = {self._root(next(k for k in mul.inputs if k in self.active), grouped, extra) for mul in muls}
        if len(roots) != 1:
            return []
        return sorted({add_op.index, muls[0].index, muls[1].index, *extra})

    def _root(self, key: str, grouped: dict, extra: list[int]) -> str:
        """The tensor `key` is made from by views and single-use unary elementwise ops (collected in `extra`)."""
        op = self.ops[self.producer[key]]
        inputs = [k for k in op.inputs if k in self.active]
        if op.kind in VIEW_OPS and inputs:
            roots = {self._root(k, grouped, extra) for k in inputs}
            return roots.pop() if len(roots) == 1 else key
        if (len(inputs) == 1 and op.index not in grouped and elementwise_cost(op.kind) is not None
                and len(self.consumers.get(key, [])) == 1):
            extra.append(op.index)
            return self._root(inputs[0], grouped, extra)
        return key

    # ---- blocks ------------------------------------------------------------------------------

    def decoder_index(self, scope: str) -> int | None:
        prefix = self.c.layer_list + "."
        if not scope.startswith(prefix):
            return None
        head = scope[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def star(self, scope: str) -> str:
        """The layer name pattern: decoder layer and expert indices become '*'."""
        for record in self.c.moe:
            prefix = record.experts_scope + "."
            if scope.startswith(prefix):
                rest = scope[len(prefix):].split(".", 1)
                scope = prefix + "*" + ("." + rest[1] if len(rest) > 1 else "")
        index = self.decoder_index(scope)
        if index is not None:
            prefix = f"{self.c.layer_list}.{index}"
            scope = f"{self.c.layer_list}.*" + scope[len(prefix):]
        return scope

    def graph(self, layer_kinds: tuple[str, ...]) -> OpGraph:
        groups = self.groups()
        block_of = self._assign_blocks(groups)
        keep = {kind: index for kind, index in self.c.representatives.items()}
        by_block: dict[str, list[_Group]] = {}
        for group in groups:
            block = block_of[id(group)]
            if block.startswith("layer:"):
                index = int(block.split(":")[1])
                kind = self.c.layer_kinds[index]
                if keep[kind] != index:
                    continue
                block = kind
            by_block.setdefault(block, []).append(group)
        for block, members in by_block.items():
            by_block[block] = self._fuse(members)
        counts = Counter(layer_kinds)
        blocks = {"embedding": self._block("embedding", by_block.get("embedding", []), 1, None)}
        for kind in sorted(set(layer_kinds)):
            blocks[kind] = self._block(kind, by_block.get(kind, []), counts[kind], keep[kind])
        blocks["head"] = self._block("head", by_block.get("head", []), 1, None)
        if self.unknown:
            warnings.warn(f"{self.c.model_name}: no cost model for traced ops "
                          f"{', '.join(f'{k} (x{n})' for k, n in sorted(self.unknown.items()))}; costed as "
                          f"elementwise ops of {UNKNOWN_FLOPS_PER_ELEMENT} FLOPs per element that keep their inputs",
                          UnknownOpWarning, stacklevel=3)
        return OpGraph(model_name=self.c.model_name, seq_len=self.s, blocks=blocks,
                       layer_kinds=("embedding",) + tuple(layer_kinds) + ("head",), dtype_bytes=self.dtype_bytes)

    def _assign_blocks(self, groups: list[_Group]) -> dict[int, str]:
        """"layer:<traced index>" for decoder layers, "head" after them, "embedding" before."""
        after: set[str] = set()
        for op in self.ops:
            index = self.decoder_index(op.scope)
            if index is not None and index >= len(self.c.layer_kinds):
                if op.kind not in SHAPE_OPS and any(k in self.active for k in op.outputs):
                    raise ValueError(f"{self.c.model_name}: {self.c.layer_list}.{index} runs after the "
                                     f"{len(self.c.layer_kinds)} decoder layers (multi-token prediction?); "
                                     "the Paddle frontend traces decoder layers, embedding and head only")
            if (index is not None or any(k in after for k in op.inputs)) and op.kind not in SHAPE_OPS:
                after.update(k for k in op.outputs if k)
        out = {}
        for group in groups:
            index = self.decoder_index(group.scope)
            if index is not None:
                out[id(group)] = f"layer:{index}"
            else:
                out[id(group)] = "head" if any(k in after for i in group.ops for k in self.ops[i].outputs) \
                    else "embedding"
        return out

    def _fuse(self, groups: list[_Group]) -> list[_Group]:
        """Merge an elementwise group into its only consumer when that is elementwise too (one kernel)."""
        while True:
            owner = {i: g for g in groups for i in g.ops}
            for group in groups:
                if group.op_type != "elementwise":
                    continue
                reads = [u for i in group.ops for k in self.ops[i].outputs if k for u in self._view_users(k)]
                users = {id(owner[u]): owner[u] for u in reads if u in owner and owner[u] is not group}
                leaves = not reads or any(u not in owner for u in reads)
                target = next(iter(users.values())) if len(users) == 1 else None
                if target is not None and not leaves and target.op_type == "elementwise" \
                        and target.expert is group.expert:
                    target.ops = sorted(target.ops + group.ops)
                    groups = [g for g in groups if g is not group]
                    break
            else:
                return groups

    def _view_users(self, key: str) -> list[int]:
        """Non-view ops that read `key`, looking through views."""
        out = []
        for index in self.consumers.get(key, []):
            op = self.ops[index]
            if op.kind in VIEW_OPS:
                for k in op.outputs:
                    out.extend(self._view_users(k))
            elif op.kind not in SHAPE_OPS:
                out.append(index)
        return out

    # ---- op nodes ----------------------------------------------------------------------------

    def _block(self, kind: str, groups: list[_Group], count: int, traced_index: int | None) -> Block:
        builder = _BlockGraph(self, kind, traced_index)
        for group in groups:
            builder.add_group(group)
        return builder.finish(count)


class _BlockGraph:
    """Turns the groups of one block into OpNodes and edges."""

    def __init__(self, lowering: _Lowering, kind: str, traced_index: int | None) -> None:
        self.lo = lowering
        self.kind = kind
        self.traced_index = traced_index
        self.graph = nx.DiGraph()
        self.nodes: dict[int, str] = {}  # op index -> node name
        self.groups: list[tuple[_Group, str]] = []
        self.names: Counter = Counter()
        self.output_key: dict[str, str] = {}  # node -> the tensor it produces
        self.moe: dict[str, dict] = {}  # MoE scope -> {"dispatch": node, "combine": node}
        self.input_node = ""

    # names and patterns
    def local(self, pattern: str, suffix: str = "") -> str:
        """A node name: the pattern inside the decoder layer (the full pattern elsewhere), plus `suffix`."""
        layer = f"{self.lo.c.layer_list}.*"
        base = "" if pattern == layer else pattern[len(layer) + 1:] if pattern.startswith(layer + ".") else pattern
        return self.unique(f"{base}.{suffix}" if base and suffix else base or suffix)

    def unique(self, base: str) -> str:
        self.names[base] += 1
        return base if self.names[base] == 1 else f"{base}#{self.names[base] - 1}"

    def add_group(self, group: _Group) -> None:
        op = _NodeMaker(self, group).make()
        name = op.name
        self.graph.add_node(name, op=op)
        for index in group.ops:
            self.nodes[index] = name
        self.groups.append((group, name))

    # the MoE stand-ins around the representative expert
    def moe_nodes(self, record: MoERecord) -> dict:
        if record.scope in self.moe:
            return self.moe[record.scope]
        lo, s, dtype = self.lo, self.lo.s, self.lo.dtype_bytes
        e, k = record.num_experts, record.top_k
        hidden = lo.dims(record.input_key)[-1]
        pattern = lo.star(record.gate_scope)
        scope = lo.star(record.scope)
        dispatch = OpNode(
            name=self.local(scope, "dispatch"), op_type="dispatch", layer_pattern=pattern,
            in_shapes=(("b", s, hidden), ("b", s, e)), out_shape=("b", s * k, hidden),
            bytes_moved=2.0 * s * k * hidden * dtype, saved_extra_bytes=12.0 * s * k, num_experts=e)
        combine = OpNode(
            name=self.local(scope, "combine"), op_type="dispatch", layer_pattern=pattern,
            in_shapes=(("b", s * k, hidden),), out_shape=("b", s, hidden), fwd_flops=2.0 * s * k * hidden,
            bwd_flops=4.0 * s * k * hidden, bytes_moved=(s * k * hidden + s * hidden) * dtype, num_experts=e)
        for node in (dispatch, combine):
            self.graph.add_node(node.name, op=node)
        self.moe[record.scope] = {"dispatch": dispatch.name, "combine": combine.name, "record": record}
        return self.moe[record.scope]

    def ensure_input(self, key: str) -> str:
        """The block's residual-stream input node (decoder and head blocks)."""
        if not self.input_node:
            pattern = f"{self.lo.c.layer_list}.*" if self.kind not in ("head",) else \
                self.lo.c.layer_list.rpartition(".")[0] or self.lo.c.layer_list
            shape = self.lo.seq_shape(self.lo.numel(key))
            self.input_node = "input"
            self.graph.add_node("input", op=OpNode(name="input", op_type="elementwise", layer_pattern=pattern,
                                                   in_shapes=(shape,), out_shape=shape))
        return self.input_node

    def producer_node(self, source: str, consumer: _Group) -> str | None:
        """The node that made `source` for `consumer`, with the MoE dispatch/combine in between."""
        index = self.lo.producer.get(source, -1)
        node = self.nodes.get(index)
        producer_group = next((g for g, n in self.groups if n == node), None) if node else None
        for record in self.lo.c.moe:
            inside = consumer.expert is record
            if inside and source in self.lo.sources(record.expert_in_key):
                return self.moe_nodes(record)["dispatch"]
            if not inside and producer_group is not None and producer_group.expert is record:
                return self.moe_nodes(record)["combine"]
        if node is not None:
            return node
        if self.kind == "embedding":
            return None  # the token ids
        return self.ensure_input(source)

    def finish(self, count: int) -> Block:
        for group, name in self.groups:
            for port, source in self.group_inputs(group):
                producer = self.producer_node(source, group)
                if producer is None or producer == name:
                    continue
                self.edge(producer, name, port)
        for scope, parts in self.moe.items():
            record = parts["record"]
            router = self.nodes[self.lo.producer[record.router_key]]
            x = self.lo.sources(record.input_key)[0]
            x_node = self.nodes.get(self.lo.producer.get(x, -1)) or self.ensure_input(x)
            self.edge(x_node, parts["dispatch"], 0)
            self.edge(router, parts["dispatch"], 1)
            down = self.lo.sources(record.expert_out_key)[0]
            self.edge(self.nodes[self.lo.producer[down]], parts["combine"], 0)
        output = self.add_losses() if self.kind == "head" else self.output_node()
        first = self.input_node or next(iter(nx.lexicographical_topological_sort(self.graph)))
        return Block(kind=self.kind, graph=self.graph, count=count, input_node=first, output_node=output)

    def edge(self, producer: str, consumer: str, port: int) -> None:
        if self.graph.has_edge(producer, consumer):
            return  # one tensor feeding several ports of one op moves once
        shape = self.graph.nodes[producer]["op"].out_shape
        self.graph.add_edge(producer, consumer, shape=shape,
                            bytes=math.prod(1 if d == "b" else d for d in shape) * self.lo.dtype_bytes, port=port)

    def group_operands(self, group: _Group) -> list[str]:
        """The activations a group reads from outside itself, one per input port."""
        lo = self.lo
        if group.op_type == "attention" and "softmax" in group.info:
            qk, pv = lo.ops[group.ops[0]], lo.ops[group.ops[-1]]
            return [qk.inputs[0], qk.inputs[1], pv.inputs[1]]
        if group.op_type in ("linear", "router") or (group.op_type == "attention" and "fused" in group.info):
            return [k for k in lo.ops[group.ops[0]].inputs if k in lo.active]
        inside = {k for i in group.ops for k in lo.ops[i].outputs}
        out: list[str] = []
        for key in (k for i in group.ops for k in lo.ops[i].inputs if k in lo.active and k not in inside):
            if key not in out and any(lo.producer.get(s, -1) not in group.ops for s in lo.sources(key)):
                out.append(key)
        return out

    def group_inputs(self, group: _Group) -> list[tuple[int, str]]:
        """(port, source tensor) for every tensor made outside the group that it reads."""
        return [(port, source) for port, key in enumerate(self.group_operands(group))
                for source in self.lo.sources(key) if self.lo.producer.get(source, -1) not in group.ops]

    def output_node(self) -> str:
        lo = self.lo
        if self.traced_index is not None:
            source = lo.sources(lo.c.layer_outputs[self.traced_index])[0]
            return self.nodes[lo.producer[source]]
        owner = set(self.nodes)
        leaving = [self.nodes[i] for i in sorted(owner) for k in lo.ops[i].outputs if k in lo.active
                   and (not lo._view_users(k) or any(u not in owner for u in lo._view_users(k)))]
        if not leaving:
            raise ValueError(f"{lo.c.model_name}: the {self.kind} block has no output")
        return leaving[-1]

    def add_losses(self) -> str:
        """The planner's softmax cross-entropy after every logits output of the head."""
        lo, dtype = self.lo, self.lo.dtype_bytes
        last = ""
        for logits in lo.c.logits_keys:
            source = lo.sources(logits)[0]
            producer = self.nodes.get(lo.producer.get(source, -1))
            if producer is None:
                raise ValueError(f"{lo.c.model_name}: the logits are not made in the head block")
            vocab = lo.dims(logits)[-1]
            tokens = lo.numel(logits) // vocab
            loss = OpNode(
                name=self.unique("loss"), op_type="loss", layer_pattern=self.graph.nodes[producer]["op"].layer_pattern,
                in_shapes=(("b", tokens, vocab),), out_shape=("b",), fwd_flops=5.0 * tokens * vocab,
                bwd_flops=3.0 * tokens * vocab, bytes_moved=tokens * vocab * (dtype + 4 + 4),
                saved_extra_bytes=4.0 * tokens * vocab)
            self.graph.add_node(loss.name, op=loss)
            self.edge(producer, loss.name, 0)
            last = loss.name
        return last


class _NodeMaker:
    """The OpNode of one group: shapes, parameters, FLOPs and bytes by op type."""

    def __init__(self, block: _BlockGraph, group: _Group) -> None:
        self.b = block
        self.lo = block.lo
        self.g = group
        self.dtype = block.lo.dtype_bytes

    def make(self) -> OpNode:
        return getattr(self, f"_{self.g.op_type}")()

    def own(self, param: str) -> tuple[int, int]:
        """(params, shared params): a parameter is counted at its first use, shared after that."""
        size = math.prod(self.lo.c.params[param])
        if param in self.lo.owned:
            return 0, size
        self.lo.owned.add(param)
        return size, 0

    def name(self, pattern: str, suffix: str = "") -> str:
        return self.b.local(pattern, suffix)

    def _linear(self) -> OpNode:
        lo, g = self.lo, self.g
        matmul = lo.ops[g.ops[0]]
        x, weight = g.info["x"], g.info["weight"]
        in_f = lo.dims(x)[-2 if matmul.attrs.get("transpose_x") else -1]
        out_key = lo.ops[g.ops[-1]].outputs[0]
        out_f = lo.dims(out_key)[-1]
        tokens = lo.numel(x) // in_f
        params, shared = self.own(weight)
        bias = [p for i in g.ops[1:] for p in (lo.param_through(k) for k in lo.ops[i].inputs) if p]
        for p in bias:
            params += self.own(p)[0]
        pattern = lo.star(weight.rpartition(".")[0] if not shared else matmul.scope)
        if g.expert is not None:
            e, k = g.expert.num_experts, g.expert.top_k
            total = params * e
            routed = tokens * k
            flops = 2.0 * routed * in_f * out_f
            return OpNode(
                name=self.name(pattern), op_type="expert_linear", layer_pattern=pattern,
                in_shapes=(("b", routed, in_f),), out_shape=("b", routed, out_f), weight_shape=(e, in_f, out_f),
                params=total, fwd_flops=flops, bwd_flops=2 * flops,
                bytes_moved=(routed * (in_f + out_f) + total) * self.dtype, saves_input=True, num_experts=e, top_k=k)
        flops = 2.0 * tokens * in_f * out_f
        return OpNode(
            name=self.name(pattern), op_type="linear", layer_pattern=pattern, in_shapes=(("b", tokens, in_f),),
            out_shape=("b", tokens, out_f), weight_shape=(in_f, out_f), params=params, shared_params=shared,
            fwd_flops=flops, bwd_flops=2 * flops, saves_input=True,
            bytes_moved=(tokens * in_f + tokens * out_f + in_f * out_f) * self.dtype)

    def _router(self) -> OpNode:
        lo, g = self.lo, self.g
        record = g.info["moe"]
        matmul = lo.ops[g.ops[0]]
        x = next(k for k in matmul.inputs if k in lo.active)
        hidden, e = lo.dims(x)[-1], record.num_experts
        tokens = lo.numel(x) // hidden
        params = sum(self.own(p)[0] for p in sorted(lo.c.params) if p.startswith(record.gate_scope + "."))
        pattern = lo.star(record.gate_scope)
        return OpNode(
            name=self.name(pattern), op_type="router", layer_pattern=pattern, in_shapes=(("b", tokens, hidden),),
            out_shape=("b", tokens, e), weight_shape=(hidden, e), params=params, fwd_flops=2.0 * tokens * hidden * e,
            bwd_flops=4.0 * tokens * hidden * e, bytes_moved=(tokens * hidden + tokens * e + hidden * e) * self.dtype,
            saves_input=True, num_experts=e)

    def _embedding(self) -> OpNode:
        lo, op = self.lo, self.lo.ops[self.g.ops[0]]
        weight = next(p for p in (lo.param_through(k) for k in op.inputs) if p)
        vocab, hidden = lo.c.params[weight]
        tokens = lo.numel(op.outputs[0]) // hidden
        params, _ = self.own(weight)
        pattern = lo.star(weight.rpartition(".")[0])
        return OpNode(
            name=self.name(pattern), op_type="embedding", layer_pattern=pattern, in_shapes=(("b", tokens),),
            out_shape=("b", tokens, hidden), weight_shape=(vocab, hidden), params=params,
            bytes_moved=2.0 * tokens * hidden * self.dtype, saved_extra_bytes=8.0 * tokens)

    def _elementwise_flops(self, indices: list[int]) -> tuple[float, bool]:
        flops, saves = 0.0, False
        for index in indices:
            op = self.lo.ops[index]
            cost = elementwise_cost(op.kind)
            if op.kind in NORM_OPS:
                cost = (5, True, True)
            if cost is None:
                cost = (UNKNOWN_FLOPS_PER_ELEMENT, True, False)
            per_element, keeps, on_inputs = cost
            keys = [k for k in (op.inputs if on_inputs else op.outputs) if k in self.lo.active][:1]
            flops += per_element * sum(self.lo.numel(k) for k in keys)
            saves = saves or keys and keeps
        return flops, bool(saves)

    def _group_io(self) -> tuple[list[str], str]:
        """(the operands read from outside the group, the output read outside it)."""
        lo, g = self.lo, self.g
        inside = set(g.ops)
        leaving = [k for i in g.ops for k in lo.ops[i].outputs if k in lo.active
                   and (not lo._view_users(k) or any(u not in inside for u in lo._view_users(k)))]
        output = leaving[-1] if leaving else next(k for k in lo.ops[g.ops[-1]].outputs if k)
        return self.b.group_operands(g), output

    def _norm(self) -> OpNode:
        lo, g = self.lo, self.g
        inputs, output = self._group_io()
        weights = sorted({p for i in g.ops for p in (lo.param_through(k) for k in lo.ops[i].inputs)
                          if p and len(lo.c.params[p]) == 1})
        params = sum(self.own(p)[0] for p in weights)
        n = lo.numel(inputs[0]) if inputs else lo.numel(output)
        width = lo.c.params[weights[0]][0] if weights else lo.dims(output)[-1]
        flops, _ = self._elementwise_flops(g.ops)
        pattern = lo.star(g.scope)
        shape = lo.seq_shape(lo.numel(output))
        return OpNode(
            name=self.name(pattern), op_type="norm", layer_pattern=pattern, in_shapes=(lo.seq_shape(n),),
            out_shape=shape, weight_shape=(width,), params=params, fwd_flops=flops, bwd_flops=2 * flops,
            bytes_moved=(2 * n + width) * self.dtype, saves_input=True, saved_extra_bytes=4.0 * n / width)

    def _attention(self) -> OpNode:
        lo, g = self.lo, self.g
        pattern = lo.star(g.scope)
        if "fused" in g.info:
            op = lo.ops[g.ops[0]]
            q, k, v = [key for key in op.inputs if key in lo.active][:3]
            out = op.outputs[0]
            q_dims = lo.dims(q)  # fused kernels take [b, s, heads, dim]
            heads, qk_dim, s_q = q_dims[-2], q_dims[-1], q_dims[-3]
            s_k = lo.dims(k)[-3]
            v_dim = lo.dims(v)[-1]
            flops = 2.0 * s_q * s_k * heads * (qk_dim + v_dim)
        else:
            qk, pv = lo.ops[g.ops[0]], lo.ops[g.ops[-1]]
            q, k, v, out = qk.inputs[0], qk.inputs[1], pv.inputs[1], pv.outputs[0]
            scores = lo.dims(lo.ops[g.info["softmax"]].outputs[0])
            s_q, s_k = scores[-2], scores[-1]
            heads = math.prod(scores[:-2])
            q_dims = lo.dims(q)
            qk_dim = q_dims[-2] if qk.attrs.get("transpose_x") else q_dims[-1]
            v_dim = lo.dims(out)[-1]
            flops = 2.0 * math.prod(scores) * qk_dim + 2.0 * lo.numel(out) * s_k
        kv_heads = round(heads / lo.expansion(k)) or heads
        shapes = tuple(lo.seq_shape(round(lo.numel(key) / lo.expansion(key))) for key in (q, k, v))
        out_shape = lo.seq_shape(lo.numel(out))
        out_bytes = lo.numel(out) * self.dtype
        return OpNode(
            name=self.name(pattern, "attention"), op_type="attention", layer_pattern=pattern, in_shapes=shapes,
            out_shape=out_shape, fwd_flops=flops, bwd_flops=ATTENTION_BWD_FACTOR * flops,
            bytes_moved=sum(math.prod(1 if d == "b" else d for d in sh) for sh in shapes) * self.dtype + out_bytes,
            saves_input=True, saved_extra_bytes=out_bytes + 4.0 * s_q * heads, causal=True, heads=heads,
            kv_heads=kv_heads)

    def _rope(self) -> OpNode:
        lo, g = self.lo, self.g
        inputs, output = self._group_io()
        flops, _ = self._elementwise_flops(g.ops)
        n = lo.numel(output)
        shape = lo.seq_shape(n)
        pattern = lo.star(g.scope)
        return OpNode(
            name=self.name(pattern, "rope"), op_type="rope", layer_pattern=pattern,
            in_shapes=tuple(lo.seq_shape(lo.numel(k)) for k in inputs) or (shape,), out_shape=shape,
            fwd_flops=flops, bwd_flops=flops, bytes_moved=2 * n * self.dtype)

    def _elementwise(self) -> OpNode:
        lo, g = self.lo, self.g
        inputs, output = self._group_io()
        flops, saves = self._elementwise_flops(g.ops)
        scale = g.expert.top_k if g.expert is not None else 1  # one expert ran on every token: top_k of them do
        params = sum(self.own(p)[0] for p in sorted({p for i in g.ops for p in
                                                    (lo.param_through(k) for k in lo.ops[i].inputs) if p}))
        in_shapes = tuple(self._scaled(lo.raw_shape(k), scale) for k in inputs)
        out_shape = self._scaled(lo.raw_shape(output), scale)
        moved = (sum(lo.numel(k) for k in inputs) + lo.numel(output)) * scale * self.dtype
        kinds = "+".join(dict.fromkeys(lo.ops[i].kind for i in g.ops))
        pattern = lo.star(g.scope)
        return OpNode(
            name=self.name(pattern, kinds), op_type="elementwise", layer_pattern=pattern, in_shapes=in_shapes,
            out_shape=out_shape, params=params, fwd_flops=flops * scale, bwd_flops=2 * flops * scale,
            bytes_moved=moved, saves_input=saves)

    @staticmethod
    def _scaled(shape: tuple, scale: int) -> tuple:
        if scale == 1 or not shape:
            return shape
        first = 0 if shape[0] != "b" else 1
        return shape[:first] + (shape[first] * scale,) + shape[first + 1:] if len(shape) > first else shape
