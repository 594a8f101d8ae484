"""LR policies across growth, stop rules, and the masked ramp inside train()."""

import pytest
import torch

from models.data.bytes import ByteCorpus, DataConfig
from models.families.gpt import GPT, GPTConfig
from models.train.loop import TrainConfig, train
from models.train.plan import GateRamp, Hooks, StagePlan, default_lr
from models.train.policy import (
    LossSlope,
    ScheduleConfig,
    UntilConfig,
    lr_schedule,
    slope_stop,
    warmup_cosine,
    warmup_stable_decay,
)

torch.set_num_threads(1)  # tiny models: OpenMP threads only spin against each other on shared cores

KW = dict(warmup=10, min_ratio=0.1, stage_steps=50, start=100, total=400)


def test_restart_is_the_stage_schedule():
    f = lr_schedule(ScheduleConfig(policy="restart"), **KW)
    cfg = TrainConfig(steps=50, warmup_steps=10, min_lr_ratio=0.1)
    lr = default_lr(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)  # a stage without a schedule policy
    assert [f(t) for t in range(60)] == [lr(t) for t in range(60)]


def test_continue_reads_the_pipeline_schedule_at_the_global_step():
    f = lr_schedule(ScheduleConfig(policy="continue"), **KW)
    assert [f(t) for t in range(50)] == [warmup_cosine(100 + t, 10, 400, 0.1) for t in range(50)]


