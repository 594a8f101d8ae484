"""What train() does besides stepping AdamW: a typed stage plan and the starting point.

    StagePlan   LR multiplier per step, masked growth's gate ramp, the stop rule, the new blocks' LR warmup
    Start       data cursor, seed, Adam moments carried across growth, or a checkpoint to resume
    Hooks       progress callback, checkpoint callback and its cadence (the only way out of the loop)

:func:`stage_plan` turns a stage's configs (schedule, growth, stop rule) into a StagePlan: the one
place that does, used by the stage driver (tasks/driver.py) for the Prefect task and the benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.families.lookup import family_of
from models.growth import GrowthConfig, layer_map
from models.layermap import Trainable, trainable
from models.train.policy import ScheduleConfig, UntilConfig, lr_schedule, slope_stop, warmup_cosine

StateDict = dict[str, torch.Tensor]
Curve = list[tuple[int, float]]  # (step, loss)


@dataclass(frozen=True)
class GateRamp:
    """Masked growth: the gates of ``blocks`` rise linearly from 0 (step 1) to 1 (step ``steps`` + 1)."""

    blocks: list[int]
    steps: int

    def gate(self, step: int) -> float:
        """Gate used by training step ``step`` (1-based); step 0 is the evaluation before training."""
        return min(1.0, max(0, step - 1) / self.steps)

    def apply(self, model, step: int) -> None:
        family = family_of(model)
        for j in self.blocks:
            family.set_gate(model, j, self.gate(step))


@dataclass(frozen=True)
class NewWarmup:
    """growth.new_warmup_steps: the LR of the new ``blocks``' parameters rises linearly to the schedule's over
    ``steps`` (multiplier (t + 1) / steps at 0-based step t); every other parameter follows the schedule."""

    blocks: list[int]
    steps: int

    def mult(self, step: int) -> float:
        return min(1.0, (step + 1) / self.steps)


def _never(curve: Curve) -> bool:
    return False


@dataclass(frozen=True)
class StagePlan:
    """How one stage trains, apart from the optimizer's own settings (TrainConfig).

    lr_mult: step within the stage (0-based) -> multiplier on the peak LR; None: warmup + cosine
    over the stage (models.train.policy.warmup_cosine with the TrainConfig's warmup and min ratio).
    """

    lr_mult: Callable[[int], float] | None = None
    ramp: GateRamp | None = None  # masked growth; its gates are folded into the weights at the end
    trainable: Trainable | None = None  # growth.freeze: only these blocks (and embeddings, head) train; None: all
    stop: Callable[[Curve], bool] = _never  # on the validation curve after each evaluation: True ends the stage
    new_warmup: NewWarmup | None = None  # the new blocks' own LR warmup after growth


@dataclass
class TrainState:
    """Everything needed to continue a stage after step ``step`` exactly as if it had never stopped.

    The weights are not here: they live in the model the caller holds. The LR schedule needs no
    state of its own: it is a function of the step.
    """

    step: int  # steps done in this stage
    cursor: int  # train sequences consumed (models/data/bytes.py)
    moments: StateDict  # AdamW state (models.train.optim layout)
    rng: dict[str, object]  # models.train.loop.rng_state(): torch, numpy and python generators
    val_loss_init: float
    val_loss: float
    train_curve: Curve
    val_curve: Curve
    cursors: dict[str, int] | None = None  # a mixture's per-source cursors at ``cursor`` (models/data/mixture.py)


@dataclass(frozen=True)
class Start:
    """Where a stage starts: a fresh stream position, or a checkpoint (``resume``) that holds its own."""

    cursor: int = 0  # the parent's end cursor: no sequence is replayed within an epoch
    seed: int = 0  # seeds the training RNGs (dropout) at the stage's first step
    moments: StateDict | None = None  # AdamW state grown from the parent (optimizer transfer); None: fresh
    resume: TrainState | None = None  # continue from this state (the model already holds its weights)


@dataclass(frozen=True)
class StepInfo:
    step: int  # 1-based, within the stage
    steps: int
    train_loss: float
    lr: float
    val_loss: float | None  # set on evaluation steps
    tokens_per_s: float = 0.0  # trained tokens per second of the stage so far (hooks excluded)


@dataclass(frozen=True)
class Hooks:
    """Callbacks out of the loop; on rank 0 only under torchrun. An exception raised by one ends training."""

    on_step: Callable[[StepInfo], None] | None = None
    on_checkpoint: Callable[[TrainState], None] | None = None  # every ``checkpoint_every`` steps and at the end
    checkpoint_every: int = 0  # 0: never


def stage_plan(
    *,
    warmup: int,
    min_lr_ratio: float,
    steps: int,
    schedule: ScheduleConfig,
    growth: GrowthConfig,
    until: UntilConfig,
    parent_layers: int | None,
    child_layers: int,
    start: int = 0,
    total: int | None = None,
) -> StagePlan:
    """The StagePlan of a stage.

    parent_layers: None for the first stage (nothing was grown: no gate ramp).
    start: the stage's first global step; total: planned steps of all stages (``continue``/``rewarm`` read them).
    """
    lr_mult = lr_schedule(
        schedule, warmup=warmup, min_ratio=min_lr_ratio, stage_steps=steps, start=start, total=total or steps
    )
    ramp, trains = None, None
    if parent_layers is not None and growth.operator == "masked":
        ramp = GateRamp(blocks=layer_map(growth, parent_layers, child_layers).new_blocks, steps=growth.ramp_steps)
    if parent_layers is not None and growth.freeze != "none":  # e.g. LLaMA-Pro: the parent's blocks stay as they were
        trains = trainable(growth.freeze, layer_map(growth, parent_layers, child_layers))
    new_warmup = None
    if parent_layers is not None and growth.new_warmup_steps and growth.operator != "width":
        new_warmup = NewWarmup(layer_map(growth, parent_layers, child_layers).new_blocks, growth.new_warmup_steps)
    return StagePlan(
        lr_mult=lr_mult, ramp=ramp, trainable=trains, stop=slope_stop(until.loss_slope), new_warmup=new_warmup
    )


def default_lr(warmup: int, steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warmup + cosine over the stage: what a StagePlan without ``lr_mult`` uses."""
    return lambda step: warmup_cosine(step, warmup, steps, min_lr_ratio)
