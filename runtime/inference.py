"""Greedy generation from merged weights, in dynamic graph and with Paddle Inference.

Two paths that must agree token for token:

- dynamic: the Paddle model (runtime.models.build_model) with merged weights loaded,
  run eagerly under no_grad;
- static: the same model exported with paddle.jit.to_static / paddle.jit.save as a
  graph `input_ids [batch, seq] int64 -> logits [batch, seq, vocab]` with dynamic batch
  and sequence sizes, run by paddle.inference (Config / create_predictor).

Both feed one greedy loop (`greedy_loop`): each step runs the full prefix (no KV cache;
these are tools for checking trained models, not a serving stack) and appends the
argmax of the last position's logits.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from runtime.merge import MODEL_SPEC_NAME, read_weights

if TYPE_CHECKING:
    import paddle

    from planner.frontends.spec import ModelSpec

STATIC_PREFIX = "model"  # paddle.jit.save writes model.json (PIR) or model.pdmodel, and model.pdiparams


def _prompt_array(prompt_ids) -> np.ndarray:
    ids = np.asarray(prompt_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt_ids must be a non-empty [batch, length] array of token ids, got shape "
                         f"{ids.shape} dtype {ids.dtype}")
    return ids.astype("int64")


def greedy_loop(logits_fn: Callable[[np.ndarray], np.ndarray], prompt_ids, max_new_tokens: int, *,
                vocab_size: int, max_length: int, eos_token_id: int | None = None) -> np.ndarray:
    """Greedy decoding around `logits_fn` (ids [b, t] int64 -> logits [b, t, vocab]).

    Returns [b, prompt + generated] token ids; stops early once every row has produced
    eos_token_id (rows that finished earlier are padded with it). max_length: the model's
    position limit (prompt + new tokens must fit).
    """
    ids = _prompt_array(prompt_ids)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"prompt token ids must lie in [0, {vocab_size}), got min {ids.min()} max {ids.max()}")
    if ids.shape[1] + max_new_tokens > max_length:
        raise ValueError(f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds the model's "
                         f"max_position_embeddings={max_length}")
    done = np.zeros(ids.shape[0], dtype=bool)
    for _ in range(max_new_tokens):
        next_ids = np.argmax(logits_fn(ids)[:, -1, :], axis=-1).astype("int64")
        if eos_token_id is not None:
            next_ids = np.where(done, eos_token_id, next_ids)
            done |= next_ids == eos_token_id
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        if eos_token_id is not None and done.all():
            break
    return ids


def read_model_spec(weights_path: str | os.PathLike) -> "ModelSpec":
    """The ModelSpec that merge_checkpoint stored next to the weights (model_spec.json)."""
    from planner.frontends.spec import ModelSpec

    path = Path(weights_path)
    if not path.exists():
        raise ValueError(f"weights path {str(path)!r} does not exist")
    spec_file = (path if path.is_dir() else path.parent) / MODEL_SPEC_NAME
    if not spec_file.is_file():
        raise ValueError(f"no {MODEL_SPEC_NAME} next to {str(path)!r}; name the model (preset or config.json)")
    return ModelSpec.from_dict(json.loads(spec_file.read_text()))


def load_model(weights_path: str | os.PathLike, spec: "ModelSpec | None" = None) -> "paddle.nn.Layer":
    """A single-card model of `spec` (default: the one stored with the weights) with merged weights, in eval mode."""
    from runtime.models import build_model

    spec = spec if spec is not None else read_model_spec(weights_path)
    model = build_model(spec, seed=0)
    load_weights(model, weights_path, model_name=spec.name)
    model.eval()
    return model


def load_weights(model: "paddle.nn.Layer", weights_path: str | os.PathLike, *, model_name: str) -> None:
    """Load weights written by runtime.merge into `model`; every tensor name and shape must match."""
    import paddle

    weights = read_weights(weights_path)
    expected = set(model.state_dict())
    if set(weights) != expected:
        raise ValueError(f"weights at {str(weights_path)!r} do not fit model {model_name!r}: missing "
                         f"{sorted(expected - set(weights))[:5]}, unexpected {sorted(set(weights) - expected)[:5]}")
    for name, value in model.state_dict().items():
        if tuple(value.shape) != weights[name].shape:
            raise ValueError(f"weights at {str(weights_path)!r}: {name} has shape {weights[name].shape}, "
                             f"model {model_name!r} needs {tuple(value.shape)}")
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})


def _logits_of(output):
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "logits", output)


def dynamic_generate(model: "paddle.nn.Layer", prompt_ids, max_new_tokens: int, *,
                     eos_token_id: int | None = None) -> np.ndarray:
    """Greedy generation with the eager model; returns [b, prompt + generated] ids."""
    import paddle

    config = model.config

    def logits_fn(ids: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return _logits_of(model(paddle.to_tensor(ids), return_dict=False)).astype("float32").numpy()

    return greedy_loop(logits_fn, prompt_ids, max_new_tokens, vocab_size=config.vocab_size,
                       max_length=config.max_position_embeddings, eos_token_id=eos_token_id)


def export_static(model: "paddle.nn.Layer", output_dir: str | os.PathLike) -> Path:
    """Export `model` as an inference graph input_ids -> logits; returns the directory.

    Also writes limits.json (vocab size, max positions) so the static path can check inputs.
    """
    import paddle

    class LogitsOnly(paddle.nn.Layer):
        """The exported graph's signature: token ids in, logits out (no loss, no cache)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids):
            return _logits_of(self.inner(input_ids, return_dict=False))

    if type(model).__module__.startswith("paddleformers"):
        # dy2static recurses forever inside PaddleFormers' PretrainedConfig.__getattribute__;
        # keep it out of the transcription (the config is read-only at trace time).
        import paddleformers.transformers.configuration_utils as configuration_utils

        paddle.jit.ignore_module([configuration_utils])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    spec = [paddle.static.InputSpec([None, None], "int64", "input_ids")]
    static = paddle.jit.to_static(LogitsOnly(model), input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(out / STATIC_PREFIX))
    limits = {"vocab_size": model.config.vocab_size, "max_position_embeddings": model.config.max_position_embeddings}
    (out / "limits.json").write_text(json.dumps(limits))
    return out


