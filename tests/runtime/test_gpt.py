"""runtime/gpt.py: structure against the planner's trace, loss semantics, causality, and
mp2 / dp2 auto-parallel runs that must reproduce the single-process losses.

Run as a script (`test_gpt.py MODE OUT.json`) it is the worker that
`paddle.distributed.launch` starts for the multi-process tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
BATCH, SEQ = 4, 32


def _spec(**changes):
    from planner.frontends import load_preset

    return load_preset("gpt3-tiny").replace(**changes)


def _batch(vocab: int) -> tuple:
    import paddle

    # Separate contiguous arrays: dist.shard_tensor of a strided slice view (ids[:, :-1]) reads the
    # wrong elements in Paddle 3.3.1, so inputs and labels are built from numpy, not by slicing.
    tokens = np.random.RandomState(0).randint(0, vocab, size=(BATCH, SEQ + 1)).astype("int64")
    return paddle.to_tensor(tokens[:, :-1].copy()), paddle.to_tensor(tokens[:, 1:].copy())


def _train(mode: str) -> list[float]:
    """Losses of STEPS AdamW steps of the tiny GPT, single-process ('ref') or under dist.parallelize."""
    import paddle
    import paddle.distributed as dist

    from runtime.gpt import build_gpt

    spec = _spec()
    model = build_gpt(spec, seed=1)
    opt = paddle.optimizer.AdamW(1e-3, parameters=model.parameters())
    x, y = _batch(spec.vocab_size)
    if mode != "ref":
        dist.init_parallel_env()
        axis = mode[:2]
        mesh = dist.ProcessMesh([0, 1], dim_names=[axis])
        if axis == "mp":
            plan = {f"model.layers.*.self_attn.{n}_proj": dist.ColWiseParallel() for n in "qkv"}
            plan["model.layers.*.self_attn.o_proj"] = dist.RowWiseParallel()
            plan["model.layers.*.mlp.up_proj"] = dist.ColWiseParallel()
            plan["model.layers.*.mlp.down_proj"] = dist.RowWiseParallel()
            config = {"mp_config": {"parallelize_plan": plan}}
        else:
            config = {"dp_config": {"sharding_level": 0}}
        dist.auto_parallel.set_mesh(mesh)
        model, opt = dist.parallelize(model, opt, config=config)
        placement = [dist.Shard(0) if axis == "dp" else dist.Replicate()]
        x, y = dist.shard_tensor(x, mesh, placement), dist.shard_tensor(y, mesh, placement)
    losses = []
    for _ in range(STEPS):
        loss, _ = model(x, labels=y)
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss._local_value() if loss.is_dist() else loss))
    if mode.startswith("mp"):
        weight = dict(model.named_parameters())["model.layers.0.self_attn.q_proj.weight"]
        if list(weight._local_value().shape) != [spec.hidden_size, spec.hidden_size // 2]:
            raise RuntimeError(f"q_proj is not column-sharded: local shape {weight._local_value().shape}")
    return losses


def test_parameters_match_planner_trace():
    from planner.trace import trace_model
    from runtime.gpt import build_gpt

    for tied in (True, False):
        spec = _spec(tie_word_embeddings=tied)
        model = build_gpt(spec, seed=0)
        n_params = sum(int(np.prod(p.shape)) for p in model.parameters())
        graph = trace_model(spec, seq_len=16)
        assert n_params == graph.count_params()
        names = {name for name, _ in model.named_sublayers()}
        for block in graph.blocks.values():
            for op in block.ops():
                if op.op_type not in ("linear", "norm", "embedding") or (op.layer_pattern == "lm_head" and tied):
                    continue
                regex = re.compile(re.escape(op.layer_pattern).replace(r"\*", r"\d+") + "$")
                assert any(regex.match(n) for n in names), f"{op.layer_pattern} matches no layer"
        assert ("lm_head" in names) is not tied


def test_loss_is_masked_mean_cross_entropy_and_outputs_follow_paddleformers():
    import paddle
    import paddle.nn.functional as F

    from runtime.gpt import IGNORE_INDEX, build_gpt

    spec = _spec()
    model = build_gpt(spec, seed=0)
    x, y = _batch(spec.vocab_size)
    (logits,) = model(x)
    assert list(logits.shape) == [BATCH, SEQ, spec.vocab_size]
    y_masked = y.clone()
    y_masked[:, :5] = IGNORE_INDEX
    loss, logits2 = model(x, labels=y_masked)
    expected = F.cross_entropy(logits[:, 5:].reshape([-1, spec.vocab_size]), y[:, 5:].reshape([-1, 1])).mean()
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    np.testing.assert_array_equal(logits2.numpy(), logits.numpy())
    out = model(x, labels=y, return_dict=True)
    assert out.loss is not None and paddle.equal_all(out.logits, logits)


def test_attention_is_causal_and_tied_head_uses_embedding():
    from runtime.gpt import build_gpt

    spec = _spec()
    model = build_gpt(spec, seed=0)
    x, _ = _batch(spec.vocab_size)
    changed = x.clone()
    changed[:, 10] = (changed[:, 10] + 1) % spec.vocab_size
    a, b = model(x)[0].numpy(), model(changed)[0].numpy()
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 1e-4
    hidden = model.model(x)
    np.testing.assert_allclose(a, (hidden.numpy() @ model.model.embed_tokens.weight.numpy().T), rtol=1e-4, atol=1e-5)


def test_same_seed_same_weights_and_spec_validation():
    from runtime.gpt import build_gpt

    a, b = build_gpt(_spec(), seed=3), build_gpt(_spec(), seed=3)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    from planner.frontends import load_preset

    with pytest.raises(ValueError, match="family='llama'"):
        build_gpt(load_preset("llama-tiny"))
    with pytest.raises(ValueError, match="learned_position_embeddings"):
        build_gpt(_spec(learned_position_embeddings=False))
    with pytest.raises(ValueError, match="num_kv_heads"):
        build_gpt(_spec(num_kv_heads=2))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mp2", "dp2"])
def test_two_process_losses_equal_single_process(mode, tmp_path):
    out = tmp_path / "losses.json"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(tmp_path / "log"), str(Path(__file__).resolve()), mode, str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "log").glob("workerlog.*")))
        pytest.fail(f"launch failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{logs}")
    reference = _train("ref")
    np.testing.assert_allclose(json.loads(out.read_text()), reference, rtol=2e-6)
    assert reference[-1] < reference[0]  # it trains


if __name__ == "__main__":
    import paddle.distributed as _dist

    _losses = _train(sys.argv[1])
    if _dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(_losses))
