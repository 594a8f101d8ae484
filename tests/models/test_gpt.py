import pytest
import torch
from pydantic import ValidationError

from models.families.gpt import GPT, VOCAB_SIZE, GPTConfig

TINY = GPTConfig(n_layers=3, d_model=16, n_heads=2, d_ff=32, context=12)


def test_forward_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(0, VOCAB_SIZE, (2, 12))
    assert model(idx).shape == (2, 12, VOCAB_SIZE)
    loss = model.loss(idx, idx)
    # an untrained model is close to uniform over bytes: log(256) ~ 5.55
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.3


def test_every_block_parameter_lives_under_its_prefix():
    keys = GPT(TINY).state_dict().keys()
    block_keys = [k for k in keys if k.startswith("blocks.")]
    assert {k.split(".")[1] for k in block_keys} == {"0", "1", "2"}
    per_block = [sorted(k.split(".", 2)[2] for k in block_keys if k.startswith(f"blocks.{i}.")) for i in range(3)]
    assert per_block[0] == per_block[1] == per_block[2]
    assert {"attn.proj.weight", "mlp.proj.weight", "ln1.weight"} <= set(per_block[0])
    assert sorted(k for k in keys if not k.startswith("blocks.")) == sorted(
        ["tok_emb.weight", "pos_emb.weight", "ln_f.weight", "ln_f.bias", "head.weight"]
    )


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(0, VOCAB_SIZE, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % VOCAB_SIZE
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_sequence_longer_than_context_is_refused():
    with pytest.raises(ValueError, match="exceeds context 12"):
        GPT(TINY)(torch.zeros(1, 13, dtype=torch.long))


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"d_model": 30, "n_heads": 4}, "does not divide"),
        ({"n_layers": 0}, "greater than or equal to 1"),
        ({"bogus": 1}, "Extra"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValidationError, match=message):
        GPTConfig(**fields)
