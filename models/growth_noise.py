"""Symmetry breaking for the blocks a depth operator adds: copy + small noise (``growth.noise``).

Copies of one block receive nearly the same gradients and tend to train as twins (a 1 -> 12 jump makes 11 copies of
one block). A small Gaussian perturbation of each new block's weight matrices, different per block and a pure
function of ``growth.noise_seed``, breaks the tie. Vectors (norms, biases) stay as copied. Function preservation is
kept where the operator had it: identity's zeroed residual writers stay zero (so each new block is still x -> x),
and masked's new blocks are gated to 0 at the growth step, whatever their weights.
"""

from __future__ import annotations

import torch

StateDict = dict[str, torch.Tensor]


def jitter_new_blocks(
    state: StateDict, new_blocks: list[int], layout, std: float, seed: int, keep_writers_zero: bool
) -> StateDict:
    """``state`` with N(0, std^2) added to every weight matrix of ``new_blocks`` (meta tensors pass through)."""
    gen = torch.Generator().manual_seed(seed)
    writers = tuple(f".{suffix}" for suffix in layout.residual_writers)
    out = dict(state)
    prefixes = tuple(f"{layout.block_prefix}{j}." for j in new_blocks)
    for key in sorted(k for k in state if k.startswith(prefixes)):  # sorted: the same noise whatever the dict order
        v = state[key]
        if v.dim() < 2 or v.is_meta or (keep_writers_zero and key.endswith(writers)):
            continue
        out[key] = v + std * torch.randn(v.shape, generator=gen, dtype=torch.float64).to(v.dtype)
    return out
