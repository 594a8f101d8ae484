"""LR policies across growth, stop rules, and the masked ramp inside train()."""

import pytest
import torch

from models.data import ByteCorpus, DataConfig
from models.gpt import GPT, GPTConfig
from models.plan import GateRamp, StagePlan
from models.policy import LossSlope, ScheduleConfig, lr_schedule, slope_stop, warmup_cosine
from models.train import TrainConfig, lr_at, train

torch.set_num_threads(1)  # tiny models: OpenMP threads only spin against each other on shared cores

KW = dict(warmup=10, min_ratio=0.1, stage_steps=50, start=100, total=400)


def test_restart_is_the_stage_schedule():
    f = lr_schedule(ScheduleConfig(policy="restart"), **KW)
    cfg = TrainConfig(steps=50, warmup_steps=10, min_lr_ratio=0.1)
    assert [f(t) for t in range(60)] == [lr_at(t, cfg) for t in range(60)]


def test_continue_reads_the_pipeline_schedule_at_the_global_step():
    f = lr_schedule(ScheduleConfig(policy="continue"), **KW)
    assert [f(t) for t in range(50)] == [warmup_cosine(100 + t, 10, 400, 0.1) for t in range(50)]


def test_rewarm_ramps_into_the_continued_schedule():
    f = lr_schedule(ScheduleConfig(policy="rewarm", rewarm_steps=4), **KW)
    g = lr_schedule(ScheduleConfig(policy="continue"), **KW)
    assert [f(t) / g(t) for t in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


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
    from models.train import evaluate

    after = evaluate(model, corpus.val_batches(1, 4))
    assert after == pytest.approx(result.val_loss, rel=1e-6)
