"""Adam moments across growth: the parent's AdamW state (models.train.optim layout) mapped onto the child.

    mapped = grow_moments(growth_cfg, parent_moments, parent_cfg, child_cfg)

Depth operators map ``exp_avg`` and ``exp_avg_sq`` with the very function that maps the weights (depth-muP's
rescaled writers scaled as their gradients scale); width scales them as the gradients scale. Carried parameters
keep their moments and their own step; every parameter of a block a depth operator added starts with no state
(zero moments, step 0): its first update is a fresh AdamW's, with true bias correction (SPARKLING 2026 resets
new capacity's optimizer state), instead of riding the parent's step and its copy's stale momentum.
``upcycle`` gives every expert its MLP's moments and step, unscaled (Adam's m/sqrt(v) is scale free), and each router
none (zero moments, step 0), like a new block.

Per-parameter steps in the moments layout (models/train/optim.py), shared with the optimizer:

    step               the most steps any parameter has taken
    step.<param name>  only where a parameter's own step differs: 0 for a block growth added (no state yet)
"""

from __future__ import annotations

import torch

from models.families.lookup import ModelConfig, family_of
from models.families.width import WidthError
from models.growth import GrowthConfig, GrowthError, as_config, check_same_family, grow_tensors, layer_map, remap_blocks

StateDict = dict[str, torch.Tensor]


def grow_moments(
    operator: str | GrowthConfig, moments: StateDict, parent: ModelConfig, child: ModelConfig
) -> StateDict:
    """Map AdamW moments (models.train.optim layout: ``exp_avg.<param>``, ``exp_avg_sq.<param>``, ``step``).

    Carried parameters keep their moments and their own step; every parameter of a block added by a depth
    operator starts with no state (zero moments, step 0): its first update is a fresh AdamW's."""
    cfg = as_config(operator)
    out: StateDict = {}
    for power, prefix in ((1, "exp_avg."), (2, "exp_avg_sq.")):
        part = {k.removeprefix(prefix): v for k, v in moments.items() if k.startswith(prefix)}
        if cfg.operator == "upcycle":  # the experts' the MLP's, the router's zero
            grown = grow_tensors(cfg.model_copy(update={"router_std": 0.0, "noise": 0.0}), part, parent, child, -power)
        elif cfg.operator == "width":
            try:
                check_same_family(parent, child)
                grown = family_of(parent).widen_moments(part, parent, child, power)
            except WidthError as e:
                raise GrowthError(str(e)) from None
        else:  # the weights' own function; depth-muP's rescaling as the gradients scale
            grown = grow_tensors(cfg, part, parent, child, exponent=-power)
        out.update({prefix + k: v for k, v in grown.items()})
    steps = _grown_steps(cfg, moments, out, parent, child)  # zeroes new blocks' moments in ``out``
    return {**out, **steps}


def _grown_steps(cfg: GrowthConfig, moments: StateDict, grown: StateDict, parent, child) -> StateDict:
    """Each child parameter's Adam step: its source's, or 0 (and zero moments, set in ``grown``) in a new block."""
    names = [k.removeprefix("exp_avg.") for k in moments if k.startswith("exp_avg.")]
    steps = {n: torch.tensor(s) for n, s in param_steps(moments, names).items()}
    if cfg.operator == "width":
        return step_entries({n: float(s) for n, s in steps.items()})
    if cfg.operator == "upcycle":  # an expert: its MLP's step (the most of gate and up); a router: 0, a fresh start
        sources = family_of(child).upcycled_sources(names)
        return step_entries({n: max((float(steps[s]) for s in src), default=0.0) for n, src in sources.items()})
    lmap, prefix = layer_map(cfg, parent.n_layers, child.n_layers), family_of(parent).layout.block_prefix
    child_steps = {n: float(s) for n, s in remap_blocks(steps, lmap.sources, prefix).items()}
    fresh = tuple(f"{prefix}{j}." for j in lmap.new_blocks)
    for name in child_steps:
        if fresh and name.startswith(fresh):
            child_steps[name] = 0.0
            for kind in ("exp_avg.", "exp_avg_sq."):
                grown[kind + name] = torch.zeros_like(grown[kind + name])
    return step_entries(child_steps)


def step_entries(steps: dict[str, float]) -> StateDict:
    """Per-parameter Adam steps in the layout: ``step`` (the most), ``step.<name>`` where one differs."""
    top = max(steps.values(), default=0.0)
    out = {f"step.{n}": torch.tensor(s, dtype=torch.float64) for n, s in steps.items() if s != top}
    return {"step": torch.tensor(top, dtype=torch.float64), **out}


def param_steps(moments: StateDict, names) -> dict[str, float]:
    """Each parameter's own Adam step: its ``step.<name>``, else ``step``."""
    return {n: float(moments.get(f"step.{n}", moments["step"])) for n in names}
