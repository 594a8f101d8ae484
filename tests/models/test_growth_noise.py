"""Symmetry breaking for new blocks (growth.noise on depth operators): copies + small noise, never N identical
twins; identity and masked still preserve the function exactly at the growth step (float64), on both families."""

import pytest
import torch

from models.families.gpt import GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.growth import GrowthConfig, child_config, grow, layer_map
from models.train.plan import GateRamp

torch.set_num_threads(1)

FAMILIES = [
    GPTConfig(n_layers=1, d_model=16, n_heads=2, d_ff=32, context=8),
    LlamaFamilyConfig(arch="llama", n_layers=1, d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, context=8),
]
IDS = ["gpt", "llama"]


def grown(cfg, g: GrowthConfig, n_layers: int):
    torch.manual_seed(0)
    family = family_of(cfg)
    parent = family.build(cfg).double().eval()
    child_cfg = child_config(g, cfg, n_layers)
    child = family.build(child_cfg).double().eval()
    state = grow(g, family.weights(parent), cfg, child_cfg)
    family.load_weights(child, state)
    return parent, child, state


def logits(model) -> torch.Tensor:
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    return family_of(model).logits(model, x)


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
@pytest.mark.parametrize("op", ["identity", "masked", "stack"])
def test_a_late_jump_makes_distinct_blocks_and_keeps_the_function_where_the_operator_did(cfg, op):
    g = GrowthConfig(operator=op, layout="stack", noise=1e-3, noise_seed=5)
    parent, child, state = grown(cfg, g, 4)  # 1 -> 4: three copies of block 0
    prefix = family_of(cfg).layout.block_prefix
    matrices = [k.removeprefix(f"{prefix}0.") for k, v in state.items() if k.startswith(f"{prefix}0.") and v.dim() == 2]
    writers = family_of(cfg).layout.residual_writers
    for suffix in matrices:
        copies = [state[f"{prefix}{j}.{suffix}"] for j in range(4)]
        if op == "identity" and suffix in writers:
            assert all(not c.any() for c in copies[1:]), suffix  # still zero: each new block is x -> x
            continue
        for a in range(4):
            for b in range(a + 1, 4):
                diff = (copies[a] - copies[b]).abs().max().item()
                assert 0 < diff < 1e-2, (suffix, a, b)  # distinct, and only slightly
    if op == "masked":
        GateRamp(layer_map(g, 1, 4).new_blocks, steps=5).apply(child, 0)
    if op != "stack":
        assert (logits(child) - logits(parent)).abs().max().item() <= 1e-10
    again = grown(cfg, g, 4)[2]
    assert all(torch.equal(v, again[k]) for k, v in state.items())  # a pure function of noise_seed


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
def test_without_noise_the_copies_are_exact(cfg):
    _, _, state = grown(cfg, GrowthConfig(operator="stack"), 2)
    prefix = family_of(cfg).layout.block_prefix
    assert all(torch.equal(v, state[k.replace(f"{prefix}1.", f"{prefix}0.")]) for k, v in state.items())
