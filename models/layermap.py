"""Layer maps: which parent block each child block copies, and which copies are new. Plain data.

Child block j copies parent block ``sources[j]``; ``new[j]`` marks an added copy (identity zeroes its
residual writers, masked gates it in, ``freeze: parent`` trains it). By default the first copy of a
parent block is the original and every later copy is new. Every depth operator and recipe is a map:

    parent 8 blocks                 sources                                          new
    stack        8 -> 16            0..7, 0..7                                       the second 0..7
    interleave   8 -> 16            0 0 1 1 ... 7 7                                  each second copy
    middle       6 -> 9 (MIDAS)     0 1 2 3 1 2 3 4 5                                the middle three copies
    layers: [...]                   exactly what it says (any length, order, repeats) ``new`` or the rule
    solar: {drop: 2}   8 -> 12      0..5, 2..7 (two copies, 2 dropped at the seam)   the second 2..5
    every: 4           8 -> 10      0 1 2 3 3 4 5 6 7 7 (LLaMA-Pro: a copy after every 4)   4, 9
    interpose: {skip_first: 1, skip_last: 1}   6 -> 10   0 1 1 2 2 3 3 4 4 5         2, 4, 6, 8

A map that cannot be built (a source outside the parent, a wrong length, ``drop`` >= the parent's
depth, ...) is a :class:`GrowthError`: one line, raised before anything is built or trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.errors import UserError


class GrowthError(UserError, ValueError):
    """A growth request that cannot be carried out (a layer map that does not fit the parent and the child,
    mismatched shapes, ...). One line; models.growth raises it too."""


class Solar(BaseModel):
    """``growth.solar``: depth up-scaling (Kim et al. 2023, SOLAR 10.7B): two copies of the parent, the last
    ``drop`` blocks of the first and the first ``drop`` of the second left out, so 32 -> 2 * (32 - 8) = 48."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop: int = Field(ge=0)  # blocks dropped at the seam from each copy; below the parent's depth


class Interpose(BaseModel):
    """``growth.interpose``: each parent block followed by its copy, except the first ``skip_first`` and the last
    ``skip_last`` blocks (edge layers are kept single, as in recent MoE growth that duplicates layers in place)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skip_first: int = Field(0, ge=0)  # leading blocks not duplicated
    skip_last: int = Field(0, ge=0)  # trailing blocks not duplicated


@dataclass(frozen=True)
class LayerMap:
    sources: tuple[int, ...]  # child block j <- parent block sources[j]
    new: tuple[bool, ...]  # child block j is an added copy (identity zeroes it, masked gates it)

    @property
    def new_blocks(self) -> list[int]:
        return [j for j, is_new in enumerate(self.new) if is_new]

    def describe(self) -> str:
        """The map as people read it (tags, cards): ``0 1 2 3 3* 4 5 6 7 7*``, new copies starred."""
        return " ".join(f"{s}*" if n else str(s) for s, n in zip(self.sources, self.new))


def _depth_ratio(parent_layers: int, child_layers: int, what: str) -> int:
    if child_layers % parent_layers:
        raise GrowthError(
            f"cannot {what} {parent_layers} layers into {child_layers}: "
            f"the target depth must be a multiple of {parent_layers} (growth.layers takes any depth)"
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


def solar_plan(parent_layers: int, drop: int) -> list[int]:
    """SOLAR: blocks 0 .. L-drop-1, then drop .. L-1."""
    if drop >= parent_layers:
        raise GrowthError(f"growth.solar.drop {drop} must be below the parent's depth {parent_layers}")
    return list(range(parent_layers - drop)) + list(range(drop, parent_layers))


def every_plan(parent_layers: int, period: int) -> list[int]:
    """LLaMA-Pro block expansion: after every ``period`` blocks, a copy of the block just before."""
    if period > parent_layers:
        raise GrowthError(f"growth.every {period} exceeds the parent's depth {parent_layers}: no block would be added")
    out: list[int] = []
    for i in range(parent_layers):
        out += [i, i] if (i + 1) % period == 0 else [i]
    return out


def interpose_plan(parent_layers: int, skip_first: int, skip_last: int) -> list[int]:
    """Each block duplicated in place, except the first ``skip_first`` and the last ``skip_last``."""
    if skip_first + skip_last >= parent_layers:
        raise GrowthError(
            f"growth.interpose skips {skip_first} + {skip_last} of the parent's {parent_layers} blocks: "
            "at least one must be duplicated"
        )
    inner = range(skip_first, parent_layers - skip_last)
    return [j for i in range(parent_layers) for j in ([i, i] if i in inner else [i])]


def check_sources(sources: Sequence[int], parent_layers: int, child_layers: int, what: str) -> None:
    """GrowthError unless ``sources`` names ``child_layers`` blocks, each one of the parent's."""
    if len(sources) != child_layers:
        raise GrowthError(f"{what} makes {len(sources)} layers from {parent_layers}, but n_layers is {child_layers}")
    outside = sorted({s for s in sources if not 0 <= s < parent_layers})
    if outside:
        raise GrowthError(f"{what} names parent blocks {outside}, but the parent has blocks 0..{parent_layers - 1}")


