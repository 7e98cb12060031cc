"""Workarounds that let Paddle 3.3.1 auto-parallel train on CPU processes (gloo).

Every shim here patches a Paddle internal that is broken or GPU-only on the
CPU wheel of exactly Paddle 3.3.1 (found with ../shared/paddle-cpu-probe).
`apply_cpu_shims()` installs them on a CPU build of that version and does
nothing elsewhere: on a CUDA/XPU build they are not needed, and on another
Paddle version the internals they patch may differ, so it warns instead.

Each patched function carries the attribute `_autoplan_cpu_shim`, which
makes applying twice a no-op and lets tests see what is installed.
"""

from __future__ import annotations

import logging
import warnings

PADDLE_VERSION = "3.3.1"
_MARK = "_autoplan_cpu_shim"

log = logging.getLogger(__name__)


def shims_needed() -> bool:
    """True on a CPU-only build of the Paddle version these shims were written for."""
    import paddle
    from paddle.base import core

    if core.is_compiled_with_cuda() or core.is_compiled_with_xpu():
        return False
    if paddle.__version__ != PADDLE_VERSION:
        warnings.warn(f"runtime.cpu_shims: written for Paddle {PADDLE_VERSION}, found {paddle.__version__}; "
                      "CPU shims not applied (multi-process CPU training may fail)", RuntimeWarning, stacklevel=2)
        return False
    return True


def apply_cpu_shims() -> tuple[str, ...]:
    """Install every CPU shim (idempotent); returns the names of the shims in effect, () when not needed."""
    if not shims_needed():
        return ()
    for _, install in SHIMS:
        install()
    return tuple(name for name, _ in SHIMS)


def installed_shims() -> tuple[str, ...]:
    """Names of the shims currently installed in this process."""
    return tuple(name for name, install in SHIMS if _is_installed(install))


def _marked(fn):
    setattr(fn, _MARK, True)
    return fn


def _is_marked(fn) -> bool:
    return getattr(fn, _MARK, False)


# ---- dynamic mode -------------------------------------------------------------------------

def _dynamic_partial_to_shard() -> None:
    """Sharding stages 1-3 in dynamic mode reshard gradients Partial -> Shard, i.e. reduce_scatter,
    which has no CPU kernel ("Unimplemented cpu kernel for CReduceScatterOp"). Do it as
    Partial -> Replicate (all_reduce, which gloo has) followed by Replicate -> Shard (a local slice)."""
    import paddle
    import paddle.distributed as dist
    from paddle.distributed.auto_parallel import api

    if _is_marked(api.reshard):
        return
    original = api.reshard

    def reshard(dist_tensor, mesh, placements):
        if (paddle.in_dynamic_mode() and dist_tensor.is_dist() and dist_tensor.process_mesh == mesh
                and len(dist_tensor.placements) == len(placements)):
            pairs = list(zip(dist_tensor.placements, placements, strict=True))
            if any(isinstance(src, dist.Partial) and isinstance(dst, dist.Shard) for src, dst in pairs):
                middle = [dist.Replicate() if isinstance(src, dist.Partial) and isinstance(dst, dist.Shard) else src
                          for src, dst in pairs]
                dist_tensor = original(dist_tensor, mesh, middle)
        return original(dist_tensor, mesh, placements)

    api.reshard = _marked(reshard)
    dist.reshard = api.reshard


def _tensor_cuda_noop() -> None:
    """flex_checkpoint's reshard communicators (dist.load_state_dict when a rank needs another rank's
    file) call tensor.cuda() unconditionally, which raises "No available device found" on CPU.
    On a CPU build a tensor is already where it can be used, so .cuda() returns it unchanged."""
    import paddle

    if _is_marked(paddle.Tensor.cuda):
        return

    def cuda(self, *args, **kwargs):
        return self

    paddle.Tensor.cuda = _marked(cuda)


# ---- static mode (dist.to_static) ---------------------------------------------------------

def _static_gloo_process_groups() -> None:
    """The static engine's ProcessGroup.instantiate() knows only CUDA/XPU/custom devices ("No CUDA
    device found"). Create gloo comm contexts instead, numbering ranks in sorted order so every
    context with the same members agrees (the CPU executor attaches the first one it meets)."""
    import paddle.distributed as dist
    from paddle.base import core
    from paddle.distributed.auto_parallel.static import process_group
    from paddle.distributed.collective import _get_global_env

    if _is_marked(process_group.ProcessGroup.instantiate):
        return

    def instantiate(self):
        if self._is_instantiate:
            return
        genv = _get_global_env()
        # Group "0" is the world group that init_parallel_env(backend=gloo) already created.
        if self.nranks >= 2 and genv.rank in self.ranks and not (str(self.id) == "0" and dist.is_initialized()):
            store = core.create_or_get_global_tcp_store()
            core.CommContextManager.create_gloo_comm_context(store, str(self.id), sorted(self.ranks).index(genv.rank),
                                                            self.nranks)
        self._is_instantiate = True

    process_group.ProcessGroup.instantiate = _marked(instantiate)