class StaticPredictor:
    """A Paddle Inference predictor over an export_static directory: logits(ids) -> np.ndarray."""

    def __init__(self, model_dir: str | os.PathLike):
        import paddle
        from paddle import inference

        path = Path(model_dir)
        graph = next((path / f"{STATIC_PREFIX}{ext}" for ext in (".json", ".pdmodel")
                      if (path / f"{STATIC_PREFIX}{ext}").is_file()), None)
        if graph is None or not (path / "limits.json").is_file():
            raise ValueError(f"{str(path)!r} is not an export_static directory (needs {STATIC_PREFIX}.json or "
                             f"{STATIC_PREFIX}.pdmodel, {STATIC_PREFIX}.pdiparams and limits.json)")
        self.limits = json.loads((path / "limits.json").read_text())
        config = inference.Config(str(graph), str(path / f"{STATIC_PREFIX}.pdiparams"))
        if paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            config.enable_use_gpu(256, 0)  # initial GPU memory pool (MB), device 0
        else:
            config.disable_gpu()
        config.disable_glog_info()
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [b, t, vocab] (float32) for token ids [b, t]."""
        self._input.reshape(list(ids.shape))
        self._input.copy_from_cpu(np.ascontiguousarray(ids, dtype="int64"))
        self._predictor.run()
        return self._output.copy_to_cpu().astype("float32")

    def generate(self, prompt_ids, max_new_tokens: int, *, eos_token_id: int | None = None) -> np.ndarray:
        """Greedy generation with Paddle Inference; returns [b, prompt + generated] ids."""
        return greedy_loop(self.logits, prompt_ids, max_new_tokens, vocab_size=self.limits["vocab_size"],
                           max_length=self.limits["max_position_embeddings"], eos_token_id=eos_token_id)


__all__ = ["greedy_loop", "load_model", "load_weights", "read_model_spec", "dynamic_generate", "export_static",
           "StaticPredictor"]
