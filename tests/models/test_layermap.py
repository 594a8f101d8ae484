"""Explicit layer maps and the named recipes (SOLAR, LLaMA-Pro ``every``, interposition): the maps themselves,
non-multiple depths on every family (bitwise copies, Adam moments mapped the same way), float64 function
preservation of every identity/masked recipe on every family, and one-line errors for bad maps."""

import pytest
import torch

from models.families.lookup import FAMILIES as ALL_FAMILIES
from models.families.lookup import family_of
from models.growth import GrowthConfig, GrowthError, child_config, dry_run, grow, layer_map
from models.growth_moments import grow_moments
from models.train.plan import GateRamp
from tasks.config import ConfigError, load_config
from tasks.config.identity import spec_hash

torch.set_num_threads(1)

SMALL = {"d_model": 16, "n_heads": 4, "d_ff": 24, "context": 8}
DECODER = {"n_kv_heads": 2, "vocab_size": 40}  # where a family has them
FAMILIES = {  # every family in models.families.lookup.FAMILIES: a new family is covered without an edit
    name: f.tiny(n_layers=6, **SMALL, **{k: v for k, v in DECODER.items() if k in f.config.model_fields})
    for name, f in ALL_FAMILIES.items()
}
RECIPES = {  # each one line of config; 6 parent blocks
    "layers-6-9": ({"layers": [0, 1, 1, 2, 3, 3, 4, 5, 5]}, 9),
    "solar": ({"solar": {"drop": 2}}, 8),
    "every": ({"every": 2}, 9),
    "interpose": ({"interpose": {"skip_first": 1, "skip_last": 2}}, 9),
}


def test_recipe_maps():
    def m(parent, child, **g):
        return layer_map(GrowthConfig(**g), parent, child).describe()

    assert m(8, 12, solar={"drop": 2}) == "0 1 2 3 4 5 2* 3* 4* 5* 6 7"  # SOLAR at toy size
    assert layer_map(GrowthConfig(solar={"drop": 8}), 32, 48).sources == (*range(24), *range(8, 32))
    assert m(8, 10, every=4) == "0 1 2 3 3* 4 5 6 7 7*"  # LLaMA-Pro
    assert layer_map(GrowthConfig(every=4), 32, 40).new_blocks == [4 + 5 * i for i in range(8)]
    assert m(6, 10, interpose={"skip_first": 1, "skip_last": 1}) == "0 1 1* 2 2* 3 3* 4 4* 5"
    assert m(3, 5, layers=[2, 0, 0, 1, 2]) == "2 0 0* 1 2*"  # any order, repeats
    assert m(3, 2, layers=[2, 0]) == "2 0"  # shallower than the parent too
    assert m(3, 4, layers=[0, 1, 1, 2], new=[1]) == "0 1* 1 2"  # growth.new overrides the rule
    assert layer_map(GrowthConfig(operator="identity", layout="stack"), 3, 6).describe() == "0 1 2 0* 1* 2*"


def _parent64(cfg, seed=0):
    torch.manual_seed(seed)
    model = family_of(cfg).build(cfg).double().eval()
    with torch.no_grad():  # norms and biases away from 1 and 0: a wrong copy cannot hide behind its init
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _grown64(g, parent, n_layers):
    cfg = child_config(g, parent.cfg, n_layers)
    child = family_of(cfg).build(cfg).double().eval()
    family_of(cfg).load_weights(child, grow(g, family_of(parent).weights(parent), parent.cfg, cfg))
    return child


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_non_multiple_maps_copy_weights_and_moments_bitwise(arch, recipe):
    cfg, (g, n) = FAMILIES[arch], RECIPES[recipe]
    g = GrowthConfig(**g)
    family, prefix = family_of(cfg), family_of(cfg).layout.block_prefix
    weights = family.weights(_parent64(cfg))
    moments = {f"{m}.{k}": torch.rand_like(v) for k, v in weights.items() for m in ("exp_avg", "exp_avg_sq")}
    moments["step"] = torch.tensor(5.0)
    child_cfg = child_config(g, cfg, n)
    grown, grown_moments = grow(g, weights, cfg, child_cfg), grow_moments(g, moments, cfg, child_cfg)
    lmap = layer_map(g, 6, n)
    for key, value in grown.items():
        src, new = key, False
        if key.startswith(prefix):
            j, suffix = key.removeprefix(prefix).split(".", 1)
            src, new = f"{prefix}{lmap.sources[int(j)]}.{suffix}", lmap.new[int(j)]
        assert torch.equal(value, weights[src]), key
        for m in ("exp_avg", "exp_avg_sq"):  # the moments follow their parameter; a new copy starts with none
            want = torch.zeros_like(moments[f"{m}.{src}"]) if new else moments[f"{m}.{src}"]
            assert torch.equal(grown_moments[f"{m}.{key}"], want), key
        assert grown_moments.get(f"step.{key}", grown_moments["step"]).item() == (0.0 if new else 5.0), key
    assert grown_moments["step"].item() == 5.0


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("operator", ["identity", "masked"])
@pytest.mark.parametrize("recipe", ["solar", "every", "interpose", "explicit"])
def test_every_identity_and_masked_recipe_preserves_the_function_float64(arch, operator, recipe):
    cfg = FAMILIES[arch]
    g, n = {
        "solar": ({"solar": {"drop": 2}}, 8),
        "every": ({"every": 4}, 7),
        "interpose": ({"interpose": {"skip_first": 2, "skip_last": 1}}, 9),
        "explicit": ({"layers": [0, 0, 1, 2, 3, 3, 3, 4, 5], "new": [1, 5, 6]}, 9),
    }[recipe]
    g = GrowthConfig(operator=operator, **g)
    parent = _parent64(cfg)
    child = _grown64(g, parent, n)
    if operator == "masked":  # at the step of growth the new blocks' gates are 0
        GateRamp(layer_map(g, 6, n).new_blocks, steps=10).apply(child, 0)
    x = torch.randint(0, 40, (3, cfg.context))
    family = family_of(cfg)
    assert (family.logits(child, x) - family.logits(parent, x)).abs().max().item() <= 1e-10


