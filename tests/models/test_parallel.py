"""models/train/parallel.py in this process: a one-rank gloo group is enough to shard, gather and move moments."""

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from models.families.gpt import GPT, GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.train import parallel
from models.train.optim import MomentsMismatch, make_optimizer
from tests.families import TINY

CFG = GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=8)


QWEN2 = LlamaFamilyConfig(arch="qwen2", n_layers=3, d_model=16, n_heads=2, n_kv_heads=1, d_ff=24, context=8)


@pytest.fixture
def group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("cfg", TINY.values(), ids=TINY)
def test_the_units_are_the_familys_blocks(cfg):
    family = family_of(cfg)
    model = family.build(cfg)
    assert family.fsdp_units(model) == family.checkpoint_units(model) == list(family.blocks(model))
    assert len(family.fsdp_units(model)) == cfg.n_layers


def test_shard_wraps_each_block_and_the_root(group):
    qwen2 = parallel.shard(family_of(QWEN2).build(QWEN2), torch.device("cpu"))
    assert isinstance(qwen2, FSDPModule) and all(isinstance(b, FSDPModule) for b in qwen2.model.layers)
    torch.manual_seed(0)
    model = GPT(CFG)
    whole = {k: v.clone() for k, v in model.state_dict().items()}
    parallel.shard(model, torch.device("cpu"))
    assert parallel.is_sharded(model) and parallel.data_parallel(model, torch.device("cpu")) is model
    gathered = parallel.full_state(model)
    assert gathered.keys() == whole.keys() and all(torch.equal(gathered[k], v) for k, v in whole.items())


def test_moments_go_out_whole_and_come_back_into_the_shards(group):
    torch.manual_seed(0)
    model = parallel.shard(GPT(CFG), torch.device("cpu"))
    optimizer = make_optimizer(model, 1e-3, 0.1, 0.99)
    x = torch.randint(0, 256, (2, CFG.context))
    parallel.evaluated(model, model.loss(x, x).item())  # an evaluation leaves the root gathered: reshard
    model.loss(x, x).backward()
    optimizer.step()
    full = parallel.export_moments(model, optimizer)
    assert full["step"].item() == 1.0 and full["exp_avg.head.weight"].shape == (256, 16)
    fresh = parallel.shard(GPT(CFG), torch.device("cpu"))
    again = make_optimizer(fresh, 1e-3, 0.1, 0.99)
    parallel.load_moments(fresh, again, full)  # whole tensors, through set_optimizer_state_dict
    back = parallel.export_moments(fresh, again)
    assert all(torch.equal(back[k], v) for k, v in full.items())
    shards = parallel.export_moments(model, optimizer, full=False)  # what a checkpoint writes
    assert type(shards["exp_avg.head.weight"]).__name__ == "DTensor"
    with pytest.raises(MomentsMismatch, match="missing exp_avg.head.weight"):
        parallel.load_moments(fresh, again, {k: v for k, v in full.items() if k != "exp_avg.head.weight"})


def test_per_parameter_steps_survive_sharded_moments_and_a_sharded_checkpoint(group, tmp_path):
    """A grown model's new block (step 0: no state) and carried ones (their own step) go into the shards, out whole,
    and through a sharded checkpoint (tasks/store/sharded.py) unchanged."""
    from models.train.loop import rng_state
    from models.train.plan import TrainState
    from tasks.store import LocalStorage, checkpoint

    torch.manual_seed(0)
    model = parallel.shard(GPT(CFG), torch.device("cpu"))
    names = [n for n, _ in model.named_parameters()]
    moments = {
        f"{k}.{n}": torch.rand_like(p.full_tensor())
        for n, p in model.named_parameters()
        for k in ("exp_avg", "exp_avg_sq")
    }
    new = [n for n in names if n.startswith("blocks.1.")]
    for n in new:  # a new block: no state yet
        moments[f"exp_avg.{n}"].zero_()
        moments[f"exp_avg_sq.{n}"].zero_()
    moments |= {"step": torch.tensor(7.0, dtype=torch.float64)}
    moments |= {f"step.{n}": torch.tensor(0.0, dtype=torch.float64) for n in new}
    optimizer = make_optimizer(model, 1e-3, 0.1, 0.99)
    parallel.load_moments(model, optimizer, moments)  # whole tensors, through set_optimizer_state_dict
    params = dict(model.named_parameters())
    assert all(params[n] not in optimizer.state for n in new)
    assert optimizer.state[params["blocks.0.attn.qkv.weight"]]["step"].item() == 7.0
    back = parallel.export_moments(model, optimizer)
    assert back.keys() == moments.keys() and all(torch.equal(back[k], v.to(back[k].dtype)) for k, v in moments.items())

    storage = LocalStorage(tmp_path / "ckpt")
    state = TrainState(1, 8, parallel.export_moments(model, optimizer, full=False), rng_state(), 5.0, 4.0, [], [])
    checkpoint.save(storage, "k" * 64, model, state)
    fresh = parallel.shard(GPT(CFG), torch.device("cpu"))
    found = checkpoint.latest(storage, "k" * 64, into=fresh)
    again = make_optimizer(fresh, 1e-3, 0.1, 0.99)
    parallel.load_moments(fresh, again, found.state.moments)  # its own DTensor shards
    resumed = parallel.export_moments(fresh, again)
    assert resumed.keys() == moments.keys() and all(torch.equal(resumed[k], back[k]) for k in back)
