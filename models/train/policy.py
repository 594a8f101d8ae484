"""Per-stage policies around growth: the learning rate across stages and when a stage ends.

    stages.<i>.schedule  {policy: restart | continue | rewarm, rewarm_steps, shape: cosine | wsd, decay_fraction}
    stages.<i>.until     {tokens} or {loss_slope: {threshold, window, max_steps}}; neither = stages.<i>.steps

Learning rates are multipliers on the peak LR. ``continue`` and ``rewarm`` read one schedule laid
over the whole pipeline (warmup, then the shape over the planned total steps of all stages) at the
stage's *global* step, which the stage learns from its parent (``ModelRef.global_step``).

The *shape* after the warmup is ``cosine`` (decay to ``min_lr_ratio`` over all remaining steps) or
``wsd``, warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024): the peak LR held
constant, then a linear decay to ``min_lr_ratio`` over the last ``decay_fraction`` of the steps.
Under ``continue`` the small stages of a pipeline then train at the constant peak LR and only the
last stretch of the final stage decays, wherever the growth points fall.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The most one stage may ask for: a budget beyond these is a typo that would train for ever.
MAX_STEPS = 10**9
MAX_TOKENS = 10**12


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleConfig(_Strict):
    # restart: this stage's own warmup + cosine over its own steps (each stage starts over; the default)
    # continue: the pipeline schedule from the stage's global step, as if no growth had happened
    # rewarm: a linear warmup over rewarm_steps multiplied onto `continue` (Adam's moments re-settle)
    policy: Literal["restart", "continue", "rewarm"] = "restart"
    rewarm_steps: int = Field(20, ge=1)
    # after the warmup: cosine decay over all remaining steps, or wsd: constant, then a linear decay at the end
    shape: Literal["cosine", "wsd"] = "cosine"
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: the share of the steps (of the curve's span) that decays


class LossSlope(_Strict):
    """Grow when validation loss improves by less than ``threshold`` nats per step (Shen et al. 2022)."""

    threshold: float = Field(gt=0)  # nats per step
    window: int = Field(3, ge=2)  # evaluations (eval_every apart) the improvement is measured over
    max_steps: int = Field(ge=1, le=MAX_STEPS)  # the stage ends here at the latest


class UntilConfig(_Strict):
    # train bytes; rounded up to whole steps of batch_size x context
    tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    loss_slope: LossSlope | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> UntilConfig:
        if self.tokens is not None and self.loss_slope is not None:
            raise ValueError("set one of until.tokens and until.loss_slope, not both")
        return self


def step_cap(steps: int | None, until: UntilConfig, tokens_per_step: int) -> int:
    """The most steps a stage may train: its steps budget, its tokens budget, or the slope rule's cap."""
    if until.tokens is not None:
        return math.ceil(until.tokens / tokens_per_step)
    if until.loss_slope is not None:
        return until.loss_slope.max_steps
    assert steps is not None
    return steps


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier at ``step`` (0-based): linear warmup, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_stable_decay(step: int, warmup: int, total: int, min_ratio: float, decay_fraction: float) -> float:
    """Multiplier at ``step`` (0-based): linear warmup, the peak held, then a linear decay to ``min_ratio``
    over the last ``decay_fraction`` of ``total`` steps (reached at step ``total - 1``, held after it)."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = wsd_decay_start(total, decay_fraction)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / (total - decay_start))
    return 1.0 - (1.0 - min_ratio) * progress


def wsd_decay_start(total: int, decay_fraction: float) -> int:
    """The first step of warmup-stable-decay's decay over ``total`` steps."""
    return total - max(1, round(decay_fraction * total))


def growth_in_decay(cfg: ScheduleConfig, start: int, total: int) -> str | None:
    """Why a stage grown at global step ``start`` is refused, or None: under one WSD curve over the pipeline
    (``continue``/``rewarm``) every growth must fall in the stable phase, so that only the final stage decays."""
    if cfg.policy == "restart" or cfg.shape != "wsd":
        return None
    decay = wsd_decay_start(total, cfg.decay_fraction)
    if start <= decay:  # at ``decay`` the whole decay is the final stage's
        return None
    return (
        f"the growth at global step {start} falls in the WSD decay (steps {decay}-{total} of {total}, "
        f"decay_fraction {cfg.decay_fraction}): grow inside the stable phase, e.g. a smaller decay_fraction"
    )


def lr_schedule(
    cfg: ScheduleConfig, *, warmup: int, min_ratio: float, stage_steps: int, start: int, total: int
) -> Callable[[int], float]:
    """Multiplier as a function of the step within this stage (0-based).

    start: the stage's first global step; total: planned steps of the whole pipeline.
    """
    curve = warmup_cosine if cfg.shape == "cosine" else partial(warmup_stable_decay, decay_fraction=cfg.decay_fraction)
    if cfg.policy == "restart":
        return lambda t: curve(t, warmup, stage_steps, min_ratio)
    if cfg.policy == "continue":
        return lambda t: curve(start + t, warmup, total, min_ratio)
    return lambda t: min(1.0, (t + 1) / cfg.rewarm_steps) * curve(start + t, warmup, total, min_ratio)


def slope_stop(rule: LossSlope | None) -> Callable[[list[tuple[int, float]]], bool]:
    """A predicate on the validation curve [(step, loss), ...]: True when the stage should end."""

    def stop(curve: list[tuple[int, float]]) -> bool:
        if rule is None or len(curve) < rule.window:
            return False
        (s0, v0), (s1, v1) = curve[-rule.window], curve[-1]
        return (v0 - v1) / (s1 - s0) < rule.threshold

    return stop
