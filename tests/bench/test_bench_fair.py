"""Issue 28's protocol (bench/equal/fair.py): the same grid for every arm, growth knobs that keep scratch's FLOPs,
right-sizing, the presets' sizes (test set, evaluation spacing, seeds, the GPU preset), and a --tiny CPU run end
to end (slow) that resumes without training again."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from bench.equal import fair_run
from bench.equal.fair import (
    DECAY,
    WARMUP,
    Knobs,
    arms,
    best_depth,
    estimate,
    planned_config,
    ratio_resolution,
    right_size,
    staged,
    with_knobs,
)
from bench.equal.fair_presets import CPU, GPU, by_name, tiny
from bench.suite.spec import HParams, n_params, pipeline_config, train_flops_per_token


def _flops(arm, fair) -> float:
    return sum(st.share * train_flops_per_token(fair.at_depth(st.n_layers).model) for st in arm.stages)


def test_every_arm_is_tuned_over_the_same_grid_of_six_log_spaced_lrs_by_two_shapes():
    for fair in (CPU, GPU):
        lrs = fair.lrs()
        assert len(lrs) >= 6 and len(fair.grid()) == 2 * len(lrs)
        steps = [math.log(b / a) for a, b in zip(lrs, lrs[1:])]
        assert max(steps) == pytest.approx(min(steps))  # log-spaced
        assert {h.shape for h in fair.grid()} == {"cosine", "wsd"}


def test_the_arms_around_a_right_sized_target():
    names = {"scratch", "small-4", "small-2", "2x-once", "best", "gstack", "midas", "late-jump", "late-jump-mup"}
    assert set(arms(8, 8)) == names
    four = arms(4, 8)
    assert "scratch-deep" in four and [s.n_layers for s in four["best"].stages] == [1, 2, 4]
    assert [s.n_layers for s in four["2x-once"].stages] == [2, 4]
    two = arms(2, 8)  # 1 -> 2 is both 2x-once and the late jump: one arm, tuned once (v30 tuned it twice)
    assert set(two) == {"scratch", "scratch-deep", "small-1", "2x-once", "late-jump-mup"}
    assert [s.n_layers for s in two["late-jump-mup"].stages] == [1, 2]
    assert (
        four["gstack"].stages[-1].schedule.policy == "rewarm" and four["gstack"].stages[-1].optimizer.state == "reset"
    )


@pytest.mark.parametrize(
    "name", ["scratch", "scratch-deep", "small-1", "2x-once", "best", "gstack", "midas", "late-jump", "late-jump-mup"]
)
def test_growth_knobs_keep_scratchs_flops_and_put_the_growth_where_asked(name):
    b = CPU.budget(4, 10.0)
    arm = arms(4, 8)[name]
    k = Knobs(point=0.3, lr_mult=0.5, rewarm=0.02, new_warmup=0.01)
    eq = with_knobs(arm, CPU, k, b, 4)
    full = train_flops_per_token(CPU.at_depth(4).model)
    assert _flops(eq, CPU) == pytest.approx(full, rel=1e-9)
    if staged(arm):
        before = _flops(eq.model_copy(update={"stages": eq.stages[:-1]}), CPU)
        assert before / full == pytest.approx(0.3)
        assert [s.lr_scale for s in eq.stages] == [1.0] + [0.5] * (len(eq.stages) - 1)
        assert eq.stages[-1].schedule.policy == "rewarm"
        assert eq.stages[-1].schedule.rewarm_steps == round(0.02 * b.scratch_steps)
        ramps = [s.growth.new_warmup_steps for s in eq.stages]
        assert ramps == [0] + [round(0.01 * b.scratch_steps)] * (len(eq.stages) - 1)  # grown stages only


def test_a_planned_config_is_the_arm_with_its_knobs_at_the_plans_tokens():
    """`staged plan --out` (bench.equal.planlaw): the arm as the benchmark ran it, at the user's token budget."""
    model = CPU.at_depth(4).model
    tokens = 1000 * CPU.preset.train.batch_size * model.context  # scratch: 1000 steps
    hp, k = {"lr": 0.01, "warmup": WARMUP, "shape": "wsd", "decay": DECAY}, {"point": 0.3, "lr_mult": 0.5}
    cfg = planned_config(by_name("fair-cpu"), model, "best", tokens, hp, k)
    want = with_knobs(arms(4, 4)["best"], CPU, Knobs(**k), CPU.budget(4, 10.0), 4)
    assert [s.n_layers for s in cfg.stages] == [1, 2, 4] and cfg.stages[-1].steps == round(want.stages[-1].share * 1000)
    assert cfg.train.lr == 0.01 and cfg.stages[-1].train.lr == 0.005  # the post-growth LR multiplier
    with pytest.raises(ValueError, match="^best has no schedule for a 2-layer target$"):
        planned_config(CPU, CPU.at_depth(2).model, "best", tokens, hp, k)
    assert by_name("fair-cpu-tiny").name == "fair-cpu-tiny"
    with pytest.raises(ValueError, match="no fair preset named 'fair-tpu'"):
        by_name("fair-tpu")


