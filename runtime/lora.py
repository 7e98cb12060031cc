"""LoRA (Hu et al., 2021): trainable low-rank updates on frozen linear layers, and merging them back.

A wrapped `paddle.nn.Linear` with Paddle's [in, out] weight W computes

    y = x W + b + (alpha / r) * (x A) B,    A: [in, r] (Kaiming-uniform), B: [r, out] (zeros)

so training starts from the base model exactly; W and b are frozen and only A and B train.
Merging writes W + (alpha / r) * A @ B. The math, the initialisation and the parameter names
(`<layer>.lora_A`, `<layer>.lora_B`) are those of PaddleFormers' peft LoRALinear.

Saved adapters (save_adapters, read by merge_lora) are a directory with model.safetensors (the
adapters only) and lora_config.json: rank, alpha, target_modules, the base the run started from
(base_weights, a weights path, or "" for the seeded initial model of `seed`) and model_spec.

Why not paddleformers.peft itself: LoRAModel/LoRAAutoModel wrap the model (every layer name the
plan's patterns select gains a prefix), LoRAAutoModel reads the base model's config from a model
directory or hub name (AutoConfig.from_pretrained), the fleet variants need mpu layers, and the
runtime's GPT is not a PaddleFormers model. Here a wrapped layer keeps its name, its weight and
its bias, so a plan's ColWiseParallel/RowWiseParallel still applies to the base weight; the
adapters stay replicated over mp (they hold r / hidden of the layer's parameters and FLOPs).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paddle  # runtime-only module: LoRA layers are Paddle layers

# Every attention and dense-MLP projection (shared experts included, routed experts not: the planner's
# LoRA memory model trains no expert weights). Matched against full sublayer names, as Paddle matches
# plan patterns.
DEFAULT_TARGET_MODULES = (r".*\.self_attn\.[a-z_]*proj[a-z_]*", r".*\.mlp\.(shared_experts\.)?[a-z_]*proj")
ADAPTER_SUFFIXES = ("lora_A", "lora_B")
LORA_CONFIG_FILE = "lora_config.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRAConfig:
    """rank r of the update, alpha (the update is scaled by alpha / r) and regexes of the layers to adapt."""

    rank: int = 8
    alpha: float = 8.0  # PaddleFormers' default lora_alpha: scaling 1 at rank 8
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora: rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ValueError(f"lora: alpha must be a number > 0, got {self.alpha!r}")
        if (not isinstance(self.target_modules, tuple) or not self.target_modules
                or not all(isinstance(p, str) and p for p in self.target_modules)):
            raise ValueError(f"lora: target_modules must be a non-empty list of regexes, got {self.target_modules!r}")
        for pattern in self.target_modules:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"lora: target_modules entry {pattern!r} is not a regex ({err})") from None

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, data: dict) -> "LoRAConfig":
        return cls(rank=data["rank"], alpha=data["alpha"], target_modules=tuple(data["target_modules"]))


class LoRALinear(paddle.nn.Linear):
    """nn.Linear plus a low-rank update; made by apply_lora from an existing nn.Linear (see module docstring)."""

    def forward(self, x):
        base = paddle.nn.functional.linear(x, self.weight, self.bias)
        return base + paddle.matmul(paddle.matmul(x, self.lora_A), self.lora_B) * self.lora_scaling


def apply_lora(model: paddle.nn.Layer, config: LoRAConfig) -> list[str]:
    """Freeze every parameter of `model` and add trainable adapters to the nn.Linear layers whose full name
    matches a target regex; returns the adapted layer names. Raises ValueError for a target that matches none."""
    linears = [(name, layer) for name, layer in model.named_sublayers() if type(layer) is paddle.nn.Linear]
    matched = {pattern: [name for name, _ in linears if re.fullmatch(pattern, name)]
               for pattern in config.target_modules}
    unmatched = [pattern for pattern, names in matched.items() if not names]
    if unmatched:
        raise ValueError(f"lora: target_modules {unmatched} match no linear layer of {type(model).__name__} "
                         f"(linear layers look like {[name for name, _ in linears[:8]]})")
    for param in model.parameters():
        param.stop_gradient = True
    adapted = [(name, layer) for name, layer in linears if any(re.fullmatch(p, name) for p in config.target_modules)]
    for _, layer in adapted:
        fan_in, fan_out = layer.weight.shape
        # The instance keeps its weight/bias objects (and names); only its forward changes.
        layer.__class__ = LoRALinear
        layer.lora_scaling = config.scaling
        layer.lora_A = layer.create_parameter(
            [fan_in, config.rank], dtype=layer.weight.dtype,
            default_initializer=paddle.nn.initializer.KaimingUniform(negative_slope=math.sqrt(5),
                                                                     nonlinearity="leaky_relu"))
        layer.lora_B = layer.create_parameter([config.rank, fan_out], dtype=layer.weight.dtype,
                                              default_initializer=paddle.nn.initializer.Constant(0.0))
    return [name for name, _ in adapted]


def is_adapter(name: str) -> bool:
    """Whether a structured parameter name (model.layers.0.self_attn.q_proj.lora_A) is a LoRA adapter."""
    return name.rsplit(".", 1)[-1] in ADAPTER_SUFFIXES


def merge_adapters(base: dict[str, np.ndarray], adapters: dict[str, np.ndarray],
                   config: LoRAConfig) -> dict[str, np.ndarray]:
    """Base weights with every adapted weight replaced by W + (alpha / r) * A @ B ([in, out] layout).

    Raises ValueError when an adapter pair is incomplete, names a weight the base lacks, or has shapes
    that do not fit it.
    """
    layers = sorted({name.rsplit(".", 1)[0] for name in adapters})
    merged = dict(base)
    for layer in layers:
        a_name, b_name, w_name = f"{layer}.lora_A", f"{layer}.lora_B", f"{layer}.weight"
        if a_name not in adapters or b_name not in adapters:
            raise ValueError(f"lora merge: adapter {layer} lacks {a_name if a_name not in adapters else b_name}")
        if w_name not in base:
            raise ValueError(f"lora merge: the base weights have no {w_name} for adapter {layer}")
        a, b, w = adapters[a_name], adapters[b_name], base[w_name]
        if a.shape != (w.shape[0], config.rank) or b.shape != (config.rank, w.shape[1]):
            raise ValueError(f"lora merge: {layer}: A {a.shape} @ B {b.shape} does not fit weight {w.shape} "
                             f"at rank {config.rank}")
        delta = (a.astype(np.float64) @ b.astype(np.float64)) * config.scaling
        merged[w_name] = (w.astype(np.float64) + delta).astype(w.dtype)
    return merged


def save_adapters(adapters: dict, directory, *, config: LoRAConfig, base_weights: str, seed: int,
                  model_spec: dict) -> Path:
    """Write {name: paddle.Tensor} adapters and their lora_config.json (module docstring); returns the directory."""
    from runtime.merge import MergeOptions, write_weights

    out = write_weights(adapters, directory, MergeOptions(as_safetensors=True)).output_path
    (out / LORA_CONFIG_FILE).write_text(json.dumps({**config.to_dict(), "base_weights": base_weights, "seed": seed,
                                                    "model_spec": model_spec}, indent=1) + "\n")
    return out


def merge_lora(adapter_dir, output_path, *, base_weights: str = "", options=None):
    """Fold the adapters saved in `adapter_dir` into their base weights and write the merged model like
    runtime.merge (safetensors by default) with its model_spec.json; returns the MergeResult.

    The base is `base_weights` if given, else the one recorded with the adapters: a weights path, or the
    seeded initial model the run started from (rebuilt with runtime.models.build_model).
    """
    from planner.frontends.spec import ModelSpec
    from runtime.merge import MergeOptions, read_weights, write_model_spec, write_weights
    from runtime.models import build_model

    config_file = Path(adapter_dir) / LORA_CONFIG_FILE
    try:
        meta = json.loads(config_file.read_text())
        config, spec = LoRAConfig.from_dict(meta), ModelSpec.from_dict(meta["model_spec"])
        base_path, seed = base_weights or meta["base_weights"], meta["seed"]
    except OSError as err:
        raise ValueError(f"lora merge: cannot read {config_file}: {err.strerror}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"lora merge: {config_file} is not a LoRA config ({type(err).__name__}: {err})") from None
    adapters = read_weights(adapter_dir)
    if base_path:
        base = read_weights(base_path)
    else:
        base = {name: value.numpy() for name, value in build_model(spec, seed=seed).state_dict().items()}
    merged = merge_adapters(base, adapters, config)
    options = options or MergeOptions(as_safetensors=True)
    result = write_weights({name: paddle.to_tensor(value) for name, value in merged.items()}, output_path, options)
    return write_model_spec(result, spec.to_dict())


__all__ = ["LoRAConfig", "LoRALinear", "apply_lora", "is_adapter", "merge_adapters",
           "save_adapters", "merge_lora",
           "DEFAULT_TARGET_MODULES", "ADAPTER_SUFFIXES", "LORA_CONFIG_FILE"]
