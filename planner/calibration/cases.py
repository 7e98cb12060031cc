"""Published training runs (../shared/published_runs.json) as planner requests.

Each case names a model, a device, a layout and a measured throughput. This
module turns the free-text fields of the file into a ModelSpec, a cluster, a
workload and the `--layout` knobs the source states; knobs a source leaves
unstated stay free (the planner searches them, as a user scoring an
incomplete layout would). Every interpretation is written next to its rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cost_models.hardware import ClusterSpec, load_hardware
from planner.frontends.spec import ModelSpec
from planner.workload import Workload

METRICS = ("hardware_tflops", "model_tflops", "tokens_per_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishedCase:
    """One published run, ready to score."""

    case_id: str
    group: str
    spec: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    layout: str  # the `--layout` string of the knobs the source states
    metric: str  # which predicted quantity the measurement is
    measured: float  # TFLOP/s per device, or tokens/s per device
    note: str = ""

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"case {self.case_id}: metric {self.metric!r} is not one of {METRICS}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SkippedCase:
    case_id: str
    reason: str


def _device(text: str) -> tuple[str, str]:
    """(device name, note) for the free-text `gpu` field."""
    t = text.lower()
    if "kunlun" in t:
        # 7B with stage-1 sharding and no recompute on 8 cards needs > 32 GB per card: not R300 (32 GB)
        return "Kunlun-P800", "Kunlun card type not stated; P800 (96 GB) assumed: the layout cannot fit R300's 32 GB"
    if "h200" in t:
        return "H200", ""
    if "96gb" in t or "95/96" in t or "hbm2e" in t:
        return "H100-96GB", "Grand Teton H100 96GB HBM2e at 500 W"
    if "h gpu" in t:
        return "H800", "'H GPU' of a Baidu CI: H800 assumed (same compute and memory as H100)"
    if "h100" in t:
        return "H100-SXM", ""
    if "a100" in t or t.startswith("gpu"):
        return "A100-80GB", "" if "a100" in t else "device not stated: A100-80GB assumed"
    raise ValueError(f"no device for {text!r}")


def _model(case: dict) -> ModelSpec:
    m, arch = case["model"], (case["model"].get("arch") or case["model"].get("name") or "").lower()
    seq = int(str(m["seq_len"]).split()[0])
    common = dict(name=case["id"], num_layers=m["layers"], hidden_size=m["hidden"],
                  num_attention_heads=m["heads"], num_kv_heads=m.get("kv_heads") or m["heads"],
                  vocab_size=m["vocab"], max_position_embeddings=seq, default_seq_len=seq,
                  source=case["source"]["primary"])
    if "gpt" in arch:
        # Megatron GPT: 4h GeLU MLP, biases, learned positions; MCore r0.8 sizes (1.7B, 7.1B, ...) only add up
        # with untied embeddings, the 2021 paper's with tied ones
        tied = case["group"].startswith("Megatron-LM PTD-P")
        return ModelSpec(family="gpt", intermediate_size=m.get("ffn_hidden") or 4 * m["hidden"], activation="gelu",
                         norm="layernorm", qkv_bias=True, linear_bias=True, learned_position_embeddings=True,
                         tie_word_embeddings=tied, **common)
    return ModelSpec(family="llama", intermediate_size=m["ffn_hidden"], **common)


def _recompute(text) -> str | None:
    """A fixed recompute mode, or None where the source's setting has no single-mode equivalent."""
    if text is False:
        return "none"
    t = str(text or "").lower()
    if "selective layer" in t or "not stated" in t or not t:
        return None  # layer-wise AC mixes full and none per layer: our per-layer choice searches it
    if t.startswith("no ") or t == "none":
        return "none"
    if "selective" in t:
        return "selective"
    if "full" in t:
        return "full"
    return None


def _measurement(case: dict) -> tuple[str, float] | None:
    t = case.get("throughput") or {}
    if "tflops_per_gpu" in t:
        definition = str(t.get("flops_definition", "")).lower()
        return ("hardware_tflops" if "recompute" in definition else "model_tflops"), float(t["tflops_per_gpu"])
    for key in ("tokens_per_sec_per_gpu", "tokens_per_sec_per_gpu_vanilla_tp"):
        if key in t:
            return "tokens_per_s", float(t[key])
    return None


def _dtype(case: dict) -> str:
    p = str(case.get("precision") or "").lower()
    if "float8" in p or "fp8" in p:
        return "fp8"
    return "fp16" if "fp16" in p else "bf16"


def load_cases(path: str | Path) -> tuple[list[PublishedCase], list[SkippedCase]]:
    """Cases with a measured throughput and a layout, and the others with the reason they are left out."""
    data = json.loads(Path(path).read_text())
    cases, skipped = [], []
    for raw in data["cases"]:
        try:
            case = _case(raw)
        except _Skip as why:
            skipped.append(SkippedCase(case_id=raw["id"], reason=str(why)))
            continue
        cases.append(case)
    return cases, skipped


