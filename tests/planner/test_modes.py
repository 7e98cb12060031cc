"""The planner's training modes: LoRA's frozen base weights and DPO's frozen reference model change what fits."""

import pytest

from cost_models.hardware import load_hardware
from planner.api import DoesNotFit, make_plan

WORKLOAD = dict(seq_len=4096, global_batch=8)


def test_lora_fits_a_model_that_full_fine_tuning_cannot():
    # 70B parameters on 8 x 40 GiB: full fine-tuning needs 16 bytes per parameter of weights, gradients and
    # AdamW state (~1.1 TB over 344 GB); LoRA keeps the base as 2-byte frozen weights (141 GB) plus adapters.
    with pytest.raises(DoesNotFit, match="llama3.1-70b does not fit on 8xA100-40GB"):
        make_plan("llama3.1-70b", "8xA100-40GB", mode="sft", **WORKLOAD)
    plan, report = make_plan("llama3.1-70b", "8xA100-40GB", mode="lora", lora_rank=8, **WORKLOAD)
    assert plan.mode == "lora" and report.fits
    assert report.memory_bytes_per_device["total"] <= load_hardware("A100-40GB").memory_bytes


def test_lora_rank_scales_the_trainable_state():
    layout = "dp=8,mp=1,pp=1,sharding=0,mbs=1,recompute=full"
    small = make_plan("llama-7b", "8xA100", mode="lora", lora_rank=8, layout=layout, **WORKLOAD)[1]
    large = make_plan("llama-7b", "8xA100", mode="lora", lora_rank=256, layout=layout, **WORKLOAD)[1]
    assert large.memory_bytes_per_device["total"] > small.memory_bytes_per_device["total"]


def test_dpo_costs_more_memory_and_time_than_sft_on_the_same_layout():
    # The frozen reference adds its weights to memory and its forward pass to every step.
    layout = "dp=8,mp=1,pp=1,sharding=1,mbs=1,recompute=full"
    _, sft = make_plan("llama-7b", "8xA100", mode="sft", layout=layout, **WORKLOAD)
    _, dpo = make_plan("llama-7b", "8xA100", mode="dpo", layout=layout, **WORKLOAD)
    assert dpo.memory_bytes_per_device["total"] > sft.memory_bytes_per_device["total"]
    assert dpo.step_time_s > sft.step_time_s
