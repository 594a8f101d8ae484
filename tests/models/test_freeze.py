"""Finer freezing (``growth.freeze: {blocks, embeddings, head}``): exactly the named parts train, frozen parameters
get no optimizer state (and transferred moments are not installed for them), a frozen stage resumes bit for bit."""

import pytest
import torch

from models.data.bytes import ByteCorpus, DataConfig
from models.families.gpt import GPT, GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.growth import GrowthConfig, GrowthError, dry_run, grow, layer_map
from models.layermap import Freeze, Trainable, describe_freeze, trainable
from models.train import step
from models.train.loop import TrainConfig, make_optimizer, train
from models.train.optim import export_moments
from models.train.plan import Hooks, StagePlan, Start

torch.set_num_threads(1)

CFG = GPTConfig(n_layers=4, d_model=32, n_heads=2, d_ff=64, context=32)
TRAIN = TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, eval_every=4, eval_batches=1, device="cpu")
EVERY = GrowthConfig(every=2, freeze={"blocks": "parent", "head": True})  # 4 -> 6: 0 1 1* 2 3 3*


def test_freeze_resolves_against_the_layer_map():
    lmap = layer_map(EVERY, 4, 6)
    assert trainable(EVERY.freeze, lmap) == Trainable(blocks=(2, 5), embeddings=True, head=False)
    assert trainable("parent", lmap) == Trainable(blocks=(2, 5), embeddings=False, head=False)
    assert trainable("none", lmap) is None
    assert trainable(Freeze(blocks=(0, 1, 2), head=True), lmap) == Trainable((3, 4, 5), True, False)
    assert trainable(Freeze(blocks="none", embeddings=True), lmap) == Trainable((0, 1, 2, 3, 4, 5), False, True)
    assert describe_freeze(EVERY.freeze) == "blocks parent; embeddings false; head true"
    assert trainable(EVERY.freeze, lmap).describe() == "blocks 2 5; embeddings"


@pytest.mark.parametrize(
    "freeze, match",
    [
        ({"blocks": [0, 6]}, r"growth.freeze.blocks names child blocks \[6\], but the child has blocks 0..5"),
        ({"blocks": [0, 1, 2, 3, 4, 5], "embeddings": True, "head": True}, "freezes everything: nothing would train"),
    ],
)
def test_bad_freezes_are_one_line(freeze, match):
    with pytest.raises(GrowthError, match=match) as e:
        dry_run(GrowthConfig(every=2, freeze=freeze), CFG, CFG.model_copy(update={"n_layers": 6}))
    assert "\n" not in str(e.value)


def _grown():
    torch.manual_seed(0)
    child_cfg = CFG.model_copy(update={"n_layers": 6})
    return child_cfg, grow(EVERY, GPT(CFG).state_dict(), CFG, child_cfg)


def _corpus():
    return ByteCorpus(DataConfig(max_bytes=100_000), context=32, seed=0)


def test_the_new_blocks_and_the_embeddings_train_the_rest_stays_and_holds_no_optimizer_state():
    child_cfg, state = _grown()
    plan = StagePlan(trainable=trainable(EVERY.freeze, layer_map(EVERY, 4, 6)))
    model = GPT(child_cfg)
    model.load_state_dict(state)
    moments = {f"{m}.{k}": torch.full_like(v, 0.5) for k, v in state.items() for m in ("exp_avg", "exp_avg_sq")}
    moments["step"] = torch.tensor(3.0)
    result = train(model, _corpus(), TRAIN, plan=plan, start=Start(seed=1, moments=moments))
    after = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    trained = ("blocks.2.", "blocks.5.", "tok_emb.", "pos_emb.")
    assert changed and all(k.startswith(trained) for k in changed), sorted(changed)
    assert {k.split(".")[0] + (f".{k.split('.')[1]}" if k.startswith("blocks") else "") for k in changed} == {
        "blocks.2",
        "blocks.5",
        "tok_emb",
        "pos_emb",
    }
    # a frozen parameter's transferred moments were never installed: it leaves the stage with none (zeros)
    assert (
        not result.moments["exp_avg.head.weight"].any() and not result.moments["exp_avg.blocks.0.mlp.fc.weight"].any()
    )
    assert result.moments["exp_avg.blocks.5.mlp.fc.weight"].any() and result.moments["exp_avg.tok_emb.weight"].any()
    assert all(p.requires_grad for p in model.parameters())  # the model is plain again


