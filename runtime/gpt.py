"""A compact GPT-3 style causal language model in Paddle, built from a planner ModelSpec.

PaddleFormers 1.2.0 ships no standalone GPT, so this is one: learned position
embeddings, pre-LayerNorm blocks, biases on every linear layer and norm, a
GeLU (tanh approximation, as GPT-2/3) MLP, causal multi-head attention, and no
dropout (training here is deterministic, so single-process and parallel runs
can be compared exactly).

Layer names mirror PaddleFormers' Llama so that the planner's patterns and
`dist.parallelize` plans apply unchanged::

    model.embed_tokens                      token embedding [vocab, hidden]
    model.embed_positions                   position embedding [max_positions, hidden]
    model.layers.N.input_layernorm
    model.layers.N.self_attn.{q,k,v,o}_proj
    model.layers.N.post_attention_layernorm
    model.layers.N.mlp.{up,down}_proj
    model.norm                              final LayerNorm
    lm_head                                 only when tie_word_embeddings is False

With `tie_word_embeddings` (GPT-3's default) there is no `lm_head` layer and no
separate output parameter: the logits are `hidden @ model.embed_tokens.weight^T`.

`forward(input_ids, labels=None, return_dict=False)` follows PaddleFormers'
causal LMs: labels are already shifted by the data pipeline (position t holds
the token after t), label -100 is ignored, and the loss is the float32 mean
over the remaining tokens. It returns `(loss, logits)` with labels and
`(logits,)` without; with `return_dict=True` an object with `.loss` and `.logits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

if TYPE_CHECKING:
    from planner.frontends.spec import ModelSpec

IGNORE_INDEX = -100  # label value that contributes nothing to the loss (PaddleFormers' convention)
LAYERNORM_EPSILON = 1e-5
INITIALIZER_RANGE = 0.02  # std of the normal initialisation (GPT-2/3)


def check_gpt_spec(spec: "ModelSpec") -> None:
    """Raise ValueError unless `spec` describes a model this module can build."""
    required = {"family": ("gpt",), "norm": ("layernorm",), "activation": ("gelu",)}
    for name, choices in required.items():
        value = getattr(spec, name)
        if value not in choices:
            raise ValueError(f"GPT model {spec.name!r}: {name}={value!r} is not one of {', '.join(choices)}")
    if not spec.learned_position_embeddings:
        raise ValueError(f"GPT model {spec.name!r}: learned_position_embeddings=False is not supported "
                         "(valid: True)")
    if spec.moe is not None or spec.mla is not None:
        raise ValueError(f"GPT model {spec.name!r}: moe/mla are not supported by the GPT builder (valid: None)")
    if spec.num_kv_heads != spec.num_attention_heads:
        raise ValueError(f"GPT model {spec.name!r}: num_kv_heads={spec.num_kv_heads} must equal "
                         f"num_attention_heads={spec.num_attention_heads} (GPT uses multi-head attention)")


@dataclass
class GPTOutput:
    """What forward returns with return_dict=True; loss is None without labels."""

    logits: paddle.Tensor
    loss: paddle.Tensor | None = None


def _weight_attr(std: float) -> paddle.ParamAttr:
    return paddle.ParamAttr(initializer=nn.initializer.Normal(mean=0.0, std=std))


def _linear(in_features: int, out_features: int, bias: bool, std: float) -> nn.Linear:
    bias_attr = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0)) if bias else False
    return nn.Linear(in_features, out_features, weight_attr=_weight_attr(std), bias_attr=bias_attr)


def _layernorm(hidden: int, bias: bool) -> nn.LayerNorm:
    return nn.LayerNorm(hidden, epsilon=LAYERNORM_EPSILON, bias_attr=None if bias else False)


class GPTAttention(nn.Layer):
    """Causal multi-head self-attention; q/k/v/o are plain Linear layers so that
    ColWiseParallel (q, k, v) and RowWiseParallel (o) shard them over heads."""

    def __init__(self, spec: "ModelSpec", residual_std: float):
        super().__init__()
        self.num_heads = spec.num_attention_heads
        self.head_dim = spec.head_dim
        inner = self.num_heads * self.head_dim
        self.q_proj = _linear(spec.hidden_size, inner, spec.qkv_bias, INITIALIZER_RANGE)
        self.k_proj = _linear(spec.hidden_size, inner, spec.qkv_bias, INITIALIZER_RANGE)
        self.v_proj = _linear(spec.hidden_size, inner, spec.qkv_bias, INITIALIZER_RANGE)
        self.o_proj = _linear(inner, spec.hidden_size, spec.linear_bias, residual_std)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        # [b, s, heads*d] -> [b, heads, s, d]; 0 keeps a dimension, so this also works with
        # unknown batch and sequence sizes in a static graph.
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, hidden: paddle.Tensor) -> paddle.Tensor:
        q, k, v = self._heads(self.q_proj(hidden)), self._heads(self.k_proj(hidden)), self._heads(self.v_proj(hidden))
        scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim))
        # Causal mask derived from the scores themselves (not a separately built tensor), so it
        # inherits their distributed placement and dynamic shape; triu keeps -inf strictly above
        # the diagonal and zeros elsewhere, and the diagonal keeps every row finite.
        scores = scores + paddle.triu(paddle.full_like(scores, float("-inf")), diagonal=1)
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(q.dtype)
        context = paddle.matmul(probs, v).transpose([0, 2, 1, 3])
        return self.o_proj(context.reshape([0, 0, self.num_heads * self.head_dim]))


class GPTMLP(nn.Layer):
    """up_proj -> GeLU (tanh approximation) -> down_proj."""

    def __init__(self, spec: "ModelSpec", residual_std: float):
        super().__init__()
        self.up_proj = _linear(spec.hidden_size, spec.intermediate_size, spec.linear_bias, INITIALIZER_RANGE)
        self.down_proj = _linear(spec.intermediate_size, spec.hidden_size, spec.linear_bias, residual_std)

    def forward(self, hidden: paddle.Tensor) -> paddle.Tensor:
        return self.down_proj(F.gelu(self.up_proj(hidden), approximate=True))


class GPTDecoderLayer(nn.Layer):
    """Pre-LayerNorm block: h + attn(ln(h)), then h + mlp(ln(h))."""

    def __init__(self, spec: "ModelSpec", residual_std: float):
        super().__init__()
        self.input_layernorm = _layernorm(spec.hidden_size, spec.linear_bias)
        self.self_attn = GPTAttention(spec, residual_std)
        self.post_attention_layernorm = _layernorm(spec.hidden_size, spec.linear_bias)
        self.mlp = GPTMLP(spec, residual_std)

    def forward(self, hidden: paddle.Tensor) -> paddle.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden))
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class GPTModel(nn.Layer):
    """Embeddings, decoder layers and the final LayerNorm; returns hidden states [b, s, hidden]."""

    def __init__(self, spec: "ModelSpec"):
        super().__init__()
        # GPT-2's scaled init of the projections that write into the residual stream.
        residual_std = INITIALIZER_RANGE / math.sqrt(2 * spec.num_layers)
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size, weight_attr=_weight_attr(INITIALIZER_RANGE))
        self.embed_positions = nn.Embedding(spec.max_position_embeddings, spec.hidden_size,
                                            weight_attr=_weight_attr(INITIALIZER_RANGE))
        self.layers = nn.LayerList([GPTDecoderLayer(spec, residual_std) for _ in range(spec.num_layers)])
        self.norm = _layernorm(spec.hidden_size, spec.linear_bias)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        # Positions 0..s-1 computed from input_ids so they share its placement (a dp-sharded batch
        # stays sharded) and its dynamic shape in a static graph.
        position_ids = paddle.cumsum(paddle.ones_like(input_ids), axis=1) - 1
        hidden = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.norm(hidden)


class GPTForCausalLM(nn.Layer):
    """GPT causal LM; see the module docstring for names, tying and the forward contract."""

    def __init__(self, spec: "ModelSpec"):
        super().__init__()
        check_gpt_spec(spec)
        self.config = spec  # PaddleFormers models expose .config; ModelSpec uses the same field names
        self.model = GPTModel(spec)
        self.tie_word_embeddings = spec.tie_word_embeddings
        if not spec.tie_word_embeddings:
            self.lm_head = _linear(spec.hidden_size, spec.vocab_size, False, INITIALIZER_RANGE)

    def logits(self, hidden: paddle.Tensor) -> paddle.Tensor:
        """Vocabulary logits [b, s, vocab] from final hidden states [b, s, hidden]."""
        if self.tie_word_embeddings:
            return paddle.matmul(hidden, self.model.embed_tokens.weight, transpose_y=True)
        return self.lm_head(hidden)

    def forward(self, input_ids: paddle.Tensor, labels: paddle.Tensor | None = None, return_dict: bool = False):
        logits = self.logits(self.model(input_ids))
        loss = None if labels is None else causal_lm_loss(logits, labels)
        if return_dict:
            return GPTOutput(logits=logits, loss=loss)
        return (logits,) if loss is None else (loss, logits)


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean float32 cross entropy over tokens whose label is not IGNORE_INDEX (labels pre-shifted)."""
    token_loss = F.cross_entropy(logits.astype("float32"), labels.unsqueeze(-1), reduction="none",
                                 ignore_index=IGNORE_INDEX)
    mask = (labels != IGNORE_INDEX).astype("float32")
    return (token_loss.reshape(mask.shape) * mask).sum() / mask.sum()


def build_gpt(spec: "ModelSpec", seed: int | None = None) -> GPTForCausalLM:
    """A freshly initialised GPTForCausalLM; with `seed`, paddle.seed(seed) first for reproducible weights."""
    if seed is not None:
        paddle.seed(seed)
    return GPTForCausalLM(spec)


__all__ = ["GPTForCausalLM", "GPTModel", "GPTOutput", "build_gpt", "causal_lm_loss", "check_gpt_spec", "IGNORE_INDEX"]
