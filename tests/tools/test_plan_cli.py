"""The `plan` command as a user runs it: outputs, plan files, determinism and exit codes."""

import json
import subprocess
import sys

import pytest

from tools.plan import main


def run_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.plan", *args], capture_output=True, text=True, timeout=300)


def test_llama_7b_on_8_a100_prints_a_plan_and_writes_the_plan_file(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["--model", "llama-7b", "--devices", "8xA100", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for section in ("layout", "predicted", "memory per device", "time per step", "next best"):
        assert section in text
    plan = json.loads(out.read_text())
    assert {"model", "cluster", "layout", "predicted", "solver", "schema_version", "mesh", "degrees", "stages",
            "placements", "paddle", "micro_batching"} <= set(plan)
    assert set(plan["model"]) >= {"name", "params", "active_params"}
    assert plan["cluster"] == {"device": "A100-80GB", "num_devices": 8, "devices_per_node": 8}
    assert set(plan["layout"]) == {"dp", "mp", "pp", "ep", "cp", "sharding_stage", "micro_batch_size",
                                   "num_micro_batches", "vpp", "recompute", "sequence_parallel"}
    predicted = plan["predicted"]
    assert {"step_time_s", "tokens_per_s", "tokens_per_s_per_device", "model_tflops_per_device",
            "hardware_tflops_per_device", "mfu", "fits", "memory_bytes_per_device"} <= set(predicted)
    assert predicted["fits"] and 0 < predicted["mfu"] < 1
    assert "total" in predicted["memory_bytes_per_device"]
    layout = plan["layout"]
    assert layout["dp"] * layout["mp"] * layout["pp"] * layout["cp"] == 8


def test_deepseek_v3_on_2048_h800_uses_pipeline_and_expert_parallelism(capsys):
    assert main(["--model", "deepseek-v3", "--devices", "2048xH800", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layout"]["pp"] > 1 and plan["layout"]["ep"] > 1
    assert plan["predicted"]["fits"]
    patterns = plan["parallelize_plan"]
    assert any(".mlp.experts." in p for p in plan["placements"])
    assert all(p.startswith(("model.", "lm_head")) for p in patterns)


def test_same_inputs_give_byte_identical_plan_files(tmp_path):
    files = []
    for i in range(2):
        path = tmp_path / f"plan{i}.json"
        assert run_plan("--model", "qwen2-7b", "--devices", "16xH100", "--out", str(path)).returncode == 0
        files.append(path.read_bytes())
    first, second = (json.loads(f) for f in files)
    for data in (first, second):  # wall times differ run to run; everything else must not
        data["solver"].pop("wall_s")
        data["solver"]["cp_sat"].pop("cp_sat_wall_s")
        for part in ("stage_partition", *data["solver"]["cp_sat"]["intra_op"].values()):
            (data["solver"]["cp_sat"][part] if isinstance(part, str) else part).pop("wall_s")
    assert first == second


def test_layout_flag_scores_the_given_layout(capsys):
    layout = "mp=2,pp=2,dp=2,sharding=1,mbs=1,vpp=1,recompute=full,sp=1"
    assert main(["--model", "llama-7b", "--devices", "8xA100", "--layout", layout, "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["layout"] | {"num_micro_batches": 0} == {
        "dp": 2, "mp": 2, "pp": 2, "ep": 1, "cp": 1, "sharding_stage": 1, "micro_batch_size": 1,
        "num_micro_batches": 0, "vpp": 1, "recompute": "full", "sequence_parallel": True}
    assert plan["solver"]["method"] == "layout"
    assert all(mode == "full" for stage in plan["stages"] for mode in stage["recompute"])


@pytest.mark.parametrize("args, message", [
    (["--model", "llama-8b", "--devices", "8xA100"], "unknown model 'llama-8b'"),
    (["--model", "llama-7b", "--devices", "8xA1000"], "unknown device 'A1000'"),
    (["--model", "llama-7b", "--devices", "eight A100"], "malformed device string"),
    (["--model", "llama-7b", "--devices", "0xA100"], "device count must be at least 1"),
    (["--model", "llama-7b", "--devices", "8xA100", "--layout", "mp=3"], "not valid for llama-7b"),
    (["--model", "llama-7b", "--devices", "8xA100", "--layout", "mp=2,dp=2,pp=1"], "not valid for llama-7b"),
    (["--model", "llama-7b", "--devices", "8xA100", "--layout", "tp=2"], "expected KEY=VALUE with KEY one of"),
    (["--model", "llama-7b", "--devices", "8xV100", "--dtype", "bf16"], "V100 has no bf16 peak"),
    (["--model", "llama-7b"], "--model and --devices are required"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_plan(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_config_json_is_exit_2(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    result = run_plan("--model", str(path), "--devices", "8xA100")
    assert result.returncode == 2 and "missing field" in result.stderr


def test_model_that_cannot_fit_is_exit_3_with_overflow_and_smallest_count():
    result = run_plan("--model", "deepseek-v3", "--devices", "8xA100")
    assert result.returncode == 3
    assert "GiB over the 80.0 GiB" in result.stderr and "smallest count of A100-80GB that fits is" in result.stderr


def test_lists(capsys):
    assert main(["--list-models"]) == 0
    assert "deepseek-v3-demo" in capsys.readouterr().out
    assert main(["--list-devices"]) == 0
    devices = capsys.readouterr().out
    assert "aliases: A100" in devices and "unverified" in devices
