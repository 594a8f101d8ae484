"""Growth of every transformers decoder in FAMILIES (Llama, Qwen3, Qwen2, ...): layer maps over
``model.layers.<i>.`` (bitwise), function preservation through the transformers forward pass (float64, <= 1e-10),
width with GQA and tied embeddings, gates, errors."""

import pytest
import torch

from models.families.family import token_loss
from models.families.llama import LlamaFamilyConfig
from models.families.lookup import FAMILIES, family_of
from models.growth import GrowthConfig, GrowthError, child_config, dry_run, grow, layer_map
from models.growth_moments import grow_moments
from models.train.plan import GateRamp

torch.set_num_threads(1)

DECODERS = [name for name, f in FAMILIES.items() if f.config is LlamaFamilyConfig]  # a new decoder is tested too
CONFIGS = [
    *(
        LlamaFamilyConfig(arch=name, n_layers=3, d_model=16, n_heads=4, n_kv_heads=2, d_ff=24, context=8, vocab_size=40)
        for name in DECODERS
    ),
    LlamaFamilyConfig(
        arch="llama",
        n_layers=3,
        d_model=16,
        n_heads=4,
        n_kv_heads=1,
        d_ff=24,
        context=8,
        vocab_size=40,
        tie_embeddings=True,
        rope_theta=500.0,
    ),
]
IDS = [*DECODERS, "llama-tied-mqa"]


def parent64(cfg: LlamaFamilyConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = family_of(cfg).build(cfg).double().eval()
    with torch.no_grad():  # norms away from 1, so that a wrong copy of an RMSNorm weight cannot hide
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def grown64(g: GrowthConfig, parent, n_layers: int):
    cfg = child_config(g, parent.cfg, n_layers)
    child = family_of(cfg).build(cfg).double().eval()
    family_of(child).load_weights(child, grow(g, family_of(parent).weights(parent), parent.cfg, cfg))
    return child


def out(model, x: torch.Tensor) -> torch.Tensor:
    return family_of(model).logits(model, x)  # the transformers forward: model(input_ids=x).logits


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize(
    "g",
    [GrowthConfig(operator=o, layout=lay) for o in ("identity", "masked") for lay in ("interleave", "stack", "middle")],
    ids=lambda g: f"{g.operator}-{g.layout}",
)
def test_depth_growth_preserves_the_transformers_function_float64(cfg, g):
    parent = parent64(cfg)
    n_layers = 5 if g.layout == "middle" else 6
    child = grown64(g, parent, n_layers)
    if g.operator == "masked":  # at the step of growth the new layers' gates are 0
        GateRamp(layer_map(g, 3, n_layers).new_blocks, steps=10).apply(child, 0)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.context))
    assert (out(child, x) - out(parent, x)).abs().max().item() <= 1e-10