def test_rewarm_ramps_into_the_continued_schedule():
    f = lr_schedule(ScheduleConfig(policy="rewarm", rewarm_steps=4), **KW)
    g = lr_schedule(ScheduleConfig(policy="continue"), **KW)
    assert [f(t) / g(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_wsd_warms_up_holds_the_peak_then_decays_linearly_to_the_floor():
    f = lr_schedule(ScheduleConfig(shape="wsd", decay_fraction=0.2), **KW)  # 50 steps: 10 decay, from step 40
    lrs = [f(t) for t in range(50)]
    assert lrs[:10] == pytest.approx([(t + 1) / 10 for t in range(10)])
    assert lrs[10:40] == [1.0] * 30
    assert lrs[40:] == pytest.approx([1 - 0.9 * (k + 1) / 10 for k in range(10)]) and lrs[-1] == pytest.approx(0.1)
    assert f(60) == pytest.approx(0.1)  # past the planned steps: held at the floor


def test_wsd_under_continue_is_one_curve_over_the_pipeline():
    """Small stages train at the constant peak; only the final stretch of the last stage decays."""
    wsd = ScheduleConfig(policy="continue", shape="wsd", decay_fraction=0.25)
    stages = [(0, 100), (100, 100), (200, 200)]  # (first global step, steps) of three stages: 400 steps
    curve = [
        lr_schedule(wsd, warmup=10, min_ratio=0.1, stage_steps=n, start=s, total=400)(t)
        for s, n in stages
        for t in range(n)
    ]
    assert curve == [warmup_stable_decay(g, 10, 400, 0.1, 0.25) for g in range(400)]
    assert set(curve[10:300]) == {1.0} and curve[300] < 1.0 and curve[-1] == pytest.approx(0.1)


def test_wsd_runs_in_the_pipeline_stage_plan_and_train(corpus):
    """stages.<i>.schedule.shape: wsd reaches train() through the stage config and stage_plan."""
    from tasks.config import PipelineConfig
    from tasks.driver import plan_for

    cfg = PipelineConfig.model_validate(
        {
            "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "context": 16},
            "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 100, "eval_batches": 1, "device": "cpu"},
            "data": {"max_bytes": 100_000},
            "stages": [{"n_layers": 1, "steps": 10, "schedule": {"shape": "wsd", "decay_fraction": 0.3}}],
        }
    )
    (spec,) = cfg.stage_specs()
    seen = []
    train(
        GPT(spec.model), corpus, spec.train, plan=plan_for(spec, None), hooks=Hooks(on_step=lambda i: seen.append(i.lr))
    )
    want = [spec.train.lr * warmup_stable_decay(t, 2, 10, spec.train.min_lr_ratio, 0.3) for t in range(10)]
    assert seen == pytest.approx(want) and seen[2:7] == [spec.train.lr] * 5 and seen[-1] < seen[7] < seen[6]


def _pipeline(stages: list[dict]):
    from tasks.config import PipelineConfig

    return PipelineConfig.model_validate(
        {
            "model": {"d_model": 16, "n_heads": 2, "d_ff": 32, "context": 16},
            "train": {"batch_size": 4, "warmup_steps": 5, "eval_every": 100, "eval_batches": 1, "device": "cpu"},
            "data": {"max_bytes": 100_000},
            "stages": stages,
        }
    )


def test_one_wsd_curve_across_the_stages_of_a_pipeline():
    """The LR of stage after stage (each from its parent's global step) is the single-run WSD schedule."""
    from tasks.driver import Parent, plan_for

    wsd = {"policy": "continue", "shape": "wsd", "decay_fraction": 0.3}
    growth = {"operator": "identity"}
    cfg = _pipeline(
        [
            {"n_layers": 1, "steps": 30, "schedule": wsd},
            {"n_layers": 2, "steps": 30, "schedule": wsd, "growth": growth},
            {"n_layers": 4, "steps": 40, "schedule": wsd, "growth": growth},
        ]
    )
    curve, done = [], 0
    for spec in cfg.stage_specs():
        parent = None if spec.index == 1 else Parent(spec.model.n_layers // 2, 0, done, load=lambda: None)
        curve += [plan_for(spec, parent).lr_mult(t) for t in range(spec.train.steps)]
        done += spec.train.steps
    assert curve == [warmup_stable_decay(t, 5, 100, 0.1, 0.3) for t in range(100)]
    assert set(curve[5:70]) == {1.0} and curve[70] < 1  # both growths (steps 30, 60) in the stable phase


def test_a_growth_inside_the_wsd_decay_is_refused_in_one_line():
    from pydantic import ValidationError

    wsd = {"policy": "rewarm", "shape": "wsd", "decay_fraction": 0.5}
    with pytest.raises(
        ValidationError, match=r"stages.1.schedule: the growth at global step 60 falls in the WSD decay"
    ):
        _pipeline([{"n_layers": 1, "steps": 60}, {"n_layers": 2, "steps": 40, "schedule": wsd}])
    _pipeline([{"n_layers": 1, "steps": 60}, {"n_layers": 2, "steps": 40, "schedule": {**wsd, "decay_fraction": 0.4}}])


def test_new_warmup_ramps_only_the_new_blocks_lr(corpus):
    from models.growth import GrowthConfig
    from models.train.loop import make_optimizer
    from models.train.optim import set_lr
    from models.train.plan import stage_plan

    growth = GrowthConfig(operator="identity", new_warmup_steps=4)
    plan = stage_plan(
        warmup=0,
        min_lr_ratio=0.1,
        steps=6,
        schedule=ScheduleConfig(),
        growth=growth,
        until=UntilConfig(),
        parent_layers=1,
        child_layers=2,
    )
    model = GPT(GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=16))
    cfg = TrainConfig(steps=6, batch_size=4, eval_every=100, eval_batches=1, device="cpu")
    opt = make_optimizer(model, cfg, plan=plan)
    names = {p: n for n, p in model.named_parameters()}
    for t, ramp in enumerate([0.25, 0.5, 0.75, 1.0, 1.0]):
        set_lr(opt, 1e-2, plan.new_warmup.mult(t))
        for group in opt.param_groups:
            assert all(names[p].startswith("blocks.1.") == group["new"] for p in group["params"])
            assert group["lr"] == pytest.approx(1e-2 * (ramp if group["new"] else 1.0))
    result = train(model, corpus, cfg, plan=plan)  # and through the loop
    assert result.steps == 6 and result.moments["step"].item() == 6


def test_slope_stop():
    stop = slope_stop(LossSlope(threshold=0.01, window=3, max_steps=100))
    assert not stop([(0, 5.0), (10, 4.0)])  # fewer evaluations than the window
    assert not stop([(0, 5.0), (10, 4.0), (20, 3.0)])  # 0.1 per step
    assert stop([(0, 5.0), (10, 4.0), (20, 3.0), (30, 2.999), (40, 2.998)])  # (3.0 - 2.998) / 20 < 0.01
    assert not slope_stop(None)([(0, 5.0), (10, 5.0), (20, 5.0)])


@pytest.fixture(scope="module")
def corpus():
    return ByteCorpus(DataConfig(max_bytes=100_000), context=16, seed=0)


def test_train_stops_on_the_slope_rule_and_reports_steps(corpus):
    model = GPT(GPTConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32, context=16))
    cfg = TrainConfig(steps=20, batch_size=4, eval_every=2, eval_batches=1, device="cpu")
    result = train(
        model, corpus, cfg, plan=StagePlan(stop=slope_stop(LossSlope(threshold=1e3, window=2, max_steps=20)))
    )
    assert result.steps == 2 and result.cursor == 8 and result.tokens == 2 * 4 * 16
    assert result.moments["step"].item() == 2


def test_masked_ramp_in_train_starts_at_the_parent_and_ends_plain(corpus):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=16))
    cfg = TrainConfig(steps=3, batch_size=4, eval_every=1, eval_batches=1, device="cpu")
    ramp = GateRamp(blocks=[1], steps=10)  # the stage ends mid-ramp: gate 0.2 is folded into the weights
    result = train(model, corpus, cfg, plan=StagePlan(ramp=ramp))
    assert model.blocks[1].gate.item() == 1.0
    from models.train.loop import evaluate

    after = evaluate(model, corpus.val_batches(1, 4))
    assert after == pytest.approx(result.val_loss, rel=1e-6)
