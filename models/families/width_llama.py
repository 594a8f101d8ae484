"""Width growth for the transformers decoders (RMSNorm + SwiGLU + grouped-query attention + RoPE): d_model, n_heads,
n_kv_heads and d_ff doubled, head_dim kept, so that the child computes exactly the parent's function.

As for the byte GPT (models/families/width.py), the child's residual stream is the parent's written twice,
x' = [x; x] (B, T, 2C), and every layer keeps that form:

    embed_tokens     E (V, C)        -> [E, E]                 (V, 2C)    rows written twice
    RMSNorm          g (C)           -> [g; g]                 (2C)       rms([x; x]) = rms(x): same output, twice
    q/k/v_proj       W (h x hd, C)   -> [[W, 0], [0, W]]       heads h and h + H (kv: h and h + KV) are twins
    o_proj           W (C, H x hd)   -> [[W, 0], [0, W]]       (2C, 2H x hd)
    gate/up_proj     W (F, C)        -> [[W, 0], [0, W]]       SwiGLU is elementwise: [h; h]
    down_proj        W (C, F)        -> [[W, 0], [0, W]]
    q_norm, k_norm   g (hd)          -> g                      (Qwen3) per head: unchanged
    q/k/v_proj bias  b (h x hd)      -> [b; b]                 (Qwen2) with its projection's output rows
    final norm       g (C)           -> [g; g] / 2             the head sees [n/2; n/2] ...
    lm_head          H (V, C)        -> [H, H]                 ... and sums H n/2 + H n/2 = H n

What is preserved: the function, exactly (float64 tests: <= 1e-10), with or without the antisymmetric
symmetry-breaking noise of models/families/width.py. Grouped queries stay grouped: child query head i < H uses kv head
i // (H / KV) of the first copy, head H + i the same kv head of the second. RoPE is untouched because
head_dim and rope_theta are kept (widening head_dim instead would change the rotation frequencies: this
operator never does that). Tied embeddings work as they are: the head *is* [E, E], and the final norm's
halving does what halving the head would. What is not preserved: training symmetry. The two copies get
identical gradients and stay twins unless ``noise`` > 0; the vocabulary, context, RoPE and head_dim are
kept, never widened.

Adam moments follow the gradients: every duplicated parameter gets half the parent's gradient per copy
(ratio 1/2); the final norm (halved) and q_norm/k_norm (one copy shared by twin heads) keep theirs (ratio 1).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel

from models.families.width import WidthError, block_diag

StateDict = dict[str, torch.Tensor]
_DUP_COLUMNS = ("model.embed_tokens.weight", "lm_head.weight")  # (V, C) -> (V, 2C)
_FINAL_NORM = "model.norm.weight"
_SHARED = (".q_norm.weight", ".k_norm.weight")  # per-head norms (Qwen3): one copy serves both twins


def widen_config(parent: BaseModel) -> BaseModel:
    """The child config of a width stage: d_model, n_heads, n_kv_heads and d_ff doubled, head_dim kept."""
    return parent.model_copy(
        update={
            "d_model": 2 * parent.d_model,
            "n_heads": 2 * parent.n_heads,
            "n_kv_heads": 2 * parent.n_kv_heads,
            "d_ff": 2 * parent.d_ff,
            "head_dim": parent.resolved_head_dim,
        }
    )


def check_width(parent: BaseModel, child: BaseModel) -> None:
    expected = widen_config(parent)
    child = child.model_copy(update={"head_dim": child.resolved_head_dim})
    if child != expected:
        diffs = [
            f"{f} {getattr(child, f)} (expected {getattr(expected, f)})"
            for f in type(parent).model_fields
            if getattr(child, f) != getattr(expected, f)
        ]
        raise WidthError(
            "width growth doubles d_model, n_heads, n_kv_heads and d_ff and keeps the rest, "
            f"but the child has {', '.join(diffs)}"
        )


def _widen_tensor(key: str, t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator) -> torch.Tensor:
    if key in _DUP_COLUMNS:
        return torch.cat([t, t], dim=1)  # (V, 2C)
    if key.endswith(_SHARED):
        return t.clone()  # (hd,)
    if t.dim() == 1:
        out = torch.cat([t, t])  # (2C,)
        return out / 2 if key == _FINAL_NORM and not moments else out
    noisy = noise_std > 0 and not moments and t.device.type != "meta"
    return block_diag(t, noise_std, gen if noisy else None)  # (2n, 2m)


def _gradient_ratio(key: str) -> float:
    return 1.0 if key == _FINAL_NORM or key.endswith(_SHARED) else 0.5


def widen(state: StateDict, parent: BaseModel, child: BaseModel, noise: float = 0.0, seed: int = 0) -> StateDict:
    """The child state dict (every tensor as in the module docstring)."""
    check_width(parent, child)
    gen = torch.Generator().manual_seed(seed)
    return {key: _widen_tensor(key, t, False, noise, gen) for key, t in state.items()}


def widen_moments(moments: StateDict, parent: BaseModel, child: BaseModel, power: int) -> StateDict:
    """Map exp_avg (power 1) or exp_avg_sq (power 2), keyed by parameter name, onto the child."""
    check_width(parent, child)
    gen = torch.Generator()
    return {
        key: _widen_tensor(key, t, True, 0.0, gen).mul_(_gradient_ratio(key) ** power) for key, t in moments.items()
    }
