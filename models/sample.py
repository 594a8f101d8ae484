"""Sampling tokens from a model of any family (models/families/lookup.py): pure PyTorch, so the CLI (``staged
generate``) and the evaluation gate's sample produce text the same way, for every family alike."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer
from torch import nn

from models.data import tokenizer as tokenizers
from models.families.lookup import family_of


def complete(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> str:
    """``prompt`` and the model's continuation of it as text; tokens go through ``tokenizer`` (either family)."""
    ids = tokenizers.encode(tokenizer, (prompt or "\n").encode()).tolist()  # at least one token to condition on
    out = generate_ids(model, ids, max_new, temperature=temperature, top_k=top_k, seed=seed)
    return prompt + tokenizers.decode(tokenizer, out)


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    prompt: list[int],
    max_new: int = 200,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
) -> list[int]:
    """The prompt's continuation (new token ids only).

    temperature 0 is greedy decoding. A local generator seeded with ``seed`` makes a sample
    reproducible without touching the global RNG (training code relies on it).
    The model sees at most its last ``context`` tokens, as during training.
    """
    if not prompt:
        raise ValueError("the model needs at least one token to condition on")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    out: list[int] = []
    family, cache = family_of(model), None
    for _ in range(max_new):
        logits, cache = family.next_logits(model, idx, cache)
        logits = logits.float()  # (V,)
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=gen))
        out.append(nxt)
        idx = torch.cat([idx, torch.tensor([[nxt]], device=device)], dim=1)
    model.train(was_training)
    return out
