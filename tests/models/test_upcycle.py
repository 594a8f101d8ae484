"""Sparse upcycling (growth.operator upcycle): a dense Llama/Mistral -> a Mixtral whose experts are copies of each
layer's MLP. Function preservation in float64 through transformers' own MixtralForCausalLM, the router's top-k
weights as the installed transformers computes them, Adam moments (experts the MLP's, router fresh), the FLOPs of
active experts only, a version directory that transformers loads, and one-line refusals."""

import pytest
import torch

from models.families.lookup import FAMILIES, family_of, load_dir
from models.families.mixtral import DOWN, GATE_UP, ROUTER
from models.growth import GrowthConfig, GrowthError, child_config, dry_run, grow
from models.growth_moments import grow_moments
from models.train.optim import export_moments, load_moments, make_optimizer

torch.set_num_threads(1)

DENSE = [n for n, f in FAMILIES.items() if f.moe == "mixtral"]  # llama, mistral
UP = GrowthConfig(operator="upcycle", experts=4, top_k=2, router_std=0.0)


def _parent(arch: str, **fields):
    torch.manual_seed(0)
    cfg = FAMILIES[arch].tiny(n_layers=2, **fields)
    model = family_of(cfg).build(cfg).double().eval()
    with torch.no_grad():  # norms away from 1: a copy from the wrong place cannot hide behind its init
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _upcycled(parent, g: GrowthConfig):
    cfg = child_config(g, parent.cfg, parent.cfg.n_layers)
    fam = family_of(cfg)
    child = fam.build(cfg).double().eval()  # float64 throughout (from_state would cast to the float32 build)
    fam.load_weights(child, grow(g, family_of(parent).weights(parent), parent.cfg, cfg))
    return child


def _logits(model, seed=1):
    idx = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.context), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return family_of(model).logits(model, idx)


def test_the_only_mixtral_parents_are_llama_and_mistral():
    assert sorted(DENSE) == ["llama", "mistral"]


@pytest.mark.parametrize("fields", [{}, {"tie_embeddings": True}, {"depth_mup": "sqrt"}], ids=["", "tied", "mup"])
@pytest.mark.parametrize("arch", DENSE)
def test_a_zero_router_computes_the_parents_function_exactly_in_float64(arch, fields):
    parent = _parent(arch, **fields)
    child = _upcycled(parent, UP)
    assert type(child).__name__ == "MixtralForCausalLM" and child.cfg.arch == "mixtral"
    torch.testing.assert_close(_logits(child), _logits(parent), rtol=0, atol=1e-12)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_any_router_computes_it_up_to_the_float32_softmax_of_transformers(top_k):
    """MixtralTopKRouter takes its softmax in float32 and renormalizes the top k to sum 1: a random router moves
    the function only by float32 rounding of the weights (exact for top_k 1: its one weight is 1)."""
    parent = _parent("llama")
    g = UP.model_copy(update={"router_std": 0.5, "top_k": top_k})
    child = _upcycled(parent, g)
    err = (_logits(child) - _logits(parent)).abs().max().item()
    assert err < 1e-6 and (err == 0.0 if top_k == 1 else True)
    router = child.model.layers[0].mlp.gate
    assert router.weight.std().item() == pytest.approx(0.5, rel=0.3)
    h = torch.randn(8, child.cfg.d_model, dtype=torch.float64)
    _, weights, chosen = router(h)  # transformers' own router
    assert weights.shape == (8, top_k) and torch.allclose(weights.sum(-1), torch.ones(8, dtype=weights.dtype))
    assert len({tuple(c.tolist()) for c in chosen}) > 1  # tokens go to different experts: the copies will part


def test_every_expert_is_its_layers_mlp_and_the_zero_router_weighs_them_equally():
    parent = _parent("llama")
    child = _upcycled(parent, UP)
    for dense, moe in zip(parent.model.layers, child.model.layers):
        experts = moe.mlp.experts
        for e in range(4):
            gate, up = experts.gate_up_proj[e].chunk(2)  # transformers' MixtralExperts chunks gate, then up
            assert torch.equal(gate, dense.mlp.gate_proj.weight) and torch.equal(up, dense.mlp.up_proj.weight)
            assert torch.equal(experts.down_proj[e], dense.mlp.down_proj.weight)
        _, weights, _ = moe.mlp.gate(torch.randn(5, child.cfg.d_model, dtype=torch.float64))
        assert torch.equal(weights, torch.full((5, 2), 0.5, dtype=weights.dtype))  # uniform, renormalized: 1/k


def test_noise_makes_every_expert_different_and_is_reproducible():
    parent = _parent("llama")
    g = UP.model_copy(update={"noise": 0.01, "noise_seed": 3})
    a, b = _upcycled(parent, g), _upcycled(parent, g)
    w = a.model.layers[1].mlp.experts.gate_up_proj
    assert all(not torch.equal(w[i], w[j]) for i in range(4) for j in range(i))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert (_logits(a) - _logits(parent)).abs().max().item() > 1e-6  # noise is not function preserving


