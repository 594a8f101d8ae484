"""Byte sampling: reproducible by seed, greedy at temperature 0, bounded by the model's context."""

import torch

from models.gpt import GPT, GPTConfig
from models.sample import decode, generate


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, context=16)).eval()


def test_same_seed_same_text_and_global_rng_untouched():
    model = _model()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate(model, b"def ", 40, seed=7)
    after = torch.rand(1)
    assert a == generate(model, b"def ", 40, seed=7) and len(a) == 40
    assert torch.equal(before, after)  # sampling used its own generator
    assert a != generate(model, b"def ", 40, seed=8)


def test_greedy_takes_the_argmax_and_prompts_longer_than_the_context_are_cropped():
    model = _model()
    out = generate(model, b"x" * 40, 3, temperature=0)  # 40 bytes > context 16
    ids = torch.tensor([list(b"x" * 40)])[:, -16:]
    assert out[0] == int(model(ids)[0, -1].argmax())
    assert len(out) == 3 and generate(model, b"", 2, seed=0)  # an empty prompt still works


def test_decode_shows_invalid_utf8():
    assert decode(b"ok\xff") == "ok\ufffd"
