import math

import torch

from models.data.bytes import ByteCorpus, DataConfig
from models.families.gpt import GPT, GPTConfig
from models.train.loop import TrainConfig, train
from models.train.plan import Hooks, Start, default_lr

CFG = GPTConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, context=32)
TRAIN = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup_steps=3, eval_every=10, eval_batches=2, device="cpu")


def _corpus():
    return ByteCorpus(DataConfig(max_bytes=200_000), context=32, seed=0)


def test_training_lowers_validation_loss_and_advances_the_cursor():
    torch.manual_seed(0)
    result = train(GPT(CFG), _corpus(), TRAIN, start=Start(cursor=16, seed=0))
    assert result.val_loss < result.val_loss_init - 0.5
    assert result.cursor == 16 + 30 * 8
    assert [s for s, _ in result.val_curve] == [0, 10, 20, 30]
    assert len(result.train_curve) == 30 and result.tokens == 30 * 8 * 32


def test_training_is_deterministic():
    def run():
        torch.manual_seed(0)
        model = GPT(CFG)
        train(model, _corpus(), TRAIN.model_copy(update={"steps": 5}), start=Start(seed=3))
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zero_steps_only_evaluates():
    torch.manual_seed(0)
    model = GPT(CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, _corpus(), TRAIN.model_copy(update={"steps": 0}))
    assert result.val_loss == result.val_loss_init and result.cursor == 0 and result.train_curve == []
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    lr = default_lr(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)  # what train() uses without a plan's lr_mult
    assert lr(0) == 0.1 and lr(9) == 1.0
    assert lr(10) == 1.0
    assert math.isclose(lr(55), 0.1 + 0.9 * 0.5)
    assert math.isclose(lr(100), 0.1)
    assert all(lr(s) >= lr(s + 1) for s in range(10, 100))


def test_resuming_from_a_checkpoint_is_bitwise_identical_even_with_dropout():
    cfg = CFG.model_copy(update={"dropout": 0.1})
    steps = TRAIN.model_copy(update={"steps": 10, "eval_every": 3})
    saved = {}

    def keep(model):
        def on_checkpoint(state):
            saved[state.step] = ({k: v.clone() for k, v in model.state_dict().items()}, state)

        return on_checkpoint

    torch.manual_seed(0)
    full = GPT(cfg)
    ref = train(
        full, _corpus(), steps, start=Start(cursor=8, seed=3), hooks=Hooks(on_checkpoint=keep(full), checkpoint_every=4)
    )
    assert sorted(saved) == [4, 8, 10]
    weights, state = saved[4]
    resumed = GPT(cfg)
    resumed.load_state_dict(weights)
    out = train(resumed, _corpus(), steps, start=Start(cursor=8, seed=3, resume=state))
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    assert out.cursor == ref.cursor and out.train_curve == ref.train_curve and out.val_curve == ref.val_curve
    assert all(torch.equal(v, out.moments[k]) for k, v in ref.moments.items())


def test_a_nan_loss_stops_before_the_optimizer_step_and_names_the_step():
    import pytest

    from models.train.loop import NonFiniteLoss

    torch.manual_seed(0)
    model = GPT(CFG)
    with pytest.raises(NonFiniteLoss, match="at step 2") as err:
        train(model, _corpus(), TRAIN.model_copy(update={"lr": 1e30, "warmup_steps": 0, "grad_clip": 1e30}))
    assert err.value.step == 2
