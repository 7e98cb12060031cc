"""Merge a distributed checkpoint into single-card weights (Paddle format or safetensors).

Follows the PaddleNLP auto-parallel guide's inference section: the sharded
model parameters are merged with `dist.load_merged_state_dict` in one process
(optimizer state is not read), then written as one file or `split_num` shards
with an index (`model.safetensors.index.json` / `model_state.pdparams.index.json`,
`{"metadata": {"total_size": bytes}, "weight_map": {name: file}}`).

Output file names follow PaddleNLP / Hugging Face conventions:

- one file:  model.safetensors | model_state.pdparams
- shards:    model-00001-of-00003.safetensors | model_state-00001-of-00003.pdparams, plus the index

The model the checkpoint was trained with (`extra["model_spec"]`, a ModelSpec dict, or
else the `model` section of the run's plan.json beside the checkpoints) is written next
to the weights as model_spec.json, so inference can rebuild the model without being
told which one it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.checkpoint import META_FILE, latest_checkpoint

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PADDLE_WEIGHTS_NAME = "model_state.pdparams"
PADDLE_WEIGHTS_INDEX_NAME = "model_state.pdparams.index.json"
MODEL_SPEC_NAME = "model_spec.json"


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeOptions:
    """split_num: output files (>= 1); offload: merge into host memory; as_safetensors: else Paddle format."""

    split_num: int = 1
    offload: bool = False
    as_safetensors: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.split_num, bool) or not isinstance(self.split_num, int) or self.split_num < 1:
            raise ValueError(f"split_num must be a positive integer, got {self.split_num!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MergeResult:
    """What merge_checkpoint wrote: weight files, the index (None for one file), sizes."""

    output_path: Path
    files: tuple[Path, ...]
    index_file: Path | None
    num_tensors: int
    total_bytes: int
    model_spec_file: Path | None


def resolve_model_checkpoint(input_path: str | os.PathLike) -> tuple[Path, dict | None]:
    """(directory of the sharded model parameters, checkpoint.json contents or None).

    Accepts a training output directory (its newest complete checkpoint is used), one
    checkpoint-<step> directory (its model/ part), or a bare dist.save_state_dict directory.
    """
    path = Path(input_path)
    if not path.is_dir():
        raise ValueError(f"input_path {str(path)!r} is not a directory (expected a training output directory, "
                         "a checkpoint-<step> directory or a dist.save_state_dict directory)")
    if (path / META_FILE).is_file():
        return path / "model", json.loads((path / META_FILE).read_text())
    if any(path.glob("*.metadata")):
        return path, None
    newest = latest_checkpoint(path)
    if newest is None:
        raise ValueError(f"input_path {str(path)!r} holds no complete checkpoint (no checkpoint-<step>/{META_FILE}) "
                         "and no *.metadata of a dist.save_state_dict directory")
    return newest / "model", json.loads((newest / META_FILE).read_text())


def _shards(names: list[str], split_num: int) -> list[list[str]]:
    # Contiguous, by count, as PaddleNLP's convert_to_safetensors: neighbouring layers stay together.
    base, extra = divmod(len(names), split_num)
    out, start = [], 0
    for i in range(split_num):
        size = base + (1 if i < extra else 0)
        out.append(names[start:start + size])
        start += size
    return out


def write_weights(state_dict: dict, output_path: str | os.PathLike, options: MergeOptions) -> MergeResult:
    """Write {name: paddle.Tensor} as one file or options.split_num shards plus an index."""
    import paddle

    if options.split_num > len(state_dict):
        raise ValueError(f"split_num={options.split_num} exceeds the number of tensors ({len(state_dict)})")
    out = Path(output_path)
    out.mkdir(parents=True, exist_ok=True)
    names = list(state_dict)
    arrays = {name: np.ascontiguousarray(state_dict[name].numpy()) for name in names}
    total_bytes = sum(a.nbytes for a in arrays.values())
    if options.as_safetensors:
        from safetensors.numpy import save_file

        single, index_name, pattern = SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "model-{:05d}-of-{:05d}.safetensors"
    else:
        single, index_name = PADDLE_WEIGHTS_NAME, PADDLE_WEIGHTS_INDEX_NAME
        pattern = "model_state-{:05d}-of-{:05d}.pdparams"
    files, weight_map = [], {}
    for i, keys in enumerate(_shards(names, options.split_num)):
        file = out / (single if options.split_num == 1 else pattern.format(i + 1, options.split_num))
        if options.as_safetensors:
            save_file({k: arrays[k] for k in keys}, str(file), metadata={"format": "np"})
        else:
            paddle.save({k: paddle.to_tensor(arrays[k]) for k in keys}, str(file))
        files.append(file)
        weight_map.update({k: file.name for k in keys})
    index_file = None
    if options.split_num > 1:
        index_file = out / index_name
        index_file.write_text(json.dumps({"metadata": {"total_size": total_bytes}, "weight_map": weight_map}, indent=2))
    return MergeResult(output_path=out, files=tuple(files), index_file=index_file, num_tensors=len(names),
                       total_bytes=total_bytes, model_spec_file=None)


def merge_checkpoint(input_path: str | os.PathLike, output_path: str | os.PathLike,
                     options: MergeOptions = MergeOptions()) -> MergeResult:
    """Merge the model parameters of a distributed checkpoint and write them (see module docstring)."""
    import paddle.distributed as dist

    model_dir, meta = resolve_model_checkpoint(input_path)
    state_dict = dist.load_merged_state_dict(str(model_dir), offload=options.offload)
    if not state_dict:
        raise ValueError(f"input_path {str(input_path)!r}: the checkpoint holds no tensors")
    result = write_weights(state_dict, output_path, options)
    spec = _model_spec_dict(model_dir, meta)
    return result if spec is None else write_model_spec(result, spec)


def write_model_spec(result: MergeResult, spec: dict) -> MergeResult:
    """Write `spec` (a ModelSpec dict) as model_spec.json beside the weights of `result`; returns `result` with it."""
    spec_file = result.output_path / MODEL_SPEC_NAME
    spec_file.write_text(json.dumps(spec, indent=2))
    return dataclasses.replace(result, model_spec_file=spec_file)


def _model_spec_dict(model_dir: Path, meta: dict | None) -> dict | None:
    """The ModelSpec (as a dict) a checkpoint was trained with: extra["model_spec"], else the
    run's plan.json (which records the model) next to the checkpoint directories; None if neither."""
    if meta is None:
        return None
    if "model_spec" in meta.get("extra", {}):
        return meta["extra"]["model_spec"]
    from planner.plan import Plan
    from runtime.train import PLAN_FILE

    plan_file = model_dir.parent.parent / PLAN_FILE
    if not plan_file.is_file():
        return None
    return Plan.from_dict(json.loads(plan_file.read_text())).model_config


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Weights written by write_weights: a directory (index or single file), an index file, or one file."""
    path = Path(path)
    if path.is_dir():
        for name in (SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, PADDLE_WEIGHTS_INDEX_NAME, PADDLE_WEIGHTS_NAME):
            if (path / name).is_file():
                return read_weights(path / name)
        raise ValueError(f"{str(path)!r} contains none of {SAFE_WEIGHTS_INDEX_NAME}, {SAFE_WEIGHTS_NAME}, "
                         f"{PADDLE_WEIGHTS_INDEX_NAME}, {PADDLE_WEIGHTS_NAME}")
    if not path.is_file():
        raise ValueError(f"weights path {str(path)!r} does not exist")
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        out = {}
        for file in sorted(set(weight_map.values())):
            out.update(read_weights(path.parent / file))
        if set(out) != set(weight_map):
            raise ValueError(f"{str(path)!r}: shard files hold {len(out)} tensors, the index lists {len(weight_map)}")
        return out
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    if path.suffix == ".pdparams":
        import paddle

        return {k: v.numpy() for k, v in paddle.load(str(path)).items()}
    raise ValueError(f"weights file {str(path)!r}: unknown format (valid: .safetensors, .pdparams, .index.json)")


__all__ = ["MergeOptions", "MergeResult", "merge_checkpoint", "write_weights", "write_model_spec", "read_weights",
           "resolve_model_checkpoint", "SAFE_WEIGHTS_NAME", "SAFE_WEIGHTS_INDEX_NAME", "PADDLE_WEIGHTS_NAME",
           "PADDLE_WEIGHTS_INDEX_NAME", "MODEL_SPEC_NAME"]