def load_layout_cases(path: str | Path) -> tuple[list[PublishedCase], list[SkippedCase]]:
    """Every case that names its degrees (with or without a throughput): for the memory-fit check."""
    data = json.loads(Path(path).read_text())
    cases, skipped = [], []
    for raw in data["cases"]:
        try:
            cases.append(_case(raw, need_measurement=False))
        except _Skip as why:
            skipped.append(SkippedCase(case_id=raw["id"], reason=str(why)))
    return cases, skipped


class _Skip(Exception):
    pass


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _case(raw: dict, *, need_measurement: bool = True) -> PublishedCase:
    p, hw_text = raw["parallel"], raw["hardware"].get("gpu", "")
    measurement = _measurement(raw)
    if need_measurement and measurement is None:
        raise _Skip("no measured throughput")
    if "versions" in p or "cannot fit" in raw.get("verification", ""):
        raise _Skip("launch templates, not a run: the source notes the full model cannot fit these devices")
    if "offload" in str(p.get("recompute", "")) or p.get("optimizer_offload"):
        raise _Skip("uses CPU offload of activations and optimizer state, which the planner does not model")
    if "rowwise" in str(raw.get("precision", "")).lower():
        raise _Skip("FP8 with rowwise scaling: out of scope; the planner's FP8 path models tensorwise scaling "
                    "(the source measured rowwise slower than BF16 for 8B, a kernel-maturity effect)")
    if not raw["model"].get("layers"):
        raise _Skip("model dimensions not given")
    devices = _int(raw["hardware"].get("num_gpus")) or _int(raw["hardware"].get("num_gpus_implied"))
    if devices is None and "tipc" in raw["id"]:
        devices = 8  # the TIPC config is a single-node one
    if devices is None:
        raise _Skip("device count not given for a layout")
    device, note = _device(hw_text)
    mp, pp = _int(p.get("tp")) or 1, _int(p.get("pp")) or 1
    cp = _int(p.get("cp")) or 1
    fsdp = _int(p.get("fsdp"))
    knobs = {"mp": mp, "pp": pp, "cp": cp}
    if fsdp is not None:  # torchtitan FSDP2: ZeRO-3 over the fsdp x cp ranks, sequence parallel with TP
        knobs.update(dp=fsdp, sharding=3 if fsdp * cp > 1 else 0, sp=int(mp > 1))
    else:
        knobs["dp"] = devices // (mp * pp * cp)
        stage = _int(p.get("sharding_stage")) if _int(p.get("sharding_stage")) is not None else _int(p.get("zero_stage"))
        if stage is not None:
            knobs["sharding"] = stage if knobs["dp"] > 1 else 0
        if isinstance(p.get("sequence_parallel"), bool):
            knobs["sp"] = int(p["sequence_parallel"] and mp > 1)
    if isinstance(p.get("virtual_pp"), int):
        knobs["vpp"] = p["virtual_pp"]
    elif p.get("pp_schedule") == "1F1B":
        knobs["vpp"] = 1
    elif "interleaved" in str(p.get("pp_schedule", "")).lower():
        # the chunk count is not stated; the source's own 1F1B/interleaved ratio (1.28 at m = pp = 8) is what
        # the bubble of two chunks per rank gives: (1 + 7/8) / (1 + 7/16)
        knobs["vpp"] = 2
    local = _int(p.get("local_batch"))
    mbs = _int(p.get("micro_batch"))
    if local is not None:
        # torchtitan: the local batch is split into pp micro-batches under pipelining
        mbs = local // pp if pp > 1 else local
    if mbs:
        knobs["mbs"] = mbs
    recompute = _recompute(p.get("recompute"))
    if recompute:
        knobs["recompute"] = recompute
    batch = (_int(p.get("global_batch_seqs")) or _int(p.get("global_batch_seqs_derived"))
             or (knobs["dp"] * local if local else None))
    if batch is None:
        grad_accum = _int(p.get("grad_accum")) or 1
        batch = knobs["dp"] * (mbs or 1) * grad_accum
    spec = _model(raw)
    # Megatron-LM 2021 predates FlashAttention (2022): its attention scores go through HBM
    flash = not raw["group"].startswith("Megatron-LM PTD-P")
    # torchtitan's table rows without torch.compile ran eager: unfused norms, activations and rope
    eager = raw["group"].startswith("torchtitan benchmarks") and "compile" not in raw["id"]
    # Megatron-Core's benchmarks overlap TP communication with GEMMs (TE userbuffers), PaddleNLP all-reduces
    # asynchronously (enable_mp_async_allreduce); torchtitan's rows we score are vanilla TP, Megatron 2021 too
    overlap = raw["group"].startswith(("Megatron-LM README", "PaddleNLP"))
    workload = Workload(seq_len=spec.default_seq_len, global_batch=batch, dtype=_dtype(raw), flash_attention=flash,
                        fused_kernels=not eager, tp_comm_overlap=overlap)
    layout = ",".join(f"{k}={v}" for k, v in knobs.items())
    metric, measured = measurement or ("tokens_per_s", 0.0)
    return PublishedCase(case_id=raw["id"], group=raw["group"], spec=spec,
                         cluster=ClusterSpec(hardware=load_hardware(device), num_devices=devices),
                         workload=workload, layout=layout, metric=metric, measured=measured, note=note)
