"""Kill and resume: SIGKILL a 2-process GPT mp2 training run (tools/train.py) mid-way, launcher and
workers alike, start the same command again, and the loss curve after resumption equals an
uninterrupted run's; the final weights of both runs merge to identical tensors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS, SAVE_INTERVAL, KILL_AFTER_STEP = 16, 4, 6


def _args(output_dir: Path) -> dict:
    return {"model": "gpt3-tiny", "plan": "dp=1,mp=2", "data": "mock", "output_dir": str(output_dir),
            "max_steps": MAX_STEPS, "save_interval": SAVE_INTERVAL, "seq_length": 64, "global_batch_size": 4,
            "learning_rate": 3e-3, "warmup_steps": 2, "seed": 3}


def _command(run_dir: Path, name: str) -> list[str]:
    args_file = run_dir / "args.json"
    args_file.write_text(json.dumps(_args(run_dir / "out")))
    return [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
            "--log_dir", str(run_dir / f"log-{name}"), str(REPO / "tools" / "train.py"), str(args_file)]


def _run(run_dir: Path, name: str) -> None:
    proc = subprocess.run(_command(run_dir, name), cwd=run_dir, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((run_dir / f"log-{name}").glob("workerlog.*")))
        pytest.fail(f"{name} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")


def _logged(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every metrics line, in the order written."""
    path = run_dir / "out" / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(entry["step"], entry["loss"]) for entry in lines]


def _metrics(run_dir: Path) -> dict[int, float]:
    """Loss per step; a step logged again after a resume keeps its latest value."""
    return dict(_logged(run_dir))


def _descendants(pid: int) -> list[int]:
    """All processes below `pid` (Linux /proc). paddle.distributed.launch starts each worker in a new
    session, so killing the launcher's process group would leave the workers training."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # exited meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _run_and_kill(run_dir: Path) -> None:
    """Start training and SIGKILL the launcher and every worker once KILL_AFTER_STEP is logged."""
    proc = subprocess.Popen(_command(run_dir, "killed"), cwd=run_dir, env=dict(os.environ, PYTHONPATH=str(REPO)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while max(_metrics(run_dir), default=0) < KILL_AFTER_STEP:
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before step {KILL_AFTER_STEP}")
            if time.monotonic() > deadline:
                pytest.fail(f"no step {KILL_AFTER_STEP} within 300 s")
            time.sleep(0.02)
    finally:
        victims = _descendants(proc.pid)
        for pid in victims + [proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in victims):
            if time.monotonic() > deadline:
                pytest.fail(f"workers {victims} survived SIGKILL")
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_loss_curve(tmp_path):
    from runtime.checkpoint import checkpoint_step, latest_checkpoint
    from runtime.merge import merge_checkpoint, read_weights

    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    full_dir.mkdir()
    killed_dir.mkdir()
    _run(full_dir, "full")
    full = _metrics(full_dir)
    assert sorted(full) == list(range(1, MAX_STEPS + 1))

    _run_and_kill(killed_dir)
    resumed_from = checkpoint_step(latest_checkpoint(killed_dir / "out"))
    assert resumed_from is not None and SAVE_INTERVAL <= resumed_from < MAX_STEPS
    before = _logged(killed_dir)
    assert max(step for step, _ in before) < MAX_STEPS  # it really died mid-way

    _run(killed_dir, "resumed")
    # Each step logged once: the restart trained only the steps after the checkpoint (from scratch it would
    # log 1, 2, ... again) and dropped what the killed run logged after it.
    logged = _logged(killed_dir)
    assert [step for step, _ in logged] == list(range(1, MAX_STEPS + 1))
    assert logged[:resumed_from] == before[:resumed_from]
    after = dict(logged)
    np.testing.assert_array_equal([after[s] for s in range(1, MAX_STEPS + 1)],
                                  [full[s] for s in range(1, MAX_STEPS + 1)])

    merge_checkpoint(full_dir / "out", tmp_path / "merged-full")
    merge_checkpoint(killed_dir / "out", tmp_path / "merged-killed")
    a, b = read_weights(tmp_path / "merged-full"), read_weights(tmp_path / "merged-killed")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
