import pytest
import torch

from models.gpt import GPT, GPTConfig
from models.growth import GrowthError, dry_run, grow, remap_blocks, stack_plan

PARENT = GPTConfig(n_layers=3, d_model=16, n_heads=2, d_ff=32, context=12)


def test_stack_plan_repeats_the_parent():
    assert stack_plan(3, 6) == [0, 1, 2, 0, 1, 2]
    assert stack_plan(3, 12) == [0, 1, 2] * 4
    assert stack_plan(3, 3) == [0, 1, 2]


def test_stack_copies_blocks_bitwise_and_keeps_the_rest():
    torch.manual_seed(0)
    parent = GPT(PARENT).state_dict()
    child_cfg = PARENT.model_copy(update={"n_layers": 6})
    child = grow("stack", parent, PARENT, child_cfg)
    for key, value in child.items():
        if key.startswith("blocks."):
            _, j, suffix = key.split(".", 2)
            assert torch.equal(value, parent[f"blocks.{int(j) % 3}.{suffix}"]), key
        else:
            assert torch.equal(value, parent[key]), key
    GPT(child_cfg).load_state_dict(child, strict=True)  # nothing missing, nothing extra


def test_grown_tensors_are_copies_not_views():
    parent = GPT(PARENT).state_dict()
    child = remap_blocks(parent, [0, 0])
    child["blocks.1.ln1.weight"].add_(1.0)
    assert not torch.equal(child["blocks.0.ln1.weight"], child["blocks.1.ln1.weight"])
    assert not torch.equal(parent["blocks.0.ln1.weight"], child["blocks.1.ln1.weight"])


@pytest.mark.parametrize(
    "child, message",
    [
        ({"n_layers": 5}, "cannot stack 3 layers into 5: the target depth must be a multiple of 3"),
        ({"n_layers": 6, "d_model": 32}, "d_model 16 -> 32"),
        ({"n_layers": 6, "context": 24}, "context 12 -> 24"),
    ],
)
def test_impossible_growth_is_a_one_line_error(child, message):
    with pytest.raises(GrowthError, match=message) as err:
        dry_run("stack", PARENT, PARENT.model_copy(update=child))
    assert "\n" not in str(err.value)


def test_unknown_operator_and_missing_blocks_are_refused():
    with pytest.raises(GrowthError, match="unknown growth operator 'nope'"):
        grow("nope", {}, PARENT, PARENT)
    with pytest.raises(GrowthError, match=r"refers to parent blocks \[5\]"):
        remap_blocks(GPT(PARENT).state_dict(), [0, 5])
