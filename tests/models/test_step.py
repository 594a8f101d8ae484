"""The trainer's tools (models/train/step.py) on a tiny byte GPT: each keeps the loss, and does what it is for."""

import torch
from torch.autograd.graph import saved_tensors_hooks

from models.data.bytes import ByteCorpus, DataConfig
from models.families.family import token_loss
from models.families.gpt import GPT, GPTConfig
from models.families.lookup import family_of
from models.growth import GrowthConfig, grow
from models.layermap import Trainable
from models.train import speed
from models.train.loop import TrainConfig, train
from models.train.plan import Hooks, StagePlan, Start, stage_plan
from models.train.policy import ScheduleConfig, UntilConfig
from models.train.step import checkpointed

CFG = GPTConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, context=32)
TRAIN = TrainConfig(steps=4, batch_size=16, lr=3e-3, warmup_steps=1, eval_every=4, eval_batches=1, device="cpu")


def _corpus():
    return ByteCorpus(DataConfig(max_bytes=100_000), context=32, seed=0)


def _trained(cfg=CFG, plan=StagePlan(), state=None, **train_keys):
    torch.manual_seed(0)
    model = GPT(cfg)
    if state is not None:
        model.load_state_dict(state)
    result = train(model, _corpus(), TRAIN.model_copy(update=train_keys), plan=plan, start=Start(seed=1))
    return model, result


def test_micro_batches_of_4_match_one_batch_of_16():
    whole, r16 = _trained(micro_batch_size=16)
    micro, r4 = _trained(micro_batch_size=4)
    assert torch.allclose(torch.tensor(r4.train_curve), torch.tensor(r16.train_curve), atol=1e-5)
    assert all(torch.allclose(whole.state_dict()[k], v, atol=1e-6) for k, v in micro.state_dict().items())
    assert r4.tokens == r16.tokens == 4 * 16 * 32


def _saved_bytes(model, mode: str) -> int:
    """Bytes autograd keeps for backward in one forward pass of a batch (outside any checkpointed block)."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    x, y = _corpus().batch(0, 8)
    with checkpointed(model, family_of(model), mode), saved_tensors_hooks(pack, lambda t: t):
        loss = token_loss(model(x), y)
    loss.backward()
    return sum(saved)


def test_activation_checkpointing_keeps_the_loss_and_saves_fewer_activations():
    plain, r_plain = _trained()
    ckpt, r_ckpt = _trained(activation_checkpointing="full")
    assert [loss for _, loss in r_ckpt.train_curve] == [loss for _, loss in r_plain.train_curve]
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in ckpt.state_dict().items())
    torch.manual_seed(0)
    model = GPT(CFG.model_copy(update={"n_layers": 4}))
    full, kept = _saved_bytes(model, "none"), _saved_bytes(model, "full")
    assert kept < 0.5 * full, (kept, full)
    assert type(model.blocks[0]).forward is model.blocks[0].forward.__func__  # undone: the class's forward again


def test_bf16_autocast_on_cpu_trains_close_to_fp32_with_fp32_weights():
    fp32, r32 = _trained()
    bf16, r16 = _trained(precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert abs(r16.val_loss - r32.val_loss) < 0.05, (r16.val_loss, r32.val_loss)
    assert r16.train_curve != r32.train_curve  # bf16 did compute something else


def test_freeze_parent_trains_only_the_new_blocks():
    torch.manual_seed(0)
    parent = GPT(CFG)
    child_cfg = CFG.model_copy(update={"n_layers": 4})
    growth = GrowthConfig(operator="stack", freeze="parent")
    state = grow(growth, parent.state_dict(), CFG, child_cfg)
    plan = stage_plan(
        warmup=1, min_lr_ratio=0.1, steps=4, schedule=ScheduleConfig(), growth=growth, until=UntilConfig(),
        parent_layers=2, child_layers=4,
    )  # fmt: skip
    assert plan.trainable == Trainable(blocks=(2, 3), embeddings=False, head=False)
    model, result = _trained(child_cfg, plan, state)
    after = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert changed and all(k.startswith(("blocks.2.", "blocks.3.")) for k in changed), sorted(changed)
    assert any(k.startswith("blocks.2.") for k in changed) and any(k.startswith("blocks.3.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # the model is plain again
    assert not result.moments["exp_avg.tok_emb.weight"].any()  # never stepped: zero moments
    assert result.moments["exp_avg.blocks.3.mlp.fc.weight"].any()


def test_efficiency_figures_are_reported():
    _, result = _trained()
    assert result.tokens_per_s > 0 and 0 < result.mfu < 1 and result.peak_memory_bytes > 10 * 2**20
    assert speed.measured_peak("cpu") == speed.measured_peak("cpu")  # measured once, cached
    assert speed.named_peak("NVIDIA H100 80GB HBM3") == 989e12 and speed.named_peak("NVIDIA H100 PCIe") == 756e12
    assert speed.named_peak("Some Future GPU") is None
    flops = family_of(CFG).flops_per_token(CFG)
    expected = speed.mfu(result.tokens_per_s, flops, speed.measured_peak("cpu"))
    assert abs(expected - result.mfu) < 1e-12


def test_compile_matches_eager():
    """The one torch.compile test (~30 s on 2 cores): same losses as eager to float tolerance."""
    _, eager = _trained(steps=2)
    _, comp = _trained(steps=2, compile=True)
    for (_, a), (_, b) in zip(eager.train_curve, comp.train_curve):
        assert abs(a - b) < 1e-4, (a, b)


def test_a_frozen_stage_resumes_bit_for_bit():
    """The frozen set comes from the plan, not from the checkpoint: a resumed stage freezes the same blocks."""
    torch.manual_seed(0)
    child_cfg = CFG.model_copy(update={"n_layers": 4})
    state = grow("stack", GPT(CFG).state_dict(), CFG, child_cfg)
    plan = StagePlan(trainable=Trainable(blocks=(2, 3), embeddings=False, head=False))
    whole, _ = _trained(child_cfg, plan, state, micro_batch_size=8)
    saved = {}

    def keep(ts):
        saved.setdefault(ts.step, (ts, {k: v.clone() for k, v in first.state_dict().items()}))

    torch.manual_seed(0)
    first = GPT(child_cfg)
    first.load_state_dict(state)
    cfg = TRAIN.model_copy(update={"micro_batch_size": 8})
    train(first, _corpus(), cfg, plan=plan, start=Start(seed=1), hooks=Hooks(on_checkpoint=keep, checkpoint_every=2))
    ts, weights = saved[2]
    resumed = GPT(child_cfg)
    resumed.load_state_dict(weights)
    train(resumed, _corpus(), cfg, plan=plan, start=Start(seed=1, resume=ts))
    assert all(torch.equal(whole.state_dict()[k], v) for k, v in resumed.state_dict().items())
