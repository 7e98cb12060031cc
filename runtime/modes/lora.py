"""LoRA fine-tuning: SFT data and loss, frozen base weights, trainable low-rank adapters (runtime.lora).

mode_args: those of SFT (tokenizer, packing, bad_lines, base_weights) plus lora_rank (8),
lora_alpha (8: the update is scaled by alpha / rank) and target_modules (regexes of the linear
layers to adapt; default runtime.lora.DEFAULT_TARGET_MODULES). The plan is made with the same
rank (planner.api.make_plan(..., mode="lora", lora_rank=...)).

After the last step rank 0 writes only the adapters to <output_dir>/lora/ (runtime.lora.save_adapters:
model.safetensors with `<layer>.lora_A` [in, r] and `<layer>.lora_B` [r, out], and lora_config.json);
tools/merge_lora.py folds them into the base weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.lora import DEFAULT_TARGET_MODULES, LoRAConfig, apply_lora, is_adapter, save_adapters
from runtime.modes import TrainMode
from runtime.modes._finetune import check_data_file, load_base_weights
from runtime.modes.pretrain import causal_lm_loss
from runtime.modes.sft import SFTArgs, sft_dataset

log = logging.getLogger(__name__)
ADAPTER_DIR = "lora"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRAArgs(SFTArgs):
    """mode_args of LoRA."""

    lora_rank: int = 8
    lora_alpha: float = 8.0
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES

    def __post_init__(self) -> None:
        SFTArgs.__post_init__(self)
        if isinstance(self.target_modules, list):  # JSON gives a list; keep the frozen value immutable
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        try:
            self.config
        except ValueError as err:
            raise ValueError(f"mode_args: {err}") from None

    @property
    def config(self) -> LoRAConfig:
        return LoRAConfig(rank=self.lora_rank, alpha=self.lora_alpha, target_modules=self.target_modules)


def _check_args(args) -> None:
    LoRAArgs.from_args(args)
    check_data_file(args)


def _dataset(args, spec, num_samples: int, seq_length: int):
    return sft_dataset(args, spec, num_samples, seq_length, LoRAArgs.from_args(args))


def _prepare(model, args):
    settings = LoRAArgs.from_args(args)
    model = load_base_weights(model, args, settings)
    adapted = apply_lora(model, settings.config)
    trainable = sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)
    total = sum(int(p.numel()) for p in model.parameters())
    log.info("LoRA rank %d on %d layers: %d of %d parameters trainable (%.2f%%)", settings.lora_rank, len(adapted),
             trainable, total, 100.0 * trainable / total)
    return model


def _plan_options(args) -> dict:
    return {"lora_rank": LoRAArgs.from_args(args).lora_rank}


def _save_adapters(trainer) -> None:
    """Gather the adapters (collective) and let rank 0 write them with their config (module docstring)."""
    import paddle
    import paddle.distributed as dist

    values = {}
    for name, param in trainer.trained_parameters().items():
        if not is_adapter(name):
            continue
        if param.is_dist():
            param = dist.reshard(param, param.process_mesh, [dist.Replicate()] * len(param.placements))._local_value()
        values[name] = paddle.to_tensor(param.numpy())
    if trainer.launch.rank != 0:
        return
    settings = LoRAArgs.from_args(trainer.args)
    out = save_adapters(values, Path(trainer.args.output_dir) / ADAPTER_DIR, config=settings.config,
                        base_weights=str(Path(settings.base_weights).resolve()) if settings.base_weights else "",
                        seed=trainer.args.seed, model_spec=trainer.spec.to_dict())
    log.info("LoRA adapters (%d tensors) written to %s", len(values), out)


MODE = TrainMode(name="lora", build_dataset=_dataset, loss=causal_lm_loss, check_args=_check_args,
                 prepare_model=_prepare, plan_options=_plan_options, finish=_save_adapters)
