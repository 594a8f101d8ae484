"""Depth-muP (model.depth_mup): residual-branch multipliers on both families, function-preserving growth under
them (float64), block-weights-only LR, moments mapped as the gradients scale, and a decoder's saved directory
that plain transformers loads into the same function."""

import math

import pytest
import torch

from models.families.depth_mup import block_lr_factor, branch_multiplier
from models.families.gpt import GPTConfig
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import family_of
from models.growth import GrowthConfig, child_config, grow, layer_map
from models.growth_moments import grow_moments
from models.train.loop import TrainConfig, make_optimizer
from models.train.plan import GateRamp

torch.set_num_threads(1)

GPT_CFG = GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=8)
LLAMA_CFG = LlamaFamilyConfig(arch="llama", n_layers=2, d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, context=8)
FAMILIES = [GPT_CFG, LLAMA_CFG]
IDS = ["gpt", "llama"]


def built(cfg, seed: int = 0):
    torch.manual_seed(seed)
    family = family_of(cfg)
    return family.build(cfg).double().eval()


def logits(model, seed: int = 1) -> torch.Tensor:
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(seed))
    return family_of(model).logits(model, x)


def test_multipliers_and_lr_factors():
    assert branch_multiplier("none", 9) == 1.0 and block_lr_factor("none", 9) == 1.0
    assert branch_multiplier("sqrt", 9) == pytest.approx(1 / 3) and block_lr_factor("sqrt", 9) == pytest.approx(1 / 3)
    assert branch_multiplier("completep", 8) == 1 / 8 and block_lr_factor("completep", 8) == 1.0


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
@pytest.mark.parametrize("mode", ["sqrt", "completep"])
def test_the_multiplier_scales_every_residual_branch(cfg, mode):
    """x + m * attn(...), x + m * mlp(...) is the plain model with its residual writers times m."""
    mup = cfg.model_copy(update={"depth_mup": mode})
    model, plain = built(mup), built(cfg)
    m, family = branch_multiplier(mode, cfg.n_layers), family_of(cfg)
    writers = tuple(f".{s}" for s in family.layout.residual_writers)
    state = family.weights(model)
    family.load_weights(plain, {k: v * m if k.endswith(writers) else v for k, v in state.items()})
    assert (logits(model) - logits(plain)).abs().max().item() <= 1e-12
    assert (logits(model) - logits(built(cfg))).abs().max().item() > 1e-3  # it does change the function


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
@pytest.mark.parametrize("mode", ["sqrt", "completep"])
@pytest.mark.parametrize("op", ["identity", "masked"])
def test_function_preserving_growth_stays_exact_under_depth_mup(cfg, mode, op):
    """The child's multiplier (depth 4) is not the parent's (depth 2): the writers are rescaled at growth."""
    parent_cfg = cfg.model_copy(update={"depth_mup": mode})
    parent = built(parent_cfg)
    with torch.no_grad():  # writers away from 0 so that a missing rescale shows
        for p in parent.parameters():
            p.add_(0.05 * torch.randn_like(p))
    g = GrowthConfig(operator=op, layout="stack")
    child_cfg = child_config(g, parent_cfg, 4)
    child = built(child_cfg)
    family = family_of(child)
    family.load_weights(child, grow(g, family.weights(parent), parent_cfg, child_cfg))
    if op == "masked":
        GateRamp(layer_map(g, 2, 4).new_blocks, steps=5).apply(child, 0)
    assert (logits(child) - logits(parent)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
def test_mapped_moments_scale_as_the_childs_gradients(cfg):
    """Carried writers are r = m_parent/m_child times the parent's, so their gradients are 1/r times: the mapped
    first moments of the parent's gradient are the child's gradient (identity growth, float64)."""
    parent_cfg = cfg.model_copy(update={"depth_mup": "sqrt"})
    parent = built(parent_cfg)
    g = GrowthConfig(operator="identity", layout="stack")
    child_cfg = child_config(g, parent_cfg, 4)
    child, family = built(child_cfg), family_of(parent_cfg)
    family.load_weights(child, grow(g, family.weights(parent), parent_cfg, child_cfg))

    def grads(model) -> dict[str, torch.Tensor]:
        x = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(3))
        model.zero_grad()
        out = family.logits(model, x[:, :-1])
        torch.nn.functional.cross_entropy(out.reshape(-1, out.size(-1)), x[:, 1:].reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    gp, gc = grads(parent), grads(child)
    moments = {**{f"exp_avg.{n}": v for n, v in gp.items()}, **{f"exp_avg_sq.{n}": v * v for n, v in gp.items()}}
    mapped = grow_moments(g, {**moments, "step": torch.tensor(1.0)}, parent_cfg, child_cfg)
    carried = [n for n in gc if not n.startswith(tuple(f"{family.layout.block_prefix}{j}." for j in (2, 3)))]
    for n in carried:
        assert torch.allclose(mapped[f"exp_avg.{n}"], gc[n], rtol=1e-9, atol=1e-14), n
        assert torch.allclose(mapped[f"exp_avg_sq.{n}"], gc[n] ** 2, rtol=1e-9, atol=1e-20), n


@pytest.mark.parametrize("cfg", FAMILIES, ids=IDS)
def test_only_block_weights_get_the_depth_lr(cfg):
    model = family_of(cfg).build(cfg.model_copy(update={"depth_mup": "sqrt", "n_layers": 4}))
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    names = {p: n for n, p in model.named_parameters()}
    prefix = family_of(cfg).layout.block_prefix
    for group in opt.param_groups:
        for p in group["params"]:
            assert group["lr_scale"] == (0.5 if names[p].startswith(prefix) else 1.0), names[p]
    assert len(make_optimizer(family_of(cfg).build(cfg), TrainConfig(lr=1e-2)).param_groups) == 2  # none: as before


def test_a_saved_decoder_loads_in_transformers_as_the_same_function(tmp_path):
    """The directory holds the multiplier folded into o_proj/down_proj: AutoModelForCausalLM computes the trained
    function; the project reads the weights back as trained; the model in memory is untouched by the save."""
    from transformers import AutoModelForCausalLM

    from tasks.store import load_state, save_model

    cfg = LLAMA_CFG.model_copy(update={"depth_mup": "sqrt", "n_layers": 3})
    torch.manual_seed(0)
    family = family_of(cfg)
    model = family.build(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_model(model, tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = family.logits(model, x)
        assert (hf(input_ids=x).logits - want).abs().max().item() <= 1e-5
        read_cfg, state = load_state(tmp_path, None)
        again = family.build(read_cfg).eval()
        family.load_weights(again, state)
        assert read_cfg.depth_mup == "sqrt" and (family.logits(again, x) - want).abs().max().item() <= 1e-5
    m = 1 / math.sqrt(3)
    assert not torch.allclose(hf.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)
    assert torch.allclose(hf.model.layers[0].mlp.down_proj.weight, m * model.model.layers[0].mlp.down_proj.weight)