def test_the_optimizer_holds_only_the_trained_parameters():
    child_cfg, state = _grown()
    model = GPT(child_cfg)
    t = trainable(EVERY.freeze, layer_map(EVERY, 4, 6))
    with step.frozen(model, family_of(model), t):
        optimizer = make_optimizer(model, TRAIN)
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        names = {n for n, p in model.named_parameters() if id(p) in held}
        assert names == {n for n in state if n.startswith(("blocks.2.", "blocks.5.", "tok_emb.", "pos_emb."))}
        assert set(export_moments(model, optimizer)) >= {"exp_avg.head.weight"}  # still every name, zeros


def test_tied_embeddings_follow_the_embeddings_flag():
    cfg = LlamaFamilyConfig(
        arch="llama", n_layers=2, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32, context=8, vocab_size=40
    )
    cfg = cfg.model_copy(update={"tie_embeddings": True})
    model = family_of(cfg).build(cfg)
    with step.frozen(model, family_of(model), Trainable(blocks=(1,), embeddings=True, head=False)):
        trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.weight" in trains and "model.norm.weight" not in trains
    assert all(not n.startswith("model.layers.0.") for n in trains)


def test_a_finer_frozen_stage_resumes_bit_for_bit():
    child_cfg, state = _grown()
    plan = StagePlan(trainable=trainable(EVERY.freeze, layer_map(EVERY, 4, 6)))
    cfg = TRAIN.model_copy(update={"steps": 4})
    whole = GPT(child_cfg)
    whole.load_state_dict(state)
    train(whole, _corpus(), cfg, plan=plan, start=Start(seed=1))
    saved = {}
    first = GPT(child_cfg)
    first.load_state_dict(state)

    def keep(ts):
        saved.setdefault(ts.step, (ts, {k: v.clone() for k, v in first.state_dict().items()}))

    train(first, _corpus(), cfg, plan=plan, start=Start(seed=1), hooks=Hooks(on_checkpoint=keep, checkpoint_every=2))
    ts, weights = saved[2]
    resumed = GPT(child_cfg)
    resumed.load_state_dict(weights)
    train(resumed, _corpus(), cfg, plan=plan, start=Start(seed=1, resume=ts))
    assert all(torch.equal(whole.state_dict()[k], v) for k, v in resumed.state_dict().items())


def test_the_memory_check_counts_gradients_and_moments_of_the_trained_parameters_only(tmp_path):
    """limits.memory_bytes just above what the 8-layer stage 1 needs: the 10-layer stage 2 fits when only its two new
    blocks train (weights of 10 blocks, gradients and AdamW of 2) and is refused when all of it trains."""
    from tasks.config import ConfigError, load_config

    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {d_model: 256, n_heads: 4, d_ff: 1024, context: 8}\ntrain: {batch_size: 2}\n"
        "stages: [{n_layers: 8, steps: 1}, {n_layers: 10, steps: 1, growth: {every: 4}}]\n"
    )
    with pytest.raises(ConfigError, match="stages.0: training needs about") as e:
        load_config(config, ["limits.memory_bytes=1"])
    stage1 = float(str(e.value).split("about ")[1].split(" MiB")[0])
    cap = f"limits.memory_bytes={int((stage1 + 0.2) * 2**20)}"
    load_config(config, [cap, "stages.1.growth.freeze=parent"])  # fits
    with pytest.raises(ConfigError, match="stages.1: training needs about"):
        load_config(config, [cap])
