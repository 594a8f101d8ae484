"""Adam-moment transfer across growth: the child's state is the mapped parent state, and one child
step on the parent's inputs is the parent's step (float64)."""

import pytest
import torch

from models.families.gpt import BYTE_GPT, GPT, GPTConfig
from models.growth import GrowthConfig, child_config, grow, layer_map
from models.growth_moments import grow_moments
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
    lmap = layer_map(g, 2, 2 if op == "width" else 4)
    new = tuple(f"blocks.{j}." for j in lmap.new_blocks)
    for name, p in child.named_parameters():
        if new and name.startswith(new):  # a new block's parameters start with no state: a fresh AdamW
            assert p not in opt.state and mapped[f"step.{name}"].item() == 0
            assert not mapped[f"exp_avg.{name}"].any() and not mapped[f"exp_avg_sq.{name}"].any()
            continue
        st = opt.state[p]
        assert torch.equal(st["exp_avg"], mapped[f"exp_avg.{name}"]) and torch.equal(
            st["exp_avg_sq"], mapped[f"exp_avg_sq.{name}"]
        )
        assert st["step"].item() == 3
    if op == "width":
        return
    for name, _ in child.named_parameters():  # depth: bitwise the source block's moments (new blocks: fresh)
        src = name
        if name.startswith("blocks."):
            _, j, suffix = name.split(".", 2)
            src = f"blocks.{lmap.sources[int(j)]}.{suffix}"
            if lmap.new[int(j)]:
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
    placed = BYTE_GPT.widen_moments(d_parent, P, c, power=0)  # the parent's update, laid out like the child
    ones = BYTE_GPT.widen_moments({n: torch.ones_like(d) for n, d in d_parent.items()}, P, c, power=0)
    copied = {n: t != 0 for n, t in ones.items()}  # every entry but the off-diagonal blocks
    for n in copied:  # the key bias shifts every score of a query equally: its true gradient is 0 and
        if n.endswith("attn.qkv.bias"):  # its moments are round-off (~1e-21), which Adam blows up to O(lr)
            copied[n][2 * P.d_model : 4 * P.d_model] = False
    for name, d in d_child.items():
        assert (d[copied[name]] - placed[name][copied[name]]).abs().max().item() <= 1e-12, name


@pytest.mark.parametrize("op", ["stack", "identity", "masked"])
def test_new_parameters_first_update_is_a_fresh_adamw_and_carried_ones_are_unchanged(op):
    """True bias correction: a new block's parameter has its own step (0), not the parent's copied step."""
    parent, moments = trained_parent()
    g = GrowthConfig(operator=op, layout="stack")
    child, mapped = grown(g, parent, moments, 4)
    lmap = layer_map(g, 2, 4)
    copies = []
    for _ in range(2):
        twin = GPT(child.cfg).double()
        twin.load_state_dict(child.state_dict())
        copies.append(twin)
    if op == "masked":  # gates part open (training step 2): the new blocks get gradients
        for m in (child, *copies):
            GateRamp(lmap.new_blocks, steps=5).apply(m, 2)
    d_grown = step(child, mapped, seed=7)
    d_fresh = step(copies[0], None, seed=7)  # the same weights, a fresh AdamW
    copied_step = {k: v for k, v in mapped.items() if not k.startswith("step.")}  # every parameter at step 3
    d_copied = step(copies[1], copied_step, seed=7)
    new = tuple(f"blocks.{j}." for j in lmap.new_blocks)
    differs = False
    for name, d in d_grown.items():
        if name.startswith(new):
            assert torch.allclose(d, d_fresh[name], rtol=0, atol=1e-12), name
            differs |= not torch.allclose(d, d_copied[name], rtol=0, atol=1e-6)
        else:  # carried: exactly the update it would have had with every state carried
            assert torch.equal(d, d_copied[name]), name
    assert differs  # the copied step (no bias correction) moved new parameters differently


def test_a_grown_stage_with_fresh_new_blocks_resumes_bit_for_bit():
    """Per-parameter steps (new blocks behind the carried ones) survive a checkpoint: the resumed stage ends
    with the uninterrupted one's weights and moments, new-block LR warmup included."""
    from models.data.bytes import ByteCorpus, DataConfig
    from models.train.loop import TrainConfig, train
    from models.train.plan import Hooks, NewWarmup, StagePlan, Start

    parent, moments = trained_parent()
    g = GrowthConfig(operator="identity", layout="stack")
    child, mapped = grown(g, parent.float(), {k: v.float() for k, v in moments.items()}, 4)
    child = child.float()
    weights0 = {k: v.clone() for k, v in child.state_dict().items()}
    corpus = ByteCorpus(DataConfig(max_bytes=100_000), context=P.context, seed=0)
    cfg = TrainConfig(steps=6, batch_size=4, warmup_steps=0, eval_every=3, eval_batches=1, device="cpu")
    plan = StagePlan(new_warmup=NewWarmup(layer_map(g, 2, 4).new_blocks, steps=4))
    saved = {}
    ref = train(
        child,
        corpus,
        cfg,
        plan=plan,
        start=Start(moments=mapped),
        hooks=Hooks(
            on_checkpoint=lambda s: saved.setdefault(
                s.step, ({k: v.clone() for k, v in child.state_dict().items()}, s)
            ),
            checkpoint_every=2,
        ),
    )
    assert ref.moments["step"].item() == 9 and ref.moments["step.blocks.2.attn.qkv.weight"].item() == 6
    weights, state = saved[2]
    resumed = GPT(child.cfg)
    resumed.load_state_dict(weights)
    out = train(resumed, corpus, cfg, plan=plan, start=Start(resume=state))
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in child.state_dict().items())
    assert ref.moments.keys() == out.moments.keys()
    assert all(torch.equal(v, out.moments[k]) for k, v in ref.moments.items())
    assert not all(torch.equal(v, child.state_dict()[k]) for k, v in weights0.items())
