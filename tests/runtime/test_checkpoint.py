"""runtime/checkpoint.py: save / find / resume, crash safety, retention, and resuming a
2-process mp2 run (same layout and in one process) with losses equal to an uninterrupted run.

Run as a script (`test_checkpoint.py MODE OUT_DIR`) it is the worker that
`paddle.distributed.launch` starts for the multi-process test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SAVE_AT, TOTAL = 3, 6


def _setup(seed: int = 1, warm_names: bool = False):
    """Tiny GPT + AdamW with a warm-up schedule (so a lost LR state changes the losses)."""
    import paddle

    from planner.frontends import load_preset
    from runtime.gpt import build_gpt

    spec = load_preset("gpt3-tiny")
    if warm_names:  # shift Paddle's unique parameter names, as a different build order would
        build_gpt(spec, seed=0)
    model = build_gpt(spec, seed=seed)
    schedule = paddle.optimizer.lr.LinearWarmup(1e-3, warmup_steps=4, start_lr=1e-4, end_lr=1e-3)
    opt = paddle.optimizer.AdamW(schedule, parameters=model.parameters(), weight_decay=0.1)
    return model, opt, schedule


def _batch(step: int, vocab: int = 512):
    import paddle

    tokens = np.random.RandomState(100 + step).randint(0, vocab, size=(4, 17)).astype("int64")
    return paddle.to_tensor(tokens[:, :-1].copy()), paddle.to_tensor(tokens[:, 1:].copy())


def _train_steps(model, opt, schedule, first: int, last: int, shard=None) -> list[float]:
    """Optimizer steps first..last (1-based, inclusive); the batch depends on the step only."""
    losses = []
    for step in range(first, last + 1):
        x, y = _batch(step)
        if shard is not None:
            x, y = shard(x), shard(y)
        loss, _ = model(x, labels=y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        schedule.step()
        losses.append(float(loss._local_value() if loss.is_dist() else loss))
    return losses


def test_resume_reproduces_uninterrupted_losses(tmp_path):
    import paddle

    from runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model, opt, schedule = _setup()
    losses = _train_steps(model, opt, schedule, 1, SAVE_AT)
    path = save_checkpoint(tmp_path, SAVE_AT, model, opt, {"consumed_samples": 12})
    expected_rand = paddle.rand([3]).numpy()
    losses += _train_steps(model, opt, schedule, SAVE_AT + 1, TOTAL)

    assert latest_checkpoint(tmp_path) == path == tmp_path / f"checkpoint-{SAVE_AT}"
    model2, opt2, schedule2 = _setup(seed=7, warm_names=True)
    paddle.seed(12345)  # a different RNG stream, which the load must replace
    extra = load_checkpoint(path, model2, opt2)
    assert extra == {"consumed_samples": 12, "step": SAVE_AT}
    np.testing.assert_array_equal(paddle.rand([3]).numpy(), expected_rand)
    assert schedule2.last_epoch == SAVE_AT
    resumed = _train_steps(model2, opt2, schedule2, SAVE_AT + 1, TOTAL)
    np.testing.assert_array_equal(resumed, losses[SAVE_AT:])
    for (name, p), (_, q) in zip(model.named_parameters(), model2.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


def test_crashed_save_never_looks_complete(tmp_path, monkeypatch):
    import paddle.distributed as dist

    from runtime.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    model, opt, schedule = _setup()
    _train_steps(model, opt, schedule, 1, 1)
    first = save_checkpoint(tmp_path, 1, model, opt, {})
    _train_steps(model, opt, schedule, 2, 2)

    calls = []
    original = dist.save_state_dict

    def crash_on_optimizer(state_dict, path, *args, **kwargs):
        calls.append(path)
        if path.endswith("optimizer"):
            raise KeyboardInterrupt("killed mid-save")
        return original(state_dict, path, *args, **kwargs)

    monkeypatch.setattr(dist, "save_state_dict", crash_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, opt, {})
    assert len(calls) == 2 and (tmp_path / ".tmp-checkpoint-2" / "model").is_dir()
    (tmp_path / "checkpoint-5").mkdir()  # a directory with a checkpoint's name but no checkpoint.json
    assert latest_checkpoint(tmp_path) == first
    assert list_checkpoints(tmp_path) == [first]

    monkeypatch.setattr(dist, "save_state_dict", original)
    second = save_checkpoint(tmp_path, 2, model, opt, {})
    assert latest_checkpoint(tmp_path) == second and not (tmp_path / ".tmp-checkpoint-2").exists()


def test_keep_last_resave_and_bad_input(tmp_path):
    from runtime.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    model, opt, schedule = _setup()
    for step in range(1, 5):
        _train_steps(model, opt, schedule, step, step)
        save_checkpoint(tmp_path, step, model, opt, {"step_seen": step}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-4"]
    save_checkpoint(tmp_path, 4, model, opt, {"step_seen": 44}, keep_last=2)  # saving a step again replaces it
    assert json.loads((tmp_path / "checkpoint-4" / "checkpoint.json").read_text())["extra"] == {"step_seen": 44}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]

    with pytest.raises(ValueError, match="step must be an integer >= 0, got -1"):
        save_checkpoint(tmp_path, -1, model, opt, {})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_checkpoint(tmp_path, 5, model, opt, {"bad": object()})
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "checkpoint-9", model, opt)


def _worker(mode: str, out_dir: Path) -> None:
    """mp2 runs under paddle.distributed.launch; 'single' resumes the mp2 checkpoint in one process."""
    import paddle.distributed as dist

    from runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model, opt, schedule = _setup()
    shard = None
    if mode.startswith("mp2"):
        dist.init_parallel_env()
        mesh = dist.ProcessMesh([0, 1], dim_names=["mp"])
        plan = {f"model.layers.*.self_attn.{n}_proj": dist.ColWiseParallel() for n in "qkv"}
        plan.update({"model.layers.*.self_attn.o_proj": dist.RowWiseParallel(),
                     "model.layers.*.mlp.up_proj": dist.ColWiseParallel(),
                     "model.layers.*.mlp.down_proj": dist.RowWiseParallel()})
        dist.auto_parallel.set_mesh(mesh)
        model, opt = dist.parallelize(model, opt, config={"mp_config": {"parallelize_plan": plan}})

        def shard(t):
            return dist.shard_tensor(t, mesh, [dist.Replicate()])

    ckpt_dir = out_dir / "ckpt"
    if mode == "mp2-save":
        losses = _train_steps(model, opt, schedule, 1, SAVE_AT, shard)
        save_checkpoint(ckpt_dir, SAVE_AT, model, opt, {"consumed_samples": 4 * SAVE_AT})
        losses += _train_steps(model, opt, schedule, SAVE_AT + 1, TOTAL, shard)
    else:
        extra = load_checkpoint(latest_checkpoint(ckpt_dir), model, opt)
        losses = _train_steps(model, opt, schedule, extra["step"] + 1, TOTAL, shard)
    if dist.get_rank() == 0:
        (out_dir / f"{mode}.json").write_text(json.dumps(losses))


def _launch(mode: str, out_dir: Path) -> None:
    log_dir = out_dir / f"log-{mode}"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           str(Path(__file__).resolve()), mode, str(out_dir)]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=out_dir, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(log_dir.glob("workerlog.*")))
        pytest.fail(f"{mode} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")


@pytest.mark.slow
def test_mp2_checkpoint_resumes_in_mp2_and_in_one_process(tmp_path):
    _launch("mp2-save", tmp_path)
    _launch("mp2-resume", tmp_path)
    # In this process: resume the 2-rank checkpoint unsharded (dist.load_state_dict reshards).
    _worker("single", tmp_path)
    full = json.loads((tmp_path / "mp2-save.json").read_text())
    assert len(full) == TOTAL
    np.testing.assert_allclose(json.loads((tmp_path / "mp2-resume.json").read_text()), full[SAVE_AT:], rtol=1e-6)
    np.testing.assert_allclose(json.loads((tmp_path / "single.json").read_text()), full[SAVE_AT:], rtol=1e-5)


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
