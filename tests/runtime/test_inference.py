"""runtime/inference.py and tools/infer.py: a tiny model trained to count, saved as a
checkpoint and merged, generates the same greedy tokens in dynamic graph and through
Paddle Inference (static export), for the GPT and the PaddleFormers Llama builders."""

from __future__ import annotations

import numpy as np
import pytest

PROMPTS = [[20, 21, 22, 23], [7, 8, 9, 10]]
NEW_TOKENS = 8


def _train_counting(model_name: str, tmp_path):
    """Train `model_name` to predict token+1 (single process), checkpoint and merge it; returns (model, merged dir)."""
    import paddle

    from planner.frontends import load_preset
    from runtime.checkpoint import save_checkpoint
    from runtime.merge import MergeOptions, merge_checkpoint
    from runtime.models import build_model

    spec = load_preset(model_name)
    model = build_model(spec, seed=1)
    opt = paddle.optimizer.AdamW(1e-2, parameters=model.parameters())
    rng = np.random.RandomState(0)
    for _ in range(100):
        seq = (rng.randint(0, 48, size=(8, 1)) + np.arange(17)) % spec.vocab_size
        loss = model(paddle.to_tensor(seq[:, :-1]), labels=paddle.to_tensor(seq[:, 1:]))[0]
        loss.backward()
        opt.step()
        opt.clear_grad()
    save_checkpoint(tmp_path / "ckpt", 100, model, opt, {"model_spec": spec.to_dict()})
    merge_checkpoint(tmp_path / "ckpt", tmp_path / "merged", MergeOptions(split_num=2, as_safetensors=True))
    model.eval()
    return model, tmp_path / "merged"


@pytest.fixture(scope="module", params=["gpt3-tiny", "llama-tiny"])
def counting_model(request, tmp_path_factory):
    return request.param, *_train_counting(request.param, tmp_path_factory.mktemp(request.param))


def test_dynamic_and_static_generation_agree(counting_model, tmp_path):
    import paddle

    from runtime.inference import StaticPredictor, dynamic_generate, export_static, load_model

    name, trained, merged = counting_model
    model = load_model(merged)  # the ModelSpec comes from model_spec.json written by the merge
    ids = paddle.to_tensor(np.array(PROMPTS))
    np.testing.assert_array_equal(model(ids)[0].numpy(), trained(ids)[0].numpy())

    dynamic = dynamic_generate(model, PROMPTS, NEW_TOKENS)
    static = StaticPredictor(export_static(model, tmp_path / "static")).generate(PROMPTS, NEW_TOKENS)
    assert dynamic.shape == (2, 4 + NEW_TOKENS)
    np.testing.assert_array_equal(static, dynamic)
    np.testing.assert_array_equal(dynamic[:, :4], PROMPTS)
    counting = np.array(PROMPTS)[:, -1:] + np.arange(1, 5)
    np.testing.assert_array_equal(dynamic[:, 4:8], counting, err_msg=f"{name} did not learn to count")


def test_command_line(counting_model, capsys):
    from tools.infer import main

    _, _, merged = counting_model
    argv = ["--weights", str(merged), "--max_new_tokens", "4"] + [f"--prompt_ids={','.join(map(str, p))}"
                                                                  for p in PROMPTS]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("dynamic 0: 20 21 22 23 ")
    assert [line.split(":")[1] for line in lines[:2]] == [line.split(":")[1] for line in lines[2:]]

    assert main(["--weights", str(merged), "--prompt_ids", "1,2", "--max_new_tokens", "1000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeds the model's max_position_embeddings" in err[0]
    assert main(["--weights", str(merged), "--prompt_ids", "1,2", "--prompt_ids", "3"]) == 2
    assert "equal length" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--weights", str(merged), "--prompt_ids", "1,x"])
    assert exit_info.value.code == 2


def test_greedy_loop_eos_and_validation():
    from runtime.inference import greedy_loop

    def next_is_plus_one(ids):  # logits that make token t+1 follow t
        logits = np.zeros(ids.shape + (10,), dtype="float32")
        np.put_along_axis(logits, ((ids + 1) % 10)[..., None], 1.0, axis=-1)
        return logits

    out = greedy_loop(next_is_plus_one, [[3], [6]], 5, vocab_size=10, max_length=16, eos_token_id=7)
    np.testing.assert_array_equal(out, [[3, 4, 5, 6, 7], [6, 7, 7, 7, 7]])  # stops when every row has ended
    out = greedy_loop(next_is_plus_one, [1, 2], 3, vocab_size=10, max_length=16)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4, 5]])
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        greedy_loop(next_is_plus_one, [[12]], 1, vocab_size=10, max_length=16)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        greedy_loop(next_is_plus_one, [[1]], -1, vocab_size=10, max_length=16)
    with pytest.raises(ValueError, match=r"prompt_ids must be a non-empty \[batch, length\]"):
        greedy_loop(next_is_plus_one, [[0.5]], 1, vocab_size=10, max_length=16)


def test_load_model_rejects_mismatched_weights(counting_model):
    from planner.frontends import load_preset
    from runtime.inference import load_model

    name, _, merged = counting_model
    other = "llama-tiny" if name == "gpt3-tiny" else "gpt3-tiny"
    with pytest.raises(ValueError, match="do not fit model"):
        load_model(merged, load_preset(other))
    with pytest.raises(ValueError, match="has shape"):
        load_model(merged, load_preset(name).replace(intermediate_size=128))
