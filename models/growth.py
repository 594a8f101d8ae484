"""Growth operators: pure functions from a parent state dict to a child state dict.

A depth operator is described by a *layer plan*: child block j is a copy of parent block
``plan[j]``. Plans are plain lists, so they can be printed, logged, tested and composed.
The only place that rewrites ``blocks.<i>.`` keys is :func:`remap_blocks`.

    stack 3 -> 6   (StackingBERT, Gong et al. 2019):  [0, 1, 2, 0, 1, 2]
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from models.gpt import GPT, GPTConfig

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
StateDict = dict[str, torch.Tensor]


class GrowthError(ValueError):
    """A growth request that cannot be carried out (wrong depth ratio, mismatched shapes, ...)."""


def split_blocks(state: StateDict) -> tuple[dict[int, StateDict], StateDict]:
    """Split a state dict into {block index: {suffix: tensor}} and the non-block rest."""
    blocks: dict[int, StateDict] = {}
    rest: StateDict = {}
    for key, value in state.items():
        m = _BLOCK_KEY.match(key)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            rest[key] = value
    return blocks, rest


def remap_blocks(state: StateDict, plan: Sequence[int]) -> StateDict:
    """Child state dict whose block j is a copy of the parent's block ``plan[j]``; the rest copied as is."""
    blocks, rest = split_blocks(state)
    missing = sorted(set(plan) - set(blocks))
    if missing:
        raise GrowthError(f"layer plan {list(plan)} refers to parent blocks {missing}, parent has {len(blocks)}")
    child = {key: value.clone() for key, value in rest.items()}
    for j, src in enumerate(plan):
        for suffix, value in blocks[src].items():
            child[f"blocks.{j}.{suffix}"] = value.clone()
    return child


def stack_plan(parent_layers: int, child_layers: int) -> list[int]:
    """Child block j <- parent block j mod L: the parent's stack repeated child/parent times."""
    if child_layers % parent_layers:
        raise GrowthError(
            f"cannot stack {parent_layers} layers into {child_layers}: "
            f"the target depth must be a multiple of {parent_layers}"
        )
    return [j % parent_layers for j in range(child_layers)]


def check_same_width(parent: GPTConfig, child: GPTConfig) -> None:
    """Depth operators copy tensors unchanged, so every non-depth dimension must agree."""
    diffs = [
        f"{name} {getattr(parent, name)} -> {getattr(child, name)}"
        for name in ("d_model", "n_heads", "d_ff", "context")
        if getattr(parent, name) != getattr(child, name)
    ]
    if diffs:
        raise GrowthError(f"depth growth needs equal shapes, but {', '.join(diffs)}")


def stack(state: StateDict, parent: GPTConfig, child: GPTConfig) -> StateDict:
    check_same_width(parent, child)
    return remap_blocks(state, stack_plan(parent.n_layers, child.n_layers))


OPERATORS = {"stack": stack}


def grow(operator: str, state: StateDict, parent: GPTConfig, child: GPTConfig) -> StateDict:
    """Apply the named growth operator."""
    try:
        op = OPERATORS[operator]
    except KeyError:
        raise GrowthError(f"unknown growth operator {operator!r}; known: {', '.join(OPERATORS)}") from None
    return op(state, parent, child)


def dry_run(operator: str, parent: GPTConfig, child: GPTConfig) -> None:
    """Grow shape-only (meta-device) models and load the result strictly: catches every
    impossible growth request before any data is read or any step is trained."""
    with torch.device("meta"):
        parent_state = GPT(parent).state_dict()
        child_model = GPT(child)
    child_model.load_state_dict(grow(operator, parent_state, parent, child), strict=True, assign=True)
