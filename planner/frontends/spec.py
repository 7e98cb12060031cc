"""ModelSpec: the architecture numbers every later stage of the planner reads.

A ModelSpec is what a frontend produces (a preset, a Hugging Face /
PaddleFormers config.json, or a traced paddle.nn.Layer) and what the tracer
turns into an op graph. It holds architecture only; the workload (sequence
length, batch) is chosen per plan, with the spec's defaults as fallbacks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAMILIES = ("llama", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "mixtral", "deepseek_v3", "gpt")
ATTENTION_KINDS = ("gqa", "mla")
ACTIVATIONS = ("swiglu", "gelu")
NORMS = ("rmsnorm", "layernorm")


def _require_positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _require_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): low-rank q and kv projections."""

    q_lora_rank: int  # 0 means q is projected directly from the hidden state
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        _require_positive("MLASpec", kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
                          qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim)
        if self.q_lora_rank < 0:
            raise ValueError(f"MLASpec: q_lora_rank must be >= 0 (0 = no q compression), got {self.q_lora_rank}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MoESpec:
    """Mixture of experts: routed experts (top-k of num_experts) plus optional shared experts."""

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0  # per shared expert
    shared_expert_gate: bool = False  # Qwen2-MoE gates the shared expert with a sigmoid(h -> 1)
    first_k_dense: int = 0  # the first k decoder layers keep a dense MLP (DeepSeek-V3: 3)
    layer_freq: int = 1  # every layer_freq-th layer after first_k_dense is MoE

    def __post_init__(self) -> None:
        _require_positive("MoESpec", num_experts=self.num_experts, top_k=self.top_k,
                          expert_intermediate_size=self.expert_intermediate_size, layer_freq=self.layer_freq)
        if self.top_k > self.num_experts:
            raise ValueError(f"MoESpec: top_k={self.top_k} exceeds num_experts={self.num_experts}")
        if self.num_shared_experts < 0 or self.first_k_dense < 0:
            raise ValueError("MoESpec: num_shared_experts and first_k_dense must be >= 0, got "
                             f"{self.num_shared_experts} and {self.first_k_dense}")
        if self.num_shared_experts and self.shared_expert_intermediate_size <= 0:
            raise ValueError("MoESpec: shared experts need shared_expert_intermediate_size > 0, got "
                             f"{self.shared_expert_intermediate_size}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """Architecture of a decoder-only language model (dense or MoE)."""

    name: str
    family: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int  # dense MLP width
    vocab_size: int
    max_position_embeddings: int
    head_dim: int = 0  # 0: hidden_size // num_attention_heads
    tie_word_embeddings: bool = False
    activation: str = "swiglu"
    norm: str = "rmsnorm"
    qkv_bias: bool = False
    linear_bias: bool = False  # GPT: every linear layer and norm has a bias
    qk_norm: bool = False  # Qwen3: RMSNorm on q and k per head
    learned_position_embeddings: bool = False  # GPT
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    num_mtp_layers: int = 0  # DeepSeek-V3 multi-token prediction modules
    default_seq_len: int = 4096
    default_global_batch_tokens: int = 4 * 1024 * 1024
    source: str = ""

    def __post_init__(self) -> None:
        owner = f"model {self.name!r}"
        if not self.name:
            raise ValueError("ModelSpec: name must not be empty")
        _require_choice(owner, "family", self.family, FAMILIES)
        _require_choice(owner, "activation", self.activation, ACTIVATIONS)
        _require_choice(owner, "norm", self.norm, NORMS)
        _require_positive(owner, num_layers=self.num_layers, hidden_size=self.hidden_size,
                          num_attention_heads=self.num_attention_heads, num_kv_heads=self.num_kv_heads,
                          intermediate_size=self.intermediate_size, vocab_size=self.vocab_size,
                          max_position_embeddings=self.max_position_embeddings,
                          default_seq_len=self.default_seq_len,
                          default_global_batch_tokens=self.default_global_batch_tokens)
        if self.head_dim == 0:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"{owner}: hidden_size={self.hidden_size} is not divisible by "
                                 f"num_attention_heads={self.num_attention_heads}; give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        _require_positive(owner, head_dim=self.head_dim)
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(f"{owner}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.num_mtp_layers < 0:
            raise ValueError(f"{owner}: num_mtp_layers must be >= 0, got {self.num_mtp_layers}")
        if self.moe is not None and self.moe.first_k_dense > self.num_layers:
            raise ValueError(f"{owner}: moe.first_k_dense={self.moe.first_k_dense} exceeds num_layers={self.num_layers}")

    @property
    def attention(self) -> str:
        return "mla" if self.mla is not None else "gqa"

    def is_moe_layer(self, index: int) -> bool:
        """Whether decoder layer `index` (0-based) has a routed-expert MLP."""
        if self.moe is None or index < self.moe.first_k_dense:
            return False
        return (index - self.moe.first_k_dense) % self.moe.layer_freq == 0

    def layer_kinds(self) -> tuple[str, ...]:
        """Block kind of each decoder layer, in order: 'dense' or 'moe'."""
        return tuple("moe" if self.is_moe_layer(i) else "dense" for i in range(self.num_layers))

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelSpec: unknown fields {unknown}; known fields are {sorted(known)}")
        values = dict(data)
        if values.get("mla") is not None:
            values["mla"] = MLASpec(**values["mla"])
        if values.get("moe") is not None:
            values["moe"] = MoESpec(**values["moe"])
        return cls(**values)


__all__ = ["ModelSpec", "MoESpec", "MLASpec", "FAMILIES"]
