"""The benchmark's arithmetic on hand-made curves, and its machinery end to end on a tiny preset.
No timing assertions: timings on a shared machine are noise; only their bookkeeping is tested."""

from __future__ import annotations

import json
import math

import pytest

from bench.curves import Point, ratio, spread, time_to_target
from bench.main import build_preset, run_bench, summarise
from bench.schedules import SCHEDULES
from bench.spec import PRESETS, pipeline_config, train_flops_per_token
from models.gpt import GPTConfig


def test_time_to_target_interpolates_between_evals():
    curve = [(0.0, 5.0), (10.0, 3.0), (20.0, 2.0), (30.0, 1.5)]
    assert time_to_target(curve, 2.5) == pytest.approx(15.0)
    assert time_to_target(curve, 2.0) == pytest.approx(20.0)
    assert time_to_target(curve, 6.0) == 0.0  # already there at the first eval
    assert time_to_target(curve, 1.0) is None  # never reached


def test_time_to_target_takes_the_first_crossing_across_a_growth_jump():
    # stage boundary at t=10: loss jumps up after growth, then comes down again
    curve = [(0.0, 5.0), (10.0, 2.9), (10.0, 3.4), (20.0, 2.0)]
    assert time_to_target(curve, 3.0) == pytest.approx(10.0 * (5.0 - 3.0) / (5.0 - 2.9))


def test_ratio_and_spread():
    assert ratio(6.0, 10.0) == pytest.approx(0.6)
    assert ratio(None, 10.0) is None
    s = spread([0.5, 0.7, 0.6])
    assert (s["mean"], s["min"], s["max"], s["reached"]) == (pytest.approx(0.6), 0.5, 0.7, 3)
    assert s["std"] == pytest.approx(0.1)
    missing = spread([0.5, None])
    assert missing["mean"] is None and missing["reached"] == 1 and missing["min"] == 0.5


def test_flops_formula_is_6n_plus_attention():
    cfg = GPTConfig(n_layers=2, d_model=8, n_heads=2, d_ff=32, context=4)
    n = 2 * (4 * 8 * 8 + 2 * 8 * 32) + 8 * 256
    assert train_flops_per_token(cfg) == 6 * n + 6 * 2 * 4 * 8


def _arm(schedule: str, seed: int, curve: list[tuple[float, float]], stages: list[int] | None = None) -> dict:
    stages = stages or [1] * len(curve)
    points = [Point(k, i, t, i * 10, t * 100.0, loss).as_dict() for i, ((t, loss), k) in enumerate(zip(curve, stages))]
    boundaries = [{"stage": k} for k in sorted(set(stages))]
    return {
        "schedule": schedule,
        "seed": seed,
        "points": points,
        "final_val_loss": points[-1]["val_loss"],
        "boundaries": boundaries,
    }


def test_summarise_computes_ratios_per_seed_from_known_curves():
    arms = [
        _arm("scratch", 0, [(0, 5.0), (50, 3.0), (100, 2.0)]),  # target 2.0, reached at t=100
        _arm("plain", 0, [(0, 5.0), (40, 2.5), (60, 1.5)]),  # crosses 2.0 at t=50 -> 0.5
        _arm("scratch", 1, [(0, 5.0), (100, 2.5), (200, 2.0)]),  # target 2.0 at t=200
        _arm("plain", 1, [(0, 5.0), (120, 2.0)]),  # 0.6
        _arm("two-stage", 0, [(0, 5.0), (90, 2.1)]),  # never reaches seed 0's target
        _arm("two-stage", 1, [(0, 5.0), (100, 1.9)]),
    ]
    s = summarise(PRESETS["tiny"], arms)
    assert s["seeds"] == [0, 1] and s["targets"] == [2.0, 2.0]
    plain = s["schedules"]["plain"]
    assert [r["time_ratio"] for r in plain["per_seed"]] == [pytest.approx(0.5), pytest.approx(0.6)]
    assert [r["flops_ratio"] for r in plain["per_seed"]] == [pytest.approx(0.5), pytest.approx(0.6)]
    assert s["best_schedule"] == "plain"  # two-stage missed the target on one seed: it cannot win
    assert s["time_to_target_ratio"] == pytest.approx(0.55)
    assert s["schedules"]["two-stage"]["time_to_target_ratio"]["mean"] is None


def test_only_the_final_architecture_counts():
    arms = [
        _arm("scratch", 0, [(0, 5.0), (100, 2.0)]),
        # the 2nd stage (a smaller model) dips below 2.0 at t=40; the final stage gets there at t=80
        _arm("plain", 0, [(0, 5.0), (40, 1.9), (40, 2.4), (80, 2.0)], stages=[1, 1, 2, 2]),
    ]
    row = summarise(PRESETS["tiny"], arms)["schedules"]["plain"]["per_seed"][0]
    assert row["time_ratio"] == pytest.approx(0.8) and row["reached_before_final_stage"]


def test_stage_steps_are_shares_of_the_scratch_budget():
    preset = PRESETS["quick"]
    plan = SCHEDULES["front-loaded-hilr"].stages[0]
    cfg = pipeline_config(preset, SCHEDULES["front-loaded-hilr"], 0, "bench-test").stage_specs()[0].train
    assert cfg.steps == round(plan.share * preset.scratch_steps) and cfg.lr == 4e-3


def test_schedule_maps_onto_the_prefect_pipeline_config():
    preset = PRESETS["quick"]
    cfg = pipeline_config(preset, SCHEDULES["front-loaded-hilr"], seed=3, model_name="bench-test")
    specs = cfg.stage_specs()
    assert [s.model.n_layers for s in specs] == [3, 6, 12]
    assert [s.train.steps for s in specs] == [96, 72, 120] and specs[0].train.lr == 4e-3 and specs[2].train.lr == 2e-3