def test_a_plain_copy_along_a_map_changes_the_function():
    """The test above could fail: the same maps with plain copies compute something else."""
    cfg = FAMILIES["llama"]
    parent = _parent64(cfg)
    x = torch.randint(0, 40, (2, cfg.context))
    child = _grown64(GrowthConfig(every=4), parent, 7)
    assert (family_of(cfg).logits(child, x) - family_of(cfg).logits(parent, x)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "g, n, match",
    [
        ({"layers": [0, 1, 6]}, 3, r"growth.layers names parent blocks \[6\], but the parent has blocks 0..5"),
        ({"layers": [0, -1, 2]}, 3, r"names parent blocks \[-1\]"),
        ({"layers": [0, 1, 2]}, 4, "growth.layers makes 3 layers from 6, but n_layers is 4"),
        ({"solar": {"drop": 6}}, 8, "growth.solar.drop 6 must be below the parent's depth 6"),
        ({"solar": {"drop": 2}}, 12, r"growth.solar \{drop: 2\} makes 8 layers from 6, but n_layers is 12"),
        ({"every": 7}, 7, "growth.every 7 exceeds the parent's depth 6"),
        ({"interpose": {"skip_first": 3, "skip_last": 3}}, 7, "at least one must be duplicated"),
        ({"layers": [0, 1, 2], "new": [3]}, 3, r"growth.new names child blocks \[3\]"),
        ({"operator": "stack"}, 9, r"cannot stack 6 layers into 9: .* \(growth.layers takes any depth\)"),
    ],
)
def test_bad_maps_are_one_line(g, n, match):
    cfg = FAMILIES["gpt"]
    with pytest.raises(GrowthError, match=match) as e:
        dry_run(GrowthConfig(**g), cfg, cfg.model_copy(update={"n_layers": n}))
    assert "\n" not in str(e.value)


BASE = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.context=8", "stages.0.n_layers=6"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["stages.1.growth.layers=[]"], "stages.1.growth.layers: Tuple should have at least 1 item"),
        (["stages.1.growth.every=0"], "stages.1.growth.every: Input should be greater than or equal to 1"),
        (["stages.1.growth.every=-2"], "stages.1.growth.every: Input should be greater than or equal to 1"),
        (["stages.1.growth.solar={drop: -1}"], "stages.1.growth.solar.drop: Input should be greater than or equal"),
        (["stages.1.growth.every=2", "stages.1.growth.solar={drop: 1}"], "give one layer map, not solar and every"),
        (["stages.1.growth.every=2", "stages.1.growth.operator=width"], "every is a layer map: it goes with"),
        (["stages.1.n_layers=12", "stages.1.growth.solar={drop: 6}"], "stages.1: growth.solar.drop 6 must be below"),
        (["stages.1.n_layers=9", "stages.1.growth.layers=[0,1,2,9]"], "stages.1: growth.layers makes 4 layers"),
    ],
)
def test_bad_maps_in_a_config_are_one_line_before_training(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, BASE + overrides)
    assert "\n" not in str(e.value)


def test_a_recipe_resolves_into_the_stage_spec_and_its_key():
    one = load_config(
        None,
        BASE
        + ["stages.2.n_layers=18", "stages.1.n_layers=9", "stages.1.growth.interpose={skip_first: 1, skip_last: 2}"],
    )
    two = load_config(
        None, BASE + ["stages.2.n_layers=18", "stages.1.n_layers=9", "stages.1.growth.layers=[0,1,1,2,2,3,3,4,5]"]
    )
    spec_one, spec_two = one.stage_specs()[1], two.stage_specs()[1]
    assert spec_one.growth.interpose.skip_first == 1 and spec_one.model.n_layers == 9
    assert spec_hash(spec_one) != spec_hash(spec_two)  # the map is part of the stage key


@pytest.mark.parametrize("arch", FAMILIES)
def test_solar_grows_32_layers_into_48_on_every_family(arch):
    """SOLAR's own depths at toy width: blocks 0..23 then 8..31, every weight a copy of its source."""
    cfg = FAMILIES[arch].model_copy(update={"n_layers": 32})
    g = GrowthConfig(solar={"drop": 8})
    family, prefix = family_of(cfg), family_of(cfg).layout.block_prefix
    torch.manual_seed(0)
    weights = family.weights(family.build(cfg))
    grown = grow(g, weights, cfg, child_config(g, cfg, 48))  # checked against the 48-layer config's shapes
    sources = [*range(24), *range(8, 32)]
    for j in (0, 23, 24, 47):
        for key in [k for k in weights if k.startswith(f"{prefix}{sources[j]}.")]:
            suffix = key.removeprefix(f"{prefix}{sources[j]}.")
            assert torch.equal(grown[f"{prefix}{j}.{suffix}"], weights[key]), (j, suffix)
