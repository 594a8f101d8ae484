"""Llama-family models: the ``transformers`` definitions (LlamaForCausalLM, Qwen3ForCausalLM), built from
a small typed config. No copy of the model code lives here: the field's own library is the dependency.

    LlamaFamilyConfig(arch="llama", n_layers=6, d_model=128, n_heads=4, n_kv_heads=2, d_ff=384, ...)
        .to_hf()  -> transformers.LlamaConfig | Qwen3Config
    build(cfg)    -> LlamaForCausalLM | Qwen3ForCausalLM, with ``.cfg`` = the config it was built from

Every parameter of decoder layer i lives under ``model.layers.<i>.`` (both families), the embeddings
under ``model.embed_tokens.``, the final RMSNorm under ``model.norm.`` and the head under ``lm_head.``
(absent from the state dict when the embeddings are tied): growth (models/growth.py) treats the model as
"a list of layers plus the rest", exactly as for the byte GPT's ``blocks.<i>.``. Qwen3 differs from Llama
only inside a layer (RMSNorms on queries and keys, ``self_attn.{q,k}_norm``), which is what makes it the
second family that shows the key mapping is generic.

Masked growth gates a layer's two residual writes (x + g * attn(...), x + g * mlp(...)) with forward
hooks that scale ``self_attn``'s and ``mlp``'s outputs; :func:`fold_gates` moves a gate into
``o_proj``/``down_proj`` (both bias-free linear maps, so the fold is exact) and removes the hooks: a saved
model is always a plain transformers model. ``transformers`` is imported only when a model is built, so
the byte GPT's path never pays for it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["llama", "qwen3"]
TIED_HEAD = "lm_head.weight"  # dropped from state dicts when the embeddings are tied (as save_pretrained does)


class LlamaFamilyConfig(BaseModel):
    """A Llama-family decoder, in the GPT config's vocabulary (n_layers, d_model, n_heads, d_ff, context)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: Family
    n_layers: int = Field(6, ge=1)  # num_hidden_layers
    d_model: int = Field(128, ge=1)  # hidden_size
    n_heads: int = Field(4, ge=1)  # num_attention_heads
    n_kv_heads: int = Field(2, ge=1)  # num_key_value_heads: grouped-query attention, n_heads / n_kv_heads per group
    d_ff: int = Field(384, ge=1)  # intermediate_size of the SwiGLU MLP (~ 8/3 x d_model in Llama; 3x here)
    head_dim: int | None = Field(None, ge=1)  # None: d_model / n_heads
    context: int = Field(128, ge=1)  # tokens per training sequence
    max_position_embeddings: int | None = Field(None, ge=1)  # what RoPE is set up for; None: the context
    rope_theta: float = Field(10000.0, gt=0)
    rms_norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False  # untied by default: growth stays a pure key map; tied works too
    vocab_size: int = Field(256, ge=1)  # set from the tokenizer (tasks/config/schema.py), never by hand

    @model_validator(mode="after")
    def _shapes_agree(self) -> LlamaFamilyConfig:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} does not divide d_model={self.d_model} (or set head_dim)")
        if self.max_position_embeddings is not None and self.context > self.max_position_embeddings:
            raise ValueError(
                f"context {self.context} is longer than max_position_embeddings {self.max_position_embeddings}"
            )
        return self

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def to_hf(self, bos_token_id: int | None = None, eos_token_id: int | None = None):
        """The transformers config: LlamaConfig or Qwen3Config."""
        from transformers import LlamaConfig, Qwen3Config

        common: dict[str, Any] = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.d_ff,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            head_dim=self.resolved_head_dim,
            max_position_embeddings=self.max_position_embeddings or self.context,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_embeddings,
            attention_bias=False,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=eos_token_id,
        )
        if self.arch == "qwen3":
            return Qwen3Config(**common, use_sliding_window=False)
        return LlamaConfig(**common, mlp_bias=False)


class UnsupportedHFConfig(ValueError):
    """A Hugging Face config.json this project cannot train or grow; one line."""


def from_hf(hf: dict[str, Any], context: int) -> LlamaFamilyConfig:
    """A ``config.json`` (as a dict) of a Llama or Qwen3 model -> its LlamaFamilyConfig, trained at ``context``."""
    family = hf.get("model_type")
    if family not in ("llama", "qwen3"):
        raise UnsupportedHFConfig(f"model_type {family!r} is not supported (supported: llama, qwen3)")
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
        raise UnsupportedHFConfig(f"rope type {rope.get('rope_type')!r} is not supported (only the default RoPE)")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise UnsupportedHFConfig(f"{flag}: true is not supported (Llama-family layers without biases only)")
    if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedHFConfig(f"hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
    try:
        return LlamaFamilyConfig(
            arch=family,
            n_layers=hf["num_hidden_layers"],
            d_model=hf["hidden_size"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            d_ff=hf["intermediate_size"],
            head_dim=hf.get("head_dim"),
            context=context,
            max_position_embeddings=hf["max_position_embeddings"],
            rope_theta=rope.get("rope_theta", 10000.0),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            vocab_size=hf["vocab_size"],
        )
    except KeyError as e:
        raise UnsupportedHFConfig(f"config.json has no {e.args[0]!r}") from None


def build(cfg: LlamaFamilyConfig) -> nn.Module:
    """A freshly initialised transformers model (its own init, seeded by the caller's torch RNG)."""
    from transformers import LlamaForCausalLM, Qwen3ForCausalLM

    family = Qwen3ForCausalLM if cfg.arch == "qwen3" else LlamaForCausalLM
    model = family(cfg.to_hf())
    model.cfg = cfg  # the project's config beside transformers' own, as on the byte GPT
    return model


def layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


# ---- masked growth: gates on a layer's residual writes ---------------------------------------------


def _scale_attention(layer: nn.Module):
    def hook(module, args, out):
        return (out[0] * layer.gate, *out[1:])  # self_attn returns (attn_output, attn_weights)

    return hook


def _scale_mlp(layer: nn.Module):
    def hook(module, args, out):
        return out * layer.gate

    return hook


def set_gate(model: nn.Module, j: int, value: float) -> None:
    """Gate layer j's attention and MLP outputs by ``value``; hooks are installed on first use."""
    layer = layers(model)[j]
    if not hasattr(layer, "gate_hooks"):
        device = next(layer.parameters()).device
        layer.register_buffer("gate", torch.ones((), device=device), persistent=False)
        layer.gate_hooks = (
            layer.self_attn.register_forward_hook(_scale_attention(layer)),
            layer.mlp.register_forward_hook(_scale_mlp(layer)),
        )
    layer.gate.fill_(value)


@torch.no_grad()
def fold_gates(model: nn.Module) -> None:
    """Scale o_proj and down_proj by each layer's gate, then remove the gate: same function, a plain model."""
    for layer in layers(model):
        if not hasattr(layer, "gate_hooks"):
            continue
        g = layer.gate.item()
        if g != 1.0:
            layer.self_attn.o_proj.weight.mul_(g)
            layer.mlp.down_proj.weight.mul_(g)
        for handle in layer.gate_hooks:
            handle.remove()
        del layer.gate_hooks
        del layer._buffers["gate"]