def _static_skip_foreign_reshard() -> None:
    """DistModel's init calls core.reshard(param, same_dist_attr) on every parameter; for a parameter
    on another pipeline stage's mesh the local tensor is uninitialised and the CPU wheel segfaults
    in GetDefaultPlace(). Nothing has to move in that case, so return the tensor."""
    from paddle.base import core

    if _is_marked(core.reshard):
        return
    original = core.reshard

    def reshard(tensor, dist_attr):
        if tensor.is_dist() and not tensor._is_initialized():
            return tensor
        return original(tensor, dist_attr)

    core.reshard = _marked(reshard)


def _static_gloo_barrier() -> None:
    """The engine's init issues the legacy barrier op in dygraph; its CPU kernel finds no comm context
    ("NCCLCommContext is nullptr"). Use the gloo process-group barrier instead."""
    import paddle
    import paddle.distributed as dist

    if _is_marked(paddle._legacy_C_ops.barrier):
        return
    original = paddle._legacy_C_ops.barrier

    def barrier(x, out, *attrs):
        if paddle.in_dynamic_mode() and dist.is_initialized():
            dist.barrier()
            return out
        return original(x, out, *attrs)

    paddle._legacy_C_ops.barrier = _marked(barrier)


def _static_pipeline_send_recv() -> None:
    """Static pipelines: the reshard pass emits send_v2/recv_v2, whose CPU kernels are stubs ("Do not
    support send/recv for cpu kernel now"). After the pipeline pass has split the program into jobs,
    rewrite send_v2 as broadcast from this rank and recv_v2 as broadcast from the peer into zeros
    (on a 2-rank p2p group that is a send/recv; the CPU broadcast kernel uses gloo). Also drop the
    cross-job event attributes: the executor creates those events only on GPU places but requires
    them everywhere, and CPU execution is synchronous anyway."""
    from paddle.distributed.auto_parallel.static import engine

    if _is_marked(engine.pipeline_pass):
        return
    original = engine.pipeline_pass

    def pipeline_pass(*args, **kwargs):
        plan = original(*args, **kwargs)
        rewritten = sum(_rewrite_send_recv(plan.ir_program(job)) for job in plan.job_types())
        log.debug("cpu shim: rewrote %d send_v2/recv_v2 ops as gloo broadcasts", rewritten)
        return plan

    engine.pipeline_pass = _marked(pipeline_pass)


def _rewrite_send_recv(program) -> int:
    import paddle
    from paddle.base.libpaddle import pir
    from paddle.distributed.auto_parallel.static import process_group

    rewritten = 0
    block = program.global_block()
    for op in list(block.ops):
        name = op.name()
        if name not in ("pd_op.send_v2", "pd_op.recv_v2"):
            continue
        attrs = op.attrs()
        ring, peer = attrs["ring_id"], attrs["peer"]
        group = process_group._g_process_group_map[ring]
        sender = paddle.distributed.get_rank() if name == "pd_op.send_v2" else group.ranks[peer]
        root = sorted(group.ranks).index(sender)
        role, chunk = op.op_role, op.chunk_id
        with paddle.static.program_guard(program):
            pir.set_insertion_point(op)  # inside program_guard: entering it resets the insertion point
            if name == "pd_op.send_v2":
                out = paddle._C_ops.broadcast(op.operand_source(0), ring, root)
                new_ops = [out.get_defining_op()]
            else:
                zeros = paddle._C_ops.full(list(attrs["out_shape"]), 0.0, attrs["dtype"], paddle.CPUPlace())
                out = paddle._C_ops.broadcast(zeros, ring, root)
                new_ops = [zeros.get_defining_op(), out.get_defining_op()]
                op.result(0).replace_all_uses_with(out)
        for new_op in new_ops:
            new_op.op_role, new_op.chunk_id = role, chunk
        op.erase()
        rewritten += 1
    for op in block.ops:
        for key in ("events_to_wait", "force_record_event", "event_to_record"):
            if op.has_attr(key):
                op.erase_attr(key)
    return rewritten