def _rmsnorm_in_float64(self, hidden_states):
    """transformers' RMSNorm formula, with its statistic in the input's dtype rather than always float32."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture
def float64_rmsnorm(monkeypatch):
    norms = {type(m) for cfg in CONFIGS for m in family_of(cfg).build(cfg).modules() if "RMSNorm" in type(m).__name__}
    for cls in norms:  # each decoder's own RMSNorm class (LlamaRMSNorm, Qwen3RMSNorm, ...)
        monkeypatch.setattr(cls, "forward", _rmsnorm_in_float64)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_width_preserves_the_function_float64(cfg, noise, float64_rmsnorm):
    """Exact up to float64 rounding, through the transformers modules, once RMSNorm's mean of squares is taken in
    float64 (transformers takes it in float32 even in a float64 model: see the next test)."""
    parent = parent64(cfg)
    g = GrowthConfig(operator="width", noise=noise)
    child = grown64(g, parent, cfg.n_layers)
    c = child.cfg
    assert (c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.resolved_head_dim) == (32, 8, 2 * cfg.n_kv_heads, 48, 4)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.context))
    assert (out(child, x) - out(parent, x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_width_through_the_unmodified_transformers_forward_is_float32_exact(cfg):
    """transformers' RMSNorm casts to float32 for its statistic, so a mean over [x; x] (2C entries) and over x
    (C entries) round differently: the difference is float32 rounding, far below any training signal."""
    parent = parent64(cfg)
    child = grown64(GrowthConfig(operator="width"), parent, cfg.n_layers)
    x = torch.randint(0, cfg.vocab_size, (3, cfg.context))
    ref = out(parent, x)
    assert (out(child, x) - ref).abs().max().item() <= 1e-6 * ref.abs().max().item()


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_width_moments_are_the_grown_models_gradients(cfg, float64_rmsnorm):
    """Adam moments follow the gradients: at the widened point the child's gradient is the parent's, mapped (halved
    per copy; the final norm and q/k norms keep theirs). Off-diagonal blocks of a widened matrix start fresh (zero
    moments), as for the byte GPT, so they are left out of the comparison."""
    parent = parent64(cfg)
    g = GrowthConfig(operator="width")
    child = grown64(g, parent, cfg.n_layers)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context + 1))
    grads = []
    for model in (parent, child):
        model.zero_grad()
        token_loss(out(model, x[:, :-1]), x[:, 1:]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    mapped = family_of(cfg).widen_moments(grads[0], parent.cfg, child.cfg, power=1)
    assert mapped.keys() == grads[1].keys()
    for name, grad in grads[1].items():
        placed = torch.ones_like(grad, dtype=torch.bool)
        if grad.dim() == 2 and "embed_tokens" not in name and "lm_head" not in name:  # block-diagonal: (2n, 2m)
            n, m = grad.shape[0] // 2, grad.shape[1] // 2
            placed[:n, m:] = placed[n:, :m] = False
        torch.testing.assert_close(grad[placed], mapped[name][placed], rtol=1e-9, atol=1e-13, msg=name)
        assert not mapped[name][~placed].any(), name


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("operator", ["stack", "interleave", "middle", "identity", "masked"])
def test_layer_maps_are_bitwise_over_model_layers(cfg, operator):
    g = GrowthConfig(operator=operator)
    parent = parent64(cfg)
    before = {k: v.clone() for k, v in family_of(parent).weights(parent).items()}
    n_layers = 5 if operator == "middle" else 6
    child = grow(g, family_of(parent).weights(parent), cfg, child_config(g, cfg, n_layers))
    lmap = layer_map(g, 3, n_layers)
    writers = family_of(cfg).layout.residual_writers
    assert ("lm_head.weight" in child) != cfg.tie_embeddings
    for key, value in child.items():
        if not key.startswith("model.layers."):
            assert torch.equal(value, before[key]), key
            continue
        j, suffix = key.removeprefix("model.layers.").split(".", 1)
        src = before[f"model.layers.{lmap.sources[int(j)]}.{suffix}"]
        if operator == "identity" and lmap.new[int(j)] and suffix in writers:
            assert not value.any(), key
        else:
            assert torch.equal(value, src), key
    assert {k: v for k, v in family_of(parent).weights(parent).items() if not torch.equal(v, before[k])} == {}


def test_depth_moments_map_like_the_weights():
    cfg = CONFIGS[0]
    params = dict(parent64(cfg).named_parameters())
    moments = {f"{m}.{k}": torch.rand_like(v) for k, v in params.items() for m in ("exp_avg", "exp_avg_sq")}
    moments["step"] = torch.tensor(7.0)
    g = GrowthConfig(operator="identity")
    grown = grow_moments(g, moments, cfg, child_config(g, cfg, 6))
    assert torch.equal(  # interleave: child layer 2 is parent layer 1, carried with its moments and step
        grown["exp_avg.model.layers.2.mlp.up_proj.weight"], moments["exp_avg.model.layers.1.mlp.up_proj.weight"]
    )
    assert "step.model.layers.2.mlp.up_proj.weight" not in grown and grown["step"].item() == 7.0
    for key in ("mlp.up_proj.weight", "self_attn.o_proj.weight"):  # layer 1, a new copy, starts fresh: step 0
        assert not grown[f"exp_avg_sq.model.layers.1.{key}"].any() and grown[f"step.model.layers.1.{key}"] == 0


def test_masked_gates_fold_into_o_proj_and_down_proj():
    cfg = CONFIGS[1]
    child = grown64(GrowthConfig(operator="masked"), parent64(cfg), 6)
    for j in (1, 3):
        family_of(child).set_gate(child, j, 0.3)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    before = out(child, x)
    family_of(child).fold_gates(child)
    assert not any(
        hasattr(layer, "gate_hooks") for layer in family_of(child).blocks(child)
    )  # a plain transformers model again
    assert (out(child, x) - before).abs().max().item() <= 1e-12
    assert set(family_of(child).weights(child)) == set(
        family_of(child.cfg).weights(family_of(child.cfg).build(child.cfg))
    )


@pytest.mark.parametrize(
    "child, match",
    [
        (CONFIGS[0].model_copy(update={"n_layers": 7}), "multiple of 3"),
        (CONFIGS[0].model_copy(update={"n_layers": 6, "n_kv_heads": 4}), r"equal shapes, but n_kv_heads 2 -> 4"),
        (CONFIGS[1].model_copy(update={"n_layers": 6}), f"cannot grow a llama model into a {CONFIGS[1].arch} model"),
        (CONFIGS[0].model_copy(update={"n_layers": 6, "vocab_size": 50}), "vocab_size 40 -> 50"),
    ],
)
def test_impossible_llama_growth_is_one_line(child, match):
    with pytest.raises(GrowthError, match=match) as e:
        dry_run("stack", CONFIGS[0], child)
    assert "\n" not in str(e.value)


def test_width_refuses_a_child_that_is_not_the_doubled_parent():
    bad = CONFIGS[0].model_copy(update={"d_model": 32, "n_heads": 8, "d_ff": 48})  # n_kv_heads not doubled
    with pytest.raises(GrowthError, match=r"n_kv_heads 2 \(expected 4\)") as e:
        dry_run("width", CONFIGS[0], bad)
    assert "\n" not in str(e.value)
