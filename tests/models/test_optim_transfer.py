"""Adam-moment transfer across growth: the child's state is the mapped parent state, and one child
step on the parent's inputs is the parent's step (float64)."""

import pytest
import torch

from models.families.gpt import GPT, GPTConfig
from models.families.width import widen_moments
from models.growth import GrowthConfig, child_config, grow, grow_moments, layer_map
from models.train.optim import MomentsMismatch, export_moments, load_moments, make_optimizer
from models.train.plan import GateRamp

torch.set_num_threads(1)  # tiny models: OpenMP threads only spin against each other on shared cores

P = GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=8)
EPS = 1e-30  # Adam's eps breaks its invariance to gradient scale; width's moments are scaled, so keep it out


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, 256, (4, P.context + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def step(model: GPT, moments: dict | None, seed: int) -> dict[str, torch.Tensor]:
    """One AdamW step (no clipping) on batch(seed); returns the update of every parameter."""
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, beta2=0.99)
    for group in opt.param_groups:
        group["eps"] = EPS
    if moments is not None:
        load_moments(model, opt, moments)
    model.zero_grad(set_to_none=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = batch(seed)
    model.loss(x, y).backward()
    opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def trained_parent() -> tuple[GPT, dict]:
    """A float64 parent after 3 AdamW steps, and its moments."""
    torch.manual_seed(0)
    model = GPT(P).double()
    opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, beta2=0.99)
    for s in range(3):
        x, y = batch(s)
        opt.zero_grad()
        model.loss(x, y).backward()
        opt.step()
    return model, export_moments(model, opt)


def grown(g: GrowthConfig, parent: GPT, moments: dict, n_layers: int) -> tuple[GPT, dict]:
    cfg = child_config(g, P, n_layers)
    child = GPT(cfg).double()
    child.load_state_dict(grow(g, parent.state_dict(), P, cfg), strict=True)
    return child, grow_moments(g, moments, P, cfg)


def test_export_load_round_trip_and_strictness():
    parent, moments = trained_parent()
    assert moments["step"].item() == 3
    opt = make_optimizer(parent, lr=1e-2, weight_decay=0.1, beta2=0.99)
    load_moments(parent, opt, moments)
    again = export_moments(parent, opt)
    assert all(torch.equal(again[k], moments[k]) for k in moments)
    bad = dict(moments, **{"exp_avg.head.weight": torch.zeros(3)})
    del bad["exp_avg_sq.ln_f.bias"]
    with pytest.raises(MomentsMismatch, match=r"missing exp_avg_sq.ln_f.bias; exp_avg.head.weight is \(3,\)") as e:
        load_moments(parent, opt, bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("op", ["stack", "interleave", "identity", "masked", "width"])
def test_child_state_is_the_mapped_parent_state(op):
    parent, moments = trained_parent()
    g = GrowthConfig(operator=op)
    child, mapped = grown(g, parent, moments, 2 if op == "width" else 4)
    opt = make_optimizer(child, lr=1e-2, weight_decay=0.1, beta2=0.99)
    load_moments(child, opt, mapped)
    for name, p in child.named_parameters():
        st = opt.state[p]
        assert torch.equal(st["exp_avg"], mapped[f"exp_avg.{name}"]) and torch.equal(
            st["exp_avg_sq"], mapped[f"exp_avg_sq.{name}"]
        )
        assert st["step"].item() == 3
    if op == "width":
        return
    lmap = layer_map(g, 2, 4)
    for name, _ in child.named_parameters():  # depth: bitwise the source block's moments (identity: writers zeroed)
        src = name
        if name.startswith("blocks."):
            _, j, suffix = name.split(".", 2)
            src = f"blocks.{lmap.sources[int(j)]}.{suffix}"
            if (
                op == "identity"
                and lmap.new[int(j)]
                and suffix in ("attn.proj.weight", "attn.proj.bias", "mlp.proj.weight", "mlp.proj.bias")
            ):
                assert not mapped[f"exp_avg.{name}"].any()
                continue
        assert torch.equal(mapped[f"exp_avg.{name}"], moments[f"exp_avg.{src}"])
        assert torch.equal(mapped[f"exp_avg_sq.{name}"], moments[f"exp_avg_sq.{src}"])


@pytest.mark.parametrize(
    "g",
    [
        GrowthConfig(operator="masked"),
        GrowthConfig(operator="masked", layout="stack"),
        GrowthConfig(operator="identity"),
        GrowthConfig(operator="identity", layout="stack"),
    ],
)
def test_depth_child_step_is_the_parent_step(g):
    parent, moments = trained_parent()
    child, mapped = grown(g, parent, moments, 4)
    lmap = layer_map(g, 2, 4)
    if g.operator == "masked":
        GateRamp(lmap.new_blocks, steps=5).apply(child, 1)  # training step 1: gates still 0
    d_child, d_parent = step(child, mapped, seed=7), step(parent, moments, seed=7)
    for name, d in d_child.items():
        if name.startswith("blocks."):
            _, j, suffix = name.split(".", 2)
            if lmap.new[int(j)]:
                continue  # new blocks: identity's writers get their first gradient here; masked's are gated out
            name_p = f"blocks.{lmap.sources[int(j)]}.{suffix}"
        else:
            name_p = name
        assert (d - d_parent[name_p]).abs().max().item() <= 1e-12, name
    if g.operator == "masked":  # gated out, the new blocks moved without changing the function
        x, _ = batch(8)
        assert (child(x) - parent(x)).abs().max().item() <= 1e-10


def test_width_child_step_is_the_parent_step_entrywise():
    """Every copied entry (duplicated rows/columns, diagonal blocks) moves exactly as its parent entry.

    Not the same *function* after the step: Adam's update does not scale with the weight, so the
    halved ln_f moves as far as the parent's, and the zero off-diagonal blocks start moving too.
    """
    parent, moments = trained_parent()
    child, mapped = grown(GrowthConfig(operator="width"), parent, moments, 2)
    c = child_config(GrowthConfig(operator="width"), P, 2)
    d_child, d_parent = step(child, mapped, seed=7), step(parent, moments, seed=7)
    placed = widen_moments(d_parent, P, c, power=0)  # the parent's update, laid out like the child
    ones = widen_moments({n: torch.ones_like(d) for n, d in d_parent.items()}, P, c, power=0)
    copied = {n: t != 0 for n, t in ones.items()}  # every entry but the off-diagonal blocks
    for n in copied:  # the key bias shifts every score of a query equally: its true gradient is 0 and
        if n.endswith("attn.qkv.bias"):  # its moments are round-off (~1e-21), which Adam blows up to O(lr)
            copied[n][2 * P.d_model : 4 * P.d_model] = False
    for name, d in d_child.items():
        assert (d[copied[name]] - placed[name][copied[name]]).abs().max().item() <= 1e-12, name
