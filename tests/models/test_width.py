"""The width operator: function preservation (float64, with and without noise), layout, moments."""

import pytest
import torch

from models.families.gpt import BYTE_GPT, GPT, GPTConfig
from models.growth import GrowthConfig, child_config, grow

torch.set_num_threads(1)  # tiny models: OpenMP threads only spin against each other on shared cores
widen_config, widen_moments = BYTE_GPT.widen_config, BYTE_GPT.widen_moments

P = GPTConfig(n_layers=2, d_model=16, n_heads=2, d_ff=32, context=8)


def parent64() -> GPT:
    torch.manual_seed(0)
    model = GPT(P).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


def widened(noise: float) -> tuple[GPT, GPT]:
    parent = parent64()
    g = GrowthConfig(operator="width", noise=noise)
    cfg = child_config(g, P, P.n_layers)
    child = GPT(cfg).double().eval()
    child.load_state_dict(grow(g, parent.state_dict(), P, cfg), strict=True)
    return parent, child


def test_config_doubles_width_only():
    c = widen_config(P)
    assert (c.n_layers, c.d_model, c.n_heads, c.d_ff, c.context) == (2, 32, 4, 64, 8)
    assert c.d_model // c.n_heads == P.d_model // P.n_heads  # head_dim kept: attention scores unchanged


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_width_preserves_function_float64(noise):
    parent, child = widened(noise)
    x = torch.randint(0, 256, (4, P.context))
    assert (child(x) - parent(x)).abs().max().item() <= 1e-10


def test_layout_is_exact():
    parent, child = widened(0.0)
    ps, cs = parent.state_dict(), child.state_dict()
    C, F = P.d_model, P.d_ff
    assert torch.equal(cs["tok_emb.weight"], torch.cat([ps["tok_emb.weight"]] * 2, 1))
    assert torch.equal(cs["head.weight"], torch.cat([ps["head.weight"]] * 2, 1))
    assert torch.equal(cs["ln_f.weight"], torch.cat([ps["ln_f.weight"]] * 2) / 2)
    w, cw = ps["blocks.0.mlp.fc.weight"], cs["blocks.0.mlp.fc.weight"]  # (F, C) -> (2F, 2C)
    assert torch.equal(cw[:F, :C], w) and torch.equal(cw[F:, C:], w) and not cw[:F, C:].any() and not cw[F:, :C].any()
    q, cq = ps["blocks.1.attn.qkv.weight"].chunk(3), cs["blocks.1.attn.qkv.weight"].chunk(3)
    for a, b in zip(q, cq):
        assert torch.equal(b, torch.block_diag(a, a))


def test_noise_breaks_symmetry_but_not_the_function():
    _, plain = widened(0.0)
    _, noisy = widened(0.05)
    w, nw = plain.state_dict()["blocks.0.attn.proj.weight"], noisy.state_dict()["blocks.0.attn.proj.weight"]
    C = P.d_model
    assert not torch.equal(w, nw)
    torch.testing.assert_close(nw[:C, :C] + nw[:C, C:], w[:C, :C], rtol=0, atol=1e-15)  # noise cancels per row
    assert not torch.equal(nw[:C, :C], nw[C:, C:])  # the two copies differ


def test_moments_scale_like_gradients():
    m = {
        "blocks.0.mlp.fc.weight": torch.ones(32, 16),
        "ln_f.weight": torch.ones(16),
        "head.weight": torch.ones(256, 16),
    }
    c = widen_config(P)
    avg, sq = widen_moments(m, P, c, 1), widen_moments(m, P, c, 2)
    assert avg["blocks.0.mlp.fc.weight"][:32, :16].unique().tolist() == [0.5]
    assert not avg["blocks.0.mlp.fc.weight"][:32, 16:].any()  # off-diagonal blocks start fresh
    assert sq["head.weight"].unique().tolist() == [0.25]
    assert avg["ln_f.weight"].unique().tolist() == [1.0]  # ln_f's gradient is the parent's
