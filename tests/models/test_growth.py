"""Depth operators: layer maps (bitwise), function preservation (float64), one-line errors."""

import pytest
import torch

from models.families.gpt import BYTE_GPT, GPT, GPTConfig
from models.growth import (
    GrowthConfig,
    GrowthError,
    child_config,
    dry_run,
    grow,
    interleave_plan,
    layer_map,
    middle_plan,
    stack_plan,
)
from models.train.plan import GateRamp
from tasks.config import ConfigError, load_config

torch.set_num_threads(1)  # tiny models: OpenMP threads only spin against each other on shared cores

P = GPTConfig(n_layers=3, d_model=16, n_heads=2, d_ff=32, context=8)


def parent64(cfg: GPTConfig = P, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(cfg).double().eval()
    with torch.no_grad():  # non-zero biases and LN params, so a wrong copy cannot hide behind an init of 0 or 1
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def grown64(g: GrowthConfig, parent: GPT, n_layers: int) -> GPT:
    cfg = child_config(g, parent.cfg, n_layers)
    child = GPT(cfg).double().eval()
    child.load_state_dict(grow(g, parent.state_dict(), parent.cfg, cfg), strict=True)
    return child


def test_plans():
    assert stack_plan(3, 6) == [0, 1, 2, 0, 1, 2]
    assert stack_plan(2, 6) == [0, 1, 0, 1, 0, 1]
    assert interleave_plan(3, 6) == [0, 0, 1, 1, 2, 2]
    assert interleave_plan(2, 6) == [0, 0, 0, 1, 1, 1]
    assert middle_plan(6, 9) == [0, 1, 2, 3, 1, 2, 3, 4, 5]  # MIDAS: the middle 3 blocks, copied in place
    assert middle_plan(3, 4) == [0, 1, 1, 2] and middle_plan(4, 6) == [0, 1, 2, 1, 2, 3]
    assert middle_plan(3, 6) == stack_plan(3, 6)  # a doubling copies every block
    assert layer_map(GrowthConfig(operator="middle"), 6, 9).new_blocks == [4, 5, 6]
    assert layer_map(GrowthConfig(operator="identity", layout="middle"), 3, 4).new == (False, False, True, False)
    assert layer_map(GrowthConfig(operator="identity"), 2, 4).new == (False, True, False, True)
    assert layer_map(GrowthConfig(operator="masked", layout="stack"), 2, 4).new == (False, False, True, True)
    assert layer_map(GrowthConfig(operator="width"), 3, 3).sources == (0, 1, 2)


@pytest.mark.parametrize(
    "g",
    [
        GrowthConfig(operator=o, layout=lay)
        for o in ("stack", "interleave", "middle", "identity", "masked")
        for lay in ("interleave", "stack", "middle")
    ],
)
def test_layer_map_is_bitwise(g):
    parent = parent64()
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    child = grow(g, parent.state_dict(), P, child_config(g, P, 6))
    lmap = layer_map(g, 3, 6)
    for key, value in child.items():
        if not key.startswith("blocks."):
            assert torch.equal(value, before[key]), key
            continue
        _, j, suffix = key.split(".", 2)
        src = before[f"blocks.{lmap.sources[int(j)]}.{suffix}"]
        if g.operator == "identity" and lmap.new[int(j)] and suffix in BYTE_GPT.layout.residual_writers:
            assert not value.any(), key
        else:
            assert torch.equal(value, src), key
        assert value.data_ptr() != src.data_ptr()  # a copy, never a view of the parent
    for key, value in parent.state_dict().items():  # pure: the parent is untouched
        assert torch.equal(value, before[key])


@pytest.mark.parametrize(
    "g",
    [
        GrowthConfig(operator="identity"),
        GrowthConfig(operator="identity", layout="stack"),
        GrowthConfig(operator="masked"),
        GrowthConfig(operator="masked", layout="stack"),
    ],
)
@pytest.mark.parametrize("n_layers", [6, 9])
def test_depth_growth_preserves_function_float64(g, n_layers):
    parent = parent64()
    child = grown64(g, parent, n_layers)
    if g.operator == "masked":  # at the step of growth the ramp's gates are 0
        GateRamp(layer_map(g, 3, n_layers).new_blocks, steps=10).apply(child, 0)
    x = torch.randint(0, 256, (4, P.context))
    assert (child(x) - parent(x)).abs().max().item() <= 1e-10


@pytest.mark.parametrize("operator", ["identity", "masked"])
@pytest.mark.parametrize("parent_layers, n_layers", [(3, 4), (3, 5), (4, 6)])
def test_middle_layout_preserves_function_float64(operator, parent_layers, n_layers):
    g = GrowthConfig(operator=operator, layout="middle")
    parent = parent64(P.model_copy(update={"n_layers": parent_layers}))
    child = grown64(g, parent, n_layers)
    if operator == "masked":
        GateRamp(layer_map(g, parent_layers, n_layers).new_blocks, steps=10).apply(child, 0)
    x = torch.randint(0, 256, (4, P.context))
    assert (child(x) - parent(x)).abs().max().item() <= 1e-10


def test_stack_and_interleave_change_the_function():
    """Not function preserving (that is what identity/masked are for): make sure the test above could fail."""
    parent = parent64()
    x = torch.randint(0, 256, (2, P.context))
    for op in ("stack", "interleave", "middle"):
        assert (grown64(GrowthConfig(operator=op), parent, 6)(x) - parent(x)).abs().max() > 1e-3


def test_masked_ramp_and_fold():
    ramp = GateRamp([1, 3], steps=4)
    assert [ramp.gate(s) for s in range(7)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    g = GrowthConfig(operator="masked")
    child = grown64(g, parent64(), 6)
    ramp.apply(child, 2)
    x = torch.randint(0, 256, (2, P.context))
    before = child(x)
    for block in child.blocks:
        block.fold_gate()
    assert all(b.gate.item() == 1.0 for b in child.blocks)
    assert (child(x) - before).abs().max().item() <= 1e-12
    assert "blocks.1.gate" not in child.state_dict()  # the saved model is a plain model


def one_line(err: Exception) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    "op, child, match",
    [
        ("stack", P.model_copy(update={"n_layers": 7}), "multiple of 3"),
        ("interleave", P.model_copy(update={"n_layers": 4}), "multiple of 3"),
        ("middle", P.model_copy(update={"n_layers": 7}), "middle growth adds 1 to 3 layers"),
        ("identity", P.model_copy(update={"n_layers": 6, "d_model": 32}), "equal shapes"),
        ("width", P.model_copy(update={"n_layers": 6, "d_model": 32, "n_heads": 4, "d_ff": 64}), "keeps the depth"),
        ("width", P.model_copy(update={"d_model": 48, "n_heads": 4, "d_ff": 64}), "d_model 48 .expected 32"),
        ("fancy", P.model_copy(update={"n_layers": 6}), "unknown growth operator 'fancy'"),
    ],
)
def test_impossible_growth_is_one_line(op, child, match):
    with pytest.raises(GrowthError, match=match) as e:
        dry_run(op, P, child)
    one_line(e.value)


def test_wrong_parent_shapes_are_named():
    state = parent64().state_dict()
    state["blocks.0.mlp.fc.weight"] = torch.zeros(5, 5)
    del state["ln_f.bias"]
    with pytest.raises(
        GrowthError, match=r"missing ln_f.bias; blocks.0.mlp.fc.weight is \(5, 5\), expected \(32, 16\)"
    ) as e:
        grow("stack", state, P, P.model_copy(update={"n_layers": 6}))
    one_line(e.value)


SMALL = ["model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.context=8"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["stages.1.n_layers=7"], "stages.1: cannot stack 3 layers into 7"),
        (["stages.1.growth.operator=fancy"], "stages.1.growth.operator"),
        (["stages.1.growth.operator=width"], "stages.1: width growth keeps the depth"),
        (["stages.1.until.tokens=1000"], "set exactly one of steps, until.tokens and until.loss_slope"),
        (["stages.1.optimizer.state=keep"], "stages.1.optimizer.state"),
    ],
)
def test_config_errors_are_one_line_before_training(overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(None, SMALL + overrides)
    one_line(e.value)


def test_width_stage_derives_its_model_config():
    cfg = load_config(None, SMALL + ["stages.1.n_layers=3", "stages.1.growth.operator=width", "stages.2.n_layers=6"])
    models = [s.model for s in cfg.stage_specs()]
    assert [(m.n_layers, m.d_model, m.n_heads, m.d_ff) for m in models] == [
        (3, 16, 2, 32),
        (3, 32, 4, 64),
        (6, 32, 4, 64),
    ]


def test_until_and_schedule_resolve_into_specs():
    cfg = load_config(
        None,
        SMALL
        + [
            "train.batch_size=4",
            "stages.1.steps=null",
            "stages.1.until.tokens=100",  # 100 / (4 x 8) -> 4 steps
            "stages.2.steps=null",
            "stages.2.until.loss_slope={threshold: 0.001, max_steps: 50}",
            "stages.2.schedule.policy=rewarm",
        ],
    )
    specs = cfg.stage_specs()
    assert [s.train.steps for s in specs] == [400, 4, 50]
    assert [s.total_steps for s in specs] == [None, None, 454]  # only the schedule that reads it carries it
