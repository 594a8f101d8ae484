"""The width operator's driver, one for every family (Shen et al. 2022, "Staged Training for Transformer Language
Models"): double the width so that the child computes exactly the parent's function.

The child's residual stream is the parent's, written twice: x' = [x; x] (B, T, 2C). Each family says what becomes
of each of its tensors (``widen_tensor``: the byte GPT's rules in models/families/gpt.py, the transformers
decoders' in models/families/llama.py) and how its gradient changes (``gradient_ratio``); the loop over a state
dict and over AdamW's moments, and the two copies of a linear map, are here:

    linear layers    W (n, m)   -> [[W, 0], [0, W]]         (2n, 2m)  two copies side by side

Symmetry: the two copies receive identical gradients and would stay twins forever. ``noise``
breaks that without breaking function preservation: a linear layer gets [[W - N1, N1], [N2, W - N2]],
whose output on [x; x] is still [Wx; Wx] (the noise cancels within each row block). This antisymmetric
form is our choice; the paper's code adds no noise.

Adam moments follow the gradients (as in the paper's code): on the grown model a copied parameter's gradient is
its family's ``gradient_ratio`` r of the parent's (1/2 for most: each copy of x carries half of dL/dx). So moments
are placed like the weights (zeros off the diagonal, never noise) and scaled by r (exp_avg) or r^2 (exp_avg_sq):
Adam's update direction m/sqrt(v) for every copied entry is then the parent's.
"""

from __future__ import annotations

from typing import Protocol

import torch
from pydantic import BaseModel

from models.errors import UserError

StateDict = dict[str, torch.Tensor]


class WidthError(UserError, ValueError):
    """Raised for an impossible width request; models.growth turns it into a GrowthError."""


class WidthRules(Protocol):
    """What a family says about its tensors (models/families/family.py has them as methods)."""

    def check_width(self, parent: BaseModel, child: BaseModel) -> None: ...

    def widen_tensor(
        self, key: str, t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator
    ) -> torch.Tensor: ...

    def gradient_ratio(self, key: str) -> float: ...


def widen(
    rules: WidthRules, state: StateDict, parent: BaseModel, child: BaseModel, noise: float = 0.0, seed: int = 0
) -> StateDict:
    """The child state dict: every tensor as its family's ``widen_tensor`` says."""
    rules.check_width(parent, child)
    gen = torch.Generator().manual_seed(seed)
    return {key: rules.widen_tensor(key, t, False, noise, gen) for key, t in state.items()}


def widen_moments(rules: WidthRules, moments: StateDict, parent: BaseModel, child: BaseModel, power: int) -> StateDict:
    """Map exp_avg (power 1) or exp_avg_sq (power 2), keyed by parameter name, onto the child."""
    rules.check_width(parent, child)
    gen = torch.Generator()
    return {
        key: rules.widen_tensor(key, t, True, 0.0, gen).mul_(rules.gradient_ratio(key) ** power)
        for key, t in moments.items()
    }


def linear(t: torch.Tensor, moments: bool, noise_std: float, gen: torch.Generator) -> torch.Tensor:
    """A linear map's weight (or its moment) in the child: two copies, the weights' with symmetry-breaking noise."""
    noisy = noise_std > 0 and not moments and t.device.type != "meta"
    return block_diag(t, noise_std, gen if noisy else None)


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


def differences(child: BaseModel, expected: BaseModel) -> str:
    """The fields where ``child`` is not the ``expected`` widened config, for a WidthError."""
    return ", ".join(
        f"{f} {getattr(child, f)} (expected {getattr(expected, f)})"
        for f in type(expected).model_fields
        if getattr(child, f) != getattr(expected, f)
    )
