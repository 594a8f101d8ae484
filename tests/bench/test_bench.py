"""The benchmark's arithmetic on hand-made curves, its protocol's bookkeeping, and its machinery end to end on
the tiny preset. No timing assertions: timings on a shared machine are noise; only their bookkeeping is tested."""

from __future__ import annotations

import json
import math

import pytest

from bench.suite.curves import Point, interval, ratio, time_to_target
from bench.suite.figures import best_schedule, summarise
from bench.suite.presets import PRESETS
from bench.suite.schedules import FIELD, SCHEDULES, gstack, gstack_growth_tokens, resolve
from bench.suite.spec import HParams, Preset, budget, pipeline_config, scratch_schedule, train_flops_per_token
from models.families.gpt import GPTConfig

HP = HParams(lr=3e-3, warmup=0.1, shape="wsd", decay=0.25)


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


def test_ratio_and_interval():
    assert ratio(6.0, 10.0) == pytest.approx(0.6)
    assert ratio(None, 10.0) is None
    s = interval([0.5, 0.7, 0.6])
    assert (s["mean"], s["min"], s["max"], s["reached"]) == (pytest.approx(0.6), 0.5, 0.7, 3)
    assert s["std"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / math.sqrt(3)  # Student t, 2 degrees of freedom, 97.5%
    assert s["ci95"] == pytest.approx([0.6 - half, 0.6 + half], rel=1e-5)
    missing = interval([0.5, None])
    assert missing["mean"] is None and missing["ci95"] is None and missing["reached"] == 1 and missing["min"] == 0.5
    assert interval([0.4])["ci95"] is None  # one seed: no interval


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
        "train_seconds": curve[-1][0],
        "flops": curve[-1][0] * 100.0,
    }


def test_summarise_computes_ratios_per_heldout_seed_from_known_curves():
    arms = [
        _arm("scratch", 1, [(0, 5.0), (50, 3.0), (100, 2.0)]),  # target 2.0, reached at t=100
        _arm("plain", 1, [(0, 5.0), (40, 2.5), (60, 1.5)]),  # crosses 2.0 at t=50 -> 0.5
        _arm("scratch", 2, [(0, 5.0), (100, 2.5), (200, 2.0)]),  # target 2.0 at t=200
        _arm("plain", 2, [(0, 5.0), (120, 2.0)]),  # 0.6
        _arm("late-jump", 1, [(0, 5.0), (90, 2.1)]),  # never reaches seed 1's target
        _arm("late-jump", 2, [(0, 5.0), (100, 1.9)]),
    ]
    s = summarise(arms)
    plain = s["plain"]
    assert [r["flops_ratio"] for r in plain["rows"]] == [pytest.approx(0.5), pytest.approx(0.6)]
    assert plain["flops_ratio"]["per_seed"] == {"1": pytest.approx(0.5), "2": pytest.approx(0.6)}
    assert plain["flops_ratio"]["mean"] == pytest.approx(0.55) and plain["time_ratio"]["mean"] == pytest.approx(0.55)
    assert plain["verdict"].startswith("saves")
    assert s["late-jump"]["flops_ratio"]["mean"] is None and s["late-jump"]["verdict"].startswith("loses: target not")
    assert best_schedule(s) == "plain"  # late-jump missed the target on one seed: it cannot win


def test_a_schedule_that_needs_more_than_scratch_is_reported_as_losing():
    arms = [_arm("scratch", 1, [(0, 5.0), (100, 2.0)]), _arm("plain", 1, [(0, 5.0), (150, 2.0)])]
    assert summarise(arms)["plain"]["verdict"] == "loses: needs at least scratch's FLOPs"


def test_only_the_final_architecture_counts():
    arms = [
        _arm("scratch", 1, [(0, 5.0), (100, 2.0)]),
        # the 2nd stage (a smaller model) dips below 2.0 at t=40; the final stage gets there at t=80
        _arm("plain", 1, [(0, 5.0), (40, 1.9), (40, 2.4), (80, 2.0)], stages=[1, 1, 2, 2]),
    ]
    row = summarise(arms)["plain"]["rows"][0]
    assert row["time_ratio"] == pytest.approx(0.8) and row["reached_before_final_stage"]


