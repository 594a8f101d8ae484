"""AdamW and its state as a plain, parameter-name-keyed tensor dict, so growth operators can map it.

    exp_avg.<param name>     first moment, same shape as the parameter
    exp_avg_sq.<param name>  second moment
    step                     scalar: Adam steps taken, the most of any parameter (bias correction continues here)
    step.<param name>        scalar, only where a parameter's own step differs from ``step``: e.g. 0 for a
                             block added by growth, which starts with no state at all (a fresh AdamW's first
                             update, true bias correction) while carried parameters keep counting

Saved next to the weights as ``optimizer.safetensors`` (tasks/store/model_dir.py); never pickled.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from models.errors import UserError
from models.families.depth_mup import block_lr_factor
from models.families.lookup import family_of
from models.growth_moments import param_steps, step_entries

StateDict = dict[str, torch.Tensor]


class OptimizerConfig(BaseModel):
    """``stages.<i>.optimizer``: what AdamW starts from after growth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["reset", "transfer"] = "reset"  # reset: fresh AdamW (StackingBERT); transfer: mapped moments


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, beta2: float, fused: bool = False, new_blocks=()
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, as in nanoGPT; ``fused``: one kernel per step (CUDA only).

    Each group carries ``lr_scale`` (its LR over the peak: depth-muP's block-weight LR, models/families/depth_mup.py)
    and ``new`` (the parameters of ``new_blocks``, whose LR ramps in: growth.new_warmup_steps). Plain: two groups.
    Frozen parameters (``requires_grad`` False, growth.freeze) are left out: no state is ever kept for them."""
    prefix = family_of(model).layout.block_prefix
    new = tuple(f"{prefix}{j}." for j in new_blocks)
    factor = block_lr_factor(model.cfg.depth_mup, model.cfg.n_layers)
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = factor if name.startswith(prefix) else 1.0
        groups.setdefault((p.dim() >= 2, scale, bool(new) and name.startswith(new)), []).append(p)
    ordered = sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][2], -kv[0][1]))  # decay first, as before
    param_groups = [
        {"params": ps, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale, "new": is_new}
        for (decay, scale, is_new), ps in ordered
    ]
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, beta2), fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, new_mult: float = 1.0) -> None:
    """Every group's LR: the schedule's ``lr`` times the group's scale, and ``new_mult`` for the new blocks."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] * (new_mult if group["new"] else 1.0)


def export_moments(model: nn.Module, optimizer: torch.optim.Optimizer) -> StateDict:
    """The optimizer's moments by parameter name; a parameter never stepped gets zeros and step 0 (a fresh start)."""
    out: StateDict = {}
    steps: dict[str, float] = {}
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        out[f"exp_avg.{name}"] = st["exp_avg"].detach().to("cpu").clone() if st else torch.zeros_like(p, device="cpu")
        out[f"exp_avg_sq.{name}"] = (
            st["exp_avg_sq"].detach().to("cpu").clone() if st else torch.zeros_like(p, device="cpu")
        )
        steps[name] = float(st["step"]) if st else 0.0
    return {**out, **step_entries(steps)}


class MomentsMismatch(UserError, ValueError):
    """Moments that do not fit the model; the message says which keys or shapes differ. One line."""


def check_moments(model: nn.Module, moments: StateDict) -> None:
    """MomentsMismatch unless ``moments`` has every parameter's two moments in its shape, a step, nothing else."""
    params = dict(model.named_parameters())
    want = {f"{k}.{n}" for n in params for k in ("exp_avg", "exp_avg_sq")} | {"step"}
    optional = {f"step.{n}" for n in params}
    problems = [f"missing {k}" for k in sorted(want - moments.keys())] + [
        f"unexpected {k}" for k in sorted(moments.keys() - want - optional)
    ]
    problems += [
        f"{k} is {tuple(v.shape)}, parameter is {tuple(params[k.split('.', 1)[1]].shape)}"
        for k, v in moments.items()
        if k != "step" and k in want and v.shape != params[k.split(".", 1)[1]].shape
    ]
    if problems:
        raise MomentsMismatch(f"optimizer moments do not match the model: {'; '.join(problems[:3])}")


def load_moments(model: nn.Module, optimizer: torch.optim.Optimizer, moments: StateDict) -> None:
    """Install ``moments`` as the optimizer's state, strictly: every parameter, right shapes, nothing extra.
    A parameter at step 0 gets no state: AdamW starts it afresh at its first step. A frozen parameter's moments are
    checked, not installed (it is not in the optimizer)."""
    check_moments(model, moments)
    steps = param_steps(moments, dict(model.named_parameters()))
    for name, p in model.named_parameters():
        if steps[name] == 0 or not p.requires_grad:
            optimizer.state.pop(p, None)
            continue
        optimizer.state[p] = {
            "step": torch.tensor(steps[name], dtype=torch.float32),
            "exp_avg": moments[f"exp_avg.{name}"].to(device=p.device, dtype=p.dtype).clone(),
            "exp_avg_sq": moments[f"exp_avg_sq.{name}"].to(device=p.device, dtype=p.dtype).clone(),
        }
