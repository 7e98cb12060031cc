"""Distributed training checkpoints: atomic save, newest-complete lookup, and resume.

Layout of one checkpoint (a directory under the run's output directory)::

    checkpoint-<step>/
        model/        dist.save_state_dict of the model (sharded files + metadata)
        optimizer/    dist.save_state_dict of the optimizer's tensors, keyed by the
                      model's structured parameter names (see below)
        rng/rank_<r>.pkl   each rank's Paddle / NumPy / Python RNG states
        checkpoint.json    step, world size, the train loop's `extra` (data position ...),
                           the LR scheduler state; written last

Crash safety: every rank writes into `.tmp-checkpoint-<step>/`; after a barrier
(all shards on disk and fsynced) rank 0 writes checkpoint.json and renames the
directory to `checkpoint-<step>` in one atomic `os.rename`. A directory with the
final name therefore always holds a complete checkpoint; a crash mid-save
leaves only a `.tmp-*` directory, which `latest_checkpoint` ignores and the
next save removes. Multi-node runs need `output_dir` on a shared filesystem
(as `dist.save_state_dict` itself does).

Optimizer keys: Paddle names accumulators after the parameter's unique name
(`linear_3.w_0_moment1_0`), which depends on how many layers the process built
before; they are renamed to the structured name (`model.layers.0.mlp.up_proj.weight/moment1_0`)
so a checkpoint loads into any process that builds the same model.

Loading on the CPU build needs the `.cuda()` shim (flex_checkpoint moves
tensors to the GPU unconditionally when ranks exchange shards), so
`load_checkpoint` applies `runtime.cpu_shims` (a no-op on GPU builds).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
META_FILE = "checkpoint.json"
FORMAT_VERSION = 1
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")
_KEY_SEP = "/"  # structured parameter name / accumulator suffix in optimizer keys
_MASTER_WEIGHTS = "master_weights"
_LR_SCHEDULER = "LR_Scheduler"


def _dist():
    import paddle.distributed as dist

    return dist


def _rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return dist.get_rank(), dist.get_world_size()


def _barrier() -> None:
    dist = _dist()
    if dist.get_world_size() > 1:
        dist.barrier()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _param_names(model) -> dict[str, str]:
    """Unique Paddle name (linear_3.w_0) -> structured name (model.layers.0.mlp.up_proj.weight)."""
    return {param.name: name for name, param in model.named_parameters()}


def _structured_key(key: str, names: dict[str, str], by_length: list[str]) -> str:
    # An accumulator is named f"{param.name}_{kind}_{n}"; the longest matching prefix wins
    # because "linear_1.w_0" is also a prefix of nothing else once the "_" separator is required.
    for unique in by_length:
        if key.startswith(unique + "_"):
            return names[unique] + _KEY_SEP + key[len(unique) + 1:]
    raise ValueError(f"optimizer state {key!r} belongs to no parameter of the model")


def optimizer_tensors(model, optimizer) -> tuple[dict, dict]:
    """(tensors keyed by structured names, non-tensor entries such as the LR scheduler state).

    The tensors are the optimizer's own accumulator objects, so loading into them restores
    the optimizer in place.
    """
    import paddle

    names = _param_names(model)
    by_length = sorted(names, key=len, reverse=True)
    tensors, other = {}, {}
    for key, value in optimizer.state_dict().items():
        if key == _MASTER_WEIGHTS:
            for unique, weight in value.items():
                tensors[names[unique] + _KEY_SEP + _MASTER_WEIGHTS] = weight
        elif isinstance(value, paddle.Tensor):
            tensors[_structured_key(key, names, by_length)] = value
        else:
            other[key] = value
    return tensors, other


def _ensure_optimizer_state(model, optimizer) -> None:
    """Create the optimizer's accumulators before loading into them.

    A fresh optimizer has none until its first step. ShardOptimizer.state_dict() creates
    (and shards) them with one zero-gradient step; a plain optimizer gets the same here.
    The step may move parameters (weight decay); load_checkpoint loads the model afterwards.
    """
    import paddle

    tensors, _ = optimizer_tensors(model, optimizer)
    if tensors:
        return
    params = [p for p in model.parameters() if not p.stop_gradient]
    for p in params:
        p.grad = paddle.zeros_like(p)
    optimizer.step()
    optimizer.clear_grad(set_to_zero=False)


def _rng_state() -> dict:
    import paddle

    return {"paddle": paddle.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    import paddle

    paddle.set_rng_state(state["paddle"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory name, or None when `path` is not one."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(checkpoint_step(p), p) for p in root.iterdir() if checkpoint_step(p) is not None]
    return [p for _, p in sorted(found) if (p / META_FILE).is_file()]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `output_dir`, or None."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(output_dir: str | os.PathLike, step: int, model, optimizer, extra: dict,
                    *, keep_last: int = 0) -> Path:
    """Save model, optimizer, RNG states and `extra` (JSON-serialisable) as checkpoint-<step>.

    Collective: every rank calls it with the same arguments. Returns the final directory.
    keep_last > 0 then deletes all but the newest `keep_last` complete checkpoints.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an integer >= 0, got {step!r}")
    try:
        extra_json = json.dumps(extra)
    except TypeError as err:
        raise ValueError(f"save_checkpoint: extra must be JSON-serialisable ({err})") from None
    if "step" in extra:
        raise ValueError("save_checkpoint: extra must not contain 'step' (it is stored separately)")
    dist = _dist()
    rank, world = _rank_and_world()
    root = Path(output_dir)
    tmp = root / f"{TMP_PREFIX}{step}"
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    if rank == 0:
        if tmp.exists():  # left by a save that crashed
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / "rng").mkdir()
    _barrier()

    started = time.time()
    opt_tensors, opt_other = optimizer_tensors(model, optimizer)
    dist.save_state_dict(model.state_dict(), str(tmp / "model"))
    dist.save_state_dict(opt_tensors, str(tmp / "optimizer"))
    rng_file = tmp / "rng" / f"rank_{rank}.pkl"
    with open(rng_file, "wb") as f:
        pickle.dump(_rng_state(), f)
    # Each rank makes its own shards durable before the barrier that lets rank 0 publish them.
    for sub in ("model", "optimizer"):
        for file in (tmp / sub).glob(f"{rank}_*"):
            _fsync(file)
    _fsync(rng_file)
    _barrier()

    if rank == 0:
        for file in list((tmp / "model").glob("*.metadata")) + list((tmp / "optimizer").glob("*.metadata")):
            _fsync(file)
        meta = {"format_version": FORMAT_VERSION, "step": step, "world_size": world,
                "extra": json.loads(extra_json), "optimizer": opt_other, "save_seconds": time.time() - started}
        with open(tmp / META_FILE, "w") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            stale = root / f"{TMP_PREFIX}{step}.replaced"
            shutil.rmtree(stale, ignore_errors=True)
            os.rename(final, stale)
            os.rename(tmp, final)
            shutil.rmtree(stale)
        else:
            os.rename(tmp, final)
        _fsync(root)
        if keep_last > 0:
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old)
    _barrier()
    return final


