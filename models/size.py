"""How big a model is, and how much memory one training step takes, before anything is built.

    footprint(cfg, batch) -> Footprint(params, weights, grads, optimizer, activations)

Pure arithmetic over the config: no tensor is allocated, so a config that would not fit is refused
in microseconds instead of after minutes of allocation (or an out-of-memory kill). One estimator per
architecture, in ``ESTIMATORS`` keyed by its config class: another architecture adds its own beside
``gpt_footprint`` and ``footprint`` finds it.

The estimate is float32 throughout (an upper bound under bf16 autocast): weights, gradients and two
AdamW moments are 4 + 4 + 8 bytes per parameter; activations are what autograd keeps for the backward
pass of one step of ``batch`` sequences of the full context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.gpt import VOCAB_SIZE, GPTConfig
from models.llama import LlamaFamilyConfig

FLOAT32 = 4  # bytes


@dataclass(frozen=True)
class Footprint:
    params: int
    weights: int  # bytes
    grads: int
    optimizer: int  # AdamW's two moments
    activations: int  # kept for backward, one step

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations


def gpt_params(cfg: GPTConfig) -> int:
    """Exactly ``GPT(cfg).num_params()``: embeddings, blocks, final norm and the untied head."""
    C, F = cfg.d_model, cfg.d_ff
    block = (
        2 * C  # ln1 (weight, bias)
        + C * 3 * C
        + 3 * C  # qkv
        + C * C
        + C  # attention out-projection
        + 2 * C  # ln2
        + C * F
        + F  # fc
        + F * C
        + C  # mlp out-projection
    )
    return VOCAB_SIZE * C + cfg.context * C + cfg.n_layers * block + 2 * C + C * VOCAB_SIZE


def gpt_footprint(cfg: GPTConfig, batch: int) -> Footprint:
    """The byte GPT (models/gpt.py) trained with AdamW on ``batch`` sequences of ``cfg.context`` bytes."""
    B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
    per_block = (
        B * T * (10 * C + 2 * F)  # norms' in/out, q k v, attention out, residuals, fc and gelu outputs
        + B * H * T * T  # attention weights, when SDPA takes the math kernel (dropout, some CPUs)
    )
    embeddings = 2 * B * T * C  # token + position sum, final norm
    head = 3 * B * T * VOCAB_SIZE  # logits, their float32 softmax, its gradient
    p = gpt_params(cfg)
    activations = FLOAT32 * (cfg.n_layers * per_block + embeddings + head)
    return Footprint(
        params=p, weights=FLOAT32 * p, grads=FLOAT32 * p, optimizer=2 * FLOAT32 * p, activations=activations
    )


def llama_params(cfg: LlamaFamilyConfig) -> int:
    """Exactly the transformers model's distinct parameters: embeddings, layers, final RMSNorm, untied head."""
    C, F, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    hd = cfg.head_dim or C // cfg.n_heads
    q, kv = cfg.n_heads * hd, cfg.n_kv_heads * hd
    layer = (
        2 * C  # input_layernorm, post_attention_layernorm
        + C * q  # q_proj
        + 2 * C * kv  # k_proj, v_proj (grouped-query: n_kv_heads)
        + q * C  # o_proj
        + 3 * C * F  # gate_proj, up_proj, down_proj (SwiGLU)
        + (2 * hd if cfg.arch == "qwen3" else 0)  # q_norm, k_norm
    )
    return V * C + cfg.n_layers * layer + C + (0 if cfg.tie_embeddings else V * C)


def llama_footprint(cfg: LlamaFamilyConfig, batch: int) -> Footprint:
    """A Llama-family model (models/llama.py) trained with AdamW on ``batch`` sequences of ``cfg.context`` tokens."""
    B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
    hd = cfg.head_dim or C // H
    per_block = (
        B * T * (6 * C + 3 * H * hd + 4 * F)  # norms, q k v (+ RoPE copies), attention out, SwiGLU's three
        + B * H * T * T  # attention weights, when SDPA takes the math kernel
    )
    head = 3 * B * T * cfg.vocab_size  # logits, their float32 softmax, its gradient
    p = llama_params(cfg)
    activations = FLOAT32 * (cfg.n_layers * per_block + 2 * B * T * C + head)
    return Footprint(
        params=p, weights=FLOAT32 * p, grads=FLOAT32 * p, optimizer=2 * FLOAT32 * p, activations=activations
    )


ESTIMATORS: dict[type, Callable[..., Footprint]] = {GPTConfig: gpt_footprint, LlamaFamilyConfig: llama_footprint}


def footprint(cfg, batch: int) -> Footprint:
    """The estimate for ``cfg``'s architecture; ValueError for a config class with no estimator."""
    try:
        estimate = ESTIMATORS[type(cfg)]
    except KeyError:
        raise ValueError(f"no size estimate for {type(cfg).__name__} (add one to models.size.ESTIMATORS)") from None
    return estimate(cfg, batch)
