"""AdamW and its state as a plain, parameter-name-keyed tensor dict, so growth operators can map it.

    exp_avg.<param name>     first moment, same shape as the parameter
    exp_avg_sq.<param name>  second moment
    step                     scalar: Adam steps taken (bias correction continues from here)

Saved next to the weights as ``optimizer.safetensors`` (tasks/store/model_dir.py); never pickled.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from models.errors import UserError

StateDict = dict[str, torch.Tensor]


class OptimizerConfig(BaseModel):
    """``stages.<i>.optimizer``: what AdamW starts from after growth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: Literal["reset", "transfer"] = "reset"  # reset: fresh AdamW (StackingBERT); transfer: mapped moments


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, beta2: float, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, as in nanoGPT; ``fused``: one kernel per step (CUDA only).
    Frozen parameters (``requires_grad`` False, growth.freeze) are left out: no state is ever kept for them."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2), fused=fused or None)


def export_moments(model: nn.Module, optimizer: torch.optim.Optimizer) -> StateDict:
    """The optimizer's moments by parameter name; a parameter never stepped gets zeros (= a fresh start)."""
    out: StateDict = {}
    step = 0.0
    for name, p in model.named_parameters():
        st = optimizer.state.get(p, {})
        out[f"exp_avg.{name}"] = st["exp_avg"].detach().to("cpu").clone() if st else torch.zeros_like(p, device="cpu")
        out[f"exp_avg_sq.{name}"] = (
            st["exp_avg_sq"].detach().to("cpu").clone() if st else torch.zeros_like(p, device="cpu")
        )
        step = max(step, float(st["step"])) if st else step
    out["step"] = torch.tensor(step, dtype=torch.float64)
    return out


class MomentsMismatch(UserError, ValueError):
    """Moments that do not fit the model; the message says which keys or shapes differ. One line."""


def check_moments(model: nn.Module, moments: StateDict) -> None:
    """MomentsMismatch unless ``moments`` has every parameter's two moments in its shape, a step, nothing else."""
    params = dict(model.named_parameters())
    want = {f"{k}.{n}" for n in params for k in ("exp_avg", "exp_avg_sq")} | {"step"}
    problems = [f"missing {k}" for k in sorted(want - moments.keys())] + [
        f"unexpected {k}" for k in sorted(moments.keys() - want)
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
    A frozen parameter's moments are checked, not installed (it is not in the optimizer)."""
    check_moments(model, moments)
    step = torch.tensor(float(moments["step"]), dtype=torch.float32)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        optimizer.state[p] = {
            "step": step.clone(),
            "exp_avg": moments[f"exp_avg.{name}"].to(device=p.device, dtype=p.dtype).clone(),
            "exp_avg_sq": moments[f"exp_avg_sq.{name}"].to(device=p.device, dtype=p.dtype).clone(),
        }