def test_moments_experts_inherit_the_mlps_and_the_router_starts_fresh():
    parent = _parent("llama").float().train()
    fam = family_of(parent)
    opt = make_optimizer(parent, lr=1e-3, weight_decay=0.1, beta2=0.99)
    for seed in range(3):
        opt.zero_grad()
        x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(seed))
        fam.logits(parent, x).logsumexp(-1).mean().backward()
        opt.step()
    moments = export_moments(parent, opt)
    child_cfg = child_config(UP, parent.cfg, 2)
    mapped = grow_moments(UP, moments, parent.cfg, child_cfg)
    layer = "model.layers.1."
    for kind in ("exp_avg.", "exp_avg_sq."):
        dense = {s: moments[f"{kind}{layer}mlp.{s}_proj.weight"] for s in ("gate", "up", "down")}
        for e in range(4):
            assert torch.equal(mapped[f"{kind}{layer}{GATE_UP}"][e], torch.cat([dense["gate"], dense["up"]]))
            assert torch.equal(mapped[f"{kind}{layer}{DOWN}"][e], dense["down"])
        assert not mapped[f"{kind}{layer}{ROUTER}"].any()  # the router: no moments
        key = f"{kind}{layer}self_attn.q_proj.weight"
        assert torch.equal(mapped[key], moments[key])  # attention as it was
    assert mapped["step"].item() == 3 and mapped[f"step.{layer}{ROUTER}"].item() == 0  # the router's own step
    assert f"step.{layer}{GATE_UP}" not in mapped  # an expert takes the parent's step
    child = family_of(child_cfg).from_state(child_cfg, grow(UP, fam.weights(parent), parent.cfg, child_cfg))
    child_opt = make_optimizer(child, lr=1e-3, weight_decay=0.1, beta2=0.99)
    load_moments(child, child_opt, mapped)  # fits the Mixtral's parameters, key for key
    router, experts = child.model.layers[1].mlp.gate.weight, child.model.layers[1].mlp.experts.down_proj
    assert router not in child_opt.state  # no state: AdamW starts it afresh (its own step 0, true bias correction)
    assert child_opt.state[experts]["step"].item() == 3


def test_flops_count_active_experts_only():
    llama = FAMILIES["llama"].tiny(n_layers=3)
    fam = FAMILIES["mixtral"]
    moe = child_config(UP, llama, 3)
    C, F, L = llama.d_model, llama.d_ff, llama.n_layers
    # top-2 of 4: the SwiGLU twice per token, plus the router's C x E
    assert fam.flops_per_token(moe) - FAMILIES["llama"].flops_per_token(llama) == 6 * L * (3 * C * F + C * 4)
    more = moe.model_copy(update={"experts": 8})
    assert fam.flops_per_token(more) - fam.flops_per_token(moe) == 6 * L * C * 4  # more experts: only the router
    assert fam.num_params(more) - fam.num_params(moe) == L * 4 * (3 * C * F + C)  # ...but every expert is stored
    built = fam.build(moe)
    assert fam.num_params(moe) == sum(p.numel() for p in built.parameters())


def test_a_saved_mixtral_loads_in_transformers_and_here_as_the_same_function(tmp_path):
    from transformers import AutoModelForCausalLM

    child = _upcycled(_parent("mistral"), UP.model_copy(update={"router_std": 0.02, "noise": 0.01})).float()
    fam = family_of(child)
    fam.save(child, tmp_path, None, 5 * 10**9)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ours = load_dir(tmp_path)
    assert type(theirs).__name__ == "MixtralForCausalLM" and theirs.config.num_experts_per_tok == 2
    assert theirs.config.num_local_experts == 4 and theirs.config.sliding_window is None
    want = _logits(child)
    torch.testing.assert_close(_logits(ours), want, rtol=0, atol=0)
    with torch.no_grad():
        got = theirs(torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "arch, growth, message",
    [
        ("gpt", UP, "cannot upcycle a gpt model: it has no MoE counterpart"),
        ("qwen2", UP, "cannot upcycle a qwen2 model"),
        ("mixtral", UP, "cannot upcycle a mixtral model"),
    ],
)
def test_a_family_without_moe_counterpart_is_refused_in_one_line(arch, growth, message):
    cfg = FAMILIES[arch].tiny(n_layers=2)
    with pytest.raises(GrowthError, match=message) as e:
        dry_run(growth, cfg, child_config(growth, cfg, 2))
    assert "\n" not in str(e.value)


def test_bad_expert_counts_and_depths_are_refused():
    with pytest.raises(ValueError, match="top_k 3 is more than the 2 experts"):
        GrowthConfig(operator="upcycle", experts=2, top_k=3)
    with pytest.raises(ValueError, match="greater than or equal to 2"):
        GrowthConfig(operator="upcycle", experts=1, top_k=1)
    with pytest.raises(ValueError, match="needs experts"):
        GrowthConfig(operator="upcycle")
    with pytest.raises(ValueError, match="go with operator upcycle"):
        GrowthConfig(operator="stack", experts=4)
    again = GrowthConfig.model_validate_json(UP.model_copy(update={"router_std": 0.1}).model_dump_json())
    assert GrowthConfig.model_validate_json(GrowthConfig(operator="stack").model_dump_json()).operator == "stack"
    assert again.router_std == 0.1  # a growth config round-trips through JSON (how a torchrun rank receives it)
    llama = FAMILIES["llama"].tiny(n_layers=2)
    with pytest.raises(GrowthError, match="upcycle growth keeps the depth"):
        dry_run(UP, llama, child_config(UP, llama, 4))
    moe, width = child_config(UP, llama, 2), GrowthConfig(operator="width")
    with pytest.raises(GrowthError, match="width growth of a mixtral model is not supported"):
        dry_run(width, moe, child_config(width, moe, 2))