def test_the_late_jump_under_depth_mup_jumps_in_wsds_stable_phase_with_mup_on_every_stage():
    b = CPU.budget(4, 10.0)
    hp = HParams(lr=3e-3, warmup=WARMUP, shape="wsd", decay=DECAY)
    for point in CPU.points:
        arm = with_knobs(arms(4, 8)["late-jump-mup"], CPU, Knobs(point=point), b, 4)
        cfg = pipeline_config(CPU.preset, arm, 1, "m", hp, b.scratch_steps)
        assert cfg.model.depth_mup == "sqrt" and [s.n_layers for s in cfg.stages] == [1, 4]
        total = sum(s.steps for s in cfg.stages)
        decay_starts = total * (1 - cfg.stages[-1].schedule.decay_fraction)
        assert cfg.stages[0].steps < decay_starts  # the jump happens before WSD's decay begins
    plain = pipeline_config(CPU.preset, arms(4, 8)["late-jump"], 1, "m", hp, b.scratch_steps)
    assert plain.model.depth_mup == "none"


def test_right_sizing_picks_the_deepest_depth_within_the_line():
    assert best_depth({2: 3.1, 4: 3.0, 8: 3.2}) == 4 and best_depth({2: 3.0, 4: 3.0}) == 2
    # the line: the best depth's loss at 0.9 of the FLOPs; a deeper depth at or under it is within ~10 %
    assert right_size({1: 2.90, 2: 2.93, 4: 2.99, 8: 3.2}, line=2.95) == 2
    assert right_size({1: 2.90, 2: 2.93, 4: 2.95, 8: 3.2}, line=2.95) == 4
    assert right_size({1: 2.90, 2: 2.93}, line=2.91) == 1  # none deeper within: the best itself


def test_the_line_is_the_best_depths_run_at_090_of_the_flops():
    b, line = CPU.budget(2, 10.0), CPU.line_budget(2, 10.0)
    assert line.scratch_steps == round(0.9 * b.scratch_steps) and line.params == b.params
    assert line.tokens_per_step == b.tokens_per_step
    assert len(CPU.lrs()) >= 6  # right-sizing runs each depth at every LR of the grid


def test_the_presets_resolve_a_ratio_to_003_on_a_1e5_token_test_set_with_3_seeds():
    for fair in (CPU, GPU):
        assert fair.test_tokens >= 100_000 and len(fair.heldout) >= 3 and ratio_resolution(fair) <= 0.03
    assert 5e6 <= n_params(GPU.preset.model) <= 20e6
    assert GPU.preset.train.precision == "bf16" and GPU.preset.train.compile
    assert not set(CPU.heldout) & set(CPU.tuning_seeds)


