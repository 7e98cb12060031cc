"""Candidate sharding strategies per op over the mp axis, and resharding between them.

Layouts of an activation over the mp axis (one letter each):
  R  replicated on every mp rank
  H  sharded on the last dim (features / heads)
  P  partial sums (each rank holds a summand of the full tensor)
  S  sharded on the sequence dim (Megatron sequence parallelism)

A strategy fixes the layouts an op consumes and produces, how much of its
work and of its parameters each rank holds, and the collectives it implies.
Collectives that belong to a tensor rather than to one consumer (the
backward all-reduce of the input of column-parallel linears, the all-gather
of a sequence-sharded input) are marked with `input_flag` and paid once per
tensor however many consumers share it (q, k and v; gate and up).
Byte counts are per sequence (micro-batch size 1), of the full tensor for
all-reduce / all-gather / reduce-scatter and per rank for all-to-all.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from planner.trace.graph import OpNode

LAYOUTS = ("R", "H", "P", "S")
# MLA's down-projections into the latent stay whole on every mp rank, as in Megatron's and DeepSeek's
# MLA (and Paddle 3.3.1's matmul-grad SPMD rule rejects a column split of them)
UNSPLIT_PROJECTIONS = ("q_a_proj", "kv_a_proj_with_mqa")
GROUPS = ("mp", "ep", "ep_mp")  # the mp axis, the expert-parallel group, and both together
PHASES = ("fwd", "bwd")


@dataclass(frozen=True, slots=True, kw_only=True)
class Collective:
    kind: str  # all_reduce | all_gather | reduce_scatter | all_to_all
    group: str
    bytes: float
    phase: str
    per_token: bool = True  # scales with the micro-batch (activations); False for weight gradients

    def __post_init__(self) -> None:
        if self.group not in GROUPS or self.phase not in PHASES:
            raise ValueError(f"collective: group {self.group!r} / phase {self.phase!r} not in {GROUPS} / {PHASES}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    """How one op runs on the mp axis (and, for experts, the ep group)."""

    name: str
    in_layouts: tuple[str, ...]
    out_layout: str
    work_divisor: int  # each rank does 1/work_divisor of the op's FLOPs and traffic
    param_divisor: int  # each rank holds 1/param_divisor of the op's parameters
    collectives: tuple[Collective, ...] = ()
    input_flag: str = ""  # "grad_reduce" | "seq_gather": per-tensor collectives on input 0
    paddle_style: str = ""  # ColWiseParallel | RowWiseParallel for the emitted parallelize plan
    weight_dim: int | None = None  # the weight dim sharded over mp (Paddle Linear weight is [in, out])


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardingContext:
    """The degrees a block is sharded under: mp (tensor), ep (experts), sequence parallel allowed."""

    mp: int
    ep: int = 1
    sequence_parallel: bool = False

    def __post_init__(self) -> None:
        if self.mp < 1 or self.ep < 1:
            raise ValueError(f"sharding context: mp={self.mp} and ep={self.ep} must be >= 1")
        if self.sequence_parallel and self.mp == 1:
            raise ValueError("sharding context: sequence parallelism needs mp > 1")


def tensor_bytes(shape: tuple, dtype_bytes: int = 2) -> float:
    return float(prod(1 if d == "b" else d for d in shape) * dtype_bytes)


def layout_divisor(layout: str, mp: int) -> int:
    """How many ways a tensor in `layout` is split across the mp ranks (memory per rank = full / divisor)."""
    return mp if layout in ("H", "S") else 1


def _same_layout(op: OpNode, layouts: tuple[str, ...], mp: int) -> list[Strategy]:
    """Layout-preserving ops (elementwise, rope): the op runs on whatever shard it gets."""
    n_in = max(1, len(op.in_shapes))
    return [Strategy(name={"R": "replicate", "H": "hidden", "S": "sequence"}[lay], in_layouts=(lay,) * n_in,
                     out_layout=lay, work_divisor=layout_divisor(lay, mp), param_divisor=1) for lay in layouts]


def _linear(op: OpNode, ctx: ShardingContext) -> list[Strategy]:
    m = ctx.mp
    in_f, out_f = op.weight_shape[-2], op.weight_shape[-1]
    out = [Strategy(name="replicate", in_layouts=("R",), out_layout="R", work_divisor=1, param_divisor=1)]
    if m == 1:
        return out
    if op.layer_pattern.endswith(UNSPLIT_PROJECTIONS):
        in_f = out_f = 1  # no column or row split; tokens may still split under sequence parallelism
    if out_f % m == 0:
        out.append(Strategy(name="column", in_layouts=("R",), out_layout="H", work_divisor=m, param_divisor=m,
                            input_flag="grad_reduce", paddle_style="ColWiseParallel", weight_dim=1))
        if ctx.sequence_parallel:
            out.append(Strategy(name="column_sequence", in_layouts=("S",), out_layout="H", work_divisor=m,
                                param_divisor=m, input_flag="seq_gather", paddle_style="ColWiseParallel",
                                weight_dim=1))
    if in_f % m == 0:
        out.append(Strategy(name="row", in_layouts=("H",), out_layout="P", work_divisor=m, param_divisor=m,
                            paddle_style="RowWiseParallel", weight_dim=0))
    if ctx.sequence_parallel:
        # Tokens split over mp with the full weight on every rank: its gradient is summed over mp.
        grad_sync = Collective(kind="all_reduce", group="mp", bytes=2.0 * op.params, phase="bwd", per_token=False)
        out.append(Strategy(name="sequence", in_layouts=("S",), out_layout="S", work_divisor=m, param_divisor=1,
                            collectives=(grad_sync,) if op.params else ()))
    return out


def _experts(op: OpNode, ctx: ShardingContext) -> list[Strategy]:
    """Grouped expert GEMMs: experts split over ep, and over mp either by width (expert TP) or by expert."""
    m, ep = ctx.mp, ctx.ep
    in_f, out_f = op.weight_shape[-2], op.weight_shape[-1]
    out = [Strategy(name="replicate", in_layouts=("R",), out_layout="R", work_divisor=1, param_divisor=ep)]
    if m == 1:
        return out
    if out_f % m == 0:
        out.append(Strategy(name="column", in_layouts=("R",), out_layout="H", work_divisor=m, param_divisor=ep * m,
                            input_flag="grad_reduce", paddle_style="ColWiseParallel", weight_dim=1))
    if in_f % m == 0:
        out.append(Strategy(name="row", in_layouts=("H",), out_layout="P", work_divisor=m, param_divisor=ep * m,
                            paddle_style="RowWiseParallel", weight_dim=0))
    if ctx.sequence_parallel and op.num_experts % (ep * m) == 0:
        # mp ranks act as further expert-parallel ranks: tokens split over mp, experts over ep x mp.
        out.append(Strategy(name="expert_sequence", in_layouts=("S",), out_layout="S", work_divisor=m,
                            param_divisor=ep * m))
    return out


def _dispatch(op: OpNode, ctx: ShardingContext) -> list[Strategy]:
    """Token dispatch / combine: an all-to-all each way, forward and backward."""
    m, ep = ctx.mp, ctx.ep
    n_in = len(op.in_shapes)
    routed = tensor_bytes(op.out_shape if n_in == 2 else op.in_shapes[0])

    def a2a(group: str, per_rank: float) -> tuple[Collective, ...]:
        size = ep * (m if group == "ep_mp" else 1)
        if size == 1:
            return ()
        return tuple(Collective(kind="all_to_all", group=group, bytes=per_rank, phase=p) for p in PHASES)

    out = [Strategy(name="tokens_replicated", in_layouts=("R",) * n_in, out_layout="R", work_divisor=1,
                    param_divisor=1, collectives=a2a("ep", routed))]
    if n_in == 1 and m > 1:  # combine is a weighted sum: it can carry partial sums through
        out.append(Strategy(name="partial", in_layouts=("P",), out_layout="P", work_divisor=1, param_divisor=1,
                            collectives=a2a("ep", routed)))
    if ctx.sequence_parallel and op.num_experts % (ep * m) == 0:
        out.append(Strategy(name="tokens_split", in_layouts=("S",) * n_in, out_layout="S", work_divisor=m,
                            param_divisor=1, collectives=a2a("ep_mp", routed / m)))
    return out


def candidates(op: OpNode, ctx: ShardingContext) -> list[Strategy]:
    """All strategies op `op` may take under `ctx`, in a fixed order (ties resolve to the first)."""
    m = ctx.mp
    seq = ("S",) if ctx.sequence_parallel else ()
    if op.op_type == "linear":
        return _linear(op, ctx)
    if op.op_type == "expert_linear":
        return _experts(op, ctx)
    if op.op_type == "dispatch":
        return _dispatch(op, ctx)
    if op.op_type == "router":
        out = [Strategy(name="replicate", in_layouts=("R",), out_layout="R", work_divisor=1, param_divisor=1)]
        if seq:
            grad_sync = Collective(kind="all_reduce", group="mp", bytes=2.0 * op.params, phase="bwd", per_token=False)
            out.append(Strategy(name="sequence", in_layouts=("S",), out_layout="S", work_divisor=m, param_divisor=1,
                                collectives=(grad_sync,)))
        return out
    if op.op_type == "attention":
        n_in = len(op.in_shapes)  # q, k, v or one fused qkv
        out = [Strategy(name="replicate", in_layouts=("R",) * n_in, out_layout="R", work_divisor=1, param_divisor=1)]
        if m > 1 and op.heads % m == 0 and op.kv_heads % m == 0:
            out.append(Strategy(name="heads", in_layouts=("H",) * n_in, out_layout="H", work_divisor=m,
                                param_divisor=1))
        return out
    if op.op_type == "embedding":
        v, h = op.weight_shape
        out = [Strategy(name="replicate", in_layouts=(), out_layout="R", work_divisor=1, param_divisor=1)]
        if m > 1 and h % m == 0:
            out.append(Strategy(name="hidden", in_layouts=(), out_layout="H", work_divisor=m, param_divisor=m,
                                paddle_style="ColWiseParallel", weight_dim=1))
        if m > 1 and v % m == 0:
            out.append(Strategy(name="vocab", in_layouts=(), out_layout="P", work_divisor=1, param_divisor=m,
                                paddle_style="RowWiseParallel", weight_dim=0))
        return out
    if op.op_type == "loss":
        tokens = op.in_shapes[0][1]
        out = [Strategy(name="replicate", in_layouts=("R",), out_layout="R", work_divisor=1, param_divisor=1)]
        if m > 1:
            # vocab-parallel cross entropy: all-reduce of max, sum of exp and target logit (fp32) per token
            stats = Collective(kind="all_reduce", group="mp", bytes=12.0 * tokens, phase="fwd")
            out.append(Strategy(name="vocab", in_layouts=("H",), out_layout="R", work_divisor=m, param_divisor=1,
                                collectives=(stats,)))
        if seq:
            out.append(Strategy(name="sequence", in_layouts=("S",), out_layout="R", work_divisor=m, param_divisor=1))
        return out
    if op.op_type == "norm":
        width, last = op.weight_shape[0], op.in_shapes[0][-1]
        per_head = m > 1 and last > width and last % width == 0  # Qwen3 q_norm/k_norm: one norm per head
        return _same_layout(op, ("R",) + seq + (("H",) if per_head else ()), m)
    # elementwise and rope: any layout except partial sums
    return _same_layout(op, ("R",) + (("H",) if m > 1 else ()) + seq, m)


def reshard(src: str, dst: str, buffer_bytes: float) -> tuple[Collective, ...] | None:
    """Collectives that turn a tensor in layout `src` into `dst` (forward) and its gradient back (backward).

    None when the conversion is impossible (nothing produces partial sums from whole tensors).
    """
    if src == dst:
        return ()
    if dst == "P":
        return None

    def c(kind: str, phase: str) -> Collective:
        return Collective(kind=kind, group="mp", bytes=buffer_bytes, phase=phase)

    if src == "P":
        if dst == "R":
            return (c("all_reduce", "fwd"),)
        return (c("reduce_scatter", "fwd"), c("all_gather", "bwd"))  # P -> S or H
    if src == "R":
        return (c("all_gather", "bwd"),)  # a local slice forward; the gradient shards are gathered back
    if dst == "R":
        return (c("all_gather", "fwd"),)  # S or H -> R; the gradient is sliced locally
    return (c("all_to_all", "fwd"), c("all_to_all", "bwd"))  # S <-> H


def flag_collectives(flag: str, buffer_bytes: float) -> tuple[Collective, ...]:
    """The per-tensor collectives of an input flag."""
    if flag == "grad_reduce":
        return (Collective(kind="all_reduce", group="mp", bytes=buffer_bytes, phase="bwd"),)
    if flag == "seq_gather":
        # gather forward, gather again in backward instead of keeping the full input, reduce-scatter its gradient
        return tuple(Collective(kind=k, group="mp", bytes=buffer_bytes, phase=p)
                     for k, p in (("all_gather", "fwd"), ("all_gather", "bwd"), ("reduce_scatter", "bwd")))
    raise ValueError(f"unknown input flag {flag!r}; known: grad_reduce, seq_gather")
