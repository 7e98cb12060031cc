"""Kill a 2-process training run with SIGKILL mid-way, start it again: it resumes from the newest complete
checkpoint and its loss curve equals an uninterrupted run's."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.runtime.helpers import REPO, make_plan, read_metrics, run_train, subprocess_env, worker_logs, write_args, \
    write_plan

STEPS, SAVE_EVERY = 12, 4
pytestmark = pytest.mark.slow


def _args(tmp_path, name: str):
    plan = write_plan(make_plan("llama-tiny", dp=2, mbs=2), tmp_path / "plan.json")
    return write_args(tmp_path / f"{name}.json", model="llama-tiny", plan=str(plan), output_dir=str(tmp_path / name),
                      max_steps=STEPS, save_interval=SAVE_EVERY, seq_length=32, global_batch_size=4,
                      learning_rate=1e-2, seed=7)


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference = run_train(_args(tmp_path, "straight"), nproc=2, log_dir=tmp_path / "log-straight")
    assert reference.returncode == 0, worker_logs(tmp_path / "log-straight")
    args = _args(tmp_path, "killed")
    output = tmp_path / "killed"
    launch = subprocess.Popen(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
         str(tmp_path / "log-killed"), str(REPO / "tools" / "train.py"), str(args)],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (output / f"checkpoint-{2 * SAVE_EVERY}").is_dir():  # killed after the second checkpoint
        assert launch.poll() is None and time.monotonic() < deadline, worker_logs(tmp_path / "log-killed")
        time.sleep(0.05)
    os.killpg(launch.pid, signal.SIGKILL)
    launch.wait()
    killed_at = max(m["step"] for m in read_metrics(output))
    assert killed_at < STEPS
    resumed = run_train(args, nproc=2, log_dir=tmp_path / "log-resumed")
    assert resumed.returncode == 0, worker_logs(tmp_path / "log-resumed")
    assert "resumed from" in worker_logs(tmp_path / "log-resumed")
    straight = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "straight")]
    again = [(m["step"], m["loss"]) for m in read_metrics(output)]
    assert [s for s, _ in again] == list(range(1, STEPS + 1))
    for (step, want), (_, got) in zip(straight, again):
        assert got == pytest.approx(want, abs=1e-6), step