def test_bench_runs_end_to_end_on_a_tiny_preset(tmp_path):
    preset = build_preset("tiny", None, "0,1", ["scratch_steps=8"])
    summary = run_bench(preset, tmp_path, flow=False, publish_artifacts=False, log=lambda *_: None)
    for key in (
        "time_to_target_ratio",
        "flops_to_target_ratio",
        "seeds",
        "throughput_ratio_vs_bare_loop",
        "orchestration_overhead_fraction",
        "mfu",
        "schedules",
    ):
        assert key in summary
    assert summary["seeds"] == [0, 1] and len(summary["schedules"]["tiny"]["per_seed"]) == 2
    arms = [a for a in summary["arms"] if a["schedule"] == "tiny"]
    assert all(len(a["boundaries"]) >= 1 for a in arms)
    for arm in summary["arms"]:  # clocks, tokens and FLOPs only move forward
        for key in ("seconds", "tokens", "flops"):
            xs = [p[key] for p in arm["points"]]
            assert xs == sorted(xs)
    assert summary["mfu"] > 0 and math.isfinite(summary["throughput_ratio_vs_bare_loop"])
    written = json.loads((tmp_path / "bench-tiny.json").read_text())
    assert written["schedules"].keys() == summary["schedules"].keys()
    assert (tmp_path / "bench-tiny.png").stat().st_size > 0 and "time-to-target" in (
        tmp_path / "bench-tiny.md"
    ).read_text()


def test_unknown_schedule_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown schedules"):
        build_preset("quick", "nope", None, [])


def test_baseline_variants_train_on_top_of_the_tuned_scratch_settings():
    from bench.spec import scratch_schedule

    preset = PRESETS["quick"]
    assert scratch_schedule(preset).stages[0].train.model_dump(exclude_none=True) == preset.scratch_train
    variant = SCHEDULES["scratch-lr0.006"]
    assert variant.baseline and variant.stages[0].train.model_dump(exclude_none=True) == {"lr": 6e-3}
    (spec,) = pipeline_config(preset, variant, 0, "bench-test").stage_specs()
    assert spec.train.lr == 6e-3 and spec.train.warmup_steps == preset.scratch_train["warmup_steps"]


def _tiny_arm(schedule: str, **overrides):
    from bench.runner import run_arm
    from models.data import ByteCorpus

    preset = build_preset("tiny", None, "0", [f"{k}={v}" for k, v in overrides.items()])
    return run_arm(preset, SCHEDULES[schedule], ByteCorpus(preset.data, preset.model.context, 0), 0)


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
    arm = _tiny_arm("tiny-msg")
    assert [b["n_layers"] for b in arm.boundaries] == [1, 2, 4] and [b["stage"] for b in arm.boundaries] == [1, 2, 3]
    assert {p.stage for p in arm.points} == {1, 2, 3} and all(math.isfinite(p.val_loss) for p in arm.points)
    assert [p.step for p in arm.points] == sorted(p.step for p in arm.points)  # global steps run on across stages
    assert arm.boundaries[1]["tokens"] > 0 and arm.boundaries[2]["seconds"] >= arm.boundaries[1]["seconds"]


def test_function_preserving_growth_keeps_the_loss_across_the_boundary_and_stack_does_not():
    for name in ("tiny-identity", "tiny-msg"):
        for before, after in _across_growth(_tiny_arm(name)):
            assert after == pytest.approx(before, abs=1e-5), name
    assert any(abs(after - before) > 1e-3 for before, after in _across_growth(_tiny_arm("tiny")))


def test_transferred_moments_change_the_first_steps_after_growth():
    reset, transfer = _tiny_arm("tiny", eval_every=1), _tiny_arm("tiny-transfer", eval_every=1)
    stage = lambda arm, k: [(p.step, p.val_loss) for p in arm.points if p.stage == k]  # noqa: E731
    assert stage(reset, 1) == stage(transfer, 1)  # the same run until the first growth...
    assert stage(reset, 2)[0] == stage(transfer, 2)[0]  # ...and the same grown weights
    assert stage(reset, 2)[1][1] != pytest.approx(
        stage(transfer, 2)[1][1], abs=1e-6
    )  # one step later: not the same update


def test_policies_reach_the_prefect_pipeline_unchanged():
    specs = pipeline_config(PRESETS["tiny"], SCHEDULES["tiny-msg"], seed=0, model_name="bench-test").stage_specs()
    assert [(s.growth.operator, s.optimizer.state, s.schedule.policy) for s in specs[1:]] == [
        ("masked", "transfer", "continue")
    ] * 2
    assert specs[1].growth.ramp_steps == 3 and specs[2].total_steps == 18
    width = pipeline_config(PRESETS["quick"], SCHEDULES["width-depth"], seed=0, model_name="bench-test").stage_specs()
    assert [(s.model.n_layers, s.model.d_model) for s in width] == [(3, 32), (6, 32), (6, 64), (12, 64)]


def test_every_schedule_is_a_pipeline_the_flow_accepts():
    for name, schedule in SCHEDULES.items():  # PipelineConfig dry-runs every growth on meta tensors
        preset = PRESETS["tiny" if name.startswith("tiny") else "quick"]
        assert len(pipeline_config(preset, schedule, seed=0, model_name="bench-test").stage_specs()) == len(
            schedule.stages
        )
    assert all(name in SCHEDULES for p in PRESETS.values() for name in p.schedules)