def test_budgets_are_tokens_per_parameter_and_span_16x():
    p = PRESETS["budgets"]
    steps = [budget(p, t).scratch_steps for t in p.budgets]
    assert max(p.budgets) / min(p.budgets) >= 16 and len(p.budgets) >= 3 and steps == sorted(steps)
    b = budget(p, 8.0)
    assert b.tokens == pytest.approx(8.0 * b.params, rel=0.01) and b.tokens_per_step == 16 * 64
    for name in ("quick", "budgets"):  # the reported presets: >= 3 held-out seeds, the field's schedules
        assert len(PRESETS[name].heldout_seeds) >= 3 and set(FIELD) <= set(PRESETS[name].schedules)
    assert PRESETS["budgets"].tuning.trials >= 8


def test_heldout_seeds_can_never_be_tuning_seeds():
    tree = PRESETS["tiny"].model_dump() | {"heldout_seeds": [0, 5]}
    with pytest.raises(ValueError, match=r"held-out seeds \[0\] are also tuning seeds"):
        Preset.model_validate(tree)


def test_the_trial_sets_lr_warmup_and_shape_of_every_stage_on_its_own_span():
    p, steps = PRESETS["quick"], 200
    specs = pipeline_config(p, SCHEDULES["best"], 3, "bench-test", HP, steps).stage_specs()
    assert [s.model.n_layers for s in specs] == [3, 6, 12] and [s.train.steps for s in specs] == [80, 60, 100]
    assert {(s.train.lr, s.schedule.policy, s.schedule.shape, s.schedule.decay_fraction) for s in specs} == {
        (3e-3, "continue", "wsd", 0.25)
    }
    assert {s.train.warmup_steps for s in specs} == {24}  # one curve over all 240 steps: 10% of them
    assert [s.seed for s in specs] == [3, 3, 3] and specs[1].optimizer.state == "transfer"
    plain = pipeline_config(p, SCHEDULES["plain"], 3, "bench-test", HP, steps).stage_specs()
    assert [s.train.warmup_steps for s in plain] == [5, 5, 20]  # restart: each stage's own curve, 10% of it
    (scratch,) = pipeline_config(p, scratch_schedule(p), 3, "bench-test", HP, steps).stage_specs()
    assert (scratch.model.n_layers, scratch.train.steps, scratch.train.warmup_steps) == (12, 200, 20)


def test_gstack_growth_point_follows_their_fit_transferred_per_parameter():
    # the table published with Du et al.'s code: Llama2-7B / 2T tokens -> 11.11B, Llama2-70B -> 42.48B, ...
    for n, tokens, d in [(7e9, 2e12, 11.11e9), (13e9, 2e12, 15.84e9), (70e9, 2e12, 42.48e9), (8e9, 15e12, 6.58e9)]:
        assert gstack_growth_tokens(n, 6 * n * tokens) == pytest.approx(d, rel=0.01)
    assert [s.n_layers for s in gstack(8.0).stages] == [3, 12]  # 4x growth in one step
    assert gstack(8.0).stages[0].share == pytest.approx(11.11e9 / 7e9 / 8.0, rel=0.01)
    assert gstack(0.5).stages[0].share == 0.5  # the transferred point is past half the budget: capped
    assert sum(s.share for s in gstack(2.0).stages) == pytest.approx(1.0)  # scratch's token budget


def test_field_schedules_are_what_the_papers_describe():
    midas, late = SCHEDULES["midas"], SCHEDULES["late-jump"]
    assert [s.n_layers for s in midas.stages] == [3, 6, 9, 12] and {s.growth.operator for s in midas.stages[1:]} == {
        "middle"
    }
    assert [s.n_layers for s in late.stages] == [1, 12] and late.stages[1].growth.operator == "identity"
    assert late.stages[0].share == pytest.approx(0.8)  # the jump at 80% of the budget
    assert [s.n_layers for s in SCHEDULES["plain"].stages] == [3, 6, 12]
    assert {s.growth.operator for s in SCHEDULES["plain"].stages[1:]} == {"stack"}


