"""Qwen2 (``transformers.Qwen2ForCausalLM``): a Llama-family decoder with biases on the query, key and value
projections (``self_attn.{q,k,v}_proj.bias``; ``o_proj`` has none) and no query/key norms. Full attention (no
sliding window).

What the biases mean for growth: depth operators copy them with their layer; identity zeroes only the
residual writers (``o_proj``, ``down_proj``: bias-free here too), so a new layer is still x -> x; width
growth doubles a bias like the output rows of its projection, [b; b] (models/families/width_llama.py), which keeps
twin heads twins; their gradients halve like the weights'."""

from models.families.llama import DecoderFamily

QWEN2 = DecoderFamily("qwen2", "Qwen2Config", "Qwen2ForCausalLM", {"use_sliding_window": False}, qkv_bias=True)
