"""Qwen3 (``transformers.Qwen3ForCausalLM``): a Llama-family decoder whose attention normalises queries and keys
per head (``self_attn.q_norm``, ``self_attn.k_norm``: RMSNorms of head_dim), without biases. Full attention
(no sliding window), so every layer is the same and depth growth copies layers as for Llama."""

from models.families.llama import DecoderFamily

QWEN3 = DecoderFamily(
    "qwen3", "Qwen3Config", "Qwen3ForCausalLM", {"attention_bias": False, "use_sliding_window": False}, qk_norm=True
)
