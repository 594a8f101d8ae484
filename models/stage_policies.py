"""train()'s policy arguments for one stage, from its configs: the one place that turns a stage's
schedule, growth and stop rule into ``lr_mult``, ``ramp`` and ``stop``. Used by the Prefect stage
task (tasks/stage.py) and the benchmark (bench/runner.py), so both train a stage the same way.

(A module of its own because models.policy is imported by models.train, which defines GateRamp.)
"""

from __future__ import annotations

from models.growth import GrowthConfig, layer_map
from models.policy import ScheduleConfig, UntilConfig, lr_schedule, slope_stop
from models.train import GateRamp, TrainConfig


def train_policies(
    train: TrainConfig,
    schedule: ScheduleConfig,
    growth: GrowthConfig,
    until: UntilConfig,
    *,
    parent_layers: int | None,
    child_layers: int,
    start: int = 0,
    total: int | None = None,
) -> dict:
    """``{lr_mult, ramp, stop}`` for train().

    parent_layers: None for the first stage (nothing was grown: no gate ramp).
    start: the stage's first global step; total: planned steps of all stages (``continue``/``rewarm`` read them).
    """
    lr_mult = lr_schedule(
        schedule,
        warmup=train.warmup_steps,
        min_ratio=train.min_lr_ratio,
        stage_steps=train.steps,
        start=start,
        total=total or train.steps,
    )
    ramp = None
    if parent_layers is not None and growth.operator == "masked":
        ramp = GateRamp(blocks=layer_map(growth, parent_layers, child_layers).new_blocks, steps=growth.ramp_steps)
    return {"lr_mult": lr_mult, "ramp": ramp, "stop": slope_stop(until.loss_slope)}