def make_map(sources: Sequence[int], new: Sequence[int] | None, child_layers: int) -> LayerMap:
    """The LayerMap of ``sources``; ``new`` (child indices) overrides the rule "every copy after the first"."""
    if new is not None:
        outside = sorted({j for j in new if not 0 <= j < child_layers})
        if outside:
            raise GrowthError(
                f"growth.new names child blocks {outside}, but the child has blocks 0..{child_layers - 1}"
            )
        return LayerMap(tuple(sources), tuple(j in set(new) for j in range(len(sources))))
    flags, seen = [], set()
    for s in sources:  # the first copy of a parent block is the original, later copies are new
        flags.append(s in seen)
        seen.add(s)
    return LayerMap(tuple(sources), tuple(flags))


# ---- what trains after growth (growth.freeze) ---------------------------------------------------


class Freeze(BaseModel):
    """``growth.freeze`` as a mapping: which parts stay as the parent left them (LLaMA-Pro #21, LlamaFactory
    #7558: train the new blocks and the head, or only some blocks). ``freeze: parent`` is
    ``{blocks: parent, embeddings: true, head: true}``; ``freeze: none`` freezes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # parent: every block that is not a new copy; none: no block; or the child blocks to freeze, by index
    blocks: Literal["parent", "none"] | tuple[int, ...] = "parent"
    embeddings: bool = False  # true: the token (and position) embeddings stay; with tied embeddings, the shared matrix
    head: bool = False  # true: the final norm and the output head stay


@dataclass(frozen=True)
class Trainable:
    """What trains in a grown stage; everything else gets no gradient and no optimizer state."""

    blocks: tuple[int, ...]  # child block indices
    embeddings: bool
    head: bool

    def describe(self) -> str:
        """For the version's ``trained`` tag and card: ``blocks 4 9; embeddings``."""
        parts = [f"blocks {' '.join(map(str, self.blocks))}" if self.blocks else "no blocks"]
        return "; ".join(parts + [p for p, on in (("embeddings", self.embeddings), ("head", self.head)) if on])


def describe_freeze(freeze: str | Freeze) -> str:
    """``growth.freeze`` as one short string (the version's ``freeze`` tag): ``parent``, or the mapping's fields."""
    if isinstance(freeze, str):
        return freeze
    blocks = freeze.blocks if isinstance(freeze.blocks, str) else " ".join(map(str, freeze.blocks))
    return f"blocks {blocks}; embeddings {str(freeze.embeddings).lower()}; head {str(freeze.head).lower()}"


def trainable(freeze: str | Freeze, lmap: LayerMap) -> Trainable | None:
    """The parts that train under ``freeze`` after growth along ``lmap``; None: everything (``freeze: none``)."""
    if freeze == "none":
        return None
    f = Freeze(embeddings=True, head=True) if freeze == "parent" else freeze
    n = len(lmap.sources)
    if f.blocks == "parent":
        frozen = {j for j in range(n) if not lmap.new[j]}
    elif f.blocks == "none":
        frozen = set()
    else:
        outside = sorted({j for j in f.blocks if not 0 <= j < n})
        if outside:
            raise GrowthError(f"growth.freeze.blocks names child blocks {outside}, but the child has blocks 0..{n - 1}")
        frozen = set(f.blocks)
    out = Trainable(tuple(j for j in range(n) if j not in frozen), not f.embeddings, not f.head)
    if not (out.blocks or out.embeddings or out.head):
        raise GrowthError(f"growth.freeze {describe_freeze(freeze)} freezes everything: nothing would train")
    return out
