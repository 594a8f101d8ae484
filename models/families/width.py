"""The width operator (Shen et al. 2022, "Staged Training for Transformer Language Models"):
double d_model, n_heads and d_ff so that the child computes exactly the parent's function.

The child's residual stream is the parent's, written twice: x' = [x; x] (B, T, 2C). Then

    embeddings       E (V, C)   -> [E, E]                   (V, 2C)   rows written twice
    LayerNorm        g, b (C)   -> [g; g], [b; b]           (2C)      mean/var of [x; x] = those of x
    linear layers    W (n, m)   -> [[W, 0], [0, W]]         (2n, 2m)  two copies side by side
    qkv              3 x (C, C) -> 3 x block-diagonal        (6C, 2C)  heads h and h + H are twins
    final LayerNorm  g, b       -> [g; g] / 2, [b; b] / 2             the head sees [h/2; h/2] ...
    head             H (V, C)   -> [H, H]                   (V, 2C)   ... and sums H h/2 + H h/2 = H h

Heads double and head_dim stays, so attention scores (and their 1/sqrt(head_dim)) are unchanged.

Symmetry: the two copies receive identical gradients and would stay twins forever. ``noise``
breaks that without breaking function preservation: a linear layer gets [[W - N1, N1], [N2, W - N2]],
whose output on [x; x] is still [Wx; Wx] (the noise cancels within each row block). This antisymmetric
form is our choice; the paper's code adds no noise.

Adam moments follow the gradients (as in the paper's code): on the grown model every gradient is
half the parent's (each copy of x carries half of dL/dx), except the final LayerNorm's, which is
unchanged. So moments are placed like the weights (zeros off the diagonal, no halving of ln_f)
and scaled by r (exp_avg) or r^2 (exp_avg_sq), r = 1/2 (ln_f: 1): Adam's update direction
m/sqrt(v) for every copied entry is then the parent's.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel

from models.errors import UserError

StateDict = dict[str, torch.Tensor]

_DUP_COLUMNS = ("tok_emb.weight", "pos_emb.weight", "head.weight")  # (N, C) -> (N, 2C)


class WidthError(UserError, ValueError):
    """Raised for an impossible width request; models.growth turns it into a GrowthError."""


def widen_config(parent: BaseModel) -> BaseModel:
    """The child config of a width stage: d_model, n_heads and d_ff doubled, the rest kept."""
    return parent.model_copy(
        update={"d_model": 2 * parent.d_model, "n_heads": 2 * parent.n_heads, "d_ff": 2 * parent.d_ff}
    )


def check_width(parent: BaseModel, child: BaseModel) -> None:
    expected = widen_config(parent)
    if child != expected:
        fields = ("n_layers", "d_model", "n_heads", "d_ff", "context")
        diffs = [
            f"{f} {getattr(child, f)} (expected {getattr(expected, f)})"
            for f in fields
            if getattr(child, f) != getattr(expected, f)
        ]
        raise WidthError(
            f"width growth doubles d_model, n_heads and d_ff and keeps the rest, but the child has {', '.join(diffs)}"
        )


def _twice(t: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat([t, t], dim=dim)


def block_diag(w: torch.Tensor, noise_std: float, gen: torch.Generator | None) -> torch.Tensor:
    """(n, m) -> (2n, 2m): [[W - N1, N1], [N2, W - N2]], N ~ normal(0, noise_std) or 0.

    Noise is drawn into contiguous (n, m) buffers: sampling into the strided blocks directly is
    several times slower, and sampling is most of the cost of widening a large model.
    """
    n, m = w.shape
    out = w.new_empty(2 * n, 2 * m)
    for rows, diag, off in (
        (slice(None, n), slice(None, m), slice(m, None)),
        (slice(n, None), slice(m, None), slice(None, m)),
    ):
        out[rows, diag] = w
        if gen is None:
            out[rows, off] = 0.0
        else:
            noise = torch.randn(n, m, generator=gen, dtype=w.dtype).mul_(noise_std)  # (n, m)
            out[rows, off] = noise
            out[rows, diag] -= noise
    return out


def _widen_tensor(key: str, t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator) -> torch.Tensor:
    """One parent tensor -> its child tensor (weights, or a moment when ``moments``)."""
    if key in _DUP_COLUMNS:
        return _twice(t, 1)  # (N, 2C)
    if key.endswith("attn.qkv.bias"):  # [q; k; v] -> [q; q; k; k; v; v]
        return torch.cat([_twice(c, 0) for c in t.chunk(3)])  # (6C,)
    if t.dim() == 1:
        out = _twice(t, 0)  # (2n,)
        return out / 2 if key.startswith("ln_f.") and not moments else out  # the head sums two halves
    noisy = noise_std > 0 and not moments and t.device.type != "meta"
    if key.endswith("attn.qkv.weight"):  # 3 x (C, C) -> 3 x (2C, 2C) stacked: (6C, 2C)
        return torch.cat([block_diag(c, noise_std, gen if noisy else None) for c in t.chunk(3)])
    return block_diag(t, noise_std, gen if noisy else None)


def _gradient_ratio(key: str) -> float:
    return 1.0 if key.startswith("ln_f.") else 0.5


def widen(state: StateDict, parent: BaseModel, child: BaseModel, noise: float = 0.0, seed: int = 0) -> StateDict:
    """The child state dict (every tensor doubled as in the module docstring)."""
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
