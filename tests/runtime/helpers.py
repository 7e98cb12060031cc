"""Shared helpers of the runtime tests: hand-made Plans with real layer names, and multi-process launches.

The planner core builds plans for real runs; these tests build planner.plan.Plan
objects directly so that each layout is exercised exactly as written here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Megatron-style tensor-parallel plans with the real PaddleFormers 1.2.0 / runtime.gpt layer names.
_COL, _ROW = {"style": "ColWiseParallel"}, {"style": "RowWiseParallel"}
MP_PLANS = {
    "llama": {
        "model.embed_tokens": {"style": "ColWiseParallel", "gather_output": True},
        **{f"model.layers.*.self_attn.{n}_proj": _COL for n in "qkv"},
        "model.layers.*.self_attn.o_proj": _ROW,
        "model.layers.*.mlp.gate_proj": _COL,
        "model.layers.*.mlp.up_proj": _COL,
        "model.layers.*.mlp.down_proj": _ROW,
        "lm_head": {"style": "ColWiseParallel"},  # vocab-parallel logits: the loss reads them sharded
    },
    "qwen2": {
        "model.layers.*.self_attn.qkv_proj": _COL,
        "model.layers.*.self_attn.o_proj": _ROW,
        "model.layers.*.mlp.up_gate_proj": _COL,
        "model.layers.*.mlp.down_proj": _ROW,
    },
    "gpt": {
        **{f"model.layers.*.self_attn.{n}_proj": _COL for n in "qkv"},
        "model.layers.*.self_attn.o_proj": _ROW,
        "model.layers.*.mlp.up_proj": _COL,
        "model.layers.*.mlp.down_proj": _ROW,
    },
}


def make_plan(model, *, dp: int = 1, mp: int = 1, pp: int = 1, sharding: int = 0, mbs: int = 2,
              micro_batches: int = 1, seq_len: int = 32, recompute: str = "none", device: str = "cpu",
              mp_plan: dict | None = None, mode: str = "pretrain", vpp: int = 1):
    """A Plan for `model` (preset name or ModelSpec) with the given layout; pipeline (and virtual) stages
    split the decoder layers evenly."""
    from planner.frontends import load_preset
    from planner.plan import Layout, Plan, Stage

    spec = load_preset(model) if isinstance(model, str) else model
    layout = Layout(dp=dp, mp=mp, pp=pp, sharding_stage=sharding, micro_batch_size=mbs,
                    num_micro_batches=micro_batches, recompute=recompute, vpp=vpp)
    layers, stages, first, chunks = spec.num_layers, [], 0, pp * vpp
    for index in range(chunks):
        last = layers + 1 if index == chunks - 1 else (index + 1) * layers // chunks
        stages.append(Stage(index=index, first_layer=first, last_layer=last,
                            recompute=tuple("none" if i in (0, layers + 1) else recompute
                                            for i in range(first, last + 1))))
        first = last + 1
    parallelize_plan = (MP_PLANS[spec.family] if mp_plan is None else mp_plan) if mp > 1 else {}
    paddle_config = {}
    if dp > 1:
        paddle_config["dp_config"] = {"sharding_level": sharding}
    if mp > 1:
        paddle_config["mp_config"] = {"parallelize_plan": parallelize_plan}
    if pp > 1 and vpp == 1:
        paddle_config["pp_config"] = {"split_spec": {f"model.layers.{s.last_layer - 1}": "END" for s in stages[:-1]}}
    return Plan(model_name=spec.name, model_config=spec.to_dict(), params=0, active_params=0, device=device,
                num_devices=layout.num_devices, devices_per_node=layout.num_devices, seq_len=seq_len, mode=mode,
                dtype="float32", layout=layout, stages=tuple(stages), placements={},
                parallelize_plan=parallelize_plan, paddle_config=paddle_config, training_args={})


def gpus() -> int:
    """Visible GPUs of a CUDA build of Paddle (0 elsewhere)."""
    import paddle

    return paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0


def write_plan(plan, path: Path) -> Path:
    path.write_text(json.dumps(plan.to_dict(), indent=1))
    return path


def write_args(path: Path, **values) -> Path:
    path.write_text(json.dumps(values, indent=1))
    return path


def read_metrics(output_dir: Path) -> list[dict]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # One BLAS/OpenMP thread per process: the CI machine has 2 cores for up to 4 processes.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_train(args_file: Path, *, nproc: int, log_dir: Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    """tools/train.py on one process, or under paddle.distributed.launch with `nproc` processes."""
    return _launch([str(REPO / "tools" / "train.py"), str(args_file)], [args_file], nproc=nproc, log_dir=log_dir,
                   timeout_s=timeout_s)


def run_train_many(args_files: list[Path], *, nproc: int, log_dir: Path,
                   timeout_s: float = 600) -> subprocess.CompletedProcess:
    """tests/runtime/train_many.py: every arguments file trained in turn by one launch."""
    script = [str(REPO / "tests" / "runtime" / "train_many.py"), *map(str, args_files)]
    return _launch(script, args_files, nproc=nproc, log_dir=log_dir, timeout_s=timeout_s)


def _launch(script: list[str], args_files: list[Path], *, nproc: int, log_dir: Path,
            timeout_s: float) -> subprocess.CompletedProcess:
    """Run `script` in one process or under paddle.distributed.launch.

    A multi-process launch that fails is run once more from empty output directories: gloo on CPU now and
    then aborts a run at teardown after its last step (exit 250, seen with the static 2-stage pipeline).
    The caller still checks every step's loss of the run that returns.
    """
    if nproc == 1:
        command = [sys.executable, *script]
    else:
        command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
                   "--log_dir", str(log_dir), *script]
    done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout_s)
    if done.returncode and nproc > 1:
        for args_file in args_files:
            output_dir = Path(json.loads(Path(args_file).read_text()).get("output_dir", ""))
            if output_dir.is_absolute() and output_dir.is_dir():
                shutil.rmtree(output_dir)
        done = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                              timeout=timeout_s)
    return done


def worker_logs(log_dir: Path) -> str:
    """The tail of every worker log, for assertion messages."""
    parts = []
    for path in sorted(Path(log_dir).glob("workerlog.*")):
        parts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
    return "\n".join(parts)