def load_checkpoint(path: str | os.PathLike, model, optimizer) -> dict:
    """Restore model, optimizer (pass None to skip it), LR scheduler and this rank's RNG from `path`.

    Collective. The current parallel layout may differ from the saved one (dist.load_state_dict
    reshards). Returns the saved `extra` dict plus "step". RNG states are restored only when
    the checkpoint has a file for this rank (same or larger world size when saved).
    """
    from runtime.cpu_shims import apply_cpu_shims

    apply_cpu_shims()
    dist = _dist()
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ValueError(f"load_checkpoint: {path} is not a complete checkpoint (no {META_FILE}); "
                         f"use latest_checkpoint() to find one")
    meta = json.loads(meta_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: {path} has format_version={meta.get('format_version')!r}; "
                         f"this code reads {FORMAT_VERSION}")
    if optimizer is not None:
        _ensure_optimizer_state(model, optimizer)  # before the model load: its zero step may move weights
    dist.load_state_dict(model.state_dict(), str(path / "model"))
    if optimizer is not None:
        opt_tensors, _ = optimizer_tensors(model, optimizer)
        dist.load_state_dict(opt_tensors, str(path / "optimizer"))
        scheduler_state = meta["optimizer"].get(_LR_SCHEDULER)
        if scheduler_state is not None and hasattr(optimizer._learning_rate, "set_state_dict"):
            optimizer._learning_rate.set_state_dict(scheduler_state)
    rng_file = path / "rng" / f"rank_{dist.get_rank()}.pkl"
    if rng_file.is_file():
        with open(rng_file, "rb") as f:
            _set_rng_state(pickle.load(f))
    return {**meta["extra"], "step": meta["step"]}


__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "list_checkpoints",
           "checkpoint_step", "optimizer_tensors"]
