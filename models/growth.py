"""Growth operators: pure functions from a parent state dict to a child state dict.

A depth operator is described by a *layer map* (models/layermap.py): child block j is a copy of parent
block ``sources[j]``, and ``new[j]`` says whether it is an added copy. Maps are plain data, so they can be
printed, logged, tested and composed. The only place that rewrites block keys is :func:`remap_blocks`,
over the family's key layout (``Family.layout``): ``blocks.<i>.`` for the byte GPT, ``model.layers.<i>.``
for the transformers decoders. What happens to the new copies is the operator:

    stack       (Gong et al. 2019)           plain copies along the map (also of growth.layers and the recipes)
    interleave  (each block twice in place)  plain copies, the interleave map
    middle      (Saunshi et al. 2024, MIDAS) plain copies, the middle map
    identity    (layout: interleave|stack|middle, or a map)   new blocks' out-projections zeroed
    masked      (Yao et al. 2023, MSG)       new blocks gated 0 -> 1 while training
    width       (Shen et al. 2022)           d_model/n_heads/d_ff doubled (the family's widen:
                                             its rules in gpt.py, llama.py with n_kv_heads doubled too)
    upcycle     (Komatsuzaki et al. 2022)    dense -> MoE: the family's ``moe`` counterpart (Llama, Mistral ->
                                             Mixtral), every expert a copy of its layer's MLP, the router new

The map comes from the operator's layout, or from one of ``layers: [...]`` (explicit), ``solar: {drop}``,
``every: P`` or ``interpose: {skip_first, skip_last}`` (recipes); ``new: [...]`` overrides which copies are new.

Every operator also maps Adam moments (models/growth_moments.py): the moments are keyed by parameter
name, so a depth operator maps them with the very same function as the weights (new blocks start
with no state); width scales them as the gradients scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.families.depth_mup import rescale_on_growth
from models.families.gpt import BYTE_GPT
from models.families.lookup import FAMILIES, ModelConfig, family_of
from models.families.width import WidthError
from models.growth_noise import jitter_new_blocks
from models.layermap import (  # noqa: F401  (the layer maps' names, also importable from here)
    Freeze,
    GrowthError,
    Interpose,
    LayerMap,
    Solar,
    check_sources,
    every_plan,
    interleave_plan,
    interpose_plan,
    make_map,
    middle_plan,
    solar_plan,
    stack_plan,
    trainable,
)

StateDict = dict[str, torch.Tensor]
Operator = Literal["stack", "interleave", "middle", "identity", "masked", "width", "upcycle"]
KEEPS_DEPTH = ("width", "upcycle")  # operators that change what a block is, not how many there are
_PLANS = {"stack": stack_plan, "interleave": interleave_plan, "middle": middle_plan}
_MAPPED = ("stack", "identity", "masked")  # the operators that take an explicit map or a recipe


class GrowthConfig(BaseModel):
    """``stages.<i>.growth``: how a stage is made from the previous one (ignored for stage 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operator: Operator = "stack"
    layout: Literal["interleave", "stack", "middle"] = "interleave"  # identity/masked: where the new blocks go
    ramp_steps: int = Field(100, ge=1)  # masked: steps over which new blocks' gates rise 0 -> 1
    # std of the symmetry-breaking noise. width: antisymmetric, function preserving; depth operators: added to the new
    # blocks' weight matrices, so that N copies of a block do not train as N identical twins (identity's zeroed writers
    # and masked's closed gates keep the function exact at the growth step)
    noise: float = Field(0.0, ge=0)
    noise_seed: int = 0  # the noise is a pure function of this seed
    # depth operators: the new blocks' LR ramps 0 -> peak over this many steps while the rest trains at the
    # schedule's LR (their Adam state is fresh; a short warmup keeps its first, noisy updates small). 0: none
    new_warmup_steps: int = Field(0, ge=0)
    # parent: only the new blocks train (LLaMA-Pro); or a mapping {blocks, embeddings, head} saying what stays frozen
    freeze: Literal["none", "parent"] | Freeze = "none"
    # an explicit layer map, child block j <- parent block layers[j] (mergekit slices, prts stacking_list): any
    # depth, order and repeats, where the layouts only multiply the depth
    layers: tuple[int, ...] | None = Field(None, min_length=1)
    new: tuple[int, ...] | None = None  # child blocks that are new copies; default: every copy after a block's first
    solar: Solar | None = None  # SOLAR depth up-scaling: two copies, ``drop`` blocks left out at the seam
    every: int | None = Field(None, ge=1)  # LLaMA-Pro: one new block after every ``every`` blocks
    interpose: Interpose | None = None  # each block duplicated in place except the first and last few
    # upcycle (dense -> MoE, Komatsuzaki et al. 2022): the child's experts per layer, each a copy of the parent's MLP
    # (plus ``noise``), and how many a token uses; the router starts N(0, router_std^2): any router computes the
    # parent's function (top-k weights renormalized to sum 1), and a random one sends tokens to different experts, so
    # the copies get different gradients and part (a zero router with no noise keeps every expert a twin forever)
    experts: int | None = Field(None, ge=2)
    top_k: int | None = Field(None, ge=1)
    router_std: float = Field(0.02, ge=0)  # upcycle only (like ramp_steps for masked: other operators ignore it)

    @model_validator(mode="after")
    def _one_map(self) -> GrowthConfig:
        given = [k for k in ("layers", "solar", "every", "interpose") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one layer map, not {' and '.join(given)}")
        if given and self.operator not in _MAPPED:
            raise ValueError(
                f"{given[0]} is a layer map: it goes with operator stack, identity or masked, not {self.operator}"
            )
        if self.new is not None and self.operator in KEEPS_DEPTH:
            raise ValueError(f"new names new blocks of a layer map: {self.operator} growth adds none")
        moe = [k for k in ("experts", "top_k") if getattr(self, k) is not None]
        if self.operator == "upcycle":
            if len(moe) < 2:
                raise ValueError("operator upcycle needs experts (>= 2) and top_k (experts per token)")
            if self.top_k > self.experts:
                raise ValueError(f"upcycle: top_k {self.top_k} is more than the {self.experts} experts")
        elif moe:
            raise ValueError(f"{' and '.join(moe)} go with operator upcycle, not {self.operator}")
        return self


def layer_map(cfg: GrowthConfig, parent_layers: int, child_layers: int) -> LayerMap:
    """The layer map of a growth config: its recipe or explicit map, else its operator's layout; width keeps
    the depth."""
    if cfg.operator in KEEPS_DEPTH:
        if child_layers != parent_layers:
            raise GrowthError(
                f"{cfg.operator} growth keeps the depth: n_layers must stay {parent_layers}, not {child_layers}"
            )
        sources, what = list(range(parent_layers)), cfg.operator
    elif cfg.layers is not None:
        sources, what = list(cfg.layers), "growth.layers"
    elif cfg.solar is not None:
        sources, what = solar_plan(parent_layers, cfg.solar.drop), f"growth.solar {{drop: {cfg.solar.drop}}}"
    elif cfg.every is not None:
        sources, what = every_plan(parent_layers, cfg.every), f"growth.every {cfg.every}"
    elif cfg.interpose is not None:
        i = cfg.interpose
        sources = interpose_plan(parent_layers, i.skip_first, i.skip_last)
        what = f"growth.interpose {{skip_first: {i.skip_first}, skip_last: {i.skip_last}}}"
    else:
        layout = cfg.operator if cfg.operator in _PLANS else cfg.layout
        sources, what = _PLANS[layout](parent_layers, child_layers), layout
    check_sources(sources, parent_layers, child_layers, what)
    return make_map(sources, cfg.new, child_layers)


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


def check_upcycle(parent: ModelConfig, child: ModelConfig) -> None:
    """A GrowthError unless ``child`` is the parent's MoE counterpart: its family's ``moe``, the same shapes."""
    moe = family_of(parent).moe
    if moe is None:
        can = ", ".join(sorted(n for n, f in FAMILIES.items() if f.moe))
        raise GrowthError(f"cannot upcycle a {parent.arch} model: it has no MoE counterpart (upcycle grows {can})")
    if child.arch != moe:
        raise GrowthError(f"upcycle grows a {parent.arch} model into a {moe} model, not a {child.arch} model")
    fields = [n for n in type(parent).model_fields if n not in ("arch", "n_layers")]  # depth: layer_map's message
    if diffs := [
        f"{n} {getattr(parent, n)} -> {getattr(child, n)}" for n in fields if getattr(parent, n) != getattr(child, n)
    ]:
        raise GrowthError(f"upcycle keeps the dense shapes, but {', '.join(diffs)}")


def _upcycle(state: StateDict, cfg: GrowthConfig, parent: ModelConfig, child: ModelConfig) -> StateDict:
    """Dense -> MoE: every expert of layer i a copy of the parent's MLP i, the router new (N(0, router_std^2))."""
    layer_map(cfg, parent.n_layers, child.n_layers)  # depth check, with the depth-specific message
    check_upcycle(parent, child)
    return family_of(child).upcycle(state, child, cfg.router_std, cfg.noise, cfg.noise_seed)


OPERATORS: dict[str, Callable[[StateDict, GrowthConfig, ModelConfig, ModelConfig], StateDict]] = {
    "stack": _depth,
    "interleave": _depth,
    "middle": _depth,
    "identity": _identity,
    "masked": _depth,
    "width": _width,
    "upcycle": _upcycle,
}


def child_config(cfg: GrowthConfig, parent: ModelConfig, n_layers: int) -> ModelConfig:
    """The child's model config: the parent's at ``n_layers`` depth, doubled in width for ``width``, or its MoE
    counterpart with ``experts`` and ``top_k`` for ``upcycle``."""
    if cfg.operator == "upcycle":
        moe = family_of(parent).moe
        if moe is None:
            check_upcycle(parent, parent)  # the one-line refusal
        return FAMILIES[moe].config(
            **{**parent.model_dump(), "arch": moe, "n_layers": n_layers, "experts": cfg.experts, "top_k": cfg.top_k}
        )
    base = family_of(parent).widen_config(parent) if cfg.operator == "width" else parent
    return base.model_copy(update={"n_layers": n_layers})


def as_config(operator: str | GrowthConfig) -> GrowthConfig:
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
    cfg = as_config(operator)
    grown = grow_tensors(cfg, state, parent, child, exponent=1)
    if cfg.noise == 0 or cfg.operator in KEEPS_DEPTH:  # width and upcycle add their own noise
        return grown
    new_blocks, layout = layer_map(cfg, parent.n_layers, child.n_layers).new_blocks, family_of(child).layout
    return jitter_new_blocks(grown, new_blocks, layout, cfg.noise, cfg.noise_seed, cfg.operator == "identity")


def grow_tensors(
    cfg: GrowthConfig, state: StateDict, parent: ModelConfig, child: ModelConfig, exponent: int
) -> StateDict:
    """:func:`grow` of weights (``exponent`` 1) or of tensors that scale as their gradients (-1) or squared (-2)."""
    check_state(state, parent, "parent")
    try:
        grown = OPERATORS[cfg.operator](state, cfg, parent, child)
    except WidthError as e:
        raise GrowthError(str(e)) from None
    check_state(grown, child, "grown")
    return rescale_on_growth(grown, family_of(child).layout, parent, child, exponent)  # depth-muP


def dry_run(operator: str | GrowthConfig, parent: ModelConfig, child: ModelConfig) -> None:
    """Grow shape-only (meta-device) models and check the result against the child: catches every
    impossible growth request before any data is read or any step is trained."""
    cfg = as_config(operator)
    if cfg.operator == "upcycle":
        check_upcycle(parent, child)
    else:
        check_same_family(parent, child)
    family = family_of(parent)
    with torch.device("meta"):
        parent_state = family.weights(family.build(parent))
    grow(operator, parent_state, parent, child)  # checks the grown state's keys and shapes against the child
    if cfg.operator not in KEEPS_DEPTH:  # what trains: freeze.blocks inside the child, something left to train
        trainable(cfg.freeze, layer_map(cfg, parent.n_layers, child.n_layers))
