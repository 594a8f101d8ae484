"""The transformers decoders, one class each: its transformers classes, the config fields it fixes, and what its
layers add to a Llama layer (its quirks) as overrides of DecoderFamily (models/families/llama.py). The lookup
(models/families/lookup.py) takes every family in ``DECODERS``: a new decoder is a class here and its entry in it.

What a quirk means for growth: depth operators copy a layer's extra tensors with their layer; identity zeroes only
the residual writers (``o_proj``, ``down_proj``: bias-free in every member), so a new layer is still x -> x; width
growth doubles a 1-D tensor like its projection's output rows unless the member says otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from models.families.llama import DecoderFamily, LlamaFamilyConfig, UnsupportedHFConfig
from models.families.mixtral import Mixtral


class Llama(DecoderFamily):
    """``transformers.LlamaForCausalLM``: RMSNorm, SwiGLU, grouped-query attention, RoPE; no biases."""

    name, hf_config, hf_model = "llama", "LlamaConfig", "LlamaForCausalLM"
    hf_extra = {"attention_bias": False, "mlp_bias": False}
    moe = "mixtral"  # growth.operator upcycle: every expert a copy of the MLP (models/families/mixtral.py)


class Qwen3(DecoderFamily):
    """``transformers.Qwen3ForCausalLM``: attention normalises queries and keys per head (``self_attn.q_norm``,
    ``self_attn.k_norm``: RMSNorms of head_dim), without biases. Full attention (no sliding window), so every layer
    is the same and depth growth copies layers as for Llama. Width growth keeps the per-head norms as they are
    (twin heads share them), and their gradient with them (ratio 1)."""

    name, hf_config, hf_model = "qwen3", "Qwen3Config", "Qwen3ForCausalLM"
    hf_extra = {"attention_bias": False, "use_sliding_window": False}
    quirk = "q/k norms"
    per_head = (".q_norm.weight", ".k_norm.weight")

    def num_params(self, cfg: LlamaFamilyConfig) -> int:
        return super().num_params(cfg) + cfg.n_layers * 2 * cfg.resolved_head_dim

    def widen_tensor(self, key: str, t: torch.Tensor, moments: bool, noise_std: float, gen) -> torch.Tensor:
        return t.clone() if key.endswith(self.per_head) else super().widen_tensor(key, t, moments, noise_std, gen)

    def gradient_ratio(self, key: str) -> float:
        return 1.0 if key.endswith(self.per_head) else super().gradient_ratio(key)


class Qwen2(DecoderFamily):
    """``transformers.Qwen2ForCausalLM``: biases on the query, key and value projections (``self_attn.{q,k,v}_proj
    .bias``; ``o_proj`` has none), no query/key norms. Full attention (no sliding window). Width growth doubles a
    bias like the output rows of its projection, [b; b], which keeps twin heads twins."""

    name, hf_config, hf_model = "qwen2", "Qwen2Config", "Qwen2ForCausalLM"
    hf_extra = {"use_sliding_window": False}
    quirk = "q/k/v biases"

    def num_params(self, cfg: LlamaFamilyConfig) -> int:
        q, kv = cfg.n_heads * cfg.resolved_head_dim, cfg.n_kv_heads * cfg.resolved_head_dim
        return super().num_params(cfg) + cfg.n_layers * (q + 2 * kv)


class Mistral(DecoderFamily):
    """``transformers.MistralForCausalLM`` with full attention (``sliding_window: None``): then a Llama layer, key
    for key, so growth needs nothing of its own. A config.json with a sliding window is refused at import."""

    name, hf_config, hf_model = "mistral", "MistralConfig", "MistralForCausalLM"
    hf_extra = {"sliding_window": None}
    moe = "mixtral"  # Mixtral's attention is Mistral's

    def from_hf(self, hf: dict[str, Any], context: int) -> LlamaFamilyConfig:
        if hf.get("sliding_window") is not None:
            raise UnsupportedHFConfig(f"sliding_window {hf['sliding_window']} is not supported (full attention only)")
        return super().from_hf(hf, context)


DECODERS: tuple[DecoderFamily, ...] = (Llama(), Qwen3(), Qwen2(), Mistral(), Mixtral())
