"""Growth operators: pure functions from a parent state dict to a child state dict.

A depth operator is described by a *layer map*: child block j is a copy of parent block
``sources[j]``, and ``new[j]`` says whether it is an added copy (not the first copy of its source).
Maps are plain data, so they can be printed, logged, tested and composed. The only place that
rewrites block keys is :func:`remap_blocks`, over the family's key layout (``Family.layout``):
``blocks.<i>.`` for the byte GPT, ``model.layers.<i>.`` for the transformers decoders.

    parent 3 blocks -> child 6 blocks        sources              new (*)
    stack       (Gong et al. 2019)           [0, 1, 2, 0, 1, 2]   [- - - * * *]
    interleave  (each block twice in place)  [0, 0, 1, 1, 2, 2]   [- * - * - *]
    middle      (Saunshi et al. 2024, MIDAS) 6 -> 9: [0, 1, 2, 3, 1, 2, 3, 4, 5]   the middle block, copied in place
    identity    (layout: interleave|stack|middle)   as above; new blocks' out-projections zeroed
    masked      (Yao et al. 2023, MSG)       as above; new blocks gated 0 -> 1 while training
    width       (Shen et al. 2022)           [0, 1, 2], d_model/n_heads/d_ff doubled (the family's widen:
                                             models/families/width.py, width_llama.py with n_kv_heads doubled too)

Every operator also maps Adam moments (``grow_moments``): the moments are keyed by parameter
name, so a depth operator maps them with the very same function as the weights (identity's zeroed
projections get zero moments, i.e. a fresh start); width scales them as the gradients scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from models.errors import UserError
from models.families.gpt import BYTE_GPT
from models.families.lookup import ModelConfig, family_of
from models.families.width import WidthError

StateDict = dict[str, torch.Tensor]
Operator = Literal["stack", "interleave", "middle", "identity", "masked", "width"]


class GrowthError(UserError, ValueError):
    """A growth request that cannot be carried out (wrong depth ratio, mismatched shapes, ...). One line."""


class GrowthConfig(BaseModel):
    """``stages.<i>.growth``: how a stage is made from the previous one (ignored for stage 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operator: Operator = "stack"
    layout: Literal["interleave", "stack", "middle"] = "interleave"  # identity/masked: where the new blocks go
    ramp_steps: int = Field(100, ge=1)  # masked: steps over which new blocks' gates rise 0 -> 1
    noise: float = Field(0.0, ge=0)  # width: std of the (function-preserving) symmetry-breaking noise
    noise_seed: int = 0  # width: the noise is a pure function of this seed
    freeze: Literal["none", "parent"] = "none"  # parent: only the new blocks train (LLaMA-Pro); depth operators


# ---- layer maps --------------------------------------------------------------------------------


def _depth_ratio(parent_layers: int, child_layers: int, what: str) -> int:
    if child_layers % parent_layers:
        raise GrowthError(
            f"cannot {what} {parent_layers} layers into {child_layers}: "
            f"the target depth must be a multiple of {parent_layers}"
        )
    return child_layers // parent_layers


def stack_plan(parent_layers: int, child_layers: int) -> list[int]:
    """Child block j <- parent block j mod L: the parent's stack repeated child/parent times."""
    _depth_ratio(parent_layers, child_layers, "stack")
    return [j % parent_layers for j in range(child_layers)]


def interleave_plan(parent_layers: int, child_layers: int) -> list[int]:
    """Child block j <- parent block j // k (k = child/parent): each block repeated in place."""
    k = _depth_ratio(parent_layers, child_layers, "interleave")
    return [j // k for j in range(child_layers)]


def middle_plan(parent_layers: int, child_layers: int) -> list[int]:
    """MIDAS: the ``child - parent`` middle blocks of the parent, copied right after themselves.

    Any depth from ``parent + 1`` to ``2 * parent`` (a doubling copies every block: the stack layout)."""
    added = child_layers - parent_layers
    if not 1 <= added <= parent_layers:
        raise GrowthError(
            f"cannot grow {parent_layers} layers into {child_layers} from the middle: "
            f"middle growth adds 1 to {parent_layers} layers"
        )
    start = (parent_layers - added) // 2
    middle = list(range(start, start + added))
    return list(range(start + added)) + middle + list(range(start + added, parent_layers))


_PLANS = {"stack": stack_plan, "interleave": interleave_plan, "middle": middle_plan}


@dataclass(frozen=True)
class LayerMap:
    sources: tuple[int, ...]  # child block j <- parent block sources[j]
    new: tuple[bool, ...]  # child block j is an added copy (identity zeroes it, masked gates it)

    @property
    def new_blocks(self) -> list[int]:
        return [j for j, is_new in enumerate(self.new) if is_new]


def layer_map(cfg: GrowthConfig, parent_layers: int, child_layers: int) -> LayerMap:
    """The layer map of a growth config; width keeps the depth."""
    if cfg.operator == "width":
        if child_layers != parent_layers:
            raise GrowthError(f"width growth keeps the depth: n_layers must stay {parent_layers}, not {child_layers}")
        sources = list(range(parent_layers))
    else:
        layout = cfg.operator if cfg.operator in _PLANS else cfg.layout
        sources = _PLANS[layout](parent_layers, child_layers)
    new, seen = [], set()
    for s in sources:  # the first copy of a parent block is the original, later copies are new
        new.append(s in seen)
        seen.add(s)
    return LayerMap(tuple(sources), tuple(new))


# ---- state dict plumbing -----------------------------------------------------------------------


def split_blocks(
    state: StateDict, prefix: str = BYTE_GPT.layout.block_prefix
) -> tuple[dict[int, StateDict], StateDict]:
    """Split a state dict into {block index: {suffix: tensor}} and the non-block rest."""
    blocks: dict[int, StateDict] = {}
    rest: StateDict = {}
    for key, value in state.items():
        index, dot, suffix = key[len(prefix) :].partition(".") if key.startswith(prefix) else ("", "", "")
        if dot and index.isdigit():
            blocks.setdefault(int(index), {})[suffix] = value
        else:
            rest[key] = value
    return blocks, rest


def remap_blocks(state: StateDict, plan: Sequence[int], prefix: str = BYTE_GPT.layout.block_prefix) -> StateDict:
    """Child state dict whose block j is a copy of the parent's block ``plan[j]``; the rest copied as is."""
    blocks, rest = split_blocks(state, prefix)
    missing = sorted(set(plan) - set(blocks))
    if missing:
        raise GrowthError(f"layer plan {list(plan)} refers to parent blocks {missing}, parent has {len(blocks)}")
    child = {key: value.clone() for key, value in rest.items()}
    for j, src in enumerate(plan):
        for suffix, value in blocks[src].items():
            child[f"{prefix}{j}.{suffix}"] = value.clone()
    return child


@cache  # configs are frozen: building a 48-layer transformers model on the meta device takes ~0.1 s
def _shapes(cfg: ModelConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        family = family_of(cfg)
        return tuple((k, tuple(v.shape)) for k, v in family.weights(family.build(cfg)).items())


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return dict(_shapes(cfg))


def check_state(state: StateDict, cfg: ModelConfig, what: str) -> None:
    """One-line error naming what does not match between a state dict and its config."""
    want = expected_shapes(cfg)
    problems = [f"missing {k}" for k in want if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in want]
    problems += [
        f"{k} is {tuple(v.shape)}, expected {want[k]}"
        for k, v in state.items()
        if k in want and tuple(v.shape) != want[k]
    ]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise GrowthError(f"{what} state does not match its config: {'; '.join(problems[:3])}{more}")


def check_same_family(parent: ModelConfig, child: ModelConfig) -> None:
    if parent.arch != child.arch:
        raise GrowthError(f"cannot grow a {parent.arch} model into a {child.arch} model")


def check_same_width(parent: ModelConfig, child: ModelConfig) -> None:
    """Depth operators copy tensors unchanged, so every non-depth dimension must agree."""
    check_same_family(parent, child)
    diffs = [
        f"{name} {getattr(parent, name)} -> {getattr(child, name)}"
        for name in family_of(parent).layout.shape_fields
        if getattr(parent, name) != getattr(child, name)
    ]
    if diffs:
        raise GrowthError(f"depth growth needs equal shapes, but {', '.join(diffs)}")


# ---- the operators -----------------------------------------------------------------------------


def _depth(state: StateDict, cfg: GrowthConfig, parent: ModelConfig, child: ModelConfig) -> StateDict:
    """stack, interleave, middle, masked: copy blocks along the layer map (masked's gates live in the model)."""
    check_same_width(parent, child)
    return remap_blocks(
        state, layer_map(cfg, parent.n_layers, child.n_layers).sources, family_of(parent).layout.block_prefix
    )


def _identity(state: StateDict, cfg: GrowthConfig, parent: ModelConfig, child: ModelConfig) -> StateDict:
    """Copy blocks, then zero the new blocks' residual writers: each new block is x -> x."""
    check_same_width(parent, child)
    lmap, lay = layer_map(cfg, parent.n_layers, child.n_layers), family_of(parent).layout
    grown = remap_blocks(state, lmap.sources, lay.block_prefix)
    for j in lmap.new_blocks:
        for suffix in lay.residual_writers:
            grown[f"{lay.block_prefix}{j}.{suffix}"].zero_()
    return grown


def _width(state: StateDict, cfg: GrowthConfig, parent: ModelConfig, child: ModelConfig) -> StateDict:
    layer_map(cfg, parent.n_layers, child.n_layers)  # depth check, with the depth-specific message
    check_same_family(parent, child)
    return family_of(parent).widen(state, parent, child, noise=cfg.noise, seed=cfg.noise_seed)


OPERATORS: dict[str, Callable[[StateDict, GrowthConfig, ModelConfig, ModelConfig], StateDict]] = {
    "stack": _depth,
    "interleave": _depth,
    "middle": _depth,
    "identity": _identity,
    "masked": _depth,
    "width": _width,
}


def child_config(cfg: GrowthConfig, parent: ModelConfig, n_layers: int) -> ModelConfig:
    """The child's model config: the parent's at ``n_layers`` depth, or doubled in width for ``width``."""
    base = family_of(parent).widen_config(parent) if cfg.operator == "width" else parent
    return base.model_copy(update={"n_layers": n_layers})


def _config(operator: str | GrowthConfig) -> GrowthConfig:
    if isinstance(operator, GrowthConfig):
        return operator
    if operator not in OPERATORS:
        raise GrowthError(f"unknown growth operator {operator!r}; known: {', '.join(OPERATORS)}")
    return GrowthConfig(operator=operator)


def grow(operator: str | GrowthConfig, state: StateDict, parent: ModelConfig, child: ModelConfig) -> StateDict:
    """Apply a growth operator (a name, or a full ``GrowthConfig``) to a parent state dict.

    The parent state is checked against ``parent`` first and the result against ``child``, so a
    wrong shape is reported here, in one line, rather than by ``load_state_dict``.
    """
    cfg = _config(operator)
    check_state(state, parent, "parent")
    try:
        grown = OPERATORS[cfg.operator](state, cfg, parent, child)
    except WidthError as e:
        raise GrowthError(str(e)) from None
    check_state(grown, child, "grown")
    return grown


def grow_moments(
    operator: str | GrowthConfig, moments: StateDict, parent: ModelConfig, child: ModelConfig
) -> StateDict:
    """Map AdamW moments (models.train.optim layout: ``exp_avg.<param>``, ``exp_avg_sq.<param>``, ``step``)."""
    cfg = _config(operator)
    out: StateDict = {"step": moments["step"].clone()}
    for power, prefix in ((1, "exp_avg."), (2, "exp_avg_sq.")):
        part = {k.removeprefix(prefix): v for k, v in moments.items() if k.startswith(prefix)}
        if cfg.operator == "width":
            try:
                check_same_family(parent, child)
                grown = family_of(parent).widen_moments(part, parent, child, power)
            except WidthError as e:
                raise GrowthError(str(e)) from None
        else:  # the weights' own function; no noise is involved in depth growth
            grown = grow(cfg, part, parent, child)
        out.update({prefix + k: v for k, v in grown.items()})
    return out


def dry_run(operator: str | GrowthConfig, parent: ModelConfig, child: ModelConfig) -> None:
    """Grow shape-only (meta-device) models and check the result against the child: catches every
    impossible growth request before any data is read or any step is trained."""
    check_same_family(parent, child)
    family = family_of(parent)
    with torch.device("meta"):
        parent_state = family.weights(family.build(parent))
    grow(operator, parent_state, parent, child)  # checks the grown state's keys and shapes against the child