def _static_partial_avg_to_replicate() -> None:
    """Static dp gradients are Partial(avg); Partial -> Replicate emits all_reduce(AVG), which gloo
    rejects ("Unsupported reduce type: 4"). Emit all_reduce(SUM) and scale by 1/n."""
    import paddle
    from paddle.base import core
    from paddle.distributed.auto_parallel.static import process_group
    from paddle.distributed.auto_parallel.static.reshard_funcs import p_to_r_reshard_func

    cls = p_to_r_reshard_func.PToRReshardFunction
    if _is_marked(cls.reshard):
        return
    original = cls.reshard

    def reshard(self, src_dist_attr, dst_dist_attr, src_value, dst_type):
        if src_dist_attr.partial_status[0] != core.ReduceType.kRedAvg:
            return original(self, src_dist_attr, dst_dist_attr, src_value, dst_type)
        pir = paddle.base.libpaddle.pir
        mesh = src_dist_attr.process_mesh
        group = process_group.new_process_group(sorted(mesh.process_ids))
        defining = src_value.get_defining_op()
        chunk_id = defining.dist_attr.chunk_id if defining.dist_attr else -1
        summed = paddle._C_ops.all_reduce(src_value, group.id, int(core.ReduceType.kRedSum))
        summed.set_type(dst_type)
        summed.get_defining_op().dist_attr = pir.create_op_dist_attribute(mesh, [src_dist_attr], [dst_dist_attr],
                                                                          chunk_id)
        out = paddle._C_ops.scale(summed, 1.0 / len(mesh.process_ids), 0.0, True)
        out.set_type(dst_type)
        out.get_defining_op().dist_attr = pir.create_op_dist_attribute(mesh, [dst_dist_attr], [dst_dist_attr],
                                                                       chunk_id)
        return out

    cls.reshard = _marked(reshard)


def _static_partial_to_shard() -> None:
    """Static sharding stages 1-3 reshard gradients Partial -> Shard with reduce_scatter, which has no
    CPU kernel. Compose Partial -> Replicate (all_reduce) and Replicate -> Shard (slice)."""
    import paddle
    from paddle.distributed.auto_parallel.static.reshard_funcs import p_to_s_reshard_func
    from paddle.distributed.auto_parallel.static.reshard_funcs.p_to_r_reshard_func import PToRReshardFunction
    from paddle.distributed.auto_parallel.static.reshard_funcs.r_to_s_reshard_func import RToSReshardFunction

    cls = p_to_s_reshard_func.PToSReshardFunction
    if _is_marked(cls.reshard):
        return

    def reshard(self, src_dist_attr, dst_dist_attr, src_value, dst_type):
        pir = paddle.base.libpaddle.pir
        mid_attr = pir.create_tensor_dist_attribute(src_dist_attr.process_mesh, src_dist_attr.dims_mapping, {})
        mid_type = pir.cvt_to_dist_type(src_value.type(), mid_attr)
        replicated = PToRReshardFunction().reshard(src_dist_attr, mid_attr, src_value, mid_type)
        return RToSReshardFunction().reshard(mid_attr, dst_dist_attr, replicated, dst_type)

    cls.reshard = _marked(reshard)


# (name, installer) in installation order; each installer is idempotent.
SHIMS = (
    ("dynamic_partial_to_shard", _dynamic_partial_to_shard),
    ("tensor_cuda_noop", _tensor_cuda_noop),
    ("static_gloo_process_groups", _static_gloo_process_groups),
    ("static_skip_foreign_reshard", _static_skip_foreign_reshard),
    ("static_gloo_barrier", _static_gloo_barrier),
    ("static_pipeline_send_recv", _static_pipeline_send_recv),
    ("static_partial_avg_to_replicate", _static_partial_avg_to_replicate),
    ("static_partial_to_shard", _static_partial_to_shard),
)


def _is_installed(install) -> bool:
    """Whether the function that `install` patches is currently the shim."""
    import paddle
    from paddle.base import core
    from paddle.distributed.auto_parallel import api
    from paddle.distributed.auto_parallel.static import engine, process_group
    from paddle.distributed.auto_parallel.static.reshard_funcs import p_to_r_reshard_func, p_to_s_reshard_func

    target = {
        _dynamic_partial_to_shard: api.reshard,
        _tensor_cuda_noop: paddle.Tensor.cuda,
        _static_gloo_process_groups: process_group.ProcessGroup.instantiate,
        _static_skip_foreign_reshard: core.reshard,
        _static_gloo_barrier: paddle._legacy_C_ops.barrier,
        _static_pipeline_send_recv: engine.pipeline_pass,
        _static_partial_avg_to_replicate: p_to_r_reshard_func.PToRReshardFunction.reshard,
        _static_partial_to_shard: p_to_s_reshard_func.PToSReshardFunction.reshard,
    }[install]
    return _is_marked(target)


__all__ = ["apply_cpu_shims", "installed_shims", "shims_needed", "PADDLE_VERSION", "SHIMS"]
