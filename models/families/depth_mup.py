"""Depth-muP: residual-branch multipliers that let a small model's tuned LR transfer to a deeper one.

    model.depth_mup   branch multiplier on every block's attention and MLP output   Adam LR of block weights
    none              1                                                             x 1
    sqrt              1 / sqrt(L)     (Yang et al. 2023, Depth-muP; Bordelon et al. 2023)   x 1 / sqrt(L)
    completep         1 / L           (Dey et al. 2025, CompleteP, alpha = 1)       x 1   (L^(alpha - 1))

A block computes x + m * attn(ln(x)), then x + m * mlp(ln(x)), with m fixed by the depth L of the model
that trains, small and grown alike; only the block weights' LR moves with L (embeddings, final norm and
head keep the peak LR: no blanket cut). The multiplier is a constant of the forward pass, never a weight:
the byte GPT's Block multiplies by it, the transformers decoders scale ``self_attn``'s and ``mlp``'s outputs
with forward hooks; a decoder's Hugging Face directory holds the multiplier folded into ``o_proj`` and
``down_proj`` so that plain transformers computes the same function (models/families/llama.py).
"""

from __future__ import annotations

import math
from typing import Literal

DepthMup = Literal["none", "sqrt", "completep"]


def branch_multiplier(mode: str, n_layers: int) -> float:
    """The multiplier on each residual branch of an ``n_layers`` model."""
    return {"none": 1.0, "sqrt": 1.0 / math.sqrt(n_layers), "completep": 1.0 / n_layers}[mode]


def block_lr_factor(mode: str, n_layers: int) -> float:
    """Adam's LR on block weights over the peak LR: L^(alpha - 1) for multiplier L^(-alpha)."""
    return {"none": 1.0, "sqrt": 1.0 / math.sqrt(n_layers), "completep": 1.0}[mode]


def scale_writers(state: dict, layout, factor: float) -> dict:
    """``state`` with every block's residual writers (``layout.residual_writers``) times ``factor``."""
    writers = tuple(f".{suffix}" for suffix in layout.residual_writers)
    return {k: v * factor if k.startswith(layout.block_prefix) and k.endswith(writers) else v for k, v in state.items()}


def rescale_on_growth(state: dict, layout, parent, child, exponent: int = 1) -> dict:
    """The multiplier depends on the depth, so growth scales every block's residual writers by r = m_parent / m_child:
    each block still writes what it wrote (identity and masked stay function preserving). Weights scale by r
    (``exponent`` 1); gradients by 1/r, so Adam's exp_avg by 1/r (-1) and exp_avg_sq by 1/r^2 (-2)."""
    r = branch_multiplier(parent.depth_mup, parent.n_layers) / branch_multiplier(child.depth_mup, child.n_layers)
    return scale_writers(state, layout, r**exponent) if r != 1.0 else state