def test_the_estimate_counts_every_run():
    one = tiny(CPU)
    secs = estimate(one, {d: 1.0 for d in one.depths}, {d: 0.0 for d in one.depths})
    b = {d: one.budget(d, 0.5).scratch_steps for d in one.depths}
    target = max(one.depths, key=lambda d: b[d])
    every = arms(target, max(one.depths))
    runs = len(every) * len(one.grid()) + sum(map(staged, every.values())) * len(one.knobs()) + len(every)
    # right-sizing: every depth at each sizing LR, then the costliest depth's line run at 0.9 of the budget
    n_lrs, line = len(one.lrs()), max(one.line_budget(d, 0.5).scratch_steps for d in one.depths)
    assert secs == pytest.approx(n_lrs * sum(b.values()) + line + runs * b[target])
    more = estimate(one, {d: 1.0 for d in one.depths}, {d: 0.0 for d in one.depths}, per_run=0.5)
    assert more - secs == pytest.approx(0.5 * (n_lrs * len(one.depths) + 1 + runs))  # every run's cost beside


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cpu", "gpu"])  # gpu --tiny: the GPU preset's bf16 path, on the CPU
def test_a_tiny_run_end_to_end_and_resumed(preset, tmp_path, capsys):
    fair_run.main(["--preset", preset, "--tiny", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"[fair-{preset}-tiny] estimated cost:")  # the estimate comes first
    raw = json.loads((tmp_path / f"fair-{preset}-tiny-raw.json").read_text())
    assert raw["partial"] is False and raw["right_sizing"]["0.5"]["target"] in (2, 3)
    tuned = raw["tuning"]["by_budget"]["0.5"]
    assert all(len(t["trials"]) == 4 for t in tuned.values())  # 2 LRs x 2 shapes, every arm alike
    assert {r["schedule"] for r in raw["runs"]} == set(tuned)
    assert all("final_val_split_loss" in r for r in raw["runs"])
    fair_run.main(["--preset", preset, "--tiny", "--workdir", str(tmp_path)])  # everything cached: no training
    assert "[tune]" not in capsys.readouterr().out
    again = json.loads((tmp_path / f"fair-{preset}-tiny-raw.json").read_text())  # its time adds to the first's
    assert again["sittings"][0] == raw["bench_seconds"] and len(again["sittings"]) == 2
    assert again["bench_seconds"] == pytest.approx(sum(again["sittings"]))
    from bench.equal.report import markdown, summarise

    s = summarise(raw)  # the report reads it: the goal at the right-sized target's own tokens/param
    assert [g["goal"] for g in s["goals"]] == [0.70] and s["right_sizing"] == raw["right_sizing"]
    assert "| scratch |" in markdown(s)
    from bench.equal.planlaw import make_law
    from tasks.plan.planner import plan

    law = make_law(json.loads(json.dumps(s, default=float)))  # what `staged plan` would ship from this run
    (point,) = law["points"]
    assert set(law["sizes"]) == {f"{raw['right_sizing']['0.5']['target']}L"} and "fair_run" in law["source"]
    assert plan(law, point["params"], round(point["tokens_per_param"] * point["params"])).measured == point


def test_goals_report_the_upper_bound():
    from bench.equal.report import goals

    arm = {"flops_ratio": 0.65, "flops_ratio_ci95": [0.6, 0.9]}
    b = [{"size": "s", "tokens_per_param": 21.0, "best_schedule": "x", "arms": {"x": arm}}]
    (g,) = goals(b, [[21.0, "best staged schedule", 0.70, 0.85]])
    assert g["verdict"] == "met; upper bound 0.900 >= 0.85"


def test_a_grid_study_stopped_mid_point_then_rerun_runs_each_point_once(tmp_path):
    """A point whose run failed or was killed (its trial left RUNNING) runs again on the rerun, and no point runs
    twice: Optuna's GridSampler counted a failed trial's point as visited and filled the gap with a repeat."""
    import optuna

    from bench.suite.tune import storage_url

    space = {"lr": [1.0, 2.0, 3.0], "shape": ["cosine", "wsd"]}
    first, again = [], []

    def stopped(p):  # the third point fails, as a run stopped mid-point
        first.append((p["lr"], p["shape"]))
        if len(first) == 3:
            raise RuntimeError("stopped")
        return p["lr"]

    with pytest.raises(RuntimeError):
        fair_run.grid_study("g", tmp_path, space, stopped, log=lambda m: None)
    study = optuna.load_study(study_name="g", storage=storage_url(tmp_path))
    killed = study.ask()  # the next point, taken by a run that is then SIGKILLed: RUNNING forever
    left = tuple(killed.suggest_categorical(k, v) for k, v in space.items())
    trials = fair_run.grid_study("g", tmp_path, space, lambda p: again.append((p["lr"], p["shape"])) or p["lr"], print)
    assert sorted((t["lr"], t["shape"]) for t in trials) == sorted(itertools.product(*space.values()))
    assert len(again) == len(set(again)) == 4 and first[2] in again and left in again  # only the missing points
    assert fair_run.grid_study("g", tmp_path, space, lambda p: pytest.fail("reran a point"), print) == trials
