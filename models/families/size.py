"""How big a model is, and how much memory one training step takes, before anything is built.

    footprint(cfg, batch) -> Footprint(params, weights, grads, optimizer, activations)

Pure arithmetic over the config: no tensor is allocated, so a config that would not fit is refused
in microseconds instead of after minutes of allocation (or an out-of-memory kill). Each family's
object (models/families/family.py) answers ``num_params``, ``footprint`` and ``flops_per_token`` with the
formulas here: ``gpt_*`` for the byte GPT, ``decoder_*`` for the transformers decoders.

The estimate is float32 throughout (an upper bound under bf16 autocast): weights, gradients and two
AdamW moments are 4 + 4 + 8 bytes per parameter; activations are what autograd keeps for the backward
pass of one step of ``batch`` sequences of the full context.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

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


def gpt_params(cfg: BaseModel, vocab: int) -> int:
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
    return vocab * C + cfg.context * C + cfg.n_layers * block + 2 * C + C * vocab


def gpt_footprint(cfg: BaseModel, batch: int, vocab: int) -> Footprint:
    """The byte GPT (models/families/gpt.py) trained with AdamW on ``batch`` sequences of ``cfg.context`` bytes."""
    B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
    per_block = (
        B * T * (10 * C + 2 * F)  # norms' in/out, q k v, attention out, residuals, fc and gelu outputs
        + B * H * T * T  # attention weights, when SDPA takes the math kernel (dropout, some CPUs)
    )
    embeddings = 2 * B * T * C  # token + position sum, final norm
    head = 3 * B * T * vocab  # logits, their float32 softmax, its gradient
    p = gpt_params(cfg, vocab)
    activations = FLOAT32 * (cfg.n_layers * per_block + embeddings + head)
    return Footprint(
        params=p, weights=FLOAT32 * p, grads=FLOAT32 * p, optimizer=2 * FLOAT32 * p, activations=activations
    )


def decoder_params(cfg: BaseModel, qk_norm: bool, qkv_bias: bool) -> int:
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
        + (2 * hd if qk_norm else 0)  # q_norm, k_norm (Qwen3)
        + (q + 2 * kv if qkv_bias else 0)  # q, k, v biases (Qwen2)
    )
    return V * C + cfg.n_layers * layer + C + (0 if cfg.tie_embeddings else V * C)


def decoder_footprint(cfg: BaseModel, batch: int, params: int) -> Footprint:
    """A transformers decoder (``DecoderFamily``, models/families/llama.py) of ``params`` parameters trained with AdamW
    on ``batch`` sequences of ``cfg.context`` tokens."""
    B, T, C, F, H = batch, cfg.context, cfg.d_model, cfg.d_ff, cfg.n_heads
    hd = cfg.head_dim or C // H
    per_block = (
        B * T * (6 * C + 3 * H * hd + 4 * F)  # norms, q k v (+ RoPE copies), attention out, SwiGLU's three
        + B * H * T * T  # attention weights, when SDPA takes the math kernel
    )
    head = 3 * B * T * cfg.vocab_size  # logits, their float32 softmax, its gradient
    p = params
    activations = FLOAT32 * (cfg.n_layers * per_block + 2 * B * T * C + head)
    return Footprint(
        params=p, weights=FLOAT32 * p, grads=FLOAT32 * p, optimizer=2 * FLOAT32 * p, activations=activations
    )


def gpt_matmul_params(cfg: BaseModel, vocab: int) -> int:
    d, f = cfg.d_model, cfg.d_ff
    per_block = 3 * d * d + d * d + 2 * d * f  # qkv, out-proj, mlp in and out
    return cfg.n_layers * per_block + d * vocab  # + the byte head


def decoder_matmul_params(cfg: BaseModel) -> int:
    """The weights of every nn.Linear of the transformers model: q, k, v, o, SwiGLU's three, the head
    (a tied head is still a matmul). Grouped-query attention: k and v are n_kv_heads wide."""
    d, f, q, kv = cfg.d_model, cfg.d_ff, cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return cfg.n_layers * per_layer + d * cfg.vocab_size
