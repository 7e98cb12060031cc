"""runtime/merge.py and tools/merge_checkpoint.py: merged weights equal the unsharded
parameters exactly (single process; 2-process GPT mp2 and Llama ZeRO-3 dp2), every output
format and split round-trips, and the command line reports bad input with exit code 2.

Run as a script (`test_merge.py MODEL LAYOUT OUT_DIR`) it is the worker that
`paddle.distributed.launch` starts for the multi-process tests.
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
STEPS = 2


def _batch(step: int, vocab: int = 512):
    import paddle

    tokens = np.random.RandomState(200 + step).randint(0, vocab, size=(4, 17)).astype("int64")
    return paddle.to_tensor(tokens[:, :-1].copy()), paddle.to_tensor(tokens[:, 1:].copy())


def _loss(model, x, y) -> float:
    loss = model(x, labels=y)[0]
    return float(loss._local_value() if loss.is_dist() else loss)


def _trained(model_name: str, layout: str, out_dir: Path):
    """Train STEPS steps under `layout` ('single', 'mp2', 'dp2s3'), save a checkpoint; returns (model, mesh)."""
    import paddle
    import paddle.distributed as dist

    from planner.frontends import load_preset
    from runtime.checkpoint import save_checkpoint
    from runtime.cpu_shims import apply_cpu_shims
    from runtime.models import build_model

    spec = load_preset(model_name)
    model = build_model(spec, seed=1)
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters())
    shard = None
    if layout != "single":
        apply_cpu_shims()  # ZeRO-3 reshards gradients Partial -> Shard, which needs the CPU shim
        dist.init_parallel_env()
        axis = "mp" if layout == "mp2" else "dp"
        mesh = dist.ProcessMesh([0, 1], dim_names=[axis])
        if axis == "mp":
            plan = {f"model.layers.*.self_attn.{n}_proj": dist.ColWiseParallel() for n in "qkv"}
            plan["model.layers.*.self_attn.o_proj"] = dist.RowWiseParallel()
            plan.update({f"model.layers.*.mlp.{n}_proj": dist.ColWiseParallel()
                         for n in ("up", "gate") if spec.activation == "swiglu" or n == "up"})
            plan["model.layers.*.mlp.down_proj"] = dist.RowWiseParallel()
            config = {"mp_config": {"parallelize_plan": plan}}
        else:
            config = {"dp_config": {"sharding_level": 3}}
        dist.auto_parallel.set_mesh(mesh)
        model, opt = dist.parallelize(model, opt, config=config)

        def shard(t):
            return dist.shard_tensor(t, mesh, [dist.Shard(0) if axis == "dp" else dist.Replicate()])

    for step in range(1, STEPS + 1):
        x, y = _batch(step)
        if shard is not None:
            x, y = shard(x), shard(y)
        model(x, labels=y)[0].backward()
        opt.step()
        opt.clear_grad()
    save_checkpoint(out_dir / "ckpt", STEPS, model, opt, {"model_spec": spec.to_dict()})
    return model, shard


def _worker(model_name: str, layout: str, out_dir: Path) -> None:
    import paddle.distributed as dist

    model, shard = _trained(model_name, layout, out_dir)
    full = {k: dist.unshard_dtensor(v).numpy() for k, v in model.state_dict().items()}
    x, y = _batch(99)
    eval_loss = _loss(model, shard(x), shard(y))
    if dist.get_rank() == 0:
        np.savez(out_dir / "reference.npz", **full)
        (out_dir / "eval_loss.json").write_text(json.dumps(eval_loss))
        placements = {k: str(v.placements) for k, v in model.state_dict().items()}
        (out_dir / "placements.json").write_text(json.dumps(placements))


def _fresh_model_with(model_name: str, weights: dict):
    import paddle

    from planner.frontends import load_preset
    from runtime.models import build_model

    model = build_model(load_preset(model_name), seed=5)
    missing, unexpected = model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    assert not missing and not unexpected
    return model


def test_options_validation_and_bad_paths(tmp_path):
    from runtime.merge import MergeOptions, merge_checkpoint, read_weights

    with pytest.raises(ValueError, match="split_num must be a positive integer, got 0"):
        MergeOptions(split_num=0)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        merge_checkpoint(tmp_path, tmp_path / "out")
    with pytest.raises(ValueError, match="is not a directory"):
        merge_checkpoint(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match="contains none of"):
        read_weights(tmp_path)


@pytest.mark.parametrize("as_safetensors", [True, False])
@pytest.mark.parametrize("split_num", [1, 3])
def test_single_process_merge_equals_parameters(tmp_path, as_safetensors, split_num):
    from runtime.merge import (MODEL_SPEC_NAME, PADDLE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_INDEX_NAME, MergeOptions,
                               merge_checkpoint, read_weights)

    model, _ = _trained("gpt3-tiny", "single", tmp_path)
    options = MergeOptions(split_num=split_num, as_safetensors=as_safetensors)
    result = merge_checkpoint(tmp_path / "ckpt", tmp_path / "out", options)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    merged = read_weights(tmp_path / "out")
    assert sorted(merged) == sorted(expected) and "lm_head.weight" not in merged  # tied: no head parameter
    for key, value in expected.items():
        np.testing.assert_array_equal(merged[key], value, err_msg=key)
    assert len(result.files) == split_num and result.num_tensors == len(expected)
    assert all(f.suffix == (".safetensors" if as_safetensors else ".pdparams") for f in result.files)
    if split_num > 1:
        index = json.loads(result.index_file.read_text())
        assert result.index_file.name == (SAFE_WEIGHTS_INDEX_NAME if as_safetensors else PADDLE_WEIGHTS_INDEX_NAME)
        assert set(index["weight_map"]) == set(expected)
        assert sorted(set(index["weight_map"].values())) == sorted(f.name for f in result.files)
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in expected.values())
    else:
        assert result.index_file is None
    assert json.loads((tmp_path / "out" / MODEL_SPEC_NAME).read_text())["name"] == "gpt3-tiny"


def test_command_line(tmp_path, capsys):
    from tools.merge_checkpoint import main

    _trained("gpt3-tiny", "single", tmp_path)
    out = tmp_path / "merged"
    assert main(["--input_path", str(tmp_path / "ckpt"), "--output_path", str(out), "--split_num", "2",
                 "--as_safetensors", "--offload"]) == 0
    assert "into 2 file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["model-00001-of-00002.safetensors",
                                                     "model-00002-of-00002.safetensors",
                                                     "model.safetensors.index.json", "model_spec.json"]
    assert main(["--input_path", str(tmp_path / "ckpt"), "--output_path", str(out), "--split_num", "999"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split_num=999 exceeds the number of tensors" in err[0]
    proc = subprocess.run([sys.executable, "-m", "tools.merge_checkpoint", "--split_num", "x"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("model_name,layout", [("gpt3-tiny", "mp2"), ("llama-tiny", "dp2s3")])
def test_two_process_checkpoint_merges_to_gathered_parameters(tmp_path, model_name, layout):
    from runtime.merge import MergeOptions, merge_checkpoint, read_weights

    log_dir = tmp_path / "log"
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(log_dir),
           str(Path(__file__).resolve()), model_name, layout, str(tmp_path)]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted(log_dir.glob("workerlog.*")))
        pytest.fail(f"launch failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")
    placements = json.loads((tmp_path / "placements.json").read_text())
    assert any("Shard" in p for p in placements.values()), placements  # the checkpoint really was sharded

    merge_checkpoint(tmp_path / "ckpt", tmp_path / "out", MergeOptions(split_num=2, as_safetensors=True))
    merged = read_weights(tmp_path / "out")
    reference = np.load(tmp_path / "reference.npz")
    assert sorted(merged) == sorted(reference.files)
    for key in reference.files:
        np.testing.assert_array_equal(merged[key], reference[key], err_msg=key)
    # The merged weights drive a plain single-process model to the sharded model's loss.
    model = _fresh_model_with(model_name, merged)
    x, y = _batch(99)
    np.testing.assert_allclose(_loss(model, x, y), json.loads((tmp_path / "eval_loss.json").read_text()), rtol=1e-5)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
