"""One arm through the stage driver on the tiny preset: growth operators, Adam-moment transfer and LR
policies behave across the boundaries as the pipeline's stages do (bench/suite/runner.py)."""

from __future__ import annotations

import math

import pytest

from bench.suite.presets import PRESETS
from bench.suite.runner import run_arm
from bench.suite.spec import ArmStage, HParams, Schedule, budget, pipeline_config
from models.data.bytes import ByteCorpus

HP = HParams(lr=3e-3, warmup=0.1, shape="cosine", decay=0.2)
MASKED = {"growth": {"operator": "masked", "ramp_steps": 3}, "optimizer": "transfer", "schedule": "continue"}


def _schedule(name: str, **later) -> Schedule:
    """3 -> 6 -> 12 on the tiny model, ``later`` (growth, optimizer, schedule) set on the grown stages."""
    first = ArmStage(n_layers=3, share=0.5, schedule=later.get("schedule", "restart"))
    return Schedule(name=name, stages=[first, *[ArmStage(n_layers=n, share=0.5, **later) for n in (6, 12)]])


def _arm(schedule: Schedule, **overrides):
    preset = PRESETS["tiny"].model_copy(update=overrides)
    b = budget(preset, preset.budgets[0])
    return run_arm(preset, schedule, ByteCorpus(preset.data, preset.model.context, 1), 1, HP, b)


def _across_growth(arm) -> list[tuple[float, float]]:
    """(last val loss before growth, first val loss after it) for each growth."""
    return [
        (
            max((p for p in arm.points if p.stage == k - 1), key=lambda p: p.step).val_loss,
            min((p for p in arm.points if p.stage == k), key=lambda p: p.step).val_loss,
        )
        for k in range(2, len(arm.boundaries) + 1)
    ]


def test_masked_growth_with_moment_transfer_and_one_lr_curve_runs_end_to_end():
    arm = _arm(_schedule("masked", **MASKED))
    assert [b["n_layers"] for b in arm.boundaries] == [3, 6, 12] and [b["stage"] for b in arm.boundaries] == [1, 2, 3]
    assert {p.stage for p in arm.points} == {1, 2, 3} and all(math.isfinite(p.val_loss) for p in arm.points)
    assert [p.step for p in arm.points] == sorted(p.step for p in arm.points)  # global steps run on across stages
    assert arm.boundaries[1]["tokens"] > 0 and arm.boundaries[2]["seconds"] >= arm.boundaries[1]["seconds"]
    assert arm.model is not None and arm.model.cfg.n_layers == 12


def test_function_preserving_growth_keeps_the_loss_across_the_boundary_and_stack_does_not():
    for name, later in (("identity", {"growth": "identity"}), ("masked", MASKED)):
        for before, after in _across_growth(_arm(_schedule(name, **later))):
            assert after == pytest.approx(before, abs=1e-5), name
    assert any(abs(after - before) > 1e-3 for before, after in _across_growth(_arm(_schedule("stack"))))


def test_transferred_moments_change_the_first_steps_after_growth():
    budget_ = {"evals_per_run": 100}  # an eval every step
    reset, transfer = _arm(_schedule("reset"), **budget_), _arm(_schedule("transfer", optimizer="transfer"), **budget_)
    stage = lambda arm, k: [(p.step, p.val_loss) for p in arm.points if p.stage == k]  # noqa: E731
    assert stage(reset, 1) == stage(transfer, 1)  # the same run until the first growth...
    assert stage(reset, 2)[0] == stage(transfer, 2)[0]  # ...and the same grown weights
    assert stage(reset, 2)[1][1] != pytest.approx(stage(transfer, 2)[1][1], abs=1e-6)  # one step on: not the same


def test_policies_reach_the_prefect_pipeline_unchanged():
    preset = PRESETS["tiny"]
    specs = pipeline_config(preset, _schedule("masked", **MASKED), 0, "bench-test", HP, 12).stage_specs()
    assert [(s.growth.operator, s.optimizer.state, s.schedule.policy) for s in specs[1:]] == [
        ("masked", "transfer", "continue")
    ] * 2
    assert specs[1].growth.ramp_steps == 3 and specs[2].total_steps == 18