def test_every_schedule_is_a_pipeline_the_flow_accepts():
    assert all(name in SCHEDULES for p in PRESETS.values() for name in p.schedules)
    presets = [PRESETS[n] for n in ("tiny", "gpu", "llama", "tiny-llama")]  # the Llama's vocabulary: its BPE's
    cases = [(p, name, p.budgets[0]) for p in presets for name in p.schedules]
    cases += [(PRESETS["budgets"], "gstack", t) for t in PRESETS["budgets"].budgets]  # its stages move with the budget
    for preset, name, t in cases:  # PipelineConfig dry-runs every growth on meta tensors
        specs = pipeline_config(preset, resolve(name, t), 0, "bench-test", HP, budget(preset, t).scratch_steps)
        assert specs.stage_specs()[-1].model == preset.model


def test_bench_runs_end_to_end_on_the_tiny_preset(tmp_path):
    from bench.main import build_preset, run_bench

    preset = build_preset("tiny", "best,late-jump", None, [])
    summary = run_bench(preset, tmp_path, flow=False, publish_artifacts=False, log=lambda *_: None)
    written = json.loads((tmp_path / "bench-tiny.json").read_text())
    for key in ("tuning_seeds", "heldout_seeds", "budgets", "throughput_ratio_vs_bare_loop"):
        assert written[key] == summary[key]
    assert "orchestration_overhead_fraction" in written and written["heldout_seeds"] == [1, 2]
    assert [b["tokens_per_param"] for b in summary["budgets"]] == [0.03, 0.06]
    for b in summary["budgets"]:
        assert b["scratch"]["trials"] == 2 and [r["seed"] for r in b["scratch"]["per_seed"]] == [1, 2]
        for s in b["schedules"].values():
            assert s["trials"] == b["scratch"]["trials"] == len(s["tuning"]["all"])
            assert set(s["flops_ratio"]) >= {"mean", "ci95", "per_seed"} and set(s["flops_ratio"]["per_seed"]) == {
                "1",
                "2",
            }
            assert set(s["time_ratio"]) >= {"mean", "ci95", "per_seed"}
    for arm in summary["arms"]:  # clocks, tokens and FLOPs only move forward; no tuning seed is reported
        assert arm["seed"] in (1, 2)
        for key in ("seconds", "tokens", "flops"):
            xs = [p[key] for p in arm["points"]]
            assert xs == sorted(xs)
    assert summary["mfu"] > 0 and math.isfinite(summary["throughput_ratio_vs_bare_loop"])
    assert (tmp_path / "bench-tiny.png").stat().st_size > 0 and "FLOPs to target" in (
        tmp_path / "bench-tiny.md"
    ).read_text()
    assert (tmp_path / "optuna.db").is_file()


def test_unknown_schedule_is_a_one_line_error():
    from bench.main import build_preset

    with pytest.raises(ValueError, match="unknown schedules"):
        build_preset("quick", "nope", None, [])


def test_figures_are_deterministic_and_a_rerun_resumes_the_studies(tmp_path):
    """Same FLOPs figures in a fresh workdir and on a rerun in the same one, which trains no trial again."""
    from bench.main import build_preset, run_bench

    preset = build_preset("tiny", "gstack", None, ["budgets=[0.03]"])
    figures = lambda s: [  # noqa: E731
        (name, x["flops_ratio"]["per_seed"], x["best_params"])
        for b in s["budgets"]
        for name, x in b["schedules"].items()
    ]
    logs: list[str] = []
    first = run_bench(preset, tmp_path / "a", flow=False, publish_artifacts=False, log=lambda *_: None)
    fresh = run_bench(preset, tmp_path / "b", flow=False, publish_artifacts=False, log=lambda *_: None)
    again = run_bench(preset, tmp_path / "a", flow=False, publish_artifacts=False, log=logs.append)
    assert figures(first) == figures(fresh) == figures(again)
    assert not [line for line in logs if line.startswith("[tune]")]  # the studies were complete: nothing re-tuned
