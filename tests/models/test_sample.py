"""Sampling (models/sample.py): reproducible by seed, greedy at temperature 0, bounded by the model's context."""

import pytest
import torch

from models.data.tokenizer import byte_tokenizer
from models.families.gpt import GPT, GPTConfig
from models.sample import complete, generate_ids


def _model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, context=16)).eval()


def test_same_seed_same_text_and_global_rng_untouched():
    model = _model()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = generate_ids(model, list(b"def "), 40, seed=7)
    after = torch.rand(1)
    assert a == generate_ids(model, list(b"def "), 40, seed=7) and len(a) == 40
    assert torch.equal(before, after)  # sampling used its own generator
    assert a != generate_ids(model, list(b"def "), 40, seed=8)


def test_greedy_takes_the_argmax_and_prompts_longer_than_the_context_are_cropped():
    model = _model()
    out = generate_ids(model, list(b"x" * 40), 3, temperature=0)  # 40 bytes > context 16
    ids = torch.tensor([list(b"x" * 40)])[:, -16:]
    assert out[0] == int(model(ids)[0, -1].argmax()) and len(out) == 3


def test_an_empty_prompt_conditions_on_a_newline():
    model = _model()
    with pytest.raises(ValueError, match="at least one token"):
        generate_ids(model, [], 2)
    text = complete(model, byte_tokenizer(), "", 2, temperature=0)
    assert text == complete(model, byte_tokenizer(), "\n", 2, temperature=0)[1:]
